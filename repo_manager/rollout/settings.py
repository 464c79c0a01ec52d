"""What a rollout is told: its timing, the analysis plan, the version policy; and parsers.

The dataclasses check themselves in ``__post_init__``, so a value is valid wherever it was
made: from command-line options, in a test, or from a persisted state document. The
parsers only turn the command line's strings into those values.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

from repo_manager.errors import InvalidGateError, InvalidInputError, InvalidWeightError
from repo_manager.gates import LiveGates
from repo_manager.names import validate_version

__all__ = [
    "AnalysisPlan",
    "RolloutSettings",
    "VersionPolicy",
    "check_weight",
    "parse_policy",
    "parse_steps",
    "parse_waves",
    "parse_weight",
]


def check_weight(weight: int) -> int:
    """The one check of a canary weight: an integer percentage 0..100."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise InvalidWeightError(f"invalid weight {weight}: must be between 0 and 100")
    return weight


@dataclass(kw_only=True, frozen=True)
class RolloutSettings:
    """Timing of a rollout's moves."""

    #: Seconds between taking traffic off a version and unloading it; must exceed the
    #: Routers' poll interval (0.2 s) plus the longest in-flight request. Default 1.5.
    drain_seconds: float = 1.5
    #: Seconds a version may take to load and warm up on every server. Default 300.
    ready_timeout: float = 300.0
    #: Share of traffic a new canary starts with, in percent. Default 10.
    canary_weight: int = 10

    def __post_init__(self) -> None:
        if not self.drain_seconds >= 0:
            raise InvalidInputError(f"invalid drain time {self.drain_seconds}: must be >= 0")
        if not self.ready_timeout > 0:
            raise InvalidInputError(f"invalid ready timeout {self.ready_timeout}: must be > 0")
        check_weight(self.canary_weight)


@dataclass(kw_only=True, frozen=True)
class AnalysisPlan:
    """How the progressive analysis moves a canary (persisted in the rollout state)."""

    #: Canary weights, one per passed interval; passing the last one promotes.
    #: Default 10, 25, 50, 100.
    steps: tuple[int, ...] = (10, 25, 50, 100)
    #: Failed checks at which the canary is rolled back. Default 2.
    threshold: int = 2
    #: Consecutive steps whose metrics source could not be read before the analysis
    #: stops with an error (the canary keeps its weight; never a rollback). Default 5.
    max_metrics_errors: int = 5
    gates: LiveGates = field(default_factory=LiveGates)
    #: Seconds between steps. A process that takes a step never judges an interval
    #: shorter than this (the long-running manager may take over). Default 30.
    interval_s: float = 30.0
    #: Taken step by step by the long-running manager (``rollout --detach``), not by the
    #: ``rollout`` process that started it. Default False.
    detached: bool = False
    #: Weights of ``steps`` the canary reaches only once a person approves (``approve``):
    #: the analysis keeps judging at the step before, and waits. Default none.
    approve_before: tuple[int, ...] = ()
    #: Waves: the canary's servers at each step, as names (``server_selection``: HOST,
    #: HOST:PORT, dns://NAME:PORT, all), resolved against the fleet when the step is
    #: taken; empty: the plan leaves the canary's servers as they are. Default none.
    servers: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if not 0.1 <= self.interval_s <= 86400:
            raise InvalidGateError(f"invalid interval {self.interval_s}: must be 100ms .. 24h")
        # A first step of 0 judges the canary on shadow traffic only (Routers mirroring
        # stable's requests) before any user request reaches it.
        shown = ",".join(map(str, self.steps))
        if not self.steps:
            raise InvalidGateError("the analysis needs at least one step")
        if any(not 0 <= s <= 100 for s in self.steps):
            raise InvalidGateError(f"invalid steps {shown}: each step must be 0..100")
        if self.servers and len(self.servers) != len(self.steps):
            raise InvalidGateError(
                f"invalid waves: {len(self.servers)} server sets for steps {shown}"
            )
        waves = self.servers or ((),) * len(self.steps)
        pairs = itertools.pairwise(zip(self.steps, waves, strict=True))
        # A wave may widen the canary's servers at the weight it has (e.g. 25% on one
        # server, then 25% on all): a step must raise the weight or change the servers.
        if any(b < a or (b == a and s == t) for (a, s), (b, t) in pairs):
            raise InvalidGateError(f"invalid steps {shown}: steps must increase")
        unknown = [w for w in self.approve_before if w not in self.steps[1:]]
        if unknown:
            raise InvalidGateError(
                f"invalid approval before {','.join(map(str, unknown))}: "
                f"name a step after the first of {shown}"
            )
        if self.threshold < 1:
            raise InvalidGateError(f"invalid threshold {self.threshold}: must be at least 1")
        if self.max_metrics_errors < 1:
            raise InvalidGateError(
                f"invalid max metrics errors {self.max_metrics_errors}: must be at least 1"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "threshold": self.threshold,
            "max_metrics_errors": self.max_metrics_errors,
            "gates": asdict(self.gates),
            "interval_s": self.interval_s,
            "detached": self.detached,
            "approve_before": list(self.approve_before),
        } | ({"servers": [list(names) for names in self.servers]} if self.servers else {})

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> AnalysisPlan:
        """A persisted plan (one written before ``interval_s``/``detached`` takes their
        defaults)."""
        return cls(
            steps=tuple(int(s) for s in document["steps"]),
            threshold=int(document["threshold"]),
            max_metrics_errors=int(document["max_metrics_errors"]),
            gates=LiveGates(**document.get("gates", {})),
            interval_s=float(document.get("interval_s", cls.interval_s)),
            detached=bool(document.get("detached", False)),
            approve_before=tuple(int(w) for w in document.get("approve_before", [])),
            servers=tuple(tuple(str(n) for n in names) for names in document.get("servers", [])),
        )

    def servers_at(self, step: int) -> tuple[str, ...] | None:
        """The server names of the wave ``step`` belongs to; None when the plan has no
        waves (or past its last step)."""
        return self.servers[step] if self.servers and step < len(self.servers) else None


