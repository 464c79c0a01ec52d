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
  may become visible, and publishing the same number again must work.
"""

from __future__ import annotations

import contextlib
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

KINDS = ("triton_kill", "manager_kill", "s3_restart", "manager_race", "truncated_upload")
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
