"""Issue 23 (review point): a CREATE INDEX CONCURRENTLY that committed, but whose executor
died before recording it. The retry must call the index its own build, not refuse because an
index "already covers" the columns, so the record tells what was done and keep-or-revert
still judges the index.

Real throughout: the executor's planning (HypoPG pre-check, the planned SQL) on a real
PostgreSQL with a real workload, its journal, core NATS. The death between the build and its
record is made exactly: the planned SQL is run by the test while the record says Running under
the executor's identity, as a build that committed just before its executor died leaves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest

from startupmonkey.executor import index_build, indexes, journal, records
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models.enums import RemediationState
from tests.integration.test_executor_sigkill_build import (
    _detection,
    _indexes_on_customer_id,
    _queryid,
)
from tests.support import executor_helpers as helpers
from tests.support import workloads
from tests.support.eventually import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def test_a_retry_finds_the_index_its_dead_attempt_built_and_keeps_judging_it(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    workloads.seed_orders(pg_db.conninfo)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, mode="approval",
                         verification={"window": "3s", "minCalls": 10, "maxWait": "30s"})
    assert cfg.executor is not None and cfg.executor.audit_log is not None
    store = journal.JournalStore(cfg.executor.audit_log, helpers.NAMESPACE, helpers.MONITOR)
    with workloads.query_loop(pg_db.conninfo, workloads.ORDERS_QUERY, (42,), rate=40,
                              duration=220) as loop:
        await eventually(lambda: loop.calls >= 20, timeout=30)
        detection = _detection(_queryid(pg_db.conninfo))
        async with helpers.running_executor(cfg, store) as executor:
            identity = executor.engine.identity if executor.engine else ""
            client = await nats.connect(nats_server.url)
            try:
                async def planned() -> records.Record:
                    found = await store.list()
                    if not found:
                        await client.publish(detection.subject, detection.encode())
                        await client.flush()
                    assert found and found[0].state is RemediationState.PENDING_APPROVAL, [
                        (r.state, r.status.message) for r in found]
                    return found[0]

                record = await eventually(planned, timeout=60, interval=0.5)
            finally:
                await client.close()
        # As an executor leaves it when it dies right after its build committed: approved,
        # claimed (Running under its identity), the index built and valid, nothing recorded.
        record.spec.approved = True
        record.move(RemediationState.APPROVED, "approved by test")
        record.status.executor = identity
        record.move(RemediationState.RUNNING, "running")
        await store.update(record, RemediationState.PENDING_APPROVAL)
        with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
            conn.execute(record.spec.sql.encode())
        built_index = record.spec.sql.split('"')[1]
        assert _indexes_on_customer_id(pg_db.conninfo) == [(built_index, True)]

        # The same executor again (a restarted pod of the same name).
        async with helpers.running_executor(cfg, store):
            async def finished() -> records.Record:
                current = await store.get(record.name)
                assert current is not None
                assert current.state in (RemediationState.SUCCEEDED, RemediationState.ROLLED_BACK,
                                         RemediationState.FAILED, RemediationState.REJECTED), (
                    current.state, current.status.message)
                return current

            done = await eventually(finished, timeout=120, interval=0.5)
    steps = [(s.state, s.message) for s in done.status.history]
    assert done.state is RemediationState.SUCCEEDED, steps
    assert [state for state, _ in steps][-4:] == [
        RemediationState.APPROVED, RemediationState.RUNNING, RemediationState.VERIFYING,
        RemediationState.SUCCEEDED]
    assert "attempt 1 did not finish" in steps[-4][1]
    assert "already built by an earlier attempt" in steps[-2][1], steps
    decision = done.status.decision
    assert decision is not None and decision.keep
    assert _indexes_on_customer_id(pg_db.conninfo) == [(built_index, True)]


@pytest.mark.parametrize(("extra", "ours"), [
    ("", True),
    (" INCLUDE (total)", False),
    (" WITH (fillfactor = 50)", False),
    (" DESC", False),
    (" NULLS FIRST", False),
    (' COLLATE "C"', False),
    (" text_pattern_ops", False),
])
async def test_only_an_index_exactly_as_planned_is_claimed_as_an_earlier_build(
        pg_db: postgres.PostgresDatabase, executor_conn: Any, extra: str, ours: bool) -> None:
    # An index someone else made under the planned name, with anything our CREATE INDEX would
    # not give it, is never recorded as our earlier attempt's build.
    with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int, note text, total int)")
    target = indexes.IndexTarget(schema="public", table="orders", columns=("note",),
                                 name="sm_orders_note_test")
    column = extra if extra.startswith((" DESC", " NULLS", " COLLATE", " text_")) else ""
    rest = "" if column else extra
    with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE INDEX "sm_orders_note_test" ON orders (note{column}){rest}')
    assert await index_build.built_earlier(executor_conn, target) is ours
