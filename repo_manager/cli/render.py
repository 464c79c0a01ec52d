"""Pure text renderers of the commands' answers (unit-tested without a server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from repo_manager.state import RolloutState

__all__ = ["decision_text", "reconcile_text", "report_text", "status_text", "transition_text"]


def status_text(doc: dict[str, Any]) -> str:
    weights = ", ".join(f"v{v}: {w}%" for v, w in doc["weights"].items())
    lines = [
        f"{doc['model']}  phase {doc['phase']}  stable {doc['stable']}  "
        f"canary {doc['canary'] or '-'}  weights {weights}",
    ]
    public = doc["public"]
    lines.append(
        f"  public name {public['name']} (clients that name no version): "
        + (f"version {public['version']}" if public["version"] else "not loaded")
        + f"; the Router calls {doc['versions_model']} pinned"
    )
    lines += [f"  version {v['version']}: {v['state']}" for v in doc["versions"]]
    for server in doc["servers"]:
        if server["error"]:
            lines.append(f"  server {server['url']}: {server['error']}")
        elif len(doc["servers"]) > 1:
            held = ", ".join(f"v{v['version']} {v['state']}" for v in server["versions"])
            answers = f"public -> v{server['public']}" if server["public"] else "public not loaded"
            lines.append(f"  server {server['url']}: {held or 'no versions'}; {answers}")
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
        lines.append(f"  last: {t['action']}{moved} at {t['at']}")
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
    for g in doc["gates"]:
        shown = "-" if g["value"] is None else f"{g['value']:.4g}"
        verdict = "ok" if g["passed"] else "FAILED"
        lines.append(f"  gate {g['name']}: {shown} (bound {g['bound']:g}) {verdict}")
    return "\n".join(lines)


def reconcile_text(documents: Sequence[dict[str, Any]]) -> str:
    """One line per model: desired versions and what the pass did."""
    return (
        "\n".join(
            f"{d['model']}: versions {','.join(d['desired'])}; "
            f"{'; '.join(d['actions']) or 'already in desired state'}"
            for d in documents
        )
        or "no published models"
    )
