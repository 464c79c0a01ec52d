"""The ``repo-manager`` group, its global options and the entry point.

Every RepoManagerError becomes one line on stderr and its exit code (2 bad input,
1 operational failure); click's usage errors become one line and exit 2. No traceback
reaches the user unless REPO_MANAGER_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import click

from repo_manager.discovery import resolve_urls
from repo_manager.errors import RepoManagerError
from repo_manager.integrity import SigningKey
from repo_manager.notifications import Notifier, Target
from repo_manager.progress import Progress
from repo_manager.repository import ModelRepository
from repo_manager.rollout import RolloutManager, RolloutSettings
from repo_manager.storage import Storage, open_storage
from repo_manager.transport import GrpcSecurity, expand_urls, parse_headers
from repo_manager.triton import TritonFleet

if TYPE_CHECKING:
    from collections.abc import Callable

    from repo_manager.metrics import ManagerMetrics
    from repo_manager.state import RolloutState

__all__ = [
    "DEFAULT_REPOSITORY",
    "DEFAULT_URL",
    "Context",
    "cli",
    "emit",
    "main",
    "require_repository",
    "set_verbose",
    "verbose_parameter",
]

DEFAULT_REPOSITORY = "./model_repository"
DEFAULT_URL = "localhost:8001"


@dataclass(kw_only=True)
class Context:
    """The global options, handed to every command (``click.pass_obj``)."""

    repository: str
    urls: list[str]
    s3_endpoint: str | None = None
    security: GrpcSecurity | None = None
    #: The manager's HMAC key (``--signing-key``): manifests it publishes are signed, and
    #: unsigned or badly signed ones refused.
    signing_key: SigningKey | None = None
    verbose: bool = False
    #: Webhooks every recorded decision is posted to (``--notify``).
    notify: tuple[Target, ...] = ()
    _progress: tuple[bool, Progress] | None = field(default=None, init=False, repr=False)
    _notifier: Notifier | None = field(default=None, init=False, repr=False)

    @property
    def notifier(self) -> Notifier | None:
        """The command's notifier (made on first use; closed when the command ends)."""
        if self._notifier is None and self.notify:
            self._notifier = Notifier(
                list(self.notify), storage=self.storage(), repository=self.repository
            )
        return self._notifier

    def close(self) -> None:
        """Flush what is queued for the webhooks (bounded: a slow one delays no move)."""
        if self._notifier is not None:
            self._notifier.close()

    @property
    def progress(self) -> Progress:
        """The command's progress on stderr: stages live on a terminal, detail lines under
        ``--verbose`` (errors stay one line without either)."""
        if self._progress is None or self._progress[0] != self.verbose:
            shown = Progress.for_stderr(
                sys.stderr,
                verbose=self.verbose,
                write=lambda line: click.echo(line, err=True),
            )
            self._progress = (self.verbose, shown)
        return self._progress[1]

    def storage(self) -> Storage:
        return open_storage(self.repository, s3_endpoint=self.s3_endpoint)

    def manager(
        self,
        *,
        drain_seconds: float | None = None,
        metrics: ManagerMetrics | None = None,
        recorded: Callable[[RolloutState], None] | None = None,
    ) -> RolloutManager:
        settings = (
            RolloutSettings()
            if drain_seconds is None
            else RolloutSettings(drain_seconds=drain_seconds)
        )
        return RolloutManager(
            ModelRepository(self.storage(), signing_key=self.signing_key),
            TritonFleet(resolve_urls(self.urls), security=self.security),
            settings=settings,
            progress=self.progress,
            metrics=metrics,
            recorded=_both(recorded, self.notifier),
        )


def _both(
    recorded: Callable[[RolloutState], None] | None, notifier: Notifier | None
) -> Callable[[RolloutState], None] | None:
    """The caller's ``recorded`` callback, then the notifier's."""
    if notifier is None:
        return recorded

    def both(state: RolloutState) -> None:
        if recorded is not None:
            recorded(state)
        notifier.recorded(state)

    return both


def emit(document: Any, as_json: bool, text: str) -> None:
    """A read command's answer: JSON under ``--json``, else the text."""
    click.echo(json.dumps(document, indent=2) if as_json else text)


def require_repository(obj: Context) -> None:
    """One clear line before any work: missing folder or bucket, bad credentials, no S3."""
    obj.storage().check()


def set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``-v`` after a command's name: the group made the Context already."""
    if value:
        ctx.ensure_object(Context).verbose = True


def verbose_parameter() -> click.Option:
    """``-v/--verbose``: progress lines on stderr (errors stay one line without it)."""
    return click.Option(
        ["-v", "--verbose"],
        is_flag=True,
        expose_value=False,
        callback=set_verbose,
        help="Print each step on stderr.",
    )


class Commands(click.Group):
    """The command group: every command takes ``-v`` after its name, as the group does
    before it (users put it on either side)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any("--verbose" in p.opts for p in cmd.params):
            cmd.params.append(verbose_parameter())
        super().add_command(cmd, name)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Print each step on stderr.")
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
@click.option(
    "--signing-key",
    envvar="REPO_MANAGER_SIGNING_KEY_FILE",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the manager's HMAC key (at least 16 bytes): the manifests it "
    "publishes and the configs it writes are signed, and none without a valid signature "
    "is loaded.",
)
@click.option(
    "--notify",
    "notify",
    multiple=True,
    envvar="REPO_MANAGER_NOTIFY",
    metavar="[FORMAT+]URL",
    help="Post every recorded decision as JSON to this webhook (repeatable; env "
    "REPO_MANAGER_NOTIFY, space-separated). Slack, WeCom and DingTalk robots are known by "
    "their host; FORMAT (json, slack, wecom, dingtalk) forces one.",
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
    signing_key: str | None,
    notify: tuple[str, ...],
    verbose: bool,
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
        signing_key=None if signing_key is None else SigningKey.from_file(signing_key),
        verbose=verbose,
        notify=tuple(Target.parse(t) for t in notify),
    )
    ctx.call_on_close(ctx.obj.close)


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
