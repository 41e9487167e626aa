"""Maintenance actions: VACUUM and ANALYZE of one table, verified by the table's counters.

Before VACUUM, the holders of the xmin horizon that can be dated are looked up: a session
whose transaction (or, for a running statement without a transaction id, whose statement)
started before the detection's first sighting, or a prepared transaction prepared before it.
Such a holder can keep the very dead tuples that were detected, so nothing runs: the
Remediation ends Rejected naming it, and the key cools down (its ``cooldown``; REFERENCE.md:
the peer vacuumed in a loop). A holder younger than the detection does not stop it (the dead
tuples counted before it took its snapshot are removable). VACUUM then runs with VERBOSE so
PostgreSQL itself says how many dead tuples it could not remove; when most of them were held
back by the xmin horizon (for example by a replication slot, which carries no time), the
action ends Failed with the oldest holder named (a session, a replication slot or a prepared
transaction) instead of pretending, and the key cools down likewise. Nothing checks later
whether that holder is still there: a new detection after the cooldown is tried again.
ANALYZE is verified by ``analyze_count`` and ``n_mod_since_analyze``. An ANALYZE for
statistics lost by a crash or a reset (the detection's ``statistics_lost``) is re-checked on
the same mark instead: no VACUUM or ANALYZE counted, and more rows in ``reltuples`` than the
counters know of.

Both re-check the problem right before acting: a table whose counters are back under the
trigger the detection reported (autovacuum, a person or an earlier action got there first) is
Rejected with the numbers, not maintained again. The trigger from the detection's evidence can
only make the executor do less; given the monitor's thresholds, the detector's own condition is
also re-computed from live state with this executor's limits, never the message's (dead_tuples:
``minDeadTuples``, ``minDeadRatio`` and the autovacuum trigger from the table's reloptions or
the settings and ``reltuples``; stale_statistics: ``minModifiedRows + minModifiedRatio x
reltuples``), so a detection whose condition never held is Rejected with the numbers too.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from startupmonkey import db
from startupmonkey.executor import outcome, plan
from startupmonkey.models import thresholds
from startupmonkey.models.enums import RemediationState

#: ``table_bytes`` is the heap's size as the catalog last recorded it (relpages, which VACUUM
#: and ANALYZE refresh): read without a lock, unlike pg_table_size, which would wait behind an
#: ACCESS EXCLUSIVE holder; it is only for the summary's "(12 MB table)".
_TABLE = """
SELECT s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze, s.vacuum_count, s.autovacuum_count,
       s.analyze_count, s.autoanalyze_count,
       c.relpages::bigint * pg_catalog.current_setting('block_size')::bigint AS table_bytes
