"""The whole detection chain for integration tests: a real collector process -> gRPC ->
analyser -> NATS, on a real PostgreSQL, with thresholds set only through the rendered config.

The collector runs as ``startupmonkey collector --config FILE`` (a subprocess, as in a
Deployment); the analyser runs in the test's event loop from the *same rendered config file*
(``settings.load`` plus the hot-reload watcher, exactly what ``startupmonkey analyser`` does),
so thresholds are lowered only through ``spec.thresholds`` in that file (:meth:`Chain.retune`
rewrites them there, and the analyser picks them up by hot reload). Interval 1s. Detections
are read off NATS by a plain subscriber, as any consumer would.

Also the pieces for running an analyser on its own (:func:`running_analyser`,
:func:`subscriber`, :func:`http_get`, :func:`metric`), shared by the integration tests that
feed it from a real collector and the component tests that feed it hand-built snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import IO, Any

import nats
import psycopg
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from psycopg import conninfo as pg_conninfo

from startupmonkey import settings
from startupmonkey.analyser import main as analyser_main
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import messages, monitor
from startupmonkey.models.enums import DetectorId
from tests.support.eventually import eventually, wait_until

EXE = Path(sys.executable).with_name("startupmonkey")
NAMESPACE, MONITOR = "tests", "chain"
SUBJECT_PREFIX = f"startupmonkey.v1.{NAMESPACE}.{MONITOR}.detections."


def render(path: Path, database: postgres.PostgresDatabase, nats_url: str,
           thresholds: dict[str, Any], spec: dict[str, Any] | None = None) -> None:
    """The rendered component config both processes read (``spec``: more spec fields)."""
    cluster = database.cluster
    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": cluster.host, "port": cluster.port, "dbname": database.dbname,
                     "credentialsSecret": {"name": "db"}},
        "interval": "1s", "thresholds": thresholds, **(spec or {})})
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
    path: Path
    subjects: list[str] = dataclasses.field(default_factory=list)

    def of(self, detector: DetectorId) -> list[messages.Detection]:
        return [d for d in self.received if d.detector is detector]

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the analyser's own metrics (``startupmonkey_analyser_<name>``)."""
        value = self.analyser.obs.registry.get_sample_value(
            f"startupmonkey_analyser_{name}", labels)
        return value or 0.0

    def accepted(self) -> float:
        return self.metric("snapshots_total", status="accepted")

    async def snapshots(self, count: int) -> None:
        """Wait until ``count`` more snapshots were applied."""
        target = self.accepted() + count
        await eventually(lambda: self.accepted() >= target, timeout=15 + 2 * count)

    async def find(self, detector: DetectorId, match: Callable[[messages.Detection], bool],
                   within: float = 30) -> messages.Detection:
        def check() -> messages.Detection:
            found = [d for d in self.of(detector) if match(d)]
            assert found, f"no {detector.value} detection yet; got {self.summaries()}"
            return found[0]
        return await eventually(check, timeout=within, interval=0.2)

    def summaries(self) -> list[str]:
        return [f"{d.detector.value}: {d.summary}" for d in self.received]

    async def retune(self, **thresholds: Any) -> None:
        """Replace ``spec.thresholds`` in the rendered config file and wait until the
        analyser's hot reload has applied it."""
        config = settings.load(self.path)
        config.spec = monitor.DatabaseMonitorSpec.model_validate(
            {**config.spec.dump(), "thresholds": thresholds})
        self.path.write_text(settings.dump(config))
        wanted = config.spec.thresholds
        await eventually(lambda: self.analyser.engine.thresholds == wanted,
                         timeout=10, what="hot reload of spec.thresholds")


@contextlib.asynccontextmanager
async def running_analyser(config: settings.ComponentConfig
                           ) -> AsyncIterator[analyser_main.Analyser]:
    """An analyser (what ``startupmonkey analyser`` runs) in this event loop, on free ports
    (``.grpc_port``, ``.obs.port``), stopped at the end."""
    analyser = analyser_main.Analyser(config)
    await analyser.start(0, "127.0.0.1")
    try:
        yield analyser
    finally:
        await analyser.stop()


@dataclasses.dataclass
class SlowStatementRun:
    """An analyser (and the config a collector streams to it with) that publishes on NATS,
    with the detections received: the statement tests of issue 19."""

    config: settings.ComponentConfig
    analyser: analyser_main.Analyser
    received: list[messages.Detection]

    def slow_detection(self) -> messages.Detection:
        """The first slow_statement detection received (AssertionError while none)."""
        slow_ones = [d for d in self.received if d.detector is DetectorId.SLOW_STATEMENT]
        assert slow_ones, [d.summary for d in self.received]
        return slow_ones[0]


