"""The public name's config for each unpinned mode, and the route a loaded one follows."""

from __future__ import annotations

import json
from importlib import resources

from tritonclient.grpc.model_config_pb2 import ModelInstanceGroup

from repo_manager.errors import InvalidInputError
from repo_manager.modelconfig import (
    ModelConfig,
    alias_target,
    build_alias_config,
    public_config_base,
)
from repo_manager.names import versions_model_name
from repo_manager.state import RoutingTable

__all__ = [
    "MODES",
    "STABLE",
    "WEIGHTED",
    "check_mode",
    "describe",
    "public_config",
    "public_route",
    "unpinned_route",
    "weighted_files",
]

STABLE = "stable"
WEIGHTED = "weighted"
MODES = (STABLE, WEIGHTED)
#: The weighted model's files, as named in the public name's ``1/`` folder -> where this
#: package keeps them (the split rule is the Router's own file).
_FILES = {
    "model.py": ("repo_manager.unpinned", "backend/model.py"),
    "routing_split.py": ("repo_manager.routing", "split.py"),
}
#: Instances of the weighted model: each forwards a whole dynamic batch at once (async
#: BLS), so two keep one batch's forwarding from waiting on the previous one's.
_INSTANCES = 2


def check_mode(mode: str) -> str:
    """One of ``MODES``, or one line saying which are."""
    if mode not in MODES:
        raise InvalidInputError(f"unpinned mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def weighted_files() -> dict[str, bytes]:
    """The files the weighted model needs in the public name's version folder."""
    return {
        name: resources.files(package).joinpath(source).read_bytes()
        for name, (package, source) in _FILES.items()
    }


def _routing(table: RoutingTable) -> str:
    """The routing parameter: only what decides a request's version (no generation, so
    that a move that changes no weight reloads nothing)."""
    weights = {v: table.weights[v] for v in sorted(table.weights, key=int)}
    document = {"stable": table.stable, "canary": table.canary, "weights": weights}
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def public_config(mode: str, *, target: ModelConfig, table: RoutingTable) -> ModelConfig:
    """The public name's config: an ensemble pinning stable, or the weighted model."""
    assert table.stable is not None
    name, target_name = table.model, versions_model_name(table.model)
    if check_mode(mode) == STABLE:
        return build_alias_config(
            name=name, target_name=target_name, target=target, version=table.stable
        )
    public = public_config_base(name=name, target=target)
    public.backend = "python"
    public.parameters["versions_model"].string_value = target_name
    public.parameters["routing"].string_value = _routing(table)
    # Inputs arrive where the client put them: a GPU tensor stays on the GPU through BLS.
    public.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
    public.instance_group.add(count=_INSTANCES, kind=ModelInstanceGroup.KIND_CPU)
    if public.max_batch_size > 0:
        public.dynamic_batching.SetInParent()
    return public


def unpinned_route(mode: str, table: RoutingTable) -> str | None:
    """What a public name built by ``public_config(mode, table=table)`` does with an
    unpinned request, in words that compare (``public_route`` reads them back)."""
    if table.stable is None:
        return None
    if check_mode(mode) == STABLE:
        return table.stable
    return _weighted_words(table.stable, table.canary, table.weights)


def public_route(config: ModelConfig) -> str | None:
    """What a loaded public name's config does with an unpinned request: the stable
    version it pins (``"2"``), or ``"weighted 2:70,3:30"`` (stable first, the canary
    last); None for a config that is neither."""
    pinned = alias_target(config)
    if pinned is not None:
        return pinned
    if config.backend != "python" or "routing" not in config.parameters:
        return None
    try:
        table = json.loads(config.parameters["routing"].string_value)
        stable, canary = str(table["stable"]), table.get("canary")
        weights = {str(k): int(v) for k, v in table["weights"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return _weighted_words(stable, None if canary is None else str(canary), weights)


def _weighted_words(stable: str, canary: str | None, weights: dict[str, int]) -> str:
    order = [stable, *sorted((v for v in weights if v not in (stable, canary)), key=int)]
    if canary is not None and canary != stable:
        order.append(canary)
    return f"{WEIGHTED} " + ",".join(f"{v}:{weights.get(v, 0)}" for v in order)


def describe(route: str | None) -> str:
    """A public route in a sentence's words: "answers from version 2", "weighted 2:70,3:30"."""
    if route is None:
        return "is not serving"
    return route if route.startswith(WEIGHTED) else f"answers from version {route}"
