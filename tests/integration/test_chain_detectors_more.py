"""More detectors proven through the whole chain on a real PostgreSQL 15: a real collector
process -> gRPC -> analyser -> NATS (``tests/support/chain.py``), thresholds lowered only
through ``spec.thresholds`` of the rendered config, interval 1s.

Each test creates the problem with a real workload and asserts the Detection JSON on its
subject (``startupmonkey.v1.<ns>.<monitor>.detections.<detector>``) with the right target and
numbers, and runs a healthy twin that must produce nothing: either a phase of the same chain
before the problem exists, or twin objects beside the problem that must never be named.
Cluster-wide conditions (connection limits, tiny shared_buffers, restarts, XID age) use a
private cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from startupmonkey.analyser import lifecycle
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, DetectorId, RiskClass
from tests.support import components, workloads
from tests.support.chain import Chain, assert_on_subject, chain, key
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration

WRAPAROUND_LIMIT = 2**31


def user_of(conninfo: str) -> str:
    return str(pg_conninfo.conninfo_to_dict(conninfo)["user"])


def one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def run_flushed(database: postgres.PostgresDatabase, *statements: Any) -> None:
    """Run statements in one session and flush its table statistics to shared memory before
    returning (a closing session flushes them asynchronously: they could arrive after a later
    VACUUM's or ANALYZE's report and undo it)."""
    with database.connect() as conn:
        for statement in statements:
            conn.execute(statement)
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")  # the forced flush happened before this round trip


def dead_rows(database: postgres.PostgresDatabase, table: str) -> int:
    with database.connect() as conn:
        return int(one(conn, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s",
                       (table,)))


def waiting_on_lock(database: postgres.PostgresDatabase, pid: int) -> bool:
    with database.connect() as conn:
        return bool(one(conn, "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted",
                        (pid,)))


# ---- vacuum_blocked


HORIZON_LIMITS = {"vacuum_blocked": {"minHolderAge": "2s"},
                  "dead_tuples": {"minDeadTuples": 1000, "autovacuumGrace": "2s"}}


def create_queue(database: postgres.PostgresDatabase) -> None:
    """20,000 rows, analysed and vacuumed, never touched by autovacuum."""
    run_flushed(database,
                "CREATE TABLE queue (id int PRIMARY KEY, v int) WITH (autovacuum_enabled = false)",
                "INSERT INTO queue SELECT g, g FROM generate_series(1, 20000) g")
    with database.connect() as conn:
        conn.execute("VACUUM ANALYZE queue")


async def delete_quarter_and_vacuum(database: postgres.PostgresDatabase, remainder: int,
                                    dead_after: int) -> None:
    """Delete the 5,000 rows with ``id % 4 = remainder``, then VACUUM: ``dead_after`` rows
    stay dead (0 when nothing holds the horizon back)."""
    run_flushed(database, sql.SQL("DELETE FROM queue WHERE id % 4 = {}").format(remainder))
    await eventually(lambda: dead_rows(database, "queue") == 5000)
    with database.connect() as conn:
        conn.execute("VACUUM ANALYZE queue")
    assert dead_rows(database, "queue") == dead_after


async def test_vacuum_blocked_names_the_horizon_holder_and_its_twin_is_quiet(
        pg_db: postgres.PostgresDatabase, app_conninfo: str, nats_server: NatsServer,
        tmp_path: Path) -> None:
    create_queue(pg_db)
    delete_and_vacuum = functools.partial(delete_quarter_and_vacuum, pg_db)
    limits = HORIZON_LIMITS
    # Healthy twin: a session idle in a READ COMMITTED transaction holds no snapshot, so the
    # VACUUM that follows a DELETE removes every dead row: nothing to report.
    with workloads.idle_in_transaction(app_conninfo, application_name="smtest-idle-no-xmin"
                                       ) as twin:
        async with chain(pg_db, nats_server, tmp_path, **limits) as run:
            await run.snapshots(3)  # the twin has been idle for more than minHolderAge
            await delete_and_vacuum(0, dead_after=0)
            await run.snapshots(4)
            assert run.received == [], run.summaries()

            # The problem: a transaction that took an xid holds the horizon; the rows deleted
            # after it cannot be removed by the VACUUM that follows.
            with workloads.idle_in_transaction(
                    app_conninfo, statement="SELECT pg_current_xact_id()",
                    application_name="smtest-horizon-holder") as holder:
                await delete_and_vacuum(1, dead_after=5000)  # the VACUUM could remove none
                found = await run.find(DetectorId.VACUUM_BLOCKED,
                                       lambda d: d.target.pid == holder.pid)
                await run.snapshots(3)
    assert found.proposed_action is ActionId.ADVICE
    assert found.risk_class is RiskClass.ADVICE
    assert found.target.xact_start is not None and found.target.backend_start is not None
    evidence = found.evidence
    assert evidence["holder"] == "session"
    assert evidence["pid"] == holder.pid
    assert evidence["user"] == user_of(app_conninfo)
    assert evidence["application"] == "smtest-horizon-holder"
    assert evidence["state"] == "idle in transaction"
    assert evidence["tables_waiting"] == 1
    assert evidence["dead_rows_waiting"] == 5000
    assert evidence["tables"] == "public.queue"
    assert float(evidence["held_for_s"]) >= 2
    assert int(evidence["xmin_age_xids"]) >= 1
    assert f"pid {holder.pid}" in found.summary
    assert found.key.startswith(key(DetectorId.VACUUM_BLOCKED, f"session:pid={holder.pid}@"))
    assert_on_subject(run, DetectorId.VACUUM_BLOCKED)
    # Only the holder is ever named; VACUUM is not proposed again for rows it cannot remove.
    assert {d.target.pid for d in run.received} == {holder.pid}, run.summaries()
    assert twin.pid != holder.pid
    assert run.of(DetectorId.DEAD_TUPLES) == []


async def test_vacuum_blocked_names_a_prepared_transaction(
        pg_private_cluster_factory: components.PrivateClusterFactory, nats_server: NatsServer,
        tmp_path: Path) -> None:
    # PREPARE TRANSACTION needs max_prepared_transactions (0 by default, a restart to change):
    # a private cluster. A prepared transaction outlives its session: nothing in
    # pg_stat_activity holds the horizon, only pg_prepared_xacts shows it.
    cluster = pg_private_cluster_factory({"max_prepared_transactions": 2, "autovacuum": False})
    database = cluster.create_database("shop")
    create_queue(database)
    gid = "smtest-payment-42"
    try:
        async with chain(database, nats_server, tmp_path, **HORIZON_LIMITS) as run:
            # Healthy twin: the same DELETE and VACUUM with nothing holding the horizon.
            await delete_quarter_and_vacuum(database, 0, dead_after=0)
            await run.snapshots(4)
            assert run.received == [], run.summaries()

            # The problem: a two-phase commit left prepared (a coordinator that died between
            # PREPARE and COMMIT PREPARED); its xid holds the horizon back.
            with database.connect() as conn:
                conn.execute("BEGIN")
                xid = int(one(conn, "SELECT pg_current_xact_id()::text::bigint"))
                conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
            with database.connect() as conn:
                prepared = conn.execute("SELECT transaction::text::bigint, prepared, owner "
                                        "FROM pg_prepared_xacts WHERE gid = %s", (gid,)
                                        ).fetchone()
                assert prepared is not None and prepared[0] == xid
                sessions = int(one(conn, "SELECT count(*) FROM pg_stat_activity "
                                         "WHERE backend_xid = %s::text::xid", (xid,)))
                assert sessions == 0  # no session holds it: only the prepared transaction
            await delete_quarter_and_vacuum(database, 1, dead_after=5000)
            found = await run.find(DetectorId.VACUUM_BLOCKED, lambda d: True)
            await run.snapshots(3)
            with database.connect() as conn:
                age = int(one(conn, "SELECT age(transaction) FROM pg_prepared_xacts "
                                    "WHERE gid = %s", (gid,)))
    finally:
        with database.connect() as conn:
            if one(conn, "SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s", (gid,)):
                conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
    with database.connect() as conn:
        assert dead_rows(database, "queue") == 5000
        assert one(conn, "SELECT count(*) FROM pg_prepared_xacts") == 0  # cleaned up
    assert found.proposed_action is ActionId.ADVICE and found.risk_class is RiskClass.ADVICE
    assert found.key == key(DetectorId.VACUUM_BLOCKED, f"prepared:{gid}")
    assert found.target == remediation.Target()  # nothing to signal: named in the evidence
    evidence = found.evidence
    assert evidence["holder"] == "prepared_xact"
    assert evidence["gid"] == gid
    assert evidence["owner"] == prepared[2] == cluster.superuser
    assert evidence["prepared"] == prepared[1].astimezone(datetime.UTC).isoformat()
    assert 1 <= int(evidence["xmin_age_xids"]) <= age  # the xid's age when it was seen
    assert float(evidence["held_for_s"]) >= 2  # minHolderAge
    assert evidence["tables_waiting"] == 1
    assert evidence["dead_rows_waiting"] == 5000
    assert evidence["tables"] == "public.queue"
    assert f"prepared transaction {gid!r}" in found.summary
    assert_on_subject(run, DetectorId.VACUUM_BLOCKED)
    # Only the prepared transaction is named; VACUUM is not proposed for rows it cannot
    # remove.
    assert {d.key for d in run.received} == {found.key}, run.summaries()


# ---- blocking_lock


async def test_blocking_lock_reports_the_root_blocker_only_and_its_twin_is_quiet(
        pg_db: postgres.PostgresDatabase, app_conninfo: str, nats_server: NatsServer,
        tmp_path: Path) -> None:
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total int)")
        conn.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 1000) g")
    count = "SELECT count(*) FROM orders"
    with contextlib.ExitStack() as stack:
        # A long reporting transaction that read the table (ACCESS SHARE, held until it ends).
        holder = stack.enter_context(workloads.hold_lock(app_conninfo, "orders",
                                                         mode="ACCESS SHARE"))
        async with chain(pg_db, nats_server, tmp_path,
                         blocking_lock={"minWait": "2s", "minBlocked": 3}) as run:
            # Healthy twin: readers alongside the held lock share it and never wait.
            with contextlib.ExitStack() as readers:
                loops = [readers.enter_context(workloads.query_loop(
                    app_conninfo, count, rate=10, application_name=f"smtest-reader-{n}"))
                    for n in range(3)]
                await run.snapshots(5)
                assert all(loop.calls > 0 and not loop.errors for loop in loops)
            assert run.received == [], run.summaries()

            # The problem: a migration queues for ACCESS EXCLUSIVE behind the reporting
            # transaction, and every new reader queues behind the migration.
            ddl = stack.enter_context(workloads.background_query(
                app_conninfo, "ALTER TABLE orders ADD COLUMN note text",
                application_name="smtest-migration"))
            await eventually(lambda: waiting_on_lock(pg_db, ddl.pid))
            queued = [stack.enter_context(workloads.background_query(
                app_conninfo, count, application_name=f"smtest-queued-{n}")) for n in range(3)]
            for reader in queued:
                await eventually(functools.partial(waiting_on_lock, pg_db, reader.pid))
            found = await run.find(DetectorId.BLOCKING_LOCK, lambda d: True)
            await run.snapshots(3)
            assert not ddl.done.is_set() and not any(r.done.is_set() for r in queued)
    blocked = sorted([ddl.pid, *(r.pid for r in queued)])
    assert found.proposed_action is ActionId.ADVICE
    assert found.target.pid == holder.pid
    assert found.target.xact_start is not None and found.target.backend_start is not None
    assert found.key.startswith(key(DetectorId.BLOCKING_LOCK, f"pid={holder.pid}@"))
    evidence = found.evidence
    assert evidence["blocked_sessions"] == 4  # the migration and the three readers
    assert evidence["blocked_pids"] == ",".join(map(str, blocked))
    assert float(evidence["longest_wait_s"]) >= 2
    assert evidence["relations"] == "public.orders"
    assert evidence["user"] == user_of(app_conninfo)
    assert evidence["application"] == holder.application_name
    assert evidence["state"] == "idle in transaction"
    assert_on_subject(run, DetectorId.BLOCKING_LOCK)
    # Root only: the migration blocks the readers too, but it waits itself.
    assert {d.key for d in run.received} == {found.key}, run.summaries()


# ---- connection_saturation


@contextlib.contextmanager
def held_connections(conninfo: str, count: int, application_name: str
                     ) -> Iterator[list[psycopg.Connection[Any]]]:
    """``count`` idle client connections, as a connection pool keeps them."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(psycopg.connect(conninfo, autocommit=True,
                                                   application_name=application_name))
               for _ in range(count)]


