"""Executor actions on a real PostgreSQL: each success path, and every re-check that refuses.

Workload sessions log in as an ordinary role (superusers' sessions are never touched); the
executor connects as the cluster's superuser here. The minimal executor role is tested with the
executor service itself.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from typing import Any

import psycopg
import pytest

from startupmonkey.executor import dbcheck, guard, maintenance, plan, sessions
from startupmonkey.localserv import postgres
from startupmonkey.models import monitor
from startupmonkey.models.enums import RemediationState, RiskClass
from tests.support import workloads
from tests.support.eventually import wait_until

pytestmark = pytest.mark.integration
NOBODY = monitor.Protect()


def _activity(conninfo: str, pid: int) -> dict[str, Any]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cursor = conn.execute(
            "SELECT backend_start, query_start, state_change, state "
            "FROM pg_catalog.pg_stat_activity WHERE pid = %s", (pid,))
        row = cursor.fetchone()
    assert row is not None
    return dict(zip(("backend_start", "query_start", "state_change", "state"), row, strict=True))


def _wait_state(conninfo: str, pid: int, state: str) -> dict[str, Any]:
    wait_until(lambda: _activity(conninfo, pid)["state"] == state, timeout=10)
    return _activity(conninfo, pid)


async def test_idle_transaction_is_terminated(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    with workloads.idle_in_transaction(app_conninfo) as held:
        row = _wait_state(pg_db.conninfo, held.pid, "idle in transaction")
        step = plan.terminate_idle_transaction(held.pid, row["backend_start"],
                                               row["state_change"])
        async with guard.guarded(executor_conn, RiskClass.SESSION, "1s", "10s"):
            result = await sessions.terminate_idle_transaction(
                executor_conn, step, pid=held.pid, backend_start=row["backend_start"],
                state_change=row["state_change"], protect=NOBODY)
        assert result.state is RemediationState.SUCCEEDED, result.message
        assert result.executed_sql == [step.sql]
        assert result.before["idle_seconds"] >= 0
        assert not held.is_alive()


async def test_a_reused_pid_is_not_touched(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    with workloads.idle_in_transaction(app_conninfo) as held:
        row = _wait_state(pg_db.conninfo, held.pid, "idle in transaction")
        # The detection was about an earlier session that had this pid: its backend start
        # differs from the session that owns the pid now.
        earlier = row["backend_start"] - datetime.timedelta(minutes=5)
        step = plan.terminate_idle_transaction(held.pid, earlier, row["state_change"])
        result = await sessions.terminate_idle_transaction(
            executor_conn, step, pid=held.pid, backend_start=earlier,
            state_change=row["state_change"], protect=NOBODY)
        assert result.state is RemediationState.REJECTED
        assert "another session" in result.message
        # Even the planned statement alone (the guard in the SQL) touches nothing.
        cursor = await executor_conn.execute(step.sql.encode())
        assert await cursor.fetchall() == []
        assert held.is_alive()


async def test_a_session_that_moved_on_is_not_touched(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    with workloads.idle_in_transaction(app_conninfo) as held:
        flagged = _wait_state(pg_db.conninfo, held.pid, "idle in transaction")
        held.connection.commit()
        held.connection.execute("SELECT 2")  # a new transaction, idle again
        wait_until(lambda: _activity(pg_db.conninfo, held.pid)["state_change"]
                   != flagged["state_change"], timeout=10)
        step = plan.terminate_idle_transaction(held.pid, flagged["backend_start"],
                                               flagged["state_change"])
        result = await sessions.terminate_idle_transaction(
            executor_conn, step, pid=held.pid, backend_start=flagged["backend_start"],
            state_change=flagged["state_change"], protect=NOBODY)
        assert result.state is RemediationState.REJECTED
        assert "moved on" in result.message
        assert held.is_alive()


async def test_a_protected_application_is_not_touched(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    protect = monitor.Protect(applications=["nightly-report"])
    with workloads.idle_in_transaction(app_conninfo, application_name="nightly-report") as held:
        row = _wait_state(pg_db.conninfo, held.pid, "idle in transaction")
        step = plan.terminate_idle_transaction(held.pid, row["backend_start"],
                                               row["state_change"])
        result = await sessions.terminate_idle_transaction(
            executor_conn, step, pid=held.pid, backend_start=row["backend_start"],
            state_change=row["state_change"], protect=protect)
        assert result.state is RemediationState.REJECTED
        assert "'nightly-report' is protected" in result.message
        assert held.is_alive()


async def test_a_protected_users_session_is_not_touched(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    user = psycopg.conninfo.conninfo_to_dict(app_conninfo)["user"]
    assert isinstance(user, str)
    with workloads.idle_in_transaction(app_conninfo) as held:
        row = _wait_state(pg_db.conninfo, held.pid, "idle in transaction")
        step = plan.terminate_idle_transaction(held.pid, row["backend_start"],
                                               row["state_change"])
        result = await sessions.terminate_idle_transaction(
            executor_conn, step, pid=held.pid, backend_start=row["backend_start"],
            state_change=row["state_change"],
            protect=monitor.Protect(users=["someone-else", user]))
        assert result.state is RemediationState.REJECTED
        assert result.message == f"user {user!r} is protected"
        assert result.executed_sql == []
        assert held.is_alive()
    with workloads.background_query(app_conninfo, "SELECT pg_sleep(60)") as query:
        row = _wait_state(pg_db.conninfo, query.pid, "active")
        step = plan.cancel_query(query.pid, row["backend_start"], row["query_start"])
        result = await sessions.cancel_query(
            executor_conn, step, pid=query.pid, backend_start=row["backend_start"],
            query_start=row["query_start"], protect=monitor.Protect(users=[user]),
            terminate_after=1.0)
        assert result.state is RemediationState.REJECTED
        assert result.message == f"user {user!r} is protected"
        assert not query.done.wait(1.5), "the protected user's query was cancelled"


async def test_a_member_of_a_protected_role_is_not_touched(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    """Membership through another role counts: reporter is in analysts, analysts in
    reporting, and "reporting" is protected. The same session is terminated once the
    protection names a role it is not in, so it is the membership that protects it."""
    suffix = uuid.uuid4().hex[:8]
    reporting, analysts, reporter = (f"reporting_{suffix}", f"analysts_{suffix}",
                                     f"reporter_{suffix}")
    pg_cluster.create_role(reporting, login=False)
    pg_cluster.create_role(analysts, login=False, member_of=[reporting])
    pg_cluster.create_role(reporter, member_of=[analysts])
    with workloads.idle_in_transaction(pg_db.conninfo_for(reporter)) as held:
        row = _wait_state(pg_db.conninfo, held.pid, "idle in transaction")
        step = plan.terminate_idle_transaction(held.pid, row["backend_start"],
                                               row["state_change"])
        result = await sessions.terminate_idle_transaction(
            executor_conn, step, pid=held.pid, backend_start=row["backend_start"],
            state_change=row["state_change"], protect=monitor.Protect(roles=[reporting]))
        assert result.state is RemediationState.REJECTED
        assert result.message == f"user {reporter!r} is a member of a protected role"
        # Looked at from outside: a query on the held connection would move the session on.
        assert _activity(pg_db.conninfo, held.pid)["state_change"] == row["state_change"]
        unrelated = f"unrelated_{suffix}"
        pg_cluster.create_role(unrelated, login=False)
        result = await sessions.terminate_idle_transaction(
            executor_conn, step, pid=held.pid, backend_start=row["backend_start"],
            state_change=row["state_change"], protect=monitor.Protect(roles=[unrelated]))
        assert result.state is RemediationState.SUCCEEDED, result.message
        assert not held.is_alive()


async def test_a_superuser_session_is_not_touched(
        pg_db: postgres.PostgresDatabase, executor_conn: psycopg.AsyncConnection[Any]) -> None:
    with workloads.idle_in_transaction(pg_db.conninfo) as held:
        row = _wait_state(pg_db.conninfo, held.pid, "idle in transaction")
        step = plan.terminate_idle_transaction(held.pid, row["backend_start"],
                                               row["state_change"])
        result = await sessions.terminate_idle_transaction(
            executor_conn, step, pid=held.pid, backend_start=row["backend_start"],
            state_change=row["state_change"], protect=NOBODY)
        assert result.state is RemediationState.REJECTED
        assert "superuser" in result.message
        assert held.is_alive()


async def test_a_long_query_is_cancelled(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    with workloads.background_query(app_conninfo, "SELECT pg_sleep(60)") as query:
        row = _wait_state(pg_db.conninfo, query.pid, "active")
        step = plan.cancel_query(query.pid, row["backend_start"], row["query_start"])
        async with guard.guarded(executor_conn, RiskClass.SESSION, "1s", "10s"):
            result = await sessions.cancel_query(
                executor_conn, step, pid=query.pid, backend_start=row["backend_start"],
                query_start=row["query_start"], protect=NOBODY)
        assert result.state is RemediationState.SUCCEEDED, result.message
        assert query.done.wait(10)
    assert isinstance(query.error, psycopg.errors.QueryCanceled)


#: A statement that ignores cancels: each pg_sleep runs in a PL/pgSQL block that catches
#: query_canceled (what a cancel raises) and goes on; only a terminate (FATAL, not catchable)
#: ends it. Bounded to 30 s of wall clock so a failing test cannot leave it behind for ever.
_IGNORES_CANCEL = """DO $$
BEGIN
  WHILE pg_catalog.clock_timestamp() < pg_catalog.now() + interval '30 seconds' LOOP
    BEGIN
      PERFORM pg_catalog.pg_sleep(0.1);
    EXCEPTION WHEN query_canceled THEN
      NULL;
    END;
  END LOOP;
