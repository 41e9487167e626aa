"""Real HTTP webhook receivers on 127.0.0.1 for the notification tests.

:class:`Receiver` is a threaded ``http.server`` that records every POST (headers and body) and
answers by a script: a list of status codes used in turn (the last one repeats), or ``hang``
(never answers until the receiver stops). ``key`` makes it check the HMAC-SHA256 signature
(docs/notifications.md) and record whether it matched. Use as a context manager: it stops (and
releases any hanging request) on exit, also when a test fails.
"""

from __future__ import annotations

import dataclasses
import http.server
import threading
from types import TracebackType
from typing import Any

from startupmonkey import notify


@dataclasses.dataclass(frozen=True)
class Request:
    """One POST received."""

    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool | None  # None: no key to check with


class Receiver:
    """A webhook on 127.0.0.1 answering ``codes`` in turn, or hanging when ``hang``."""

    def __init__(self, codes: list[int] | None = None, *, hang: bool = False,
                 key: bytes | None = None) -> None:
        self.codes = list(codes or [200])
        self.hang = hang
        self.key = key
        self.requests: list[Request] = []
        self.released = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver._received(self.path, dict(self.headers.items()), body)
                if receiver.hang:
                    receiver.released.wait()
                    return
                code = receiver._next_code()
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def _received(self, path: str, headers: dict[str, str], body: bytes) -> None:
        ok: bool | None = None
        if self.key is not None:
            ok = notify.verify(self.key, headers.get(notify.TIMESTAMP_HEADER, ""), body,
                               headers.get(notify.SIGNATURE_HEADER, ""))
        with self._lock:
            self.requests.append(Request(path, headers, body, ok))

    def _next_code(self) -> int:
        with self._lock:
            return self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]

    def bodies(self) -> list[bytes]:
        """The bodies received so far."""
        with self._lock:
            return [r.body for r in self.requests]

    def deliveries(self) -> list[str]:
        """The delivery ids received so far (repeats included)."""
        with self._lock:
            return [r.headers.get(notify.DELIVERY_HEADER, "") for r in self.requests]

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
