"""Repairs of existing indexes: drop an INVALID one, REINDEX it CONCURRENTLY, drop an unused one.

- ``drop_invalid_index`` (ddl): an INVALID index serves no query but slows every write. A
  backend still building it (a killed client's CREATE INDEX CONCURRENTLY keeps running on the
  server) is cancelled first, unless the caller says not to, and only after it passed the
  checks of a session action (:func:`builder_refusal`): signalling someone's backend is a
  session action whatever the risk class of the repair.
- ``reindex`` (ddl): for an INVALID index worth keeping (the analyser's call, e.g. it backs
  what a query needs) or a bloated one. A failed REINDEX CONCURRENTLY leaves an INVALID
  ``<name>_ccnew`` (or ``_ccold``) copy; it is dropped before the outcome is reported.
- ``drop_index`` (destructive, so only when that class is allowed): unused or duplicate
  indexes, never one that backs a constraint, is the replica identity, is the only index
  serving a foreign key, or was scanned since the detection. The plan's rollback re-creates
  it CONCURRENTLY from its ``pg_get_indexdef``.

All run under the guard of their class on an autocommit connection; a lock timeout ends the
action with ``retry_after`` set, as for a build.

Every builder ``drop_invalid_index`` or ``reindex`` would cancel or terminate is re-read and
checked right before each signal, with the session actions' own check
(``sessions.read_backend`` and ``sessions.refusal``: client backend of this database,
``spec.protect`` applications, users and roles, superusers), and, unless it is the
executor's own build (same role and same ``application_name`` as this connection), the
session class must be in auto mode (``spec.mode_for(session)``), as a session action would
need to run without approval. A builder that fails the check is never signalled: the action
is Rejected with the reason and nothing is dropped. Without ``spec`` only the executor's own
builds are signalled. The signal itself names the index (``pg_stat_progress_create_index``),
so a pid reused in between is never signalled (``index_catalog.cancel_builders``).
"""

from __future__ import annotations

import functools
from typing import Any

import psycopg

from startupmonkey import db
from startupmonkey.executor import index_build, index_catalog, indexes, plan, sessions
from startupmonkey.models import monitor
from startupmonkey.models.enums import Mode, RemediationState, RiskClass

_CC_COPY = ("_ccnew", "_ccold")
_SELF = """
SELECT current_user::text AS role, pg_catalog.current_setting('application_name') AS application
"""


def _who(row: dict[str, Any]) -> str:
    return (f"backend {row['pid']} (application {row['application_name']!r}, "
            f"user {row['usename']!r})")


async def builder_refusal(conn: db.Conn, pid: int,
                          spec: monitor.DatabaseMonitorSpec | None) -> str | None:
    """Why the index builder ``pid`` must not be cancelled or terminated, or None.

    The session actions' check (``sessions.refusal`` on ``sessions.read_backend``) against
    ``spec.protect``; for a builder that is not the executor's own, also the session class's
    mode, which must be auto. The executor's own build (this connection's role and non-empty
    ``application_name``) is exempt from the superuser rule and the mode: PostgreSQL lets a
    role signal its own backends, and cancelling its own interrupted build is part of the
    repair. A backend that is gone is not refused (the signal names the index, so it reaches
    nobody else).
    """
    protect = spec.protect if spec is not None else monitor.Protect()
    row = await sessions.read_backend(conn, pid, protect)
    if row is None:
        return None
    cursor = await conn.execute(_SELF)
    me = await cursor.fetchone()
    own = bool(me and me[1] and (row["usename"], row["application_name"]) == (me[0], me[1]))
    reason = sessions.refusal({**row, "superuser": False} if own else row,
                              row["backend_start"], protect)
    if reason is None and not own:
        mode = spec.mode_for(RiskClass.SESSION) if spec is not None else None
        if mode is None:
            reason = "it is not the executor's own build and no monitor policy was given"
        elif mode is not Mode.AUTO:
            reason = (f"it is not the executor's own build, and signalling it is a session "
                      f"action: the session class is in {mode.value} mode, not auto")
    if reason is None:
        return None
    return f"{_who(row)} is still building the index and is not signalled: {reason}"


async def _refused_builders(conn: db.Conn, index_oid: int,
                            spec: monitor.DatabaseMonitorSpec | None) -> list[str]:
    """The reasons against signalling each current builder of the index."""
    reasons = [await builder_refusal(conn, pid, spec)
               for pid in await index_catalog.builders(conn, index_oid)]
    return [reason for reason in reasons if reason is not None]


def _rejected(message: str, **before: float) -> indexes.IndexOutcome:
    return indexes.IndexOutcome(RemediationState.REJECTED, message, dict(before))


