"""pg_stat_statements read every few rounds (issue 19 item 3) on a real PostgreSQL, a real
collector (default thresholds: > 1,000 entries of this database) streaming over real gRPC to
a real analyser that publishes on a real NATS.

With 2,600 distinct statements seeded the collector reads the statements section every
ceil(2,600 / 1,000) = 3 rounds; the rounds in between leave the section out. The analyser
still finds the slow statement, its rate over a gap is exactly the calls between two reads
over their own sample times, and no section is reported failed anywhere: not in the
snapshots, not in the collector's query failures or readiness, not as "no data" in the
analyser.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from startupmonkey.analyser import history
from startupmonkey.collector import source
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.integration.test_collector_ingest_server import metric, running_collector
from tests.support import workloads
from tests.support.chain import slow_statement_analyser
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration

SEEDED = 2_600
SEED_TABLES = 50
STATEMENTS = pb.SECTION_STATEMENTS


def _seed(database: postgres.PostgresDatabase, count: int) -> float:
    """``count`` distinct statements (each its own queryid) run once each; seconds taken."""
    started = time.monotonic()
    with database.connect() as conn:
        # pg_stat_statements.max is 5,000 for the whole (shared) cluster: make room first, as
        # the other tests that need a known state do, so none of these is evicted.
        conn.execute("SELECT pg_stat_statements_reset()")
        for t in range(SEED_TABLES):
            conn.execute(f"CREATE TABLE seed_{t} (id int)")
        for n in range(count):
            ors = " OR ".join(f"id = {k}" for k in range(n // SEED_TABLES + 1))
            conn.execute(f"SELECT count(*) FROM seed_{n % SEED_TABLES} WHERE {ors}")
        held = conn.execute(
            "SELECT count(*) FROM pg_stat_statements(false) "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        assert held is not None and held[0] >= count
    return time.monotonic() - started


def _calls(sample: history.Sample, queryid: int) -> int:
    """Calls of ``queryid`` in a sample (an older sample keeps only history.KEPT counters)."""
    return sum(int(entry.calls) for key, entry in sample.statements.items() if key[0] == queryid)


async def test_statements_read_every_few_rounds_and_the_slow_one_still_found(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    assert source.STATEMENTS_EVERY_ROUND == 1000  # the default path, nothing lowered
    seconds = _seed(pg_db, SEEDED)
    assert seconds < 30
    async with slow_statement_analyser(pg_db, nats_server.url, tmp_path / "config.yaml") as run:
        analyser = run.analyser
        with (workloads.query_loop(pg_db.conninfo, "SELECT pg_sleep(0.03)", rate=20,
                                   duration=110, application_name="smtest-slow") as slow,
              workloads.query_loop(pg_db.conninfo, "SELECT 1", rate=50, duration=110,
                                   application_name="smtest-trivial")):
            async with running_collector(run.config) as (_, obs):
                await eventually(lambda: analyser.publisher.connected, timeout=10)
                detection = await eventually(run.slow_detection, timeout=60, interval=0.2)
                hist = analyser.engine.histories[(True, pg_db.dbname)]

                def reads(at_least: int) -> list[history.Sample]:
                    with_statements = [s for s in hist.samples if s.present(STATEMENTS)]
                    assert len(with_statements) >= at_least
                    return with_statements

                await eventually(lambda: reads(4), timeout=60)
                failures = obs.registry.get_sample_value(
                    "startupmonkey_collector_query_failures_total",
                    {"query": "statements", "state": "timeout"})
                health = obs.health.report()["dependencies"]["database"]
                not_judged = metric(
                    analyser.obs, "startupmonkey_analyser_detector_no_data_total",
                    detector="slow_statement")
                samples = list(hist.samples)
                asked_again = metric(
                    analyser.obs, "startupmonkey_analyser_statement_reads_unreadable_total",
                    reason="no_base")
        assert slow.calls > 30 and not slow.errors

    # The collector read the section every few rounds, never failed it, said nothing of it.
    sequences = [s.snapshot.sequence for s in samples if s.present(STATEMENTS)]
    gaps = [b - a for a, b in itertools.pairwise(sequences)]
    # The history's first changed-only read was asked again in full (no view of the newest
    # values before it: History.unreadable_statements), its statements ignored: at most one
    # gap spans it.
    assert asked_again <= 1
    assert gaps and sorted(gaps)[-2 if len(gaps) > 1 else -1] <= source.MAX_STATEMENT_SKIP
    assert max(gaps) <= (1 + int(asked_again)) * source.MAX_STATEMENT_SKIP, sequences
    assert any(g >= 2 for g in gaps), sequences
    skipped = [s for s in samples if not s.present(STATEMENTS)]
    assert len(skipped) >= 3
    for sample in samples:
        states = {st.section: st.state for st in sample.snapshot.collector.sections}
        assert set(states.values()) <= {pb.SECTION_STATE_OK}, states
        if not sample.present(STATEMENTS):
            assert STATEMENTS not in states  # not listed: "not collected this round"
            assert not sample.snapshot.HasField("statements_info")
    assert failures is None
    assert not any(name.startswith("startupmonkey_collector_query_failures_total")
                   for family in obs.registry.collect() for name in
                   [s.name for s in family.samples])
    assert health["ok"] and "unavailable" not in health["detail"], health
    # The analyser judged slow_statement on the reads only: "no data" at most for the first
    # read (no earlier sample), never for the skipped rounds.
    assert not_judged <= 1, (not_judged, len(skipped))

    # The detection: the slow statement, over a window between two reads with skipped
    # rounds between them, at exactly the calls between those reads over their own times.
    assert "pg_sleep" in str(detection.evidence["query"])
    assert float(detection.evidence["mean_ms"]) >= 30
    queryid = int(detection.target.queryids[0])
    [latest] = [s for s in samples if s.collected_at == detection.last_seen]
    assert latest.present(STATEMENTS)
    window_s = float(detection.evidence["window_s"])
    [base] = [s for s in samples if s.present(STATEMENTS) and abs(
        (latest.time_of(STATEMENTS) - s.time_of(STATEMENTS)).total_seconds() - window_s) < 0.06]
    between = [s for s in samples if base.collected_at < s.collected_at < latest.collected_at]
    assert any(not s.present(STATEMENTS) for s in between)
    calls = _calls(latest, queryid) - _calls(base, queryid)
    assert int(detection.evidence["calls"]) == calls
    elapsed = (latest.time_of(STATEMENTS) - base.time_of(STATEMENTS)).total_seconds()
    assert float(detection.evidence["calls_per_s"]) == pytest.approx(calls / elapsed, abs=1e-3)
    # About what the workload ran (20 a second), so the gap did not lose or double anything.
    assert 5 < calls / elapsed <= 22
