"""The finalizer drain rule: wait while work is in flight, never longer than the grace."""

from __future__ import annotations

import datetime

from startupmonkey.operator import deletion

T0 = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def test_nothing_in_flight_proceeds_at_once() -> None:
    decision = deletion.decide(0, T0, at(1), grace=60, poll=5)
    assert not decision.wait and not decision.timed_out


def test_in_flight_work_is_waited_for_and_looked_at_again() -> None:
    decision = deletion.decide(2, T0, at(10), grace=60, poll=5)
    assert decision.wait and decision.delay == 5
    assert "2 in-flight" in decision.message
    near_end = deletion.decide(1, T0, at(58), grace=60, poll=5)
    assert near_end.wait and near_end.delay == 2


def test_the_grace_period_bounds_the_wait() -> None:
    decision = deletion.decide(1, T0, at(60), grace=60, poll=5)
    assert not decision.wait and decision.timed_out
    assert "still in flight" in decision.message


def test_counts_and_times_are_read_from_the_body() -> None:
    body = {"metadata": {"deletionTimestamp": "2026-11-28T12:00:00Z"},
            "status": {"remediations": {"inFlight": 3}}}
    assert deletion.in_flight(body) == 3
    assert deletion.deleted_at(body, at(99)) == T0
    assert deletion.in_flight({"status": {}}) == 0
    assert deletion.deleted_at({}, at(5)) == at(5)
