"""The observability endpoint over a real socket: /metrics, /healthz, /readyz."""

from __future__ import annotations

import pytest

from startupmonkey import observability
from tests.support.chain import http_get as _get

pytestmark = pytest.mark.integration


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
