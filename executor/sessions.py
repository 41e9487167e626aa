"""Session actions: cancel a runaway query, terminate a session idle in a transaction, end
the root blocker of a lock chain.

Before acting the executor re-reads the backend and refuses, with the reason, unless it is the
same backend (pid and backend start), still doing what it was flagged for (same query start, or
same idle transaction by state change), a client backend of this database, not protected by
``spec.protect`` (superusers' sessions too, unless ``spec.protect.superusers`` is false and the
executor itself is a superuser: PostgreSQL lets only a superuser signal one). It also re-checks
the threshold the detection was about against the live session (the query has run, or the
session has been idle, at least the configured duration; the root still holds up enough
sessions for long enough): a detection whose condition no longer holds, or never held, is
Rejected with the numbers. The statement that signals the backend repeats the identity
conditions (``executor/plan.py``), so the check and the act cannot be split by a pid reuse; for
a root blocker it also requires that the backend still waits for nothing and still has a
waiter, so a victim of the chain is never signalled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from typing import Any

from psycopg.rows import dict_row

from startupmonkey import db
from startupmonkey.executor import outcome, plan
from startupmonkey.models import durations, monitor, thresholds
from startupmonkey.models.enums import ActionId, RemediationState

_BACKEND = """
SELECT a.pid, a.usename, a.application_name, a.backend_type, a.state, a.backend_start,
       a.query_start, a.state_change, a.xact_start,
       a.datname = pg_catalog.current_database() AS this_database,
       coalesce(r.rolsuper, false) AS superuser,
       EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS p
               WHERE p.rolname = ANY(%(roles)s)
                 AND pg_catalog.pg_has_role(a.usesysid, p.oid, 'MEMBER')) AS protected_role,
       (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
           AS executor_superuser,
       current_user AS executor_role,
       pg_catalog.now() AS now
FROM pg_catalog.pg_stat_activity AS a
LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = a.usesysid
WHERE a.pid = %(pid)s
"""


async def read_backend(conn: db.Conn, pid: int,
                       protect: monitor.Protect) -> dict[str, Any] | None:
    """The backend's current row, or None when the pid is gone."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_BACKEND, {"pid": pid, "roles": list(protect.roles)})
        return await cursor.fetchone()


def refusal(row: dict[str, Any] | None, backend_start: datetime.datetime,
            protect: monitor.Protect) -> str | None:
    """Why the backend must not be touched, or None. Identity and protection only."""
    if row is None:
        return "the backend has exited"
    if row["backend_start"] != backend_start:
        return f"pid {row['pid']} now belongs to another session (backend start changed)"
    if row["backend_type"] != "client backend":
        return f"pid {row['pid']} is a {row['backend_type']}, not a client backend"
    if not row["this_database"]:
        return f"pid {row['pid']} is not connected to this database"
    if row["superuser"]:
        return superuser_refusal(row, protect)
    if row["application_name"] in protect.applications:
        return f"application {row['application_name']!r} is protected"
    if row["usename"] in protect.users:
        return f"user {row['usename']!r} is protected"
    if row["protected_role"]:
        return f"user {row['usename']!r} is a member of a protected role"
    return None


def superuser_refusal(row: dict[str, Any], protect: monitor.Protect) -> str | None:
    """Why a superuser's session is left alone, or None when the executor may signal it."""
    who = f"pid {row['pid']} belongs to a superuser ({row['usename']})"
    if protect.superusers:
        return f"{who}: spec.protect.superusers is true (the default); set it to false to " \
               "let StartupMonkey act on superusers' sessions"
    if not row.get("executor_superuser"):
        return f"{who} and spec.protect.superusers is false, but the executor's role " \
               f"{row.get('executor_role')!r} is not a superuser: PostgreSQL lets only a " \
               "superuser signal a superuser's session (pg_signal_backend is not enough)"
    return None


def _too_young(key: str, what: str, seconds: float, limit: float | None,
               setting: str) -> outcome.Outcome | None:
    """Rejected with the numbers when the live age is under the configured limit."""
    if limit is None or seconds >= limit:
        return None
    return outcome.Outcome.rejected(
        f"the condition does not hold: {what} {seconds:.1f}s, under {setting} "
        f"({durations.format_duration(limit)})", **{key: seconds, "limit_seconds": limit})


def _age(row: dict[str, Any], column: str) -> float:
    value = row.get(column)
    return (row["now"] - value).total_seconds() if value is not None else 0.0


async def _signal(conn: db.Conn, sql: str) -> bool:
    cursor = await conn.execute(sql)
    row = await cursor.fetchone()
    return bool(row and row[0])


async def cancel_query(conn: db.Conn, step: plan.Plan, *, pid: int,
                       backend_start: datetime.datetime, query_start: datetime.datetime,
                       protect: monitor.Protect,
                       terminate_after: float | None = None,
                       min_seconds: float | None = None) -> outcome.Outcome:
    """Cancel the flagged query; if ``terminate_after`` is set and it still runs, terminate.
    With ``min_seconds`` (``long_running_query.maxDuration``) a query that has run less is
    Rejected with the numbers."""
    row = await read_backend(conn, pid, protect)
    reason = refusal(row, backend_start, protect)
    if reason is None and row is not None and (
            row["state"] != "active" or row["query_start"] != query_start):
        reason = "the flagged query has finished; the session now runs something else"
    if reason or row is None:
        return outcome.Outcome.rejected(reason or "the backend has exited")
    before = {"query_seconds": _age(row, "query_start")}
    young = _too_young("query_seconds", "the query has run", before["query_seconds"],
                       min_seconds, "long_running_query.maxDuration")
    if young is not None:
        return young
    if not await _signal(conn, step.sql):
        return outcome.Outcome.rejected("the query finished between the check and the cancel",
                                        **before)
    executed = [step.sql]
    still = await _still_running(conn, pid, query_start, protect, wait=terminate_after or 2.0)
    if still and terminate_after is not None:
        kill = plan.terminate_query(pid, backend_start, query_start)
        if await _signal(conn, kill.sql):
            executed.append(kill.sql)
        still = await _still_running(conn, pid, query_start, protect, wait=5.0)
    after = {"still_running": 1.0 if still else 0.0}
    if still:
        return outcome.Outcome(RemediationState.FAILED, "the query kept running after the "
                               "cancel", before, after, executed)
    verb = "terminated" if len(executed) > 1 else "cancelled"
    return outcome.Outcome(RemediationState.SUCCEEDED,
                           f"{verb} pid {pid} after {before['query_seconds']:.0f}s",
                           before, after, executed)


async def _still_running(conn: db.Conn, pid: int,
                         query_start: datetime.datetime, protect: monitor.Protect,
                         wait: float) -> bool:
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        row = await read_backend(conn, pid, protect)
        running = bool(row and row["state"] == "active" and row["query_start"] == query_start)
        if not running or asyncio.get_running_loop().time() >= deadline:
            return running
        await asyncio.sleep(0.1)


async def terminate_idle_transaction(conn: db.Conn, step: plan.Plan,
                                     *, pid: int, backend_start: datetime.datetime,
                                     state_change: datetime.datetime,
                                     protect: monitor.Protect,
                                     min_seconds: float | None = None) -> outcome.Outcome:
    """Terminate the flagged session if it is still idle in the same transaction. With
    ``min_seconds`` (``idle_in_transaction.maxDuration``) a session idle for less is Rejected
    with the numbers."""
    row = await read_backend(conn, pid, protect)
    reason = refusal(row, backend_start, protect)
    if reason is None and row is not None and (
            not str(row["state"]).startswith("idle in transaction")
            or row["state_change"] != state_change):
        reason = "the session has moved on since it was flagged (no longer the same idle " \
                 "transaction)"
    if reason or row is None:
        return outcome.Outcome.rejected(reason or "the backend has exited")
    before = {"idle_seconds": _age(row, "state_change"),
              "transaction_seconds": _age(row, "xact_start")}
    young = _too_young("idle_seconds", "the session has been idle", before["idle_seconds"],
                       min_seconds, "idle_in_transaction.maxDuration")
    if young is not None:
        return young
    if not await _signal(conn, step.sql):
        return outcome.Outcome.rejected("the session moved on between the check and the "
                                        "terminate", **before)
    gone = not await _backend_alive(conn, pid, backend_start, protect)
    state = RemediationState.SUCCEEDED if gone else RemediationState.FAILED
    message = (f"terminated pid {pid}, idle in transaction for {before['idle_seconds']:.0f}s"
               if gone else f"pid {pid} was signalled but is still there")
    return outcome.Outcome(state, message, before, {"session_gone": 1.0 if gone else 0.0},
                           [step.sql])


async def _backend_alive(conn: db.Conn, pid: int,
                         backend_start: datetime.datetime, protect: monitor.Protect,
                         wait: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        row = await read_backend(conn, pid, protect)
        alive = row is not None and row["backend_start"] == backend_start
        if not alive or asyncio.get_running_loop().time() >= deadline:
            return alive
        await asyncio.sleep(0.1)


# ---- the root blocker of a lock chain

#: Every session of this database waiting for a lock, whom it waits behind, and since when
#: (pg_locks.waitstart, PG14+, read through to_jsonb so PG13 gives NULL; else query start).
_WAITERS = """
SELECT w.pid, pg_catalog.pg_blocking_pids(w.pid) AS blockers,
       coalesce((SELECT min((pg_catalog.to_jsonb(l) ->> 'waitstart')::timestamptz)
                 FROM pg_catalog.pg_locks AS l WHERE l.pid = w.pid AND NOT l.granted),
                w.query_start) AS since,
       pg_catalog.now() AS now
FROM pg_catalog.pg_stat_activity AS w
WHERE w.wait_event_type = 'Lock' AND w.datname = pg_catalog.current_database()
"""


@dataclasses.dataclass(frozen=True)
class Chain:
    """What ``pid`` does to the lock queue right now."""

    waits_behind: list[int]
    """Whom ``pid`` itself waits for: non-empty means it is a victim, not the root."""
    blocked: set[int]
    """Sessions waiting behind ``pid``, directly or down a chain."""
    longest_wait: float
    """Seconds the longest of them has waited."""


async def read_chain(conn: db.Conn, pid: int) -> Chain:
    """The lock chain below ``pid``, as the analyser computes it (``detectors/sessions.py``)."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_WAITERS)
        rows = await cursor.fetchall()
    blockers = {int(r["pid"]): {int(b) for b in r["blockers"] or ()} for r in rows}
    blocked: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {w for w, behind in blockers.items()
                    if w not in blocked and w != pid and behind & frontier}
        blocked |= frontier
    waits = [(r["now"] - r["since"]).total_seconds() for r in rows
             if int(r["pid"]) in blocked and r["since"] is not None]
    return Chain(sorted(blockers.get(pid, ())), blocked, max(waits, default=0.0))


def not_the_root(pid: int, chain: Chain,
                  limits: thresholds.BlockingLock | None) -> outcome.Outcome | None:
    """Rejected unless ``pid`` is still a root blocker holding up enough sessions long enough."""
    numbers = {"blocked_sessions": float(len(chain.blocked)),
               "longest_wait_seconds": chain.longest_wait}
    if chain.waits_behind:
        return outcome.Outcome.rejected(
            f"pid {pid} waits for a lock itself (behind pid(s) "
            f"{', '.join(map(str, chain.waits_behind[:10]))}): it is a victim of the chain, "
            "not its root, and victims are never touched", **numbers)
    if not chain.blocked:
        return outcome.Outcome.rejected(f"pid {pid} no longer blocks anyone", **numbers)
    if limits is None:
        return None
    min_wait = durations.parse_duration(limits.min_wait)
    if len(chain.blocked) < limits.min_blocked or chain.longest_wait < min_wait:
        return outcome.Outcome.rejected(
            f"the condition does not hold: pid {pid} blocks {len(chain.blocked)} session(s), "
            f"the longest waiting {chain.longest_wait:.1f}s; blocking_lock needs at least "
            f"{limits.min_blocked} (minBlocked) waiting at least "
            f"{durations.format_duration(min_wait)} (minWait)", **numbers)
    return None


def _root_moved_on(row: dict[str, Any], action: ActionId, flagged_xact: datetime.datetime | None,
                   flagged_query: datetime.datetime | None) -> str | None:
    if action is ActionId.TERMINATE_SESSION:
        if row["state"] not in plan.IDLE_STATES:
            return f"the root is {row['state']} now, not idle: a new detection will cancel " \
                   "its statement instead"
        if row["xact_start"] != flagged_xact:
            return "the root has moved on since it was flagged (another transaction)"
        return None
    if row["state"] != "active" or row["query_start"] != flagged_query:
        return "the root's flagged statement has finished; the session now does something else"
    return None


async def end_root_blocker(conn: db.Conn, step: plan.Plan, *, pid: int,
                           backend_start: datetime.datetime,
                           xact_start: datetime.datetime | None,
                           query_start: datetime.datetime | None, protect: monitor.Protect,
                           limits: thresholds.BlockingLock | None = None) -> outcome.Outcome:
    """Terminate (idle) or cancel the statement of (active) the root blocker ``pid``, after
    re-checking that it is the same backend, still the root (waiting for nothing), still
    holding up at least ``limits.minBlocked`` sessions for ``limits.minWait``, still doing
    what it was flagged for, and not protected. With ``limits.terminateAfter`` a cancelled
    statement that still runs is terminated."""
    row = await read_backend(conn, pid, protect)
    reason = refusal(row, backend_start, protect)
    if reason is not None or row is None:
        return outcome.Outcome.rejected(reason or "the backend has exited")
    chain = await read_chain(conn, pid)
    refused = not_the_root(pid, chain, limits)
    if refused is not None:
        return refused
    moved = _root_moved_on(row, step.action, xact_start, query_start)
    if moved is not None:
        return outcome.Outcome.rejected(moved)
    before = {"blocked_sessions": float(len(chain.blocked)),
              "longest_wait_seconds": chain.longest_wait,
              "transaction_seconds": _age(row, "xact_start"),
              "idle_seconds" if step.action is ActionId.TERMINATE_SESSION else "query_seconds":
                  _age(row, "state_change" if step.action is ActionId.TERMINATE_SESSION
                       else "query_start")}
    if not await _signal(conn, step.sql):
        return outcome.Outcome.rejected("the root changed between the check and the signal "
                                        "(no longer the same, idle or blocking)", **before)
    executed = [step.sql]
    if step.action is ActionId.CANCEL_QUERY and query_start is not None:
        after = limits.terminate_after if limits is not None else None
        wait = durations.parse_duration(after) if after else None
        if await _still_running(conn, pid, query_start, protect, wait=wait or 2.0) and wait:
            kill = plan.terminate_root_query(pid, backend_start, query_start)
            if await _signal(conn, kill.sql):
                executed.append(kill.sql)
    gone = not await _backend_alive(conn, pid, backend_start, protect, wait=(
        5.0 if len(executed) > 1 or step.action is ActionId.TERMINATE_SESSION else 0.0))
    left = await _blocked_behind(conn, pid, protect) if not gone else 0
    return _root_outcome(pid, step.action, before, gone, left, executed)


async def _blocked_behind(conn: db.Conn, pid: int, protect: monitor.Protect) -> int:
    """How many sessions still wait behind ``pid``, waiting up to 2 s for the queue to drain
    after a cancel (the aborted transaction releases its locks)."""
    deadline = asyncio.get_running_loop().time() + 2.0
    while True:
        left = len((await read_chain(conn, pid)).blocked)
        if not left or asyncio.get_running_loop().time() >= deadline:
            return left
        await asyncio.sleep(0.1)


def _root_outcome(pid: int, action: ActionId, before: dict[str, float], gone: bool, left: int,
                  executed: list[str]) -> outcome.Outcome:
    after = {"session_gone": 1.0 if gone else 0.0, "blocked_sessions": float(left)}
    held = f"{before['blocked_sessions']:.0f} session(s), the longest waiting " \
           f"{before['longest_wait_seconds']:.0f}s"
    if left:
        return outcome.Outcome(RemediationState.FAILED, f"pid {pid} was signalled but still "
                               f"blocks {left} session(s)", before, after, executed)
    verb = "terminated" if action is ActionId.TERMINATE_SESSION or len(executed) > 1 \
        else "cancelled the statement of"
    return outcome.Outcome(RemediationState.SUCCEEDED,
                           f"{verb} root blocker pid {pid}, which held up {held}",
                           before, after, executed)
