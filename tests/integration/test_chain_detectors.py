"""The whole detection chain on a real PostgreSQL: real collector process -> gRPC -> analyser
-> NATS, with real workloads and healthy twins that must produce nothing.

The chain itself (collector subprocess, analyser from the same rendered config file,
thresholds lowered only through ``spec.thresholds``, interval 1s, a plain NATS subscriber)
is ``tests/support/chain.py``; more detectors are in ``test_chain_detectors_more.py``.
Every detection is checked on its subject and against numbers read from PostgreSQL itself.
"""

from __future__ import annotations

import contextlib
import datetime
from pathlib import Path
from typing import Any

import pytest

from startupmonkey.analyser import lifecycle
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models.enums import ActionId, DetectorId
from tests.support import workloads
from tests.support.chain import assert_on_subject, chain, key
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration


def row(database: postgres.PostgresDatabase, query: Any, params: Any = None) -> dict[str, Any]:
    """One row as a dict (asserts there is one)."""
    with database.connect() as conn:
        cursor = conn.execute(query, params)
        values = cursor.fetchone()
        assert values is not None and cursor.description is not None
        return {column.name: value for column, value in zip(cursor.description, values,
                                                             strict=True)}


def utc(value: datetime.datetime) -> str:
    """ISO text of a PostgreSQL timestamp as the analyser writes it (UTC)."""
    return value.astimezone(datetime.UTC).isoformat()


def activity(database: postgres.PostgresDatabase, pid: int) -> dict[str, Any]:
    return row(database, "SELECT backend_start, xact_start, query_start, state_change, state, "
                         "query_id, wait_event_type, wait_event FROM pg_stat_activity "
                         "WHERE pid = %s", (pid,))


# ---- sessions