async def test_connection_saturation_on_a_small_server_and_its_twin_is_quiet(
        pg_private_cluster_factory: components.PrivateClusterFactory, nats_server: NatsServer,
        tmp_path: Path) -> None:
    cluster = pg_private_cluster_factory({"max_connections": 20})  # 17 usable: 3 reserved
    database = cluster.create_database("shop")
    cluster.create_role("shop_app")
    app = cluster.conninfo("shop", user="shop_app")
    async with chain(database, nats_server, tmp_path) as run:  # default maxRatio 0.8
        # Healthy twin: a pool of 6 connections plus the collector: 7/17 = 41%.
        with held_connections(app, 6, "smtest-pool") as pool:
            await run.snapshots(4)
            assert run.received == [], run.summaries()
            # The problem: the pool grows to 14; with the collector 15/17 = 88%.
            with held_connections(app, 8, "smtest-pool") as more:
                found = await run.find(DetectorId.CONNECTION_SATURATION, lambda d: True)
                assert len(pool) + len(more) == 14
    assert found.proposed_action is ActionId.ADVICE and found.severity == "warning"
    assert found.key == key(DetectorId.CONNECTION_SATURATION, "connections/shop")
    assert found.target == remediation.Target()  # database-wide: no target
    evidence = found.evidence
    assert evidence["usable_connections"] == 17
    assert evidence["client_backends"] == 15
    assert evidence["ratio"] == round(15 / 17, 4)
    assert evidence["database_backends"] == 15
    assert evidence["datconnlimit"] == -1
    assert evidence["idle"] == 14
    assert "smtest-pool=14" in str(evidence["top_applications"])
    assert "88%" in found.summary
    assert_on_subject(run, DetectorId.CONNECTION_SATURATION)
    assert {d.key for d in run.received} == {found.key}, run.summaries()


