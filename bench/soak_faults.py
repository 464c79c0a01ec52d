"""One soak round: publish, set-weight, promote or rollback, with one fault injected.

The manager under fault is a real ``repo-manager`` process run with ``-v``: a fault waits
for a progress line of the step it hits (``uploading model.onnx``, ``loading``,
``draining`` ...), then acts, so it lands inside that step and not before or after it.

Faults (``KINDS``):

- ``triton_kill``: SIGKILL one tritonserver while a step runs, restart it, reconcile;
- ``manager_kill``: SIGKILL the manager inside publish, promote or rollback;
- ``s3_restart``: close the S3 port for a moment while a publish uploads;
- ``manager_race``: two managers at once; the lock makes one wait or refuse in one line;
- ``truncated_upload``: SIGKILL a publish halfway through its model.onnx upload: nothing
  may become visible, and publishing the same number again must work;
- ``hang``: SIGSTOP one tritonserver for longer than the Routers' deadline while a step
  runs, then SIGCONT: Routers fail over, the step succeeds or names the hung server in
  one line (then it is run again);
- ``tamper``: change a file of the canary (or of stable) in S3 after its publish: the
  step is refused in one line naming the file, a tampered canary is rolled back, the
  injected code never runs; the file is put back afterwards.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.soak_checks import ProcessWatch, read_state
from bench.soak_traffic import Downtime
from bench.soak_world import MODEL, Outcome, Running, World, wait_done

__all__ = ["KINDS", "Round"]

KINDS = (
    "triton_kill",
    "manager_kill",
    "s3_restart",
    "manager_race",
    "truncated_upload",
    "hang",
    "tamper",
)
DRAIN = "1.5"  # --drain-seconds: longer than the Routers' 1 s poll


@dataclass(kw_only=True)
class Round:
    """The steps of one round and what they showed; ``problems`` are failures."""

    world: World
    rng: random.Random
    downtime: Downtime
    watch: ProcessWatch
    kind: str
    next_version: Callable[[], str]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # -- steps ----------------------------------------------------------------------------

    def play(self) -> Outcome:
        """Finish a canary a previous round left, then publish, set-weight, promote or
        rollback; the fault hits one of those steps. Returns the final reconcile."""
        state = read_state(self.world)
        steps: list[str] = []
        if state is not None and state.canary is not None:
            steps.append(self.rng.choice(["promote", "rollback"]))
        steps += ["publish", "set-weight", self.rng.choice(["promote", "rollback"])]
        targets = {
            "manager_kill": [s for s in steps if s in ("publish", "promote", "rollback")],
            "s3_restart": ["publish"],
            "truncated_upload": ["publish"],
            "tamper": steps[steps.index("publish") + 1 :],  # a canary exists then
        }.get(self.kind, steps)
        target = self.rng.choice(targets)
        faulted = False
        for step in steps:
            if step == target and not faulted:
                faulted = True
                self.fault(step)
                self.reconcile_now()
            else:
                self.clean(step)
        return self.reconcile_now()

    def step_args(self, step: str, version: str | None = None) -> tuple[str, ...]:
        if step == "publish":
            weight = self.rng.choice([10, 20, 30, 50])
            return self.world.publish_args(version or self.next_version(), weight)
        if step == "set-weight":
            return ("set-weight", MODEL, str(self.rng.choice([5, 25, 40, 60, 90])))
        return (step, MODEL, "--drain-seconds", DRAIN)

    def applies(self, step: str) -> bool:
        """Whether the step makes sense now (a fault may have undone the canary)."""
        state = read_state(self.world)
        has_canary = state is not None and state.canary is not None
        return not has_canary if step == "publish" else has_canary

    def clean(self, step: str, version: str | None = None) -> Outcome | None:
        """A step with no fault during it: it must succeed."""
        if not self.applies(step):
            self.notes.append(f"{step} skipped (state moved)")
            return None
        outcome = self.world.cli(*self.step_args(step, version))
        if outcome.code != 0:
            self.problems.append(f"{step}: exit {outcome.code}: {outcome.stderr.strip()[-300:]}")
        return outcome

    def reconcile_now(self) -> Outcome:
        return self.world.cli("reconcile", MODEL, "--json")

    # -- faults ---------------------------------------------------------------------------

    def fault(self, step: str) -> None:
        if not self.applies(step):
            self.notes.append(f"{self.kind}: {step} skipped (state moved)")
            return
        outside = {"hang": hang, "tamper": tamper}.get(self.kind)
        if outside is not None:
            outside(self, step)
        else:
            getattr(self, self.kind)(step)

    def watched(
        self,
        args: tuple[str, ...],
        trigger: Callable[[str], bool],
        act: Callable[[Running], None],
    ) -> tuple[Outcome, str | None]:
        """Run a manager with -v; on the first stderr line ``trigger`` accepts, ``act`` on
        it. Returns how it ended and the line that fired (None: it never came)."""
        running = self.world.spawn(*args, verbose=True)
        self.watch.manager_pids.add(running.pid)
        seen: list[str] = []
        fired = None
        assert running.process.stderr is not None
        for line in running.process.stderr:
            seen.append(line)
            if trigger(line):
                act(running)
                fired = line.strip()
                break
        return wait_done(self.world, running, seen), fired

    def sigkill(self, delay: float) -> Callable[[Running], None]:
        def act(running: Running) -> None:
            time.sleep(delay)
            with contextlib.suppress(ProcessLookupError):
                running.process.send_signal(signal.SIGKILL)

        return act

    def judge_unkilled(self, outcome: Outcome) -> None:
        """A kill that came too late (the step had ended): the step must have succeeded."""
        self.notes.append(f"{self.kind}: {outcome.args[0]} ended before the kill")
        if outcome.code != 0:
            self.problems.append(f"{outcome.args[0]}: exit {outcome.code}: {_last(outcome)}")

    def manager_kill(self, step: str) -> None:
        version = self.next_version() if step == "publish" else None
        lines = {
            "publish": [
                "  uploading model.onnx",
                "checksums verified",
                "published s3://",
                "loading ",
                f"publish {MODEL} {version}: load + warm-up done",
            ],
            "promote": ["public name", "draining", "loading "],
            "rollback": ["draining", "loading "],
        }[step]
        prefix = self.rng.choice(lines)
        delay = round(self.rng.uniform(0.0, 0.3), 2)
        outcome, fired = self.watched(
            self.step_args(step, version), lambda s: s.startswith(prefix), self.sigkill(delay)
        )
        self.notes.append(f"manager_kill: {step} killed {delay}s after {fired!r}")
        if not outcome.killed:
            self.judge_unkilled(outcome)
        elif step == "publish":
            self.retry_publish(version)

    def truncated_upload(self, step: str) -> None:
        version = self.next_version()

        def halfway(line: str) -> bool:
            if not line.startswith("  uploading model.onnx:"):
                return False
            sent, total = line.split(":", 1)[1].strip().removesuffix("MB").split("/")
            return float(sent) < float(total)

        outcome, fired = self.watched(self.step_args(step, version), halfway, self.sigkill(0.0))
        if not outcome.killed:
            self.judge_unkilled(outcome)
            return
        self.notes.append(f"truncated_upload: killed at {fired!r}")
        from repo_manager.repository import ModelRepository
        from repo_manager.storage import open_storage

        storage = open_storage(self.world.repository, s3_endpoint=self.world.endpoint)
        if version in ModelRepository(storage).versions(MODEL):
            self.problems.append(f"truncated_upload: version {version} visible after the kill")
        self.retry_publish(version)

    def retry_publish(self, version: str | None) -> None:
        """After reconcile, the interrupted version either exists (finished) or can be
        published again (undone): never a number that can be neither."""
        self.reconcile_now()
        state = read_state(self.world)
        if state is not None and version in (state.stable, state.canary):
            self.notes.append(f"publish {version} finished by reconcile")
            return
        outcome = self.clean("publish", version)
        if outcome is not None and outcome.code == 0:
            self.notes.append(f"publish {version} again: ok")

    def s3_restart(self, step: str) -> None:
        version = self.next_version()
        down = round(self.rng.uniform(0.5, 2.0), 2)
        args = self.step_args(step, version)
        outcome, fired = self.watched(
            args,
            lambda s: s.startswith("  uploading model.onnx"),
            lambda _running: self.world.restart_s3(down),
        )
        self.notes.append(f"s3_restart: {down}s down after {fired!r}")
        if outcome.code != 0:
            if "Traceback" in outcome.stderr:
                self.problems.append(f"s3_restart: publish printed a traceback: {_last(outcome)}")
            self.notes.append(f"s3_restart: publish refused: {_last(outcome)}")
            self.retry_publish(version)

    def triton_kill(self, step: str) -> None:
        index = self.rng.randrange(len(self.world.servers))
        delay = round(self.rng.uniform(0.0, 1.5), 2)
        args = self.step_args(step)
        running = self.world.spawn(*args)
        self.watch.manager_pids.add(running.pid)
        time.sleep(delay)
        self.watch.note()
        self.downtime.mark_down(index)
        self.world.kill_server(index)
        outcome = wait_done(self.world, running)
        if outcome.code != 0 and not outcome.one_line_error():
            self.problems.append(f"triton_kill: {step} failed without one line: {outcome.stderr}")
        self.world.start_server(index)
        reconciled = self.reconcile_now()
        self.downtime.mark_up(index)
        if outcome.code != 0 and self.applies(step):
            self.clean(step)  # refused while the server was down: it must work now
        self.notes.append(
            f"triton_kill: server {index} killed {delay}s into {step} (exit {outcome.code}),"
            f" reconcile exit {reconciled.code}"
        )

    def manager_race(self, step: str) -> None:
        if step == "publish":
            pair = [self.step_args("publish"), self.step_args("publish")]
        else:
            pair = [self.step_args(step), self.step_args(self.rng.choice(["set-weight", step]))]
        started = [self.world.spawn(*args) for args in pair]
        self.watch.manager_pids.update(r.pid for r in started)
        outs: list[Outcome] = []
        done = threading.Lock()

        def finish(running: Running) -> None:
            outcome = wait_done(self.world, running)
            with done:
                outs.append(outcome)

        threads = [threading.Thread(target=finish, args=(r,)) for r in started]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=400)
        codes = [o.code for o in outs]
        self.notes.append(f"manager_race: {pair[0][0]} vs {pair[1][0]}: exits {codes}")
        for outcome in outs:
            if outcome.code != 0 and not outcome.one_line_error():
                self.problems.append(
                    f"manager_race: {outcome.args[0]} refused without one line: {outcome.stderr}"
                )
        if not any(code == 0 for code in codes):
            self.problems.append(f"manager_race: neither manager succeeded: {codes}")


def _last(outcome: Outcome) -> str:
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def hang(round_: Round, step: str) -> None:
    """SIGSTOP one server for longer than the Routers' 10 s deadline during ``step``."""
    index = round_.rng.randrange(len(round_.world.servers))
    delay, stopped = round(round_.rng.uniform(0.0, 1.5), 2), round(round_.rng.uniform(12, 16), 1)
    running = round_.world.spawn(*round_.step_args(step))
    round_.watch.manager_pids.add(running.pid)
    time.sleep(delay)
    pid = round_.world.servers[index].pid
    assert pid is not None
    round_.downtime.mark_down(index)  # raw clients wait on a stopped server: Triton's own
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(stopped)
    finally:
        os.kill(pid, signal.SIGCONT)
    outcome = wait_done(round_.world, running)
    round_.downtime.mark_up(index)
    round_.notes.append(
        f"hang: server {index} stopped {stopped}s, {delay}s into {step} (exit {outcome.code}"
        + (f": {_last(outcome)})" if outcome.code else ")")
    )
    if outcome.code != 0:
        if not outcome.one_line_error():
            round_.problems.append(f"hang: {step} failed without one line: {outcome.stderr}")
        round_.reconcile_now()
        if round_.applies(step):
            round_.clean(step)  # refused while the server hung: it must work now


