"""The same model-control call on every server of a fleet, each failure named."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from tritonclient.grpc import model_config_pb2

from repo_manager.errors import TritonError, TritonHungError, TritonUnavailableError
from repo_manager.transport import GrpcSecurity
from repo_manager.triton.control import ServerVersions, TritonControl
from repo_manager.unpinned.config import public_route

__all__ = ["PerServer", "TritonFleet"]

#: What each server must hold: one list for every server, or a list per url (a canary
#: limited to some servers); a url missing from the mapping holds what every listed
#: server holds (never a version only some may have).
PerServer = Sequence[str] | Mapping[str, Sequence[str]]


def for_server(versions: PerServer, url: str) -> list[str]:
    """The versions the server at ``url`` must hold."""
    if not isinstance(versions, Mapping):
        return list(versions)
    if url in versions:
        return list(versions[url])
    lists = list(versions.values())
    return [v for v in lists[0] if all(v in held for held in lists[1:])] if lists else []


class TritonFleet:
    """The same model-control call on every server of a fleet, in order."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        request_timeout: float = 10.0,
        security: GrpcSecurity | None = None,
    ) -> None:
        if not urls:
            raise ValueError("a fleet needs at least one server")
        self.request_timeout = request_timeout
        self.security = security
        self.servers = [
            TritonControl(url, request_timeout=request_timeout, security=security) for url in urls
        ]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def set_urls(self, urls: Sequence[str]) -> None:
        """Become the fleet at ``urls`` (a DNS fleet re-resolved): known servers keep their
        connection, new ones are added, those gone are closed."""
        if not urls:
            raise ValueError("a fleet needs at least one server")
        known = {server.url: server for server in self.servers}
        self.servers = [
            known.pop(url)
            if url in known
            else TritonControl(url, request_timeout=self.request_timeout, security=self.security)
            for url in urls
        ]
        for gone in known.values():
            gone.close()

    def check_reachable(self) -> None:
        """Raise one error naming every server that does not answer (not just the first)."""
        down = []
        for server in self.servers:
            try:
                server.check_reachable()
            except TritonUnavailableError as exc:
                down.append((server.url, exc))
        if len(self.servers) == 1 and down:
            raise down[0][1]
        if down:
            names = ", ".join(url for url, _ in down)
            hung = [url for url, exc in down if isinstance(exc, TritonHungError)]
            said = f"; hung (no answer in {self.request_timeout:g}s): {', '.join(hung)}"
            raise TritonUnavailableError(
                f"Triton unreachable at {names} ({len(down)} of {len(self.servers)} servers"
                f"{said if hung else ''}); start it or leave it out with --url, then run "
                "reconcile"
            ) from down[0][1]

    def server_versions(self) -> dict[str, str]:
        """Each server's Triton version (from its metadata), by url."""
        return {s.url: str(s.server_metadata().get("version", "")) for s in self.servers}

    def apply(
        self,
        model: str,
        config: model_config_pb2.ModelConfig,
        versions: PerServer,
        *,
        gone: Sequence[str] = (),
        timeout: float,
        only: Sequence[str] | None = None,
    ) -> None:
        """Load ``versions`` (per server: ``PerServer``) and wait until they are READY and
        ``gone`` are not; on each server, a version another server holds and this one must
        not counts as gone there too (a canary limited to other servers).

        Every server is tried even when one fails, so that a rollback (an ``apply`` of the
        previous versions) reaches every server that answers; the error names them all.
        ``only`` limits the call to those urls (reconcile of a restarted server).
        """
        targets = self._targets(only)
        wanted = {s.url: for_server(versions, s.url) for s in targets}
        anywhere = {v for held in wanted.values() for v in held}
        failures: list[TritonError] = []
        loaded = []
        for server in targets:
            try:
                server.load(model, config, wanted[server.url], timeout=timeout)
                loaded.append(server)
            except TritonError as exc:
                failures.append(exc)
        for server in loaded:
            here = wanted[server.url]
            elsewhere = sorted(anywhere - set(here), key=int)
            try:
                server.wait_versions(model, ready=here, gone=[*gone, *elsewhere], timeout=timeout)
            except TritonError as exc:
                failures.append(exc)
        _raise_failures(failures, len(targets))

    def point_public(
        self,
        name: str,
        config: model_config_pb2.ModelConfig | Callable[[str], model_config_pb2.ModelConfig],
        *,
        timeout: float,
        only: Sequence[str] | None = None,
    ) -> list[str]:
        """Make the public name ``name`` route unpinned requests as ``config`` does (or,
        given a function of the url, as each server's own config does), everywhere.

        A server whose public name already routes so is left alone (a load call would
        re-create it for nothing). Returns the urls where it moved; like ``apply``, every
        server is tried and one error names each that failed.
        """
        targets = self._targets(only)
        failures: list[TritonError] = []
        moved = []
        for server in targets:
            try:
                own = config(server.url) if callable(config) else config
                if server.public_route(name) == public_route(own):
                    continue
                server.load_public(name, own, timeout=timeout)
                server.wait_versions(name, ready=["1"], timeout=timeout)
                moved.append(server.url)
            except TritonError as exc:
                failures.append(exc)
        _raise_failures(failures, len(targets))
        return moved

    def _targets(self, only: Sequence[str] | None) -> list[TritonControl]:
        return [s for s in self.servers if only is None or s.url in only]

    def unload(self, *models: str, timeout: float) -> None:
        """Unload each of ``models`` on every server (the public name first, then its
        versions model, so no client is left with an alias to nothing), and wait until
        Triton let go of every version (a load in flight ends first: only then may the
        files go, or a python stub starting on them hangs the model)."""
        failures: list[TritonError] = []
        for server in self.servers:
            for model in models:
                try:
                    server.unload(model)
                    known = [v.version for v in server.versions(model)]
                    server.wait_versions(model, ready=[], gone=known, timeout=timeout)
                except TritonError as exc:
                    failures.append(exc)
        _raise_failures(failures, len(self.servers))

    def survey(self, model: str, *, alias: str | None = None) -> list[ServerVersions]:
        """Each server's view of ``model`` (and of the public name ``alias`` pointing into
        it); an unreachable server is reported, not raised."""
        report = []
        for server in self.servers:
            try:
                index = server.index()  # one read serves both models
                report.append(
                    ServerVersions(
                        url=server.url,
                        versions=server.versions(model, index=index),
                        public=server.public_route(alias, index=index) if alias else None,
                    )
                )
            except TritonError as exc:
                report.append(ServerVersions(url=server.url, error=str(exc)))
        return report

    def close(self) -> None:
        for server in self.servers:
            server.close()


def _raise_failures(failures: list[TritonError], targets: int) -> None:
    """Raise nothing, the one failure, or one error naming every failed server."""
    if len(failures) == 1:
        raise failures[0]
    if failures:
        first = failures[0]
        error = type(first) if all(type(f) is type(first) for f in failures) else TritonError
        raise error(
            f"{len(failures)} of {targets} servers failed: " + "; ".join(str(f) for f in failures)
        ) from first
