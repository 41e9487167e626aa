"""The observability endpoint over a real socket: /metrics, /healthz, /readyz."""

from __future__ import annotations

import asyncio

import pytest

from startupmonkey import observability

pytestmark = pytest.mark.integration


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_readiness_follows_dependencies_and_metrics_are_served() -> None:
    obs = observability.Observability("collector")
    obs.health.expect("database")
    await obs.start(port=0, host="127.0.0.1")
    try:
        assert (await _get(obs.port, "/healthz"))[0] == 200
        status, body = await _get(obs.port, "/readyz")
        assert status == 503 and b'"database"' in body
        obs.health.set("database", True, "connected")
        assert (await _get(obs.port, "/readyz"))[0] == 200
        status, body = await _get(obs.port, "/metrics")
        assert status == 200
        assert b'startupmonkey_dependency_up{dependency="database"} 1.0' in body
        assert (await _get(obs.port, "/nope"))[0] == 404
    finally:
        await obs.stop()
