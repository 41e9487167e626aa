"""Logs, metrics and health endpoints every component shares.

Each component process serves, on its own observability port (separate from any gRPC port):

- ``/metrics``: Prometheus text format from the component's own registry;
- ``/healthz``: liveness, 200 while the event loop answers;
- ``/readyz``: readiness, 200 only while every registered dependency (database, NATS, peer
  gRPC, ...) last reported healthy; the JSON body names each dependency and its detail.

Dependencies *push* their state (:meth:`Health.set`) as they connect and fail, so a probe never
triggers I/O against the database. Logs are JSON lines carrying the component and the monitor's
namespace and name; :func:`run_until_signalled` turns SIGTERM/SIGINT into a clean shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import prometheus_client

_RESERVED = set(vars(logging.makeLogRecord({})))
SECRET_WORDS = ("password", "passwd", "secret", "token")


class JsonFormatter(logging.Formatter):
    """One JSON object per line with time, level, logger, message, identity and extras."""

    def __init__(self, identity: dict[str, str]) -> None:
        super().__init__()
        self.identity = identity

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.identity,
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = "<redacted>" if _is_secret(key) else value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _is_secret(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_WORDS)


def setup_logging(component: str, namespace: str | None = None, monitor: str | None = None,
                  level: str = "info", stream: Any = None) -> None:
    """Send every log record of the process as JSON lines to ``stream`` (stderr)."""
    identity = {"component": component}
    if namespace:
        identity["namespace"] = namespace
    if monitor:
        identity["monitor"] = monitor
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(identity))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RateLimitedLog:
    """Logs every kind of a repeated problem, at most one line per kind per ``interval``.

    The first occurrence of a kind is logged at once; later ones within ``interval`` are
    counted and the next line logged says how many were not (``suppressed``). Bad input from
    outside is logged with its reason each time it can be without flooding the log.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object,
                extra: dict[str, Any] | None = None) -> bool:
        """Log ``message % args`` for ``kind`` unless one was logged within the interval;
        True when logged."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        fields = dict(extra or {}, kind=kind, suppressed=suppressed)
        if suppressed:
            message += f" ({suppressed} more of this kind not logged since the last line)"
        self._logger.warning(message, *args, extra=fields)
        return True


@dataclasses.dataclass
class DependencyState:
    """The last report of one dependency."""

    ok: bool
    detail: str
    since: float


class Health:
    """Readiness of one component: the AND of its dependencies' last reports."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self._states: dict[str, DependencyState] = {}
        self._gauge = prometheus_client.Gauge(
            "startupmonkey_dependency_up", "1 while a dependency last reported healthy",
            ["dependency"], registry=registry)

    def expect(self, *names: str) -> None:
        """Declare dependencies that start unhealthy until they report."""
        for name in names:
            self._states.setdefault(name, DependencyState(False, "not checked yet", time.time()))
            self._gauge.labels(name).set(0)

    def set(self, name: str, ok: bool, detail: str = "") -> None:
        """Record a dependency's state (called by whoever owns the connection)."""
        previous = self._states.get(name)
        since = previous.since if previous and previous.ok == ok else time.time()
        self._states[name] = DependencyState(ok, detail, since)
        self._gauge.labels(name).set(1 if ok else 0)

    @property
    def ready(self) -> bool:
        """True when every dependency is healthy."""
        return all(state.ok for state in self._states.values())

    def report(self) -> dict[str, Any]:
        """The JSON body of ``/readyz``."""
        return {
            "ready": self.ready,
            "dependencies": {
                name: {"ok": s.ok, "detail": s.detail, "since": s.since}
                for name, s in sorted(self._states.items())
            },
        }


class Observability:
    """Registry, health and the HTTP endpoint of one component."""

    def __init__(self, component: str) -> None:
        self.component = component
        self.registry = prometheus_client.CollectorRegistry()
        self.health = Health(self.registry)
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("observability endpoint not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, port: int = 0, host: str = "0.0.0.0") -> None:  # noqa: S104
        """Serve /metrics, /healthz and /readyz (port 0 picks a free port)."""
        self._server = await asyncio.start_server(self._handle, host, port)

    async def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b""):
                pass
            status, ctype, body = self._route(request.decode("latin-1").split(" "))
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # a prober that went away or stalled: nobody is left to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, parts: list[str]) -> tuple[str, str, bytes]:
        path = parts[1].split("?", 1)[0] if len(parts) > 1 else "/"
        if path == "/metrics":
            body = prometheus_client.generate_latest(self.registry)
            return "200 OK", prometheus_client.CONTENT_TYPE_LATEST, body
        if path == "/healthz":
            return "200 OK", "application/json", b'{"alive": true}'
        if path == "/readyz":
            report = self.health.report()
            status = "200 OK" if report["ready"] else "503 Service Unavailable"
            return status, "application/json", json.dumps(report).encode()
        return "404 Not Found", "text/plain", b"not found\n"


async def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)``; SIGTERM or SIGINT sets ``stop`` so ``main`` can finish cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await main(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
