"""Bad input is logged with its reason every time it can be, without flooding the log."""

from __future__ import annotations

import logging

import pytest

from startupmonkey import observability


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_kind_is_logged_at_once_then_at_most_once_an_interval_with_the_count(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = observability.RateLimitedLog(logging.getLogger("t"), interval=60, clock=clock)
    caplog.set_level(logging.WARNING)

    assert limited.warning("detection", "bad %s", "first")
    assert limited.warning("event", "bad %s", "other kind")
    assert not limited.warning("detection", "bad %s", "second")
    assert not limited.warning("detection", "bad %s", "third")
    clock.now += 60
    assert limited.warning("detection", "bad %s", "fourth")

    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad first", "bad other kind",
                     "bad fourth (2 more of this kind not logged since the last line)"]
    assert [getattr(r, "suppressed", None) for r in caplog.records] == [0, 0, 2]