@contextlib.asynccontextmanager
async def slow_statement_analyser(database: postgres.PostgresDatabase, nats_url: str,
                                  path: Path) -> AsyncIterator[SlowStatementRun]:
    """A running analyser judging ``database`` (``slow_statement.minCalls`` 30), its config
    rendered at ``path`` and pointed at it, and what it publishes collected."""
    render(path, database, nats_url, {"slow_statement": {"minCalls": 30}})
    config = settings.load(path)
    assert config.collector is not None
    received: list[messages.Detection] = []

    async def collect(msg: Msg) -> None:
        received.append(messages.parse_detection(msg.data))

    nc = await nats.connect(nats_url)
    try:
        await nc.subscribe(f"{SUBJECT_PREFIX}>", cb=collect)
        async with running_analyser(config) as analyser:
            config.collector.analyser_address = f"127.0.0.1:{analyser.grpc_port}"
            yield SlowStatementRun(config, analyser, received)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def subscriber(url: str, subject: str, **kwargs: Any
                     ) -> AsyncIterator[tuple[Client, Subscription]]:
    """A plain NATS client subscribed to ``subject`` (``kwargs`` go to ``nats.connect``)."""
    nc = await nats.connect(url, **kwargs)
    try:
        sub = await nc.subscribe(subject)
        await nc.flush()
        yield nc, sub
    finally:
        await nc.close()


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` on 127.0.0.1:``port``: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def metric(analyser: analyser_main.Analyser, name: str, **labels: str) -> float:
    """A sample of an analyser's registry by its full name (0 when absent)."""
    value = analyser.obs.registry.get_sample_value(name, labels or None)
    return value or 0.0


# ---- reading PostgreSQL in the chain tests


def row(database: postgres.PostgresDatabase, query: Any, params: Any = None) -> dict[str, Any]:
    """One row as a dict (asserts there is one)."""
    with database.connect() as conn:
        cursor = conn.execute(query, params)
        values = cursor.fetchone()
        assert values is not None and cursor.description is not None
        return {column.name: value for column, value in zip(cursor.description, values,
                                                             strict=True)}


def one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    """The first value of the one row ``query`` returns (asserts there is one)."""
    values = conn.execute(query, params).fetchone()
    assert values is not None
    return values[0]


def run_flushed(database: postgres.PostgresDatabase, *statements: Any) -> None:
    """Run statements in one session and flush its table statistics to shared memory before
    returning (a closing session flushes them asynchronously: they could arrive after a later
    VACUUM's or ANALYZE's report and undo it)."""
    _run_sent(database, statements)
    _await_fresh(database)


def run_each_flushed(database: postgres.PostgresDatabase, *statements: Any) -> None:
    """Each statement in a session of its own, in turn, its statistics sent before the next
    starts and readable when this returns: a DELETE then a VACUUM with no reader seeing the
    rows dead in between (before 15 a reader could, for half a second, if it waited)."""
    for statement in statements:
        _run_sent(database, [statement])
    _await_fresh(database)


def _run_sent(database: postgres.PostgresDatabase, statements: Sequence[Any]) -> None:
    with database.connect() as conn:
        for statement in statements:
            conn.execute(statement)
        if conn.info.server_version >= 150000:
            conn.execute("SELECT pg_stat_force_next_flush()")
            conn.execute("SELECT 1")  # the forced flush happened before this round trip
            return
        pid = conn.info.backend_pid
    # Before 15 (tests/pg_matrix) an exiting backend sends its statistics to the statistics
    # collector before it leaves pg_stat_activity.
    with database.connect() as watcher:
        gone = "SELECT count(*) = 0 FROM pg_catalog.pg_stat_activity WHERE pid = %s"
        wait_until(lambda: bool(one(watcher, gone, (pid,))), timeout=10)


def _await_fresh(database: postgres.PostgresDatabase) -> None:
    # Before 15, readers accept a statistics file up to 500 ms old: wait until the newest one
    # was written after now (so after every report sent before now).
    with database.connect() as watcher:
        if watcher.info.server_version >= 150000:
            return
        now = one(watcher, "SELECT pg_catalog.clock_timestamp()")
        fresh = "SELECT pg_catalog.pg_stat_get_snapshot_timestamp() > %s"
        wait_until(lambda: bool(one(watcher, fresh, (now,))), timeout=10)


def user_of(conninfo: str) -> str:
    """The login role a connection string names."""
    return str(pg_conninfo.conninfo_to_dict(conninfo)["user"])



# ---- what the chain published


def key(detector: DetectorId, target: str) -> str:
    """The detection key of ``target`` (``schema.table``, ``pid=...``) for this chain's
    monitor."""
    return messages.detection_key(NAMESPACE, MONITOR, detector, target)


def subjects_of(run: Chain, detector: DetectorId) -> set[str]:
    """The NATS subjects the detections of ``detector`` arrived on."""
    return {s for s, d in zip(run.subjects, run.received, strict=True)
            if d.detector is detector}


def assert_on_subject(run: Chain, detector: DetectorId) -> None:
    """Detections of ``detector`` arrived, every one on its own subject
    (``startupmonkey.v1.<ns>.<monitor>.detections.<detector>``) and naming this monitor."""
    assert run.of(detector), f"no {detector.value} detection; got {run.summaries()}"
    assert subjects_of(run, detector) == {SUBJECT_PREFIX + detector.value}
    for d in run.of(detector):
        assert (d.namespace, d.monitor, d.detector) == (NAMESPACE, MONITOR, detector)


@contextlib.asynccontextmanager
async def chain(database: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path,
                spec: dict[str, Any] | None = None, **thresholds: Any) -> AsyncIterator[Chain]:
    path = tmp_path / "config.yaml"
    render(path, database, nats_server.url, thresholds, spec)
    received: list[messages.Detection] = []
    subjects: list[str] = []

    async def collect(msg: Msg) -> None:
        received.append(messages.parse_detection(msg.data))
        subjects.append(msg.subject)

    nc = await nats.connect(nats_server.url)
    await nc.subscribe(f"{SUBJECT_PREFIX}>", cb=collect)
    analyser = analyser_main.Analyser(settings.load(path))
    stop = asyncio.Event()
    await analyser.start(0, "127.0.0.1")
    watcher = asyncio.create_task(settings.ConfigWatcher(path, analyser.reconfigure,
                                                         interval=0.5).run(stop))
    point_collector(path, analyser.grpc_port)
    log_path = tmp_path / "collector.log"
    with log_path.open("wb") as log:
        process = spawn_collector(path, log)
    running = Chain(analyser, received, path, subjects)
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
