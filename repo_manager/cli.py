"""The ``repo-manager`` command line.

Every RepoManagerError becomes one line on stderr and its exit code (2 bad input,
1 operational failure); click's usage errors become one line and exit 2. No traceback
reaches the user unless REPO_MANAGER_DEBUG=1.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from repo_manager.discovery import has_dns, resolve_urls
from repo_manager.errors import (
    GateFailedError,
    InvalidGateError,
    InvalidInputError,
    RepoManagerError,
    TritonUnavailableError,
)
from repo_manager.gates import GoldenGates, LiveGates, parse_gate_overrides
from repo_manager.phases import Phase
from repo_manager.repository import ModelRepository, validate_model_name, validate_version
from repo_manager.rollout import (
    AnalysisPlan,
    RolloutManager,
    RolloutSettings,
    parse_policy,
    parse_steps,
    parse_weight,
    resolve_weights,
)
from repo_manager.state import RolloutState
from repo_manager.storage import LocalStorage, Storage, open_storage
from repo_manager.timing import PhaseTimer
from repo_manager.transport import GrpcSecurity, expand_urls, parse_headers
from repo_manager.triton import TritonFleet

DEFAULT_REPOSITORY = "./model_repository"
DEFAULT_URL = "localhost:8001"


@dataclass(kw_only=True)
class Context:
    repository: str
    urls: list[str]
    s3_endpoint: str | None = None
    security: GrpcSecurity | None = None
    verbose: bool = False

    def _progress(self, line: str) -> None:
        if self.verbose:
            click.echo(line, err=True)

    def storage(self) -> Storage:
        return open_storage(self.repository, s3_endpoint=self.s3_endpoint)

    def manager(self, *, drain_seconds: float | None = None) -> RolloutManager:
        settings = (
            RolloutSettings()
            if drain_seconds is None
            else RolloutSettings(drain_seconds=drain_seconds)
        )
        return RolloutManager(
            ModelRepository(self.storage()),
            TritonFleet(resolve_urls(self.urls), security=self.security),
            settings=settings,
            progress=self._progress,
        )


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Context).verbose = True


def verbose_option(func: Any) -> Any:
    """``-v/--verbose``: progress lines on stderr (errors stay one line without it)."""
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=_set_verbose,
        help="Print each step on stderr.",
    )(func)


def drain_option(func: Any) -> Any:
    """``--drain-seconds``: time for live Routers to follow the table before an unload."""
    return click.option(
        "--drain-seconds",
        type=click.FloatRange(0, 600),
        default=None,
        help="Wait between moving traffic and unloading [default: 1.5].",
    )(func)


def _emit(document: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(document, indent=2) if as_json else text)


def _require_repository(obj: Context) -> None:
    """One clear line before any work: missing folder or bucket, bad credentials, no S3."""
    obj.storage().check()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repository",
    envvar="REPO_MANAGER_REPOSITORY",
    default=DEFAULT_REPOSITORY,
    show_default=True,
    help="Model repository: a folder (or s3://bucket/prefix).",
)
@click.option(
    "--url",
    "urls",
    envvar="TRITON_URL",
    multiple=True,
    help="Triton gRPC HOST:PORT, or dns://NAME:PORT: every address of NAME (a headless "
    "Service), resolved again on each reconcile --watch pass; repeat for a fleet.  "
    f"[default: {DEFAULT_URL}]",
)
@click.option(
    "--resolve-dns",
    is_flag=True,
    help="Expand each HOST:PORT --url into every address its name resolves to, once "
    "(dns:// names are resolved again over time).",
)
@click.option(
    "--s3-endpoint",
    envvar="AWS_ENDPOINT_URL",
    default=None,
    help="S3-compatible endpoint http(s)://HOST:PORT (env AWS_ENDPOINT_URL). "
    "Credentials: the standard AWS variables or profiles.",
)
@click.option("--tls", is_flag=True, help="gRPC over TLS to Triton (system roots).")
@click.option(
    "--tls-ca", type=click.Path(dir_okay=False), default=None, help="CA bundle (PEM) for TLS."
)
@click.option(
    "--tls-cert", type=click.Path(dir_okay=False), default=None, help="Client certificate (PEM)."
)
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="Client key (PEM).")
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="NAME=VALUE",
    help="gRPC metadata on every call to Triton (e.g. for an auth proxy); repeatable.",
)
@click.version_option(package_name="repo-manager")
@click.pass_context
def cli(
    ctx: click.Context,
    repository: str,
    urls: tuple[str, ...],
    resolve_dns: bool,
    s3_endpoint: str | None,
    tls: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    headers: tuple[str, ...],
) -> None:
    """Canary rollouts of YOLOv8 detectors inside NVIDIA Triton."""
    if len(urls) == 1 and "," in urls[0]:  # TRITON_URL=a:8001,b:8001
        urls = tuple(u.strip() for u in urls[0].split(",") if u.strip())
    security = GrpcSecurity(
        tls=tls, ca=tls_ca, cert=tls_cert, key=tls_key, headers=parse_headers(headers)
    )
    ctx.obj = Context(
        repository=repository,
        urls=expand_urls(list(urls) or [DEFAULT_URL], resolve=resolve_dns),
        s3_endpoint=s3_endpoint or None,
        security=security,
    )


_EXPORT_PARAMETERS = (
    "fmt",
    "imgsz",
    "max_batch",
    "fp16",
    "int8",
    "calibration_images",
    "cache_dir",
    "workspace_gib",
    "ort_tensorrt",
)


def parse_interval(text: str, option: str = "--interval") -> float:
    """``30s``, ``2m``, ``500ms`` or plain seconds -> seconds (0.1 .. 86400)."""
    raw = text.strip().lower()
    scale = 1.0
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if raw.endswith(suffix):
            raw, scale = raw[: -len(suffix)], factor
            break
    try:
        seconds = float(raw) * scale
    except ValueError:
        raise InvalidGateError(f"invalid {option} {text!r}: e.g. 30s, 2m, 500ms") from None
    if not 0.1 <= seconds <= 86400:
        raise InvalidGateError(f"invalid {option} {text!r}: must be 100ms .. 24h")
    return seconds


def analysis_options(func: Any) -> Any:
    """Options of the progressive analysis (``rollout`` and ``publish --auto``)."""
    for option in reversed(
        [
            click.option(
                "--steps",
                default="10,25,50,100",
                show_default=True,
                help="Canary weights, one per passed interval; the last promotes.",
            ),
            click.option(
                "--interval",
                default="30s",
                show_default=True,
                help="Time between analysis steps (30s, 2m, 500ms).",
            ),
            click.option(
                "--threshold",
                type=int,
                default=2,
                show_default=True,
                help="Failed checks at which the canary is rolled back.",
            ),
            click.option(
                "--max-metrics-errors",
                type=int,
                default=5,
                show_default=True,
                help="Unreadable metrics steps in a row before stopping "
                "(the canary keeps its weight; never a rollback).",
            ),
            click.option(
                "--metrics-url",
                "metrics_urls",
                multiple=True,
                help="Prometheus text endpoint to scrape (repeatable): Triton's "
                "metrics port, Routers' metrics ports.  [default: localhost:8002]",
            ),
            click.option(
                "--prometheus",
                default=None,
                help="Prometheus server URL: read figures with PromQL instead.",
            ),
            click.option(
                "--live-gate",
                "live_gates",
                multiple=True,
                help="Live gate bound NAME=VALUE (repeatable), e.g. max_latency_ratio=1.3.",
            ),
            click.option(
                "--metrics-port",
                type=click.IntRange(1, 65535),
                default=None,
                help="Expose weight, phase, failed checks and gates on this port.",
            ),
        ]
    ):
        func = option(func)
    return func


def serve_metrics_options(port_help: str) -> Any:
    """``--metrics-port`` and ``--metrics-addr`` of the long-running commands."""

    def decorate(func: Any) -> Any:
        func = click.option(
            "--metrics-addr",
            default="127.0.0.1",
            show_default=True,
            help="Address for --metrics-port (0.0.0.0: all, e.g. in a container).",
        )(func)
        return click.option(
            "--metrics-port", type=click.IntRange(1, 65535), default=None, help=port_help
        )(func)

    return decorate


def export_options(func: Any) -> Any:
    """Options shared by ``export`` and ``publish``, handed over as one ``export_options``."""

    @functools.wraps(func)
    def with_export_options(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _EXPORT_PARAMETERS}
        from export import ExportOptions

        kwargs["export_options"] = ExportOptions(format=values.pop("fmt"), **values)
        return func(*args, **kwargs)

    wrapped: Any = with_export_options
    for option in reversed(
        [
            click.option(
                "--format",
                "fmt",
                type=click.Choice(["python", "onnx", "plan"]),
                default="python",
                show_default=True,
                help="python: onnxruntime in Triton's python backend (CPU); "
                "onnx: onnxruntime backend; plan: TensorRT (GPU).",
            ),
            click.option("--imgsz", type=click.IntRange(32, 4096), default=640, show_default=True),
            click.option("--max-batch", type=click.IntRange(1, 1024), default=8, show_default=True),
            click.option("--fp16", is_flag=True, help="FP16 engine (plan only)."),
            click.option("--int8", is_flag=True, help="INT8 engine (plan only)."),
            click.option(
                "--calibration-images",
                type=click.Path(exists=True, file_okay=False, path_type=Path),
                default=None,
                help="Images for INT8 calibration (plan only).",
            ),
            click.option(
                "--cache-dir",
                type=click.Path(file_okay=False, path_type=Path),
                default=None,
                help="TensorRT caches [default: ~/.cache/repo-manager/tensorrt].",
            ),
            click.option(
                "--workspace-gib",
                type=click.FloatRange(0.25, 1024),
                default=4.0,
                show_default=True,
                help="TensorRT builder workspace limit (plan only).",
            ),
            click.option(
                "--ort-tensorrt",
                is_flag=True,
                help="onnx format: run through onnxruntime's TensorRT accelerator on GPU.",
            ),
        ]
    ):
        wrapped = option(wrapped)
    return wrapped


@cli.command()
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: all)."
)
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.pass_obj
def serve(
    obj: Context,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    host: str,
    log_file: Path | None,
) -> None:
    """Run the embedded tritonserver on the repository (foreground) and reconcile it."""
    from repo_manager.server import EmbeddedTriton, ServerPorts

    storage = obj.storage()
    if isinstance(storage, LocalStorage):
        storage.root.mkdir(parents=True, exist_ok=True)
    storage.check()
    server = EmbeddedTriton(
        storage.triton_location,
        ports=ServerPorts(http=http_port, grpc=grpc_port, metrics=metrics_port),
        log_path=log_file,
        host=host,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    try:
        server.wait_ready()
        click.echo(
            f"tritonserver ready: grpc {server.grpc_url}, http {server.http_url}, "
            f"metrics {server.metrics_url}",
            err=True,
        )
        local = Context(
            repository=obj.repository, urls=[server.grpc_url], s3_endpoint=obj.s3_endpoint
        )
        for report in local.manager().reconcile():
            click.echo(f"{report.model}: versions {','.join(report.desired)} loaded", err=True)
        while not stop.wait(0.5):
            if not server.is_alive():
                raise click.ClickException("tritonserver exited")
    finally:
        server.stop()


@cli.command("export")
@click.argument("weights", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Model folder to write (config.pbtxt + VERSION/).",
)
@click.option("--name", default=None, help="Model name in the config [default: output's name].")
@click.option("--version", "version", default="1", show_default=True)
@click.option(
    "--add-gpu",
    is_flag=True,
    help="Add this GPU kind's plan to the existing VERSION (fleets of several GPU kinds).",
)
@export_options
def export_command(
    weights: Path,
    output: Path,
    name: str | None,
    version: str,
    add_gpu: bool,
    export_options: Any,
) -> None:
    """Export Ultralytics WEIGHTS into a Triton model folder."""
    from export import export_model, export_plan_for_this_gpu

    model = validate_model_name(name or output.resolve().name)
    version = validate_version(version)
    if not add_gpu and (output / version).exists():
        raise InvalidInputError(f"{output / version} already exists")
    export = export_plan_for_this_gpu if add_gpu else export_model
    result = export(
        resolve_weights(model, str(weights)),
        output,
        model_name=model,
        version=version,
        options=export_options,
    )
    plans = sorted(result.manifest.get("plans", {}))
    suffix = f" (plans for compute capability {', '.join(plans)})" if plans else ""
    click.echo(f"exported {result.version_dir}{suffix}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("model")
@click.argument("version")
@verbose_option
@click.option("--weights", default=None, help="Ultralytics .pt [default: MODEL.pt here].")
@click.option(
    "--exported",
    type=click.Path(path_type=Path),
    default=None,
    help="Publish VERSION of a model folder `export` wrote (e.g. plans for several GPU kinds).",
)
@export_options
@click.option(
    "--canary-weight",
    default="10",
    show_default=True,
    help="Percent of traffic a new canary starts with.",
)
@click.option("--force", is_flag=True, help="Publish a plan even if the servers' TensorRT differs.")
@click.option(
    "--golden",
    type=click.Path(path_type=Path),
    default=None,
    help="Golden-set folder: the canary must pass its gates before any traffic.",
)
@click.option(
    "--gate",
    "gates",
    multiple=True,
    help="Golden gate bound NAME=VALUE (repeatable), e.g. max_map50_drop=0.02.",
)
@click.option("--auto", is_flag=True, help="Then run the progressive analysis (as `rollout`).")
@analysis_options
@drain_option
@click.pass_obj
def publish(
    obj: Context,
    model: str,
    version: str,
    weights: str | None,
    exported: Path | None,
    export_options: Any,
    canary_weight: str,
    force: bool,
    golden: Path | None,
    gates: tuple[str, ...],
    auto: bool,
    drain_seconds: float | None,
    **analysis: Any,
) -> None:
    """Publish VERSION of MODEL: first becomes stable, later ones the canary."""
    model = validate_model_name(model)
    version = validate_version(version)
    weight = parse_weight(canary_weight)
    golden_gates = parse_gate_overrides(GoldenGates(), gates)
    plan, provider = _analysis_setup(analysis) if auto else (None, None)
    if golden is not None:
        from repo_manager.validation import load_golden_set

        load_golden_set(golden)
    if exported is not None and weights is not None:
        raise InvalidInputError("give --weights or --exported, not both")
    path = None if exported is not None else resolve_weights(model, weights)
    _require_repository(obj)
    manager = obj.manager(drain_seconds=drain_seconds)
    gated = golden is not None and manager.state(model) is not None
    timer = PhaseTimer(progress=obj._progress, label=f"publish {model} {version}")
    state = manager.publish(
        model,
        version,
        weights=path,
        exported=exported,
        export_options=export_options,
        canary_weight=0 if gated else weight,
        force=force,
        timer=timer,
    )
    if state.stable == version:
        obj._progress(f"publish {model} {version} timings: {timer.summary()}")
        click.echo(f"{model} version {version} published as stable")
        return
    if gated:
        assert golden is not None
        with timer.phase("gate"):
            report = manager.gate_canary(model, golden, golden_gates, weight=weight)
        click.echo(_report_text(report.to_dict()))
    obj._progress(f"publish {model} {version} timings: {timer.summary()}")
    click.echo(f"{model} version {version} published as canary at {weight}%")
    if plan is not None and provider is not None:
        _run_analysis(obj, manager, model, plan, provider, analysis)


def _analysis_setup(options: dict[str, Any]) -> tuple[AnalysisPlan, Any]:
    """Validate every analysis option before anything moves (bad input: exit 2)."""
    from repo_manager.analysis import PromQLProvider, ScrapeProvider

    parse_interval(options["interval"])
    plan = AnalysisPlan(
        steps=parse_steps(options["steps"]),
        threshold=options["threshold"],
        max_metrics_errors=options["max_metrics_errors"],
        gates=parse_gate_overrides(LiveGates(), options["live_gates"]),
    )
    if options["prometheus"] and options["metrics_urls"]:
        raise InvalidGateError("give --prometheus or --metrics-url, not both")
    provider: Any = (
        PromQLProvider(options["prometheus"])
        if options["prometheus"]
        else ScrapeProvider(list(options["metrics_urls"]) or ["localhost:8002"])
    )
    return plan, provider


def _run_analysis(
    obj: Context,
    manager: RolloutManager,
    model: str,
    plan: AnalysisPlan,
    provider: Any,
    options: dict[str, Any],
) -> None:
    """Advance once per interval until the canary is promoted or rolled back."""
    interval = parse_interval(options["interval"])
    if options["metrics_port"]:
        from repo_manager.metrics import start_metrics_server

        start_metrics_server(options["metrics_port"], addr="127.0.0.1")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    state = manager.start_analysis(model, plan)
    click.echo(_decision(state))
    while state.phase is Phase.ANALYZING:
        if stop.wait(interval):
            raise click.ClickException(f"stopped; {model} stays in analysis: run rollout to resume")
        before = state.generation
        state = manager.advance(model, provider)
        for transition in state.history[len(state.history) - (state.generation - before) :]:
            click.echo(_transition_text(transition))
    if state.phase is Phase.SUCCEEDED:
        click.echo(f"{model}: version {state.stable} promoted by the analysis")
        return
    reason = next((t.reason for t in reversed(state.history) if t.action == "rollback"), "")
    raise GateFailedError(
        f"{model}: canary rolled back by the analysis ({reason}); stable {state.stable} serves 100%"
    )


def _transition_text(transition: Any) -> str:
    reason = f": {transition.reason}" if transition.reason else ""
    return f"{transition.at} {transition.action}{reason}"


def _decision(state: RolloutState) -> str:
    return _transition_text(state.history[-1]) if state.history else ""


def _report_text(doc: dict[str, Any]) -> str:
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


@cli.command()
@click.argument("model")
@click.argument("version")
@click.option(
    "--golden",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder of images, with optional YOLO labels.",
)
@click.option("--gate", "gates", multiple=True, help="Gate bound NAME=VALUE (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@verbose_option
@click.pass_obj
def validate(
    obj: Context, model: str, version: str, golden: Path, gates: tuple[str, ...], as_json: bool
) -> None:
    """Run the golden set through stable and VERSION (pinned) and judge it; changes nothing."""
    model = validate_model_name(model)
    version = validate_version(version)
    bounds = parse_gate_overrides(GoldenGates(), gates)
    _require_repository(obj)
    report = obj.manager().validate(model, version, golden, bounds)
    document = report.to_dict()
    _emit(document, as_json, _report_text(document))
    if not report.passed:
        failures = "; ".join(g.describe() for g in report.failures())
        raise GateFailedError(f"{model} version {version} failed the golden gate: {failures}")


@cli.command("rollout")
@click.argument("model")
@analysis_options
@drain_option
@verbose_option
@click.pass_obj
def rollout_command(obj: Context, model: str, drain_seconds: float | None, **analysis: Any) -> None:
    """Progressive analysis: one step per interval; advance, roll back or promote."""
    model = validate_model_name(model)
    plan, provider = _analysis_setup(analysis)
    _require_repository(obj)
    manager = obj.manager(drain_seconds=drain_seconds)
    _run_analysis(obj, manager, model, plan, provider, analysis)


@cli.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(obj: Context, model: str | None, as_json: bool) -> None:
    """Show stable, canary, weights, phase and per-version state."""
    _require_repository(obj)
    manager = obj.manager()
    if model:
        document: Any = manager.status(model)
        _emit(document, as_json, _status_text(document))
        return
    documents = [manager.status(name) for name in manager.models()]
    text = "\n\n".join(_status_text(d) for d in documents) or "no published models"
    _emit(documents, as_json, text)


def _status_text(doc: dict[str, Any]) -> str:
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
        lines.append(f"  last: {t['action']} ({t['from']} -> {t['to']}) at {t['at']}")
    return "\n".join(lines)


@cli.command("set-weight", context_settings={"ignore_unknown_options": True})
@verbose_option
@click.argument("model")
@click.argument("percent")
@click.pass_obj
def set_weight(obj: Context, model: str, percent: str) -> None:
    """Give the canary PERCENT of the traffic."""
    weight = parse_weight(percent)
    _require_repository(obj)
    state = obj.manager().set_weight(model, weight)
    click.echo(
        f"{model}: canary {state.canary} at {weight}%, stable {state.stable} at {100 - weight}%"
    )


@cli.command()
@click.argument("model")
@drain_option
@verbose_option
@click.pass_obj
def promote(obj: Context, model: str, drain_seconds: float | None) -> None:
    """Make the canary stable at 100% and unload the old stable."""
    _require_repository(obj)
    state = obj.manager(drain_seconds=drain_seconds).promote(model)
    click.echo(f"{model}: version {state.stable} promoted to stable")


@cli.command()
@click.argument("model")
@drain_option
@verbose_option
@click.pass_obj
def rollback(obj: Context, model: str, drain_seconds: float | None) -> None:
    """Send all traffic to stable and unload the canary."""
    _require_repository(obj)
    state = obj.manager(drain_seconds=drain_seconds).rollback(model)
    click.echo(f"{model}: rolled back to stable version {state.stable}")


@cli.command()
@click.argument("model")
@verbose_option
@click.option("--latest", type=int, default=None, help="Also keep the latest N versions loaded.")
@click.option("--all", "all_versions", is_flag=True, help="Keep every version loaded.")
@click.option("--specific", default=None, help="Also keep these versions loaded: V[,V...].")
@click.pass_obj
def policy(
    obj: Context, model: str, latest: int | None, all_versions: bool, specific: str | None
) -> None:
    """Set which versions Triton keeps loaded besides stable and canary."""
    document = parse_policy(latest=latest, all_versions=all_versions, specific=specific)
    _require_repository(obj)
    manager = obj.manager()
    state = manager.set_policy(model, document)
    click.echo(f"{model}: loaded versions {','.join(manager.desired_versions(state))}")


@cli.command()
@click.argument("model", required=False)
@verbose_option
@click.option("--watch", is_flag=True, help="Keep reconciling every --interval seconds.")
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=10.0, show_default=True)
@serve_metrics_options(
    "With --watch: serve every model's rollout state and reconcile counters at :PORT/metrics."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def reconcile(
    obj: Context,
    model: str | None,
    watch: bool,
    interval: float,
    metrics_port: int | None,
    metrics_addr: str,
    as_json: bool,
) -> None:
    """Re-apply the desired state (after Triton or the manager restarted).

    With --watch this is the long-running manager: each pass resolves dns:// fleets again
    (a new replica gets the models), and a pass that fails prints one line and is
    counted, then the next pass tries again.
    """
    if metrics_port is not None and not watch:
        raise InvalidInputError("--metrics-port needs --watch")
    _require_repository(obj)
    if metrics_port is not None:
        from repo_manager.metrics import start_metrics_server

        start_metrics_server(metrics_port, addr=metrics_addr)
    stop = threading.Event()
    if watch:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    manager: RolloutManager | None = None
    while True:
        try:
            manager = _reconcile_pass(obj, manager, model, as_json=as_json, watch=watch)
        except RepoManagerError as exc:
            if not watch:
                raise
            click.echo(f"error: {exc}", err=True)
        if not watch or stop.wait(interval):
            return


def _reconcile_pass(
    obj: Context, manager: RolloutManager | None, model: str | None, *, as_json: bool, watch: bool
) -> RolloutManager:
    """One pass: (re)resolve the fleet, reconcile, publish state and the pass's figures."""
    from repo_manager.metrics import publish_reconcile_pass

    started = time.monotonic()
    try:
        if manager is None:
            manager = obj.manager()
        elif has_dns(obj.urls):
            manager.fleet.set_urls(resolve_urls(obj.urls))
        reports = manager.reconcile(model)
        manager.expose_states(model)
    except RepoManagerError:
        publish_reconcile_pass(seconds=time.monotonic() - started, ok=False)
        raise
    unreachable = sorted({u for r in reports for u in r.unreachable})
    publish_reconcile_pass(
        seconds=time.monotonic() - started,
        ok=True,
        actions={r.model: sum(not a.startswith("unreachable") for a in r.actions) for r in reports},
        unreachable=len(unreachable),
        servers=len(manager.fleet.servers),
        finished_at=time.time(),
    )
    documents = [
        {"model": r.model, "desired": r.desired, "actions": r.actions, "unreachable": r.unreachable}
        for r in reports
    ]
    text = (
        "\n".join(
            f"{r.model}: versions {','.join(r.desired)}; "
            f"{'; '.join(r.actions) or 'already in desired state'}"
            for r in reports
        )
        or "no published models"
    )
    _emit(documents, as_json, text)
    if not watch and unreachable:
        raise TritonUnavailableError(
            f"Triton unreachable at {', '.join(unreachable)}; the others are reconciled"
        )
    return manager


