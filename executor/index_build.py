"""Building an index CONCURRENTLY, ending cleanly when it cannot, and undoing it.

The caller holds the ddl guard (``executor/guard.py``: advisory lock, ``lock_timeout`` and
``statement_timeout`` of the class, never on a standby) on an autocommit connection. Here:

1. the plan must be exactly the one planned for the target (the Remediation hash covers the
   SQL; this ties the SQL to the target the leftover search uses);
2. an INVALID leftover of an earlier attempt (same name, or ours with the same definition) is
   found; any backend still building it is cancelled (a killed client's build keeps running on
   the server) and it is dropped, and both are recorded;
3. CREATE INDEX CONCURRENTLY runs with ``client_connection_check_interval`` set, so if this
   executor dies the server stops the build instead of finishing it for nobody;
4. a lock timeout or a cancel ends the attempt: the INVALID index it leaves is dropped (waiting
   up to ``cleanup_wait`` for the blocker; that wait queues ahead of no application query),
   and the outcome asks for a retry (``IndexOutcome.retry_after``, with backoff). A leftover
   that still cannot be dropped is reported and dropped by the next attempt first.

Success ends in Verifying: keep-or-revert is ``index_verify``'s job.
"""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg

from startupmonkey import db
from startupmonkey.executor import index_catalog, indexes, plan
from startupmonkey.models.enums import ActionId, RemediationState

log = logging.getLogger(__name__)

_HOLDERS = """
SELECT a.pid, a.state, a.application_name, a.xact_start, pg_catalog.string_agg(l.mode, ', ')
FROM pg_catalog.pg_locks AS l JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.relation = %s AND l.granted
  AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                    WHERE d.datname = pg_catalog.current_database())
  AND l.pid <> pg_catalog.pg_backend_pid()
GROUP BY 1, 2, 3, 4 ORDER BY a.xact_start NULLS LAST LIMIT 3
"""
CHECK_INTERVAL = index_catalog.CHECK_INTERVAL


def _plan_refusal(conn: db.Conn, step: plan.Plan,
                  target: indexes.IndexTarget) -> str | None:
    if step.action is not ActionId.CREATE_INDEX:
        return f"{step.action.value} is not create_index"
    if step.sql != indexes.plan_for(target).sql:
        return f"the planned SQL does not build {target.name} on {target.label}"
    if not conn.autocommit:
        return "CREATE INDEX CONCURRENTLY needs an autocommit connection"
    return None


async def lock_holders(conn: db.Conn, table_oid: int) -> str:
    """Who holds locks on the table now, for the message of a lock timeout."""
    cursor = await conn.execute(_HOLDERS, (table_oid,))
    rows = await cursor.fetchall()
    if not rows:
        return "no session holds a lock on the table any more"
    return "; ".join(f"pid {pid} ({state}, application {app!r}, transaction since {xact}, "
                     f"holding {modes})" for pid, state, app, xact, modes in rows)


def _outcome(state: RemediationState, message: str, before: dict[str, float],
             executed: list[str], cleanup: index_catalog.Cleanup | None = None,
             **after: float) -> indexes.IndexOutcome:
    leftovers = list(cleanup.dropped) if cleanup else []
    return indexes.IndexOutcome(state, message, dict(before), dict(after), list(executed),
                                leftovers=leftovers)


def with_retry(result: indexes.IndexOutcome, attempt: int) -> indexes.IndexOutcome:
    """Mark ``result`` as ending cleanly with a retry due after the backoff of ``attempt``."""
    return result.with_retry(attempt)


def _describe_cleanup(cleanup: index_catalog.Cleanup) -> str:
    parts = []
    if cleanup.cancelled:
        parts.append(f"cancelled backend(s) {cleanup.cancelled} still building it")
    if cleanup.dropped:
        parts.append(f"dropped INVALID leftover(s) {', '.join(cleanup.dropped)}")
    return "; ".join(parts)


async def _existing_refusal(conn: db.Conn,
                            target: indexes.IndexTarget) -> tuple[str | None, bool]:
    """(why not to build, already built): the name may be taken by something else."""
    existing = await index_catalog.find_index(conn, target.schema, target.name)
    if existing is not None and existing.valid:
        if existing.same_definition(target):
            return None, True
        return (f"{existing.qualified} exists as an index on ({', '.join(existing.columns)}) "
                f"of {existing.table_schema}.{existing.table_name}, not {target.label}"), False
    if existing is not None and (existing.table_schema, existing.table_name) != (
            target.schema, target.table):
        return f"{existing.qualified} is an index of another table", False
    if existing is None and await index_catalog.relation_kind(conn, target.schema,
                                                              target.name) is not None:
        return f"a relation named {target.schema}.{target.name} exists and is not an index", \
            False
    return None, False


