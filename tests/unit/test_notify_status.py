"""NotificationsDelivered on the monitor (issue 20, item 1): absent without targets; True
while no target's last attempt failed; False with the first failing target's reason and every
failing target's words; never part of Ready; a new failure is an error reason (an Event)."""

from __future__ import annotations

import dataclasses
from typing import Any

from startupmonkey import notify
from startupmonkey.operator import status
from tests.unit.test_operator_status import by_type, inputs

TARGETS = {"notifications": [{"name": "oncall", "secretRef": {"name": "a"}},
                             {"name": "audit", "secretRef": {"name": "b"}}]}


def _with(health: dict[str, notify.Health] | None) -> status.Inputs:
    return dataclasses.replace(inputs(TARGETS), notifications=health)


def _cond(patch: dict[str, Any]) -> dict[str, Any] | None:
    return by_type(patch).get(status.NOTIFICATIONS_DELIVERED)


def test_no_targets_no_condition() -> None:
    assert _cond(status.compute(inputs())) is None


def test_nothing_failing_is_delivered_and_ready_is_untouched() -> None:
    patch = status.compute(_with({}))
    cond = _cond(patch)
    assert cond is not None and cond["status"] == "True" and cond["reason"] == "Delivered"
    assert by_type(patch)["Ready"]["status"] == "True"


def test_a_failing_target_is_false_with_its_reason_and_words() -> None:
    health = {"oncall": notify.Health(),
              "audit": notify.Health(False, notify.REASON_TIMEOUT, "no answer within 10s"),
              "removed": notify.Health(False, notify.REASON_FAILED, "not in the spec")}
    patch = status.compute(_with(health))
    cond = _cond(patch)
    assert cond is not None and cond["status"] == "False"
    assert cond["reason"] == notify.REASON_TIMEOUT
    assert cond["message"] == "audit: no answer within 10s"
    assert by_type(patch)["Ready"]["status"] == "True", "not part of Ready"
    assert [c.type for c in status.new_problems({}, patch)] == [
        status.NOTIFICATIONS_DELIVERED]


def test_without_a_notifier_every_target_reads_as_delivered() -> None:
    """Health comes only through Inputs (the context's notifier): no module-level source."""
    assert not hasattr(status, "notification_health")
    cond = _cond(status.compute(_with(None)))
    assert cond is not None and cond["status"] == "True" and cond["reason"] == "Delivered"
