"""A model's persisted rollout state: desired versions, routing table and history.

One JSON document per model, at ``.repo-manager.<model>.json`` in the repository root.
Triton lists only folders of the root as models, so it neither lists this file nor
reloads a model when it changes (a dot-folder *would* be listed: checked on Triton 2.51).
The document is replaced whole (staged write + rename), so every reader sees one
consistent state; ``generation`` increases with every write.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from repo_manager.errors import StorageError
from repo_manager.phases import Phase
from repo_manager.storage import Storage

__all__ = [
    "PendingPublish",
    "RolloutState",
    "RoutingTable",
    "Transition",
    "cohort_document",
    "cohort_words",
    "load_routing_table",
    "load_state",
    "publish_journal_key",
    "servers_of",
    "state_key",
]

SCHEMA_VERSION = 1


def state_key(model: str) -> str:
    """The storage key of a model's state document."""
    return f".repo-manager.{model}.json"


def publish_journal_key(model: str) -> str:
    """The storage key of a model's publish journal (the publish under way, if any)."""
    return f".repo-manager.{model}.publishing.json"


def cohort_document(document: Any) -> dict[str, Any] | None:
    """A stored cohort as ``{"rule": str, "weight": int}`` (None: no cohort)."""
    if not document:
        return None
    return {"rule": str(document["rule"]), "weight": int(document["weight"])}


def cohort_words(cohort: dict[str, Any] | None) -> str:
    """A cohort as status and history show it: ``cohort 'line=3' at 50%`` ("" for none)."""
    if not cohort:
        return ""
    return f"cohort '{cohort['rule']}' at {cohort['weight']}%"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


#: A history entry's kinds: a phase move (checked against the phase table), or a change
#: of a setting that moves no phase (a version policy), which names no phases.
MOVE = "move"
SETTING = "setting"


@dataclass(kw_only=True, frozen=True)
class Transition:
    """One recorded decision: what happened, when, and from which phase to which (a
    setting change names none: it moves no phase)."""

    at: str
    action: str
    from_phase: str | None
    to_phase: str | None
    stable: str | None
    canary: str | None
    weights: dict[str, int]
    reason: str = ""
    #: The version the public name answered unpinned requests from after this move.
    public: str | None = None
    kind: str = MOVE
    #: Who recorded it (user@host of the process that wrote it; "" in older states).
    who: str = ""
    #: Structured figures behind the reason (an analysis step's readings, verdict and
    #: bounds, under ``"analysis"``); None when the reason says it all.
    details: dict[str, Any] | None = None
    #: The canary's cohort after this move (``RoutingTable.cohort``); None: none.
    cohort: dict[str, Any] | None = None
    #: The canary's servers after this move (None: every server of the fleet).
    servers: list[str] | None = None

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Transition:
        """An entry as written, keeping the fields this version knows: a newer manager's
        entry (one more field, as ``cohort`` and ``servers`` were) must not make the whole
        state unreadable here."""
        return cls(**{k: v for k, v in document.items() if k in _TRANSITION_FIELDS})


_TRANSITION_FIELDS = frozenset(f.name for f in fields(Transition))


@dataclass(kw_only=True, frozen=True)
class PendingPublish:
    """A publish between writing its version and recording its decision.

    Written before the version reaches the repository, cleared once the decision is
    recorded or the publish undone: a manager killed in between leaves it, and
    ``reconcile`` undoes that publish (a version no decision names never got traffic).
    """

    version: str
    #: True when this publish created the model (the undo removes the whole model).
    created_model: bool
    pid: int
    at: str

    def to_json(self) -> bytes:
        return (json.dumps({"pending": asdict(self)}, indent=1) + "\n").encode()

    @staticmethod
    def cleared() -> bytes:
        return b'{"pending": null}\n'

    @classmethod
    def from_json(cls, data: bytes, *, source: str) -> PendingPublish | None:
        try:
            pending = json.loads(data).get("pending")
            return None if pending is None else cls(**pending)
        except (ValueError, TypeError, AttributeError) as exc:
            raise StorageError(f"corrupt publish journal {source}: {exc}") from exc


@dataclass(kw_only=True, frozen=True)
class RoutingTable:
    """What a Router needs: which versions get which share of requests."""

    model: str
    stable: str | None
    canary: str | None
    weights: dict[str, int]
    generation: int
    #: The canary's cohort (``routing/cohort.py``), ``{"rule": TEXT, "weight": W}``: requests
    #: the rule matches go to the canary at W percent, all others by ``weights``; None: none.
    cohort: dict[str, Any] | None = None
    #: The servers (HOST:PORT) the canary is loaded on and may be sent to; None: every
    #: server. Stable is served everywhere.
    servers: tuple[str, ...] | None = None

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> RoutingTable:
        return cls(
            model=str(document["model"]),
            stable=document.get("stable"),
            canary=document.get("canary"),
            weights={str(k): int(v) for k, v in document.get("weights", {}).items()},
            generation=int(document.get("generation", 0)),
            cohort=cohort_document(document.get("cohort")),
            servers=servers_of(document),
        )

    def to_document(self) -> dict[str, Any]:
        """The fields ``from_document`` reads (what the manager's watch endpoint pushes)."""
        return asdict(self)

    def newer_than(self, other: RoutingTable | None) -> bool:
        """True when this table may replace ``other``: generations only grow, so a reader
        that got tables out of order (a push and a poll) never goes back to an older one."""
        return other is None or self.generation > other.generation


