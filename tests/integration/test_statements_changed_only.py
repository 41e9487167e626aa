"""Changed-only statement reads (issue 19 items 3 and 4) on a real PostgreSQL, a real
collector streaming over real gRPC to a real analyser that publishes on a real NATS.

With a few hundred statements seeded (run once each, then idle) and a slow and a trivial
statement running, the first statement read of the stream carries every entry; the reads
after it carry only the entries that ran (``StatementsInfo.unchanged_omitted`` counts the
others). The analyser still knows every entry with its newest counters
(``Window.statements``) and finds the slow statement as it does from full reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from startupmonkey.analyser import history
from startupmonkey.collector import stream
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.integration.test_collector_ingest_server import running_collector
from tests.integration.test_statements_every_few_rounds import _seed
from tests.support import workloads
from tests.support.chain import slow_statement_analyser
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration

SEEDED = 300
STATEMENTS = pb.SECTION_STATEMENTS


async def test_reads_after_the_first_carry_only_the_statements_that_ran(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    _seed(pg_db, SEEDED)
    async with slow_statement_analyser(pg_db, nats_server.url, tmp_path / "config.yaml") as run:
        with (workloads.query_loop(pg_db.conninfo, "SELECT pg_sleep(0.03)", rate=20,
                                   duration=60, application_name="smtest-slow") as slow,
              workloads.query_loop(pg_db.conninfo, "SELECT 1", rate=50, duration=60,
                                   application_name="smtest-trivial")):
            async with running_collector(run.config):
                detection = await eventually(run.slow_detection, timeout=60, interval=0.2)
                hist = run.analyser.engine.histories[(True, pg_db.dbname)]

                def changed_only(at_least: int) -> list[history.Sample]:
                    samples = [s for s in hist.samples if s.changed_only]
                    assert len(samples) >= at_least
                    return samples

                await eventually(lambda: changed_only(3), timeout=30)
                samples = list(hist.samples)
                window = hist.window()
        assert slow.calls > 30 and not slow.errors

    # The first read of the stream carried every entry, the later ones only those that ran
    # (but every STATEMENTS_FULL_EVERY-th: the full set again). The first changed-only one
    # was asked again in full (the history keeps no view of the newest values before it has
    # seen one): its statements were ignored, the next read was full.
    reads = [s for s in samples if s.present(STATEMENTS)]
    omitted = [s.snapshot.statements_info.unchanged_omitted for s in reads]
    assert reads[0].snapshot.sequence == 1 and omitted[0] == 0, omitted
    assert [n for n, o in enumerate(omitted) if o == 0] == [0, *range(
        1, len(reads), stream.STATEMENTS_FULL_EVERY)], omitted
    queryid = int(detection.target.queryids[0])
    for sample in [s for s in reads if s.changed_only]:
        carried = len(sample.statements)
        assert carried + sample.snapshot.statements_info.unchanged_omitted >= SEEDED
        assert carried < SEEDED / 2, carried  # the seeded ones did not run again
        assert any(key[0] == queryid for key in sample.statements)  # the slow one ran
    # The analyser still holds every entry with its newest counters.
    seeded = [entry for entry in window.statements.values()
              if entry.calls == 1 and entry.total_exec_time_ms > 0]
    assert len(window.statements) >= SEEDED and len(seeded) >= SEEDED - 10
    slow_now = sum(e.calls for k, e in window.statements.items() if k[0] == queryid)
    assert slow_now >= int(detection.evidence["calls"]) >= 30
    # And finds the slow statement as from full reads.
    assert "pg_sleep" in str(detection.evidence["query"])
    assert float(detection.evidence["mean_ms"]) >= 30
