"""What a database offers StartupMonkey, read with one query: version, standby or not, the
extensions the product relies on, the privileges the role lacks, superuser logins.

Shared by the executor's ``status.database`` report (``executor/dbcheck.py``: the operator's
DatabaseReachable and SuperuserSessions conditions) and the notices ``startupmonkey run`` and
``startupmonkey validate --database`` print, so all of them judge the same facts the same way;
what is off on the server and why is :meth:`DatabaseStatus.features_off
<startupmonkey.models.monitor.DatabaseStatus.features_off>` (docs/postgres-support.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from startupmonkey import db, kubetime, superusers
from startupmonkey.models import monitor

CHECK = f"""
SELECT pg_catalog.current_setting('server_version'),
       pg_catalog.pg_is_in_recovery(),
       ARRAY(SELECT extname::text FROM pg_catalog.pg_extension
             WHERE extname IN ('pg_stat_statements', 'hypopg') ORDER BY extname),
       pg_catalog.pg_has_role(current_user, 'pg_monitor', 'USAGE'),
       pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'),
       pg_catalog.pg_has_role(current_user, 'pg_signal_backend', 'USAGE'),
       {superusers.IS_SUPERUSER},
       {superusers.LOGINS}
"""
"""One row: the facts :func:`from_row` turns into a ``status.database``."""


def from_row(row: Sequence[Any]) -> monitor.DatabaseStatus:
    """The report of one :data:`CHECK` row."""
    (version, in_recovery, extensions, monitor_role, read_stats, signal, superuser,
     superuser_logins) = row
    missing = []
    if not superuser:
        if not monitor_role:
            missing.append("pg_monitor")
        elif not read_stats:
            missing.append("pg_read_all_stats")
        if not signal:
            missing.append("pg_signal_backend")
    return monitor.DatabaseStatus(
        reachable=True, server_version=version, in_recovery=in_recovery,
        extensions=list(extensions), privileges_missing=missing,
        superuser_logins=list(superuser_logins), executor_superuser=bool(superuser),
        checked_at=kubetime.utcnow())


def check(conn: psycopg.Connection[Any]) -> monitor.DatabaseStatus:
    """:data:`CHECK` on a synchronous connection (the CLI's)."""
    row = conn.execute(CHECK.encode()).fetchone()
    assert row is not None
    return from_row(row)


def unreachable(exc: BaseException) -> monitor.DatabaseStatus:
    """The report when the database cannot be reached: libpq's error, on one line and with
    no password echoed back (its words: :meth:`DatabaseStatus.state_line
    <startupmonkey.models.monitor.DatabaseStatus.state_line>`)."""
    return monitor.DatabaseStatus(reachable=False, last_error=db.safe_error(exc),
                                  checked_at=kubetime.utcnow())


def read(spec: monitor.DatabaseMonitorSpec, user: str, password: str | None,
         application_name: str) -> monitor.DatabaseStatus:
    """``spec``'s database as the executor will see it (its login, its query), or why it
    cannot be reached: the report ``startupmonkey run`` starts from before the executor
    sends its own."""
    database = spec.database
    kwargs: dict[str, Any] = {"password": password} if password is not None else {}
    try:
        with psycopg.connect(host=database.host, port=database.port, dbname=database.dbname,
                             user=user, sslmode=database.ssl_mode, connect_timeout=10,
                             application_name=application_name, autocommit=True,
                             **kwargs) as conn:
            return check(conn)
    except psycopg.Error as exc:
        return unreachable(exc)


def notices(spec: monitor.DatabaseMonitorSpec, user: str,
            password: str | None, application_name: str) -> list[str]:
    """What a person should know before running against ``spec``'s database, read as the
    executor will read it (:func:`read`): superuser logins and what they mean, a standby, and
    each feature that is off on the server and why (nothing when all is well); what failed
    when it cannot be read."""
    status = read(spec, user, password, application_name)
    if not status.reachable:
        return ["could not read the database's version, extensions and sessions: "
                + (status.last_error or "")]
    found = []
    superuser = status.superuser_notice(spec.protect.superusers)
    if superuser is not None:
        found.append(superuser)
    server = f"PostgreSQL {status.server_version}"
    if status.in_recovery:
        found.append(f"{server} is a standby: no action runs on it")
    found += [f"off on {server}: {off}" for off in status.features_off()]
    return found
