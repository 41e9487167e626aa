"""Dead rows hidden by a crash (issue 23): a crash, an immediate shutdown or ``pg_stat_reset()``
starts every statistics counter from zero, so the dead rows a table already has are invisible
to autovacuum and to dead_tuples; nothing would ever vacuum them. stale_statistics flags such a
table once its counters stay lost (``LOST_GRACE``), the executor's ANALYZE counts the dead rows
again, and the usual dead_tuples -> VACUUM follows.

The whole loop, real throughout: a private PostgreSQL crashed with an immediate stop, the real
collector process -> gRPC -> analyser -> NATS -> an executor in auto mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from startupmonkey import settings
from startupmonkey.analyser.detectors import tables
from startupmonkey.executor import maintenance, plan
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import messages, thresholds
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState
from tests.support import chain as chain_support
from tests.support import components
from tests.support import executor_helpers as helpers
from tests.support.chain import chain, row, run_flushed
from tests.support.eventually import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
COUNTERS = ("SELECT n_live_tup, n_dead_tup, vacuum_count, analyze_count, autovacuum_count "
            "FROM pg_stat_user_tables WHERE relname = 'items'")
LIMITS = {"dead_tuples": {"minDeadTuples": 1000, "autovacuumGrace": "0s"}}


def _lost(detection: messages.Detection) -> bool:
    return detection.evidence.get("statistics_lost") is True


async def test_dead_rows_hidden_by_a_crash_are_counted_again_and_vacuumed(
        pg_private_cluster_factory: components.PrivateClusterFactory, nats_server: NatsServer,
        tmp_path: Path) -> None:
    cluster = pg_private_cluster_factory()
    database = cluster.create_database("shop")
    # Autovacuum off for the table: only the product may remove its dead rows.
    run_flushed(database, "CREATE TABLE items (id int PRIMARY KEY, v int) "
                          "WITH (autovacuum_enabled = off)",
                "INSERT INTO items SELECT g, g FROM generate_series(1, 20000) g")
    with database.connect() as conn:
        conn.execute("ANALYZE items")  # reltuples 20,000 in the catalog
    run_flushed(database, "DELETE FROM items WHERE id <= 12000")
    assert row(database, COUNTERS)["n_dead_tup"] == 12_000
    with database.connect() as conn:
        # The test clusters commit asynchronously: without this the DELETE itself could be
        # lost in the crash, and with it the dead rows.
        conn.execute("CHECKPOINT")
    postgres_crash(cluster)
    hidden = row(database, COUNTERS)
    assert (hidden["n_dead_tup"], hidden["n_live_tup"], hidden["analyze_count"]) == (0, 0, 0)

    folder = tmp_path / "executor"
    folder.mkdir()
    cfg = helpers.config(database, nats_server.url, folder, mode="auto", thresholds=LIMITS)
    cfg = cfg.model_copy(update={"monitor": settings.MonitorRef(
        namespace=chain_support.NAMESPACE, name=chain_support.MONITOR)})
    async with (chain(database, nats_server, tmp_path, **LIMITS) as run,
                helpers.running_executor(cfg) as executor):
        found = await run.find(DetectorId.STALE_STATISTICS, _lost,
                               within=tables.LOST_GRACE + 60)
        assert found.evidence["uncounted_rows"] >= 8_000, found.evidence
        assert found.proposed_action is ActionId.ANALYZE

        async def maintained() -> dict[str, str]:
            done = {r.spec.action: r.state.value for r in await executor.store.list()}
            assert done.get(ActionId.VACUUM) == "Succeeded", (
                done, [(r.spec.action, r.status.message) for r in await executor.store.list()])
            return done

        done = await eventually(maintained, timeout=120, interval=0.5)
    assert done[ActionId.ANALYZE] == "Succeeded"
    # Before the ANALYZE nothing saw the dead rows: the first dead_tuples detection came after.
    first_dead = min(d.first_seen for d in run.of(DetectorId.DEAD_TUPLES))
    assert first_dead > found.first_seen
    after = row(database, COUNTERS)
    assert after["vacuum_count"] == 1 and after["autovacuum_count"] == 0, after
    with database.connect() as conn:
        scanned = conn.execute("SELECT count(*) FROM items").fetchone()
    assert scanned == (8_000,)
    assert after["n_dead_tup"] < 1000, after


def postgres_crash(cluster: postgres.PostgresCluster) -> None:
    """An immediate stop (crash recovery on start: the statistics counters start over)."""
    cluster.stop(mode="immediate")
    cluster.start()


async def test_a_claim_of_lost_statistics_on_a_counted_table_is_rejected_with_the_numbers(
        pg_db: postgres.PostgresDatabase, executor_conn: Any) -> None:
    # A detection (or a forged message) saying the counters were lost, for a table whose
    # counters know its rows: the executor's own re-check refuses it, nothing runs.
    run_flushed(pg_db, "CREATE TABLE items (id int PRIMARY KEY, v int)",
                "INSERT INTO items SELECT g, g FROM generate_series(1, 20000) g")
    with pg_db.connect() as conn:
        conn.execute("CREATE INDEX items_v ON items (v)")  # reltuples 20,000, no ANALYZE
    before = row(pg_db, COUNTERS)
    result = await maintenance.analyze(executor_conn, plan.analyze("public", "items"),
                                       "public", "items", trigger=0.0,
                                       limits=thresholds.StaleStatistics(), lost=True)
    assert result.state is RemediationState.REJECTED, result
    assert "count its rows again" in result.message and result.executed_sql == []
    assert row(pg_db, COUNTERS)["analyze_count"] == before["analyze_count"] == 0