@cli.command()
@click.argument("model")
@click.option(
    "--rate",
    type=click.FloatRange(0.1, 10000),
    default=10.0,
    show_default=True,
    help="Requests per second, all threads together.",
)
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--duration", default=None, help="Stop after this long (30s, 5m) [default: never].")
@click.option("--imgsz", type=click.IntRange(32, 4096), default=640, show_default=True)
@serve_metrics_options("Serve the Router's per-version metrics at :PORT/metrics.")
@click.pass_obj
def traffic(
    obj: Context,
    model: str,
    rate: float,
    threads: int,
    duration: str | None,
    imgsz: int,
    metrics_port: int | None,
    metrics_addr: str,
) -> None:
    """Send Router.detect requests on random images: load for a rollout to judge."""
    from repo_manager.loadgen import run_load
    from repo_manager.metrics import start_metrics_server
    from repo_manager.routing import Router

    model = validate_model_name(model)
    seconds = parse_interval(duration, "--duration") if duration else None
    _require_repository(obj)
    if metrics_port is not None:
        start_metrics_server(metrics_port, addr=metrics_addr)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if seconds is not None:
        timer = threading.Timer(seconds, stop.set)
        timer.daemon = True
        timer.start()
    started = time.monotonic()
    with Router(
        model,
        url=obj.urls,
        repository=obj.repository,
        security=obj.security,
        s3_endpoint=obj.s3_endpoint,
    ) as router:
        report = run_load(router, rate=rate, threads=threads, imgsz=imgsz, stop=stop)
    served = sum(report.served.values())
    shares = ", ".join(
        f"v{v}: {n} ({100 * n / served:.1f}%)" for v, n in sorted(report.served.items())
    )
    click.echo(
        f"{model}: {report.total} requests in {time.monotonic() - started:.1f}s; "
        f"{shares or 'none served'}; {report.failures} failed"
    )
    if report.failures and not served:
        raise TritonUnavailableError(f"no request served: {report.last_error}")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line and an exit code for every failure."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        cli.main(args=argv, prog_name="repo-manager", standalone_mode=False)
    except RepoManagerError as exc:
        _fail(str(exc), exc.exit_code)
    except click.UsageError as exc:
        _fail(exc.format_message().replace("\n", " "), 2)
    except click.ClickException as exc:
        _fail(exc.format_message(), 1)
    except click.exceptions.Abort:
        _fail("aborted", 1)
    except Exception as exc:  # last resort: still one line, never a traceback
        if os.environ.get("REPO_MANAGER_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc}", 1)
    sys.exit(0)


if __name__ == "__main__":
    main()
