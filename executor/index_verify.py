"""Keep or revert a built index, judged by what the served statements really cost.

Planner cost (the pre-check) is an estimate; the verdict that counts is pg_stat_statements:
the mean execution time per call of the target queryids before the build against a window
after it, each with a minimum of calls (``spec.verification``). The *before* figure is the
window the analyser measured and sent in the detection's evidence (:func:`history_window`), so
the build starts at once; the cumulative counters re-read at plan time are the cross-check
(:func:`cumulative_window`) and the fallback when the evidence has no figure. Faster by at
least the margin **and** the index's own ``idx_scan`` grew during the after window: keep
(Succeeded); otherwise DROP INDEX CONCURRENTLY and end RolledBack. An index nothing scanned
is reverted whatever the timing says: the statements may have sped up for another reason.
Every number goes into the Remediation status (REFERENCE.md: the peer rolled back by "seen
again", so a good index could be dropped).

A window is the difference of two :class:`Sample` s of cumulative counters. Counters can go
backwards: ``pg_stat_statements_reset()`` (all, or one entry), eviction of an entry, a
restart. A full reset shows in ``pg_stat_statements_info.stats_reset`` (PostgreSQL 14+); a
single entry that shrank was reset or evicted. Either way the end counters alone are the calls
since the reset, which all fall inside the window, so the mean per call stays right and the
window is marked ``reset``. (On 15 a single-entry reset that grows past its old count is
invisible; 17's ``stats_since`` column would close that gap.) Samples convert to and from the
status' ``before``/``after`` maps, so a restarted executor can finish a window it began.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Mapping, Sequence

from psycopg import sql

from startupmonkey import db
from startupmonkey.executor import guard, index_build, index_catalog, indexes, plan
from startupmonkey.models import remediation
from startupmonkey.models.enums import RemediationState

_COUNTERS = """
SELECT s.queryid::text, sum(s.calls)::int8, sum(s.total_exec_time)::float8
FROM {schema}.pg_stat_statements(false) AS s
WHERE s.dbid = (SELECT d.oid FROM pg_catalog.pg_database AS d
                WHERE d.datname = pg_catalog.current_database())
  AND s.queryid = ANY(%s)
GROUP BY s.queryid
"""
_CLOCK = """
SELECT extract(epoch FROM pg_catalog.clock_timestamp())::float8,
       pg_catalog.current_setting('server_version_num')::int
