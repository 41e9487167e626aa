"""Re-deriving a detection's plan against the database (never trusting the message).

A detection names a target; the executor looks the target up itself: a table by schema and
name in ``pg_class`` (using the catalog's own spelling), a backend by pid in
``pg_stat_activity`` (and only if its backend start and query start or state change are the
ones flagged). Only then does it plan SQL (``executor/plan.py``). A target that is gone or has
changed yields a :class:`Refusal` with the reason, recorded as Rejected.

Given the monitor's thresholds it also re-checks the condition the detection claims against
live state, with this executor's own limits (never the message's): the query has run for
``long_running_query.maxDuration``, the session has been idle for
``idle_in_transaction.maxDuration``, the root blocker waits for nothing and holds up
``blocking_lock.minBlocked`` sessions for ``minWait``. A detection whose condition does not
hold (any more, or never did) is refused with the numbers before anyone is asked to approve it.
The action re-checks the same again right before it signals (``executor/sessions.py``), and
the table actions their counters (``executor/maintenance.py``).

A ``create_index`` detection may name several candidate keys (evidence ``candidate_keys``:
the range key and the ``ORDER BY ... LIMIT`` key); the key planned, and so hashed, is the one
whose hypothetical index gives the served statements the lowest summed planner cost (HypoPG,
planned under the pre-check's rules), and the plan says which keys were considered and why.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Sequence
from typing import Any

import psycopg

from startupmonkey import db
from startupmonkey.executor import index_catalog, index_precheck, indexes, plan, sessions
from startupmonkey.models import durations, messages, thresholds
from startupmonkey.models.enums import ActionId, DetectorId

#: Actions this version automates; the others (advice) are recorded as Recommended.
AUTOMATED = frozenset({ActionId.VACUUM, ActionId.ANALYZE, ActionId.CANCEL_QUERY,
                       ActionId.TERMINATE_SESSION, ActionId.CREATE_INDEX,
                       ActionId.DROP_INVALID_INDEX, ActionId.REINDEX, ActionId.DROP_INDEX})
INDEX_ACTIONS = frozenset({ActionId.DROP_INVALID_INDEX, ActionId.REINDEX, ActionId.DROP_INDEX})
_QUERYID = re.compile(r"-?[0-9]{1,20}")
_INT8 = range(-(2 ** 63), 2 ** 63)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """The detection cannot be turned into a plan; ``reason`` says why."""

    reason: str


_TABLE = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'm', 'p')
"""
_BACKEND = """
SELECT backend_start, query_start, state_change, state, xact_start, pg_catalog.now()
FROM pg_catalog.pg_stat_activity
WHERE pid = %s AND datname = pg_catalog.current_database()
"""


async def _one(conn: db.Conn, query: str,
               params: tuple[Any, ...]) -> tuple[Any, ...] | None:
    cursor = await conn.execute(query.encode(), params)
    return await cursor.fetchone()


async def _table_plan(conn: db.Conn,
                      detection: messages.Detection) -> plan.Plan | Refusal:
    target = detection.target
    if not target.schema_ or not target.table:
        return Refusal("the detection names no table")
    row = await _one(conn, _TABLE, (target.schema_, target.table))
    if row is None:
        return Refusal(f"table {target.schema_}.{target.table} does not exist (any more)")
    schema, table = row
    if detection.proposed_action is ActionId.VACUUM:
        return plan.vacuum(schema, table)
    return plan.analyze(schema, table)


async def _session_plan(conn: db.Conn, detection: messages.Detection,
                        limits: thresholds.Thresholds | None) -> plan.Plan | Refusal:
    target = detection.target
    if target.pid is None or target.backend_start is None:
        return Refusal("the detection names no backend (pid and backend start)")
    row = await _one(conn, _BACKEND, (target.pid,))
    if row is None:
        return Refusal(f"backend {target.pid} has exited")
    backend_start, query_start, state_change, state, _xact, now = row
    if backend_start != target.backend_start:
        return Refusal(f"pid {target.pid} now belongs to another session")
    if detection.detector is DetectorId.BLOCKING_LOCK:
        return await _root_blocker_plan(conn, detection, row, limits)
    if detection.proposed_action is ActionId.CANCEL_QUERY:
        if target.query_start is None or query_start != target.query_start:
            return Refusal("the flagged query has finished")
        limit = limits.long_running_query.max_duration if limits else None
        short = _under("the query has run", now - query_start, limit,
                       "long_running_query.maxDuration")
        return short or plan.cancel_query(target.pid, backend_start, query_start)
    if target.state_change is None or state_change != target.state_change:
        return Refusal("the session has moved on since it was flagged")
    if state not in plan.IDLE_STATES[1:]:
        return Refusal(f"the session is {state}, not idle in a transaction")
    limit = limits.idle_in_transaction.max_duration if limits else None
    short = _under("the session has been idle", now - state_change, limit,
                   "idle_in_transaction.maxDuration")
    return short or plan.terminate_idle_transaction(target.pid, backend_start, state_change)


