"""The analyser over its real transports: a real grpc.aio server fed by a tiny in-test
collector client, and a real nats-server carrying detections and remediation events.

What is proven here: detections arrive on their subject as Detection v1 JSON; acks follow the
protocol (ACCEPTED, DUPLICATE, RETRY, REJECTED, one per sequence, in order); oversized and
undecodable messages are refused with a gRPC status and counted; a collector vanishing
mid-stream leaves nothing behind; remediation events start cooldowns and malformed ones are
counted; NATS credentials come from files; the analyser survives a NATS restart; readiness
and grpc.health.v1 report what they should.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from startupmonkey import settings, snapshots
from startupmonkey.analyser import main as analyser_main
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import messages, monitor
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState
from startupmonkey.v1 import ingest_pb2, ingest_pb2_grpc, limits
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import components
from tests.support.eventually import eventually
from tests.unit import test_analyser_build as build

pytestmark = pytest.mark.integration
Status = ingest_pb2.AckStatus
DETECTIONS = "startupmonkey.v1.prod.shop.detections.>"


def make_config(nats_url: str, *, user_file: Path | None = None,
                password_file: Path | None = None, **thresholds: Any
                ) -> settings.ComponentConfig:
    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": "127.0.0.1", "dbname": build.DBNAME,
                     "credentialsSecret": {"name": "s"}},
        "interval": "1s",
        "thresholds": {"idle_in_transaction": {"maxDuration": "30s", "cooldown": "2s"},
                       **thresholds}})
    return settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace=build.NAMESPACE, name=build.MONITOR), spec=spec,
        analyser=settings.AnalyserSettings(
            listen_address="127.0.0.1:0",
            nats=settings.NatsSettings(url=nats_url, user_file=user_file,
                                       password_file=password_file)))


@contextlib.asynccontextmanager
async def running(config: settings.ComponentConfig) -> AsyncIterator[analyser_main.Analyser]:
    analyser = analyser_main.Analyser(config)
    await analyser.start(0, "127.0.0.1")
    try:
        yield analyser
    finally:
        await analyser.stop()


@contextlib.asynccontextmanager
async def channel(analyser: analyser_main.Analyser) -> AsyncIterator[grpc.aio.Channel]:
    options = [("grpc.max_send_message_length", 3 * limits.MAX_MESSAGE_BYTES)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{analyser.grpc_port}",
                                         options=options) as ch:
        yield ch


@contextlib.asynccontextmanager
async def subscriber(url: str, subject: str = DETECTIONS, **kwargs: Any
                     ) -> AsyncIterator[tuple[Client, Subscription]]:
    nc = await nats.connect(url, **kwargs)
    try:
        sub = await nc.subscribe(subject)
        await nc.flush()
        yield nc, sub
    finally:
        await nc.close()


def idle_snapshot(at_s: float, seq: int, pid: int = 4242, **kwargs: Any) -> pb.Snapshot:
    held = build.session(pid, state="idle in transaction", state_change=build.at(-60),
                         xact_start=build.at(-61))
    return build.snapshot(at_s, seq=seq, sessions=[held], **kwargs)


async def send(call: Any, *chunks: pb.Snapshot) -> None:
    for chunk in chunks:
        await call.write(chunk)


async def ack(call: Any) -> ingest_pb2.Ack:
    result = await asyncio.wait_for(call.read(), timeout=10)
    assert isinstance(result, ingest_pb2.Ack), result
    return result


def metric(analyser: analyser_main.Analyser, name: str, **labels: str) -> float:
    value = analyser.obs.registry.get_sample_value(name, labels or None)
    return value or 0.0


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_detection_is_published_on_its_subject(nats_server: NatsServer) -> None:
    async with (running(make_config(nats_server.url)) as analyser,
                subscriber(nats_server.url) as (_, sub), channel(analyser) as ch):
        await eventually(lambda: analyser.publisher.connected, timeout=10)
        call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream()
        await send(call, idle_snapshot(0, 1))
        answer = await ack(call)
        assert answer.sequence == 1 and answer.status == Status.ACK_STATUS_ACCEPTED
        msg = await sub.next_msg(timeout=10)
        assert msg.subject == "startupmonkey.v1.prod.shop.detections.idle_in_transaction"
        assert msg.headers and msg.headers["Nats-Msg-Id"] == json.loads(msg.data)["id"]
        detection = messages.parse_detection(msg.data)
        assert detection.target.pid == 4242
        assert detection.target.backend_start == build.at(-3600)
        assert detection.proposed_action is ActionId.TERMINATE_SESSION
        call.cancel()


async def test_chunks_duplicates_and_protocol_refusals(nats_server: NatsServer) -> None:
    async with running(make_config(nats_server.url)) as analyser, channel(analyser) as ch:
        call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream()
        big = idle_snapshot(0, 1, tables=[build.table(n, f"t{n}") for n in range(1, 200)])
        chunks = snapshots.split(big, target_bytes=4096)
        assert len(chunks) > 2
        await send(call, *chunks)
        assert (await ack(call)).status == Status.ACK_STATUS_ACCEPTED
        await send(call, *chunks)  # re-sent after a reconnect, say
        assert (await ack(call)).status == Status.ACK_STATUS_DUPLICATE

        wrong = idle_snapshot(1, 2)
        wrong.monitor.name = "elsewhere"
        too_many = idle_snapshot(2, 3)
        too_many.chunk_count = limits.MAX_CHUNKS_PER_SNAPSHOT + 1
        two = snapshots.split(idle_snapshot(3, 4, tables=[build.table(n, f"t{n}")
                                                        for n in range(1, 50)]), 4096)
        await send(call, wrong, too_many, two[0], idle_snapshot(4, 5))  # seq 4 left incomplete
        answers = [await ack(call) for _ in range(4)]
        assert [(a.sequence, a.status) for a in answers] == [
            (2, Status.ACK_STATUS_REJECTED), (3, Status.ACK_STATUS_REJECTED),
            (4, Status.ACK_STATUS_RETRY), (5, Status.ACK_STATUS_ACCEPTED)]
        later = snapshots.split(idle_snapshot(5, 6, tables=[build.table(n, f"t{n}")
                                                            for n in range(1, 50)]), 4096)
        await send(call, later[1])  # out of order: chunk 1 without chunk 0
        assert (await ack(call)).status == Status.ACK_STATUS_RETRY
        await send(call, *later)  # re-sent in order
        assert (await ack(call)).status == Status.ACK_STATUS_ACCEPTED
        assert metric(analyser, "startupmonkey_analyser_refused_messages_total",
                      reason="wrong_monitor") == 1
        call.cancel()


async def test_oversized_and_undecodable_messages_are_refused_and_counted(
        nats_server: NatsServer) -> None:
    async with running(make_config(nats_server.url)) as analyser, channel(analyser) as ch:
        call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream()
        huge = idle_snapshot(0, 1)
        huge.sessions.add(pid=1, query="x" * (limits.MAX_MESSAGE_BYTES + 1))
        await send(call, huge)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ack(call)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        raw = ch.stream_stream("/startupmonkey.v1.MetricsIngest/Stream")()
        await raw.write(b"\xff\xff\xff\xff")
        with pytest.raises(grpc.aio.AioRpcError) as garbage:
            await asyncio.wait_for(raw.read(), timeout=10)
        assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        for reason in ("oversized", "undecodable"):
            assert metric(analyser, "startupmonkey_analyser_refused_messages_total",
                          reason=reason) == 1
        fresh = ingest_pb2_grpc.MetricsIngestStub(ch).Stream()  # the server is fine
        await send(fresh, idle_snapshot(1, 2))
        assert (await ack(fresh)).status == Status.ACK_STATUS_ACCEPTED
        fresh.cancel()


async def test_collector_vanishing_mid_stream_leaves_nothing_behind(
        nats_server: NatsServer) -> None:
    async with running(make_config(nats_server.url)) as analyser:
        big = idle_snapshot(0, 1, statement_texts=[pb.StatementText(queryid=1, text="SELECT 1")],
                            tables=[build.table(n, f"t{n}") for n in range(1, 200)])
        chunks = snapshots.split(big, target_bytes=4096)
        async with channel(analyser) as ch:
            call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream()
            await send(call, *chunks[:2])
            await eventually(lambda: metric(analyser, "startupmonkey_analyser_streams") == 1)
        # The channel is gone with half a snapshot sent.
        await eventually(lambda: metric(analyser, "startupmonkey_analyser_streams") == 0)
        assert metric(analyser, "startupmonkey_analyser_stream_ends_total", how="cancelled") == 1
        assert metric(analyser, "startupmonkey_analyser_statement_texts") == 0
        async with channel(analyser) as ch:  # the collector reconnects and re-sends
            call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream()
            await send(call, *chunks)
            assert (await ack(call)).status == Status.ACK_STATUS_ACCEPTED
            call.cancel()


async def test_remediation_events_cool_a_key_down_and_malformed_ones_are_counted(
        nats_server: NatsServer) -> None:
    async with (running(make_config(nats_server.url)) as analyser,
                subscriber(nats_server.url) as (nc, sub), channel(analyser) as ch):
        await eventually(lambda: analyser.publisher.connected, timeout=10)
        call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream()
        await send(call, idle_snapshot(0, 1))
        await ack(call)
        first = messages.parse_detection((await sub.next_msg(timeout=10)).data)

        subject = messages.remediation_subject("prod", "shop", RemediationState.REJECTED)
        await nc.publish(subject, b'{"schema": "nonsense"}')
        await nc.publish(subject, b"not json at all")
        event = messages.RemediationEvent(
            namespace="prod", monitor="shop", remediation="shop-x", key=first.key,
            detection_id=first.id, detector=DetectorId.IDLE_IN_TRANSACTION,
            action=ActionId.TERMINATE_SESSION, state=RemediationState.REJECTED,
            time=build.at(1))
        await nc.publish(subject, event.encode())
        await nc.flush()
        await eventually(lambda: metric(analyser, "startupmonkey_analyser_remediation_events_total",
                                        state="Rejected") == 1)
        assert metric(analyser, "startupmonkey_analyser_malformed_messages_total",
                      kind="remediation-event") == 2

        # Cooldown 2s from the event (t=1): quiet at t=2, proposed again at t=4 with a new id.
        await send(call, idle_snapshot(2, 2))
        await ack(call)
        await send(call, idle_snapshot(4, 3))
        await ack(call)
        again = messages.parse_detection((await sub.next_msg(timeout=10)).data)
        assert again.key == first.key and again.id != first.id
        assert again.first_seen == build.at(4)
        call.cancel()


async def test_nats_credentials_come_from_files(nats_auth: components.NatsAuth,
                                                tmp_path: Path) -> None:
    (tmp_path / "user").write_text(nats_auth.user + "\n")
    (tmp_path / "password").write_text(nats_auth.password)
    config = make_config(nats_auth.url, user_file=tmp_path / "user",
                         password_file=tmp_path / "password")
    async with (running(config) as analyser,
                subscriber(nats_auth.url, user=nats_auth.user,
                           password=nats_auth.password) as (_, sub),
                channel(analyser) as ch):
        await eventually(lambda: analyser.publisher.connected, timeout=10)
        call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream()
        await send(call, idle_snapshot(0, 1))
        await ack(call)
        assert (await sub.next_msg(timeout=10)).subject.endswith("idle_in_transaction")
        call.cancel()


async def test_readiness_health_and_nats_restart(nats_server: NatsServer) -> None:
    async with running(make_config(nats_server.url)) as analyser, channel(analyser) as ch:
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
        async with subscriber(nats_server.url) as (_, sub):
            call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream()
            await send(call, idle_snapshot(0, 1))
            await ack(call)
            assert await sub.next_msg(timeout=10)
            call.cancel()


async def test_not_ready_without_nats() -> None:
    config = make_config("nats://127.0.0.1:9")  # nothing listens there
    async with running(config) as analyser:
        status, body = await http_get(analyser.obs.port, "/readyz")
        assert status == 503
        assert json.loads(body)["dependencies"]["grpc"]["ok"] is True


async def test_listens_on_a_unix_socket(nats_server: NatsServer, tmp_path: Path) -> None:
    config = make_config(nats_server.url)
    assert config.analyser is not None
    socket = tmp_path / "analyser.sock"
    config.analyser.listen_address = f"unix://{socket}"
    async with (running(config) as analyser,
                grpc.aio.insecure_channel(f"unix://{socket}") as ch):
        assert socket.exists() and analyser.obs.health.report()["dependencies"]["grpc"]["ok"]
        call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream()
        await send(call, idle_snapshot(0, 1))
        assert (await ack(call)).status == Status.ACK_STATUS_ACCEPTED
        call.cancel()