def _mismatch(step: plan.Plan, expected: plan.Plan) -> str | None:
    if (step.action, step.sql) != (expected.action, expected.sql):
        return f"the planned SQL is not {expected.action.value} of this index"
    return None


async def _planned_index(conn: db.Conn, step: plan.Plan, expected: plan.Plan, schema: str,
                         index: str) -> tuple[index_catalog.IndexInfo | None, str | None]:
    """The index ``step`` acts on as the catalog has it now, and why not to act on it, if so:
    the planned SQL is not ``expected``, or the index is gone."""
    refusal = _mismatch(step, expected)
    info = await index_catalog.find_index(conn, schema, index)
    if refusal is None and info is None:
        refusal = f"index {schema}.{index} does not exist (any more)"
    return info, refusal


async def _execute(conn: db.Conn, statement: str, attempt: int,
                   before: dict[str, float]) -> indexes.IndexOutcome | None:
    """Run ``statement``; on failure the Failed outcome (with a retry when one is due)."""
    try:
        async with index_catalog.session_settings(
                conn, client_connection_check_interval=index_build.CHECK_INTERVAL):
            await conn.execute(statement.encode())
    except psycopg.Error as exc:
        message, retry = index_build.failure_reason(exc, conn)
        result = indexes.IndexOutcome(RemediationState.FAILED, message, dict(before),
                                      executed_sql=[statement])
        return index_build.with_retry(result, attempt) if retry else result
    return None


async def drop_invalid_index(conn: db.Conn, step: plan.Plan, schema: str,
                             index: str, *, cancel_builders: bool = True,
                             builder_wait: float = 10.0, attempt: int = 1,
                             spec: monitor.DatabaseMonitorSpec | None = None
                             ) -> indexes.IndexOutcome:
    """Drop an INVALID index, cancelling any backend still building it first when it passes
    :func:`builder_refusal` (``spec``: the monitor's, for ``protect`` and the session mode)."""
    info, refusal = await _planned_index(conn, step, indexes.plan_drop_invalid_index(schema, index),
                                         schema, index)
    if refusal is not None or info is None:
        return _rejected(refusal or "no index")
    if info.valid:
        return _rejected(f"{info.qualified} is valid now (its build finished)")
    if info.constraint_backed:
        return _rejected(f"{info.qualified} backs a constraint; not dropped automatically")
    before = {"index_bytes": float(info.bytes)}
    building = await index_catalog.builders(conn, info.oid)
    if building and not cancel_builders:
        return _rejected(f"backend(s) {building} are still building {info.qualified}", **before)
    refused = await _refused_builders(conn, info.oid, spec)
    if refused:
        return _rejected(f"{info.qualified} not dropped: {'; '.join(refused)}", **before)
    cleanup = await index_catalog.drop_leftovers(
        conn, [info], builder_wait=builder_wait,
        vet=functools.partial(builder_refusal, spec=spec))
    before["builders_cancelled"] = float(len(cleanup.cancelled))
    if cleanup.refused is not None:
        return _rejected(f"{info.qualified} not dropped: {cleanup.refused}", **before)
    if cleanup.error is not None:
        result = indexes.IndexOutcome(RemediationState.FAILED, cleanup.error, before,
                                      executed_sql=cleanup.executed_sql)
        return index_build.with_retry(result, attempt)
    note = f" after cancelling backend(s) {cleanup.cancelled}" if cleanup.cancelled else ""
    return indexes.IndexOutcome(
        RemediationState.SUCCEEDED, f"dropped INVALID index {info.qualified}{note}, "
        f"{info.bytes} bytes freed", before, {"dropped": 1.0}, cleanup.executed_sql,
        leftovers=cleanup.dropped)


def _copies(found: list[index_catalog.IndexInfo],
            original: index_catalog.IndexInfo) -> list[index_catalog.IndexInfo]:
    """INVALID ``_ccnew``/``_ccold`` copies a failed REINDEX CONCURRENTLY left of ``original``."""
    return [i for i in found if i.oid != original.oid and not i.valid
            and any(suffix in i.name for suffix in _CC_COPY)
            and i.columns == original.columns and i.method == original.method]


