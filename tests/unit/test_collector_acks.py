"""The bounded buffer, and what the stream attaches and forgets as acks come back.

No network here: :class:`StreamClient` is driven through ``complete`` (what a snapshot looks
like when written on a stream) and ``handle_ack`` (what an Ack does to the buffer and to the
stream's memory of texts and catalog). The real stream is tested in
``tests/integration/test_collector_*``.
"""

from __future__ import annotations

import datetime
from typing import Any

import prometheus_client
import pytest

from startupmonkey import observability
from startupmonkey.collector import metrics, state, stream
from startupmonkey.v1 import ingest_pb2
from startupmonkey.v1 import snapshot_pb2 as pb

ACCEPTED = ingest_pb2.ACK_STATUS_ACCEPTED
DUPLICATE = ingest_pb2.ACK_STATUS_DUPLICATE
RETRY = ingest_pb2.ACK_STATUS_RETRY
REJECTED = ingest_pb2.ACK_STATUS_REJECTED


def _entry(sequence: int, catalog_hash: str = "h1", top: tuple[int, ...] = (1, 2)) -> state.Entry:
    return state.Entry(pb.Snapshot(sequence=sequence, catalog_hash=catalog_hash), top)


class Harness:
    def __init__(self, capacity: int = 5) -> None:
        registry = prometheus_client.CollectorRegistry()
        self.metrics = metrics.Metrics(registry)
        self.registry = registry
        self.dropped: list[tuple[int, str]] = []
        self.buffer = state.SnapshotBuffer(capacity, lambda e, why: self.dropped.append(
            (e.sequence, why)))
        self.texts = state.TextStore()
        self.catalogs = state.CatalogStore()
        health = observability.Health(registry)
        self.client = stream.StreamClient("127.0.0.1:1", self.buffer, self.texts, self.catalogs,
                                          self.metrics, health)
        self.session = stream._Session()
        catalog = pb.Catalog(hash="h1")
        catalog.relations.add(relid=1, name="t")
        self.catalogs.put(state.StoredCatalog(catalog, datetime.datetime.now(datetime.UTC), 0.1))
        for queryid in (1, 2, 3):
            self.texts.put(pb.StatementText(queryid=queryid, text=f"SELECT {queryid}"))

    def send(self, sequence: int, **kwargs: Any) -> pb.Snapshot:
        entry = self.buffer.get(sequence) or _entry(sequence, **kwargs)
        if self.buffer.get(sequence) is None:
            self.buffer.add(entry)
        snap, flight = self.client.complete(entry, self.session)
        self.session.in_flight[sequence] = flight
        return snap

    def ack(self, sequence: int, status: Any, **kwargs: Any) -> None:
        self.client.handle_ack(ingest_pb2.Ack(sequence=sequence, status=status, **kwargs),
                               self.session)

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def _texts(snap: pb.Snapshot) -> list[int]:
    return [t.queryid for t in snap.statement_texts]


def test_buffer_drops_the_oldest_beyond_capacity_and_counts_it() -> None:
    h = Harness(capacity=3)
    for sequence in range(1, 6):
        h.buffer.add(_entry(sequence))
    assert h.buffer.sequences() == [3, 4, 5]
    assert h.buffer.dropped == 2 and h.dropped == [(1, "buffer_full"), (2, "buffer_full")]
    h.buffer.resize(1)
    assert h.buffer.sequences() == [5] and h.buffer.dropped == 4


