"""The whole detection chain on a real PostgreSQL: real collector process -> gRPC -> analyser
-> NATS, with real workloads and healthy twins that must produce nothing.

The chain itself (collector subprocess, analyser from the same rendered config file,
thresholds lowered only through ``spec.thresholds``, interval 1s, a plain NATS subscriber)
is ``tests/support/chain.py``; more detectors are in ``test_chain_detectors_more.py``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from startupmonkey.analyser import lifecycle
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models.enums import ActionId, DetectorId
from tests.support import workloads
from tests.support.chain import chain

pytestmark = pytest.mark.integration


# ---- sessions


async def test_idle_in_transaction_one_id_while_it_lasts(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    with (workloads.idle_in_transaction(pg_db.conninfo) as held,
          workloads.query_loop(pg_db.conninfo, "SELECT 1", rate=20,
                               application_name="smtest-healthy") as healthy):
        async with chain(pg_db, nats_server, tmp_path,
                         idle_in_transaction={"maxDuration": "2s"}) as run:
            first = await run.find(DetectorId.IDLE_IN_TRANSACTION,
                                   lambda d: d.target.pid == held.pid)
            assert first.proposed_action is ActionId.TERMINATE_SESSION
            assert first.target.backend_start is not None
            assert first.target.state_change is not None
            assert first.evidence["application"] == held.application_name
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


async def test_long_running_query_and_its_healthy_twin(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    with (workloads.background_query(pg_db.conninfo, "SELECT pg_sleep(60)") as slow,
          workloads.query_loop(pg_db.conninfo, "SELECT pg_sleep(0.05)", rate=10,
                               application_name="smtest-quick")):
        async with chain(pg_db, nats_server, tmp_path,
                         long_running_query={"maxDuration": "2s"}) as run:
            found = await run.find(DetectorId.LONG_RUNNING_QUERY,
                                   lambda d: d.target.pid == slow.pid)
            assert found.proposed_action is ActionId.CANCEL_QUERY
            assert found.target.query_start is not None
            assert "pg_sleep(60)" in str(found.evidence["query"])
            await run.snapshots(3)
            assert {d.target.pid for d in run.received} == {slow.pid}, run.summaries()


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
        assert dead.proposed_action is ActionId.VACUUM and dead.target.schema_ == "public"
        assert dead.evidence["n_dead_tup"] == 10_000
        stale = await run.find(DetectorId.STALE_STATISTICS,
                               lambda d: d.target.table == "stale")
        assert stale.proposed_action is ActionId.ANALYZE
        invalid = await run.find(DetectorId.INVALID_INDEX,
                                 lambda d: d.target.index == "emails_email_key")
        assert invalid.proposed_action is ActionId.DROP_INVALID_INDEX
        assert invalid.target.table == "emails"
        await run.snapshots(3)
        tables = {d.target.table for d in run.received
                  if d.detector in (DetectorId.DEAD_TUPLES, DetectorId.STALE_STATISTICS)}
        assert tables <= {"bloated", "stale"}, run.summaries()  # never clean or analysed
        assert {d.target.index for d in run.of(DetectorId.INVALID_INDEX)} == {"emails_email_key"}


# ---- resets


async def test_pg_stat_reset_raises_nothing(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO items SELECT g, g FROM generate_series(1, 5000) g")
    with pg_db.connect() as conn:  # a new session: the INSERT's statistics are flushed
        conn.execute("VACUUM ANALYZE items")
    with workloads.query_loop(pg_db.conninfo, "SELECT v FROM items WHERE id = 42", rate=50):
        async with chain(pg_db, nats_server, tmp_path,
                         cache_hit_ratio={"window": "3s", "minBlocks": 10},
                         dead_tuples={"minDeadTuples": 1, "autovacuumGrace": "0s"},
                         stale_statistics={"minModifiedRows": 1}) as run:
            await run.snapshots(5)  # the window is covered: the detectors judge
            with pg_db.connect() as conn:
                conn.execute("SELECT pg_stat_reset()")
                conn.execute("SELECT pg_stat_statements_reset()")
            await run.snapshots(8)
            resets = run.analyser.obs.registry.get_sample_value(
                "startupmonkey_analyser_counter_resets_total", {"scope": "database_stats"})
            assert resets == 1
            assert run.received == [], run.summaries()
