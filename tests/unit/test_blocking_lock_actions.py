"""blocking_lock proposes real actions (issue 17, item 3): the pairs the executor accepts, and
what the policy makes of them. A forged blocking_lock detection asking for anything else is a
malformed message."""

from __future__ import annotations

import json

import pytest

from startupmonkey.executor import policy
from startupmonkey.models import messages, monitor
from startupmonkey.models.enums import (
    ALLOWED_ACTIONS,
    DEFAULT_ACTION,
    ActionId,
    DetectorId,
    RemediationState,
    risk_of,
)

BODY = {
    "schema": "startupmonkey.dev/detection/v1", "id": "abcdef0123456789",
    "key": "ns/m/blocking_lock/pid=42", "namespace": "ns", "monitor": "m", "database": "shop",
    "detector": "blocking_lock", "target": {"pid": 42, "backendStart": "2026-01-01T00:00:00Z"},
    "summary": "blocks", "firstSeen": "2026-01-01T00:00:00Z",
    "lastSeen": "2026-01-01T00:00:00Z", "publishedAt": "2026-01-01T00:00:00Z"}


def _parse(action: ActionId) -> messages.Detection:
    body = dict(BODY, proposedAction=action.value, riskClass=risk_of(action).value)
    return messages.parse_detection(json.dumps(body).encode())


def test_blocking_lock_may_terminate_or_cancel_the_root_or_advise() -> None:
    assert DEFAULT_ACTION[DetectorId.BLOCKING_LOCK] is ActionId.TERMINATE_SESSION
    assert ALLOWED_ACTIONS[DetectorId.BLOCKING_LOCK] == {
        ActionId.TERMINATE_SESSION, ActionId.CANCEL_QUERY, ActionId.ADVICE}
    for action in ALLOWED_ACTIONS[DetectorId.BLOCKING_LOCK]:
        assert _parse(action).proposed_action is action


@pytest.mark.parametrize("action", sorted(set(ActionId) - ALLOWED_ACTIONS[
    DetectorId.BLOCKING_LOCK]))
def test_a_forged_blocking_lock_cannot_ask_for_anything_else(action: ActionId) -> None:
    with pytest.raises(messages.MalformedMessage) as info:
        _parse(action)
    assert f"cannot propose {action.value}" in info.value.reason


def test_the_session_class_policy_decides_a_root_blockers_first_state() -> None:
    base = {"database": {"host": "db", "dbname": "shop", "credentialsSecret": {"name": "s"}}}
    expected = {"observe": RemediationState.OBSERVED, "approval":
                RemediationState.PENDING_APPROVAL, "auto": RemediationState.APPROVED}
    for mode, state in expected.items():
        spec = monitor.DatabaseMonitorSpec.model_validate({**base, "mode": mode})
        for action in (ActionId.TERMINATE_SESSION, ActionId.CANCEL_QUERY):
            assert policy.first_state(spec, action) is state
        assert policy.first_state(spec, ActionId.ADVICE) is RemediationState.RECOMMENDED
    # spec.policy.session overrides the global mode for root blockers as for any session.
    spec = monitor.DatabaseMonitorSpec.model_validate(
        {**base, "mode": "auto", "policy": {"session": "approval"}})
    assert policy.first_state(spec, ActionId.TERMINATE_SESSION) is \
        RemediationState.PENDING_APPROVAL


def test_superusers_are_protected_by_default() -> None:
    assert monitor.Protect().superusers is True
    assert monitor.Protect.model_validate({"superusers": False}).superusers is False
