"""Detection v1 from the bus: any bytes are either a valid detection or a MalformedMessage.

A detection may only ask for an action its detector can propose, in that action's risk class
(``ALLOWED_ACTIONS``), so a forged message cannot pick the executor's action (issue 24).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey.models import messages
from startupmonkey.models.enums import ALLOWED_ACTIONS, ActionId, DetectorId, RiskClass, risk_of

VALID: dict[str, Any] = {
    "schema": "startupmonkey.dev/detection/v1", "id": "abcdef0123456789",
    "key": "ns/m/stale_statistics/public.orders", "namespace": "ns", "monitor": "m",
    "database": "shop", "detector": "stale_statistics", "proposedAction": "analyze",
    "riskClass": "maintenance", "target": {"schema": "public", "table": "orders"},
    "summary": "stale", "firstSeen": "2026-01-01T00:00:00Z",
    "lastSeen": "2026-01-01T00:00:00Z", "publishedAt": "2026-01-01T00:00:00Z"}


def test_the_reference_message_parses() -> None:
    assert messages.parse_detection(json.dumps(VALID).encode()).detector is (
        DetectorId.STALE_STATISTICS)


@settings(max_examples=300, deadline=None)
@given(detector=st.sampled_from(list(DetectorId)), action=st.sampled_from(list(ActionId)),
       risk=st.sampled_from(list(RiskClass)))
def test_only_allowed_pairs_in_their_own_risk_class_parse(
        detector: DetectorId, action: ActionId, risk: RiskClass) -> None:
    body = dict(VALID, detector=detector.value, proposedAction=action.value,
                riskClass=risk.value)
    allowed = action in ALLOWED_ACTIONS[detector] and risk is risk_of(action)
    if allowed:
        assert messages.parse_detection(json.dumps(body).encode()).proposed_action is action
    else:
        with pytest.raises(messages.MalformedMessage) as info:
            messages.parse_detection(json.dumps(body).encode())
        expected = (f"cannot propose {action.value}" if action not in ALLOWED_ACTIONS[detector]
                    else f"is {risk_of(action).value}, not {risk.value}")
        assert expected in info.value.reason


def test_every_detector_default_is_allowed_and_advice_always() -> None:
    for detector, allowed in ALLOWED_ACTIONS.items():
        assert ActionId.ADVICE in allowed, detector
    assert set(ALLOWED_ACTIONS) == set(DetectorId)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=12), children, max_size=4),
                    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(VALID)), JSON, max_size=4))
def test_any_change_to_a_detection_parses_or_is_malformed_with_a_reason(
        changes: dict[str, Any]) -> None:
    payload = json.dumps(dict(VALID, **changes)).encode()
    try:
        messages.parse_detection(payload)
    except messages.MalformedMessage as exc:
        assert exc.kind == "detection" and exc.reason


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_any_bytes_parse_or_are_malformed(data: bytes) -> None:
    try:
        messages.parse_detection(data)
    except messages.MalformedMessage as exc:
        assert exc.reason
