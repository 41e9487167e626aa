"""Helpers for executor tests: detections built from the real database, configs, a runner.

Detections here are built from what pg_stat_activity and pg_class really say, the way the
analyser would, and published on a real nats-server; nothing stands in for PostgreSQL or NATS.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import prometheus_client
import psycopg

from startupmonkey import db, observability, settings
from startupmonkey.executor import engine as executor_engine
from startupmonkey.executor import main as executor_main
from startupmonkey.executor import records
from startupmonkey.localserv import postgres
from startupmonkey.models import messages, monitor, remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass, risk_of
from tests.support import workloads
from tests.support.eventually import eventually

NAMESPACE, MONITOR = "tests", "shop"
#: Thresholds that the detections built here (``idle_detection``, ``table_detection`` on a few
#: rows) meet at once; a test's own thresholds are merged over them per detector.
SESSION_THRESHOLDS: dict[str, dict[str, Any]] = {
    "idle_in_transaction": {"maxDuration": "0s"},
    "long_running_query": {"maxDuration": "0s"},
    "stale_statistics": {"minModifiedRows": 0, "minModifiedRatio": 0.0001},
    "dead_tuples": {"minDeadTuples": 0, "minDeadRatio": 0.0001}}


#: The home database of the executor of the test (``current_database()`` of the test's
#: ``pg_db``, named by tests/conftest.py, or of the last :func:`config`): the ``database`` of
#: the detections built here, as the analyser sends.
_home: list[str] = []


def name_home_database(name: str | None) -> None:
    """Set (None: forget) the database the detections built here name by default."""
    _home[:] = [] if name is None else [name]


#: The database detections name in a test without PostgreSQL (no executor acts on them).
NO_DATABASE = "db"


def home_database() -> str:
    """The database the detections built here name by default: what PostgreSQL calls the
    test's ``pg_db`` or the database of the last :func:`config` (an executor refuses
    detections of other databases); :data:`NO_DATABASE` in a test without either."""
    return _home[-1] if _home else NO_DATABASE


def current_database(conninfo: str) -> str:
    """``current_database()`` as a connection with ``conninfo`` sees it."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT pg_catalog.current_database()").fetchone()
    assert row is not None
    return str(row[0])



def unreachable_config(tmp_path: Path, databases: list[str] | None = None
                       ) -> settings.ComponentConfig:
    """An executor's config whose database and NATS nobody listens on (port 1), a JSONL store
    and a private socket path: for unit tests of what the executor does before, or without,
    reaching anything."""
    return settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace="prod", name="shop"),
        spec=monitor.DatabaseMonitorSpec.model_validate({
            "database": {"host": "127.0.0.1", "port": 1, "dbname": "shop",
                         "credentialsSecret": {"name": "unused"}}}),
        executor=settings.ExecutorSettings(
            database=settings.DatabaseLogin(host="127.0.0.1", port=1, dbname="shop",
                                            user="nobody"),
            nats=settings.NatsSettings(url="nats://127.0.0.1:1"), reporter="jsonl",
            audit_log=tmp_path / "audit.jsonl", databases=databases or [],
            listen_address="unix:///tmp/unused.sock"))