END
$$"""


def _terminate(conninfo: str, pid: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (pid,))


async def test_a_query_that_ignores_the_cancel_is_terminated_after_terminate_after(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    with workloads.background_query(app_conninfo, _IGNORES_CANCEL) as query:
        try:
            row = _wait_state(pg_db.conninfo, query.pid, "active")
            step = plan.cancel_query(query.pid, row["backend_start"], row["query_start"])
            kill = plan.terminate_query(query.pid, row["backend_start"], row["query_start"])
            async with guard.guarded(executor_conn, RiskClass.SESSION, "1s", "10s"):
                result = await sessions.cancel_query(
                    executor_conn, step, pid=query.pid, backend_start=row["backend_start"],
                    query_start=row["query_start"], protect=NOBODY, terminate_after=1.0)
            assert result.state is RemediationState.SUCCEEDED, result.message
            assert result.message.startswith(f"terminated pid {query.pid}")
            assert result.executed_sql == [step.sql, kill.sql]
            assert result.after == {"still_running": 0.0}
            assert query.done.wait(10)
        finally:
            _terminate(pg_db.conninfo, query.pid)
    assert isinstance(query.error, psycopg.OperationalError)
    assert not isinstance(query.error, psycopg.errors.QueryCanceled)


async def test_a_query_that_ignores_the_cancel_fails_without_terminate_after(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    """The same statement with no terminateAfter: the cancel is sent, the query keeps running,
    the outcome says so (Failed) and nothing more is done to the session."""
    with workloads.background_query(app_conninfo, _IGNORES_CANCEL) as query:
        try:
            row = _wait_state(pg_db.conninfo, query.pid, "active")
            step = plan.cancel_query(query.pid, row["backend_start"], row["query_start"])
            async with guard.guarded(executor_conn, RiskClass.SESSION, "1s", "10s"):
                result = await sessions.cancel_query(
                    executor_conn, step, pid=query.pid, backend_start=row["backend_start"],
                    query_start=row["query_start"], protect=NOBODY)
            assert result.state is RemediationState.FAILED, result.message
            assert "kept running after the cancel" in result.message
            assert result.executed_sql == [step.sql]
            assert _activity(pg_db.conninfo, query.pid)["query_start"] == row["query_start"]
            assert not query.done.is_set()
        finally:
            _terminate(pg_db.conninfo, query.pid)


def _dead_tuples_table(conninfo: str, name: str = "orders", rows: int = 20000) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{name}" (id int PRIMARY KEY, v text) '  # type: ignore[arg-type]
                     "WITH (autovacuum_enabled = false)")
        conn.execute(f'INSERT INTO "{name}" SELECT g, md5(g::text) '  # type: ignore[arg-type]
                     f"FROM generate_series(1, {rows}) g")


def _delete_half(conninfo: str, name: str = "orders") -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DELETE FROM "{name}" WHERE id % 2 = 0')  # type: ignore[arg-type]


async def _counter(conn: psycopg.AsyncConnection[Any], table: str = "orders",
                   counter: str = "n_dead_tup") -> float:
    counters = await maintenance.table_counters(conn, "public", table)
    assert counters is not None
    return counters[counter]


async def test_vacuum_removes_dead_tuples(
        app_conninfo: str, executor_conn: psycopg.AsyncConnection[Any]) -> None:
    _dead_tuples_table(app_conninfo)
    _delete_half(app_conninfo)
    await _eventually_dead(executor_conn)
    step = plan.vacuum("public", "orders")
    async with guard.guarded(executor_conn, RiskClass.MAINTENANCE, "5s", "5m"):
        result = await maintenance.vacuum(executor_conn, step, "public", "orders")
    assert result.state is RemediationState.SUCCEEDED, result.message
    assert result.before["n_dead_tup"] >= 10000
    assert result.after["dead_removed"] >= 10000
    assert result.after["n_dead_tup"] < result.before["n_dead_tup"]


async def _eventually_counted(conn: psycopg.AsyncConnection[Any], table: str = "orders",
                              counter: str = "n_dead_tup") -> float:
    for _ in range(100):
        if (value := await _counter(conn, table, counter)) > 0:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{counter} of {table} never showed in pg_stat_user_tables")


async def _eventually_dead(conn: psycopg.AsyncConnection[Any]) -> None:
    await _eventually_counted(conn)


async def test_vacuum_is_rejected_when_the_dead_tuples_are_back_under_the_trigger(
        app_conninfo: str, executor_conn: psycopg.AsyncConnection[Any]) -> None:
    _dead_tuples_table(app_conninfo)
    _delete_half(app_conninfo)
    await _eventually_dead(executor_conn)
    step = plan.vacuum("public", "orders")
    async with guard.guarded(executor_conn, RiskClass.MAINTENANCE, "5s", "5m"):
        result = await maintenance.vacuum(executor_conn, step, "public", "orders",
                                          trigger=50000)
    assert result.state is RemediationState.REJECTED
    assert "under the trigger of 50000" in result.message
    assert result.executed_sql == []
    assert await _counter(executor_conn) >= 10000, "nothing was vacuumed"


async def test_vacuum_blocked_by_an_old_snapshot_names_the_holder(
        app_conninfo: str, executor_conn: psycopg.AsyncConnection[Any]) -> None:
    _dead_tuples_table(app_conninfo)
    with workloads.idle_in_transaction(
            app_conninfo, statement="SELECT pg_catalog.txid_current()",
            application_name="forgotten-migration") as holder:
        _delete_half(app_conninfo)
        await _eventually_dead(executor_conn)
        step = plan.vacuum("public", "orders")
        async with guard.guarded(executor_conn, RiskClass.MAINTENANCE, "5s", "5m"):
            result = await maintenance.vacuum(executor_conn, step, "public", "orders")
        assert result.state is RemediationState.FAILED
        assert f"session {holder.pid}" in result.message
        assert "forgotten-migration" in result.message
        assert result.after["dead_not_removable"] >= 10000


async def test_vacuum_is_rejected_when_a_holder_began_before_the_detection(
        app_conninfo: str, executor_conn: psycopg.AsyncConnection[Any]) -> None:
    _dead_tuples_table(app_conninfo)
    with workloads.idle_in_transaction(
            app_conninfo, statement="SELECT pg_catalog.txid_current()",
            application_name="forgotten-migration") as holder:
        _delete_half(app_conninfo)
        await _eventually_dead(executor_conn)
        detected = datetime.datetime.now(datetime.UTC)
        step = plan.vacuum("public", "orders")
        async with guard.guarded(executor_conn, RiskClass.MAINTENANCE, "5s", "5m"):
            result = await maintenance.vacuum(executor_conn, step, "public", "orders",
                                              detected=detected)
        assert result.state is RemediationState.REJECTED, result.message
        assert f"session {holder.pid}" in result.message
        assert "forgotten-migration" in result.message
        assert "Nothing ran" in result.message
        assert result.executed_sql == []
        assert result.before["n_dead_tup"] >= 10000
        assert await _counter(executor_conn, counter="vacuum_count") == 0
        assert holder.is_alive()


async def test_vacuum_runs_when_the_holder_began_after_the_detection(
        app_conninfo: str, executor_conn: psycopg.AsyncConnection[Any]) -> None:
    """Dead tuples detected before a holder took its snapshot are removable: VACUUM runs (and
    removes them); a holder is no reason to refuse unless it is older than the detection."""
    _dead_tuples_table(app_conninfo)
    _delete_half(app_conninfo)
    await _eventually_dead(executor_conn)
    detected = datetime.datetime.now(datetime.UTC)
    with workloads.idle_in_transaction(
            app_conninfo, statement="SELECT pg_catalog.txid_current()",
            application_name="later-report") as holder:
        with psycopg.connect(app_conninfo, autocommit=True) as conn:
            began = conn.execute("SELECT xact_start FROM pg_catalog.pg_stat_activity "
                                 "WHERE pid = %s", (holder.pid,)).fetchone()
        assert began is not None and began[0] > detected
        step = plan.vacuum("public", "orders")
        async with guard.guarded(executor_conn, RiskClass.MAINTENANCE, "5s", "5m"):
            result = await maintenance.vacuum(executor_conn, step, "public", "orders",
                                              detected=detected)
        assert result.state is RemediationState.SUCCEEDED, result.message
        assert result.after["dead_removed"] >= 10000
        assert result.executed_sql == [step.sql]


async def test_analyze_refreshes_statistics(
        app_conninfo: str, executor_conn: psycopg.AsyncConnection[Any]) -> None:
    _dead_tuples_table(app_conninfo, rows=5000)
    await _eventually_counted(executor_conn, counter="n_mod_since_analyze")
    step = plan.analyze("public", "orders")
    async with guard.guarded(executor_conn, RiskClass.MAINTENANCE, "5s", "5m"):
        result = await maintenance.analyze(executor_conn, step, "public", "orders",
                                           trigger=1000)
    assert result.state is RemediationState.SUCCEEDED, result.message
    assert result.after["analyze_count"] == result.before["analyze_count"] + 1


async def test_analyze_is_rejected_when_someone_analyzed_since_the_detection(
        app_conninfo: str, executor_conn: psycopg.AsyncConnection[Any]) -> None:
    _dead_tuples_table(app_conninfo, rows=5000)
    await _eventually_counted(executor_conn, counter="n_mod_since_analyze")
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("ANALYZE orders")
    analyzed = await _counter(executor_conn, counter="analyze_count")
    step = plan.analyze("public", "orders")
    async with guard.guarded(executor_conn, RiskClass.MAINTENANCE, "5s", "5m"):
        result = await maintenance.analyze(executor_conn, step, "public", "orders",
                                           trigger=1000)
    assert result.state is RemediationState.REJECTED
    assert "nothing to do" in result.message
    assert result.executed_sql == []
    assert await _counter(executor_conn, counter="analyze_count") == analyzed


async def test_hostile_table_names_are_quoted(
        app_conninfo: str, executor_conn: psycopg.AsyncConnection[Any]) -> None:
    name = 'Order "Items"; DROP TABLE x'
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE TABLE {} (id int)").format(
            psycopg.sql.Identifier(name)))
        conn.execute(psycopg.sql.SQL("INSERT INTO {} VALUES (1)").format(
            psycopg.sql.Identifier(name)))
    await _eventually_counted(executor_conn, name, "n_mod_since_analyze")
    step = plan.analyze("public", name)
    result = await maintenance.analyze(executor_conn, step, "public", name)
    assert result.state is RemediationState.SUCCEEDED, result.message


async def test_one_action_per_risk_class_at_a_time(
        pg_db: postgres.PostgresDatabase, executor_conn: psycopg.AsyncConnection[Any]) -> None:
    other = await psycopg.AsyncConnection.connect(pg_db.conninfo, autocommit=True)
    try:
        async with guard.guarded(other, RiskClass.DDL, "5s", "1m"):
            with pytest.raises(guard.Busy, match="another ddl action"):
                async with guard.guarded(executor_conn, RiskClass.DDL, "5s", "1m"):
                    pass
            async with guard.guarded(executor_conn, RiskClass.SESSION, "1s", "10s"):
                cursor = await executor_conn.execute("SHOW lock_timeout")
                assert await cursor.fetchone() == ("1s",)
        cursor = await executor_conn.execute("SHOW lock_timeout")
        assert await cursor.fetchone() == ("0",)
        async with guard.guarded(executor_conn, RiskClass.DDL, "5s", "1m"):
            pass
    finally:
        await other.close()



async def test_the_minimal_executor_role_is_enough(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        app_conninfo: str) -> None:
    """pg_monitor + pg_signal_backend + membership in the owning role: every action works."""
    owner = app_conninfo.split("user=")[1].split()[0]
    role = f"sm_executor_{uuid.uuid4().hex[:6]}"
    pg_cluster.create_role(role, member_of=["pg_monitor", "pg_signal_backend", owner])
    _dead_tuples_table(app_conninfo, rows=5000)
    _delete_half(app_conninfo)
    conn = await psycopg.AsyncConnection.connect(pg_db.conninfo_for(role), autocommit=True)
    try:
        status = await dbcheck.check(conn)
        assert status.privileges_missing == []
        await _eventually_dead(conn)
        async with guard.guarded(conn, RiskClass.MAINTENANCE, "5s", "5m"):
            vacuumed = await maintenance.vacuum(conn, plan.vacuum("public", "orders"),
                                                "public", "orders")
        assert vacuumed.state is RemediationState.SUCCEEDED, vacuumed.message
        with workloads.idle_in_transaction(app_conninfo) as held:
            row = _wait_state(pg_db.conninfo, held.pid, "idle in transaction")
            step = plan.terminate_idle_transaction(held.pid, row["backend_start"],
                                                   row["state_change"])
            ended = await sessions.terminate_idle_transaction(
                conn, step, pid=held.pid, backend_start=row["backend_start"],
                state_change=row["state_change"], protect=NOBODY)
            assert ended.state is RemediationState.SUCCEEDED, ended.message
    finally:
        await conn.close()


async def test_missing_privileges_are_reported(pg_cluster: postgres.PostgresCluster,
                                               pg_db: postgres.PostgresDatabase) -> None:
    role = f"sm_weak_{uuid.uuid4().hex[:6]}"
    pg_cluster.create_role(role)
    conn = await psycopg.AsyncConnection.connect(pg_db.conninfo_for(role), autocommit=True)
    try:
        status = await dbcheck.check(conn)
    finally:
        await conn.close()
    assert status.reachable
    assert status.privileges_missing == ["pg_monitor", "pg_signal_backend"]