def tamper(round_: Round, step: str) -> None:
    """Change one file of the canary (mostly) or of stable in S3, run ``step``: refused in
    one line naming the file (a rollback may remove a tampered canary), never run."""
    import boto3

    state = read_state(round_.world)
    rng = round_.rng
    version = state.canary if state.canary and rng.random() < 0.7 else state.stable
    name = rng.choice(["model.py", "model.onnx", "manifest.json"])
    marker = round_.world.root / "tamper-marker"
    s3 = boto3.client("s3", endpoint_url=round_.world.endpoint)
    key = f"repo/{MODEL}.versions/{version}/{name}"
    bucket = round_.world.bucket
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    if name == "model.py":
        line = f"\nopen({str(marker)!r}, 'w').write('tampered code ran')\n"
        s3.put_object(Bucket=bucket, Key=key, Body=original + line.encode())
    elif name == "model.onnx":
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0xFF
        s3.put_object(Bucket=bucket, Key=key, Body=bytes(flipped))
    else:
        s3.delete_object(Bucket=bucket, Key=key)
    try:
        outcome = round_.world.cli(*round_.step_args(step))
    finally:
        s3.put_object(Bucket=bucket, Key=key, Body=original)
    said = f"{MODEL}.versions/{version}/{name}"
    round_.notes.append(f"tamper: {name} of {version} before {step}: exit {outcome.code}")
    # What the step itself replaces may be tampered: a rollback's canary, a promote's stable.
    tolerated = (step, version) in (("rollback", state.canary), ("promote", state.stable))
    if not tolerated and (outcome.code != 1 or not outcome.one_line_error()):
        round_.problems.append(f"tamper: {step} not refused in one line: {outcome.stderr}")
    elif not tolerated and said not in outcome.stderr:
        round_.problems.append(f"tamper: the refusal does not name {said}: {_last(outcome)}")
    after = read_state(round_.world)
    if version == state.canary and not tolerated and after.canary is not None:
        round_.problems.append(f"tamper: canary {version} kept its traffic: {after.weights}")
    if marker.exists():
        round_.problems.append("tamper: the injected code ran")
    if version == state.stable and round_.applies(step):
        round_.clean(step)  # restored: it must work now
