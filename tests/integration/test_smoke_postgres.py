"""The PostgreSQL harness gives later tests what they rely on, on a real server.

Each test states one property of the fixtures (``tests/conftest.py``) or of the workload
helpers (``tests/support/workloads.py``) that detector and executor tests build on: statement
statistics, HypoPG planning (including the PostgreSQL 15 generic-plan recipe of
docs/design.md#detection-and-remediation),
restarts of a private cluster, password logins over TCP, a non-root server, a start error that
explains itself, and workloads that show up in ``pg_stat_activity``.
"""

from __future__ import annotations

import os
import pwd
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from startupmonkey.localserv import postgres
from tests.support import components, eventually, workloads

pytestmark = pytest.mark.integration


def _load_table(conn: psycopg.Connection[Any], rows: int = 100_000) -> None:
    conn.execute("CREATE TABLE t (id int, col int, pad text)")
    conn.execute(
        "INSERT INTO t SELECT g, g %% 50000, repeat('x', 50) FROM generate_series(1, %s) g",
        (rows,),
    )
    conn.execute("ANALYZE t")


def _plan(conn: psycopg.Connection[Any], statement: str) -> dict[str, Any]:
    row = conn.execute(f"EXPLAIN (FORMAT JSON) {statement}").fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def _index_names(plan: dict[str, Any]) -> Iterator[str]:
    if "Index Name" in plan:
        yield plan["Index Name"]
    for child in plan.get("Plans", []):
        yield from _index_names(child)


def test_pg_stat_statements_counts_calls(pg_db: postgres.PostgresDatabase) -> None:
    calls = 7
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE smoke_pgss (id int PRIMARY KEY, v int)")
        for i in range(calls):
            conn.execute("SELECT count(*) FROM smoke_pgss WHERE v = %s", (i,))
        row = conn.execute(
            """
            SELECT s.calls
              FROM public.pg_stat_statements s
              JOIN pg_catalog.pg_database d ON d.oid = s.dbid
             WHERE d.datname = pg_catalog.current_database() AND s.query = %s
            """,
            ("SELECT count(*) FROM smoke_pgss WHERE v = $1",),
        ).fetchone()
    assert row is not None, "statement missing from pg_stat_statements"
    assert row[0] >= calls


def test_hypopg_hypothetical_index_is_planned_and_cheaper(
    pg_db: postgres.PostgresDatabase,
) -> None:
    query = "SELECT * FROM t WHERE col = 42"
    with pg_db.connect() as conn:
        _load_table(conn)
        before = _plan(conn, query)
        row = conn.execute("SELECT * FROM hypopg_create_index('CREATE INDEX ON t(col)')").fetchone()
        assert row is not None
        _, index_name = row
        after = _plan(conn, query)
    assert index_name.endswith("btree_t_col")
    assert list(_index_names(before)) == []
    assert index_name in _index_names(after)
    assert after["Total Cost"] < before["Total Cost"] / 10


def test_cached_generic_plan_ignores_later_hypothetical_index(
    pg_db: postgres.PostgresDatabase,
) -> None:
    """The PostgreSQL 15 recipe of docs/design.md#detection-and-remediation: a *new* prepared
    statement for every plan."""
    with pg_db.connect() as conn:
        _load_table(conn)
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("PREPARE before_index(int) AS SELECT * FROM t WHERE col = $1")
        assert list(_index_names(_plan(conn, "EXECUTE before_index(42)"))) == []
        conn.execute("SELECT * FROM hypopg_create_index('CREATE INDEX ON t(col)')")
        stale = _plan(conn, "EXECUTE before_index(42)")
        conn.execute("PREPARE after_index(int) AS SELECT * FROM t WHERE col = $1")
        fresh = _plan(conn, "EXECUTE after_index(42)")
    assert list(_index_names(stale)) == []
    assert [name.endswith("btree_t_col") for name in _index_names(fresh)] == [True]


def test_private_cluster_restarts_and_keeps_data(
    pg_private_cluster_factory: components.PrivateClusterFactory,
) -> None:
    cluster = pg_private_cluster_factory(settings={"max_connections": 10})
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('survives')")
        started = conn.execute("SELECT pg_catalog.pg_postmaster_start_time()").fetchone()
        assert conn.execute("SHOW max_connections").fetchone() == ("10",)
    port, pid = cluster.port, cluster.postmaster_pid
    cluster.restart()
    assert (cluster.port, cluster.running) == (port, True)
    assert cluster.postmaster_pid != pid
    with cluster.connect() as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("survives",)]
        restarted = conn.execute("SELECT pg_catalog.pg_postmaster_start_time()").fetchone()
    assert started is not None and restarted is not None
    assert restarted[0] > started[0]


