"""RemediationEvent v1 from the bus (issue 24): any bytes, and any change to a valid event,
either parse into an event or raise MalformedMessage with a reason; nothing else escapes (a
read-only consumer such as a notifier must survive whatever a login publishes)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey.models import messages
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState

VALID: dict[str, Any] = {
    "schema": "startupmonkey.dev/remediation-event/v1", "namespace": "ns", "monitor": "m",
    "remediation": "m-analyze-0123456789", "key": "ns/m/stale_statistics/public.orders",
    "detectionId": "abcdef0123456789", "detector": "stale_statistics", "action": "analyze",
    "state": "Succeeded", "time": "2026-01-01T00:00:00Z", "message": "done"}

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=12), children, max_size=4),
                    max_leaves=20)


def _parses_or_is_malformed(data: bytes) -> messages.RemediationEvent | None:
    try:
        return messages.parse_remediation_event(data)
    except messages.MalformedMessage as exc:
        assert exc.kind == "remediation-event" and exc.reason
        return None


def test_the_reference_event_parses_and_round_trips() -> None:
    event = messages.parse_remediation_event(json.dumps(VALID).encode())
    assert event.state is RemediationState.SUCCEEDED and event.action is ActionId.ANALYZE
    assert messages.parse_remediation_event(event.encode()) == event


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_any_bytes_parse_or_are_malformed(data: bytes) -> None:
    _parses_or_is_malformed(data)


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(VALID)), JSON, max_size=4),
       dropped=st.sets(st.sampled_from(sorted(VALID)), max_size=3),
       extra=st.dictionaries(st.text(max_size=12), JSON, max_size=2))
def test_any_change_to_an_event_parses_or_is_malformed_with_a_reason(
        changes: dict[str, Any], dropped: set[str], extra: dict[str, Any]) -> None:
    body = {k: v for k, v in dict(VALID, **changes).items() if k not in dropped}
    event = _parses_or_is_malformed(json.dumps({**extra, **body}).encode())
    if event is not None:  # what parsed is what the model allows
        assert event.detector in DetectorId and event.state in RemediationState
        assert 1 <= len(event.namespace) <= 63 and len(event.message) <= 4096


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255),
       cut=st.integers(min_value=0))
def test_a_corrupted_or_truncated_event_parses_or_is_malformed(position: int, byte: int,
                                                                cut: int) -> None:
    data = bytearray(json.dumps(VALID).encode())
    data[position % len(data)] = byte
    _parses_or_is_malformed(bytes(data[:len(data) - cut % len(data)]))


@settings(max_examples=50, deadline=None)
@given(state=st.sampled_from(list(RemediationState)), text=st.text(max_size=5000))
def test_oversized_or_odd_text_fields_are_malformed_not_crashes(
        state: RemediationState, text: str) -> None:
    body = dict(VALID, state=state.value, message=text, remediation=text[:300] or "x")
    event = _parses_or_is_malformed(json.dumps(body).encode())
    if event is not None:
        assert event.state is state and event.message == text
