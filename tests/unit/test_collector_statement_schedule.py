"""When the collector reads pg_stat_statements (pure logic, issue 19 item 3): every round while
it holds few entries, every few rounds when it holds thousands, at once after a reconnect, a
failed read or a reset, and never less often than every MAX_STATEMENT_SKIP rounds."""

from __future__ import annotations

import datetime
import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from startupmonkey.collector import source

ENTRIES = st.integers(0, 20_000)
EVERY = st.integers(1, 5_000)
SKIP = st.integers(1, 12)


@given(entries=ENTRIES, every=EVERY, skip=SKIP)
def test_the_period_grows_with_the_entries_and_is_bounded(entries: int, every: int,
                                                          skip: int) -> None:
    period = source.statement_period(entries, every, skip)
    assert 1 <= period <= max(1, skip)
    if entries <= every:
        assert period == 1
    else:
        assert period == min(skip, math.ceil(entries / every))
    # Monotone: more entries never means more frequent reads.
    assert source.statement_period(entries + 1, every, skip) >= period
    # The entries read per round on average stay under the every-round threshold, unless the
    # skip limit caps the period.
    if period < skip:
        assert entries / period <= every


@given(entries=ENTRIES, every=EVERY, skip=SKIP, since=st.integers(1, 30))
def test_due_exactly_when_the_period_has_passed(entries: int, every: int, skip: int,
                                                since: int) -> None:
    period = source.statement_period(entries, every, skip)
    assert source.statements_due(since, entries, every, skip) is (since >= period)
    assert source.statements_due(None, entries, every, skip)  # owed: read at once


def test_the_defaults() -> None:
    assert source.STATEMENTS_EVERY_ROUND == 1000 and source.MAX_STATEMENT_SKIP == 5
    assert source.statement_period(1000) == 1
    assert source.statement_period(1001) == 2
    assert source.statement_period(2500) == 3
    assert source.statement_period(5000) == 5
    assert source.statement_period(50_000) == 5


def _run(schedule: source.StatementSchedule, entries: list[int],
         events: dict[int, str]) -> tuple[list[int], set[int]]:
    """Rounds 0.. as the source drives the schedule: the rounds that read, and the reads that
    revealed a reset. ``entries[r]`` is what a read in round r returns; ``events``: "fail"
    (the read fails), "reset" (its stats_reset is new), "reconnect" (before the round)."""
    reads, resets = [], set()
    stats_reset = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    compared = False  # a successful read since the last (re)connect to compare with
    for n, count in enumerate(entries):
        event = events.get(n)
        if event == "reconnect":
            schedule.forget()
            compared = False
        if not (schedule.due() or schedule.schema is None):
            continue
        reads.append(n)
        if event == "fail":
            schedule.owed()
            continue
        if event == "reset":
            stats_reset += datetime.timedelta(hours=1)
            if compared:
                resets.add(n)
        schedule.read(count, stats_reset, (n,), "public")
        compared = True
    return reads, resets


@given(entries=st.lists(st.integers(0, 12_000), min_size=1, max_size=80),
       events=st.dictionaries(st.integers(0, 79), st.sampled_from(["fail", "reset",
                                                                   "reconnect"])))
def test_a_sequence_of_rounds_follows_the_rule(entries: list[int],
                                               events: dict[int, str]) -> None:
    reads, resets = _run(source.StatementSchedule(), entries, events)
    assert reads and reads[0] == 0  # the first round reads
    owed = {n for n in reads if events.get(n) == "fail"} | resets
    for previous, current in itertools.pairwise(reads):
        period = source.statement_period(entries[previous])
        gap = current - previous
        assert gap <= source.MAX_STATEMENT_SKIP
        if previous in owed:
            assert gap == 1  # read again at once
        elif events.get(current) == "reconnect":
            assert gap <= period
        else:
            assert gap == period  # the rounds in between were skipped by the rule
    for n, event in events.items():
        if event == "reconnect" and n < len(entries):
            assert n in reads  # read at once after a reconnect
    # After the last read only rounds the rule allows are skipped.
    tail = len(entries) - 1 - reads[-1]
    assert tail == 0 or (reads[-1] not in owed
                         and tail < source.statement_period(entries[reads[-1]]))


def test_a_skipped_round_keeps_the_last_top_and_schema() -> None:
    schedule = source.StatementSchedule()
    assert schedule.due()
    schedule.read(4_200, None, (1, 2, 3), "monitoring")
    for _ in range(4):
        assert not schedule.due()
        assert schedule.top == (1, 2, 3) and schedule.schema == "monitoring"
    assert schedule.due()  # fifth round after the read
    schedule.owed()
    assert schedule.top == () and schedule.schema is None
    assert schedule.due()


def test_a_module_constant_lowers_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "STATEMENTS_EVERY_ROUND", 10)
    assert source.statement_period(35) == 4
    schedule = source.StatementSchedule()
    assert schedule.due()
    schedule.read(35, None, (), "public")
    assert [schedule.due() for _ in range(4)] == [False, False, False, True]