@dataclass(kw_only=True)
class RolloutState:
    """Desired state of one model; the manager's single source of truth."""

    model: str
    phase: Phase
    stable: str | None = None
    canary: str | None = None
    weights: dict[str, int] = field(default_factory=dict)
    #: Version being drained and unloaded during promoting / rolling_back.
    retiring: str | None = None
    #: Extra versions kept loaded (``policy`` command): None, or a policy document
    #: ``{"latest": N}``, ``{"all": true}`` or ``{"specific": ["1", "2"]}``.
    policy: dict[str, Any] | None = None
    generation: int = 0
    #: The newest entries only (``history.archive.HISTORY_LIMIT``): Routers read this
    #: document, so it must not grow for ever; older entries are in the archive object.
    history: list[Transition] = field(default_factory=list)
    #: How many of the oldest entries were moved to the archive (its first lines).
    archived: int = 0
    #: Progressive analysis in charge of the canary (None when none): its plan, the step
    #: it is at, failed checks, metrics-source errors, last snapshot and last verdict.
    #: Persisted so that ``advance()`` continues in any process.
    analysis: dict[str, Any] | None = None
    #: What the public name does with requests that name no version: "stable" (answer
    #: from stable only) or "weighted" (by ``weights``; ``policy --unpinned``).
    unpinned: str = "stable"
    #: Share (0..1) of the unpinned requests stable answers that the weighted public name
    #: also sends to the canary in the background (``policy --shadow``): the Router's
    #: shadow, for clients that cannot use the Router.
    unpinned_shadow: float = 0.0
    #: The canary's cohort (``RoutingTable.cohort``); cleared at promote and rollback.
    cohort: dict[str, Any] | None = None
    #: The servers (HOST:PORT, as the manager's fleet names them) the canary is limited
    #: to (``--servers``/``--exclude``); None: every server. Cleared by promote and at the
    #: end of a rollback; a rolling-back state keeps it (the retiring canary is only there).
    servers: tuple[str, ...] | None = None

    @property
    def restricted(self) -> str | None:
        """The version only ``servers`` may hold: the canary, or a canary being rolled
        back; None when the rollout is not limited to some servers."""
        if self.servers is None:
            return None
        return self.canary if self.canary is not None else self.retiring

    def holds_restricted(self, url: str) -> bool:
        """True when the server at ``url`` may hold the restricted version."""
        return self.servers is None or url in self.servers

    def may_hold(self, version: str, url: str) -> bool:
        """True when the server at ``url`` may hold ``version``: any but the restricted
        version, and that one only on its servers."""
        return version != self.restricted or self.holds_restricted(url)

    @property
    def serving_versions(self) -> list[str]:
        """Versions the rollout itself needs loaded (stable, canary, retiring)."""
        versions = {v for v in (self.stable, self.canary, self.retiring) if v is not None}
        return sorted(versions, key=int)

    def routing_table(self) -> RoutingTable:
        return RoutingTable(
            model=self.model,
            stable=self.stable,
            canary=self.canary,
            weights=dict(self.weights),
            generation=self.generation,
            cohort=self.cohort,
            servers=self.servers,
        )

    def to_json(self) -> bytes:
        document = {
            "schema": SCHEMA_VERSION,
            "model": self.model,
            "phase": self.phase.value,
            "stable": self.stable,
            "canary": self.canary,
            "weights": self.weights,
            "retiring": self.retiring,
            "policy": self.policy,
            "generation": self.generation,
            "history": [asdict(t) for t in self.history],
            "archived": self.archived,
            "analysis": self.analysis,
            "unpinned": self.unpinned,
            "unpinned_shadow": self.unpinned_shadow,
            "cohort": self.cohort,
            "servers": None if self.servers is None else list(self.servers),
        }
        return (json.dumps(document, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, *, source: str) -> RolloutState:
        try:
            document = json.loads(data)
            return cls(
                model=str(document["model"]),
                phase=Phase(document["phase"]),
                stable=document.get("stable"),
                canary=document.get("canary"),
                weights={str(k): int(v) for k, v in document.get("weights", {}).items()},
                retiring=document.get("retiring"),
                policy=document.get("policy"),
                generation=int(document.get("generation", 0)),
                history=[Transition.from_document(t) for t in document.get("history", [])],
                archived=int(document.get("archived", 0)),
                analysis=document.get("analysis"),
                unpinned=str(document.get("unpinned", "stable")),
                unpinned_shadow=float(document.get("unpinned_shadow", 0.0)),
                cohort=cohort_document(document.get("cohort")),
                servers=servers_of(document),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"corrupt rollout state {source}: {exc}") from exc


def servers_of(document: dict[str, Any]) -> tuple[str, ...] | None:
    """A document's ``servers`` (a list of HOST:PORT, or null: every server)."""
    servers = document.get("servers")
    return None if servers is None else tuple(str(s) for s in servers)


def load_state(storage: Storage, model: str) -> RolloutState | None:
    """The model's persisted state, or None when it was never published."""
    key = state_key(model)
    data = storage.read_bytes(key)
    if data is None:
        return None
    return RolloutState.from_json(data, source=f"{storage.location}/{key}")


def load_routing_table(storage: Storage, model: str) -> RoutingTable | None:
    """Only the routing part of the state (what Routers poll)."""
    key = state_key(model)
    data = storage.read_bytes(key)
    if data is None:
        return None
    try:
        return RoutingTable.from_document(json.loads(data))
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"corrupt routing table {storage.location}/{key}: {exc}") from exc