def _under(what: str, age: datetime.timedelta, limit: str | None,
           setting: str) -> Refusal | None:
    """Refused with the numbers when the live age is under this executor's limit."""
    if limit is None:
        return None
    seconds, wanted = age.total_seconds(), durations.parse_duration(limit)
    if seconds >= wanted:
        return None
    return Refusal(f"the condition does not hold: {what} {seconds:.1f}s, under {setting} "
                   f"({durations.format_duration(wanted)})")


async def _root_blocker_plan(conn: db.Conn, detection: messages.Detection,
                             row: tuple[Any, ...],
                             limits: thresholds.Thresholds | None) -> plan.Plan | Refusal:
    """The root of a lock chain: terminated when idle, its statement cancelled when active;
    refused when it waits itself (a victim), blocks nobody, or blocks too few for too short."""
    target = detection.target
    assert target.pid is not None
    backend_start, query_start, _state_change, state, xact_start, _now = row
    chain = await sessions.read_chain(conn, target.pid)
    refused = sessions.not_the_root(target.pid, chain,
                                    limits.blocking_lock if limits else None)
    if refused is not None:
        return Refusal(refused.message)
    if detection.proposed_action is ActionId.TERMINATE_SESSION:
        if state not in plan.IDLE_STATES:
            return Refusal(f"the root is {state}, not idle: only an idle root is terminated")
        if xact_start != target.xact_start:
            return Refusal("the root has moved on since it was flagged (another transaction)")
        return plan.terminate_root_blocker(target.pid, backend_start, xact_start)
    if state != "active" or target.query_start is None or query_start != target.query_start:
        return Refusal("the root's flagged statement has finished")
    return plan.cancel_root_blocker(target.pid, backend_start, query_start)


async def _create_index_plan(conn: db.Conn,
                             detection: messages.Detection) -> plan.Plan | Refusal:
    target = detection.target
    if not target.schema_ or not target.table or not target.columns:
        return Refusal("the detection names no table and columns")
    if not target.queryids:
        return Refusal("the detection names no statements to serve (queryids)")
    wrong = [q for q in target.queryids if not is_queryid(q)]
    if wrong:
        return Refusal(f"queryid {wrong[0][:64]!r} is not a pg_stat_statements queryid "
                       "(a 64-bit integer in decimal); nothing planned")
    table = await index_catalog.table_info(conn, target.schema_, target.table)
    if table is None:
        return Refusal(f"table {target.schema_}.{target.table} does not exist (any more)")
    missing = [c for c in target.columns if c not in table.columns]
    if missing:
        return Refusal(f"columns {', '.join(missing)} are not in {target.schema_}."
                       f"{target.table}")
    try:
        first = indexes.IndexTarget(target.schema_, target.table, tuple(target.columns))
    except ValueError as exc:
        return Refusal(str(exc))
    keys = [first.columns, *(k for k in index_precheck.parse_candidate_keys(
        detection.evidence.get("candidate_keys", "[]")) if k != first.columns)]
    if len(keys) == 1:
        return indexes.plan_for(first)
    columns, note = await _choose_key(conn, first, keys, table.columns, target.queryids)
    return dataclasses.replace(
        indexes.plan_for(indexes.IndexTarget(first.schema, first.table, columns)),
        columns=columns, note=note)


KEY_CHOICE = "key_choice"
"""The evidence entry where intake records the keys considered and why the winner won."""
MAX_EVIDENCE = 64
"""Entries a Remediation's evidence may hold (``RemediationSpec.evidence``)."""

#: Planning at intake waits this long for a lock on the table (the pre-check, under the ddl
#: guard, retries; intake keeps the detection's key instead) and this long per statement.
CHOICE_LOCK_TIMEOUT = "2s"
CHOICE_PLAN_TIMEOUT = 10.0


