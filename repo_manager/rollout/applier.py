"""Make the servers match a rollout state: the versions it needs, the public name on stable.

Every move of a rollout ends in ``FleetApplier.apply``: it loads exactly the desired
versions (the rollout's own plus those the version policy keeps) in the versions model,
points the public name's alias at stable, and keeps the on-disk configs true for a Triton
that restarts (after a restart only config.pbtxt counts).

A canary limited to some servers (``RolloutState.servers``) is loaded only there: the
desired versions are per server. The on-disk configs are what *every* server may hold and
answer (a restarted server outside the set must not load the canary): the version policy
without the canary, the weighted public name sending everything to stable. Servers in
the set get the canary by the load's config override, and reconcile restores each
server's own set after a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from repo_manager.errors import IntegrityError
from repo_manager.integrity import Verifier
from repo_manager.modelconfig import ModelConfig, build_alias_config, with_version_policy
from repo_manager.names import versions_model_name
from repo_manager.repository import ModelRepository
from repo_manager.rollout.settings import RolloutSettings, VersionPolicy
from repo_manager.state import RolloutState, RoutingTable
from repo_manager.triton import TritonFleet
from repo_manager.triton.fleet import PerServer
from repo_manager.unpinned import WEIGHTED, describe, public_config, unpinned_route, weighted_files

__all__ = ["FleetApplier", "Progress", "alias_config", "desired_route", "table_at"]

Progress = Callable[[str], None]


def alias_config(model: str, config: ModelConfig, stable: str) -> ModelConfig:
    """The public name's config: an ensemble whose one step pins ``stable``."""
    return build_alias_config(
        name=model, target_name=versions_model_name(model), target=config, version=stable
    )


def table_at(state: RolloutState, url: str | None) -> RoutingTable:
    """The routing table the weighted public name on the server at ``url`` follows: a
    server outside the canary's set sends everything to stable (it does not hold the
    canary). ``url`` None: the on-disk one, which any restarted server reads."""
    table = state.routing_table()
    if state.restricted is None or (url is not None and state.holds_restricted(url)):
        return table
    assert table.stable is not None
    return replace(table, canary=None, weights={table.stable: 100}, cohort=None)


def desired_route(state: RolloutState, url: str | None = None) -> str | None:
    """What the public name on the server at ``url`` must do with unpinned requests in
    ``state`` (compared with each server's ``ServerVersions.public``)."""
    return unpinned_route(state.unpinned, table_at(state, url), state.unpinned_shadow)


