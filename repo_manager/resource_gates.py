"""Live gates on the servers' memory while a canary is loaded: the share of each GPU's (and
the host's) memory in use, held for a minute, and the growth of each server's resident
memory since the canary was first judged.

These are gauges of a server, not counters of a version: Triton reports no memory per
model (``nv_gpu_memory_used_bytes`` per GPU, ``nv_cpu_memory_used_bytes`` for the whole
host), and the resident memory of a CPU server (tritonserver and its backend stubs, one
per model instance) comes from ``repo-manager serve --process-metrics-port``
(``repo_manager_server_resident_bytes``). A canary loaded beside stable is what changed on
those servers, so the gate holds it responsible: the field guides' rule is "GPU memory
above 95% for a minute: roll back".

Why a minute of readings and not one: a share measured once above the bound is often an
allocation that is released again (a large batch, a warm-up); the gate fails only when
every reading of the last ``memory_window_s`` was above it, and the readings span that long.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from repo_manager.gates import GateResult, LiveGates

__all__ = [
    "BASELINE_KEY",
    "RESOURCE_KEYS",
    "memory_shares",
    "resource_gates",
    "resource_readings",
    "with_resident_baseline",
]

Snapshot = Mapping[str, Mapping[str, float]]

#: Snapshot keys of the servers' gauges: device (``SERVER GPU`` or ``SERVER host``) ->
#: bytes, and server -> resident bytes (``metric_sources.RESOURCE_QUERIES``).
USED, TOTAL, RESIDENT = "memory_used", "memory_total", "resident"
RESOURCE_KEYS = (USED, TOTAL, RESIDENT)
#: Each server's resident bytes at the first reading of the analysis (or guard), carried
#: from snapshot to snapshot: what growth is measured from.
BASELINE_KEY = "resident_baseline"

MIB = 1024 * 1024


def memory_shares(reading: Snapshot) -> dict[str, float]:
    """Each device's share of its memory in use (devices that report a total)."""
    used, total = reading.get(USED, {}), reading.get(TOTAL, {})
    return {d: used[d] / total[d] for d in sorted(used) if total.get(d)}


def with_resident_baseline(
    reading: Snapshot, before: Snapshot | None
) -> dict[str, dict[str, float]]:
    """``reading`` with the baseline of every server's resident memory: the previous
    snapshot's, else (the first reading, or a server seen for the first time) its own."""
    baseline = dict((before or {}).get(BASELINE_KEY, {}))
    for server, resident in reading.get(RESIDENT, {}).items():
        baseline.setdefault(server, resident)
    document = {key: dict(values) for key, values in reading.items()}
    if baseline:  # no server reports its resident memory: the reading stays as it was
        document[BASELINE_KEY] = baseline
    return document


def _held_share(
    kept: Sequence[tuple[float, Snapshot]], *, seconds: float
) -> tuple[float | None, str]:
    """The highest share every reading since ``seconds`` ago stayed above (from the last
    reading at or before then), on the device where it is highest, and a detail; None
    when the readings do not reach back that far."""
    at = kept[-1][0]
    starts = [i for i, (t, _) in enumerate(kept) if t <= at - seconds]
    inside = [(t, memory_shares(r)) for t, r in kept[starts[-1] if starts else 0 :]]
    devices = set(inside[-1][1])
    if not devices:
        return None, ""
    lowest = {d: min(shares.get(d, 0.0) for _, shares in inside) for d in devices}
    device = max(lowest, key=lambda d: lowest[d])
    spanned = at - inside[0][0]
    if not starts:
        now = inside[-1][1][device]
        return None, f"{device} {now:.1%} now; readings span {spanned:.0f} s of {seconds:g}"
    return lowest[device], f"{device}: at least {lowest[device]:.1%} for {spanned:.0f} s"


def _growth(reading: Snapshot) -> tuple[float | None, str]:
    """The largest growth of a server's resident memory since its baseline, as a share of
    the baseline, and a detail."""
    resident, baseline = reading.get(RESIDENT, {}), reading.get(BASELINE_KEY, {})
    grown = {s: resident[s] / baseline[s] - 1.0 for s in resident if baseline.get(s)}
    if not grown:
        return None, ""
    server = max(grown, key=lambda s: grown[s])
    detail = (
        f"{server}: {resident[server] / MIB:.0f} MiB resident, "
        f"{baseline[server] / MIB:.0f} MiB when first judged"
    )
    return grown[server], detail


def resource_gates(kept: Sequence[tuple[float, Snapshot]], *, gates: LiveGates) -> list[GateResult]:
    """The memory gates over the readings ``kept`` (oldest first, this one last, each with
    its unix time); none for a gauge no source reports."""
    if not kept:
        return []
    results = []
    share, detail = _held_share(kept, seconds=gates.memory_window_s)
    if detail:
        results.append(GateResult.of(gates, "max_memory_share", share, detail, source="server"))
    growth, detail = _growth(kept[-1][1])
    if detail:
        results.append(GateResult.of(gates, "max_resident_growth", growth, detail, source="server"))
    return results


def resource_readings(reading: Snapshot) -> dict[str, dict[str, float]]:
    """What a step records of the servers: each device's share of memory in use, each
    server's resident MiB and its growth since the baseline."""
    result: dict[str, dict[str, float]] = {
        device: {"memory_share": share} for device, share in memory_shares(reading).items()
    }
    baseline = reading.get(BASELINE_KEY, {})
    for server, resident in reading.get(RESIDENT, {}).items():
        entry = result.setdefault(server, {})
        entry["resident_mib"] = resident / MIB
        if baseline.get(server):
            entry["resident_growth"] = resident / baseline[server] - 1.0
    return result
