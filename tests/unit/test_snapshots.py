"""split/merge of Snapshot chunks: round trips, size bounds, and the limits.py rules."""

from __future__ import annotations

import pytest

from startupmonkey import snapshots
from startupmonkey.v1 import limits
from startupmonkey.v1 import snapshot_pb2 as pb


def _envelope(sequence: int = 7) -> pb.Snapshot:
    snap = pb.Snapshot(collector_id="collector-abc", sequence=sequence, chunk_index=0,
                       chunk_count=1, catalog_hash="h1")
    snap.monitor.namespace, snap.monitor.name = "prod", "shop"
    snap.collected_at.FromSeconds(1_700_000_000)
    snap.database.dbname, snap.database.datid = "shop", 16384
    snap.database.server_version_num = 150004
    snap.collector.version = "0.1.0"
    snap.collector.sections.add(section=pb.SECTION_TABLES, state=pb.SECTION_STATE_OK)
    snap.database_stats.xact_commit = 1234
    snap.settings.add(name="max_connections", setting="100", vartype="integer")
    snap.statements_info.available = True
    return snap


def _large(tables: int = 5000) -> pb.Snapshot:
    """A database with ``tables`` tables, two indexes and six columns each, and a catalog."""
    snap = _envelope()
    snap.catalog.hash = "h1"
    for n in range(tables):
        relid = 20_000 + n
        name = f"table_with_a_reasonably_long_name_{n:05d}"
        table = snap.tables.add(relid=relid, schema="public", name=name, relkind="r",
                                owner="app", seq_scan=n, seq_tup_read=n * 100, n_live_tup=n)
        table.reloptions["autovacuum_vacuum_scale_factor"] = "0.05"
        table.last_autovacuum.FromSeconds(1_700_000_000 + n)
        snap.catalog.relations.add(relid=relid, schema="public", name=name, relkind="r",
                                   replica_identity="d")
        for col in range(1, 7):
            snap.catalog.columns.add(relid=relid, attnum=col, name=f"column_{col}",
                                     type_name="character varying(40)", type_oid=1043)
        for idx in range(2):
            indexrelid = 100_000 + 2 * n + idx
            index_name = f"{name}_idx_{idx}"
            snap.indexes.add(indexrelid=indexrelid, relid=relid, schema="public", table=name,
                             name=index_name, idx_scan=n, valid=True, primary=idx == 0)
            snap.catalog.indexes.add(
                indexrelid=indexrelid, relid=relid, schema="public", name=index_name,
                method="btree", key_attnums=[1 + idx], key_columns=[f"column_{1 + idx}"],
                opclasses=["int4_ops"], key_options=[0], valid=True, ready=True, live=True,
                definition=f"CREATE INDEX {index_name} ON public.{name} USING btree (c)")
        snap.catalog.constraints.add(oid=500_000 + n, name=f"{name}_pkey",
                                     type=pb.CONSTRAINT_TYPE_PRIMARY_KEY, relid=relid,
                                     attnums=[1], columns=["column_1"], validated=True)
    for n in range(200):
        snap.statements.add(queryid=n + 1, userid=10, dbid=16384, calls=n)
        snap.statement_texts.add(queryid=n + 1, text=f"SELECT * FROM t{n} WHERE a = $1")
        snap.sessions.add(pid=1000 + n, state="idle", query="SELECT 1")
    return snap


def test_small_snapshot_is_one_chunk() -> None:
    snap = _envelope()
    snap.tables.add(relid=1, name="t")
    chunks = snapshots.split(snap)
    assert len(chunks) == 1
    assert chunks[0].chunk_index == 0 and chunks[0].chunk_count == 1
    assert chunks[0] == snap
    assert snapshots.merge(chunks) == snap


def test_split_does_not_modify_its_input() -> None:
    snap = _large(300)
    before = snap.SerializeToString(deterministic=True)
    snapshots.split(snap, target_bytes=20 * limits.KIB)
    assert snap.SerializeToString(deterministic=True) == before


def test_five_thousand_tables_round_trip_under_the_message_limit() -> None:
    snap = _large(5000)
    assert snap.ByteSize() > 2 * limits.CHUNK_TARGET_BYTES  # really needs chunks
    chunks = snapshots.split(snap)
    assert 2 < len(chunks) <= limits.MAX_CHUNKS_PER_SNAPSHOT
    for index, chunk in enumerate(chunks):
        assert chunk.ByteSize() <= limits.CHUNK_TARGET_BYTES
        assert chunk.ByteSize() < limits.MAX_MESSAGE_BYTES
        assert (chunk.chunk_index, chunk.chunk_count) == (index, len(chunks))
        assert chunk.sequence == snap.sequence and chunk.collector_id == snap.collector_id
        assert chunk.catalog_hash == "h1" and chunk.database == snap.database
        if index:
            assert not chunk.HasField("collector") and not chunk.settings
            assert not chunk.HasField("database_stats")
            assert not chunk.HasField("statements_info")
        if chunk.catalog.relations or chunk.catalog.columns or chunk.catalog.indexes:
            assert chunk.catalog.hash == "h1"
    assert sum(snapshots.total_items(c) for c in chunks) == snapshots.total_items(snap)
    assert snapshots.merge(chunks) == snap