class FleetApplier:
    """Applies a rollout state to the repository's configs and to every Triton server."""

    def __init__(
        self,
        repository: ModelRepository,
        fleet: TritonFleet,
        *,
        settings: RolloutSettings,
        progress: Progress,
    ) -> None:
        self.repository = repository
        self.fleet = fleet
        self.settings = settings
        self.progress = progress
        #: Checks every version before it is loaded; its digests last as long as the applier.
        self.verifier = Verifier(repository.storage, signing_key=repository.signing_key)

    def desired_versions(self, state: RolloutState, url: str | None = None) -> list[str]:
        """Versions Triton must hold: the rollout's own plus those the policy keeps; on the
        server at ``url`` (None: on some server), never a canary limited to other servers,
        even where the policy would keep it."""
        policy = VersionPolicy.from_document(state.policy)
        extra = policy.keeps(self.repository.versions(state.model)) if policy else []
        versions = sorted(set(state.serving_versions) | set(extra), key=int)
        return versions if url is None else [v for v in versions if state.may_hold(v, url)]

    def shared_versions(self, state: RolloutState, versions: Sequence[str]) -> list[str]:
        """Of ``versions``, those every server of the fleet may hold (the on-disk policy)."""
        if state.restricted is None:
            return list(versions)
        return [v for v in versions if all(state.may_hold(v, url) for url in self.fleet.urls)]

    def apply(
        self,
        state: RolloutState,
        *,
        gone: list[str] | None = None,
        only: list[str] | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Make every server (or ``only`` those) hold exactly the desired versions, with the
        public name answering from stable; returns the urls where the public name moved.
        Each load has a deadline: ``timeout`` seconds, else the settings' ready timeout.
        A version in ``gone`` is unloaded even where a version policy would keep it.

        Also keeps the on-disk configs true (version policy, alias pin), for a Triton that
        restarts. A version the public name still answers from must not be in ``gone``:
        retirements re-point it first (``Retirement.finish``).
        """
        gone = list(gone or [])
        versions = [v for v in self.desired_versions(state) if v not in gone]
        deadline = self.settings.ready_timeout if timeout is None else timeout
        config = self.repository.require_config(state.model)
        versions, refused = self._verified(state, config, versions)
        gone += refused
        count = len(only) if only is not None else len(self.fleet.servers)
        where = f" ({state.restricted} only on {', '.join(state.servers or ())})"
        self.progress(
            f"loading {state.model} versions {','.join(versions)} on {count} server(s)"
            + (where if state.restricted in versions else "")
        )
        per_server: PerServer = versions
        if state.restricted is not None:
            per_server = {
                url: [v for v in versions if state.may_hold(v, url)] for url in self.fleet.urls
            }
        on_disk = with_version_policy(config, self.shared_versions(state, versions))
        limited = state.restricted is not None
        if limited and on_disk != config:
            # Before the loads: a manager killed between loads and write then leaves no
            # on-disk policy that names the canary (narrowing from every server). Measured:
            # four re-points of the public name (ensemble and weighted) on server 2 kept
            # its canary READY with this order and with the write after the loads.
            self.repository.write_config(state.model, on_disk)
        self.fleet.apply(
            versions_model_name(state.model),
            config,
            per_server,
            gone=gone,
            timeout=deadline,
            only=only,
        )
        if not limited and on_disk != config:
            self.repository.write_config(state.model, on_disk)
        return self.point_public(state, config, only=only, timeout=deadline)

    def _verified(
        self, state: RolloutState, config: ModelConfig, versions: list[str]
    ) -> tuple[list[str], list[str]]:
        """The versions that may be loaded, and those left out (unloaded) as not what was
        published. Every load call names each version it keeps, and Triton re-reads a
        version whose files are newer than its last load: so a call that named a tampered
        version could load its bytes. A tampered config, stable or canary therefore
        stops the call (Triton keeps serving what it has); a tampered version without
        traffic (retiring, kept by the policy) is left out."""
        found = self.repository.config_problem(state.model, config)
        if found is not None:
            raise IntegrityError(f"{state.model} refused: {found}")
        problems = {v: p for v in versions if (p := self.verifier.problem(state.model, v))}
        for version in (state.stable, state.canary):
            if version in problems:
                found = problems[version]
                raise IntegrityError(f"{state.model} version {version} refused: {found}")
        for version, found in problems.items():
            self.progress(f"left out {state.model} version {version}: {found}")
        return [v for v in versions if v not in problems], sorted(problems, key=int)

    def point_public(
        self,
        state: RolloutState,
        config: ModelConfig | None = None,
        *,
        only: list[str] | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Make the public name route unpinned requests as ``state`` says: from stable
        (an ensemble pinning it) or, in weighted mode, by its weights; returns the urls
        where it moved. ``config`` is the versions model's (read when not given)."""
        assert state.stable is not None
        target = config if config is not None else self.repository.require_config(state.model)
        names = self.repository.class_names(state.model, state.stable)

        def public_at(url: str | None) -> ModelConfig:
            return public_config(
                state.unpinned,
                target=target,
                table=table_at(state, url),
                shadow=state.unpinned_shadow,
                class_names=names,
            )

        files = weighted_files() if state.unpinned == WEIGHTED else None
        self.repository.write_public(state.model, public_at(None), files)
        deadline = self.settings.ready_timeout if timeout is None else timeout
        per_server = public_at if state.restricted is not None else public_at(None)
        moved = self.fleet.point_public(state.model, per_server, timeout=deadline, only=only)
        if moved and state.servers is None:
            self.progress(f"public name {state.model} {describe(desired_route(state))}")
        for url in moved if state.servers is not None else ():
            self.progress(
                f"public name {state.model} {describe(desired_route(state, url))} on {url}"
            )
        return moved

    def drain(self) -> None:
        """Give every live Router time to follow the new routing table."""
        self.progress(f"draining for {self.settings.drain_seconds:.1f}s")
        time.sleep(self.settings.drain_seconds)
