"""Session actions: cancel a runaway query, terminate a session idle in a transaction.

Before acting the executor re-reads the backend and refuses, with the reason, unless it is the
same backend (pid and backend start), still doing what it was flagged for (same query start, or
same idle transaction by state change), a client backend of this database, not a superuser and
not protected by ``spec.protect``. The statement that signals the backend repeats those
conditions (``executor/plan.py``), so the check and the act cannot be split by a pid reuse.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from psycopg.rows import dict_row

from startupmonkey import db
from startupmonkey.executor import outcome, plan
from startupmonkey.models import monitor
from startupmonkey.models.enums import RemediationState

_BACKEND = """
SELECT a.pid, a.usename, a.application_name, a.backend_type, a.state, a.backend_start,
       a.query_start, a.state_change, a.xact_start,
       a.datname = pg_catalog.current_database() AS this_database,
       coalesce(r.rolsuper, false) AS superuser,
       EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS p
               WHERE p.rolname = ANY(%(roles)s)
                 AND pg_catalog.pg_has_role(a.usesysid, p.oid, 'MEMBER')) AS protected_role,
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
        return f"pid {row['pid']} belongs to a superuser ({row['usename']})"
    if row["application_name"] in protect.applications:
        return f"application {row['application_name']!r} is protected"
    if row["usename"] in protect.users:
        return f"user {row['usename']!r} is protected"
    if row["protected_role"]:
        return f"user {row['usename']!r} is a member of a protected role"
    return None


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
                       terminate_after: float | None = None) -> outcome.Outcome:
    """Cancel the flagged query; if ``terminate_after`` is set and it still runs, terminate."""
    row = await read_backend(conn, pid, protect)
    reason = refusal(row, backend_start, protect)
    if reason is None and row is not None and (
            row["state"] != "active" or row["query_start"] != query_start):
        reason = "the flagged query has finished; the session now runs something else"
    if reason or row is None:
        return outcome.Outcome.rejected(reason or "the backend has exited")
    before = {"query_seconds": _age(row, "query_start")}
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
                                     protect: monitor.Protect) -> outcome.Outcome:
    """Terminate the flagged session if it is still idle in the same transaction."""
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
                         backend_start: datetime.datetime, protect: monitor.Protect) -> bool:
    deadline = asyncio.get_running_loop().time() + 5.0
    while True:
        row = await read_backend(conn, pid, protect)
        alive = row is not None and row["backend_start"] == backend_start
        if not alive or asyncio.get_running_loop().time() >= deadline:
            return alive
        await asyncio.sleep(0.1)