def config(pg_db: postgres.PostgresDatabase, nats_url: str, tmp_path: Path,
           jetstream: bool = False, namespace: str = NAMESPACE,
           databases: list[str] | None = None,
           **spec: Any) -> settings.ComponentConfig:
    """A rendered executor config for ``pg_db`` (superuser login: tests own the cluster),
    acting also in ``databases`` of the same cluster. Detections built afterwards name
    ``pg_db``'s database (:func:`home_database`)."""
    cluster = pg_db.cluster
    name_home_database(current_database(pg_db.conninfo))
    # The executor re-checks a session's age against its own thresholds (issue 17, item 5):
    # the detections built here are seconds old, so the config's limits are too.
    given = spec.pop("thresholds", {})
    thresholds = {name: {**SESSION_THRESHOLDS.get(name, {}), **given.get(name, {})}
                  for name in {*SESSION_THRESHOLDS, *given}}
    full_spec = {"database": {"host": cluster.host, "port": cluster.port, "dbname": pg_db.dbname,
                              "credentialsSecret": {"name": "unused"}},
                 "interval": "1s", "thresholds": thresholds, **spec}
    return settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace=namespace, name=MONITOR),
        spec=monitor.DatabaseMonitorSpec.model_validate(full_spec),
        executor=settings.ExecutorSettings(
            database=settings.DatabaseLogin(host=cluster.host, port=cluster.port,
                                            dbname=pg_db.dbname, user=cluster.superuser),
            nats=settings.NatsSettings(url=nats_url, jetstream=jetstream),
            reporter="jsonl", audit_log=tmp_path / "audit.jsonl", databases=databases or [],
            # A short private folder: Unix socket paths are limited to 107 bytes.
            listen_address=f"unix://{_socket_folder()}/executor.sock"))


def _socket_folder() -> str:
    """A short private folder for the executor's socket, removed when the test process
    ends (the config outlives the test that made it, so no fixture can own it)."""
    folder = tempfile.mkdtemp(prefix="sm-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _detection(detector: DetectorId, target: remediation.Target, action: ActionId,
               summary: str, namespace: str, database: str | None,
               key_database: str | None) -> messages.Detection:
    """``database`` None: :func:`home_database`; ``key_database``: the ``db=`` part of the key
    (None: a home database's key, without one)."""
    now = datetime.datetime.now(datetime.UTC)
    what = target.table or f"pid-{target.pid}"
    key = messages.detection_key(namespace, MONITOR, detector, f"{target.schema_}.{what}",
                                 key_database)
    seen = now
    return messages.Detection(
        id=messages.new_occurrence_id(key, seen), key=key, namespace=namespace, monitor=MONITOR,
        database=home_database() if database is None else database, detector=detector,
        proposed_action=action,
        risk_class=risk_of(action), target=target, summary=summary,
        first_seen=seen, last_seen=now, published_at=now)


