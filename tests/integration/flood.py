"""A client flood against a watch port, from a process of its own (its descriptors are
its own): idle connections that never send a byte, and requests naming models that do
not exist (sent one after the other, each connection kept open), all held for a while.

    python -m tests.integration.flood PORT --idle N --names M --hold SECONDS

Prints one JSON line when every connection was attempted (``{"open": n, "answers":
{status: count}}``), then holds them for ``--hold`` seconds (or until SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import sys
import time
from collections import Counter


def _open(port: int, count: int) -> list[socket.socket]:
    """``count`` connections (non-blocking connects, then waited for together)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        sockets.append(sock)
    selector = selectors.DefaultSelector()
    for sock in sockets:
        selector.register(sock, selectors.EVENT_WRITE)
    deadline = time.monotonic() + 30
    pending = len(sockets)
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1):
            selector.unregister(key.fileobj)
            pending -= 1
    selector.close()
    return sockets


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--idle", type=int, default=0)
    parser.add_argument("--names", type=int, default=0)
    parser.add_argument("--hold", type=float, default=10.0)
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = _open(args.port, args.idle)
    answers: Counter[str] = Counter()
    named = []
    for number in range(args.names):  # one at a time: each request reaches the server
        try:
            sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
            named.append(sock)
            request = f"GET /watch/unknown-{number}?after=0 HTTP/1.1\r\nHost: x\r\n\r\n"
            sock.sendall(request.encode())
            status = sock.recv(64).split(b" ")[1].decode()
        except (OSError, IndexError) as exc:
            status = type(exc).__name__
        answers[status] += 1
    alive = sum(1 for s in held if s.fileno() >= 0)
    print(json.dumps({"open": alive + len(named), "answers": dict(answers)}), flush=True)
    time.sleep(args.hold)
    for sock in held + named:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