"""
_RESET = "SELECT extract(epoch FROM stats_reset)::float8 FROM {schema}.pg_stat_statements_info"
# The index's own scans (flushed by each backend at most once a second while it is busy).
_INDEX_SCANS = """
SELECT pg_catalog.pg_stat_get_numscans(c.oid)::int8
FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'i'
"""


class NoStatements(Exception):
    """pg_stat_statements is not installed in this database."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """Cumulative counters of some queryids at one moment (server clock, epoch seconds)."""

    taken_at: float
    stats_reset: float | None
    calls: Mapping[str, int]
    total_ms: Mapping[str, float]
    server_started: float | None = None
    """When the server incarnation began (``guard.server_started``): a window whose ends
    differ in it spans a restart or a crash re-initialisation, and every counter in it (the
    index's ``idx_scan`` too) may have been reset."""

    def as_status(self, prefix: str = "") -> dict[str, float]:
        """Flat numbers for a Remediation status map (``calls.<queryid>`` ...)."""
        values = {f"{prefix}sampled_at": self.taken_at}
        if self.stats_reset is not None:
            values[f"{prefix}stats_reset"] = self.stats_reset
        if self.server_started is not None:
            values[f"{prefix}server_started"] = self.server_started
        for queryid, calls in self.calls.items():
            values[f"{prefix}calls.{queryid}"] = float(calls)
            values[f"{prefix}total_ms.{queryid}"] = self.total_ms.get(queryid, 0.0)
        return values

    @classmethod
    def from_status(cls, values: Mapping[str, float], prefix: str = "") -> Sample | None:
        """The sample :meth:`as_status` wrote, or None when there is none."""
        if f"{prefix}sampled_at" not in values:
            return None
        calls, total = {}, {}
        for key, value in values.items():
            if key.startswith(f"{prefix}calls."):
                calls[key[len(prefix) + 6:]] = int(value)
            elif key.startswith(f"{prefix}total_ms."):
                total[key[len(prefix) + 9:]] = float(value)
        return cls(values[f"{prefix}sampled_at"], values.get(f"{prefix}stats_reset"), calls,
                   total, values.get(f"{prefix}server_started"))


@dataclasses.dataclass(frozen=True)
class Window:
    """Calls and execution time of the target queryids between two samples."""

    seconds: float
    calls: int
    total_ms: float
    reset: bool = False
    per_query: Mapping[str, tuple[int, float]] = dataclasses.field(default_factory=dict)

    @property
    def mean_ms(self) -> float | None:
        """Mean execution time per call, or None without calls."""
        return self.total_ms / self.calls if self.calls else None

    def numbers(self, prefix: str) -> dict[str, float]:
        """``<prefix>calls``, ``_total_ms``, ``_mean_ms``, ``_seconds``, ``_reset``."""
        values = {f"{prefix}calls": float(self.calls), f"{prefix}total_ms": self.total_ms,
                  f"{prefix}seconds": self.seconds, f"{prefix}reset": float(self.reset)}
        if self.mean_ms is not None:
            values[f"{prefix}mean_ms"] = self.mean_ms
        return values


def history_window(evidence: Mapping[str, str]) -> Window | None:
    """The before window the analyser measured (``before_calls``, ``before_total_ms``,
    ``before_window_s`` of a missing_index detection), or None when the evidence has none."""
    try:
        calls = float(evidence["before_calls"])
        total_ms = float(evidence["before_total_ms"])
        seconds = float(evidence.get("before_window_s") or 0.0)
    except (KeyError, ValueError):
        return None
    if not all(math.isfinite(v) and v >= 0 for v in (calls, total_ms, seconds)):
        return None
    return Window(seconds=seconds, calls=int(calls), total_ms=total_ms)


def cumulative_window(now: Sample) -> Window:
    """The counters of ``now`` as one window since each entry began (or the last reset):
    the plan-time cross-check of the analyser's figure, and the before figure without it."""
    return Window(seconds=0.0, calls=sum(now.calls.values()),
                  total_ms=sum(now.total_ms.values()), per_query={
                      q: (c, now.total_ms.get(q, 0.0)) for q, c in now.calls.items()})


async def index_scans(conn: db.Conn, schema: str, name: str) -> int | None:
    """``idx_scan`` of the index ``schema.name`` now, or None when it does not exist."""
    value = await index_catalog.scalar(conn, _INDEX_SCANS, (schema, name))
    return None if value is None else int(value)


def _queryids(queryids: Sequence[str | int]) -> list[int]:
    try:
        return [int(q) for q in queryids]
    except ValueError as exc:
        raise ValueError(f"queryids must be decimal integers: {list(queryids)}") from exc


async def sample(conn: db.Conn, queryids: Sequence[str | int]) -> Sample:
    """The counters of ``queryids`` in this database now (summed over users and nesting)."""
    schema = await index_catalog.extension_schema(conn, "pg_stat_statements")
    if schema is None:
        raise NoStatements("pg_stat_statements is not installed in this database")
    ident = sql.Identifier(schema)
    cursor = await conn.execute(sql.SQL(_COUNTERS).format(schema=ident),
                                (_queryids(queryids),))
    rows = await cursor.fetchall()
    cursor = await conn.execute(_CLOCK)
    clock = await cursor.fetchone()
    assert clock is not None
    reset = None
    if clock[1] >= 140000:  # pg_stat_statements_info is new in PostgreSQL 14
        cursor = await conn.execute(sql.SQL(_RESET).format(schema=ident))
        row = await cursor.fetchone()
        reset = None if row is None else row[0]
    return Sample(clock[0], reset, {q: int(c) for q, c, _ in rows},
                  {q: float(t) for q, _, t in rows}, await guard.server_started(conn))


def restarted(start: Sample, end: Sample) -> bool:
    """True when the server restarted between the samples (known only when both say when it
    started)."""
    return None not in (start.server_started, end.server_started) and \
        start.server_started != end.server_started


def window(start: Sample, end: Sample) -> Window:
    """What happened between two samples; counters that went backwards count from zero."""
    full_reset = start.stats_reset != end.stats_reset
    per_query: dict[str, tuple[int, float]] = {}
    reset = full_reset
    for queryid in sorted(set(start.calls) | set(end.calls)):
        c0, t0 = start.calls.get(queryid, 0), start.total_ms.get(queryid, 0.0)
        c1, t1 = end.calls.get(queryid, 0), end.total_ms.get(queryid, 0.0)
        if full_reset or c1 < c0 or t1 < t0:
            reset = reset or queryid in start.calls
            per_query[queryid] = (c1, t1)
        else:
            per_query[queryid] = (c1 - c0, t1 - t0)
    return Window(seconds=max(0.0, end.taken_at - start.taken_at),
                  calls=sum(c for c, _ in per_query.values()),
                  total_ms=sum(t for _, t in per_query.values()), reset=reset,
                  per_query=per_query)


async def measure(conn: db.Conn, queryids: Sequence[str | int],
                  seconds: float, *, min_calls: int = 0, max_wait: float | None = None,
                  poll: float = 1.0) -> Window:
    """A window of at least ``seconds``, stretched (up to ``max_wait`` in all) until it has
    ``min_calls`` calls. Blocks for the whole window; for a restart-safe wait use
    :func:`sample` now, store :meth:`Sample.as_status`, and :func:`window` later."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(seconds, max_wait or 0.0)
    start = await sample(conn, queryids)
    await asyncio.sleep(seconds)
    result = window(start, await sample(conn, queryids))
    while result.calls < min_calls and (remaining := deadline - loop.time()) > 0:
        await asyncio.sleep(min(poll, remaining))
        result = window(start, await sample(conn, queryids))
    return result


def decide(before: Window, after: Window, min_calls: int,
           min_improvement: float, *, index_scans: int | None = None) -> remediation.Decision:
    """Keep when the mean time per call dropped by at least ``min_improvement``; else revert.

    ``index_scans``: how much the index's own ``idx_scan`` grew during the after window.
    When it did not grow the index is reverted whatever the timing says: nothing used it.
    Otherwise, without ``min_calls`` calls in both windows (or without a before time to
    compare with), the index is kept as unverified: the engine calls this once both windows
    have enough calls, or once ``verification.maxWait`` has passed.
    """
    numbers = {"before_mean_ms": before.mean_ms, "after_mean_ms": after.mean_ms,
               "before_calls": before.calls, "after_calls": after.calls}
    if index_scans is not None and index_scans <= 0:
        timing = ""
        if before.mean_ms and after.mean_ms is not None:
            timing = (f"; mean {before.mean_ms:.3f} ms -> {after.mean_ms:.3f} ms per call, "
                      "not the index's doing")
        return remediation.Decision(
            keep=False, reason=f"revert: the index was not scanned during the after window "
            f"(idx_scan +{max(index_scans, 0)} over {after.calls} calls of the served "
            f"statements in {after.seconds:.0f} s){timing}", **numbers)
    if before.calls < min_calls or after.calls < min_calls:
        return remediation.Decision(
            keep=True, reason=f"unverified, kept: {before.calls} calls before and "
            f"{after.calls} after; {min_calls} needed in each window", **numbers)
    if not before.mean_ms:
        return remediation.Decision(keep=True, reason="unverified, kept: the statements took "
                                    "no measurable time before", **numbers)
    improvement = 1.0 - (after.mean_ms or 0.0) / before.mean_ms
    keep = improvement >= min_improvement - 1e-9  # exactly the margin counts, despite floats
    verdict = "keep" if keep else "revert"
    reason = (f"{verdict}: mean {before.mean_ms:.3f} ms -> {after.mean_ms or 0.0:.3f} ms per "
              f"call ({improvement:.1%} faster; margin {min_improvement:.0%}) over "
              f"{before.calls} and {after.calls} calls")
    return remediation.Decision(keep=keep, reason=reason, improvement=improvement, **numbers)


def decision_numbers(decision: remediation.Decision) -> dict[str, float]:
    """The decision's numbers as a status map."""
    values = {"before_mean_ms": decision.before_mean_ms, "after_mean_ms": decision.after_mean_ms,
              "before_calls": decision.before_calls, "after_calls": decision.after_calls,
              "improvement": decision.improvement, "kept": decision.keep}
    return {k: float(v) for k, v in values.items() if v is not None}


async def keep_or_revert(conn: db.Conn, step: plan.Plan,
                         target: indexes.IndexTarget, decision: remediation.Decision, *,
                         attempt: int = 1) -> indexes.IndexOutcome:
    """Succeeded when kept; otherwise run the rollback (RolledBack, or Failed with a retry)."""
    numbers = decision_numbers(decision)
    if decision.keep:
        return indexes.IndexOutcome(RemediationState.SUCCEEDED,
                                    f"kept {target.schema}.{target.name}: {decision.reason}",
                                    after=numbers)
    result = await index_build.rollback_index(conn, step, target.schema, target.name,
                                              attempt=attempt)
    result.after.update(numbers)
    result.message = f"{decision.reason}; {result.message}"
    return result
