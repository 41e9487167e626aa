"""Planning: the exact SQL of an action, built from identifiers re-derived from the database.

A plan is what goes into the Remediation spec (``sql``, ``rollbackSql``, ``sqlHash``) and is
the only SQL the executor will ever run for it (the hash is checked before running).
Identifiers are quoted with ``psycopg.sql``; for session actions the statement itself carries
the re-check (same pid, same backend start, same query start or state change, a client backend
of this database), so a pid that was reused in between is never signalled.
"""

from __future__ import annotations

import dataclasses
import datetime

from psycopg import sql

from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId


@dataclasses.dataclass(frozen=True)
class Plan:
    """The SQL of one action and how to undo it (None: not reversible)."""

    action: ActionId
    sql: str
    rollback_sql: str | None = None
    columns: tuple[str, ...] = ()
    """create_index: the key this SQL builds, chosen at intake among the detection's
    candidate keys by HypoPG cost (``executor/derive.py``); intake writes it into the
    Remediation's target. Empty for other actions."""
    note: str = ""
    """Why intake planned this (create_index: the keys considered, their costs and why the
    winner won); recorded in the evidence and the first status message."""

    @property
    def sql_hash(self) -> str:
        """What the Remediation spec records and the executor checks before running."""
        return remediation.sql_hash(self.sql, self.rollback_sql)


def _table(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)


def vacuum(schema: str, table: str) -> Plan:
    """VACUUM (VERBOSE, ANALYZE): VERBOSE reports tuples that are dead but not yet removable."""
    text = sql.SQL("VACUUM (VERBOSE, ANALYZE) {}").format(_table(schema, table))
    return Plan(ActionId.VACUUM, text.as_string(None))


def analyze(schema: str, table: str) -> Plan:
    """ANALYZE of one table."""
    return Plan(ActionId.ANALYZE, sql.SQL("ANALYZE {}").format(_table(schema, table))
                .as_string(None))


_SESSION_GUARD = sql.SQL(
    "SELECT pg_catalog.{fn}(a.pid) FROM pg_catalog.pg_stat_activity AS a"
    " WHERE a.pid = {pid} AND a.backend_start = {backend_start}"
    " AND a.backend_type = 'client backend' AND a.datname = pg_catalog.current_database()"
    " AND {condition}")


def cancel_query(pid: int, backend_start: datetime.datetime,
                 query_start: datetime.datetime) -> Plan:
    """Cancel the query that started at ``query_start`` in backend ``pid``, and nothing else."""
    condition = sql.SQL("a.state = 'active' AND a.query_start = {}").format(
        sql.Literal(query_start))
    return Plan(ActionId.CANCEL_QUERY, _session(
        "pg_cancel_backend", pid, backend_start, condition))


def terminate_query(pid: int, backend_start: datetime.datetime,
                    query_start: datetime.datetime) -> Plan:
    """Terminate the backend still running the query that started at ``query_start``."""
    condition = sql.SQL("a.state = 'active' AND a.query_start = {}").format(
        sql.Literal(query_start))
    return Plan(ActionId.TERMINATE_SESSION, _session(
        "pg_terminate_backend", pid, backend_start, condition))


def terminate_idle_transaction(pid: int, backend_start: datetime.datetime,
                               state_change: datetime.datetime) -> Plan:
    """Terminate ``pid`` only while it is idle in the same transaction it was flagged in."""
    condition = sql.SQL(
        "a.state IN ('idle in transaction', 'idle in transaction (aborted)')"
        " AND a.state_change = {}").format(sql.Literal(state_change))
    return Plan(ActionId.TERMINATE_SESSION, _session(
        "pg_terminate_backend", pid, backend_start, condition))


#: The backend is still a root blocker: it waits for no lock itself, and at least one session
#: of this database waits for a lock behind it (pg_blocking_pids). A victim of the chain, or a
#: session that stopped blocking, fails this and is never signalled.
_STILL_ROOT = sql.SQL(
    "pg_catalog.cardinality(pg_catalog.pg_blocking_pids(a.pid)) = 0"
    " AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS w"
    " WHERE w.wait_event_type = 'Lock' AND w.datname = pg_catalog.current_database()"
    " AND a.pid = ANY(pg_catalog.pg_blocking_pids(w.pid)))")
IDLE_STATES = ("idle", "idle in transaction", "idle in transaction (aborted)")


def _same_transaction(xact_start: datetime.datetime | None) -> sql.Composable:
    if xact_start is None:
        return sql.SQL("a.xact_start IS NULL")
    return sql.SQL("a.xact_start = {}").format(sql.Literal(xact_start))


def terminate_root_blocker(pid: int, backend_start: datetime.datetime,
                           xact_start: datetime.datetime | None) -> Plan:
    """Terminate ``pid`` only while it is idle (in the same transaction it was flagged in, or
    outside one when it was flagged outside one) and still the root of a lock chain."""
    condition = sql.SQL("a.state IN ({states}) AND {xact} AND {root}").format(
        states=sql.SQL(", ").join(sql.Literal(s) for s in IDLE_STATES),
        xact=_same_transaction(xact_start), root=_STILL_ROOT)
    return Plan(ActionId.TERMINATE_SESSION, _session(
        "pg_terminate_backend", pid, backend_start, condition))


def _root_query(function: str, action: ActionId, pid: int, backend_start: datetime.datetime,
                query_start: datetime.datetime) -> Plan:
    condition = sql.SQL("a.state = 'active' AND a.query_start = {} AND {}").format(
        sql.Literal(query_start), _STILL_ROOT)
    return Plan(action, _session(function, pid, backend_start, condition))


def cancel_root_blocker(pid: int, backend_start: datetime.datetime,
                        query_start: datetime.datetime) -> Plan:
    """Cancel the statement that started at ``query_start`` in ``pid`` while that backend is
    still the root of a lock chain."""
    return _root_query("pg_cancel_backend", ActionId.CANCEL_QUERY, pid, backend_start,
                       query_start)


def terminate_root_query(pid: int, backend_start: datetime.datetime,
                         query_start: datetime.datetime) -> Plan:
    """The escalation of :func:`cancel_root_blocker`: terminate the backend still running
    that statement and still the root of a lock chain."""
    return _root_query("pg_terminate_backend", ActionId.TERMINATE_SESSION, pid, backend_start,
                       query_start)


def _session(function: str, pid: int, backend_start: datetime.datetime,
             condition: sql.Composable) -> str:
    return _SESSION_GUARD.format(
        fn=sql.SQL(function), pid=sql.Literal(int(pid)),
        backend_start=sql.Literal(backend_start), condition=condition).as_string(None)
