"""Issue 23 (review point): a rollback a person asked for meets a busy database. Another
action of its class (the class's advisory lock) leaves it waiting, unclaimed; a lock timeout of
its DROP INDEX CONCURRENTLY (a long transaction on the table) postpones it with a retry due;
neither ends it Failed with the index left in place. Once the way is clear it is rolled back.

Real throughout: an executor with its journal on a real PostgreSQL, a real index, a real
transaction holding the table, a real advisory lock held by another session.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import psycopg
import pytest

from startupmonkey.executor import guard, journal, records
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import messages, remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass
from tests.support import executor_helpers as helpers
from tests.support import workloads
from tests.support.eventually import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
INDEX = "sm_orders_customer_id_test"
SQL = f'CREATE INDEX CONCURRENTLY "{INDEX}" ON "public"."orders" ("customer_id")'
ROLLBACK = f'DROP INDEX CONCURRENTLY IF EXISTS "public"."{INDEX}"'


def _kept(now: datetime.datetime) -> records.Record:
    """A create_index Remediation that was built and kept, as the executor records it."""
    key = messages.detection_key(helpers.NAMESPACE, helpers.MONITOR, DetectorId.MISSING_INDEX,
                                 "public.orders(customer_id)")
    spec = remediation.RemediationSpec(
        monitor=helpers.MONITOR, detection_key=key,
        detection_id=messages.new_occurrence_id(key, now), detector=DetectorId.MISSING_INDEX,
        action=ActionId.CREATE_INDEX, risk_class=RiskClass.DDL,
        target=remediation.Target(schema="public", table="orders", columns=["customer_id"],
                                  index=INDEX),
        sql=SQL, rollback_sql=ROLLBACK, sql_hash=remediation.sql_hash(SQL, ROLLBACK),
        summary="orders needs an index on customer_id")
    record = records.Record(name="orders-customer-id-test", namespace=helpers.NAMESPACE,
                            spec=spec, status=remediation.RemediationStatus(), created=now)
    for state in (RemediationState.APPROVED, RemediationState.RUNNING,
                  RemediationState.VERIFYING, RemediationState.SUCCEEDED):
        record.move(state, f"{state.value} (test)", now)
    return record


def _index_exists(conninfo: str) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_class WHERE relname = %s",
                            (INDEX,)).fetchone() == (1,)


async def test_a_rollback_waits_for_a_busy_class_and_a_busy_table_then_rolls_back(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    workloads.seed_orders(pg_db.conninfo, rows=2_000)
    with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
        conn.execute(SQL)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, limits={
        "timeouts": {"ddl": {"lockTimeout": "500ms", "statementTimeout": "1m"}}})
    assert cfg.executor is not None and cfg.executor.audit_log is not None
    store = journal.JournalStore(cfg.executor.audit_log, helpers.NAMESPACE, helpers.MONITOR)
    kept = _kept(datetime.datetime.now(datetime.UTC))
    assert await store.create(kept)
    steps_when_kept = len(kept.status.history)

    async def current() -> records.Record:
        found = await store.get(kept.name)
        assert found is not None
        return found

    with psycopg.connect(pg_db.conninfo, autocommit=True) as other:
        # Another ddl action holds the class's lock on this database.
        other.execute("SELECT pg_advisory_lock(%s, %s)", guard.lock_key(RiskClass.DDL))
        async with helpers.running_executor(cfg, store):
            await store.request_rollback(kept.name, "alice", "not needed")

            async def waiting() -> records.Record:
                record = await current()
                assert record.status.message.startswith("rollback waiting: another ddl "
                                                        "action holds the lock"), record.status
                return record

            record = await eventually(waiting, timeout=30)
            # Unclaimed: still Succeeded, no step added, the index in place.
            assert record.state is RemediationState.SUCCEEDED
            assert len(record.status.history) == steps_when_kept
            assert _index_exists(pg_db.conninfo)

            # The class is free, but a long transaction holds the table: the DROP INDEX
            # CONCURRENTLY times out on its lock, and the rollback is postponed, not failed.
            with workloads.hold_lock(pg_db.conninfo, "public.orders", mode="ACCESS SHARE"):
                other.execute("SELECT pg_advisory_unlock(%s, %s)",
                              guard.lock_key(RiskClass.DDL))

                async def postponed() -> records.Record:
                    record = await current()
                    assert record.state is RemediationState.SUCCEEDED and \
                        record.status.message.startswith("rollback postponed"), record.status
                    return record

                record = await eventually(postponed, timeout=60)
                assert "attempt 1 of 5" in record.status.message, record.status.message
                assert record.status.next_attempt_time is not None
                assert [s.state for s in record.status.history[steps_when_kept:]] == [
                    RemediationState.RUNNING, RemediationState.SUCCEEDED]
                assert remediation.ANNOTATION_ROLLBACK in record.annotations
                assert _index_exists(pg_db.conninfo)

            # The holder is gone: the retry, once due, rolls it back.
            async def rolled_back() -> records.Record:
                record = await current()
                assert record.state is RemediationState.ROLLED_BACK, record.status.message
                return record

            record = await eventually(rolled_back, timeout=90, interval=0.5)
    assert not _index_exists(pg_db.conninfo)
    assert record.status.executed_sql[-1] == ROLLBACK
    assert [s.state for s in record.status.history[steps_when_kept:]] == [
        RemediationState.RUNNING, RemediationState.SUCCEEDED, RemediationState.RUNNING,
        RemediationState.ROLLED_BACK]
