"""Each executor action on every major of the matrix (issue 22): vacuum, analyze, cancel,
terminate, drop of an INVALID index, reindex, the standby wait (the integration tests as
they are, on each server through ``conftest.py``), and CREATE INDEX CONCURRENTLY with its
measured keep, after a pre-check that says HypoPG is absent (docs/postgres-support.md)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from startupmonkey.executor import indexes
from startupmonkey.localserv import postgres
from startupmonkey.models.enums import RemediationState
from tests.integration.test_executor_actions import (
    test_a_long_query_is_cancelled,
    test_analyze_refreshes_statistics,
    test_idle_transaction_is_terminated,
    test_missing_privileges_are_reported,
    test_the_minimal_executor_role_is_enough,
    test_vacuum_removes_dead_tuples,
)
from tests.integration.test_executor_engine import (
    test_on_a_standby_an_action_waits_with_the_reason_and_nothing_runs,
)
from tests.integration.test_index_actions import (
    _keep_or_revert_cycle,
    _orders,
    test_drop_invalid_index,
    test_reindex_makes_an_invalid_index_valid,
)

__all__ = [
    "test_a_long_query_is_cancelled",
    "test_analyze_refreshes_statistics",
    "test_drop_invalid_index",
    "test_idle_transaction_is_terminated",
    "test_missing_privileges_are_reported",
    "test_on_a_standby_an_action_waits_with_the_reason_and_nothing_runs",
    "test_reindex_makes_an_invalid_index_valid",
    "test_the_minimal_executor_role_is_enough",
    "test_vacuum_removes_dead_tuples",
]

pytestmark = pytest.mark.pg_matrix


async def test_without_hypopg_the_precheck_says_so_and_a_concurrent_build_is_measured_and_kept(
        pg_db: postgres.PostgresDatabase, executor_conn: psycopg.AsyncConnection[Any]) -> None:
    """HypoPG is not there: the pre-check refuses and names it (so the engine builds nothing,
    docs/safety.md); CREATE INDEX CONCURRENTLY, the measurement and the keep then run on this
    major as they would after a pre-check that passed."""
    _orders(pg_db.conninfo)
    verdict, built, final, decision = await _keep_or_revert_cycle(
        pg_db, executor_conn, "customer_id", 7, hypopg=False)
    assert "hypopg extension is not installed" in verdict.reason, verdict.reason
    assert built.state is RemediationState.VERIFYING, built.message
    assert decision.keep, decision.reason
    assert final.state is RemediationState.SUCCEEDED, final.message
    name = indexes.index_name("public", "orders", ["customer_id"])
    cursor = await executor_conn.execute(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s", (name,))
    assert await cursor.fetchone() == (True,)
