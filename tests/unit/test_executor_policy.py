"""Executor policy: first states per mode, the hourly limit, the maintenance window."""

from __future__ import annotations

import datetime

import pytest

from startupmonkey.executor import policy
from startupmonkey.models import monitor
from startupmonkey.models.enums import ActionId, RemediationState, RiskClass

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)  # a Saturday


def _spec(**fields: object) -> monitor.DatabaseMonitorSpec:
    return monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": "db", "dbname": "shop", "credentialsSecret": {"name": "s"}},
        **fields})


@pytest.mark.parametrize(("mode", "action", "state"), [
    ("auto", ActionId.VACUUM, RemediationState.APPROVED),
    ("auto", ActionId.DROP_INDEX, RemediationState.PENDING_APPROVAL),
    ("auto", ActionId.ADVICE, RemediationState.RECOMMENDED),
    ("approval", ActionId.TERMINATE_SESSION, RemediationState.PENDING_APPROVAL),
    ("observe", ActionId.CREATE_INDEX, RemediationState.OBSERVED),
    ("observe", ActionId.ADVICE, RemediationState.RECOMMENDED),
])
def test_first_state_follows_mode(mode: str, action: ActionId, state: RemediationState) -> None:
    assert policy.first_state(_spec(mode=mode), action) is state


def test_policy_overrides_per_risk_class() -> None:
    spec = _spec(mode="auto", policy={"session": "observe", "ddl": "approval"})
    assert policy.first_state(spec, ActionId.CANCEL_QUERY) is RemediationState.OBSERVED
    assert policy.first_state(spec, ActionId.CREATE_INDEX) is RemediationState.PENDING_APPROVAL
    assert policy.first_state(spec, ActionId.ANALYZE) is RemediationState.APPROVED


def test_hourly_limit_counts_a_rolling_hour() -> None:
    spec = _spec(limits={"maxActionsPerHour": 2})
    old = NOW - datetime.timedelta(minutes=61)
    recent = [NOW - datetime.timedelta(minutes=5), NOW - datetime.timedelta(minutes=59)]
    assert policy.may_start(spec, ActionId.VACUUM, [old, recent[0]], NOW).ok
    gate = policy.may_start(spec, ActionId.VACUUM, [old, *recent], NOW)
    assert not gate.ok and "hourly limit reached: 2 actions" in gate.reason


def test_zero_actions_per_hour_blocks_everything() -> None:
    assert not policy.may_start(_spec(limits={"maxActionsPerHour": 0}), ActionId.ANALYZE,
                                [], NOW).ok


def test_maintenance_window_gates_ddl_only() -> None:
    spec = _spec(maintenanceWindow={"start": "22:00", "duration": "4h", "days": ["Fri"]})
    saturday_1am = datetime.datetime(2026, 11, 28, 1, 0, tzinfo=UTC)
    assert policy.may_start(spec, ActionId.CREATE_INDEX, [], saturday_1am).ok  # Fri 22:00 + 4h
    gate = policy.may_start(spec, ActionId.CREATE_INDEX, [], NOW)
    assert not gate.ok and "maintenance window" in gate.reason
    assert policy.may_start(spec, ActionId.VACUUM, [], NOW).ok


def test_maintenance_window_respects_time_zone() -> None:
    window = monitor.MaintenanceWindow(start="02:00", duration="1h", time_zone="Europe/Berlin")
    assert policy.in_window(window, datetime.datetime(2026, 11, 28, 1, 30, tzinfo=UTC))
    assert not policy.in_window(window, datetime.datetime(2026, 11, 28, 2, 30, tzinfo=UTC))


def test_approval_deadline_and_timeouts() -> None:
    spec = _spec(approval={"expiry": "30m"})
    assert policy.approval_deadline(spec, NOW) == NOW + datetime.timedelta(minutes=30)
    assert policy.timeouts_for(spec, RiskClass.SESSION).lock_timeout == "1s"
    assert policy.timeouts_for(spec, RiskClass.DDL).statement_timeout == "2h"
