"""The analyser takes streams from its own collector only (issue 24.5): a real grpc.aio ingest
server with a token file, written to by in-test clients.

A stream without the token, or with another one, ends UNAUTHENTICATED before anything is
read and is counted; so is every stream while the token file cannot be read (fail closed).
A stream that stays silent is ended, so a client past the NetworkPolicy cannot hold the few
stream slots open. The real collector presenting its token is in
tests/integration/test_runner.py (``startupmonkey run`` wires both ends).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import prometheus_client
import pytest

from startupmonkey import db, observability
from startupmonkey.analyser import main as analyser_main
from startupmonkey.collector import metrics, state, stream
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.v1 import ingest_pb2, ingest_pb2_grpc
from tests.component.test_analyser_transport import ack, channel, idle_snapshot, make_config
from tests.support.chain import metric, running_analyser
from tests.support.eventually import eventually

pytestmark = pytest.mark.component
TOKEN = "ingest-token-for-the-test-0123456789"


def _config(nats_url: str, token_file: Path) -> object:
    config = make_config(nats_url)
    assert config.analyser is not None
    config.analyser.ingest_token_file = token_file
    return config


async def _refusal(analyser: analyser_main.Analyser,
                   metadata: tuple[tuple[str, str], ...] | None) -> grpc.StatusCode:
    async with channel(analyser) as ch:
        call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream(metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            # The server may refuse before the write completes: either call then raises.
            await call.write(idle_snapshot(0, 1))
            await asyncio.wait_for(call.read(), timeout=10)
        return info.value.code()


@pytest.mark.parametrize("metadata", [None, (("authorization", "Bearer wrong"),),
                                      (("authorization", TOKEN),)])
async def test_a_stream_without_the_token_is_refused_and_counted(
        nats_server: NatsServer, tmp_path: Path,
        metadata: tuple[tuple[str, str], ...] | None) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    async with running_analyser(_config(nats_server.url, token_file)) as analyser:  # type: ignore[arg-type]
        assert await _refusal(analyser, metadata) == grpc.StatusCode.UNAUTHENTICATED
        assert metric(analyser, "startupmonkey_analyser_refused_messages_total",
                      reason="unauthenticated") == 1
        assert metric(analyser, "startupmonkey_analyser_snapshots_total",
                      status="accepted") == 0


async def test_the_token_lets_the_stream_in(nats_server: NatsServer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    async with (running_analyser(_config(nats_server.url, token_file)) as analyser,  # type: ignore[arg-type]
                channel(analyser) as ch):
        call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream(
            metadata=(("authorization", f"Bearer {TOKEN}"),))
        await call.write(idle_snapshot(0, 1))
        assert (await ack(call)).status == ingest_pb2.AckStatus.ACK_STATUS_ACCEPTED
        call.cancel()


async def test_an_unreadable_token_file_refuses_every_stream(
        nats_server: NatsServer, tmp_path: Path) -> None:
    async with running_analyser(_config(nats_server.url, tmp_path / "missing")) as analyser:  # type: ignore[arg-type]
        code = await _refusal(analyser, (("authorization", "Bearer "),))
        assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_silent_stream_is_ended(nats_server: NatsServer) -> None:
    async with running_analyser(make_config(nats_server.url)) as analyser, \
            channel(analyser) as ch:
        analyser.server.servicer.idle_timeout = 0.5
        call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), timeout=10)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert metric(analyser, "startupmonkey_analyser_refused_messages_total",
                      reason="idle") == 1


async def test_a_collector_with_the_wrong_token_is_told_why(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """The real collector stream with a backlog to write and the wrong token: its readiness
    and log name the analyser's refusal (UNAUTHENTICATED and its message) when it reached the
    collector, and otherwise say what the bare INTERNAL error of a write cut short means and
    where the reason is, never just 'Internal error from Core'."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-" + TOKEN)
    registry = prometheus_client.CollectorRegistry()
    health = observability.Health(registry)
    health.expect("analyser")
    buffer = state.SnapshotBuffer(60, lambda entry, why: None)
    for seq in range(1, 61):  # a minute of rounds waiting: many writes in a row
        snap = idle_snapshot(seq, seq)
        snap.statement_texts.add(queryid=seq, text="SELECT " + "x" * 20_000)
        buffer.add(state.Entry(snap, ()))
    reasons: list[str] = []

    def refused() -> bool:
        detail = health.report()["dependencies"]["analyser"]
        if not detail["ok"] and "failed:" in detail["detail"]:
            reasons.append(detail["detail"])
        return len(reasons) >= 3

    async with running_analyser(_config(nats_server.url, token_file)) as analyser:  # type: ignore[arg-type]
        client = stream.StreamClient(f"127.0.0.1:{analyser.grpc_port}", buffer,
                                     state.TextStore(), state.CatalogStore(),
                                     metrics.Metrics(registry), health, token_file=wrong)
        client._backoff = db.Backoff(base=0.05, cap=0.1)  # retry at once: more tries
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        try:
            await eventually(refused, timeout=60, interval=0.01)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
    assert all(("UNAUTHENTICATED" in reason and "its own collector" in reason)
               or stream.ENDED_WHILE_WRITING in reason for reason in reasons), reasons
    assert TOKEN not in " ".join(reasons)
    assert len(buffer) == 60, "a refused stream acknowledges nothing: the backlog is kept"
