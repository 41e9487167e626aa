"""Session detectors through the whole chain on a real PostgreSQL: idle_in_transaction,
long_running_query, blocking_lock and connection_saturation, each with its healthy twin.

The chain (``tests/support/chain.py``): a real collector process -> gRPC -> analyser -> NATS,
thresholds lowered only through ``spec.thresholds`` of the rendered config, interval 1s.
Every detection is checked on its subject and against what PostgreSQL itself reports
(``pg_stat_activity``, ``pg_locks``); connection limits use a private cluster.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from startupmonkey import settings
from startupmonkey.analyser import lifecycle
from startupmonkey.executor import records
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, DetectorId
from tests.support import chain as chain_support
from tests.support import components, executor_helpers, workloads
from tests.support.chain import assert_on_subject, chain, key, one, row, user_of
from tests.support.eventually import eventually, wait_until

pytestmark = pytest.mark.integration


def utc(value: datetime.datetime) -> str:
    """ISO text of a PostgreSQL timestamp as the analyser writes it (UTC)."""
    return value.astimezone(datetime.UTC).isoformat()


def activity(database: postgres.PostgresDatabase, pid: int) -> dict[str, Any]:
    # query_id is PostgreSQL 14+ (tests/pg_matrix runs these on 13 too): NULL before.
    return row(database, "SELECT backend_start, xact_start, query_start, state_change, state, "
                         "(to_jsonb(a) ->> 'query_id')::int8 AS query_id, wait_event_type, "
                         "wait_event FROM pg_stat_activity a WHERE pid = %s", (pid,))


def waiting_on_lock(database: postgres.PostgresDatabase, pid: int) -> bool:
    with database.connect() as conn:
        return bool(one(conn, "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted",
                        (pid,)))


# ---- idle_in_transaction and long_running_query


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
    assert evidence["query"] == "SELECT $1"  # spec.privacy.queryText: normalized
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
    assert evidence["query"] == "SELECT pg_sleep($1)"  # spec.privacy.queryText: normalized
    assert evidence["query_start"] == utc(session["query_start"])
    assert (evidence["wait_event_type"], evidence["wait_event"]) == (
        session["wait_event_type"], session["wait_event"]) == ("Timeout", "PgSleep")
    assert evidence.get("query_id") == session["query_id"]
    version = row(pg_db, "SELECT current_setting('server_version_num')::int AS v", ())["v"]
    assert (session["query_id"] is not None) is (version >= 140000)
    assert evidence["limit_s"] == 2
    running = float(evidence["running_for_s"])
    assert running >= 2  # maxDuration
    assert found.severity == ("critical" if running >= 4 * 2 else "warning")
    assert_on_subject(run, DetectorId.LONG_RUNNING_QUERY)


# ---- blocking_lock


async def test_blocking_lock_reports_the_root_blocker_only_and_its_twin_is_quiet(
        pg_db: postgres.PostgresDatabase, app_conninfo: str, nats_server: NatsServer,
        tmp_path: Path) -> None:
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total int)")
        conn.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 1000) g")
    count = "SELECT count(*) FROM orders"
    with contextlib.ExitStack() as stack:
        # A long reporting transaction that read the table (ACCESS SHARE, held until it ends).
        holder = stack.enter_context(workloads.hold_lock(app_conninfo, "orders",
                                                         mode="ACCESS SHARE"))
        async with chain(pg_db, nats_server, tmp_path,
                         blocking_lock={"minWait": "2s", "minBlocked": 3}) as run:
            # Healthy twin: readers alongside the held lock share it and never wait.
            with contextlib.ExitStack() as readers:
                loops = [readers.enter_context(workloads.query_loop(
                    app_conninfo, count, rate=10, application_name=f"smtest-reader-{n}"))
                    for n in range(3)]
                await run.snapshots(5)
                assert all(loop.calls > 0 and not loop.errors for loop in loops)
            assert run.received == [], run.summaries()

            # The problem: a migration queues for ACCESS EXCLUSIVE behind the reporting
            # transaction, and every new reader queues behind the migration.
            ddl = stack.enter_context(workloads.background_query(
                app_conninfo, "ALTER TABLE orders ADD COLUMN note text",
                application_name="smtest-migration"))
            await eventually(lambda: waiting_on_lock(pg_db, ddl.pid))
            queued = [stack.enter_context(workloads.background_query(
                app_conninfo, count, application_name=f"smtest-queued-{n}")) for n in range(3)]
            for reader in queued:
                await eventually(functools.partial(waiting_on_lock, pg_db, reader.pid))
            found = await run.find(DetectorId.BLOCKING_LOCK, lambda d: True)
            await run.snapshots(3)
            assert not ddl.done.is_set() and not any(r.done.is_set() for r in queued)
    blocked = sorted([ddl.pid, *(r.pid for r in queued)])
    # The root is idle in its transaction: terminate it (issue 17, item 3).
    assert found.proposed_action is ActionId.TERMINATE_SESSION
    assert found.target.pid == holder.pid
    assert found.target.xact_start is not None and found.target.backend_start is not None
    assert found.key.startswith(key(DetectorId.BLOCKING_LOCK, f"pid={holder.pid}@"))
    evidence = found.evidence
    assert evidence["blocked_sessions"] == 4  # the migration and the three readers
    assert evidence["blocked_pids"] == ",".join(map(str, blocked))
    assert float(evidence["longest_wait_s"]) >= 2
    assert evidence["relations"] == "public.orders"
    assert evidence["user"] == user_of(app_conninfo)
    assert evidence["application"] == holder.application_name
    assert evidence["state"] == "idle in transaction"
    assert_on_subject(run, DetectorId.BLOCKING_LOCK)
    # Root only: the migration blocks the readers too, but it waits itself.
    assert {d.key for d in run.received} == {found.key}, run.summaries()


# ---- blocking_lock remediated: the whole chain with an executor in auto mode

MIN_WAIT, INTERVAL = 2.0, 1.0


def chain_executor(database: postgres.PostgresDatabase, nats_url: str, tmp_path: Path
                   ) -> settings.ComponentConfig:
    """An executor of the chain's monitor, in auto mode, one application protected."""
    folder = tmp_path / "executor"
    folder.mkdir()
    cfg = executor_helpers.config(
        database, nats_url, folder, mode="auto",
        protect={"applications": ["smtest-protected-migration"]},
        thresholds={"blocking_lock": {"minWait": f"{MIN_WAIT:.0f}s", "minBlocked": 3}})
    return cfg.model_copy(update={"monitor": settings.MonitorRef(
        namespace=chain_support.NAMESPACE, name=chain_support.MONITOR)})