FROM pg_catalog.pg_stat_user_tables AS s JOIN pg_catalog.pg_class AS c ON c.oid = s.relid
WHERE s.schemaname = %s AND s.relname = %s
"""

#: The oldest holder of this database's xmin horizon, of any kind.
HORIZON_HOLDER = """
SELECT kind, ident, detail, xmin_age FROM (
  SELECT 'session' AS kind, a.pid::text AS ident,
         format('user %s, application %L, %s since %s', a.usename, a.application_name,
                a.state, a.xact_start) AS detail,
         greatest(pg_catalog.age(a.backend_xmin), pg_catalog.age(a.backend_xid)) AS xmin_age
  FROM pg_catalog.pg_stat_activity AS a
  WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
    AND a.pid <> pg_catalog.pg_backend_pid()
    AND a.datname = pg_catalog.current_database()
  UNION ALL
  SELECT 'replication slot', s.slot_name::text, format('%s slot, active: %s', s.slot_type,
         s.active), greatest(pg_catalog.age(s.xmin), pg_catalog.age(s.catalog_xmin))
  FROM pg_catalog.pg_replication_slots AS s
  WHERE s.xmin IS NOT NULL OR s.catalog_xmin IS NOT NULL
  UNION ALL
  SELECT 'prepared transaction', p.gid, format('owner %s, prepared %s', p.owner, p.prepared),
         pg_catalog.age(p.transaction)
  FROM pg_catalog.pg_prepared_xacts AS p WHERE p.database = pg_catalog.current_database()
) AS holders
ORDER BY xmin_age DESC LIMIT 1
"""

#: The oldest holder of this database's xmin horizon that began before a given time (%s), among
#: those with a start time: sessions (the transaction's start, or the running statement's when
#: it holds only a statement snapshot) and prepared transactions. Autovacuum workers are left
#: out: a VACUUM's own snapshot does not hold back another VACUUM.
HOLDER_SINCE = """
SELECT kind, ident, detail, xmin_age, since FROM (
  SELECT 'session' AS kind, a.pid::text AS ident,
         format('user %%s, application %%L, %%s since %%s', a.usename, a.application_name,
                a.state, a.xact_start) AS detail,
         greatest(pg_catalog.age(a.backend_xmin), pg_catalog.age(a.backend_xid)) AS xmin_age,
         CASE WHEN a.backend_xid IS NULL AND a.state = 'active' THEN a.query_start
              ELSE a.xact_start END AS since
  FROM pg_catalog.pg_stat_activity AS a
  WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
    AND a.pid <> pg_catalog.pg_backend_pid()
    AND a.datname = pg_catalog.current_database()
    AND a.backend_type <> 'autovacuum worker'
  UNION ALL
  SELECT 'prepared transaction', p.gid, format('owner %%s, prepared %%s', p.owner, p.prepared),
         pg_catalog.age(p.transaction), p.prepared
  FROM pg_catalog.pg_prepared_xacts AS p WHERE p.database = pg_catalog.current_database()
) AS holders
WHERE since < %s
ORDER BY since LIMIT 1
"""

#: reltuples and the table's autovacuum trigger (its reloptions first, else the settings).
_VACUUM_TRIGGER = """
SELECT c.reltuples::float8,
       coalesce((SELECT o.option_value FROM pg_catalog.pg_options_to_table(c.reloptions) AS o
                 WHERE o.option_name = 'autovacuum_vacuum_threshold'),
                pg_catalog.current_setting('autovacuum_vacuum_threshold'))::float8,
       coalesce((SELECT o.option_value FROM pg_catalog.pg_options_to_table(c.reloptions) AS o
                 WHERE o.option_name = 'autovacuum_vacuum_scale_factor'),
                pg_catalog.current_setting('autovacuum_vacuum_scale_factor'))::float8
FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""

# VACUUM VERBOSE's report: 15+ says "tuples: N removed, ..., K are dead but not yet
# removable"; 13 and 14 say "found N removable, ..." and, in the message's detail, "K dead
# row versions cannot be removed yet" (docs/postgres-support.md).
_NOT_REMOVABLE = re.compile(r"(\d+) are dead but not yet removable"
                            r"|(\d+) dead row versions cannot be removed yet")
_REMOVED = re.compile(r"tuples: (\d+) removed|found (\d+) removable")
#: A vacuum is "blocked" when at least this share of the dead tuples could not be removed.
BLOCKED_SHARE = 0.5


async def table_counters(conn: db.Conn, schema: str,
                         table: str) -> dict[str, float] | None:
    """The table's counters as floats, or None when the table is gone."""
    await conn.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_TABLE, (schema, table))
        row = await cursor.fetchone()
    return None if row is None else {k: float(v or 0) for k, v in row.items()}


async def horizon_holder(conn: db.Conn) -> dict[str, Any] | None:
    """The oldest holder of the xmin horizon in this database, or None."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(HORIZON_HOLDER)
        return await cursor.fetchone()


async def holder_since_before(conn: db.Conn,
                              when: datetime.datetime) -> dict[str, Any] | None:
    """The oldest dated holder of the xmin horizon that began before ``when``, or None."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(HOLDER_SINCE, (when,))
        return await cursor.fetchone()


def describe_holder(holder: dict[str, Any]) -> str:
    """``session 1234 (user app, application 'x', idle in transaction since ...)``."""
    return f"{holder['kind']} {holder['ident']} ({holder['detail']}, xmin age " \
           f"{holder['xmin_age']})"


def _resolved(before: dict[str, float], counter: str, trigger: float | None,
              what: str) -> outcome.Outcome | None:
    """Rejected when ``counter`` is no longer above ``trigger`` (or zero without one)."""
    value = before[counter]
    if value <= 0:
        return outcome.Outcome.rejected(f"nothing to do: the table has no {what} any more",
                                        **{counter: value})
    if trigger is not None and value < trigger:
        return outcome.Outcome.rejected(
            f"nothing to do: {value:.0f} {what} now, under the trigger of {trigger:.0f} the "
            "detection reported (maintained since it was detected)",
            **{counter: value, "trigger": trigger})
    return None


async def _live_trigger(conn: db.Conn, schema: str, table: str) -> tuple[float, float]:
    """(reltuples, autovacuum trigger) of the table as autovacuum computes it."""
    cursor = await conn.execute(_VACUUM_TRIGGER.encode(), (schema, table))
    row = await cursor.fetchone()
    if row is None:
        return 0.0, 0.0
    reltuples, base, scale = (float(v) for v in row)
    return reltuples, base + scale * max(reltuples, 0.0)


