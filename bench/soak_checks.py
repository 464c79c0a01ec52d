"""The invariants the soak checks after every round's ``reconcile``.

Each check returns the violations it saw, one line each (empty: it held):

- phase: terminal (initialized, succeeded, rolled_back) or resumable (progressing,
  analyzing); never a transient phase that reconcile should have finished;
- servers: every server has exactly the desired versions READY and its public name on
  stable;
- repository: every version folder in S3 holds its manifest and every file it names, every
  version there is one the state's history recorded (an interrupted publish is finished or
  undone, not left over), and no staging object, open multipart upload or lock remains;
- processes: no manager, tritonserver or python-backend stub of this soak outlives its
  owner, and no shared-memory region of a dead owner remains in /dev/shm;
- secrets: the S3 secret appears in nothing any process printed or logged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.soak_world import MODEL, SECRET, Outcome, World
from repo_manager.names import MANIFEST_FILE, versions_model_name
from repo_manager.rollout.applier import desired_route
from repo_manager.shm import leftover_regions

__all__ = ["ProcessWatch", "check_phase", "check_repository", "check_secrets", "check_servers"]

STUB = "triton_python_backend_stub"
RESUMABLE = frozenset({"initialized", "succeeded", "rolled_back", "progressing", "analyzing"})


def read_state(world: World) -> Any:
    from repo_manager.state import load_state
    from repo_manager.storage import open_storage

    return load_state(open_storage(world.repository, s3_endpoint=world.endpoint), MODEL)


def check_phase(state: Any) -> list[str]:
    if state is None:
        return ["phase: no rollout state"]
    if state.phase.value not in RESUMABLE:
        return [f"phase: {state.phase.value} after reconcile (neither terminal nor resumable)"]
    return []


def desired_versions(reconciled: Outcome) -> list[str] | None:
    """What reconcile says every server must hold (its ``--json`` report)."""
    try:
        reports = json.loads(reconciled.stdout)
        return [str(v) for v in reports[0]["desired"]]
    except (ValueError, LookupError, TypeError):
        return None


def check_servers(world: World, state: Any, reconciled: Outcome) -> list[str]:
    from repo_manager.triton import TritonFleet

    if reconciled.code != 0:
        return [f"reconcile: exit {reconciled.code}: {reconciled.stderr.strip()[-300:]}"]
    desired = desired_versions(reconciled)
    if desired is None:
        return [f"reconcile: no report in {reconciled.stdout[:200]!r}"]
    problems = []
    fleet = TritonFleet(world.urls)
    try:
        for server in fleet.survey(versions_model_name(MODEL), alias=MODEL):
            if server.error:
                problems.append(f"servers: {server.url}: {server.error}")
                continue
            if server.ready != set(desired):
                ready = ",".join(sorted(server.ready, key=int)) or "none"
                problems.append(f"servers: {server.url} READY {ready}, desired {','.join(desired)}")
            if state is not None and server.public != desired_route(state):
                problems.append(
                    f"servers: {server.url} public name on {server.public}, "
                    f"desired {desired_route(state)}"
                )
    finally:
        fleet.close()
    return problems


def _recorded_versions(state: Any) -> set[str]:
    versions = {v for v in (state.stable, state.canary, state.retiring) if v}
    for move in state.history:
        versions.update(v for v in (move.stable, move.canary) if v)
        versions.update(move.weights)
    return versions


def check_repository(world: World, state: Any) -> list[str]:
    """Nothing half-written or left over in the bucket."""
    import boto3

    client = boto3.client("s3", endpoint_url=world.endpoint)
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=world.bucket, Prefix="repo/"
    ):
        keys += [item["Key"][len("repo/") :] for item in page.get("Contents", [])]
    problems = []
    folders: dict[str, set[str]] = {}
    prefix = f"{versions_model_name(MODEL)}/"
    for key in keys:
        if ".staging-" in key:
            problems.append(f"repository: staging leftover {key}")
        elif key.startswith(".repo-manager-lock."):
            problems.append(f"repository: lock left behind: {key}")
        elif key.startswith(prefix) and key.count("/") >= 2:
            folder, _, rest = key[len(prefix) :].partition("/")
            if folder.isdigit():
                folders.setdefault(folder, set()).add(rest)
    for upload in client.list_multipart_uploads(Bucket=world.bucket).get("Uploads", []):
        problems.append(f"repository: open multipart upload {upload['Key']}")
    recorded = _recorded_versions(state) if state is not None else set()
    for version, files in sorted(folders.items(), key=lambda item: int(item[0])):
        if MANIFEST_FILE not in files:
            problems.append(f"repository: version folder {version} without its manifest")
            continue
        body = client.get_object(Bucket=world.bucket, Key=f"repo/{prefix}{version}/{MANIFEST_FILE}")
        manifest = json.loads(body["Body"].read())
        missing = sorted(set(manifest.get("files", {})) - files)
        if missing:
            problems.append(f"repository: version {version} lacks {', '.join(missing)}")
        if version not in recorded:
            problems.append(
                f"repository: version {version} is in the repository but never in the rollout"
                " state (an interrupted publish neither finished nor undone)"
            )
    return problems


def check_secrets(world: World) -> list[str]:
    texts = [("a manager's output", text) for text in world.outputs]
    texts += [(str(log.name), log.read_text(errors="replace")) for log in world.logs()]
    return sorted({f"secret: printed in {where}" for where, text in texts if SECRET in text})


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose (nothing runs), but it was not reaped
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class ProcessWatch:
    """Processes and shared-memory regions of this soak, and which owner each belongs to."""

    def __init__(self, world: World) -> None:
        self.world = world
        #: python-backend region -> the tritonserver PID whose stub uses it
        self.backend_regions: dict[str, int] = {}
        self.manager_pids: set[int] = set()

    def _processes(self) -> list[tuple[int, list[str]]]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (argv := _argv(int(entry))):
                found.append((int(entry), argv))
        return found

    def note(self) -> None:
        """Remember the regions the live servers' stubs use (call before a kill too)."""
        for _pid, argv in self._processes():
            if Path(argv[0]).name == STUB and len(argv) > 5 and argv[5].isdigit():
                region = argv[2]  # stub MODEL.py REGION ...: the region it shares
                if region and int(argv[5]) in self.world.server_pids:
                    self.backend_regions[region] = int(argv[5])

    def check(self) -> list[str]:
        live = {s.pid for s in self.world.servers if s.is_alive()}
        problems = []
        for pid, argv in self._processes():
            name = Path(argv[0]).name
            if name == STUB and len(argv) > 5 and argv[5].isdigit():
                owner = int(argv[5])
                if owner in self.world.server_pids and owner not in live:
                    problems.append(f"processes: stub {pid} of dead tritonserver {owner}")
            elif name == "tritonserver" and pid in self.world.server_pids and pid not in live:
                problems.append(f"processes: tritonserver {pid} still running after its kill")
            elif "repo_manager.cli" in argv and self.world.bucket in " ".join(argv):
                problems.append(f"processes: manager {pid} still running: {' '.join(argv[3:8])}")
        problems += self._regions(live)
        self.note()
        return problems

    def _regions(self, live: set[int | None]) -> list[str]:
        try:
            names = set(os.listdir("/dev/shm"))
        except OSError:
            return []
        problems = []
        for region, owner in sorted(self.backend_regions.items()):
            if owner not in live and region in names:
                problems.append(f"shared memory: {region} of dead tritonserver {owner}")
        # Router regions (the Routers' own rule: owner tagged in the name, judged by /proc).
        problems += [f"shared memory: {name} of a dead client" for name in leftover_regions()]
        return problems
