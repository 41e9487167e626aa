"""A database user cannot make the HypoPG pre-check run its code with the executor's rights.

The pre-check plans statement text that any role can put into pg_stat_statements, and the
planner folds IMMUTABLE functions, and evaluates index expressions, with the privileges of the
session that plans: the executor's (here the cluster's superuser, as in the README's
``--user postgres`` example). Each test is an attack by an ordinary role (``app_conninfo``:
it may create functions in ``public`` and read ``orders``) that worked before plan_safety
(issue 24): the secret came back in the Rejected reason, or another session was terminated.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from startupmonkey.executor import index_precheck
from startupmonkey.localserv import postgres
from tests.support import workloads

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-" + uuid.uuid4().hex[:8]
BIG = 10 * 2**30

# Reads the vault when it can (only the executor can) and raises its content; for the
# attacker it answers 1, so the attacker's own statement completes and is recorded.
LEAK = """
CREATE FUNCTION public.leak() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $f$
DECLARE s text;
BEGIN
  BEGIN
    SELECT secret INTO s FROM vault.secrets LIMIT 1;
  EXCEPTION WHEN insufficient_privilege THEN
    RETURN 1;
  END;
  RAISE EXCEPTION 'leaked: %', s;
END $f$
"""

# Terminates the victim's session when it may (only the executor may); 1 otherwise.
KILL = """
CREATE FUNCTION public.kill_victim() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
  WHERE application_name = 'victim';
  RETURN 1;
EXCEPTION WHEN insufficient_privilege THEN
  RETURN 1;
