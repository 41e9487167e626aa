"""The collector's snapshot on every major of the matrix (issue 22): the integration tests of
``tests/integration/test_collector_snapshot.py`` as they are, on each server (fixtures:
``conftest.py``), and what each version has or lacks, section by section and column by
column (docs/postgres-support.md)."""

from __future__ import annotations

import pytest

from startupmonkey.localserv import postgres
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.integration.test_collector_ingest_server import (
    collector_config,
    ingest_server,
    running_collector,
)
from tests.integration.test_collector_snapshot import (
    test_lock_chain_is_visible_and_a_locked_table_does_not_stall_the_round,
    test_snapshot_carries_tables_indexes_statements_sessions_and_catalog,
)
from tests.support import workloads
from tests.support.eventually import eventually

__all__ = [
    "test_lock_chain_is_visible_and_a_locked_table_does_not_stall_the_round",
    "test_snapshot_carries_tables_indexes_statements_sessions_and_catalog",
]

pytestmark = pytest.mark.pg_matrix


async def _collected(database: postgres.PostgresDatabase, major: int,
                     rounds: int) -> pb.Snapshot:
    """The latest snapshot once a real collector sent ``rounds`` of them, from ``major``."""
    async with ingest_server() as server:
        config = collector_config(database, server.address)
        async with running_collector(config):
            await eventually(lambda: len(server.snapshots()) >= rounds, timeout=30)
            snap = server.latest()
    assert snap.database.server_version_num // 10000 == major
    return snap


def _table(snapshot: pb.Snapshot, name: str) -> pb.TableStats:
    return next(t for t in snapshot.tables if t.name == name)


async def test_every_section_is_read_or_absent_with_its_reason_and_the_version_columns(
        pg_db: postgres.PostgresDatabase, pg_major: int) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 100) g")
        conn.execute("SELECT count(*) FROM t WHERE v = 3")
        conn.execute("SELECT v FROM t WHERE id = 3")
    with workloads.idle_in_transaction(pg_db.conninfo) as idle:
        snap = await _collected(pg_db, pg_major, rounds=2)
    statuses = {s.section: s for s in snap.collector.sections}
    for section in pb.Section.values():
        if section in (pb.SECTION_UNSPECIFIED, pb.SECTION_STATEMENT_TEXTS, pb.SECTION_CATALOG):
            continue  # texts and catalog: only in rounds that need them (first snapshot)
        status = statuses.get(section)
        assert status is not None, (pb.Section.Name(section), snap.collector.sections)
        assert status.state == pb.SECTION_STATE_OK, (pb.Section.Name(section), status)

    # Columns a major has or lacks, read as such (docs/postgres-support.md).
    stats = snap.database_stats
    t = _table(snap, "t")
    assert t.seq_scan >= 1 and t.idx_scan >= 1 and t.n_tup_ins == 100
    assert t.HasField("last_seq_scan") is (pg_major >= 16)
    assert t.HasField("n_tup_newpage_upd") is (pg_major >= 16)
    assert stats.HasField("session_time_ms") is (pg_major >= 14)
    session = next(s for s in snap.sessions if s.pid == idle.pid)
    assert session.state == "idle in transaction"
    assert session.HasField("query_id") is (pg_major >= 14)
    info = snap.statements_info
    assert info.available
    expected = {13: "1.8", 14: "1.9", 16: "1.10", 17: "1.11", 18: "1.12"}[pg_major]
    assert info.extension_version == expected
    statement = max(snap.statements, key=lambda s: s.calls)
    assert statement.calls >= 1
    assert statement.HasField("toplevel") is (pg_major >= 14)
    assert statement.HasField("stats_since") is (pg_major >= 17)
    assert info.HasField("dealloc") is (pg_major >= 14)


async def test_without_pg_stat_statements_the_statements_section_is_absent_with_the_reason(
        pg_db: postgres.PostgresDatabase, pg_major: int) -> None:
    with pg_db.connect() as conn:
        conn.execute("DROP EXTENSION pg_stat_statements")
    snap = await _collected(pg_db, pg_major, rounds=1)
    status = next(s for s in snap.collector.sections if s.section == pb.SECTION_STATEMENTS)
    assert status.state == pb.SECTION_STATE_UNAVAILABLE
    assert f"pg_stat_statements is not installed in database {pg_db.dbname}" in status.message
    assert not snap.statements_info.available
    assert snap.statements_info.unavailable_reason == status.message
    assert list(snap.statements) == []
    others = [s for s in snap.collector.sections if s.section != pb.SECTION_STATEMENTS]
    assert others and all(s.state == pb.SECTION_STATE_OK for s in others), others
