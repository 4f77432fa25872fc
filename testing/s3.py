"""moto's S3 server (``moto[server]``, the test extra) on 127.0.0.1 for the ``store push``/``pull``
tests and benchmark: what ``moto.server.ThreadedMotoServer`` serves, plus what transfer tests need
from the server's side: a log of requests (which objects a rerun moved), a delay before each
answer (object storage's round trip), and a :class:`Hold` that stops one chosen request part-way,
so that a real client process can be killed mid-transfer at a known point.

    python -m clifvqa.testing.s3 PORT [LATENCY_S]    print the port, serve until killed (PORT 0: a free one)
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any


class Hold:
    """Stops the ``nth`` request (1-based) with HTTP ``method`` whose path matches ``pattern``.

    ``body_bytes=0``: the request never reaches S3 (an upload held there is never stored, as S3
    stores no object whose body did not arrive). Otherwise S3 answers it and the client gets the
    status, the headers and the first ``body_bytes`` of the body (a download part-way). Then
    ``reached`` is set and the request waits for :meth:`release`; afterwards the connection ends
    (a held upload is answered 503, a held download stays short).
    """

    def __init__(self, method: str, pattern: str, nth: int = 1, body_bytes: int = 0) -> None:
        self.method, self.pattern, self.nth, self.body_bytes = method, re.compile(pattern), nth, body_bytes
        self.seen = 0
        self.reached, self._released = threading.Event(), threading.Event()
        self._lock = threading.Lock()

    def release(self) -> None:
        self._released.set()

    def _is_it(self, method: str, path: str) -> bool:
        if method != self.method or not self.pattern.search(path):
            return False
        with self._lock:
            self.seen += 1
            return self.seen == self.nth

    def _wait(self) -> None:
        self.reached.set()
        self._released.wait()

    def _part(self, body: bytes) -> Iterator[bytes]:
        yield body[:self.body_bytes]
        self._wait()


class S3App:
    """moto's S3 as a WSGI app, with ``requests`` (``(method, path)`` of each request, in order),
    ``latency_s`` before each answer, and at most one :class:`Hold` (``hold``)."""

    def __init__(self, latency_s: float = 0.0) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app

        self.inner = DomainDispatcherApplication(create_backend_app)
        self.latency_s = latency_s
        self.requests: list[tuple[str, str]] = []
        self.hold: Hold | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.latency_s:
            time.sleep(self.latency_s)
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        self.requests.append((method, path))
        hold = self.hold
        if hold is None or not hold._is_it(method, path):
            return self.inner(environ, start_response)
        if not hold.body_bytes:
            hold._wait()
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return [b""]
        return hold._part(b"".join(self.inner(environ, start_response)))


@contextmanager
def serving(app: S3App) -> Iterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 from a thread; yields its ``http://`` endpoint
    (for ``AWS_ENDPOINT_URL``). Held requests are released when the block ends."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        if app.hold is not None:
            app.hold.release()
        server.shutdown()
        server.server_close()
        thread.join()


def main(argv: list[str]) -> None:
    """Serve on 127.0.0.1:PORT (0: a free one) with LATENCY_S; prints the port, then serves."""
    from werkzeug.serving import make_server

    port, latency_s = int(argv[0]), float(argv[1]) if len(argv) > 1 else 0.0
    server = make_server("127.0.0.1", port, S3App(latency_s), threaded=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
