"""``status.database``: what the executor sees of its database, from its own connection.

Reachability, server version, standby or not, which of the extensions the product relies on
are installed, which privileges the executor's role lacks, whether it is a superuser, and
which superuser roles have sessions in the database (StartupMonkey's own left out): their
sessions are left alone under ``spec.protect.superusers``, so the user learns it before a
remediation is refused (the operator's SuperuserSessions condition). The operator derives the
DatabaseReachable condition from it; missing privileges and extensions are shown so a person
knows why an action became advice.
"""

from __future__ import annotations

from startupmonkey import db, kubetime, superusers
from startupmonkey.models import monitor

_CHECK = f"""
SELECT pg_catalog.current_setting('server_version'),
       pg_catalog.pg_is_in_recovery(),
       ARRAY(SELECT extname::text FROM pg_catalog.pg_extension
             WHERE extname IN ('pg_stat_statements', 'hypopg') ORDER BY extname),
       pg_catalog.pg_has_role(current_user, 'pg_monitor', 'MEMBER'),
       pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER'),
       pg_catalog.pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'),
       {superusers.IS_SUPERUSER},
       {superusers.LOGINS}
"""


async def check(conn: db.Conn) -> monitor.DatabaseStatus:
    """Read the database's state as the executor's role sees it."""
    cursor = await conn.execute(_CHECK)
    row = await cursor.fetchone()
    assert row is not None
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


def unreachable(exc: BaseException) -> monitor.DatabaseStatus:
    """The status when the database cannot be reached."""
    return monitor.DatabaseStatus(reachable=False, last_error=db.safe_error(exc),
                                  checked_at=kubetime.utcnow())