def test_password_role_logs_in_over_tcp_with_password_from_file(
    pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase, tmp_path: Path
) -> None:
    role, password = f"smoke_pw_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    password_file = tmp_path / "password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o400)
    pg_cluster.create_role(role, password, member_of=["pg_monitor"])
    try:
        conninfo = pg_db.conninfo_for(role)  # TCP, 127.0.0.1
        with psycopg.connect(conninfo, password=password_file.read_text().strip()) as conn:
            row = conn.execute("SELECT current_user, inet_server_addr() IS NOT NULL").fetchone()
            assert row == (role, True)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(conninfo, password="wrong-" + password)
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            psycopg.connect(conninfo, passfile=os.devnull)
    finally:
        pg_cluster.drop_role(role)
    # Only a SCRAM verifier reached the server: the password is in no log and no statistic.
    assert password not in pg_cluster.log_path.read_text()
    with pg_db.connect() as conn:
        texts = conn.execute("SELECT query FROM public.pg_stat_statements").fetchall()
    assert not [text for (text,) in texts if password in text]


def test_role_without_password_is_trusted_over_tcp(
    pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase
) -> None:
    role = f"smoke_trusted_{secrets.token_hex(4)}"
    pg_cluster.create_role(role)
    try:
        with psycopg.connect(pg_db.conninfo_for(role), passfile=os.devnull) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
    finally:
        pg_cluster.drop_role(role)


def test_cluster_runs_as_non_root_user(pg_cluster: postgres.PostgresCluster) -> None:
    pid = pg_cluster.postmaster_pid
    assert pid is not None
    with pg_cluster.connect() as conn:  # the backend lives while its connection does
        row = conn.execute("SELECT pg_catalog.pg_backend_pid()").fetchone()
        assert row is not None
        uids = [Path(f"/proc/{process}").stat().st_uid for process in (pid, row[0])]
    for uid in uids:
        assert uid != 0
        if os.geteuid() == 0:
            assert pwd.getpwuid(uid).pw_name == pg_cluster.os_user == "postgres"
        else:
            assert uid == os.geteuid()


def test_failed_start_reports_the_server_log(
    pg_private_cluster_factory: components.PrivateClusterFactory,
) -> None:
    with pytest.raises(postgres.StartError) as failure:
        pg_private_cluster_factory(settings={"max_connections": "many"}, install_extensions=False)
    assert 'invalid value for parameter "max_connections"' in str(failure.value)
    assert "--- server log" in str(failure.value)


async def test_idle_in_transaction_session_is_visible(pg_db: postgres.PostgresDatabase) -> None:
    def state_of(pid: int) -> str | None:
        with pg_db.connect() as conn:
            row = conn.execute(
                "SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
        return row[0] if row else None

    with workloads.idle_in_transaction(pg_db.conninfo) as session:
        await eventually.eventually(lambda: state_of(session.pid) == "idle in transaction")
        with pg_db.connect() as conn:
            conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (session.pid,))
        await eventually.eventually(lambda: not session.is_alive())
    assert state_of(session.pid) is None


def test_query_blocked_behind_held_lock_waits_on_lock(
    pg_db: postgres.PostgresDatabase,
) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE locked (id int)")

    def wait_event_type(pid: int) -> str | None:
        with pg_db.connect() as conn:
            row = conn.execute(
                "SELECT wait_event_type FROM pg_catalog.pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
        return row[0] if row else None

    with (
        workloads.hold_lock(pg_db.conninfo, "public.locked") as holder,
        workloads.background_query(pg_db.conninfo, "SELECT count(*) FROM locked") as waiter,
    ):
        eventually.wait_until(lambda: wait_event_type(waiter.pid) == "Lock")
        assert not waiter.done.is_set()
        holder.connection.rollback()  # releases the lock: the waiter completes
        eventually.wait_until(waiter.done.is_set)
    assert (waiter.rows, waiter.error) == ([(0,)], None)


def test_query_loop_accumulates_calls_and_survives_termination(
    pg_db: postgres.PostgresDatabase,
) -> None:
    with workloads.query_loop(pg_db.conninfo, "SELECT 1", rate=200) as loop:
        eventually.wait_until(lambda: loop.calls >= 5)
        first_pid = loop.pid
        with pg_db.connect() as conn:
            conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (first_pid,))
        eventually.wait_until(lambda: loop.reconnects == 1 and loop.pid != first_pid)
        calls = loop.calls
        eventually.wait_until(lambda: loop.calls > calls)
    assert loop.finished.is_set()
    assert len(loop.errors) == 1