def session_state(conninfo: str, pid: int) -> str | None:
    """``pg_stat_activity.state`` of backend ``pid`` (None: no such session)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = %s",
                           (pid,)).fetchone()
    return None if row is None else str(row[0])


def idle(conninfo: str, pid: int) -> bool:
    """Whether backend ``pid`` sits idle in a transaction."""
    return session_state(conninfo, pid) == "idle in transaction"


def idle_detection(conninfo: str, pid: int, namespace: str = NAMESPACE,
                   key_database: str | None = None) -> messages.Detection:
    """An idle_in_transaction detection for ``pid``, as the analyser would send it: its
    ``database`` is the one ``conninfo`` connects to; ``key_database`` the ``db=`` part of the
    key (a database other than the executor's home one)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT backend_start, state_change, xact_start, "
                           "pg_catalog.current_database() "
                           "FROM pg_catalog.pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    assert row is not None
    target = remediation.Target(pid=pid, backend_start=row[0], state_change=row[1],
                                xact_start=row[2])
    return _detection(DetectorId.IDLE_IN_TRANSACTION, target, ActionId.TERMINATE_SESSION,
                      f"pid {pid} idle in transaction", namespace, str(row[3]), key_database)


def table_detection(table: str, action: ActionId = ActionId.ANALYZE, schema: str = "public",
                    namespace: str = NAMESPACE, database: str | None = None,
                    key_database: str | None = None) -> messages.Detection:
    """A stale_statistics (analyze) or dead_tuples (vacuum) detection for a table, of
    ``database`` (None: :func:`home_database`), its key naming ``key_database``."""
    detector = (DetectorId.STALE_STATISTICS if action is ActionId.ANALYZE
                else DetectorId.DEAD_TUPLES)
    return _detection(detector, remediation.Target(schema=schema, table=table), action,
                      f"{schema}.{table} needs {action.value}", namespace, database,
                      key_database)


def risk(action: ActionId) -> RiskClass:
    """Shorthand."""
    return risk_of(action)


@contextlib.asynccontextmanager
async def running_executor(cfg: settings.ComponentConfig,
                           store: records.Store | None = None) -> AsyncIterator[
                               executor_main.Executor]:
    """An executor (in this process) subscribed and ticking, stopped on exit."""
    obs = observability.Observability("executor")
    executor = executor_main.Executor(cfg, obs, store)
    stop = asyncio.Event()
    await executor.start()
    ticker = asyncio.create_task(executor.tick_forever(stop))
    try:
        yield executor
    finally:
        stop.set()
        await ticker
        await executor.stop()


@contextlib.asynccontextmanager
async def awaiting_approval(cfg: settings.ComponentConfig, store: records.Store,
                            app_conninfo: str, conninfo: str, namespace: str
                            ) -> AsyncIterator[tuple[workloads.HeldSession, str]]:
    """A session idle in its transaction, and a running executor (``cfg`` in mode approval)
    given the detection the analyser would send for it: the session, and the name of the
    PendingApproval Remediation the executor opened."""
    with workloads.idle_in_transaction(app_conninfo) as held:
        await eventually(lambda: idle(conninfo, held.pid), timeout=10)
        detection = idle_detection(conninfo, held.pid, namespace)
        async with running_executor(cfg, store) as executor:
            assert executor.engine is not None
            await executor.engine.handle(detection.encode())

            async def pending() -> list[str]:
                return [r.name for r in await store.list()
                        if r.state is RemediationState.PENDING_APPROVAL]

            (name,) = await eventually(pending, timeout=30)
            yield held, name


async def states(store: records.Store) -> dict[str, str]:
    """Remediation name -> state value."""
    return {r.name: r.state.value for r in await store.list()}


def stale_tables(conninfo: str, *names: str, rows: int = 100) -> None:
    """Create ``names`` with ``rows`` rows each, never analyzed, and wait until
    pg_stat_user_tables counts the modified rows (a backend flushes its statistics at
    its end): an ANALYZE then has something to do, as after a real detection."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for name in names:
            conn.execute(psycopg.sql.SQL(
                "CREATE TABLE {} (id int) WITH (autovacuum_enabled = off)").format(
                psycopg.sql.Identifier(name)))
            conn.execute(psycopg.sql.SQL(
                "INSERT INTO {} SELECT generate_series(1, %s)").format(
                psycopg.sql.Identifier(name)), (rows,))
    deadline = time.monotonic() + 20
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while True:
            conn.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
            counted = conn.execute(
                "SELECT count(*) FROM pg_catalog.pg_stat_user_tables "
                "WHERE relname = ANY(%s) AND n_mod_since_analyze > 0", (list(names),)
            ).fetchone()
            if counted == (len(names),):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"modified rows of {names} never showed in "
                                     "pg_stat_user_tables")
            time.sleep(0.05)


class Announced:
    """An event sink that keeps what it was told (the engine's announcements, in order)."""

    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []

    async def emit(self, record: records.Record) -> None:
        self.states.append((record.name, record.state.value))


def engine(cfg: settings.ComponentConfig, store: records.Store,
           identity: str = "test-executor") -> executor_engine.Engine:
    """A bare engine (no NATS, no API) on ``cfg``'s database login, as one replica would
    build it; feed it with ``await engine.handle(detection.encode())``."""
    assert cfg.executor is not None
    login = cfg.executor.database.login()

    async def connect() -> psycopg.AsyncConnection[Any]:
        return await db.connect(login, executor_main.APPLICATION_NAME)

    return executor_engine.Engine(cfg, store, Announced(), connect, identity,
                                  prometheus_client.CollectorRegistry())


async def publish(url: str, *detections: messages.Detection) -> None:
    """Publish ``detections`` on their own subjects on the NATS at ``url`` (as the analyser
    would), flushed before returning."""
    client = await nats.connect(url)
    try:
        for detection in detections:
            await client.publish(detection.subject, detection.encode())
        await client.flush()
    finally:
        await client.close()
