"""startupmonkey/db.py: the reconnect backoff (delays, doubling, cap, reset, jitter) and
which errors mean the server went away."""

from __future__ import annotations

import random

import psycopg
import pytest

from startupmonkey import db


class Bounds(random.Random):
    """A Random whose ``uniform`` records the interval it was asked for and returns one end."""

    def __init__(self, pick: str = "low") -> None:
        super().__init__(0)
        self.pick = pick
        self.asked: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return a if self.pick == "low" else b


CEILINGS = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
"""The default backoff's ceilings: 0.5 s doubling, capped at 30 s."""


def test_each_delay_is_drawn_from_half_the_ceiling_to_the_ceiling_doubling_to_the_cap() -> None:
    rng = Bounds()
    backoff = db.Backoff(rng=rng)
    delays = [backoff.next_delay() for _ in CEILINGS]
    assert rng.asked == [(c / 2, c) for c in CEILINGS]
    assert delays == [c / 2 for c in CEILINGS]
    assert backoff.attempt == len(CEILINGS)


@pytest.mark.parametrize("seed", range(20))
def test_jittered_delays_stay_within_their_interval(seed: int) -> None:
    backoff = db.Backoff(rng=random.Random(seed))
    for ceiling in CEILINGS:
        assert ceiling / 2 <= backoff.next_delay() <= ceiling


def test_delays_are_jittered_so_clients_spread_out() -> None:
    # Clients that lost the same server at the same moment: their 6th retries (ceiling 16 s)
    # are spread over [8, 16] instead of landing together.
    sixth = []
    for seed in range(50):
        backoff = db.Backoff(rng=random.Random(seed))
        sixth.append([backoff.next_delay() for _ in range(6)][-1])
    assert min(sixth) >= 8 and max(sixth) <= 16
    assert max(sixth) - min(sixth) > 4
    assert len(set(sixth)) == len(sixth)


def test_reset_starts_again_from_the_base_delay() -> None:
    rng = Bounds(pick="high")
    backoff = db.Backoff(rng=rng)
    assert [backoff.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    backoff.reset()
    assert backoff.attempt == 0
    assert [backoff.next_delay() for _ in range(2)] == [0.5, 1.0]
    assert rng.asked[-2:] == [(0.25, 0.5), (0.5, 1.0)]


def test_base_and_cap_are_honoured() -> None:
    rng = Bounds(pick="high")
    backoff = db.Backoff(base=1.0, cap=5.0, rng=rng)  # the collector's stream retries
    assert [backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_very_long_outage_keeps_the_cap_instead_of_overflowing() -> None:
    # 2**1024 does not fit a float: before the exponent was bounded, attempt 1024 (about
    # 8.5 hours of a database down at the 30 s cap) raised OverflowError in the round loop.
    rng = Bounds(pick="high")
    backoff = db.Backoff(rng=rng)
    for _ in range(3000):
        delay = backoff.next_delay()
    assert delay == 30.0 and rng.asked[-1] == (15.0, 30.0)


@pytest.mark.parametrize(("error", "gone"), [
    (psycopg.OperationalError("the connection is lost"), True),  # no SQLSTATE: client side
    (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
    (psycopg.errors.CrashShutdown("terminating connection because of crash"), True),
    (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
    (psycopg.errors.ConnectionFailure("connection failure"), True),
    (ConnectionRefusedError(111, "Connection refused"), True),
    (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), False),
    (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), False),
    (psycopg.errors.InsufficientPrivilege("permission denied"), False),
    (psycopg.errors.UndefinedTable("relation does not exist"), False),
    (ValueError("not a database error"), False),
])
def test_server_gone_tells_a_server_that_went_away_from_a_statement_that_failed(
        error: BaseException, gone: bool) -> None:
    """A restart, crash or cut connection is retried by the executor; a timeout, a missing
    privilege or a missing table is an outcome of the statement and is not."""
    assert db.server_gone(error) is gone