# ---- cache_hit_ratio


def blocks_read(database: postgres.PostgresDatabase) -> int:
    with database.connect() as conn:
        return int(one(conn, "SELECT blks_read FROM pg_stat_database "
                             "WHERE datname = current_database()"))


async def until_no_block_read(run: Chain, database: postgres.PostgresDatabase,
                              snapshots: int) -> None:
    """Wait until the database read no block from disk during ``snapshots`` snapshots."""
    for _ in range(10):
        before = blocks_read(database)
        await run.snapshots(snapshots)
        if blocks_read(database) == before:
            return
    raise AssertionError("the database keeps reading blocks from disk")


def hot_blocks_hit(database: postgres.PostgresDatabase) -> int:
    with database.connect() as conn:
        return int(one(conn, "SELECT heap_blks_hit FROM pg_statio_user_tables "
                             "WHERE relname = 'hot'"))


async def test_cache_hit_ratio_of_a_table_bigger_than_shared_buffers_and_its_hot_twin(
        pg_private_cluster_factory: components.PrivateClusterFactory, nats_server: NatsServer,
        tmp_path: Path) -> None:
    cluster = pg_private_cluster_factory({"shared_buffers": "2MB", "autovacuum": False})
    database = cluster.create_database("shop")
    run_flushed(database,
                "CREATE TABLE archive (id int, payload text)",
                "INSERT INTO archive SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g",
                "CREATE TABLE hot (id int PRIMARY KEY, v int)",
                "INSERT INTO hot SELECT g, g FROM generate_series(1, 5000) g")
    with database.connect() as conn:
        conn.execute("VACUUM ANALYZE archive, hot")
        conn.execute("SELECT count(*) FROM hot")  # hot's pages are in shared buffers
        archive_bytes = int(one(conn, "SELECT pg_table_size('archive')"))
        hot_bytes = int(one(conn, "SELECT pg_table_size('hot')"))
        buffers = int(one(conn, "SELECT setting::int * 8192 FROM pg_settings "
                                "WHERE name = 'shared_buffers'"))
    assert archive_bytes > 5 * buffers and hot_bytes < buffers / 4
    limits = {"cache_hit_ratio": {"window": "3s", "minBlocks": 500}}  # minRatio 0.99
    with workloads.query_loop(database.conninfo, "SELECT count(*) FROM hot", rate=20,
                              application_name="smtest-hot"):
        async with chain(database, nats_server, tmp_path) as run:
            # The new database's catalogs are read from disk once (by the collector's first
            # rounds, and the statistics of a closing session arrive late): a real cold
            # start, not what this test is about. Once no block has been read for longer
            # than the window, the 3s window is set through the config (hot reload).
            await until_no_block_read(run, database, snapshots=5)
            await run.retune(**limits)
            # Healthy twin: the hot table is read ~400 blocks a second, all from shared
            # buffers, well over minBlocks per window, so it is judged (and fine), as is the
            # database as a whole.
            before = hot_blocks_hit(database)
            await run.snapshots(6)
            assert hot_blocks_hit(database) - before > 2 * 500
            assert run.received == [], run.summaries()
            assert run.metric("findings_total", detector="cache_hit_ratio") == 0
            with workloads.query_loop(database.conninfo, "SELECT count(*) FROM archive",
                                      rate=4, application_name="smtest-report") as report:
                table = await run.find(DetectorId.CACHE_HIT_RATIO,
                                       lambda d: d.target.table == "archive")
                whole = await run.find(DetectorId.CACHE_HIT_RATIO,
                                       lambda d: d.target.table is None)
                await run.snapshots(3)
                assert report.calls > 0 and not report.errors
    assert table.proposed_action is ActionId.ADVICE and table.severity == "info"
    assert table.key == key(DetectorId.CACHE_HIT_RATIO, "public.archive")
    assert table.target.schema_ == "public"
    assert table.evidence["table_bytes"] == archive_bytes
    assert float(table.evidence["hit_ratio"]) < 0.5  # most of its blocks came from disk
    assert float(table.evidence["blks_read"]) > 0.5 * archive_bytes / 8192
    assert float(table.evidence["window_s"]) >= 3
    assert whole.key == key(DetectorId.CACHE_HIT_RATIO, "database/shop")
    assert float(whole.evidence["hit_ratio"]) < 0.99
    assert float(whole.evidence["blocks_read_per_s"]) > 0
    assert_on_subject(run, DetectorId.CACHE_HIT_RATIO)
    # The hot table is never named, however often it is read.
    assert {d.key for d in run.received} == {table.key, whole.key}, run.summaries()


