"""Which superuser roles have sessions in a database (issue 17, item 4).

Shared by the executor's ``status.database`` report (``executor/dbcheck.py``, the operator's
SuperuserSessions condition) and ``startupmonkey run``'s notice at start, so both name the same
sessions: client backends of the current database whose role is a superuser, the checking
session and StartupMonkey's own (``application_name`` ``startupmonkey-*``) left out.
"""

from __future__ import annotations

from typing import Any

import psycopg

LOGINS = """ARRAY(SELECT DISTINCT a.usename::text FROM pg_catalog.pg_stat_activity AS a
             JOIN pg_catalog.pg_roles AS r ON r.oid = a.usesysid
             WHERE r.rolsuper AND a.datname = pg_catalog.current_database()
               AND a.backend_type = 'client backend' AND a.pid <> pg_catalog.pg_backend_pid()
               AND a.application_name NOT LIKE 'startupmonkey-%'
             ORDER BY 1 LIMIT 64)"""
"""An SQL expression: the superuser logins with sessions in the current database."""

IS_SUPERUSER = "(SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)"
"""An SQL expression: whether the checking session's own role is a superuser."""


def check(conn: psycopg.Connection[Any]) -> tuple[list[str], bool]:
    """The superuser logins with sessions in ``conn``'s database, and whether ``conn``'s own
    role is a superuser (what the notice needs)."""
    row = conn.execute(f"SELECT {LOGINS}, {IS_SUPERUSER}".encode()).fetchone()
    assert row is not None
    return list(row[0]), bool(row[1])
