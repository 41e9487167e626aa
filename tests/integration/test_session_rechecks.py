"""Root blockers, superusers and live thresholds on a real PostgreSQL (issue 17, items 3-5).

Each safety rule has a test that an attacker's or a fault's attempt to break it fails: a
victim of the chain made to look like the root, a pid reused between detection and action, a
protected root, a superuser's session, a detection whose condition never held. Workload
sessions log in as an ordinary role unless the test is about superusers.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from startupmonkey.executor import dbcheck, derive, maintenance, plan, sessions
from startupmonkey.localserv import postgres
from startupmonkey.models import messages, monitor, remediation, thresholds
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, risk_of
from tests.support import executor_helpers, workloads
from tests.support.eventually import eventually, wait_until

pytestmark = pytest.mark.integration
NOBODY = monitor.Protect()
ANY_CHAIN = thresholds.BlockingLock(min_wait="0s", min_blocked=2)
COUNT = "SELECT count(*) FROM orders"


def _activity(conninfo: str, pid: int) -> dict[str, Any]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cursor = conn.execute(
            "SELECT backend_start, xact_start, query_start, state_change, state "
            "FROM pg_catalog.pg_stat_activity WHERE pid = %s", (pid,))
        row = cursor.fetchone()
    assert row is not None
    return dict(zip(("backend_start", "xact_start", "query_start", "state_change", "state"),
                    row, strict=True))


def _idle_row(conninfo: str, pid: int) -> dict[str, Any]:
    wait_until(lambda: _activity(conninfo, pid)["state"] == "idle in transaction", timeout=20)
    return _activity(conninfo, pid)


def _waiting(conninfo: str, pid: int) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted",
                           (pid,)).fetchone()
    assert row is not None
    return bool(row[0])


@contextlib.contextmanager
def lock_chain(conninfo: str, admin: str, readers: int = 2,
               application_name: str = "smtest-lock-holder"
               ) -> Iterator[tuple[workloads.HeldSession, list[workloads.BackgroundQuery]]]:
    """A transaction holding ACCESS EXCLUSIVE on orders, left idle, with readers queued."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id int)")
    with contextlib.ExitStack() as stack:
        holder = stack.enter_context(workloads.hold_lock(conninfo, "orders",
                                                         application_name=application_name))
        queued = [stack.enter_context(workloads.background_query(
            conninfo, COUNT, application_name=f"smtest-reader-{n}")) for n in range(readers)]
        for reader in queued:
            _wait_for(functools.partial(_waiting, admin, reader.pid))
        yield holder, queued


def _wait_for(check: Any) -> None:
    wait_until(check, timeout=20)


def _detection(target: remediation.Target, action: ActionId,
               detector: DetectorId = DetectorId.BLOCKING_LOCK) -> messages.Detection:
    now = datetime.datetime.now(datetime.UTC)
    key = messages.detection_key("tests", "shop", detector, f"pid={target.pid}")
    return messages.Detection(
        id=messages.new_occurrence_id(key, now), key=key, namespace="tests", monitor="shop",
        database=executor_helpers.home_database(),
        detector=detector, proposed_action=action, risk_class=risk_of(action),
        target=target, summary="test", first_seen=now, last_seen=now, published_at=now)


