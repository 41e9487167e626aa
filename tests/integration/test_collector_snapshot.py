"""What a real collector reads from a real PostgreSQL and streams to a real gRPC server.

One database with a small schema (primary key, unique and foreign-key constraints, a partial
index), statements run a known number of times and a session left idle in a transaction; the
collector runs with a 1 s interval against it and the test inspects what the server received.
"""

from __future__ import annotations

import collections
import datetime
from typing import Any

import psycopg
import pytest

from startupmonkey.localserv import postgres
from startupmonkey.v1 import ingest_pb2
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.integration.test_collector_ingest_server import (
    collector_config,
    ingest_server,
    metric,
    running_collector,
)
from tests.support import workloads
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    status text,
    amount numeric(10, 2)
) WITH (autovacuum_vacuum_scale_factor = 0.05, fillfactor = 90);
CREATE INDEX orders_customer_open ON orders (customer_id, status) WHERE status <> 'done';
INSERT INTO customers SELECT g, 'c' || g || '@example.com' FROM generate_series(1, 100) g;
INSERT INTO orders SELECT g, 1 + g % 100, 'open', g FROM generate_series(1, 1000) g;
"""
LOOKUP = "SELECT count(*) FROM orders WHERE amount = %s"
CALLS = 7


def _setup(database: postgres.PostgresDatabase) -> int:
    """Schema, data and the counted statement; returns its queryid."""
    with database.connect() as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
        for n in range(CALLS):
            conn.execute(LOOKUP, (n,))
        row = conn.execute(
            # pg_stat_statements is cluster-wide: other tests' databases ran this statement
            # too (with their own orders table, so another queryid); take this database's.
            "SELECT queryid FROM public.pg_stat_statements WHERE dbid = (SELECT oid FROM "
            "pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) "
            "AND query LIKE 'SELECT count(*) FROM orders WHERE amount = $1%'").fetchone()
    assert row is not None
    return int(row[0])


def _by_name(items: Any) -> dict[str, Any]:
    return {item.name: item for item in items}


def _time(stamp: Any) -> datetime.datetime:
    value: datetime.datetime = stamp.ToDatetime(tzinfo=datetime.UTC)
    return value


async def test_snapshot_carries_tables_indexes_statements_sessions_and_catalog(
        pg_db: postgres.PostgresDatabase) -> None:
    queryid = _setup(pg_db)
    with workloads.idle_in_transaction(pg_db.conninfo) as idle:
        async with ingest_server() as server:
            config = collector_config(pg_db, server.address)
            async with running_collector(config) as (collector, obs):
                await eventually(lambda: len(server.snapshots()) >= 3, timeout=30)
                # The server has the third snapshot before the collector has read its ack.
                await eventually(lambda: metric(obs, "startupmonkey_collector_acks_total",
                                                status="accepted") >= 3, timeout=30)
                snap = server.latest()
                first = server.snapshots()[0]
        idle_row = _activity(pg_db, idle.pid)

    # Envelope and identity: the server's clock, this database.
    assert snap.monitor.namespace == "tests" and snap.monitor.name == "shop"
    assert snap.collector_id == collector.collector_id
    assert snap.database.dbname == pg_db.dbname and snap.database.server_version_num >= 130000
    assert snap.database.system_identifier != 0
    assert not snap.database.in_recovery
    assert snap.collector.can_read_all_stats
    states = {s.section: s.state for s in snap.collector.sections}
    for section in (pb.SECTION_DATABASE, pb.SECTION_SETTINGS, pb.SECTION_TABLES,
                    pb.SECTION_INDEXES, pb.SECTION_STATEMENTS, pb.SECTION_SESSIONS,
                    pb.SECTION_LOCK_WAITS, pb.SECTION_REPLICATION_SLOTS,
                    pb.SECTION_PREPARED_XACTS, pb.SECTION_VACUUM_PROGRESS):
        assert states[section] == pb.SECTION_STATE_OK, (section, snap.collector.sections)
    assert snap.database_stats.xact_commit > 0
    assert snap.database_stats.datfrozenxid_age > 0 and snap.database_stats.next_xid > 0
    assert _by_name(snap.settings)["max_connections"].setting == "100"

    # Tables: counters as pg_stat_user_tables has them, storage facts, reloptions.
    orders = _by_name(snap.tables)["orders"]
    assert orders.schema == "public" and orders.relkind == "r"
    assert orders.n_tup_ins == 1000 and orders.n_live_tup == 1000
    assert orders.seq_scan >= CALLS
    assert orders.table_bytes > 0 and orders.indexes_bytes > 0
    assert orders.total_bytes == orders.table_bytes + orders.indexes_bytes
    assert orders.HasField("relfrozenxid_age")
    assert orders.reloptions["autovacuum_vacuum_scale_factor"] == "0.05"
    assert orders.reloptions["fillfactor"] == "90"

    # Indexes: stats with flags; definitions (key columns, predicate) in the catalog.
    index_stats = _by_name(snap.indexes)
    assert index_stats["orders_pkey"].primary and index_stats["orders_pkey"].unique
    assert index_stats["orders_pkey"].constraint_name == "orders_pkey"
    partial_stats = index_stats["orders_customer_open"]
    assert partial_stats.valid and not partial_stats.unique and partial_stats.size_bytes > 0
    assert not partial_stats.HasField("constraint_oid")

    # Statements: calls of the counted statement; its text at most once on this stream. The
    # stream's first read carries every entry; the later ones only those that changed (it
    # did not run again: left out, counted in unchanged_omitted).
    assert first.statements_info.unchanged_omitted == 0
    statement = next(s for s in first.statements if s.queryid == queryid)
    assert (snap.statements_info.unchanged_omitted > 0
            or statement in snap.statements), snap.statements_info
    assert statement.calls == CALLS and statement.rows == CALLS
    assert statement.total_exec_time_ms > 0 and statement.dbid == snap.database.datid
    assert snap.statements_info.available and snap.statements_info.extension_version
    texts: collections.Counter[int] = collections.Counter()
    for received in server.received:
        texts.update(t.queryid for t in received.snapshot.statement_texts)
    assert texts[queryid] == 1
    assert max(texts.values()) == 1
    text = next(t for r in server.received for t in r.snapshot.statement_texts
                if t.queryid == queryid)
    assert text.text.startswith("SELECT count(*) FROM orders WHERE amount = $1")

    # Sessions: the idle-in-transaction backend, its state and times from the server clock.
    session = next(s for s in snap.sessions if s.pid == idle.pid)
    assert session.state == "idle in transaction"
    assert session.application_name == idle.application_name
    assert session.backend_type == "client backend" and session.datname == pg_db.dbname
    assert _time(session.state_change) == idle_row["state_change"]
    assert _time(session.xact_start) == idle_row["xact_start"]
    assert _time(session.backend_start) == idle_row["backend_start"]
    assert _time(session.query_start) <= _time(session.state_change) <= _time(snap.collected_at)
    assert session.query == "SELECT 1" and not session.query_truncated
    assert session.HasField("backend_xmin") is False or session.backend_xmin_age >= 0
    assert not session.blocking_pids
    assert any(s.application_name == "startupmonkey-collector" for s in snap.sessions)

    # Catalog: sent with the first snapshot of the stream, not again while unchanged.
    assert first.HasField("catalog") and first.catalog.hash == first.catalog_hash
    assert [r.snapshot.sequence for r in server.with_catalog()] == [first.sequence]
    catalog = first.catalog
    relations = {r.relid: r.name for r in catalog.relations}
    columns = {(relations[c.relid], c.name): c for c in catalog.columns}
    assert columns[("orders", "amount")].type_name == "numeric(10,2)"
    assert columns[("orders", "customer_id")].not_null
    assert not columns[("orders", "status")].not_null
    partial = _by_name(catalog.indexes)["orders_customer_open"]
    assert list(partial.key_columns) == ["customer_id", "status"]
    assert partial.has_predicate and "done" in partial.predicate and partial.method == "btree"
    assert list(partial.opclasses) == ["int4_ops", "text_ops"] and partial.valid
    constraints = _by_name(catalog.constraints)
    assert constraints["orders_pkey"].type == pb.CONSTRAINT_TYPE_PRIMARY_KEY
    assert list(constraints["customers_email_key"].columns) == ["email"]
    fk = constraints["orders_customer_id_fkey"]
    assert fk.type == pb.CONSTRAINT_TYPE_FOREIGN_KEY and list(fk.columns) == ["customer_id"]
    assert relations[fk.ref_relid] == "customers" and list(fk.ref_columns) == ["id"]
    catalog_status = next(s for s in first.collector.sections
                          if s.section == pb.SECTION_CATALOG)
    assert catalog_status.state == pb.SECTION_STATE_OK and catalog_status.items > 0

    # Metrics of the rounds.
    assert metric(obs, "startupmonkey_collector_snapshots_sent_total") >= 3
    assert metric(obs, "startupmonkey_collector_query_duration_seconds_count",
                  query="tables") >= 3
    assert metric(obs, "startupmonkey_collector_cycle_duration_seconds_count") >= 3
    assert metric(obs, "startupmonkey_collector_acks_total", status="accepted") >= 3


def _activity(database: postgres.PostgresDatabase, pid: int) -> dict[str, Any]:
    with psycopg.connect(database.conninfo, autocommit=True) as conn:
        cursor = conn.execute(
            "SELECT backend_start, xact_start, state_change FROM pg_catalog.pg_stat_activity "
            "WHERE pid = %s", (pid,))
        row = cursor.fetchone()
    assert row is not None
    return dict(zip(("backend_start", "xact_start", "state_change"), row, strict=True))


async def test_catalog_and_texts_are_sent_again_when_the_analyser_asks(
        pg_db: postgres.PostgresDatabase) -> None:
    queryid = _setup(pg_db)
    async with (ingest_server() as server,
                running_collector(collector_config(pg_db, server.address))):
        await eventually(lambda: len(server.snapshots()) >= 2, timeout=30)
        server.want_catalog = True
        server.want_texts = [queryid]
        asked_after = server.received[-1].snapshot.sequence

        def later() -> list[pb.Snapshot]:
            return [r.snapshot for r in server.received if r.snapshot.sequence > asked_after]

        # Snapshots written after the ack carry both again: the catalog is attached when a
        # snapshot is sent, a text when the statements are next read, so they may arrive in
        # neighbouring snapshots (a snapshot already read when the ack came has no text yet).
        await eventually(lambda: any(s.HasField("catalog") for s in later()), timeout=30,
                         what="the catalog, sent again")
        await eventually(lambda: any(t.queryid == queryid for s in later()
                                     for t in s.statement_texts), timeout=30,
                         what="the statement text, sent again")
        # A schema change is noticed and the new catalog goes out.
        with pg_db.connect() as conn:
            conn.execute("ALTER TABLE orders ADD COLUMN shipped_at timestamptz")
        changed = await eventually(lambda: [r.snapshot for r in server.with_catalog() if any(
            c.name == "shipped_at" for c in r.snapshot.catalog.columns)], timeout=30)
        assert changed[0].catalog_hash != server.snapshots()[0].catalog_hash


async def test_retry_and_duplicate_acks_make_the_collector_resend_what_was_not_applied(
        pg_db: postgres.PostgresDatabase) -> None:
    _setup(pg_db)
    async with ingest_server() as server:
        server.status = ingest_pb2.ACK_STATUS_RETRY
        async with running_collector(collector_config(pg_db, server.address)) as (collector, _):
            await eventually(lambda: len(server.received) >= 3, timeout=30)
            # Nothing applied: the catalog must go out again with the next snapshot.
            assert len(collector.buffer) >= 1
            server.status = ingest_pb2.ACK_STATUS_ACCEPTED
            await eventually(lambda: server.received[-1].snapshot.HasField("catalog")
                             and server.received[-1].snapshot.collector.sections, timeout=30)
            await eventually(lambda: len(collector.buffer) <= 1, timeout=30)


async def test_lock_chain_is_visible_and_a_locked_table_does_not_stall_the_round(
        pg_db: postgres.PostgresDatabase) -> None:
    _setup(pg_db)
    async with ingest_server() as server:
        config = collector_config(pg_db, server.address, query_timeout="2s")
        with (workloads.hold_lock(pg_db.conninfo, "orders") as holder,
              workloads.background_query(pg_db.conninfo, "SELECT count(*) FROM orders") as waiter):
            async with running_collector(config):
                def blocked() -> pb.Snapshot:
                    snap = server.latest()
                    session = next(s for s in snap.sessions if s.pid == waiter.pid)
                    assert session.wait_event_type == "Lock", session
                    return snap
                snap = await eventually(blocked, timeout=30)
    waiting = next(s for s in snap.sessions if s.pid == waiter.pid)
    assert list(waiting.blocking_pids) == [holder.pid]
    assert not next(s for s in snap.sessions if s.pid == holder.pid).blocking_pids
    lock = next(w for w in snap.lock_waits if w.pid == waiter.pid)
    assert lock.locktype == "relation" and lock.mode == "AccessShareLock"
    assert lock.relation_name == "public.orders"
    # pg_locks.waitstart is PostgreSQL 14+ (tests/pg_matrix runs this on 13 too).
    assert lock.HasField("wait_start") is (snap.database.server_version_num >= 140000)
    # Sizes of the locked table are not measured (that would queue behind the lock until
    # the statement timeout): the sections stay OK and the table is still reported.
    states = {s.section: s.state for s in snap.collector.sections}
    assert states[pb.SECTION_TABLES] == pb.SECTION_STATE_OK
    assert states[pb.SECTION_INDEXES] == pb.SECTION_STATE_OK
    assert any(t.name == "orders" for t in snap.tables)
    assert any(i.name == "orders_pkey" for i in snap.indexes)