async def _choose_key(conn: db.Conn, first: indexes.IndexTarget,
                      keys: list[tuple[str, ...]], table_columns: Sequence[str],
                      queryids: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """The cheapest of ``keys`` (the detection's own first) by the summed HypoPG planner cost
    of the served statements with a hypothetical index on each (as Dexter chooses), and
    why. Planned exactly as the pre-check plans (``index_precheck.compare_keys``: the
    ``plan_safety`` refusal, READ ONLY, errors as class and SQLSTATE only). Another key wins
    only when it is strictly cheaper; when nothing can be costed the detection's key stays
    and the reason says why (the pre-check then judges it)."""
    proposed = index_precheck.key_label(first.columns)
    valid = []
    for key in keys:
        try:
            indexes.IndexTarget(first.schema, first.table, key)
        except ValueError:
            continue
        if all(c in table_columns for c in key):
            valid.append(key)
    others = [index_precheck.key_label(k) for k in keys if k not in valid]
    skipped = f"; skipped (not columns of the table): {', '.join(others)}" if others else ""

    def kept(why: str) -> tuple[tuple[str, ...], str]:
        return first.columns, f"kept the detection's key {proposed}: {why}{skipped}"

    if len(valid) < 2:
        return kept("no other candidate key")
    hypopg = await index_catalog.extension_schema(conn, "hypopg")
    if hypopg is None:
        return kept("the hypopg extension is not installed, so no key could be costed")
    statements = await index_precheck.statements_for(conn, queryids)
    if not statements:
        return kept("the statements to serve are not in pg_stat_statements")
    lock_timeout = await index_catalog.scalar(conn, "SELECT pg_catalog.current_setting("
                                              "'lock_timeout')", ())
    await conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)",
                       (CHOICE_LOCK_TIMEOUT,))
    try:
        costs = await index_precheck.compare_keys(conn, hypopg, first, valid, statements,
                                                  CHOICE_PLAN_TIMEOUT)
    except psycopg.Error as exc:
        return kept(f"the keys could not be costed ({index_precheck.planning_error(exc)})")
    finally:
        if not (conn.closed or conn.broken):
            await conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)",
                               (str(lock_timeout),))
    listed = ", ".join(f"{index_precheck.key_label(k)} "
                       f"{'not planned' if c is None else f'{c:.1f}'}" for k, c in costs)
    considered = (f"keys considered by the summed planner cost of {len(statements)} "
                  f"statement(s) with a hypothetical index on each: {listed}")
    mine = dict(costs).get(first.columns)
    costed = [(k, c) for k, c in costs if c is not None]
    if mine is None or not costed:
        return kept(f"it could not be planned, so no key was chosen by cost; {considered}")
    best, cost = min(costed, key=lambda kc: kc[1])  # ties: the earlier, the detection's first
    if best == first.columns or cost >= mine:
        return kept(f"the cheapest; {considered}")
    return best, (f"chose {index_precheck.key_label(best)} over the detection's {proposed}: "
                  f"the cheapest ({cost:.1f} against {mine:.1f}); {considered}{skipped}")


def is_queryid(text: str) -> bool:
    """A pg_stat_statements queryid: a signed 64-bit integer written in decimal."""
    return _QUERYID.fullmatch(text) is not None and int(text) in _INT8


async def _index_plan(conn: db.Conn,
                      detection: messages.Detection) -> plan.Plan | Refusal:
    target, action = detection.target, detection.proposed_action
    if not target.schema_ or not target.index:
        return Refusal("the detection names no index")
    found = await index_catalog.find_index(conn, target.schema_, target.index)
    if found is None:
        return Refusal(f"index {target.schema_}.{target.index} does not exist (any more)")
    if action is ActionId.DROP_INVALID_INDEX:
        if found.valid:
            return Refusal(f"index {target.schema_}.{target.index} is valid now")
        return indexes.plan_drop_invalid_index(target.schema_, target.index)
    if action is ActionId.REINDEX:
        return indexes.plan_reindex(target.schema_, target.index)
    definition = await index_catalog.index_definition(conn, target.schema_, target.index)
    return indexes.plan_drop_index(target.schema_, target.index, definition)


async def derive(conn: db.Conn, detection: messages.Detection,
                 limits: thresholds.Thresholds | None = None) -> plan.Plan | Refusal | None:
    """The plan for a detection; None for advice (nothing to run). With ``limits`` (the
    monitor's ``spec.thresholds``) the detection's condition is re-checked against them."""
    action = detection.proposed_action
    if action not in AUTOMATED:
        return None
    if action in (ActionId.VACUUM, ActionId.ANALYZE):
        return await _table_plan(conn, detection)
    if action is ActionId.CREATE_INDEX:
        return await _create_index_plan(conn, detection)
    if action in INDEX_ACTIONS:
        return await _index_plan(conn, detection)
    return await _session_plan(conn, detection, limits)