async def test_an_idle_root_blocker_is_terminated_and_the_readers_complete(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    with lock_chain(app_conninfo, pg_db.conninfo) as (holder, readers):
        row = _activity(pg_db.conninfo, holder.pid)
        target = remediation.Target(pid=holder.pid, backend_start=row["backend_start"],
                                    xact_start=row["xact_start"],
                                    state_change=row["state_change"])
        planned = await derive.derive(executor_conn,
                                      _detection(target, ActionId.TERMINATE_SESSION),
                                      thresholds.Thresholds(blocking_lock=ANY_CHAIN))
        assert isinstance(planned, plan.Plan), planned
        assert planned.sql == plan.terminate_root_blocker(
            holder.pid, row["backend_start"], row["xact_start"]).sql
        result = await sessions.end_root_blocker(
            executor_conn, planned, pid=holder.pid, backend_start=row["backend_start"],
            xact_start=row["xact_start"], query_start=row["query_start"], protect=NOBODY,
            limits=ANY_CHAIN)
        assert result.state is RemediationState.SUCCEEDED, result.message
        assert result.before["blocked_sessions"] == 2
        assert result.after == {"session_gone": 1.0, "blocked_sessions": 0.0}
        assert not holder.is_alive()
        for reader in readers:
            await eventually(reader.done.is_set)
            assert reader.error is None and reader.rows == [(0,)]


async def test_an_active_root_has_its_statement_cancelled(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int)")
    # One implicit transaction: the lock is held while the sleep runs.
    with workloads.background_query(
            app_conninfo, "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)",
            application_name="smtest-active-root") as root, contextlib.ExitStack() as stack:
        _wait_for(lambda: _activity(pg_db.conninfo, root.pid)["state"] == "active")
        readers = [stack.enter_context(workloads.background_query(app_conninfo, COUNT))
                   for _ in range(2)]
        for reader in readers:
            _wait_for(functools.partial(_waiting, pg_db.conninfo, reader.pid))
        row = _activity(pg_db.conninfo, root.pid)
        target = remediation.Target(pid=root.pid, backend_start=row["backend_start"],
                                    query_start=row["query_start"])
        planned = await derive.derive(executor_conn, _detection(target, ActionId.CANCEL_QUERY))
        assert isinstance(planned, plan.Plan), planned
        result = await sessions.end_root_blocker(
            executor_conn, planned, pid=root.pid, backend_start=row["backend_start"],
            xact_start=row["xact_start"], query_start=row["query_start"], protect=NOBODY,
            limits=ANY_CHAIN)
        assert result.state is RemediationState.SUCCEEDED, result.message
        assert "cancelled the statement of root blocker" in result.message
        await eventually(root.done.is_set)
        assert isinstance(root.error, psycopg.errors.QueryCanceled)
        for reader in readers:
            await eventually(reader.done.is_set)
            assert reader.error is None


async def test_a_victim_made_to_look_like_the_root_is_never_touched(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    with lock_chain(app_conninfo, pg_db.conninfo) as (holder, readers):
        victim = readers[0]
        row = _activity(pg_db.conninfo, victim.pid)
        forged = remediation.Target(pid=victim.pid, backend_start=row["backend_start"],
                                    query_start=row["query_start"])
        refused = await derive.derive(executor_conn, _detection(forged, ActionId.CANCEL_QUERY))
        assert isinstance(refused, derive.Refusal)
        assert "victim of the chain" in refused.reason and str(holder.pid) in refused.reason
        # Planned anyway (a forged record), the action and the statement itself refuse.
        step = plan.cancel_root_blocker(victim.pid, row["backend_start"], row["query_start"])
        result = await sessions.end_root_blocker(
            executor_conn, step, pid=victim.pid, backend_start=row["backend_start"],
            xact_start=row["xact_start"], query_start=row["query_start"], protect=NOBODY)
        assert result.state is RemediationState.REJECTED and result.executed_sql == []
        assert "victims are never touched" in result.message
        cursor = await executor_conn.execute(step.sql.encode())
        assert await cursor.fetchall() == []
        assert _waiting(pg_db.conninfo, victim.pid) and not victim.done.is_set()
        assert holder.is_alive()


async def test_a_reused_pid_and_a_root_that_stopped_blocking_are_not_touched(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    with lock_chain(app_conninfo, pg_db.conninfo) as (holder, _readers):
        row = _activity(pg_db.conninfo, holder.pid)
        earlier = row["backend_start"] - datetime.timedelta(minutes=5)
        step = plan.terminate_root_blocker(holder.pid, earlier, row["xact_start"])
        result = await sessions.end_root_blocker(
            executor_conn, step, pid=holder.pid, backend_start=earlier,
            xact_start=row["xact_start"], query_start=None, protect=NOBODY)
        assert result.state is RemediationState.REJECTED
        assert "another session" in result.message
        cursor = await executor_conn.execute(step.sql.encode())
        assert await cursor.fetchall() == []
        assert holder.is_alive()
    # The same session, no longer blocking anyone: the statement alone touches nothing.
    with workloads.idle_in_transaction(app_conninfo) as idle:
        row = _idle_row(pg_db.conninfo, idle.pid)
        step = plan.terminate_root_blocker(idle.pid, row["backend_start"], row["xact_start"])
        result = await sessions.end_root_blocker(
            executor_conn, step, pid=idle.pid, backend_start=row["backend_start"],
            xact_start=row["xact_start"], query_start=None, protect=NOBODY)
        assert result.state is RemediationState.REJECTED
        assert result.message == f"pid {idle.pid} no longer blocks anyone"
        cursor = await executor_conn.execute(step.sql.encode())
        assert await cursor.fetchall() == []
        assert idle.is_alive()


async def test_a_protected_root_is_left_alone_with_the_reason(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    protect = monitor.Protect(applications=["nightly-migration"])
    with lock_chain(app_conninfo, pg_db.conninfo,
                    application_name="nightly-migration") as (holder, readers):
        row = _activity(pg_db.conninfo, holder.pid)
        step = plan.terminate_root_blocker(holder.pid, row["backend_start"], row["xact_start"])
        result = await sessions.end_root_blocker(
            executor_conn, step, pid=holder.pid, backend_start=row["backend_start"],
            xact_start=row["xact_start"], query_start=None, protect=protect, limits=ANY_CHAIN)
        assert result.state is RemediationState.REJECTED and result.executed_sql == []
        assert result.message == "application 'nightly-migration' is protected"
        assert holder.is_alive() and not any(r.done.is_set() for r in readers)


async def test_a_chain_under_the_thresholds_is_rejected_with_the_numbers(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    with lock_chain(app_conninfo, pg_db.conninfo) as (holder, _readers):
        row = _activity(pg_db.conninfo, holder.pid)
        step = plan.terminate_root_blocker(holder.pid, row["backend_start"], row["xact_start"])
        for limits in (thresholds.BlockingLock(min_wait="0s", min_blocked=5),
                       thresholds.BlockingLock(min_wait="1h", min_blocked=1)):
            result = await sessions.end_root_blocker(
                executor_conn, step, pid=holder.pid, backend_start=row["backend_start"],
                xact_start=row["xact_start"], query_start=None, protect=NOBODY, limits=limits)
            assert result.state is RemediationState.REJECTED, result.message
            assert result.message.startswith(f"the condition does not hold: pid {holder.pid} "
                                             "blocks 2 session(s)")
            assert result.before["blocked_sessions"] == 2
            target = remediation.Target(pid=holder.pid, backend_start=row["backend_start"],
                                        xact_start=row["xact_start"])
            refused = await derive.derive(executor_conn,
                                          _detection(target, ActionId.TERMINATE_SESSION),
                                          thresholds.Thresholds(blocking_lock=limits))
            assert isinstance(refused, derive.Refusal)
            assert refused.reason.split(", the longest")[0] == \
                result.message.split(", the longest")[0]  # the wait grows in between
        assert holder.is_alive()


async def test_a_session_younger_than_the_threshold_is_rejected_with_the_numbers(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    # A forged detection claims a session idle past the limit; it has been idle a moment.
    with workloads.idle_in_transaction(app_conninfo) as held:
        row = _idle_row(pg_db.conninfo, held.pid)
        target = remediation.Target(pid=held.pid, backend_start=row["backend_start"],
                                    state_change=row["state_change"])
        refused = await derive.derive(
            executor_conn, _detection(target, ActionId.TERMINATE_SESSION,
                                      DetectorId.IDLE_IN_TRANSACTION), thresholds.Thresholds())
        assert isinstance(refused, derive.Refusal)
        assert refused.reason.startswith("the condition does not hold: the session has been "
                                         "idle ")
        assert refused.reason.endswith("under idle_in_transaction.maxDuration (30m)")
        step = plan.terminate_idle_transaction(held.pid, row["backend_start"],
                                               row["state_change"])
        result = await sessions.terminate_idle_transaction(
            executor_conn, step, pid=held.pid, backend_start=row["backend_start"],
            state_change=row["state_change"], protect=NOBODY, min_seconds=1800)
        assert result.state is RemediationState.REJECTED and result.executed_sql == []
        assert result.before["limit_seconds"] == 1800 and result.before["idle_seconds"] < 1800
        assert held.is_alive()
    with workloads.background_query(app_conninfo, "SELECT pg_sleep(60)") as query:
        _wait_for(lambda: _activity(pg_db.conninfo, query.pid)["state"] == "active")
        row = _activity(pg_db.conninfo, query.pid)
        step = plan.cancel_query(query.pid, row["backend_start"], row["query_start"])
        result = await sessions.cancel_query(
            executor_conn, step, pid=query.pid, backend_start=row["backend_start"],
            query_start=row["query_start"], protect=NOBODY, min_seconds=300)
        assert result.state is RemediationState.REJECTED and result.executed_sql == []
        assert "under long_running_query.maxDuration (5m)" in result.message
        assert not query.done.is_set()


@contextlib.contextmanager
def _executor_role(pg_db: postgres.PostgresDatabase) -> Iterator[str]:
    """A minimal executor role (pg_monitor, pg_signal_backend), not a superuser."""
    role = f"smexec_{uuid.uuid4().hex[:8]}"
    pg_db.cluster.create_role(role)
    with pg_db.connect() as conn:
        conn.execute(sql.SQL("GRANT pg_monitor, pg_signal_backend TO {}").format(
            sql.Identifier(role)))
    yield pg_db.conninfo_for(role)


async def test_superusers_sessions_by_default_and_when_the_executor_cannot(
        pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    # The application logs in as the cluster's superuser, as small teams often do.
    with workloads.idle_in_transaction(pg_db.conninfo, application_name="smtest-app") as held:
        row = _idle_row(pg_db.conninfo, held.pid)
        step = plan.terminate_idle_transaction(held.pid, row["backend_start"],
                                               row["state_change"])
        status = await dbcheck.check(executor_conn)
        assert status.superuser_logins == [pg_db.cluster.superuser]
        assert status.executor_superuser is True
        result = await sessions.terminate_idle_transaction(
            executor_conn, step, pid=held.pid, backend_start=row["backend_start"],
            state_change=row["state_change"], protect=NOBODY)
        assert result.state is RemediationState.REJECTED and result.executed_sql == []
        assert "spec.protect.superusers is true (the default)" in result.message
        assert _activity(pg_db.conninfo, held.pid) == row  # untouched (is_alive would not be)
        with _executor_role(pg_db) as weak:
            async with await psycopg.AsyncConnection.connect(
                    weak, autocommit=True, application_name="startupmonkey-executor") as conn:
                assert (await dbcheck.check(conn)).executor_superuser is False
                result = await sessions.terminate_idle_transaction(
                    conn, step, pid=held.pid, backend_start=row["backend_start"],
                    state_change=row["state_change"],
                    protect=monitor.Protect(superusers=False))
        assert result.state is RemediationState.REJECTED and result.executed_sql == []
        assert "is not a superuser: PostgreSQL lets only a superuser signal" in result.message
        assert _activity(pg_db.conninfo, held.pid) == row  # untouched (is_alive would not be)
        # Unprotected and the executor is a superuser: it acts.
        result = await sessions.terminate_idle_transaction(
            executor_conn, step, pid=held.pid, backend_start=row["backend_start"],
            state_change=row["state_change"], protect=monitor.Protect(superusers=False))
        assert result.state is RemediationState.SUCCEEDED, result.message
        assert not held.is_alive()


def _dead_tuples(conninfo: str) -> float:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
        row = conn.execute("SELECT n_dead_tup FROM pg_catalog.pg_stat_user_tables "
                           "WHERE relname = 'orders'").fetchone()
    return float(row[0]) if row else 0.0


async def test_table_maintenance_whose_condition_never_held_is_rejected_with_the_numbers(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    # A forged (or stale) detection says the table needs maintenance; by this executor's own
    # thresholds (the defaults) it never did: 100 modified rows, 50 dead tuples.
    executor_helpers.stale_tables(app_conninfo, "orders", rows=100)
    result = await maintenance.analyze(executor_conn, plan.analyze("public", "orders"),
                                       "public", "orders", trigger=0,
                                       limits=thresholds.StaleStatistics())
    assert result.state is RemediationState.REJECTED and result.executed_sql == []
    assert result.message.startswith("the condition does not hold: 100 rows modified")
    assert "minModifiedRows 1000" in result.message
    assert result.before["n_mod_since_analyze"] == 100 and result.before["trigger"] == 1000
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("DELETE FROM orders WHERE id <= 50")
    wait_until(lambda: _dead_tuples(pg_db.conninfo) == 50, timeout=20)
    result = await maintenance.vacuum(executor_conn, plan.vacuum("public", "orders"),
                                      "public", "orders", limits=thresholds.DeadTuples())
    assert result.state is RemediationState.REJECTED and result.executed_sql == []
    assert result.message.startswith("the condition does not hold: 50 dead tuples")
    assert result.before["n_dead_tup"] == 50 and result.before["autovacuum_trigger"] >= 50
    with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
        counts = conn.execute("SELECT vacuum_count, analyze_count FROM "
                              "pg_catalog.pg_stat_user_tables WHERE relname = 'orders'"
                              ).fetchone()
    assert counts == (0, 0), "nothing ran"
    # The autovacuum trigger is part of the condition: 50 + 0.2 x reltuples (0: never analysed).
    result = await maintenance.vacuum(
        executor_conn, plan.vacuum("public", "orders"), "public", "orders",
        limits=thresholds.DeadTuples(min_dead_tuples=10, min_dead_ratio=0.1))
    assert result.state is RemediationState.REJECTED
    assert "more than the autovacuum trigger of 50" in result.message
    # Under limits the live state meets, the action runs.
    result = await maintenance.analyze(
        executor_conn, plan.analyze("public", "orders"), "public", "orders",
        limits=thresholds.StaleStatistics(min_modified_rows=10))
    assert result.state is RemediationState.SUCCEEDED, result.message