END $f$
"""


@pytest.fixture
async def executor_conn(pg_db: postgres.PostgresDatabase) -> AsyncIterator[
        psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(
        pg_db.conninfo, autocommit=True, application_name="startupmonkey-executor")
    yield conn
    await conn.close()


@pytest.fixture
def arranged(pg_db: postgres.PostgresDatabase, app_conninfo: str) -> str:
    """orders (readable by the attacker), a vault only the superuser reads; the attacker's
    conninfo."""
    workloads.seed_orders(pg_db.conninfo, rows=20_000)
    with pg_db.connect() as conn:
        conn.execute("CREATE SCHEMA vault")
        conn.execute("CREATE TABLE vault.secrets (secret text)")
        conn.execute("INSERT INTO vault.secrets VALUES (%s)", (SECRET,))
        user = dict(part.split("=", 1) for part in app_conninfo.split())["user"]
        conn.execute(sql.SQL("GRANT SELECT ON orders TO {}").format(sql.Identifier(user)))
    return app_conninfo


def _as_attacker(conninfo: str, *statements: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


async def _precheck(conn: psycopg.AsyncConnection[Any], statement: str,
                    table: str = "orders") -> index_precheck.PrecheckResult:
    return await index_precheck.precheck_create_index(
        conn, "public", table, ("customer_id",), [statement],
        min_cost_reduction=0.5, max_build_bytes=BIG, max_indexes_per_table=8)


def _everything_said(verdict: index_precheck.PrecheckResult) -> str:
    return " ".join([verdict.reason, repr(verdict.numbers())]
                    + [repr(s) for s in verdict.statements])


async def test_a_function_reading_what_only_the_executor_reads_is_not_run(
        executor_conn: psycopg.AsyncConnection[Any], arranged: str) -> None:
    statement = "SELECT id FROM orders WHERE customer_id = leak()"
    _as_attacker(arranged, LEAK, statement)  # the attacker's own run completes: recorded

    verdict = await _precheck(executor_conn, statement)

    assert not verdict.build
    assert SECRET not in _everything_said(verdict)
    assert "function public.leak()" in verdict.reason and "not a system object" in verdict.reason


async def test_a_function_that_terminates_sessions_is_not_run(
        pg_db: postgres.PostgresDatabase, executor_conn: psycopg.AsyncConnection[Any],
        arranged: str) -> None:
    statement = "SELECT id FROM orders WHERE customer_id = kill_victim()"
    _as_attacker(arranged, KILL, statement)
    async with await psycopg.AsyncConnection.connect(
            pg_db.conninfo, autocommit=True, application_name="victim") as victim:
        verdict = await _precheck(executor_conn, statement)

        assert not verdict.build
        assert "function public.kill_victim()" in verdict.reason
        await victim.execute("SELECT 1")  # still connected: raises when it was terminated


async def test_a_view_calling_a_user_function_is_not_planned(
        executor_conn: psycopg.AsyncConnection[Any], arranged: str) -> None:
    statement = "SELECT id FROM recent WHERE customer_id = $1"
    _as_attacker(arranged, LEAK, "CREATE VIEW recent AS SELECT id, customer_id FROM orders "
                 "WHERE customer_id <> leak()", statement.replace("$1", "7"))

    verdict = await _precheck(executor_conn, statement)

    assert SECRET not in _everything_said(verdict)
    assert "view public.recent" in verdict.reason and "function public.leak()" in verdict.reason


async def test_an_index_expression_of_a_user_function_is_not_loaded(
        executor_conn: psycopg.AsyncConnection[Any], arranged: str) -> None:
    # The planner folds index expressions when it opens the table: leak() would run.
    statement = "SELECT id FROM mine WHERE customer_id = $1"
    _as_attacker(arranged, LEAK,
                 "CREATE TABLE mine AS SELECT g AS id, g % 100 AS customer_id "
                 "FROM generate_series(1, 1000) AS g",
                 "CREATE INDEX mine_expr ON mine ((id + leak()))",
                 statement.replace("$1", "7"))

    verdict = await _precheck(executor_conn, statement, table="mine")

    assert SECRET not in _everything_said(verdict)
    assert "index public.mine_expr" in verdict.reason and "function public.leak()" in verdict.reason


async def test_an_operator_of_a_user_shadowing_a_system_one_is_not_planned(
        executor_conn: psycopg.AsyncConnection[Any], arranged: str) -> None:
    _as_attacker(arranged, LEAK,
                 "CREATE FUNCTION public.eq_leak(int, bigint) RETURNS boolean IMMUTABLE "
                 "LANGUAGE sql AS 'SELECT leak() = $1'",
                 "CREATE OPERATOR public.= (FUNCTION = eq_leak, LEFTARG = int, RIGHTARG = bigint)")
    statement = "SELECT id FROM orders WHERE customer_id = $1::bigint"

    verdict = await _precheck(executor_conn, statement)

    assert SECRET not in _everything_said(verdict)
    assert "operator public.=(integer,bigint)" in verdict.reason


async def test_server_error_text_of_a_planned_statement_is_not_recorded(
        executor_conn: psycopg.AsyncConnection[Any], arranged: str) -> None:
    # The planner estimates with the value of a stable system function, and the cast of a
    # setting only the executor's session holds fails with that value in the message: only
    # the error's class and SQLSTATE are kept.
    await executor_conn.execute("SELECT pg_catalog.set_config('app.key', %s, false)", (SECRET,))
    statement = "SELECT id FROM orders WHERE customer_id = current_setting('app.key')::int"

    verdict = await _precheck(executor_conn, statement)

    assert not verdict.build
    assert SECRET not in verdict.reason
    assert "InvalidTextRepresentation (SQLSTATE 22P02)" in verdict.reason


async def test_ordinary_statements_and_trusted_extensions_are_still_planned(
        pg_db: postgres.PostgresDatabase, executor_conn: psycopg.AsyncConnection[Any],
        arranged: str) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS citext")
        conn.execute("ALTER TABLE orders ADD COLUMN email citext")
        conn.execute("UPDATE orders SET email = 'c' || customer_id || '@example.com'")
        conn.execute("ANALYZE orders")
    statements = ["SELECT id, total FROM orders WHERE customer_id = $1",
                  "SELECT count(*) FROM orders WHERE customer_id = $1 AND email = $2 "
                  "AND lower(total::text) LIKE $3 AND status BETWEEN $4 AND $5"]

    verdict = await index_precheck.precheck_create_index(
        executor_conn, "public", "orders", ("customer_id",), statements,
        min_cost_reduction=0.5, max_build_bytes=BIG, max_indexes_per_table=8)

    assert verdict.build, verdict.reason
    assert all(s.planned for s in verdict.statements), verdict.statements


async def test_an_operator_planted_for_the_checks_own_queries_is_never_called(
        pg_db: postgres.PostgresDatabase, executor_conn: psycopg.AsyncConnection[Any],
        arranged: str) -> None:
    # The checking queries compare oids with integers: a user's exact-match operator in a
    # schema of the path would run as the executor for every catalog row (CVE-2018-1058).
    _as_attacker(arranged, KILL, LEAK,
                 "CREATE FUNCTION public.lt(oid, int4) RETURNS bool LANGUAGE sql AS "
                 "'SELECT public.kill_victim() = 1'",
                 "CREATE OPERATOR public.< (LEFTARG = oid, RIGHTARG = int4, FUNCTION = public.lt)",
                 "CREATE FUNCTION public.eq(oid, regclass) RETURNS bool LANGUAGE sql AS "
                 "'SELECT false'",
                 "CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, "
                 "FUNCTION = public.eq)")
    async with await psycopg.AsyncConnection.connect(
            pg_db.conninfo, autocommit=True, application_name="victim") as victim:
        hostile = await _precheck(executor_conn,
                                  "SELECT id FROM orders WHERE customer_id = leak()")
        ordinary = await _precheck(executor_conn,
                                   "SELECT id FROM orders WHERE customer_id = $1")

        await victim.execute("SELECT 1")  # still connected
    assert "function public.leak()" in hostile.reason and SECRET not in _everything_said(hostile)
    # An ordinary statement's = now has a user's candidate too: refused, the safe failure.
    assert "operator public.=(oid,regclass)" in ordinary.reason, ordinary.reason


async def test_a_users_cast_of_a_row_type_is_not_planned(
        executor_conn: psycopg.AsyncConnection[Any], arranged: str) -> None:
    statement = "SELECT customer_id FROM orders_copy AS c WHERE c::text = $1 AND id = $2"
    _as_attacker(arranged, LEAK,
                 "CREATE TABLE orders_copy AS SELECT id, customer_id FROM orders",
                 "CREATE FUNCTION public.as_text(orders_copy) RETURNS text LANGUAGE sql "
                 "AS 'SELECT public.leak()::text'",
                 "CREATE CAST (orders_copy AS text) WITH FUNCTION public.as_text(orders_copy)")

    verdict = await _precheck(executor_conn, statement, table="orders_copy")

    assert SECRET not in _everything_said(verdict)
    assert "cast from public.orders_copy to text" in verdict.reason, verdict.reason


async def test_a_domain_check_of_a_user_is_not_planned(
        executor_conn: psycopg.AsyncConnection[Any], arranged: str) -> None:
    statement = "UPDATE tagged SET tag = $1 WHERE customer_id = $2"
    _as_attacker(arranged, LEAK,
                 "CREATE FUNCTION public.chk(text) RETURNS bool LANGUAGE sql "
                 "AS 'SELECT public.leak() = 1'",
                 "CREATE DOMAIN public.tag AS text CHECK (public.chk(VALUE))",
                 "CREATE TABLE tagged AS SELECT id, customer_id, NULL::public.tag AS tag "
                 "FROM orders")

    verdict = await _precheck(executor_conn, statement, table="tagged")

    assert SECRET not in _everything_said(verdict)
    assert "function public.chk(text)" in verdict.reason, verdict.reason


async def test_attribute_notation_and_join_using_are_checked_too(
        executor_conn: psycopg.AsyncConnection[Any], arranged: str) -> None:
    _as_attacker(arranged, LEAK,
                 "CREATE FUNCTION public.f(orders) RETURNS int IMMUTABLE LANGUAGE sql "
                 "AS 'SELECT public.leak()'")

    via_indirection = await _precheck(
        executor_conn, "SELECT (o).f FROM orders AS o WHERE customer_id = $1")

    assert SECRET not in _everything_said(via_indirection)
    assert "function public.f(public.orders)" in via_indirection.reason, via_indirection.reason


async def test_an_error_code_of_the_statements_choosing_is_kept_as_its_class_only(
        executor_conn: psycopg.AsyncConnection[Any], arranged: str) -> None:
    # A system function cannot pick a code; this stands for any error whose SQLSTATE a
    # statement's author could choose (25 bits of data per statement otherwise).
    from startupmonkey.executor import index_precheck as precheck
    error = psycopg.errors.lookup("P0001")("x")
    assert precheck.planning_error(error) == "RaiseException (SQLSTATE P0001)"
    custom = psycopg.errors.DatabaseError("x")
    custom.__dict__["_sqlstate"] = "AB12C"
    assert "AB12C" not in precheck.planning_error(custom)