def first_wait_start(database: postgres.PostgresDatabase, pids: list[int]) -> datetime.datetime:
    with database.connect() as conn:
        start = one(conn, "SELECT min(waitstart) FROM pg_locks WHERE pid = ANY(%s) "
                          "AND NOT granted", (pids,))
    assert isinstance(start, datetime.datetime)
    return start


@contextlib.contextmanager
def migration_with_readers(conninfo: str, database: postgres.PostgresDatabase,
                           application_name: str
                           ) -> Iterator[tuple[workloads.HeldSession,
                                               list[workloads.BackgroundQuery]]]:
    """A migration's transaction holding ACCESS EXCLUSIVE on orders, left idle, with three
    readers queued behind it."""
    with contextlib.ExitStack() as stack:
        holder = stack.enter_context(workloads.hold_lock(conninfo, "orders",
                                                         application_name=application_name))
        readers = [stack.enter_context(workloads.background_query(
            conninfo, "SELECT count(*) FROM orders", application_name=f"smtest-reader-{n}"))
            for n in range(3)]
        for reader in readers:
            wait_until(functools.partial(waiting_on_lock, database, reader.pid), timeout=20)
        yield holder, readers


async def test_an_idle_root_blocker_ends_within_min_wait_and_two_intervals(
        pg_db: postgres.PostgresDatabase, app_conninfo: str, nats_server: NatsServer,
        tmp_path: Path) -> None:
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total int)")
    cfg = chain_executor(pg_db, nats_server.url, tmp_path)
    async with (chain(pg_db, nats_server, tmp_path,
                      blocking_lock={"minWait": f"{MIN_WAIT:.0f}s", "minBlocked": 3}) as run,
                executor_helpers.running_executor(cfg) as executor):
        async def record_of(pid: int, state: str) -> records.Record:
            found = [r for r in await executor.store.list()
                     if r.spec.target.pid == pid and r.state.value == state]
            assert found, [(r.spec.target.pid, r.state.value, r.status.message)
                           for r in await executor.store.list()]
            return found[0]

        # A protected root is left alone, with the reason.
        with migration_with_readers(app_conninfo, pg_db,
                                    "smtest-protected-migration") as (protected, readers):
            refused = await eventually(lambda: record_of(protected.pid, "Rejected"),
                                       timeout=30)
            assert refused.status.message == \
                "application 'smtest-protected-migration' is protected"
            assert refused.spec.detector is DetectorId.BLOCKING_LOCK
            assert activity(pg_db, protected.pid)["state"] == "idle in transaction"
            assert not any(r.done.is_set() for r in readers)
        # The migration case: ended within minWait + 2 intervals, the readers complete.
        with migration_with_readers(app_conninfo, pg_db,
                                    "smtest-migration") as (holder, readers):
            waited_since = first_wait_start(pg_db, [r.pid for r in readers])
            done = await eventually(lambda: record_of(holder.pid, "Succeeded"), timeout=30)
            for reader in readers:
                await eventually(reader.done.is_set, timeout=10)
                assert reader.error is None and reader.rows == [(0,)]
            assert not holder.is_alive()
    ended = done.status.history[-1].time
    assert (ended - waited_since).total_seconds() <= MIN_WAIT + 2 * INTERVAL, (
        ended, waited_since)
    assert done.spec.action is ActionId.TERMINATE_SESSION
    assert done.status.executed_sql == [done.spec.sql]
    assert "pg_blocking_pids" in done.spec.sql
    assert done.status.before["blocked_sessions"] == 3
    assert done.status.after["session_gone"] == 1
    assert run.of(DetectorId.BLOCKING_LOCK)


