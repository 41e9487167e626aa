"""The pre-check refuses, before any cost comparison, an index whose equality columns the
planner expects to select more than ``maxSelectivity`` of the table (issue 17.2: one row per
call of ``SELECT count(*) ... WHERE status = $1`` said nothing about the third of the table
it read). The estimate plans a filtered scan the executor writes itself, under the same
refusal and error rules as the served statements (plan_safety; class and SQLSTATE only)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from startupmonkey.executor import index_precheck
from startupmonkey.localserv import postgres
from tests.integration import test_precheck_hostile as hostile
from tests.support import workloads

pytestmark = pytest.mark.integration

BIG = 10 * 2**30
SECRET = hostile.SECRET
COUNT_BY_STATUS = "SELECT count(*) FROM orders WHERE status = $1"
BY_CUSTOMER = "SELECT id, total FROM orders WHERE customer_id = $1"


async def _precheck(conn: psycopg.AsyncConnection[Any], columns: tuple[str, ...],
                    statements: list[str], table: str = "orders",
                    **kwargs: Any) -> index_precheck.PrecheckResult:
    return await index_precheck.precheck_create_index(
        conn, "public", table, columns, statements, min_cost_reduction=0.5,
        max_build_bytes=BIG, max_indexes_per_table=8, max_selectivity=0.05, **kwargs)


async def _leftovers(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...] | None:
    cursor = await conn.execute("SELECT (SELECT count(*) FROM pg_prepared_statements), "
                                "(SELECT count(*) FROM hypopg_list_indexes)")
    return await cursor.fetchone()


async def test_an_aggregate_over_a_column_of_two_values_is_refused_before_costing(
        pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    workloads.seed_orders(pg_db.conninfo)  # status: 0 or 1, half the table each
    verdict = await _precheck(executor_conn, ("status",), [COUNT_BY_STATUS])
    assert not verdict.build and not verdict.retry
    assert verdict.reason.startswith("rejected: the planner expects 50000 of 100000 rows "
                                     "(50.00%) for status = $n"), verdict.reason
    assert "maxSelectivity (5.00%)" in verdict.reason
    numbers = verdict.numbers()
    assert numbers["selectivity"] == pytest.approx(0.5, rel=0.1)
    assert numbers["max_selectivity"] == 0.05 and numbers["selectivity_table_rows"] == 100_000
    assert "cost_before" not in numbers and verdict.statements == ()  # never costed
    assert await _leftovers(executor_conn) == (0, 0)


async def test_a_selective_column_passes_and_the_estimate_is_recorded(
        pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    workloads.seed_orders(pg_db.conninfo)  # 5,000 customers, 20 rows each
    verdict = await _precheck(executor_conn, ("customer_id",), [BY_CUSTOMER])
    assert verdict.build, verdict.reason
    assert verdict.numbers()["selectivity"] == pytest.approx(20 / 100_000, rel=0.5)
    assert "the planner expects" in verdict.reason and "customer_id = $n" in verdict.reason
    # Two equality columns: the planner multiplies (no extended statistics here).
    both = await _precheck(executor_conn, ("customer_id", "status"), [
        "SELECT id FROM orders WHERE customer_id = $1 AND status = $2"])
    assert (both.selectivity and both.selectivity.columns) == ("customer_id", "status")
    assert (both.numbers()["selectivity"] < verdict.numbers()["selectivity"])
    assert await _leftovers(executor_conn) == (0, 0)


async def test_range_and_limited_candidates_are_left_to_the_cost_comparison(
        pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    workloads.seed_orders(pg_db.conninfo)
    # Read at most LIMIT rows through (status, id): the fraction refuses nothing.
    limited = await _precheck(executor_conn, ("status", "id"), [
        "SELECT id FROM orders WHERE status = $1 ORDER BY id DESC LIMIT $2"],
        equality_columns=1, limited=True)
    assert "cost_before" in limited.numbers(), limited.reason
    assert limited.numbers()["selectivity_limited"] == 1.0
    assert "not a refusal" in limited.reason
    # No equality column (a range): nothing to estimate; costed as before.
    ranged = await _precheck(executor_conn, ("total",), [
        "SELECT id FROM orders WHERE total > $1"], equality_columns=0)
    assert ranged.selectivity is not None and ranged.selectivity.fraction is None
    assert "cost_before" in ranged.numbers()


async def test_a_type_without_equality_is_recorded_as_class_and_sqlstate(
        pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    workloads.seed_orders(pg_db.conninfo, rows=20_000)
    with pg_db.connect() as conn:
        conn.execute("ALTER TABLE orders ADD COLUMN spot point")
    estimate = await index_precheck.estimate_selectivity(
        executor_conn, index_precheck.indexes.IndexTarget("public", "orders", ("spot",)),
        ("spot",))
    assert estimate.fraction is None
    assert estimate.error == "UndefinedFunction (SQLSTATE 42883)"
    assert await _leftovers(executor_conn) == (0, 0)


arranged = hostile.arranged  # orders for an ordinary role, a vault only the executor reads


@pytest.fixture
def attacker(arranged: str) -> str:
    """The ordinary role of ``arranged``, with its function that leaks the vault."""
    with psycopg.connect(arranged, autocommit=True) as conn:
        conn.execute(hostile.LEAK.encode())
    return arranged


def _everything_said(verdict: index_precheck.PrecheckResult) -> str:
    return " ".join([verdict.reason, repr(verdict.numbers()), repr(verdict.selectivity)])


async def test_the_estimate_never_plans_a_table_carrying_user_code(
        executor_conn: psycopg.AsyncConnection[Any], attacker: str) -> None:
    # Opening the table for the filtered scan would fold leak() in the index expression.
    with psycopg.connect(attacker, autocommit=True) as conn:
        conn.execute("CREATE TABLE mine AS SELECT g AS id, g % 100 AS customer_id "
                     "FROM generate_series(1, 1000) AS g")
        conn.execute("CREATE INDEX mine_expr ON mine ((id + leak()))")
    verdict = await _precheck(executor_conn, ("customer_id",), [
        "SELECT id FROM mine WHERE customer_id = $1"], table="mine")
    assert SECRET not in _everything_said(verdict)
    assert verdict.selectivity is not None and verdict.selectivity.fraction is None
    assert "index public.mine_expr" in (verdict.selectivity.error or "")
    assert "function public.leak()" in (verdict.selectivity.error or "")


async def test_the_estimate_refuses_a_user_equality_operator(
        executor_conn: psycopg.AsyncConnection[Any], attacker: str) -> None:
    with psycopg.connect(attacker, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION public.eq_leak(int, int) RETURNS boolean IMMUTABLE "
                     "LANGUAGE sql AS 'SELECT leak() = $1'")
        conn.execute("CREATE OPERATOR public.= (FUNCTION = eq_leak, LEFTARG = int, "
                     "RIGHTARG = int)")
    verdict = await _precheck(executor_conn, ("customer_id",), [BY_CUSTOMER])
    assert SECRET not in _everything_said(verdict)
    assert verdict.selectivity is not None
    assert "operator public.=(integer,integer)" in (verdict.selectivity.error or "")
    assert not verdict.build


async def test_keys_the_detection_considered_are_costed_each_with_its_own_index(
        pg_db: postgres.PostgresDatabase,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    workloads.seed_orders(pg_db.conninfo)
    statement = "SELECT id FROM orders WHERE customer_id = $1 ORDER BY id DESC LIMIT $2"
    # The target (customer_id, total) against (customer_id, id), which also serves the order.
    verdict = await _precheck(executor_conn, ("customer_id", "total"), [statement],
                              equality_columns=1,
                              alternatives=[("customer_id", "total"), ("customer_id", "id")])
    assert [key for key, _ in verdict.keys] == [("customer_id", "total"), ("customer_id", "id")]
    (_, mine), (_, other) = verdict.keys
    assert mine is not None and other is not None and other <= mine
    assert verdict.numbers()["key_2_cost_after"] == other
    assert "keys considered by planner cost" in verdict.reason
    assert "(customer_id, id) would be cheaper" in verdict.reason
    assert await _leftovers(executor_conn) == (0, 0)
