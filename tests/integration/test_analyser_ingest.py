"""The analyser over its real transports, fed by a real collector reading a real PostgreSQL:
NATS credentials from files, readiness and grpc.health.v1, a NATS restart, a Unix socket.

The collector is the real :class:`startupmonkey.collector.service.Collector` in this event
loop (``tests/integration/test_collector_ingest_server.py``), the problem a real session
idle in a transaction. Protocol cases a real collector never produces (refusals, chunks out
of order, a stream cut mid-snapshot, exact cooldown times) are fed by hand in the component
tier: ``tests/component/test_analyser_transport.py``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from startupmonkey import settings
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import messages, monitor
from startupmonkey.models.enums import DetectorId
from tests.integration.test_collector_ingest_server import collector_config, running_collector
from tests.integration.test_collector_ingest_server import metric as collector_metric
from tests.support import components, workloads
from tests.support.chain import http_get, metric, running_analyser, subscriber
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration
NAMESPACE, MONITOR = "tests", "shop"  # what collector_config renders
DETECTIONS = f"startupmonkey.v1.{NAMESPACE}.{MONITOR}.detections.>"
IDLE_SUBJECT = f"startupmonkey.v1.{NAMESPACE}.{MONITOR}.detections.idle_in_transaction"


def analyser_config(nats_url: str, *, user_file: Path | None = None,
                    password_file: Path | None = None, listen_address: str = "127.0.0.1:0",
                    **thresholds: Any) -> settings.ComponentConfig:
    """The analyser's rendered config for the monitor collector_config() renders."""
    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": "127.0.0.1", "dbname": "shop", "credentialsSecret": {"name": "s"}},
        "interval": "1s",
        "thresholds": {"idle_in_transaction": {"maxDuration": "1s"}, **thresholds}})
    return settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace=NAMESPACE, name=MONITOR), spec=spec,
        analyser=settings.AnalyserSettings(
            listen_address=listen_address,
            nats=settings.NatsSettings(url=nats_url, user_file=user_file,
                                       password_file=password_file)))


async def test_nats_credentials_come_from_files(
        pg_db: postgres.PostgresDatabase, nats_auth: components.NatsAuth,
        tmp_path: Path) -> None:
    (tmp_path / "user").write_text(nats_auth.user + "\n")
    (tmp_path / "password").write_text(nats_auth.password)
    config = analyser_config(nats_auth.url, user_file=tmp_path / "user",
                             password_file=tmp_path / "password")
    with workloads.idle_in_transaction(pg_db.conninfo) as held:
        async with (running_analyser(config) as analyser,
                    subscriber(nats_auth.url, DETECTIONS, user=nats_auth.user,
                               password=nats_auth.password) as (_, sub)):
            await eventually(lambda: analyser.publisher.connected, timeout=10)
            address = f"127.0.0.1:{analyser.grpc_port}"
            async with running_collector(collector_config(pg_db, address)):
                msg = await sub.next_msg(timeout=30)
    assert msg.subject == IDLE_SUBJECT
    detection = messages.parse_detection(msg.data)
    assert detection.detector is DetectorId.IDLE_IN_TRANSACTION
    assert detection.target.pid == held.pid


async def test_readiness_health_and_nats_restart(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer) -> None:
    async with (running_analyser(analyser_config(nats_server.url)) as analyser,
                grpc.aio.insecure_channel(f"127.0.0.1:{analyser.grpc_port}") as ch):
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "startupmonkey.v1.MetricsIngest"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await eventually(lambda: analyser.publisher.connected, timeout=10)
        status, body = await http_get(analyser.obs.port, "/readyz")
        assert status == 200, body

        await asyncio.to_thread(nats_server.stop)
        await eventually(lambda: not analyser.publisher.connected, timeout=10)
        assert (await http_get(analyser.obs.port, "/readyz"))[0] == 503
        await asyncio.to_thread(nats_server.start)
        await eventually(lambda: analyser.publisher.connected, timeout=20)
        assert (await http_get(analyser.obs.port, "/readyz"))[0] == 200
        # Publishing works again: a real collector's snapshots of a real problem.
        with workloads.idle_in_transaction(pg_db.conninfo) as held:
            async with (subscriber(nats_server.url, DETECTIONS) as (_, sub),
                        running_collector(collector_config(
                            pg_db, f"127.0.0.1:{analyser.grpc_port}"))):
                msg = await sub.next_msg(timeout=30)
    assert messages.parse_detection(msg.data).target.pid == held.pid
    assert metric(analyser, "startupmonkey_analyser_publish_errors_total") == 0


async def test_not_ready_without_nats() -> None:
    config = analyser_config("nats://127.0.0.1:9")  # nothing listens there
    async with running_analyser(config) as analyser:
        status, body = await http_get(analyser.obs.port, "/readyz")
        assert status == 503
        assert json.loads(body)["dependencies"]["grpc"]["ok"] is True


async def test_listens_on_a_unix_socket(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    socket = tmp_path / "analyser.sock"
    config = analyser_config(nats_server.url, listen_address=f"unix://{socket}")
    async with running_analyser(config) as analyser:
        assert socket.exists() and analyser.obs.health.report()["dependencies"]["grpc"]["ok"]
        async with running_collector(collector_config(pg_db, f"unix://{socket}")) as (_, obs):
            await eventually(lambda: metric(analyser, "startupmonkey_analyser_snapshots_total",
                                            status="accepted") >= 2, timeout=30)
            assert collector_metric(obs, "startupmonkey_collector_acks_total",
                                    status="accepted") >= 1
            assert obs.health.report()["dependencies"]["analyser"]["ok"]
