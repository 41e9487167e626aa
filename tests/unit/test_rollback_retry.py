"""Which rollback errors postpone a rollback (a retry due) and which end it Failed: only an
idempotent rollback (DROP INDEX CONCURRENTLY IF EXISTS) is retried, and only after a lock
timeout or a lost server, at most MAX_ATTEMPTS times (counted in the history)."""

from __future__ import annotations

import datetime

import psycopg
import pytest

from startupmonkey.executor import context, housekeeping, records
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass

NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC)
DROP = 'DROP INDEX CONCURRENTLY IF EXISTS "public"."sm_orders_x"'
RECREATE = 'CREATE INDEX CONCURRENTLY "orders_x" ON "public"."orders" ("x")'


def _record(rollback_sql: str, postponed: int = 0) -> records.Record:
    spec = remediation.RemediationSpec(
        monitor="shop", detection_key="k", detection_id="i", detector=DetectorId.MISSING_INDEX,
        action=ActionId.CREATE_INDEX, risk_class=RiskClass.DDL, sql="CREATE ...",
        rollback_sql=rollback_sql, sql_hash="0" * 64)
    record = records.Record(name="r", namespace="ns", spec=spec,
                            status=remediation.RemediationStatus(), created=NOW)
    record.move(RemediationState.SUCCEEDED, "kept", NOW)
    for _ in range(postponed):
        record.move(RemediationState.RUNNING, "rolling back", NOW)
        record.move(RemediationState.SUCCEEDED, f"{housekeeping.ROLLBACK_POSTPONED}: x", NOW)
    return record


def _judge(record: records.Record, exc: psycopg.Error) -> RemediationState:
    keeper = housekeeping.Housekeeping.__new__(housekeeping.Housekeeping)
    return keeper._rollback_error(record, exc).state


LOCK = psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
GONE = psycopg.OperationalError("server closed the connection unexpectedly")


@pytest.mark.parametrize("exc", [LOCK, GONE])
def test_an_idempotent_rollback_is_postponed_with_a_retry_due(exc: psycopg.Error) -> None:
    record = _record(DROP)
    assert _judge(record, exc) is RemediationState.SUCCEEDED
    assert record.status.next_attempt_time is not None


@pytest.mark.parametrize("exc", [LOCK, GONE])
def test_a_recreating_rollback_is_not_retried(exc: psycopg.Error) -> None:
    # Its timed-out CREATE INDEX CONCURRENTLY left an INVALID index of the same name: running
    # it again would fail "already exists".
    assert _judge(_record(RECREATE), exc) is RemediationState.FAILED


def test_other_errors_end_it_failed_and_retries_are_bounded() -> None:
    assert _judge(_record(DROP), psycopg.errors.InsufficientPrivilege("no")) is \
        RemediationState.FAILED
    assert _judge(_record(DROP, postponed=context.MAX_ATTEMPTS - 2), LOCK) is \
        RemediationState.SUCCEEDED
    assert _judge(_record(DROP, postponed=context.MAX_ATTEMPTS - 1), LOCK) is \
        RemediationState.FAILED
