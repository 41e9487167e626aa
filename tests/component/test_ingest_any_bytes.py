"""Any bytes sent as a stream message to the real analyser ingest server (issue 24: the
ingest port is outside input) end the stream with a gRPC status or are answered with acks;
the analyser never crashes, its engine never raises on what decodes (an engine error is
answered "analyser error"), and it answers a valid snapshot afterwards. Random bytes, valid
snapshots with bytes changed or cut, and valid snapshots with random envelope values."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from startupmonkey.analyser import main as analyser_main
from startupmonkey.v1 import ingest_pb2
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.component.test_analyser_transport import idle_snapshot, make_config
from tests.support import components
from tests.support import snapshots_build as build

pytestmark = pytest.mark.component
METHOD = "/startupmonkey.v1.MetricsIngest/Stream"
#: Ways a stream may end: refused input, or an ack/OK end. UNKNOWN or INTERNAL would be a
#: handler that raised; DEADLINE_EXCEEDED (the client's deadline) one that hung.
ENDINGS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.OUT_OF_RANGE}


class Served:
    """A real analyser in its own event loop thread, reached with a blocking gRPC client."""

    def __init__(self, nats_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.analyser: analyser_main.Analyser = self.run(self._start(nats_url))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.analyser.grpc_port}")
        self.sequence = itertools.count(1_000_000)

    async def _start(self, nats_url: str) -> analyser_main.Analyser:
        analyser = analyser_main.Analyser(make_config(nats_url))
        await analyser.start(0, "127.0.0.1")
        return analyser

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def send(self, *messages: bytes) -> tuple[grpc.StatusCode, list[ingest_pb2.Ack]]:
        call = self.channel.stream_stream(METHOD)
        acks: list[ingest_pb2.Ack] = []
        try:
            for raw in call(iter(messages), timeout=20):
                acks.append(ingest_pb2.Ack.FromString(raw))
        except grpc.RpcError as exc:
            return exc.code(), acks
        return grpc.StatusCode.OK, acks

    def close(self) -> None:
        self.channel.close()
        self.run(self.analyser.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with components.nats_server() as nats:
        server = Served(nats.url)
        try:
            yield server
        finally:
            server.close()


def _still_answers(served: Served) -> None:
    code, acks = served.send(idle_snapshot(0, next(served.sequence)).SerializeToString())
    assert code is grpc.StatusCode.OK and len(acks) == 1, (code, acks)


def _check(served: Served, *messages: bytes) -> None:
    code, acks = served.send(*messages)
    assert code in ENDINGS, code
    for ack in acks:
        assert not ack.message.startswith("analyser error"), ack.message
    _still_answers(served)


VALID = idle_snapshot(0, 1).SerializeToString()
MUTATIONS = st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                     max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.binary(max_size=600), min_size=1, max_size=3))
def test_any_bytes_end_the_stream_or_are_answered(served: Served,
                                                   messages: list[bytes]) -> None:
    _check(served, *messages)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=MUTATIONS, cut=st.integers(0, len(VALID)))
def test_a_valid_snapshot_with_bytes_changed_or_cut(served: Served,
                                                    changes: list[tuple[int, int]],
                                                    cut: int) -> None:
    data = bytearray(VALID)
    for position, byte in changes:
        data[position] = byte
    _check(served, bytes(data[:cut or len(data)]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.integers(0, 2**64 - 1), chunk=st.integers(0, 2**32 - 1),
       count=st.integers(0, 2**32 - 1) | st.integers(0, 4),
       collector=st.text(max_size=30), at_s=st.floats(-1e10, 1e10, allow_nan=False),
       hash_=st.text(max_size=30), catalog=st.booleans())
def test_valid_snapshots_with_random_envelopes(served: Served, sequence: int, chunk: int,
                                               count: int, collector: str, at_s: float,
                                               hash_: str, catalog: bool) -> None:
    snap = pb.Snapshot()
    snap.CopyFrom(idle_snapshot(0, 1, tables=[build.table(1, "orders")]))
    snap.sequence, snap.chunk_index, snap.chunk_count = sequence, chunk, count
    snap.collector_id, snap.catalog_hash = collector, hash_
    with contextlib.suppress(ValueError, OverflowError):  # beyond a Timestamp: keep the valid
        snap.collected_at.CopyFrom(build.ts(at_s))
    if catalog:
        snap.catalog.hash = hash_
    _check(served, snap.SerializeToString())