async def _dead_tuples_hold(conn: db.Conn, before: dict[str, float], schema: str, table: str,
                            limits: thresholds.DeadTuples) -> outcome.Outcome | None:
    """Rejected with the numbers unless dead_tuples' condition holds on live counters."""
    dead, live = before["n_dead_tup"], before["n_live_tup"]
    reltuples, trigger = await _live_trigger(conn, schema, table)
    ratio = dead / (live + dead) if live + dead > 0 else 0.0
    if dead >= limits.min_dead_tuples and ratio >= limits.min_dead_ratio and dead > trigger:
        return None
    return outcome.Outcome.rejected(
        f"the condition does not hold: {dead:.0f} dead tuples (ratio {ratio:.3f}) in "
        f"{schema}.{table}; dead_tuples needs at least {limits.min_dead_tuples} "
        f"(minDeadTuples), a ratio of {limits.min_dead_ratio} (minDeadRatio) and more than "
        f"the autovacuum trigger of {trigger:.0f}",
        n_dead_tup=dead, n_live_tup=live, dead_ratio=ratio, autovacuum_trigger=trigger,
        reltuples=reltuples)


async def _stale_statistics_hold(conn: db.Conn, before: dict[str, float], schema: str,
                                 table: str, limits: thresholds.StaleStatistics
                                 ) -> outcome.Outcome | None:
    """Rejected with the numbers unless stale_statistics' condition holds on live counters."""
    modified = before["n_mod_since_analyze"]
    reltuples, _trigger = await _live_trigger(conn, schema, table)
    needed = limits.trigger(reltuples)
    if modified > needed:
        return None
    return outcome.Outcome.rejected(
        f"the condition does not hold: {modified:.0f} rows modified since the last ANALYZE of "
        f"{schema}.{table}, not more than the {needed:.0f} stale_statistics needs "
        f"(minModifiedRows {limits.min_modified_rows} + minModifiedRatio "
        f"{limits.min_modified_ratio} x reltuples {max(reltuples, 0.0):.0f})",
        n_mod_since_analyze=modified, trigger=needed, reltuples=reltuples)


async def _lost_statistics_hold(conn: db.Conn, before: dict[str, float], schema: str,
                                table: str, trigger: float | None,
                                limits: thresholds.StaleStatistics | None
                                ) -> outcome.Outcome | None:
    """Rejected with the numbers unless the table's counters are still lost: no VACUUM or
    ANALYZE counted and more rows uncounted than the detection's trigger and this executor's
    ``minModifiedRows + minModifiedRatio x reltuples``."""
    reltuples, _trigger = await _live_trigger(conn, schema, table)
    uncounted = thresholds.uncounted_rows(reltuples, before["n_live_tup"], sum(
        before[c] for c in ("vacuum_count", "autovacuum_count", "analyze_count",
                            "autoanalyze_count")))
    needed = max(trigger or 0.0, limits.trigger(reltuples) if limits is not None else 0.0)
    if uncounted > needed:
        return None
    return outcome.Outcome.rejected(
        f"nothing to do: the statistics of {schema}.{table} count its rows again "
        f"({uncounted:.0f} of reltuples {max(reltuples, 0.0):.0f} uncounted, not more than "
        f"{needed:.0f}; vacuumed or analysed since the detection: "
        f"{'no' if uncounted else 'yes or unknown'})",
        uncounted_rows=uncounted, trigger=needed, reltuples=reltuples,
        n_live_tup=before["n_live_tup"])


def _total(pattern: re.Pattern[str], report: str) -> int:
    """The sum of the numbers ``pattern`` finds (whichever of its alternatives matched)."""
    return sum(int(next(n for n in found if n)) for found in pattern.findall(report))


