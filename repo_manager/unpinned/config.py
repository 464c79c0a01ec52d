"""The public name's config for each unpinned mode, and the route a loaded one follows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from tritonclient.grpc.model_config_pb2 import ModelInstanceGroup

from repo_manager.errors import InvalidInputError
from repo_manager.modelconfig import (
    ModelConfig,
    alias_target,
    build_alias_config,
    public_config_base,
)
from repo_manager.names import versions_model_name
from repo_manager.state import RoutingTable, cohort_document, cohort_words

__all__ = [
    "MODES",
    "STABLE",
    "WEIGHTED",
    "check_mode",
    "check_shadow",
    "check_weighted_classes",
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
    "routing_cohort.py": ("repo_manager.routing", "cohort.py"),
}
#: Instances of the weighted model: each forwards a whole dynamic batch at once (async
#: BLS), so two keep one batch's forwarding from waiting on the previous one's.
_INSTANCES = 2


def check_mode(mode: str) -> str:
    """One of ``MODES``, or one line saying which are."""
    if mode not in MODES:
        raise InvalidInputError(f"unpinned mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def check_weighted_classes(
    model: str,
    stable: tuple[str, tuple[str, ...] | None],
    canary: tuple[str, tuple[str, ...] | None],
) -> None:
    """Refuse, in one line, a weighted public name over a canary that names other classes
    than stable ((version, names) each; None names: unknown, not judged). The public name
    states one set of names (stable's, what Ultralytics' client reads), and in weighted
    mode the canary answers some of its requests: ids its clients cannot name."""
    (stable_version, stable_names), (canary_version, canary_names) = stable, canary
    if stable_names is None or canary_names is None or stable_names == canary_names:
        return
    added = [n for n in canary_names if n not in stable_names]
    shown = f"adds {', '.join(added)}" if added else "orders or names them otherwise"
    raise InvalidInputError(
        f"{model}: canary {canary_version} names other classes than stable {stable_version} "
        f"({shown}); with --unpinned {WEIGHTED} clients of the public name would get "
        "detections their class names do not cover: keep --unpinned stable until it is "
        "promoted or rolled back"
    )


def weighted_files() -> dict[str, bytes]:
    """The files the weighted model needs in the public name's version folder."""
    return {
        name: resources.files(package).joinpath(source).read_bytes()
        for name, (package, source) in _FILES.items()
    }


def check_shadow(share: float) -> float:
    """A shadow share between 0 and 1, or one line saying so."""
    if not 0.0 <= share <= 1.0:
        raise InvalidInputError(f"shadow share must be between 0 and 1, got {share:g}")
    return float(share)


def _routing(table: RoutingTable, shadow: float) -> str:
    """The routing parameter: only what decides where a request goes (no generation, so
    that a move that changes no weight reloads nothing)."""
    weights = {v: table.weights[v] for v in sorted(table.weights, key=int)}
    document: dict[str, object] = {
        "stable": table.stable,
        "canary": table.canary,
        "weights": weights,
    }
    if shadow and table.canary is not None:
        document["shadow"] = shadow
    if table.cohort is not None and table.canary is not None:
        document["cohort"] = table.cohort
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def public_config(
    mode: str,
    *,
    target: ModelConfig,
    table: RoutingTable,
    shadow: float = 0.0,
    class_names: Sequence[str] | None = None,
) -> ModelConfig:
    """The public name's config: an ensemble pinning stable, or the weighted model (which
    mirrors ``shadow`` of stable's answers to the canary); ``class_names`` are stable's
    (what Ultralytics' client names its classes after)."""
    assert table.stable is not None
    name, target_name = table.model, versions_model_name(table.model)
    if check_mode(mode) == STABLE:
        return build_alias_config(
            name=name,
            target_name=target_name,
            target=target,
            version=table.stable,
            class_names=class_names,
        )
    public = public_config_base(name=name, target=target, class_names=class_names)
    public.backend = "python"
    public.parameters["versions_model"].string_value = target_name
    public.parameters["routing"].string_value = _routing(table, check_shadow(shadow))
    # Inputs arrive where the client put them: a GPU tensor stays on the GPU through BLS.
    public.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
    public.instance_group.add(count=_INSTANCES, kind=ModelInstanceGroup.KIND_CPU)
    if public.max_batch_size > 0:
        public.dynamic_batching.SetInParent()
    return public


def unpinned_route(mode: str, table: RoutingTable, shadow: float = 0.0) -> str | None:
    """What a public name built by ``public_config(mode, table=table, shadow=shadow)``
    does with an unpinned request, in words that compare (``public_route`` reads them
    back)."""
    if table.stable is None:
        return None
    if check_mode(mode) == STABLE:
        return table.stable
    shadow = shadow if table.canary is not None else 0.0
    cohort = table.cohort if table.canary is not None else None
    return _weighted_words(table.stable, table.canary, table.weights, shadow, cohort)


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
        shadow = float(table.get("shadow", 0.0))
        cohort = cohort_document(table.get("cohort"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    canary = None if canary is None else str(canary)
    return _weighted_words(stable, canary, weights, shadow, cohort)


def _weighted_words(
    stable: str,
    canary: str | None,
    weights: dict[str, int],
    shadow: float,
    cohort: dict[str, Any] | None = None,
) -> str:
    order = [stable, *sorted((v for v in weights if v not in (stable, canary)), key=int)]
    if canary is not None and canary != stable:
        order.append(canary)
    words = f"{WEIGHTED} " + ",".join(f"{v}:{weights.get(v, 0)}" for v in order)
    words = f"{words} shadow {shadow:g}" if shadow else words
    return f"{words} {cohort_words(cohort)}" if cohort else words


def describe(route: str | None) -> str:
    """A public route in a sentence's words: "answers from version 2", "weighted 2:70,3:30"."""
    if route is None:
        return "is not serving"
    return route if route.startswith(WEIGHTED) else f"answers from version {route}"
