"""Only news is sent: a state a Remediation entered before its target was first seen (the
target's notify-from time) is old news, never sent; a new or renamed target starts from now,
a removed one is dropped; the recorded times round-trip and a forged or broken entry is
recorded anew rather than trusted."""

from __future__ import annotations

import datetime
import json
from typing import Any

from startupmonkey import notify
from startupmonkey.models import monitor as models
from startupmonkey.models.enums import RemediationState as S

T0 = datetime.datetime(2026, 12, 6, 12, 0, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def _target(name: str = "ops", **extra: Any) -> models.NotificationTarget:
    return models.NotificationTarget.model_validate(
        {"name": name, "secretRef": {"name": "hook"}, **extra})


def _rem(steps: list[tuple[str, datetime.datetime]], risk: str = "ddl",
         created: datetime.datetime | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "shop-0123456789", "namespace": "shop"}
    if created is not None:
        meta["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": meta, "spec": {"monitor": "shop", "riskClass": risk},
            "status": {"state": steps[-1][0],
                       "history": [{"state": s, "time": at.isoformat()} for s, at in steps]}}


def test_a_state_entered_before_the_target_was_seen_is_not_sent() -> None:
    old = _rem([("Proposed", T0 - 14 * DAY), ("Running", T0 - 14 * DAY),
                ("Failed", T0 - 14 * DAY)])
    target = _target()
    assert notify.due([target], old, set()) == [(target, S.FAILED)]  # without a since: sent
    assert notify.due([target], old, set(), {"ops": T0}) == []


def test_a_remediation_still_waiting_for_approval_is_sent_however_old() -> None:
    # It needs a person now: enabling notifications must reach them. Once it has moved on,
    # its old PendingApproval is old news like any other state.
    target = _target()
    waiting = _rem([("PendingApproval", T0 - DAY)])
    assert notify.due([target], waiting, set(), {"ops": T0}) == [(target, S.PENDING_APPROVAL)]
    moved_on = _rem([("PendingApproval", T0 - DAY), ("Expired", T0 - DAY)])
    assert notify.due([target], moved_on, set(), {"ops": T0}) == []


def test_a_state_entered_at_or_after_the_since_is_sent() -> None:
    target = _target()
    at_once = _rem([("Proposed", T0 - DAY), ("Failed", T0)])
    later = _rem([("Proposed", T0 - DAY), ("Failed", T0 + datetime.timedelta(seconds=1))])
    assert notify.due([target], at_once, set(), {"ops": T0}) == [(target, S.FAILED)]
    assert notify.due([target], later, set(), {"ops": T0}) == [(target, S.FAILED)]


def test_each_target_has_its_own_since() -> None:
    old, new = _target("old"), _target("new")
    rem = _rem([("Proposed", T0), ("Failed", T0 + DAY)])
    assert notify.due([old, new], rem, set(), {"old": T0, "new": T0 + 2 * DAY}) == [
        (old, S.FAILED)]


def test_the_latest_entry_of_a_state_counts() -> None:
    """Running again after a retry: the state was entered again after the since."""
    rem = _rem([("Running", T0 - DAY), ("Failed", T0 - DAY), ("Running", T0 + DAY),
                ("RolledBack", T0 + DAY)])
    assert notify.transition_time(rem, S.RUNNING) == T0 + DAY
    assert notify.transition_time(rem, S.FAILED) == T0 - DAY
    target = _target(states=["Failed", "RolledBack"])
    assert notify.due([target], rem, set(), {"ops": T0}) == [(target, S.ROLLED_BACK)]


def test_without_history_the_creation_time_counts_and_unknown_is_sent() -> None:
    target = _target()
    rem = _rem([("Failed", T0)])
    rem["status"]["history"] = []
    assert notify.due([target], rem, set(), {"ops": T0}) == [(target, S.FAILED)]
    rem["metadata"]["creationTimestamp"] = "2026-11-01T00:00:00Z"
    assert notify.transition_time(rem, S.FAILED) == datetime.datetime(
        2026, 11, 1, tzinfo=datetime.UTC)
    assert notify.due([target], rem, set(), {"ops": T0}) == []


def test_notify_from_keeps_the_recorded_adds_new_targets_and_drops_removed() -> None:
    recorded = {"kept": T0 - DAY, "removed": T0 - 2 * DAY}
    since = notify.notify_from([_target("kept"), _target("renamed")], recorded, T0)
    assert since == {"kept": T0 - DAY, "renamed": T0}


def test_the_annotation_round_trips_and_broken_entries_are_dropped() -> None:
    value = notify.format_since({"b": T0, "a": T0 - DAY})
    assert value == '{"a":"2026-12-05T12:00:00Z","b":"2026-12-06T12:00:00Z"}'
    assert notify.parse_since(value) == {"a": T0 - DAY, "b": T0}
    broken = json.dumps({"a": "yesterday", "b": "2026-12-06T12:00:00Z", "c": 5,
                         "d": "2026-12-06T12:00:00"})  # no zone: refused, not guessed
    assert notify.parse_since(broken) == {"b": T0}
    for garbage in (None, "", "not json", "[1, 2]", '"text"'):
        assert notify.parse_since(garbage) == {}
