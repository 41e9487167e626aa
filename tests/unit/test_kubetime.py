"""Kubernetes timestamps: now at the second, parse to aware datetimes, format as metav1.Time."""

from __future__ import annotations

import datetime

import pytest

from startupmonkey import kubetime

UTC = datetime.UTC


def test_utcnow_is_aware_utc_at_the_second() -> None:
    now = kubetime.utcnow()
    assert now.tzinfo is not None and now.utcoffset() == datetime.timedelta(0)
    assert now.microsecond == 0
    assert abs(datetime.datetime.now(UTC) - now) < datetime.timedelta(seconds=5)


@pytest.mark.parametrize(("stamp", "expected"), [
    ("2026-11-28T12:00:00Z", datetime.datetime(2026, 11, 28, 12, tzinfo=UTC)),
    ("2026-11-28T12:00:00+00:00", datetime.datetime(2026, 11, 28, 12, tzinfo=UTC)),
    ("2026-11-28T14:00:00+02:00", datetime.datetime(2026, 11, 28, 12, tzinfo=UTC)),
    ("2026-11-28T12:00:00.250000Z",
     datetime.datetime(2026, 11, 28, 12, 0, 0, 250000, tzinfo=UTC)),
])
def test_parse_accepts_z_and_offsets(stamp: str, expected: datetime.datetime) -> None:
    parsed = kubetime.parse(stamp)
    assert parsed == expected and parsed.tzinfo is not None


@pytest.mark.parametrize("stamp", ["2026-11-28T12:00:00", "yesterday", ""])
def test_parse_refuses_naive_or_garbage(stamp: str) -> None:
    with pytest.raises(ValueError):
        kubetime.parse(stamp)


@pytest.mark.parametrize("value", [None, 17, "2026-11-28T12:00:00", "soon"])
def test_parse_or_none_is_none_for_anything_but_an_aware_stamp(value: object) -> None:
    assert kubetime.parse_or_none(value) is None


def test_parse_or_none_parses_a_stamp() -> None:
    assert kubetime.parse_or_none("2026-11-28T12:00:00Z") == datetime.datetime(
        2026, 11, 28, 12, tzinfo=UTC)


def test_format_is_metav1_time_utc_at_the_second() -> None:
    when = datetime.datetime(2026, 11, 28, 14, 0, 5, 999999,
                             tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert kubetime.format(when) == "2026-11-28T12:00:05Z"


def test_format_and_parse_round_trip() -> None:
    now = kubetime.utcnow()
    assert kubetime.parse(kubetime.format(now)) == now
    assert kubetime.format(kubetime.parse("2026-11-28T12:00:00Z")) == "2026-11-28T12:00:00Z"