async def built_earlier(conn: db.Conn, target: indexes.IndexTarget) -> bool:
    """Whether the planned index already exists, valid, under its planned name and exactly its
    definition (key columns and nothing more: no INCLUDE, storage parameters, tablespace,
    operator class, collation or order of its own): an earlier attempt's build that committed
    before its outcome could be recorded (the connection broke, the executor died). Only a
    retry may call it its own."""
    existing = await index_catalog.find_index(conn, target.schema, target.name)
    return (existing is not None and existing.valid and existing.same_definition(target)
            and await index_catalog.as_planned(conn, existing.oid))


async def build_index(conn: db.Conn, step: plan.Plan,
                      target: indexes.IndexTarget, *, attempt: int = 1,
                      check_interval: str = CHECK_INTERVAL, cleanup_wait: float = 30.0,
                      builder_wait: float = 10.0) -> indexes.IndexOutcome:
    """Build ``target`` with the planned CREATE INDEX CONCURRENTLY (the caller holds the guard).

    Ends Verifying (built and valid), Rejected (nothing ran), or Failed; a Failed outcome with
    ``retry_after`` set ended cleanly and should be retried after that many seconds
    (``attempt`` counts from 1 and sets the backoff).
    """
    refusal = _plan_refusal(conn, step, target)
    table = await index_catalog.table_info(conn, target.schema, target.table)
    if refusal is None and table is None:
        refusal = f"table {target.schema}.{target.table} does not exist (any more)"
    built = False
    if refusal is None:
        refusal, built = await _existing_refusal(conn, target)
    if refusal is not None or table is None:
        return _outcome(RemediationState.REJECTED, refusal or "no table", {}, [])
    before = {"table_rows": table.rows, "table_bytes": float(table.bytes),
              "existing_indexes": float(table.indexes)}
    if built:
        return await _finished(conn, target, before=before, executed=[], cleanup=None,
                               seconds=0.0, how="already built by an earlier attempt")
    cleanup = await index_catalog.drop_leftovers(
        conn, await index_catalog.leftovers(conn, table.oid, target), builder_wait=builder_wait)
    before.update(leftovers_dropped=float(len(cleanup.dropped)),
                  builders_cancelled=float(len(cleanup.cancelled)))
    if cleanup.error is not None:
        return with_retry(_outcome(RemediationState.FAILED, cleanup.error, before,
                               cleanup.executed_sql, cleanup), attempt)
    return await _run(conn, step, target, table=table, before=before, cleanup=cleanup,
                      attempt=attempt, check_interval=check_interval, cleanup_wait=cleanup_wait)


async def _run(conn: db.Conn, step: plan.Plan, target: indexes.IndexTarget,
               *, table: index_catalog.TableInfo, before: dict[str, float],
               cleanup: index_catalog.Cleanup, attempt: int, check_interval: str,
               cleanup_wait: float) -> indexes.IndexOutcome:
    executed = [*cleanup.executed_sql, step.sql]
    started = time.monotonic()
    try:
        async with index_catalog.session_settings(
                conn, client_connection_check_interval=check_interval):
            await conn.execute(step.sql.encode())
    except psycopg.Error as exc:
        return await _failed(conn, target, exc, table=table, before=before, executed=executed,
                             attempt=attempt, cleanup_wait=cleanup_wait)
    except asyncio.CancelledError:
        # The executor is stopping (SIGTERM, Ctrl-C): psycopg has cancelled the statement on
        # the server, which leaves an INVALID index. Drop it before going, shielded from a
        # second cancellation and bounded in time, so a stop leaves no INVALID index behind.
        try:
            await asyncio.shield(asyncio.wait_for(
                _drop_after_cancel(conn, target, table, cleanup_wait), cleanup_wait + 5))
        except Exception as exc:  # the next attempt drops it (leftovers_dropped)
            log.warning("index build of %s interrupted by shutdown; its INVALID leftover "
                        "could not be dropped: %s", target.name, db.safe_error(exc))
        raise
    return await _finished(conn, target, before=before, executed=executed, cleanup=cleanup,
                           seconds=time.monotonic() - started, how="built CONCURRENTLY")


async def _drop_after_cancel(conn: db.Conn, target: indexes.IndexTarget,
                             table: index_catalog.TableInfo, cleanup_wait: float) -> None:
    found = await index_catalog.leftovers(conn, table.oid, target)
    cleanup = await index_catalog.drop_leftovers(conn, found, lock_wait=cleanup_wait)
    log.warning("index build of %s interrupted by shutdown; INVALID leftover dropped: %s",
                target.label, ", ".join(cleanup.dropped) or "none",
                extra={"error": cleanup.error} if cleanup.error else None)


