"""Pure text renderers of the commands' answers (unit-tested without a server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from repo_manager.state import RolloutState, cohort_words

__all__ = [
    "decision_text",
    "history_text",
    "reconcile_text",
    "report_text",
    "status_text",
    "transition_text",
    "watch_text",
]


def status_text(doc: dict[str, Any]) -> str:
    weights = ", ".join(f"v{v}: {w}%" for v, w in doc["weights"].items())
    lines = [
        f"{doc['model']}  phase {doc['phase']}  stable {doc['stable']}  "
        f"canary {doc['canary'] or '-'}  weights {weights}",
    ]
    if doc.get("cohort"):
        lines.append(f"  {_cohort_line(doc['cohort'])}")
    public = doc["public"]
    lines.append(
        f"  public name {public['name']} (clients that name no version): "
        + (f"version {public['version']}" if public["version"] else "not loaded")
        + f"; the Router calls {doc['versions_model']} pinned"
        + (f"; contract {doc['contract']}" if doc.get("contract") else "")
    )
    lines += [f"  version {v['version']}: {v['state']}" for v in doc["versions"]]
    lines += [f"  REFUSED {what}: {why}" for what, why in doc.get("refused", {}).items()]
    if doc.get("canary_servers") is not None:
        lines.append(f"  canary servers: only {', '.join(doc['canary_servers'])}")
    for server in doc["servers"]:
        if server["error"]:
            lines.append(f"  server {server['url']}: {server['error']}")
        elif len(doc["servers"]) > 1:
            lines.append(f"  server {_server_line(doc, server)}")
    analysis = doc.get("analysis")
    if analysis:
        plan = analysis["plan"]
        lines.append(
            f"  analysis: step {min(analysis['step'] + 1, len(plan['steps']))}"
            f"/{len(plan['steps'])} "
            f"failed checks {analysis['failed_checks']}/{plan['threshold']} "
            f"metrics errors {analysis['metrics_errors']}/{plan['max_metrics_errors']}"
        )
        last = analysis.get("last")
        if last:
            lines.append(f"  last analysis: {last['outcome']} {last['reason']}")
    if doc["last_transition"]:
        t = doc["last_transition"]
        moved = "" if t.get("kind") == "setting" else f" ({t['from']} -> {t['to']})"
        by = f" by {t['who']}" if t.get("who") else ""
        lines.append(f"  last: {t['action']}{moved} at {t['at']}{by}")
    return "\n".join(lines)


def transition_text(transition: Any) -> str:
    reason = f": {transition.reason}" if transition.reason else ""
    return f"{transition.at} {transition.action}{reason}"


def decision_text(state: RolloutState) -> str:
    return transition_text(state.history[-1]) if state.history else ""


def report_text(doc: dict[str, Any]) -> str:
    def fmt(value: Any, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    lines = [f"golden set {doc['golden']}: {doc['images']} images, {doc['labelled']} labelled"]
    for role in ("stable", "candidate"):
        r = doc[role]
        lines.append(
            f"  {role} v{r['version']}: mAP50 {fmt(r['map50'])} mAP50-95 {fmt(r['map50_95'])} "
            f"p50 {fmt(r['latency_p50_ms'], '.1f')} ms p95 {fmt(r['latency_p95_ms'], '.1f')} ms "
            f"errors {r['errors']}/{r['images']}"
            + ("" if r["agreement"] is None else f" agreement {r['agreement']:.3f}")
        )
        if r.get("new_classes"):  # not counted for or against it: stable has no such class
            shown = ", ".join(f"{name} {count}" for name, count in r["new_classes"].items())
            lines.append(f"    classes stable does not know (detections): {shown}")
        if r.get("missing_classes"):
            lines.append(
                f"    stable's classes it does not name: {', '.join(r['missing_classes'])}"
            )
    for g in doc["gates"]:
        shown = "-" if g["value"] is None else f"{g['value']:.4g}"
        verdict = "ok" if g["passed"] else "FAILED"
        lines.append(f"  gate {g['name']}: {shown} (bound {g['bound']:g}) {verdict}")
    return "\n".join(lines)


def reconcile_text(documents: Sequence[dict[str, Any]]) -> str:
    """One line per model: desired versions and what the pass did (or why it refused)."""
    return (
        "\n".join(
            f"{d['model']}: REFUSED: {d['refused']}"
            if d.get("refused")
            else f"{d['model']}: versions {','.join(d['desired'])}; "
            f"{'; '.join(d['actions']) or 'already in desired state'}"
            for d in documents
        )
        or "no published models"
    )


def short_time(at: str) -> str:
    """``2026-12-06T23:50:01.123+00:00`` -> ``2026-12-06 23:50:01`` (UTC, as recorded)."""
    return at[:19].replace("T", " ")


def _cohort_line(cohort: dict[str, Any]) -> str:
    return (
        f"{cohort_words(cohort)}: requests it matches go to the canary at "
        f"{cohort['weight']}%, all others by the weights"
    )


def _server_line(doc: dict[str, Any], server: dict[str, Any]) -> str:
    """``URL: v1 READY, v2 READY; public -> v1`` (+ `` [canary server]`` where the canary
    is limited to some servers and this is one of them)."""
    held = ", ".join(f"v{v['version']} {v['state']}" for v in server["versions"])
    answers = f"public -> v{server['public']}" if server["public"] else "public not loaded"
    limited = doc.get("canary_servers")
    mark = " [canary server]" if limited is not None and server["url"] in limited else ""
    return f"{server['url']}{mark}: {held or 'no versions'}; {answers}"


def _weights(weights: dict[str, int]) -> str:
    return " ".join(f"v{v} {w}%" for v, w in weights.items()) or "-"


def history_text(entries: Sequence[dict[str, Any]]) -> str:
    """One line per entry, oldest first (time UTC, action, phases, weights after, who),
    then why on the next line."""
    if not entries:
        return "no history"
    lines = [f"{'TIME (UTC)':<19}  {'ACTION':<38} {'PHASE':<27} {'WEIGHTS':<15} WHO"]
    for e in entries:
        phases = "(setting)" if e["kind"] == "setting" else f"{e['from'] or '-'} -> {e['to']}"
        lines.append(
            f"{short_time(e['at'])}  {e['action']:<38} {phases:<27} "
            f"{_weights(e['weights']):<15} {e['who'] or '-'}"
        )
        if e.get("cohort") and "cohort" not in e["action"]:
            lines.append(f"{'':21}{cohort_words(e['cohort'])}")
        if e.get("servers") is not None:
            lines.append(f"{'':21}canary servers: {', '.join(e['servers'])}")
        if e["reason"]:
            lines.append(f"{'':21}why: {e['reason']}")
    return "\n".join(lines)


def _steps_line(doc: dict[str, Any]) -> str:
    analysis = doc.get("analysis")
    if not analysis:
        return "steps     none: the weights are set by hand (rollout puts an analysis in charge)"
    steps, at = analysis["plan"]["steps"], analysis["step"]
    marked = [f"[{w}%]" if i == at else f"{w}%" for i, w in enumerate(steps)]
    waves = analysis["plan"].get("servers")
    if waves:  # each wave's servers before its first step: "servers=triton-0: 10%"
        marked = [
            f"servers={','.join(waves[i])}: {m}" if i == 0 or waves[i] != waves[i - 1] else m
            for i, m in enumerate(marked)
        ]
    where = f"step {at + 1} of {len(steps)}" if at < len(steps) else "all passed"
    if doc["phase"] in ("rolling_back", "rolled_back"):
        where = f"rolled back at {where}"
    return f"steps     {' > '.join(marked)}   ({where})"


def _bar(weight: int, width: int = 20) -> str:
    filled = round(weight * width / 100)
    return "#" * filled + "." * (width - filled)


def _live_lines(
    live: dict[str, dict[str, dict[str, Any]]] | None, note: str, seconds: float | None
) -> list[str]:
    if live is None:
        return [f"live      {note}"]
    if not live:
        return [f"live      no requests in the last {seconds or 0:.1f} s ({note})"]
    lines = [f"live      over the last {seconds or 0:.1f} s ({note})"]
    for source, roles in live.items():
        for role, r in roles.items():
            rate = r.get("rate")
            errors = "-" if r["error_rate"] is None else f"{r['error_rate'] * 100:.2f}%"
            latency = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.1f} ms"
            found = ""
            if r.get("boxes_per_image") is not None:
                confidence = r.get("mean_confidence")
                found = f"  boxes/image {r['boxes_per_image']:.2f}" + (
                    "" if confidence is None else f"  confidence {confidence:.2f}"
                )
            lines.append(
                f"  {source:<7} {role:<7} v{r['version']:<4} "
                f"{'-' if rate is None else f'{rate:.1f}':>7} req/s  errors {errors:>7}  "
                f"latency {latency}{found}"
            )
    return lines


def watch_text(
    doc: dict[str, Any],
    *,
    live: dict[str, dict[str, dict[str, Any]]] | None,
    note: str,
    seconds: float | None,
    recent: Sequence[Any],
    now: str,
    memory: dict[str, dict[str, float]] | None = None,
) -> str:
    """One frame of ``status --watch``: phase, steps (the current one marked), weights,
    analysis counters and last gates, per-version live figures, each server (and its
    memory, where a source reports it), and the recent history. ``live``:
    ``analysis.readings`` over the last ``seconds`` (None when there are none yet; ``note``
    says why, or names the source)."""
    lines = [
        f"{doc['model']}  phase {doc['phase']}  stable {doc['stable']}  "
        f"canary {doc['canary'] or '-'}  generation {doc['generation']}  at {now} UTC",
        _steps_line(doc),
    ]
    if doc.get("canary_servers") is not None:
        lines.append(f"servers   canary only on {', '.join(doc['canary_servers'])}")
    lines += [f"weight    v{v:<4} {w:>3}% {_bar(w)}" for v, w in doc["weights"].items()]
    if doc.get("cohort"):
        lines.append(f"cohort    {_cohort_line(doc['cohort'])}")
    analysis = doc.get("analysis")
    if analysis:
        plan = analysis["plan"]
        lines.append(
            f"analysis  failed checks {analysis['failed_checks']}/{plan['threshold']}  "
            f"metrics errors {analysis['metrics_errors']}/{plan['max_metrics_errors']}"
        )
        last = analysis.get("last")
        if last:
            lines.append(f"  last verdict: {last['outcome']}")
            for g in last["gates"]:
                shown = "n/a" if g["value"] is None else f"{g['value']:.4g}"
                verdict = "ok" if g["passed"] else "FAILED"
                lines.append(f"    {g['name']:<24} {shown:>8} (bound {g['bound']:g}) {verdict}")
    lines += _live_lines(live, note, seconds)
    for server in doc["servers"]:
        if server["error"]:
            lines.append(f"server    {server['url']}: {server['error']}")
            continue
        lines.append(f"server    {_server_line(doc, server)}")
    lines += _memory_lines(memory or {})
    if recent:
        lines.append("history")
        lines += [f"  {short_time(t.at)[11:]} {t.action}" + _why(t.reason) for t in recent]
    return "\n".join(lines)


def _memory_lines(memory: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    for device, figures in memory.items():
        shown = []
        if "memory_share" in figures:
            shown.append(f"{figures['memory_share']:.1%} of memory in use")
        if "resident_mib" in figures:
            shown.append(f"{figures['resident_mib']:.0f} MiB resident")
        if "resident_growth" in figures:
            shown.append(f"{figures['resident_growth']:+.1%} since first judged")
        lines.append(f"memory    {device}: {', '.join(shown)}")
    return lines


def _why(reason: str, width: int = 110) -> str:
    if not reason:
        return ""
    return ": " + (reason if len(reason) <= width else reason[: width - 3] + "...")