# ---- connection_saturation


@contextlib.contextmanager
def held_connections(conninfo: str, count: int, application_name: str
                     ) -> Iterator[list[psycopg.Connection[Any]]]:
    """``count`` idle client connections, as a connection pool keeps them."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(psycopg.connect(conninfo, autocommit=True,
                                                   application_name=application_name))
               for _ in range(count)]


async def test_connection_saturation_on_a_small_server_and_its_twin_is_quiet(
        pg_private_cluster_factory: components.PrivateClusterFactory, nats_server: NatsServer,
        tmp_path: Path) -> None:
    cluster = pg_private_cluster_factory({"max_connections": 20})  # 17 usable: 3 reserved
    database = cluster.create_database("shop")
    cluster.create_role("shop_app")
    app = cluster.conninfo("shop", user="shop_app")
    async with chain(database, nats_server, tmp_path) as run:  # default maxRatio 0.8
        # Healthy twin: a pool of 6 connections plus the collector: 7/17 = 41%.
        with held_connections(app, 6, "smtest-pool") as pool:
            await run.snapshots(4)
            assert run.received == [], run.summaries()
            # The problem: the pool grows to 14; with the collector 15/17 = 88%.
            with held_connections(app, 8, "smtest-pool") as more:
                found = await run.find(DetectorId.CONNECTION_SATURATION, lambda d: True)
                assert len(pool) + len(more) == 14
    assert found.proposed_action is ActionId.ADVICE and found.severity == "warning"
    assert found.key == key(DetectorId.CONNECTION_SATURATION, "connections/shop")
    assert found.target == remediation.Target()  # database-wide: no target
    evidence = found.evidence
    assert evidence["usable_connections"] == 17
    assert evidence["client_backends"] == 15
    assert evidence["ratio"] == round(15 / 17, 4)
    assert evidence["database_backends"] == 15
    assert evidence["datconnlimit"] == -1
    assert evidence["idle"] == 14
    assert "smtest-pool=14" in str(evidence["top_applications"])
    assert "88%" in found.summary
    assert_on_subject(run, DetectorId.CONNECTION_SATURATION)
    assert {d.key for d in run.received} == {found.key}, run.summaries()
