"""``startupmonkey.grpcserve``: the one gRPC server of the analyser's ingest and the executor
API, run for real: a Unix socket only its user may open (0600, in a 0700 folder it makes),
TCP with a system-chosen port, grpc.health.v1 SERVING then NOT_SERVING, a stop that lets a
running call finish within the grace period and cancels one that outlasts it, and the
options it is given (maximum_concurrent_rpcs, message size limits, interceptors) in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from startupmonkey import grpcserve

pytestmark = pytest.mark.integration
SERVICE = "test.Echo"
Serving = health_pb2.HealthCheckResponse.SERVING
NotServing = health_pb2.HealthCheckResponse.NOT_SERVING


class Echo:
    """``test.Echo/Call`` on raw bytes: answers what it got after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.started = asyncio.Event()
        self.finished = 0

    async def call(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.started.set()
        await asyncio.sleep(self.delay)
        self.finished += 1
        return request

    def register(self, server: grpc.aio.Server) -> None:
        method = grpc.unary_unary_rpc_method_handler(self.call)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Call": method}),))


def call(channel: grpc.aio.Channel) -> Callable[[bytes], Awaitable[bytes]]:
    method: Callable[[bytes], Awaitable[bytes]] = channel.unary_unary(
        f"/{SERVICE}/Call", request_serializer=None, response_deserializer=None)
    return method


async def health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    status: int = answer.status
    return status


async def not_serving(server: grpcserve.Server) -> bool:
    """What health says for the whole server and each service (asked in-process: a
    stopping server takes no new calls)."""
    found = [(await server.health.Check(health_pb2.HealthCheckRequest(service=name),
                                        None)).status
             for name in ("", *server.services)]
    return set(found) == {NotServing}


@contextlib.asynccontextmanager
async def running(server: grpcserve.Server, address: str) -> AsyncIterator[grpc.aio.Channel]:
    port = await server.start(address)
    target = address if address.startswith("unix:") else f"127.0.0.1:{port}"
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            yield channel
    finally:
        await server.stop(0)


async def test_unix_socket_is_private_and_health_answers_serving(tmp_path: Path) -> None:
    socket = tmp_path / "made" / "api.sock"
    server = grpcserve.Server(Echo().register, (SERVICE,))
    async with running(server, f"unix://{socket}") as channel:
        assert stat.S_IMODE(socket.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(socket.stat().st_mode)
        assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
        assert server.socket == socket and server.serving
        assert await health(channel) == Serving
        assert await health(channel, SERVICE) == Serving
        assert await call(channel)(b"ping") == b"ping"
    assert not server.serving


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    socket = tmp_path / "api.sock"
    socket.write_text("left over")
    socket.chmod(0o666)
    async with running(grpcserve.Server(Echo().register, ()), f"unix://{socket}") as channel:
        assert stat.S_IMODE(socket.stat().st_mode) == 0o600
        assert await call(channel)(b"x") == b"x"


async def test_tcp_port_zero_picks_a_port() -> None:
    server = grpcserve.Server(Echo().register, (SERVICE,))
    async with running(server, "127.0.0.1:0") as channel:
        assert server.port > 0 and server.bound_port == server.port and server.socket is None
        assert await health(channel, SERVICE) == Serving


async def test_stop_says_not_serving_and_drains_a_running_call() -> None:
    echo = Echo(delay=0.5)
    server = grpcserve.Server(echo.register, (SERVICE,), stop_grace=10)
    port = await server.start("127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        pending = asyncio.ensure_future(call(channel)(b"slow"))
        await echo.started.wait()
        stopping = asyncio.ensure_future(server.stop())
        await asyncio.sleep(0.1)
        assert not stopping.done()
        assert await not_serving(server)
        # New calls are refused while the running one finishes.
        with pytest.raises(grpc.aio.AioRpcError):
            await health(channel)
        assert await pending == b"slow"
        await stopping
    assert echo.finished == 1


async def test_a_call_outlasting_the_grace_period_is_cancelled() -> None:
    echo = Echo(delay=30)
    server = grpcserve.Server(echo.register, ())
    port = await server.start("127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        pending = asyncio.ensure_future(call(channel)(b"slow"))
        await echo.started.wait()
        await asyncio.wait_for(server.stop(0.2), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await pending
        assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert echo.finished == 0


async def test_stop_before_start_and_twice_is_harmless() -> None:
    server = grpcserve.Server(Echo().register, ())
    await server.stop()
    await server.start("127.0.0.1:0")
    await server.stop(0)
    await server.stop(0)


async def test_options_limits_and_interceptors_are_in_force() -> None:
    seen: list[str] = []

    class Record(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic in stubs only
        async def intercept_service(
                self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                details: grpc.HandlerCallDetails) -> Any:
            seen.append(details.method)
            return await continuation(details)

    echo = Echo(delay=1.0)
    server = grpcserve.Server(
        echo.register, (), options=[("grpc.max_receive_message_length", 1024)],
        maximum_concurrent_rpcs=1, interceptors=[Record()])
    async with running(server, "127.0.0.1:0") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as large:
            await call(channel)(b"x" * 4096)
        assert large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        first = asyncio.ensure_future(call(channel)(b"one"))
        await echo.started.wait()
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await call(channel)(b"two")
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await first == b"one"
    assert f"/{SERVICE}/Call" in seen


def test_unix_socket_path() -> None:
    assert grpcserve.unix_socket_path("unix:///run/x.sock") == Path("/run/x.sock")
    assert grpcserve.unix_socket_path("unix:rel.sock") == Path("rel.sock")
    assert grpcserve.unix_socket_path("127.0.0.1:50051") is None
