"""Which code runs each action: a table from action to coroutine (``ACTIONS``), and
:func:`act`, which the engine's runs call on the executor's connection, under the guard.

Every entry takes the connection, the Running record and the monitor's spec, re-checks what it
needs against the database and returns the :class:`~startupmonkey.executor.outcome.Outcome`;
an action missing from the table, or whose target lacks what it needs, is refused (nothing
runs).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from startupmonkey import db, kubetime
from startupmonkey.executor import (
    context,
    derive,
    index_flow,
    maintenance,
    outcome,
    plan,
    policy,
    records,
    sessions,
)
from startupmonkey.models import durations, monitor
from startupmonkey.models.enums import ActionId, DetectorId

Action = Callable[[db.Conn, records.Record, monitor.DatabaseMonitorSpec],
                  Awaitable[outcome.Outcome]]


async def act(conn: db.Conn, record: records.Record,
              spec: monitor.DatabaseMonitorSpec) -> outcome.Outcome:
    """Run the planned action of ``record`` (Running) on ``conn``."""
    action = ACTIONS.get(record.spec.action)
    if action is None:
        return _not_runnable(record)
    return await action(conn, record, spec)


def _step(record: records.Record) -> plan.Plan:
    spec = record.spec
    return plan.Plan(spec.action, spec.sql, spec.rollback_sql)


def _not_runnable(record: records.Record) -> outcome.Outcome:
    """Refused: the target lacks what the action needs (nothing ran)."""
    target = record.spec.target
    if target.pid is None or target.backend_start is None:
        return outcome.Outcome.rejected("no backend in the target")
    return outcome.Outcome.rejected(f"{record.spec.action.value} cannot run on this target")


async def _repair_index(conn: db.Conn, record: records.Record,
                        spec: monitor.DatabaseMonitorSpec) -> outcome.Outcome:
    return await index_flow.repair(conn, record, spec)


async def _vacuum(conn: db.Conn, record: records.Record,
                  spec: monitor.DatabaseMonitorSpec) -> outcome.Outcome:
    target, evidence = record.spec.target, record.spec.evidence
    return await maintenance.vacuum(
        conn, _step(record), target.schema_ or "", target.table or "",
        trigger=_evidence_number(evidence, "autovacuum_trigger"),
        detected=kubetime.parse_or_none(evidence.get(context.FIRST_SEEN)),
        limits=spec.thresholds.dead_tuples)


async def _analyze(conn: db.Conn, record: records.Record,
                   spec: monitor.DatabaseMonitorSpec) -> outcome.Outcome:
    target, evidence = record.spec.target, record.spec.evidence
    return await maintenance.analyze(conn, _step(record), target.schema_ or "",
                                     target.table or "",
                                     trigger=_evidence_number(evidence, "trigger"),
                                     limits=spec.thresholds.stale_statistics,
                                     lost=policy.restores_statistics(evidence))


async def _cancel_query(conn: db.Conn, record: records.Record,
                        spec: monitor.DatabaseMonitorSpec) -> outcome.Outcome:
    target = record.spec.target
    if target.pid is None or target.backend_start is None or target.query_start is None:
        return _not_runnable(record)
    if record.spec.detector is DetectorId.BLOCKING_LOCK:
        return await _root_blocker(conn, record, spec)
    limits = spec.thresholds.long_running_query
    after = limits.terminate_after
    return await sessions.cancel_query(
        conn, _step(record), pid=target.pid, backend_start=target.backend_start,
        query_start=target.query_start, protect=spec.protect,
        terminate_after=durations.parse_duration(after) if after else None,
        min_seconds=durations.parse_duration(limits.max_duration))


async def _terminate_session(conn: db.Conn, record: records.Record,
                             spec: monitor.DatabaseMonitorSpec) -> outcome.Outcome:
    target = record.spec.target
    if record.spec.detector is DetectorId.BLOCKING_LOCK and target.pid is not None \
            and target.backend_start is not None:
        return await _root_blocker(conn, record, spec)
    if target.pid is None or target.backend_start is None or target.state_change is None:
        return _not_runnable(record)
    return await sessions.terminate_idle_transaction(
        conn, _step(record), pid=target.pid, backend_start=target.backend_start,
        state_change=target.state_change, protect=spec.protect,
        min_seconds=durations.parse_duration(spec.thresholds.idle_in_transaction.max_duration))


async def _root_blocker(conn: db.Conn, record: records.Record,
                        spec: monitor.DatabaseMonitorSpec) -> outcome.Outcome:
    """blocking_lock: terminate (idle) or cancel the statement of (active) the root blocker."""
    target = record.spec.target
    assert target.pid is not None and target.backend_start is not None
    return await sessions.end_root_blocker(
        conn, _step(record), pid=target.pid, backend_start=target.backend_start,
        xact_start=target.xact_start, query_start=target.query_start, protect=spec.protect,
        limits=spec.thresholds.blocking_lock)


#: The coroutine that runs each automated action (advice has none: it never runs).
ACTIONS: dict[ActionId, Action] = {
    **dict.fromkeys(derive.INDEX_ACTIONS, _repair_index),
    ActionId.CREATE_INDEX: index_flow.create_index,
    ActionId.VACUUM: _vacuum,
    ActionId.ANALYZE: _analyze,
    ActionId.CANCEL_QUERY: _cancel_query,
    ActionId.TERMINATE_SESSION: _terminate_session,
}


def _evidence_number(evidence: dict[str, str], key: str) -> float | None:
    """A number from a detection's evidence (kept as strings on the record), or None."""
    try:
        value = float(evidence[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None