# ---- unused_index


async def test_unused_index_flags_only_the_never_scanned_droppable_index(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    run_flushed(
        pg_db,
        "CREATE TABLE customers (id int PRIMARY KEY)",
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers, "
        "sku int, colour int, code int)",
        "INSERT INTO customers SELECT generate_series(1, 100)",
        "INSERT INTO orders SELECT g, g % 100 + 1, g, g % 7, g FROM generate_series(1, 10000) g",
        "CREATE INDEX orders_colour_idx ON orders (colour)",  # never scanned
        "CREATE INDEX orders_sku_idx ON orders (sku)",  # scanned below
        "CREATE UNIQUE INDEX orders_code_key ON orders (code)",  # unique
        "CREATE INDEX orders_customer_id_idx ON orders (customer_id)")  # backs the FK
    with pg_db.connect() as conn:
        conn.execute("VACUUM ANALYZE customers, orders")
    run_flushed(pg_db, "SELECT * FROM orders WHERE sku = 42")
    with pg_db.connect() as conn:
        scans = dict(conn.execute("SELECT indexrelname, idx_scan FROM pg_stat_user_indexes "
                                  "WHERE relname = 'orders'").fetchall())
        size = int(one(conn, "SELECT pg_relation_size('orders_colour_idx')"))
    assert scans == {"orders_pkey": 0, "orders_colour_idx": 0, "orders_sku_idx": 1,
                     "orders_code_key": 0, "orders_customer_id_idx": 0}
    async with chain(pg_db, nats_server, tmp_path,
                     unused_index={"minAge": "3s", "minSize": "1Ki"}) as run:
        found = await run.find(DetectorId.UNUSED_INDEX, lambda d: True)
        await run.snapshots(4)
    assert found.proposed_action is ActionId.DROP_INDEX
    assert found.risk_class is RiskClass.DESTRUCTIVE and found.severity == "info"
    assert found.key == key(DetectorId.UNUSED_INDEX, "public.orders_colour_idx")
    assert (found.target.schema_, found.target.table, found.target.index) == (
        "public", "orders", "orders_colour_idx")
    evidence = found.evidence
    assert evidence["idx_scan"] == 0
    assert evidence["size_bytes"] == size
    assert int(evidence["watched_s"]) >= 3
    assert evidence.get("stats_age_s") is None  # this database's statistics were never reset
    assert "(colour)" in str(evidence["definition"])
    assert_on_subject(run, DetectorId.UNUSED_INDEX)
    # Twins never named: the scanned index, the primary key, the unique index and the index
    # that backs the foreign key, all watched just as long.
    assert {d.key for d in run.received} == {found.key}, run.summaries()


# ---- duplicate_index


async def test_duplicate_index_flags_exact_twins_and_prefixes_but_not_distinct_indexes(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, customer int, status int, "
                     "created date)")
        conn.execute("CREATE INDEX orders_customer_idx ON orders (customer)")
        conn.execute("CREATE INDEX orders_customer_idx2 ON orders (customer)")  # exact twin
        conn.execute("CREATE INDEX orders_status_idx ON orders (status)")  # a prefix of:
        conn.execute("CREATE INDEX orders_status_created_idx ON orders (status, created)")
        # Healthy twins: every pair differs in something a read can tell.
        conn.execute("CREATE TABLE items (a int, b int, c int, d text)")
        for statement in (
                "CREATE UNIQUE INDEX items_a_key ON items (a)",  # enforces: never redundant
                "CREATE INDEX items_a_b_idx ON items (a, b)",
                "CREATE INDEX items_b_idx ON items (b)",
                "CREATE INDEX items_b_positive_idx ON items (b) WHERE c > 0",  # predicate
                "CREATE INDEX items_c_desc_idx ON items (c DESC)",  # ordering
                "CREATE INDEX items_c_d_idx ON items (c, d)",
                "CREATE INDEX items_d_idx ON items (d)",
                "CREATE INDEX items_d_hash_idx ON items USING hash (d)",  # method
                "CREATE INDEX items_lower_d_idx ON items (lower(d))"):  # expression
            conn.execute(statement)
    async with chain(pg_db, nats_server, tmp_path) as run:
        twin = await run.find(DetectorId.DUPLICATE_INDEX,
                              lambda d: d.target.index == "orders_customer_idx2")
        prefix = await run.find(DetectorId.DUPLICATE_INDEX,
                                lambda d: d.target.index == "orders_status_idx")
        await run.snapshots(3)
    for found in (twin, prefix):
        assert found.proposed_action is ActionId.DROP_INDEX
        assert found.risk_class is RiskClass.DESTRUCTIVE
        assert (found.target.schema_, found.target.table) == ("public", "orders")
    assert twin.key == key(DetectorId.DUPLICATE_INDEX, "public.orders_customer_idx2")
    assert twin.evidence["duplicate_of"] == "public.orders_customer_idx"
    assert twin.evidence["exact"] is True
    assert twin.evidence["size_bytes"] == 8192 and twin.evidence["idx_scan"] == 0
    assert prefix.key == key(DetectorId.DUPLICATE_INDEX, "public.orders_status_idx")
    assert prefix.evidence["duplicate_of"] == "public.orders_status_created_idx"
    assert prefix.evidence["exact"] is False
    assert "(status, created)" in str(prefix.evidence["kept_definition"])
    assert_on_subject(run, DetectorId.DUPLICATE_INDEX)
    # One of two twins only, and nothing on the distinct indexes of items.
    assert {d.key for d in run.received} == {twin.key, prefix.key}, run.summaries()


# ---- xid_wraparound


def oldest_xid_age(database: postgres.PostgresDatabase) -> int:
    with database.connect() as conn:
        return int(one(conn, "SELECT max(age(datfrozenxid)) FROM pg_database "
                             "WHERE datallowconn"))


BURST = ("DO $$ BEGIN FOR i IN 1..3000 LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; "
         "END $$")


async def test_xid_wraparound_fires_when_a_burst_of_transactions_crosses_max_ratio(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    before = oldest_xid_age(pg_db)
    max_ratio = (before + 1500) / WRAPAROUND_LIMIT  # 1,500 transactions from now
    async with chain(pg_db, nats_server, tmp_path,
                     xid_wraparound={"maxRatio": max_ratio}) as run:
        # Healthy twin: the same database just below the lowered threshold.
        await run.snapshots(4)
        assert run.received == [], run.summaries()
        with pg_db.connect() as conn:
            conn.execute(BURST)  # 3,000 committed transactions, each with its own xid
        found = await run.find(DetectorId.XID_WRAPAROUND, lambda d: True)
        after = oldest_xid_age(pg_db)
        # And with the default maxRatio (0.5) on the same, now older database: quiet again.
        await run.retune()
        await eventually(lambda: run.metric("detections_resolved_total",
                                            detector="xid_wraparound") == 1, timeout=15)
        published = len(run.received)
        await run.snapshots(3)
        assert len(run.received) == published, run.summaries()
    assert found.proposed_action is ActionId.ADVICE and found.severity == "warning"
    assert found.key == key(DetectorId.XID_WRAPAROUND, f"database/{pg_db.dbname}")
    assert found.target == remediation.Target()
    evidence = found.evidence
    age = int(evidence["cluster_max_datfrozenxid_age"])
    assert before + 1500 <= age <= after
    assert int(evidence["datfrozenxid_age"]) <= age
    assert evidence["ratio"] == round(age / WRAPAROUND_LIMIT, 4)
    assert evidence["autovacuum_freeze_max_age"] == 200_000_000
    assert float(evidence["xids_per_s"]) > 0  # the burst is in the rate
    assert int(evidence["seconds_to_limit"]) > 0
    assert f"transaction age {age} " in found.summary
    assert_on_subject(run, DetectorId.XID_WRAPAROUND)
    assert {d.key for d in run.received} == {found.key}, run.summaries()


def age_cluster_with_pg_resetwal(cluster: postgres.PostgresCluster, next_xid: int) -> None:
    """Stopped cluster -> next transaction id ``next_xid`` (the databases' datfrozenxid
    stays, so they are that old), with the commit-log segment the server needs for it."""
    result = cluster.run_tool("pg_resetwal", "-x", str(next_xid), "-D", cluster.datadir)
    assert result.returncode == 0, result.stdout + result.stderr
    segment = cluster.datadir / "pg_xact" / f"{next_xid // (32768 * 32):04X}"
    segment.write_bytes(bytes(256 * 1024))  # 32 pages of 32,768 transactions, all zero
    segment.chmod(0o600)
    if cluster.os_user is not None:
        shutil.chown(segment, cluster.os_user, cluster.os_user)


async def test_xid_wraparound_at_the_default_threshold_on_an_aged_cluster(
        pg_private_cluster_factory: components.PrivateClusterFactory, nats_server: NatsServer,
        tmp_path: Path) -> None:
    # No autovacuum at all, not even the anti-wraparound one (which starts past
    # autovacuum_freeze_max_age), so the aged cluster stays aged while the test runs.
    cluster = pg_private_cluster_factory({"autovacuum": False,
                                          "autovacuum_freeze_max_age": 2_000_000_000})
    database = cluster.create_database("shop")
    next_xid = 1_400_000_000  # 65% of 2^31
    async with chain(database, nats_server, tmp_path) as run:  # default maxRatio 0.5
        # Healthy twin: the same cluster while it is young.
        await run.snapshots(3)
        assert run.received == [], run.summaries()
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(age_cluster_with_pg_resetwal, cluster, next_xid)
        await asyncio.to_thread(cluster.start)
        found = await run.find(DetectorId.XID_WRAPAROUND, lambda d: True)
        with database.connect() as conn:
            own_age = int(one(conn, "SELECT age(datfrozenxid) FROM pg_database "
                                    "WHERE datname = 'shop'"))
        await run.snapshots(2)
    assert next_xid - 1000 < own_age < next_xid
    evidence = found.evidence
    assert found.severity == "warning"  # critical from 0.8
    assert found.key == key(DetectorId.XID_WRAPAROUND, "database/shop")
    assert abs(int(evidence["datfrozenxid_age"]) - own_age) < 10
    assert int(evidence["cluster_max_datfrozenxid_age"]) >= int(evidence["datfrozenxid_age"])
    assert evidence["ratio"] == pytest.approx(own_age / WRAPAROUND_LIMIT, abs=1e-3)
    assert evidence["autovacuum_freeze_max_age"] == 2_000_000_000
    assert_on_subject(run, DetectorId.XID_WRAPAROUND)
    assert {d.key for d in run.received} == {found.key}, run.summaries()


# ---- occurrences and restarts


async def test_a_persistent_problem_keeps_one_id_and_gets_a_new_one_only_when_it_comes_back(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    create = "CREATE INDEX orders_customer_copy ON orders (customer)"
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, customer int)")
        conn.execute("CREATE INDEX orders_customer_idx ON orders (customer)")
        conn.execute(create)
    async with chain(pg_db, nats_server, tmp_path) as run:
        first = await run.find(DetectorId.DUPLICATE_INDEX, lambda d: True)
        await run.snapshots(lifecycle.REPUBLISH_EVERY + 1)
        copies = run.of(DetectorId.DUPLICATE_INDEX)
        # Re-published while it lasts, as the same occurrence.
        assert len(copies) >= 2
        assert {(d.id, d.key, d.first_seen) for d in copies} == {
            (first.id, first.key, first.first_seen)}
        assert copies[-1].last_seen > first.last_seen
        # Resolved once gone (after RESOLVE_AFTER judged snapshots without it); nothing more
        # is published for it.
        with pg_db.connect() as conn:
            conn.execute("DROP INDEX orders_customer_copy")
        await eventually(lambda: run.metric("detections_resolved_total",
                                            detector="duplicate_index") == 1, timeout=15)
        published = len(run.received)
        await run.snapshots(2)
        assert len(run.received) == published
        # Back again: the same key, a new occurrence with a new id, again kept while it lasts.
        with pg_db.connect() as conn:
            conn.execute(create)
        again = await run.find(DetectorId.DUPLICATE_INDEX, lambda d: d.id != first.id)
        await run.snapshots(lifecycle.REPUBLISH_EVERY + 1)
    assert again.key == first.key == key(DetectorId.DUPLICATE_INDEX,
                                         "public.orders_customer_copy")
    assert again.first_seen > copies[-1].last_seen
    later = run.received[published:]
    assert len(later) >= 2 and {d.id for d in later} == {again.id}, run.summaries()


def primary_key_scans(database: postgres.PostgresDatabase) -> int:
    with database.connect() as conn:
        return int(one(conn, "SELECT idx_scan FROM pg_stat_user_indexes "
                             "WHERE indexrelname = 'items_pkey'"))


def identity_resets_are(run: Chain, count: int) -> bool:
    return run.metric("counter_resets_total", scope="identity") == count


def crash_restart(cluster: postgres.PostgresCluster) -> Callable[[], None]:
    """An immediate stop (crash recovery on start: every statistics counter starts over)."""
    def restart() -> None:
        cluster.stop(mode="immediate")
        cluster.start()
    return restart


async def test_server_restarts_raise_nothing(
        pg_private_cluster_factory: components.PrivateClusterFactory, nats_server: NatsServer,
        tmp_path: Path) -> None:
    cluster = pg_private_cluster_factory()
    database = cluster.create_database("shop")
    run_flushed(database,
                "CREATE TABLE items (id int PRIMARY KEY, v int)",
                "INSERT INTO items SELECT g, g FROM generate_series(1, 5000) g",
                # A problem that lasts through the restarts: it must keep its one id.
                "CREATE INDEX items_v_idx ON items (v)",
                "CREATE INDEX items_v_copy ON items (v)")
    with database.connect() as conn:
        conn.execute("VACUUM ANALYZE items")
    # Everything that compares counters between snapshots judges every few seconds.
    limits = {"cache_hit_ratio": {"window": "3s", "minBlocks": 100, "minRatio": 0.9},
              "dead_tuples": {"minDeadTuples": 100, "autovacuumGrace": "2s"},
              "stale_statistics": {"minModifiedRows": 100}}
    lookup = "SELECT v FROM items WHERE id = (SELECT (random() * 4999)::int + 1)"
    async with chain(database, nats_server, tmp_path, **limits) as run:
        with workloads.query_loop(database.conninfo, lookup, rate=50):
            control = await run.find(DetectorId.DUPLICATE_INDEX, lambda d: True)
            await run.snapshots(5)
        published = len(run.received)
        # A clean restart (counters kept), then a crash (every counter starts over).
        restart_ways: list[tuple[Callable[[], object], bool]] = [
            (cluster.restart, True), (crash_restart(cluster), False)]
        for restarts, (restart, counters_kept) in enumerate(restart_ways, 1):
            await asyncio.to_thread(restart)
            assert (primary_key_scans(database) > 0) is counters_kept
            with workloads.query_loop(database.conninfo, lookup, rate=50):
                # The analyser saw a new server incarnation and started a new series.
                await eventually(functools.partial(identity_resets_are, run, restarts),
                                 timeout=30)
                # A new series: no delta crosses the restart, so cache_hit_ratio cannot judge
                # until its 3s window is covered again; then it judges every snapshot.
                unjudged = run.metric("detector_no_data_total", detector="cache_hit_ratio")
                await run.snapshots(8)
                assert run.metric("detector_no_data_total", detector="cache_hit_ratio") <= (
                    unjudged + 5)
        assert run.metric("counter_resets_total", scope="identity") == 2
    assert {d.key for d in run.received} == {control.key}, run.summaries()
    assert {d.id for d in run.received} == {control.id}
    assert len(run.received) > published  # re-published after the restarts, same id