async def vacuum(conn: db.Conn, step: plan.Plan, schema: str,
                 table: str, *, trigger: float | None = None,
                 detected: datetime.datetime | None = None,
                 limits: thresholds.DeadTuples | None = None) -> outcome.Outcome:
    """Run the planned VACUUM, if the dead tuples are still above ``trigger`` and nothing that
    began before they were ``detected`` holds the xmin horizon, and judge it by what
    PostgreSQL reports."""
    before = await table_counters(conn, schema, table)
    if before is None:
        return outcome.Outcome.rejected(f"table {schema}.{table} no longer exists")
    if (resolved := _resolved(before, "n_dead_tup", trigger, "dead tuples")) is not None:
        return resolved
    if limits is not None and (
            refused := await _dead_tuples_hold(conn, before, schema, table, limits)):
        return refused
    if detected is not None and (holder := await holder_since_before(conn, detected)):
        return outcome.Outcome.rejected(
            f"not vacuumed: {describe_holder(holder)} has held the xmin horizon since "
            f"{holder['since'].isoformat()}, before the dead tuples were detected "
            f"({detected.isoformat()}), so VACUUM could not remove them; end it (or wait for "
            "it) before vacuuming again. Nothing ran",
            **before, holder_xmin_age=float(holder["xmin_age"] or 0))
    notices: list[str] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        notices.extend([diag.message_primary or "", diag.message_detail or ""])

    conn.add_notice_handler(collect)
    try:
        await conn.execute(step.sql.encode())
    finally:
        conn.remove_notice_handler(collect)
    after = await _counters_after(
        conn, schema, table, lambda a: a.get("vacuum_count", 0) > before["vacuum_count"])
    report = "\n".join(notices)
    held = _total(_NOT_REMOVABLE, report)
    removed = _total(_REMOVED, report)
    after.update({"dead_not_removable": float(held), "dead_removed": float(removed)})
    if held and held >= BLOCKED_SHARE * (held + removed):
        holder = await horizon_holder(conn)
        named = describe_holder(holder) if holder else "an unknown holder"
        return outcome.Outcome(
            RemediationState.FAILED,
            f"blocked: {held} dead tuples are not removable because {named} holds the "
            "xmin horizon; end it (or wait for it) before vacuuming again",
            before, after, [step.sql])
    return outcome.Outcome(RemediationState.SUCCEEDED,
                           f"vacuumed {schema}.{table}: {removed} dead tuples removed",
                           before, after, [step.sql])


#: How long the counters of an ANALYZE may take to show (the statistics collector of
#: PostgreSQL 13 and 14 reports every 500 ms; from 15 on they show at once).
STATS_DELAY = 3.0


async def _counters_after(conn: db.Conn, schema: str, table: str,
                          shown: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    """The table's counters once they show the action (``shown``), or as they are after
    :data:`STATS_DELAY`: before PostgreSQL 15 the statistics collector applies a VACUUM's or
    ANALYZE's report asynchronously, and readers take a snapshot up to 500 ms old."""
    after = await table_counters(conn, schema, table) or {}
    deadline = time.monotonic() + STATS_DELAY
    while not shown(after) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        after = await table_counters(conn, schema, table) or {}
    return after


def _refreshed(before: dict[str, float], after: dict[str, float]) -> bool:
    return after.get("analyze_count", 0) > before["analyze_count"] or (
        after.get("n_mod_since_analyze", 0) < before["n_mod_since_analyze"])


async def analyze(conn: db.Conn, step: plan.Plan, schema: str,
                  table: str, *, trigger: float | None = None,
                  limits: thresholds.StaleStatistics | None = None,
                  lost: bool = False) -> outcome.Outcome:
    """Run the planned ANALYZE, if the rows modified since the last one are still above
    ``trigger`` (or, for statistics ``lost`` by a crash or a reset, the uncounted rows are),
    and check that the statistics were refreshed."""
    before = await table_counters(conn, schema, table)
    if before is None:
        return outcome.Outcome.rejected(f"table {schema}.{table} no longer exists")
    if lost:
        if refused := await _lost_statistics_hold(conn, before, schema, table, trigger, limits):
            return refused
    else:
        if (resolved := _resolved(before, "n_mod_since_analyze", trigger,
                                  "rows modified since the last ANALYZE")) is not None:
            return resolved
        if limits is not None and (
                refused := await _stale_statistics_hold(conn, before, schema, table, limits)):
            return refused
    await conn.execute(step.sql.encode())
    after = await _counters_after(conn, schema, table, lambda a: _refreshed(before, a))
    if not _refreshed(before, after):
        return outcome.Outcome(RemediationState.FAILED, "ANALYZE ran but the statistics "
                               "counters did not move", before, after, [step.sql])
    done = (f"its lost counters re-estimated: {after.get('n_live_tup', 0):.0f} live and "
            f"{after.get('n_dead_tup', 0):.0f} dead rows" if lost else
            f"{before['n_mod_since_analyze']:.0f} modified rows since the last analyze")
    return outcome.Outcome(RemediationState.SUCCEEDED, f"analyzed {schema}.{table}: {done}",
                           before, after, [step.sql])
