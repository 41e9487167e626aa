"""The whole detection chain on a real PostgreSQL: real collector process -> gRPC -> analyser
-> NATS, with real workloads and healthy twins that must produce nothing.

The collector runs as ``startupmonkey collector --config FILE`` (a subprocess, as in a
Deployment); the analyser runs in the test's event loop from the *same rendered config file*
(``settings.load`` plus the hot-reload watcher, exactly what ``startupmonkey analyser`` does),
so thresholds are lowered only through ``spec.thresholds`` in that file. Interval 1s.
Detections are read off NATS by a plain subscriber, as any consumer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import nats
import pytest
from nats.aio.msg import Msg

from startupmonkey import settings
from startupmonkey.analyser import lifecycle
from startupmonkey.analyser import main as analyser_main
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import messages, monitor
from startupmonkey.models.enums import ActionId, DetectorId
from tests.support import workloads
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration
EXE = Path(sys.executable).with_name("startupmonkey")
NAMESPACE, MONITOR = "tests", "chain"


def render(path: Path, database: postgres.PostgresDatabase, nats_url: str,
           thresholds: dict[str, Any]) -> None:
    """The rendered component config both processes read."""
    cluster = database.cluster
    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": cluster.host, "port": cluster.port, "dbname": database.dbname,
                     "credentialsSecret": {"name": "db"}},
        "interval": "1s", "thresholds": thresholds})
    login = settings.DatabaseLogin(host=cluster.host, port=cluster.port, dbname=database.dbname,
                                   user=cluster.superuser, ssl_mode="disable")
    config = settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace=NAMESPACE, name=MONITOR), spec=spec,
        collector=settings.CollectorSettings(database=login, analyser_address="127.0.0.1:0",
                                             query_timeout="5s"),
        analyser=settings.AnalyserSettings(listen_address="127.0.0.1:0",
                                           nats=settings.NatsSettings(url=nats_url)))
    path.write_text(settings.dump(config))


def point_collector(path: Path, grpc_port: int) -> None:
    config = settings.load(path)
    assert config.collector is not None
    config.collector.analyser_address = f"127.0.0.1:{grpc_port}"
    path.write_text(settings.dump(config))


def spawn_collector(path: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(EXE), "collector", "--config", str(path), "--observability-port",
         str(postgres.free_port())], stdin=subprocess.DEVNULL, stdout=log, stderr=log)


@dataclasses.dataclass
class Chain:
    """A running chain and what came out of it."""

    analyser: analyser_main.Analyser
    received: list[messages.Detection]

    def of(self, detector: DetectorId) -> list[messages.Detection]:
        return [d for d in self.received if d.detector is detector]

    def accepted(self) -> float:
        value = self.analyser.obs.registry.get_sample_value(
            "startupmonkey_analyser_snapshots_total", {"status": "accepted"})
        return value or 0.0

    async def snapshots(self, count: int) -> None:
        """Wait until ``count`` more snapshots were applied."""
        target = self.accepted() + count
        await eventually(lambda: self.accepted() >= target, timeout=15 + 2 * count)

    async def find(self, detector: DetectorId, match: Callable[[messages.Detection], bool]
                   ) -> messages.Detection:
        def check() -> messages.Detection:
            found = [d for d in self.of(detector) if match(d)]
            assert found, f"no {detector.value} detection yet; got {self.summaries()}"
            return found[0]
        return await eventually(check, timeout=30, interval=0.2)

    def summaries(self) -> list[str]:
        return [f"{d.detector.value}: {d.summary}" for d in self.received]


@contextlib.asynccontextmanager
async def chain(database: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path,
                **thresholds: Any) -> AsyncIterator[Chain]:
    path = tmp_path / "config.yaml"
    render(path, database, nats_server.url, thresholds)
    received: list[messages.Detection] = []

    async def collect(msg: Msg) -> None:
        received.append(messages.parse_detection(msg.data))

    nc = await nats.connect(nats_server.url)
    await nc.subscribe(f"startupmonkey.v1.{NAMESPACE}.{MONITOR}.detections.>", cb=collect)
    analyser = analyser_main.Analyser(settings.load(path))
    stop = asyncio.Event()
    await analyser.start(0, "127.0.0.1")
    watcher = asyncio.create_task(settings.ConfigWatcher(path, analyser.reconfigure,
                                                         interval=0.5).run(stop))
    point_collector(path, analyser.grpc_port)
    log_path = tmp_path / "collector.log"
    with log_path.open("wb") as log:
        process = spawn_collector(path, log)
    running = Chain(analyser, received)
    try:
        await eventually(lambda: analyser.publisher.connected, timeout=10)
        await running.snapshots(1)
        yield running
    except BaseException:
        print(log_path.read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)
        stop.set()
        await watcher
        await analyser.stop()
        await nc.close()


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
