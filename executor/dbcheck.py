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

from startupmonkey import db, dbreport
from startupmonkey.models import monitor


async def check(conn: db.Conn) -> monitor.DatabaseStatus:
    """Read the database's state as the executor's role sees it (``startupmonkey.dbreport``,
    the same facts ``startupmonkey run`` reads)."""
    cursor = await conn.execute(dbreport.CHECK.encode())
    row = await cursor.fetchone()
    assert row is not None
    return dbreport.from_row(row)


def unreachable(exc: BaseException) -> monitor.DatabaseStatus:
    """The status when the database cannot be reached (``startupmonkey.dbreport``: the same
    report ``startupmonkey run`` makes from its own first login)."""
    return dbreport.unreachable(exc)
