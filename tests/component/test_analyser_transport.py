"""The analyser's transports fed hand-built snapshots: a real grpc.aio server written to by a
tiny in-test collector client, and a real nats-server carrying detections and remediation
events.

**Component tier** (``tests/component/``, marker ``component``): real servers and real
transports (gRPC, NATS), but the input is built by hand (``tests/support/snapshots_build.py``)
instead of read from PostgreSQL by a real collector. That is how protocol cases a real
collector never produces (wrong monitor, too many chunks, chunks out of order, oversized or
undecodable messages, a stream cut half-way through a snapshot) and exact server times (a
cooldown measured from an event) can be tested at all. Everything a real collector can drive
is tested with one, in ``tests/integration/`` (docs/analyser.md, "Test tiers").

What is proven here: detections arrive on their subject as Detection v1 JSON; acks follow the
protocol (ACCEPTED, DUPLICATE, RETRY, REJECTED, one per sequence, in order); oversized and
undecodable messages are refused with a gRPC status and counted; a collector vanishing
mid-stream leaves nothing behind; remediation events start cooldowns and malformed ones are
counted; streams beyond the server's limit are refused with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from startupmonkey import settings, snapshots
from startupmonkey.analyser import main as analyser_main
from startupmonkey.analyser import server
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import messages, monitor
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState
from startupmonkey.v1 import ingest_pb2, ingest_pb2_grpc, limits
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build
from tests.support.chain import metric, running_analyser, subscriber
from tests.support.eventually import eventually

pytestmark = pytest.mark.component
Status = ingest_pb2.AckStatus
DETECTIONS = "startupmonkey.v1.prod.shop.detections.>"


def make_config(nats_url: str, **thresholds: Any) -> settings.ComponentConfig:
    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": "127.0.0.1", "dbname": build.DBNAME,
                     "credentialsSecret": {"name": "s"}},
        "interval": "1s",
        "thresholds": {"idle_in_transaction": {"maxDuration": "30s", "cooldown": "2s"},
                       **thresholds}})
    return settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace=build.NAMESPACE, name=build.MONITOR), spec=spec,
        analyser=settings.AnalyserSettings(listen_address="127.0.0.1:0",
                                           nats=settings.NatsSettings(url=nats_url)))


@contextlib.asynccontextmanager
async def channel(analyser: analyser_main.Analyser) -> AsyncIterator[grpc.aio.Channel]:
    options = [("grpc.max_send_message_length", 3 * limits.MAX_MESSAGE_BYTES)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{analyser.grpc_port}",
                                         options=options) as ch:
        yield ch


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


async def test_detection_is_published_on_its_subject(nats_server: NatsServer) -> None:
    async with (running_analyser(make_config(nats_server.url)) as analyser,
                subscriber(nats_server.url, DETECTIONS) as (_, sub), channel(analyser) as ch):
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
    async with running_analyser(make_config(nats_server.url)) as analyser, channel(analyser) as ch:
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
    async with running_analyser(make_config(nats_server.url)) as analyser, channel(analyser) as ch:
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
    async with running_analyser(make_config(nats_server.url)) as analyser:
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
    async with (running_analyser(make_config(nats_server.url)) as analyser,
                subscriber(nats_server.url, DETECTIONS) as (nc, sub), channel(analyser) as ch):
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


async def test_streams_beyond_the_limit_are_refused_with_resource_exhausted(
        nats_server: NatsServer) -> None:
    limit = server.MAX_CONCURRENT_RPCS
    async with (running_analyser(make_config(nats_server.url)) as analyser,
                channel(analyser) as ch):
        assert analyser.server.max_concurrent_rpcs == limit
        stub = ingest_pb2_grpc.MetricsIngestStub(ch)
        open_calls = []
        for n in range(limit):
            call = stub.Stream()
            await send(call, idle_snapshot(n, n + 1))
            assert (await ack(call)).status == Status.ACK_STATUS_ACCEPTED
            open_calls.append(call)
        assert metric(analyser, "startupmonkey_analyser_streams") == limit

        extra = stub.Stream()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(extra.read(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert metric(analyser, "startupmonkey_analyser_streams") == limit  # no handler ran
        # The open streams are served as before.
        await send(open_calls[0], idle_snapshot(limit, limit + 1))
        assert (await ack(open_calls[0])).status == Status.ACK_STATUS_ACCEPTED

        # Once a stream ends, its slot serves the next one.
        open_calls.pop().cancel()
        await eventually(lambda: metric(analyser, "startupmonkey_analyser_streams") == limit - 1)
        fresh = stub.Stream()
        await send(fresh, idle_snapshot(limit + 1, limit + 2))
        assert (await ack(fresh)).status == Status.ACK_STATUS_ACCEPTED
        for call in (*open_calls, fresh):
            call.cancel()
