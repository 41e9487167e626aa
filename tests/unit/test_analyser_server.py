"""Chunk reassembly and the per-stream statement-text store, without a network."""

from __future__ import annotations

from startupmonkey import settings, snapshots
from startupmonkey.analyser import server
from startupmonkey.v1 import ingest_pb2
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build

Status = ingest_pb2.AckStatus
MONITOR = settings.MonitorRef(namespace=build.NAMESPACE, name=build.MONITOR)


def chunks(seq: int, tables: int = 60) -> list[pb.Snapshot]:
    snap = build.snapshot(seq, seq=seq, tables=[build.table(n, f"t{n}") for n in range(tables)])
    return snapshots.split(snap, target_bytes=2048)


def statuses(out: list[server.Answer | server.Complete]) -> list[object]:
    return [(o.ack.sequence, o.ack.status) if isinstance(o, server.Answer)
            else ("complete", o.snapshot.sequence) for o in out]


def test_chunks_are_merged_in_order_and_incomplete_ones_retried() -> None:
    assembler = server.Assembler(MONITOR, lambda _cid, _seq: False)
    first, second = chunks(1), chunks(2)
    assert len(first) > 2
    out = [o for c in first for o in assembler.push(c)]
    assert statuses(out) == [("complete", 1)]
    third = chunks(3)
    out = assembler.push(second[0]) + assembler.push(third[0])
    assert statuses(out) == [(2, Status.ACK_STATUS_RETRY)]
    # Stray chunks of a sequence already answered are ignored; a re-send from 0 is taken.
    assert assembler.push(second[2]) == []
    assert statuses([o for c in third[1:] for o in assembler.push(c)]) == [("complete", 3)]
    assert statuses([o for c in second for o in assembler.push(c)]) == [("complete", 2)]


def test_duplicates_are_answered_once_at_their_last_chunk() -> None:
    assembler = server.Assembler(MONITOR, lambda _cid, seq: seq <= 5)
    out = [o for c in chunks(4) for o in assembler.push(c)]
    assert statuses(out) == [(4, Status.ACK_STATUS_DUPLICATE)]


def test_never_applicable_chunks_are_rejected_with_a_reason() -> None:
    assembler = server.Assembler(MONITOR, lambda _cid, _seq: False)
    bad = build.snapshot(1, seq=1)
    bad.chunk_count = 0
    [answer] = assembler.push(bad)
    assert isinstance(answer, server.Answer) and answer.reason == "chunk_count"
    other = build.snapshot(2, seq=2)
    other.monitor.namespace = "elsewhere"
    [answer] = assembler.push(other)
    assert isinstance(answer, server.Answer) and answer.reason == "wrong_monitor"


def test_text_store_is_bounded_oldest_out() -> None:
    store = server.TextStore(max_items=3, max_bytes=25)
    store.add(pb.StatementText(queryid=n, text="x" * 10) for n in range(2))
    store.add([pb.StatementText(queryid=9, text="é" * 5)])  # 10 bytes in UTF-8
    assert list(store.texts) == [1, 9] and store.bytes == 20
    store.add([pb.StatementText(queryid=1, text="y")])  # a re-sent text replaces the old
    assert list(store.texts) == [9, 1] and store.bytes == 11