async def reindex(conn: db.Conn, step: plan.Plan, schema: str, index: str,
                  *, attempt: int = 1, cleanup_wait: float = 30.0,
                  builder_wait: float = 10.0,
                  spec: monitor.DatabaseMonitorSpec | None = None) -> indexes.IndexOutcome:
    """REINDEX INDEX CONCURRENTLY; on failure drop the INVALID copy it left. Builders of the
    index are cancelled first only when they pass :func:`builder_refusal`."""
    info, refusal = await _planned_index(conn, step, indexes.plan_reindex(schema, index),
                                         schema, index)
    if refusal is not None or info is None:
        return _rejected(refusal or "no index")
    if info.relkind != "i" or info.is_exclusion:
        return _rejected(f"{info.qualified} cannot be rebuilt CONCURRENTLY (partitioned or "
                         "exclusion-constraint index)")
    before = {"index_bytes": float(info.bytes), "valid": float(info.valid)}
    refused = await _refused_builders(conn, info.oid, spec)
    if refused:
        return _rejected(f"{info.qualified} not rebuilt: {'; '.join(refused)}", **before)
    try:
        cancelled = await index_catalog.cancel_builders(
            conn, info.oid, builder_wait, vet=functools.partial(builder_refusal, spec=spec))
    except index_catalog.RefusedBuilder as exc:
        return _rejected(f"{info.qualified} not rebuilt: {exc}", **before)
    except index_catalog.StuckBuilder as exc:
        return indexes.IndexOutcome(RemediationState.FAILED, str(exc), before)
    before["builders_cancelled"] = float(len(cancelled))
    failed = await _execute(conn, step.sql, attempt, before)
    if failed is not None:
        if not (conn.broken or conn.closed):
            copies = _copies(await index_catalog.table_indexes(conn, info.table_oid), info)
            cleanup = await index_catalog.drop_leftovers(
                conn, copies, lock_wait=cleanup_wait,
                vet=functools.partial(builder_refusal, spec=spec))
            failed.executed_sql += cleanup.executed_sql
            failed.leftovers = cleanup.dropped
            if cleanup.dropped:
                failed.message += f"; dropped the INVALID copy {', '.join(cleanup.dropped)}"
            if cleanup.error:
                failed.message += f"; {cleanup.error}"
        return failed
    after = await index_catalog.find_index(conn, schema, index)
    if after is None or not after.valid:
        return indexes.IndexOutcome(RemediationState.FAILED, f"{schema}.{index} is not valid "
                                    "after REINDEX", before, executed_sql=[step.sql])
    return indexes.IndexOutcome(
        RemediationState.SUCCEEDED, f"rebuilt {after.qualified} CONCURRENTLY: "
        f"{info.bytes} -> {after.bytes} bytes, valid", before,
        {"index_bytes": float(after.bytes), "valid": 1.0}, [step.sql])


def _drop_refusal(info: index_catalog.IndexInfo, expected_scans: int | None) -> str | None:
    what = info.qualified
    if info.is_primary or info.is_unique or info.is_exclusion or info.constraint_backed:
        return f"{what} enforces a constraint (primary key, unique or exclusion)"
    if info.replica_identity:
        return f"{what} is the table's replica identity"
    if info.sole_fk_index:
        return f"{what} is the only index serving a foreign key of its table"
    if not info.valid:
        return f"{what} is INVALID: that is drop_invalid_index's job"
    if expected_scans is not None and info.idx_scan > expected_scans:
        return (f"{what} was scanned {info.idx_scan - expected_scans} time(s) since it was "
                "found unused")
    return None


async def drop_index(conn: db.Conn, step: plan.Plan, schema: str,
                     index: str, *, expected_scans: int | None = None,
                     attempt: int = 1) -> indexes.IndexOutcome:
    """DROP INDEX CONCURRENTLY of an unused or duplicate index, after the re-checks.

    ``expected_scans``: ``idx_scan`` when the detection was made; a higher count now means the
    index is in use after all and nothing is dropped.
    """
    info, refusal = await _planned_index(conn, step, indexes.plan_drop_index(schema, index),
                                         schema, index)
    if refusal is None and info is not None:
        refusal = _drop_refusal(info, expected_scans)
    if refusal is not None or info is None:
        return _rejected(refusal or "no index")
    before = {"index_bytes": float(info.bytes), "idx_scan": float(info.idx_scan)}
    failed = await _execute(conn, step.sql, attempt, before)
    if failed is not None:
        return failed
    if await index_catalog.find_index(conn, schema, index) is not None:
        return indexes.IndexOutcome(RemediationState.FAILED, f"{info.qualified} is still there",
                                    before, executed_sql=[step.sql])
    undo = "" if step.rollback_sql else " (no rollback SQL was planned)"
    return indexes.IndexOutcome(
        RemediationState.SUCCEEDED, f"dropped {info.qualified}, {info.bytes} bytes freed{undo}",
        before, {"dropped": 1.0}, [step.sql])
