"""Which process owns a shared-memory region, and reclaiming the regions of dead owners.

A process killed outright (SIGKILL, the OOM killer, a container kill) runs no cleanup: its
regions stay in /dev/shm and registered in Triton, which keeps its own mapping, so the
memory stays taken until someone unregisters them. Every region name therefore carries its
owner: the PID namespace (PIDs mean nothing across namespaces that share /dev/shm), the
PID, and the process's start time from /proc (a reused PID has another one). A sweep
removes only names of this format whose owner is in this namespace and provably gone; a
region it cannot attribute (another namespace, another format, an unreadable /proc entry)
is left alone, so a live process's regions are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from repo_manager.processes import ProcessId, pid_namespace

__all__ = [
    "PREFIX",
    "Owner",
    "backend_region_prefix",
    "leftover_regions",
    "of_dead_owners",
    "reclaim_dead_regions",
    "unlink_regions",
]

logger = logging.getLogger(__name__)

#: Every region name of ours starts with it (``Owner.tag`` adds the owner).
PREFIX = "repo-manager-shm"
_SHM_DIR = "/dev/shm"
# A name starts with its owner's tag and a hex token; the Router adds ``-N``, Triton's
# python backend (given a tagged ``shm-region-prefix-name``) its own suffix.
_NAME = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-(\d+)-[0-9a-f]+")
#: A sweep's RPCs to Triton get this deadline: a hung server must not hang a Router.
_RPC_TIMEOUT_S = 5.0


@dataclass(kw_only=True, frozen=True)
class Owner(ProcessId):
    """A region's owner: the process whose tag starts the region's name."""

    @classmethod
    def current(cls) -> Owner | None:
        """This process (None where /proc cannot say: its regions are then never swept)."""
        found: Owner | None = super().current()
        return found

    @classmethod
    def of(cls, name: str) -> Owner | None:
        """The owner a region name carries (None: not a name of this format)."""
        match = _NAME.match(name)
        if match is None:
            return None
        namespace, pid, start = (int(g) for g in match.groups())
        return cls(namespace=namespace, pid=pid, start=start)

    def tag(self) -> str:
        """The start of every region name this owner makes."""
        return f"{PREFIX}-{self.namespace}-{self.pid}-{self.start}"


def of_dead_owners(names: Iterable[str]) -> list[str]:
    """The names among ``names`` whose owner is in this PID namespace and dead."""
    namespace = pid_namespace()
    verdicts: dict[Owner, bool] = {}
    dead = []
    for name in names:
        owner = Owner.of(name)
        if owner is None or namespace is None or owner.namespace != namespace:
            continue
        if owner not in verdicts:
            verdicts[owner] = owner.is_dead()
        if verdicts[owner]:
            dead.append(name)
    return sorted(dead)


def backend_region_prefix() -> str | None:
    """A ``shm-region-prefix-name`` for the python backend of a tritonserver this process
    launches: tagged with this process, so that when both die (the server dies with its
    launcher) a sweep can tell the regions are orphans. None where /proc cannot say."""
    owner = Owner.current()
    return None if owner is None else f"{owner.tag()}-{secrets.token_hex(4)}-triton"


def unlink_regions(prefix: str) -> list[str]:
    """Unlink every region whose name starts with ``prefix``: the regions of a server this
    process launched, once it has exited (a SIGKILLed tritonserver unlinks nothing)."""
    removed = []
    try:
        names = [n for n in os.listdir(_SHM_DIR) if n.startswith(prefix)]
    except OSError:
        return []
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(_SHM_DIR, name))
            removed.append(f"{_SHM_DIR}/{name}")
    return removed


def _our_files() -> list[str]:
    try:
        return [n for n in os.listdir(_SHM_DIR) if n.startswith(PREFIX)]
    except OSError:  # no /dev/shm here (not Linux): nothing to list
        return []


def _our_registrations(client: Any) -> list[str]:
    """The names of our regions registered in one Triton."""
    status = client.get_system_shared_memory_status(as_json=True, client_timeout=_RPC_TIMEOUT_S)
    regions = status.get("regions", {}).values() if isinstance(status, dict) else ()
    return [r["name"] for r in regions if str(r.get("name", "")).startswith(PREFIX)]


def reclaim_dead_regions(client: Any | None = None) -> list[str]:
    """Unlink dead owners' regions from /dev/shm and, given a client of a Triton on this
    host (one that mapped a region of ours), unregister dead owners' registrations from
    it; returns what it removed (``/dev/shm/NAME``, ``registered NAME``).

    Never raises: what it could not reach (a server down, an old client) is left for the
    next sweep. A sweep of others' leftovers must never fail the sweeper's request.
    """
    removed = _unlink_dead_files()
    if client is not None:
        removed += _unregister_dead(client)
    if removed:
        logger.info("reclaimed %d shared-memory region(s) of dead processes", len(removed))
    return removed


def _unlink_dead_files() -> list[str]:
    removed = []
    for name in of_dead_owners(_our_files()):
        try:
            os.unlink(os.path.join(_SHM_DIR, name))
        except FileNotFoundError:
            continue  # another sweep was first
        except OSError as exc:  # e.g. another user's region in the sticky /dev/shm
            logger.debug("cannot unlink %s: %s", name, exc)
            continue
        removed.append(f"{_SHM_DIR}/{name}")
    return removed


def _unregister_dead(client: Any) -> list[str]:
    try:
        names = of_dead_owners(_our_registrations(client))
    except Exception as exc:
        logger.debug("listing registered regions: %s", exc)
        return []
    removed = []
    for name in names:
        try:
            client.unregister_system_shared_memory(name, client_timeout=_RPC_TIMEOUT_S)
        except Exception as exc:
            logger.debug("unregistering %s: %s", name, exc)
            continue
        removed.append(f"registered {name}")
    return removed


def leftover_regions(urls: Iterable[str] = ()) -> list[str]:
    """Our regions whose owner process is dead: files in /dev/shm (``/dev/shm/NAME``) and,
    for each Triton gRPC url given (servers on this host: PIDs are judged here), its
    registrations (``URL: NAME``). Empty when nothing was left behind; a live process's
    regions are never listed.

    Raises InferenceServerException when a url's server does not answer. Listing the
    registrations is a shared-memory call: a locked server answers it with the control key.
    """
    from repo_manager.transport import make_grpc_client

    left = [f"{_SHM_DIR}/{name}" for name in of_dead_owners(_our_files())]
    for url in urls:
        with make_grpc_client(url) as client:
            left += [f"{url}: {name}" for name in of_dead_owners(_our_registrations(client))]
    return left
