"""One grpc.aio server as the components run it: a listening address, grpc.health.v1, a
graceful stop.

Used by the analyser's ingest server (``MetricsIngest``) and the executor's API
(``startupmonkey.v1.Executor``), so both listen, report health and stop the same way:

- ``address`` is ``host:port`` (port 0 lets the system pick one; :attr:`Server.port` tells
  which) or ``unix:///path``. A Unix socket is private to our user: its folder is created
  with mode 0700 when missing, a stale socket file is replaced, and the socket is made 0600
  as soon as it is bound, before the server accepts a call.
- grpc.health.v1 answers SERVING for the whole server (``""``) and for each named service
  once started; :meth:`Server.stop` first says NOT_SERVING (so load balancers and probes
  stop sending), then lets running calls finish for the grace period, then cancels them.
- Everything else of ``grpc.aio.server`` is the caller's: channel options (message size
  limits, keepalive), ``maximum_concurrent_rpcs``, interceptors, and the services it
  registers on the server (``register``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

Register = Callable[[grpc.aio.Server], None]
"""Adds the caller's services to a new server (``add_XServicer_to_server(servicer, s)``)."""
Options = Iterable[tuple[str, Any]]

SOCKET_MODE = 0o600
"""A Unix socket only its user may connect to."""
SOCKET_FOLDER_MODE = 0o700
"""A socket folder this module creates."""


def unix_socket_path(address: str) -> Path | None:
    """The socket file of a ``unix:`` address, None for TCP."""
    if not address.startswith("unix:"):
        return None
    return Path(address.removeprefix("unix://").removeprefix("unix:"))


class Server:
    """A grpc.aio server with grpc.health.v1, started on one address and stopped gracefully.

    ``services`` are the fully qualified names health reports SERVING for (besides ``""``);
    ``stop_grace`` is the default grace period of :meth:`stop`.
    """

    def __init__(self, register: Register, services: Sequence[str], *, options: Options = (),
                 maximum_concurrent_rpcs: int | None = None,
                 interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
                 stop_grace: float = 5.0) -> None:
        self.register = register
        self.services = tuple(services)
        self.options = list(options)
        self.max_concurrent_rpcs = maximum_concurrent_rpcs
        self.interceptors = tuple(interceptors)
        self.stop_grace = stop_grace
        self.health = health_aio.HealthServicer()
        self.port = 0
        self.socket: Path | None = None
        self._server: grpc.aio.Server | None = None

    @property
    def bound_port(self) -> int:
        """The port ``start`` returned (the executor API's name for :attr:`port`)."""
        return self.port

    @property
    def serving(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    async def start(self, address: str) -> int:
        """Listen on ``address`` and report SERVING; returns the bound port (what gRPC says
        for a Unix socket). OSError or RuntimeError when the address cannot be bound."""
        server = grpc.aio.server(options=self.options, interceptors=self.interceptors,
                                 maximum_concurrent_rpcs=self.max_concurrent_rpcs)
        self.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        socket = unix_socket_path(address)
        if socket is not None:
            socket.parent.mkdir(parents=True, exist_ok=True, mode=SOCKET_FOLDER_MODE)
            socket.unlink(missing_ok=True)
        port = server.add_insecure_port(address)
        if socket is None and port == 0:
            raise OSError(f"cannot listen on {address}")
        if socket is not None:
            socket.chmod(SOCKET_MODE)  # bound (the file exists) but not yet accepting calls
        await server.start()
        self._server, self.port, self.socket = server, port, socket
        for service in ("", *self.services):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let running calls finish for ``grace`` seconds (default
        :attr:`stop_grace`), then cancel what is left. A no-op when not started."""
        server, self._server = self._server, None
        if server is None:
            return
        await self.health.enter_graceful_shutdown()
        await server.stop(self.stop_grace if grace is None else grace)