def test_buffer_is_bounded_in_bytes_too_and_keeps_the_newest() -> None:
    dropped: list[tuple[int, str]] = []
    buffer = state.SnapshotBuffer(30, lambda e, why: dropped.append((e.sequence, why)),
                                  max_bytes=2_500)

    def big(sequence: int, size: int) -> state.Entry:
        return state.Entry(pb.Snapshot(sequence=sequence, collector_id="x" * size))

    for sequence in (1, 2, 3):
        buffer.add(big(sequence, 1_000))
    assert buffer.sequences() == [2, 3] and dropped == [(1, "buffer_full")]
    assert buffer.bytes == sum(e.size for e in buffer) <= 2_500
    # An acked snapshot gives its bytes back: nothing more is dropped for the next one.
    buffer.remove(2)
    buffer.add(big(4, 1_000))
    assert buffer.sequences() == [3, 4] and len(dropped) == 1
    # One snapshot larger than the bound alone is still kept (the newest always is).
    buffer.add(big(5, 5_000))
    assert buffer.sequences() == [5] and buffer.bytes == buffer.get(5).size  # type: ignore[union-attr]
    assert [s for s, _ in dropped] == [1, 3, 4]
    # The same sequence buffered again replaces it, in its place, without counting it twice.
    buffer.add(big(5, 5_000))
    assert buffer.sequences() == [5] and buffer.bytes == buffer.get(5).size  # type: ignore[union-attr]
    buffer.max_bytes = 10**9
    buffer.add(big(6, 10))
    buffer.add(big(5, 10))
    assert buffer.sequences() == [5, 6] and buffer.newest_sequence() == 6
    assert buffer.bytes == sum(e.size for e in buffer)


def test_catalog_and_texts_go_once_per_stream() -> None:
    h = Harness()
    first = h.send(1)
    assert first.catalog.hash == "h1" and _texts(first) == [1, 2]
    sections = {s.section: s for s in first.collector.sections}
    assert sections[pb.SECTION_CATALOG].items == 1
    assert sections[pb.SECTION_STATEMENT_TEXTS].items == 2
    h.ack(1, ACCEPTED)
    second = h.send(2, top=(2, 3))
    assert not second.HasField("catalog") and _texts(second) == [3]
    assert h.buffer.sequences() == [2]
    # A new stream starts afresh.
    h.session = stream._Session()
    again = h.send(2)
    assert again.HasField("catalog") and _texts(again) == [2, 3]


def test_a_changed_catalog_hash_sends_the_new_catalog() -> None:
    h = Harness()
    h.send(1)
    h.ack(1, ACCEPTED)
    h.catalogs.put(state.StoredCatalog(pb.Catalog(hash="h2"),
                                       datetime.datetime.now(datetime.UTC), 0.1))
    snap = h.send(2, catalog_hash="h2")
    assert snap.HasField("catalog") and snap.catalog.hash == "h2"


@pytest.mark.parametrize("status", [DUPLICATE, RETRY, REJECTED])
def test_what_an_unapplied_snapshot_carried_goes_again(status: int) -> None:
    h = Harness()
    h.send(1)
    h.send(2)  # newer one queued: a RETRY of 1 is superseded
    h.ack(1, status)
    assert h.buffer.get(1) is None
    again = h.send(3)
    assert again.HasField("catalog") and _texts(again) == [1, 2]
    if status == RETRY:
        assert h.sample("startupmonkey_collector_snapshots_dropped_total",
                        reason="superseded") == 1
    if status == REJECTED:
        assert h.sample("startupmonkey_collector_snapshots_dropped_total",
                        reason="rejected") == 1


def test_retry_of_the_newest_snapshot_resends_it_later() -> None:
    h = Harness()
    h.send(1)
    h.ack(1, RETRY, message="busy")
    entry = h.buffer.get(1)
    assert entry is not None and entry.not_before > 0
    assert 1 not in h.session.in_flight


def test_acks_ask_for_texts_and_the_catalog() -> None:
    h = Harness()
    h.send(1)
    h.ack(1, ACCEPTED, want_statement_texts=[1, 3, 99], want_catalog=True)
    assert h.texts.wanted == {1, 3, 99}
    snap = h.send(2, top=())
    assert snap.HasField("catalog")
    assert sorted(_texts(snap)) == [1, 3]
    assert h.texts.wanted == {99}  # no text held yet: the next round fetches it
    assert h.texts.missing([]) == [99]
    h.texts.give_up([99])
    assert h.texts.missing([]) == []


def test_dropped_count_travels_with_the_snapshot() -> None:
    h = Harness(capacity=1)
    h.buffer.add(_entry(1))
    h.buffer.add(_entry(2))
    assert h.send(2).collector.dropped_snapshots == 1


def test_text_store_evicts_the_least_recently_used() -> None:
    store = state.TextStore(capacity=2)
    for queryid in (1, 2):
        store.put(pb.StatementText(queryid=queryid))
    assert store.get(1) is not None
    store.put(pb.StatementText(queryid=3))
    assert 2 not in store and 1 in store and 3 in store