async def _finished(conn: db.Conn, target: indexes.IndexTarget, *,
                    before: dict[str, float], executed: list[str],
                    cleanup: index_catalog.Cleanup | None, seconds: float,
                    how: str) -> indexes.IndexOutcome:
    info = await index_catalog.find_index(conn, target.schema, target.name)
    if info is None or not info.valid:
        return _outcome(RemediationState.FAILED, f"{target.name} is not a valid index after the "
                        "build", before, executed, cleanup)
    notes = _describe_cleanup(cleanup) if cleanup else ""
    message = (f"{how}: {info.qualified} on {target.label}, {info.bytes} bytes"
               f"{f' in {seconds:.1f}s' if seconds else ''}"
               f"{f' ({notes})' if notes else ''}; verifying")
    return _outcome(RemediationState.VERIFYING, message, before, executed, cleanup,
                    index_bytes=float(info.bytes), build_seconds=seconds)


def failure_reason(exc: psycopg.Error, conn: db.Conn) -> tuple[str, bool]:
    """(what happened, retry is due)."""
    text = db.safe_error(exc)
    if conn.broken or conn.closed:
        return f"the connection was lost during the build ({text})", True
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return f"lock timeout: {text}", True
    if isinstance(exc, psycopg.errors.QueryCanceled):
        if "statement timeout" in text:
            return (f"the build ran past the ddl statement_timeout ({text}); raise "
                    "limits.timeouts.ddl.statementTimeout to build it"), False
        return f"the build was cancelled ({text})", True
    return f"the build failed: {text}", False


async def _failed(conn: db.Conn, target: indexes.IndexTarget,
                  exc: psycopg.Error, *, table: index_catalog.TableInfo,
                  before: dict[str, float], executed: list[str], attempt: int,
                  cleanup_wait: float) -> indexes.IndexOutcome:
    message, retry = failure_reason(exc, conn)
    if conn.broken or conn.closed:
        result = _outcome(RemediationState.FAILED, message + "; an INVALID leftover, if any, "
                          "is dropped by the next attempt", before, executed)
        return with_retry(result, attempt)
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        message += f"; lock holders: {await lock_holders(conn, table.oid)}"
    found = await index_catalog.leftovers(conn, table.oid, target)
    cleanup = await index_catalog.drop_leftovers(conn, found, lock_wait=cleanup_wait)
    executed = executed + cleanup.executed_sql
    if cleanup.dropped:
        message += f"; dropped the INVALID index it left ({', '.join(cleanup.dropped)})"
    if cleanup.error is not None:
        message += f"; {cleanup.error} (the next attempt drops it first)"
    result = _outcome(RemediationState.FAILED, message, before, executed, cleanup,
                      invalid_left=float(cleanup.error is not None))
    if cleanup.error is not None:
        result.leftovers += [i.qualified for i in found if i.qualified not in cleanup.dropped]
    return with_retry(result, attempt) if retry else result


async def rollback_index(conn: db.Conn, step: plan.Plan, schema: str,
                         index: str, *, attempt: int = 1,
                         check_interval: str = CHECK_INTERVAL) -> indexes.IndexOutcome:
    """Run the plan's rollback (create_index: drop it; drop_index: create it again).

    Ends RolledBack when the catalog shows the undo done; Failed otherwise, with
    ``retry_after`` when a lock timeout or cancel stopped it (the index is as it was).
    """
    if step.rollback_sql is None:
        return _outcome(RemediationState.REJECTED, f"{step.action.value} is not reversible",
                        {}, [])
    executed = [step.rollback_sql]
    try:
        async with index_catalog.session_settings(
                conn, client_connection_check_interval=check_interval):
            await conn.execute(step.rollback_sql.encode())
    except psycopg.Error as exc:
        message, retry = failure_reason(exc, conn)
        cleanup = None
        if step.action is not ActionId.CREATE_INDEX and not (conn.broken or conn.closed):
            # A failed re-create leaves an INVALID index of that name: drop it, retry later.
            info = await index_catalog.find_index(conn, schema, index)
            cleanup = await index_catalog.drop_leftovers(
                conn, [info] if info is not None and not info.valid else [])
            executed += cleanup.executed_sql
        result = _outcome(RemediationState.FAILED, f"rollback failed: {message}", {}, executed,
                          cleanup)
        return with_retry(result, attempt) if retry else result
    info = await index_catalog.find_index(conn, schema, index)
    undone = info is None if step.action is ActionId.CREATE_INDEX else bool(info and info.valid)
    if not undone:
        return _outcome(RemediationState.FAILED, f"rollback ran but {schema}.{index} is not as "
                        "it was before", {}, executed)
    verb = "dropped" if step.action is ActionId.CREATE_INDEX else "re-created"
    return _outcome(RemediationState.ROLLED_BACK, f"rolled back: {verb} {schema}.{index}", {},
                    executed, index_present=float(info is not None))