def test_merge_accepts_chunks_out_of_order() -> None:
    snap = _large(400)
    chunks = snapshots.split(snap, target_bytes=16 * limits.KIB)
    assert len(chunks) > 3
    assert snapshots.merge(list(reversed(chunks))) == snap


def test_empty_catalog_still_counts_as_sent() -> None:
    snap = _envelope()
    snap.catalog.hash = "h1"
    merged = snapshots.merge(snapshots.split(snap))
    assert merged.HasField("catalog") and merged.catalog.hash == "h1"


def test_item_bigger_than_the_target_travels_alone() -> None:
    snap = _envelope()
    for n in range(3):
        snap.statement_texts.add(queryid=n, text="x" * 10_000)
    chunks = snapshots.split(snap, target_bytes=8 * limits.KIB)
    assert len(chunks) == 3
    assert [len(c.statement_texts) for c in chunks] == [1, 1, 1]
    assert snapshots.merge(chunks) == snap


def test_item_over_max_item_bytes_is_dropped_and_section_truncated() -> None:
    snap = _envelope()
    snap.collector.sections.add(section=pb.SECTION_STATEMENT_TEXTS, state=pb.SECTION_STATE_OK,
                                items=2)
    snap.statement_texts.add(queryid=1, text="SELECT 1")
    snap.statement_texts.add(queryid=2, text="x" * (limits.MAX_ITEM_BYTES + 1))
    merged = snapshots.merge(snapshots.split(snap))
    assert [t.queryid for t in merged.statement_texts] == [1]
    status = {s.section: s for s in merged.collector.sections}
    texts = status[pb.SECTION_STATEMENT_TEXTS]
    assert texts.state == pb.SECTION_STATE_TRUNCATED
    assert texts.items == 1
    assert "MAX_ITEM_BYTES" in texts.message
    assert status[pb.SECTION_TABLES].state == pb.SECTION_STATE_OK


def test_dropped_item_of_an_unlisted_section_adds_a_truncated_status() -> None:
    snap = _envelope()
    snap.sessions.add(pid=1, query="x" * (limits.MAX_ITEM_BYTES + 1))
    merged = snapshots.merge(snapshots.split(snap))
    assert not merged.sessions
    status = {s.section: s for s in merged.collector.sections}
    assert status[pb.SECTION_SESSIONS].state == pb.SECTION_STATE_TRUNCATED


def test_more_than_max_chunks_truncates_the_rest() -> None:
    snap = _envelope()
    for n in range(limits.MAX_CHUNKS_PER_SNAPSHOT + 10):
        snap.statement_texts.add(queryid=n, text="x" * 5000)
    chunks = snapshots.split(snap, target_bytes=4 * limits.KIB)
    assert len(chunks) == limits.MAX_CHUNKS_PER_SNAPSHOT
    merged = snapshots.merge(chunks)
    assert len(merged.statement_texts) == limits.MAX_CHUNKS_PER_SNAPSHOT
    status = {s.section: s for s in merged.collector.sections}
    assert status[pb.SECTION_STATEMENT_TEXTS].state == pb.SECTION_STATE_TRUNCATED
    assert "MAX_CHUNKS_PER_SNAPSHOT" in status[pb.SECTION_STATEMENT_TEXTS].message


def test_merge_refuses_incomplete_or_inconsistent_chunks() -> None:
    chunks = snapshots.split(_large(300), target_bytes=16 * limits.KIB)
    with pytest.raises(snapshots.ChunkError, match="chunk"):
        snapshots.merge(chunks[:-1])
    with pytest.raises(snapshots.ChunkError, match="missing"):
        snapshots.merge([chunks[0], chunks[2], chunks[2], *chunks[3:]])
    other = pb.Snapshot()
    other.CopyFrom(chunks[1])
    other.sequence += 1
    with pytest.raises(snapshots.ChunkError, match="envelope field sequence"):
        snapshots.merge([chunks[0], other, *chunks[2:]])
    late = pb.Snapshot()
    late.CopyFrom(chunks[1])
    late.settings.add(name="x")
    with pytest.raises(snapshots.ChunkError, match="first-chunk"):
        snapshots.merge([chunks[0], late, *chunks[2:]])
    with pytest.raises(snapshots.ChunkError):
        snapshots.merge([])
    huge = pb.Snapshot(chunk_count=limits.MAX_CHUNKS_PER_SNAPSHOT + 1)
    with pytest.raises(snapshots.ChunkError, match="chunk_count"):
        snapshots.merge([huge])