async def test_idle_in_transaction_one_id_while_it_lasts(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    with (workloads.idle_in_transaction(pg_db.conninfo) as held,
          workloads.query_loop(pg_db.conninfo, "SELECT 1", rate=20,
                               application_name="smtest-healthy") as healthy):
        session = activity(pg_db, held.pid)
        async with chain(pg_db, nats_server, tmp_path,
                         idle_in_transaction={"maxDuration": "2s"}) as run:
            first = await run.find(DetectorId.IDLE_IN_TRANSACTION,
                                   lambda d: d.target.pid == held.pid)
            # Persistent: re-published under the same id every few snapshots.
            await run.snapshots(lifecycle.REPUBLISH_EVERY + 1)
            again = [d for d in run.of(DetectorId.IDLE_IN_TRANSACTION)
                     if d.target.pid == held.pid]
            assert len(again) >= 2
            assert {d.id for d in again} == {first.id}
            assert again[-1].last_seen > first.last_seen
            # Healthy twins: a busy autocommit session and an idle (not in transaction) one.
            assert all(d.target.pid == held.pid for d in run.received), run.summaries()
            assert healthy.calls > 0
    assert first.proposed_action is ActionId.TERMINATE_SESSION
    # The target is the very session and idle spell PostgreSQL reports.
    assert session["state"] == "idle in transaction"
    assert first.target.backend_start == session["backend_start"]
    assert first.target.state_change == session["state_change"]
    assert first.target.xact_start == session["xact_start"]
    assert first.key == key(DetectorId.IDLE_IN_TRANSACTION,
                            f"pid={held.pid}@{utc(session['backend_start'])}"
                            f"/{utc(session['state_change'])}")
    evidence = first.evidence
    assert evidence["pid"] == held.pid
    assert evidence["application"] == held.application_name
    assert evidence["state"] == "idle in transaction"
    assert evidence["query"] == "SELECT 1"
    assert evidence["limit_s"] == 2
    idle = float(evidence["idle_for_s"])
    assert idle >= 2  # maxDuration
    # The transaction began before its idle spell; READ COMMITTED holds no snapshot idle.
    assert float(evidence["transaction_age_s"]) >= idle - 0.1
    assert evidence["xmin_age_xids"] is None
    assert first.severity == ("critical" if idle >= 4 * 2 else "warning")
    assert float(again[-1].evidence["idle_for_s"]) > idle
    assert_on_subject(run, DetectorId.IDLE_IN_TRANSACTION)


async def test_long_running_query_and_its_healthy_twin(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    with (workloads.background_query(pg_db.conninfo, "SELECT pg_sleep(60)") as slow,
          workloads.query_loop(pg_db.conninfo, "SELECT pg_sleep(0.05)", rate=10,
                               application_name="smtest-quick")):
        def sleeping() -> dict[str, Any]:
            session = activity(pg_db, slow.pid)
            assert session["state"] == "active" and session["wait_event"] == "PgSleep", session
            return session

        session = await eventually(sleeping)
        async with chain(pg_db, nats_server, tmp_path,
                         long_running_query={"maxDuration": "2s"}) as run:
            found = await run.find(DetectorId.LONG_RUNNING_QUERY,
                                   lambda d: d.target.pid == slow.pid)
            await run.snapshots(3)
            assert {d.target.pid for d in run.received} == {slow.pid}, run.summaries()
    assert found.proposed_action is ActionId.CANCEL_QUERY
    # The target is the very statement PostgreSQL reports (what the executor re-checks).
    assert found.target.backend_start == session["backend_start"]
    assert found.target.query_start == session["query_start"]
    assert found.key == key(DetectorId.LONG_RUNNING_QUERY,
                            f"pid={slow.pid}@{utc(session['backend_start'])}"
                            f"/{utc(session['query_start'])}")
    evidence = found.evidence
    assert evidence["pid"] == slow.pid
    assert evidence["application"] == slow.application_name
    assert evidence["state"] == "active"
    assert evidence["query"] == "SELECT pg_sleep(60)"
    assert evidence["query_start"] == utc(session["query_start"])
    assert (evidence["wait_event_type"], evidence["wait_event"]) == (
        session["wait_event_type"], session["wait_event"]) == ("Timeout", "PgSleep")
    assert evidence["query_id"] == session["query_id"] and session["query_id"]
    assert evidence["limit_s"] == 2
    running = float(evidence["running_for_s"])
    assert running >= 2  # maxDuration
    assert found.severity == ("critical" if running >= 4 * 2 else "warning")
    assert_on_subject(run, DetectorId.LONG_RUNNING_QUERY)


# ---- tables and indexes


def _prepare_tables(database: postgres.PostgresDatabase) -> None:
    # Each step in its own session: a backend's statistics reach shared memory when it ends,
    # so an ANALYZE in the same session as the INSERT would be undone by the later flush.
    off = "WITH (autovacuum_enabled = false)"
    with database.connect() as conn:
        for name in ("bloated", "clean", "stale", "analysed"):
            conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int) {off}")
            conn.execute(f"INSERT INTO {name} SELECT g, g FROM generate_series(1, 20000) g")
        conn.execute("CREATE TABLE emails (id int, email text)")
        conn.execute("INSERT INTO emails VALUES (1, 'a@x'), (2, 'a@x'), (3, 'b@x')")
    with database.connect() as conn:
        conn.execute("VACUUM ANALYZE bloated, clean, analysed, emails")
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
    assert evidence["reltuples"] == never["reltuples"] == -1
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


# ---- resets


SLEEP = "SELECT pg_sleep(%s)"
"""One queryid whatever the sleep (the parameter is sent as $1)."""


async def test_pg_stat_reset_and_pg_stat_statements_reset_raise_nothing(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO items SELECT g, g FROM generate_series(1, 5000) g")
    with pg_db.connect() as conn:  # a new session: the INSERT's statistics are flushed
        conn.execute("VACUUM ANALYZE items")
        # A statement with 300 quick calls before the analyser's first snapshot...
        for _ in range(300):
            conn.execute(SLEEP, (0.0,))  # a float: one parameter type, one queryid
    # ... that runs at 5 ms a call after pg_stat_statements_reset(). Its true mean stays
    # under minMeanTime (10 ms), but a delta taken across the reset, from the first snapshot
    # (300 calls, ~0 ms) to one after the reset that has just passed 300 calls again, divides
    # ~5 ms x calls by (calls - 300): over 10 ms until ~600 calls. With minShare 0 any
    # statement over minCalls at that mean is published, so a crossed reset would publish a
    # slow_statement here (seen: 51 ms, 27 ms, ... when the statements epoch is ignored).
    # The regression path needs a baseline behind the 5-minute recent window, longer than
    # this test: the mean is what a crossed reset trips within it.
    limits = {"cache_hit_ratio": {"window": "3s", "minBlocks": 10},
              "dead_tuples": {"minDeadTuples": 1, "autovacuumGrace": "0s"},
              "stale_statistics": {"minModifiedRows": 1},
              "slow_statement": {"minMeanTime": "10ms", "minCalls": 10, "minShare": 0}}
    with workloads.query_loop(pg_db.conninfo, "SELECT v FROM items WHERE id = 42", rate=50):
        async with chain(pg_db, nats_server, tmp_path, **limits) as run:
            await run.snapshots(5)  # the window is covered: the detectors judge
            with pg_db.connect() as conn:
                conn.execute("SELECT pg_stat_reset()")
                conn.execute("SELECT pg_stat_statements_reset()")
            with workloads.query_loop(pg_db.conninfo, SLEEP, (0.005,), rate=50,
                                      application_name="smtest-after-reset") as after:
                # Through the span in which a crossed reset would show a 10 ms+ mean.
                await eventually(lambda: after.calls >= 700, timeout=60)
                await run.snapshots(3)
            assert not after.errors
            assert run.metric("counter_resets_total", scope="database_stats") == 1
            assert run.metric("counter_resets_total", scope="statements") == 1
            # slow_statement judged the statement after the reset and found it fine.
            assert run.metric("detector_errors_total", detector="slow_statement") == 0
            assert run.received == [], run.summaries()
