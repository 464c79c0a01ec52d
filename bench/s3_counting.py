"""moto's S3 server with every request counted at the server, by who signed it.

The fleet bench gives each role its own access key id (the watchers, the manager, the
one-shot CLI), and this server reads it from each request's ``Authorization`` header
(``Credential=KEY/...``), so request counts come from what reached S3, not from what a
client believes it sent. ``GET /__counts`` answers ``{"KEY METHOD": n, ...}``.

    python bench/s3_counting.py PORT      (prints "up" once it listens)
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def signer(authorization: str) -> str:
    """The access key id of a SigV4 ``Authorization`` header ("anonymous" without one)."""
    found = _CREDENTIAL.search(authorization)
    return found.group(1) if found else "anonymous"


def counting_app(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """``app`` behind a WSGI layer that counts each request by signer and method."""
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/__counts":
            with lock:
                body = json.dumps(dict(counts)).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        key = f"{signer(environ.get('HTTP_AUTHORIZATION', ''))} {environ['REQUEST_METHOD']}"
        with lock:
            counts[key] += 1
        return app(environ, start_response)

    return serve


def main(argv: list[str]) -> int:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = counting_app(DomainDispatcherApplication(create_backend_app))
    server = make_server(
        "127.0.0.1", int(argv[0]), app, threaded=True, request_handler=MotoRequestHandler
    )
    print("up", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
