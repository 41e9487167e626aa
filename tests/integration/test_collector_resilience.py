"""The collector outlives what goes away: PostgreSQL restarts, the analyser restarts or is down,
a monitoring query runs into its statement_timeout.

Each test uses a real server that really stops: a private PostgreSQL cluster restarted with
``.restart()``, and the recording gRPC server stopped and started again on the same port; the
timeout is a real ``statement_timeout`` cancelling a real query on a schema large enough.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import pytest

from startupmonkey import settings
from startupmonkey.localserv import postgres
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.integration.test_collector_ingest_server import (
    IngestRecorder,
    collector_config,
    ingest_server,
    metric,
    running_collector,
)
from tests.support import components
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration


async def test_survives_a_postgresql_restart(
        pg_private_cluster_factory: components.PrivateClusterFactory) -> None:
    cluster = pg_private_cluster_factory()
    database = cluster.create_database("app")
    database.install_extensions()
    async with (ingest_server() as server,
                running_collector(collector_config(database, server.address)) as (_, obs)):
        await eventually(lambda: len(server.snapshots()) >= 2, timeout=30)
        before = server.latest().database
        await asyncio.to_thread(cluster.restart)
        after = await eventually(lambda: [
            s for s in server.snapshots()
            if s.database.postmaster_start_time != before.postmaster_start_time], timeout=60)
        assert metric(obs, "startupmonkey_collector_reconnects_total", target="database") >= 1
        assert obs.health.report()["dependencies"]["database"]["ok"]
    restarted = after[-1]
    assert restarted.database.system_identifier == before.system_identifier
    assert restarted.database.datid == before.datid
    assert restarted.tables is not None and restarted.collector.sections
    sequences = [r.snapshot.sequence for r in server.received]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    # While the server was down, rounds said so instead of stopping.
    for lost in server.snapshots(connected=False):
        if not lost.collector.connection_error:
            continue
        assert not lost.collector.sections and not lost.tables
        assert lost.database.dbname == "app"


async def test_survives_an_analyser_restart_and_resends_what_was_not_acked(
        pg_db: postgres.PostgresDatabase) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        for n in range(3):
            conn.execute("SELECT * FROM t WHERE id = %s", (n,))
    server = IngestRecorder()
    await server.start()
    try:
        async with running_collector(collector_config(pg_db, server.address)) as (collector,
                                                                                   obs):
            await eventually(lambda: len(server.snapshots()) >= 2, timeout=30)
            await server.stop()
            down_at = collector.sequence
            await eventually(lambda: collector.sequence >= down_at + 3, timeout=30)
            assert len(collector.buffer) >= 2  # unacked rounds are kept
            assert not obs.health.report()["dependencies"]["analyser"]["ok"]
            await server.start()
            up_at = collector.sequence
            await eventually(lambda: any(r.stream == 2 and r.snapshot.sequence > up_at
                                         for r in server.received), timeout=60)
            assert metric(obs, "startupmonkey_collector_reconnects_total",
                          target="analyser") >= 1
            assert obs.health.report()["dependencies"]["analyser"]["ok"]
    finally:
        await server.stop()
    second = [r.snapshot for r in server.received if r.stream == 2]
    # Rounds taken while the analyser was down arrive on the new stream, in order, under
    # their original sequence numbers; nothing was lost with a buffer this large.
    resent = [s.sequence for s in second if down_at < s.sequence <= up_at]
    assert resent == list(range(resent[0], up_at + 1)) and resent[0] <= down_at + 1
    accepted = {r.snapshot.sequence for r in server.received}
    assert accepted >= set(range(1, max(accepted) + 1))
    # Per-stream state starts afresh: catalog on the first snapshot of the new stream, and
    # each statement text at most once per stream.
    assert second[0].HasField("catalog")
    for stream in (1, 2):
        texts: collections.Counter[int] = collections.Counter(
            t.queryid for r in server.received if r.stream == stream
            for t in r.snapshot.statement_texts)
        assert texts and max(texts.values()) == 1


async def test_buffer_keeps_at_most_buffer_snapshots_and_counts_the_dropped(
        pg_db: postgres.PostgresDatabase) -> None:
    server = IngestRecorder()
    await server.start()
    await server.stop()  # a port where nobody listens yet
    config = collector_config(pg_db, server.address, buffer_snapshots=3)
    try:
        async with running_collector(config) as (collector, obs):
            sizes: list[int] = []

            def dropped_enough() -> bool:
                sizes.append(len(collector.buffer))
                return collector.buffer.dropped >= 3

            await eventually(dropped_enough, timeout=30, interval=0.2)
            assert max(sizes) <= 3
            dropped = collector.buffer.dropped
            assert metric(obs, "startupmonkey_collector_snapshots_dropped_total",
                          reason="buffer_full") == dropped
            await server.start()
            await eventually(lambda: len(server.received) >= 4, timeout=60)
    finally:
        await server.stop()
    received = [r.snapshot for r in server.received]
    # The oldest rounds were dropped; what arrives says how many were.
    assert received[0].sequence > dropped
    assert received[0].collector.dropped_snapshots >= dropped
    assert [s.sequence for s in received[:3]] == list(range(received[0].sequence,
                                                            received[0].sequence + 3))


def create_tables(database: postgres.PostgresDatabase, count: int) -> None:
    """``count`` small tables with a primary key, 200 per transaction (each holds locks)."""
    with database.connect() as conn:
        for first in range(1, count + 1, 200):
            conn.execute(f"DO $$ BEGIN FOR i IN {first}..{min(first + 199, count)} LOOP "
                         "EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY)', i); "
                         "END LOOP; END $$")


#: Tables of the statement-timeout test: enough that reading them takes far longer than the
#: cheap sections.
TABLES = 6000


def states(snap: pb.Snapshot) -> dict[int, int]:
    return {s.section: s.state for s in snap.collector.sections}


async def test_a_section_over_its_statement_timeout_is_reported_and_rounds_go_on(
        pg_db: postgres.PostgresDatabase, tmp_path: Path) -> None:
    # 6,000 tables: reading their statistics takes ~0.2 s (TABLES), twice a 100 ms
    # queryTimeout, while DATABASE and SESSIONS take a few ms: 30 times inside it, so a
    # loaded machine (three suites on two cores exceeded a 25 ms timeout in every section)
    # still tells them apart.
    create_tables(pg_db, TABLES)
    path = tmp_path / "config.yaml"
    async with ingest_server() as server:
        config = collector_config(pg_db, server.address, query_timeout="100ms")
        assert config.collector is not None
        path.write_text(settings.dump(config))
        async with running_collector(config, config_path=path) as (collector, obs):
            def timed_out() -> pb.Snapshot:
                snap = server.latest()
                sections = states(snap)
                assert sections.get(pb.SECTION_TABLES) == pb.SECTION_STATE_TIMEOUT, sections
                assert sections.get(pb.SECTION_DATABASE) == pb.SECTION_STATE_OK, sections
                assert sections.get(pb.SECTION_SESSIONS) == pb.SECTION_STATE_OK, sections
                return snap

            snap = await eventually(timed_out, timeout=30)
            failures = metric(obs, "startupmonkey_collector_query_failures_total",
                              query="tables", state="timeout")
            assert failures >= 1
            # Rounds go on, on the same connection (a cancelled query is not a lost one),
            # and keep counting the section's timeouts.
            await eventually(lambda: len([s for s in server.snapshots()
                                          if s.sequence > snap.sequence]) >= 3, timeout=30)
            await eventually(lambda: metric(obs, "startupmonkey_collector_query_failures_total",
                                            query="tables", state="timeout") > failures,
                             timeout=30)
            assert metric(obs, "startupmonkey_collector_reconnects_total",
                          target="database") == 0
            assert obs.health.report()["dependencies"]["database"]["ok"]
            # The timeout is the configured one: raised (hot reload), the section is back.
            config.collector.query_timeout = "5s"
            path.write_text(settings.dump(config))
            back = await eventually(lambda: [s for s in server.snapshots() if states(s).get(
                pb.SECTION_TABLES) == pb.SECTION_STATE_OK], timeout=30)
            assert collector.options.query_timeout_ms == 5000
    section = next(s for s in snap.collector.sections if s.section == pb.SECTION_TABLES)
    assert "statement timeout" in section.message
    assert not snap.tables  # a failed section is missing from the snapshot, not empty
    assert snap.database.datid and snap.database_stats.xact_commit > 0  # the others went out
    assert any(s.pid for s in snap.sessions)
    assert len(back[-1].tables) >= TABLES
    received = [r.snapshot for r in server.received]
    assert not any(s.collector.connection_error for s in received)
    assert [s.sequence for s in received] == list(range(1, len(received) + 1))
