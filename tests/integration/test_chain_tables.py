"""Table and database detectors through the whole chain on a real PostgreSQL: dead_tuples,
stale_statistics and invalid_index, vacuum_blocked (a session or a prepared transaction
holding the horizon), cache_hit_ratio and xid_wraparound, each with its healthy twin.

The chain (``tests/support/chain.py``): a real collector process -> gRPC -> analyser -> NATS,
thresholds lowered only through ``spec.thresholds`` of the rendered config, interval 1s.
Every detection is checked on its subject and against numbers read from PostgreSQL itself.
Cluster-wide conditions (prepared transactions, tiny shared_buffers, XID age) use a private
cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import shutil
from pathlib import Path

import pytest
from psycopg import sql

from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import messages, remediation
from startupmonkey.models.enums import ActionId, DetectorId, RiskClass
from tests.support import components, workloads
from tests.support.chain import (
    Chain,
    assert_on_subject,
    chain,
    key,
    one,
    row,
    run_each_flushed,
    run_flushed,
    user_of,
)
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration


def dead_rows(database: postgres.PostgresDatabase, table: str) -> int:
    with database.connect() as conn:
        return int(one(conn, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s",
                       (table,)))


# ---- dead_tuples, stale_statistics, invalid_index


def _prepare_tables(database: postgres.PostgresDatabase) -> None:
    # Each step in its own session: a backend's statistics reach shared memory when it ends,
    # so an ANALYZE in the same session as the INSERT would be undone by the later flush.
    off = "WITH (autovacuum_enabled = false)"
    tables = [statement for name in ("bloated", "clean", "stale", "analysed") for statement in (
        f"CREATE TABLE {name} (id int PRIMARY KEY, v int) {off}",
        f"INSERT INTO {name} SELECT g, g FROM generate_series(1, 20000) g")]
    run_flushed(database, *tables, "CREATE TABLE emails (id int, email text)",
                "INSERT INTO emails VALUES (1, 'a@x'), (2, 'a@x'), (3, 'b@x')")
    run_flushed(database, "VACUUM ANALYZE bloated, clean, analysed, emails")
    with database.connect() as conn:
        conn.execute("DELETE FROM bloated WHERE id % 2 = 0")  # 10,000 dead rows
    with database.connect() as conn:
        conn.execute("CREATE UNIQUE INDEX emails_id_key ON emails (id)")  # the healthy twin
        with contextlib.suppress(Exception):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY emails_email_key ON emails (email)")
        row = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                           "'emails_email_key'::regclass").fetchone()
        assert row == (False,), "the failed build should leave an INVALID index"


async def test_dead_tuples_stale_statistics_invalid_index_and_twins(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    _prepare_tables(pg_db)
    async with chain(pg_db, nats_server, tmp_path,
                     dead_tuples={"minDeadTuples": 1000, "autovacuumGrace": "2s"},
                     invalid_index={"minAge": "2s"}) as run:
        dead = await run.find(DetectorId.DEAD_TUPLES, lambda d: d.target.table == "bloated")
        stale = await run.find(DetectorId.STALE_STATISTICS,
                               lambda d: d.target.table == "stale")
        invalid = await run.find(DetectorId.INVALID_INDEX,
                                 lambda d: d.target.index == "emails_email_key")
        await run.snapshots(3)
        tables = {d.target.table for d in run.received
                  if d.detector in (DetectorId.DEAD_TUPLES, DetectorId.STALE_STATISTICS)}
        assert tables <= {"bloated", "stale"}, run.summaries()  # never clean or analysed
        assert {d.target.index for d in run.of(DetectorId.INVALID_INDEX)} == {"emails_email_key"}
    # What PostgreSQL itself says about the three objects.
    bloated = row(pg_db, "SELECT c.reltuples, pg_table_size(c.oid) AS bytes, "
                         "current_setting('autovacuum_vacuum_threshold')::float AS threshold, "
                         "current_setting('autovacuum_vacuum_scale_factor')::float AS scale "
                         "FROM pg_class c WHERE c.oid = 'bloated'::regclass")
    never = row(pg_db, "SELECT reltuples FROM pg_class WHERE oid = 'stale'::regclass")
    index = row(pg_db, "SELECT indisready, pg_relation_size(indexrelid) AS bytes, "
                       "pg_get_indexdef(indexrelid) AS definition FROM pg_index "
                       "WHERE indexrelid = 'emails_email_key'::regclass")

    assert dead.proposed_action is ActionId.VACUUM and dead.target.schema_ == "public"
    assert dead.key == key(DetectorId.DEAD_TUPLES, "public.bloated")
    evidence = dead.evidence
    assert evidence["n_dead_tup"] == 10_000 and evidence["n_live_tup"] == 10_000
    assert evidence["dead_ratio"] == 0.5 and dead.severity == "critical"  # critical from 0.5
    assert bloated["reltuples"] == 20_000  # analysed before the DELETE
    assert evidence["reltuples"] == bloated["reltuples"]
    trigger = round(bloated["threshold"] + bloated["scale"] * bloated["reltuples"])
    assert evidence["autovacuum_trigger"] == trigger == 4050
    assert evidence["autovacuum_enabled"] is False  # the table's own setting: no grace
    assert "with autovacuum off for it" in dead.summary
    assert evidence["table_bytes"] == bloated["bytes"]
    assert evidence["last_vacuum"] is not None
    assert_on_subject(run, DetectorId.DEAD_TUPLES)

    assert stale.proposed_action is ActionId.ANALYZE
    assert stale.key == key(DetectorId.STALE_STATISTICS, "public.stale")
    evidence = stale.evidence
    assert evidence["n_mod_since_analyze"] == 20_000  # every inserted row, never analysed
    assert evidence["n_live_tup"] == 20_000
    # Never analyzed: reltuples -1 from PostgreSQL 14, 0 before (tests/pg_matrix runs 13).
    version = row(pg_db, "SELECT current_setting('server_version_num')::int AS v")["v"]
    assert evidence["reltuples"] == never["reltuples"] == (-1 if version >= 140000 else 0)
    assert evidence["never_analysed"] is True and evidence["last_analyze"] is None
    assert evidence["trigger"] == 1000  # minModifiedRows + 0.1 x max(reltuples, 0)
    assert_on_subject(run, DetectorId.STALE_STATISTICS)

    assert invalid.proposed_action is ActionId.DROP_INVALID_INDEX
    assert invalid.target.table == "emails" and invalid.target.schema_ == "public"
    assert invalid.key == key(DetectorId.INVALID_INDEX, "public.emails_email_key")
    evidence = invalid.evidence
    assert float(evidence["invalid_for_s"]) >= 2  # minAge
    assert evidence["size_bytes"] == index["bytes"]
    assert evidence["ready"] is index["indisready"]
    assert evidence["definition"] == index["definition"]
    assert evidence["constraint"] is None
    assert "CREATE INDEX CONCURRENTLY" in invalid.summary
    assert_on_subject(run, DetectorId.INVALID_INDEX)


# ---- vacuum_blocked


HORIZON_LIMITS = {"vacuum_blocked": {"minHolderAge": "2s"},
                  "dead_tuples": {"minDeadTuples": 1000, "autovacuumGrace": "2s"}}


def create_queue(database: postgres.PostgresDatabase) -> None:
    """20,000 rows, analysed and vacuumed, never touched by autovacuum."""
    run_flushed(database,
                "CREATE TABLE queue (id int PRIMARY KEY, v int) WITH (autovacuum_enabled = false)",
                "INSERT INTO queue SELECT g, g FROM generate_series(1, 20000) g")
    run_flushed(database, "VACUUM ANALYZE queue")


async def delete_quarter_and_vacuum(database: postgres.PostgresDatabase, remainder: int,
                                    dead_after: int) -> datetime.datetime:
    """Delete the 5,000 rows with ``id % 4 = remainder``, then VACUUM: ``dead_after`` rows
    stay dead (0 when nothing holds the horizon back). Returns a moment after which every
    snapshot sees the VACUUM."""
    run_each_flushed(database, sql.SQL("DELETE FROM queue WHERE id % 4 = {}").format(remainder),
                     "VACUUM ANALYZE queue")
    assert dead_rows(database, "queue") == dead_after
    return datetime.datetime.now(datetime.UTC)


def after(detections: list[messages.Detection],
          vacuumed: datetime.datetime) -> list[messages.Detection]:
    """The detections but a dead_tuples one from a snapshot taken before the VACUUM showed.
    Between the DELETE and the VACUUM (two statements) a snapshot may see the dead rows with no
    VACUUM after them, and with autovacuum off for the table dead_tuples rightly proposes one
    at once (seen on PostgreSQL 14, whose statistics arrive late); what these tests are about
    is what comes after the VACUUM."""
    return [d for d in detections
            if not (d.detector is DetectorId.DEAD_TUPLES and d.last_seen < vacuumed)]


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
            vacuumed = await delete_and_vacuum(0, dead_after=0)
            await run.snapshots(4)
            assert after(run.received, vacuumed) == [], run.summaries()

            # The problem: a transaction that took an xid holds the horizon; the rows deleted
            # after it cannot be removed by the VACUUM that follows.
            with workloads.idle_in_transaction(
                    app_conninfo, statement="SELECT pg_current_xact_id()",
                    application_name="smtest-horizon-holder") as holder:
                # The VACUUM could remove none.
                vacuumed = await delete_and_vacuum(1, dead_after=5000)
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
    assert {d.target.pid for d in after(run.received, vacuumed)} == {holder.pid}, \
        run.summaries()
    assert twin.pid != holder.pid
    assert after(run.of(DetectorId.DEAD_TUPLES), vacuumed) == []


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
            vacuumed = await delete_quarter_and_vacuum(database, 0, dead_after=0)
            await run.snapshots(4)
            assert after(run.received, vacuumed) == [], run.summaries()

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
            vacuumed = await delete_quarter_and_vacuum(database, 1, dead_after=5000)
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
    assert {d.key for d in after(run.received, vacuumed)} == {found.key}, run.summaries()


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
    run_flushed(database, "VACUUM ANALYZE archive, hot")
    with database.connect() as conn:
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


# ---- xid_wraparound


WRAPAROUND_LIMIT = 2**31


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