@dataclass(kw_only=True, frozen=True)
class VersionPolicy:
    """Extra versions kept loaded beside the rollout's own (``policy`` command): the latest
    N on disk, all of them, or named ones (e.g. the previous stable, for a fast rollback)."""

    latest: int | None = None
    all_versions: bool = False
    specific: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        chosen = [self.latest is not None, self.all_versions, self.specific is not None]
        if sum(chosen) != 1:
            raise InvalidInputError(
                "give exactly one of --latest N, --all, --specific V[,V...] (or --clear)"
            )
        if self.latest is not None and self.latest < 1:
            raise InvalidInputError(f"invalid --latest {self.latest}: must be at least 1")
        if self.specific is not None:
            if not self.specific:
                raise InvalidInputError("--specific needs at least one version")
            for version in self.specific:
                if validate_version(version) != version:
                    raise InvalidInputError(f"invalid version {version!r}: write it plainly")

    def to_document(self) -> dict[str, Any]:
        """The persisted form: ``{"latest": N}``, ``{"all": true}`` or ``{"specific": [...]}``
        (ascending, each version once)."""
        if self.latest is not None:
            return {"latest": self.latest}
        if self.all_versions:
            return {"all": True}
        return {"specific": sorted(set(self.specific or ()), key=int)}

    @classmethod
    def from_document(cls, document: dict[str, Any] | None) -> VersionPolicy | None:
        if not document:
            return None
        specific = document.get("specific")
        return cls(
            latest=None if document.get("latest") is None else int(document["latest"]),
            all_versions=bool(document.get("all", False)),
            specific=None if specific is None else tuple(str(v) for v in specific),
        )

    def keeps(self, on_disk: list[str]) -> list[str]:
        """Of the versions on disk (ascending), those this policy keeps loaded."""
        if self.all_versions:
            return list(on_disk)
        if self.latest is not None:
            return on_disk[-self.latest :]
        return [v for v in self.specific or () if v in on_disk]


def parse_weight(value: str | int) -> int:
    """A canary weight from the command line (``"25"``); checked by ``check_weight``."""
    try:
        weight = int(str(value).strip())
    except ValueError:
        raise InvalidWeightError(f"invalid weight {value!r}: must be an integer 0..100") from None
    return check_weight(weight)


def parse_steps(text: str) -> tuple[int, ...]:
    """``"10,25,50,100"`` -> the canary weights of the steps (``AnalysisPlan`` checks them)."""
    return parse_step_plan(text)[0]


def parse_step_plan(text: str, approve_before: str = "") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``"10,25,pause,50,100"`` (and ``--approve-before 50``) -> the steps' weights and
    those a person must approve first (the step after each ``pause``)."""
    steps: list[int] = []
    gated: list[int] = []
    pause = False
    try:
        for item in (x.strip() for x in text.split(",")):
            if item.lower() == "pause":
                pause = True
            elif item:
                steps.append(int(item))
                if pause:
                    gated.append(steps[-1])
                pause = False
        gated += [int(x) for x in approve_before.split(",") if x.strip()]
    except ValueError:
        raise InvalidGateError(
            f"invalid --steps {text!r}: integers like 10,25,50,100, 'pause' before a step "
            "that waits for approval"
        ) from None
    if pause:
        raise InvalidGateError(f"invalid --steps {text!r}: 'pause' must come before a step")
    return tuple(steps), tuple(sorted(set(gated)))


#: How a wave of ``--steps`` names its servers: ``servers=NAMES:WEIGHTS``.
WAVE_PREFIX = "servers="


def parse_waves(text: str) -> tuple[str, tuple[tuple[str, ...], ...]]:
    """``"servers=triton-0:10,25; servers=all:25,50,100"`` -> the steps alone
    (``"10,25,25,50,100"``, for ``parse_step_plan``) and each step's server names; a
    ``--steps`` without ``servers=`` has no waves (``()``). NAMES are split from WEIGHTS at
    the last ``:`` (a name may be HOST:PORT); a wave without ``servers=`` keeps the
    previous wave's servers (every server for the first)."""
    if WAVE_PREFIX not in text:
        return text, ()
    weights: list[str] = []
    servers: list[tuple[str, ...]] = []
    names: tuple[str, ...] = ("all",)
    for wave in (w.strip() for w in text.split(";") if w.strip()):
        if wave.startswith(WAVE_PREFIX):
            given, sep, wave = wave.removeprefix(WAVE_PREFIX).rpartition(":")
            names = tuple(n.strip() for n in given.split(",") if n.strip())
            if not sep or not names:
                raise InvalidGateError(
                    f"invalid --steps {text!r}: a wave is servers=NAME[,NAME...]:WEIGHTS"
                )
        items = [x.strip() for x in wave.split(",") if x.strip()]
        weights += items
        servers += [names] * sum(item.lower() != "pause" for item in items)
    return ",".join(weights), tuple(servers)


def parse_policy(*, latest: int | None, all_versions: bool, specific: str | None) -> dict[str, Any]:
    """The ``policy`` command's options as a policy document (``VersionPolicy`` checks them)."""
    versions = (
        None if specific is None else tuple(v.strip() for v in specific.split(",") if v.strip())
    )
    return VersionPolicy(latest=latest, all_versions=all_versions, specific=versions).to_document()
