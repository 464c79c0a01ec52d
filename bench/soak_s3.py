"""The soak's S3 server: moto in a child process that can be restarted without losing data.

moto keeps its buckets in module state, so stopping and starting its threaded server inside
one process restarts the HTTP endpoint (every connection dropped, the port closed for the
down time) while the objects survive, as a restarted S3 service's would. The parent drives
it over stdin: ``restart SECONDS`` closes the port for SECONDS, then answers ``up``.

    python bench/soak_s3.py PORT
"""

from __future__ import annotations

import sys
import time
from typing import Any


def _stop(server: Any) -> None:
    """Stop serving and close the listening socket (``stop`` alone leaves it bound, and a
    client's connect would hang in the backlog instead of being refused)."""
    server.stop()
    if server._server is not None:
        server._server.server_close()


def main(argv: list[str]) -> int:
    from moto.server import ThreadedMotoServer

    port = int(argv[0])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print("up", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "restart":
            _stop(server)
            time.sleep(float(argument or 0))
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            print("up", flush=True)
        elif command == "quit":
            break
    _stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
