"""``status.database``: what the executor sees of its database, from its own connection; and
``status.databases``: whether each other database it acts in (``executor.databases``) answers.

Reachability, server version, standby or not, which of the extensions the product relies on
are installed, which privileges the executor's role lacks, whether it is a superuser, and
which superuser roles have sessions in the database (StartupMonkey's own left out): their
sessions are left alone under ``spec.protect.superusers``, so the user learns it before a
remediation is refused (the operator's SuperuserSessions condition). The operator derives the
DatabaseReachable condition from it; missing privileges and extensions are shown so a person
knows why an action became advice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import psycopg

from startupmonkey import db, dbreport, kubetime, settings
from startupmonkey.executor import context
from startupmonkey.models import monitor

#: Seconds one database of ``status.databases`` has to answer (connect and ``SELECT 1``).
REACH_TIMEOUT = 15.0


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


async def other_databases(conn: db.Conn, executor: settings.ExecutorSettings,
                          home: str) -> list[str]:
    """The databases besides ``home`` (the home database as PostgreSQL names it) that the
    executor acts in and ``status.databases`` reports on, read on the home connection
    ``conn``: the listed ones, or with ``all`` those of :data:`startupmonkey.db.OTHER_DATABASES`
    (the collector's set: accepting connections, CONNECT allowed, not a template, not
    invalid, oldest first) not excluded; never a name libpq or the server would cut; at most
    ``MAX_DATABASES - 1``. Admission acts in exactly these (``admission.Admission._covers``),
    so the status and the routing agree."""
    if executor.databases == "all":
        cursor = await conn.execute(db.OTHER_DATABASES)
        names = [str(row[0]) for row in await cursor.fetchall()]
    else:
        names = list(executor.databases)
    return [name for name in names
            if name != home and executor.covers(name)
            and settings.database_name_problem(name) is None][:settings.MAX_DATABASES - 1]


async def reach(connect: Callable[[str], Awaitable[db.Conn]],
                names: Sequence[str],
                answered: Callable[[str], None] | None = None) -> list[monitor.DatabaseReach]:
    """Whether each of ``names`` answers a new connection (``connect(name)``, the executor's
    login) with ``SELECT 1`` within :data:`REACH_TIMEOUT`, all at once; never raises for one
    database's failure. ``answered(name)`` is called for each that answered (the engine then
    forgets a refusal it remembered)."""

    async def one(name: str) -> monitor.DatabaseReach:
        try:
            async with asyncio.timeout(REACH_TIMEOUT):
                conn = await connect(name)
                try:
                    await conn.execute(b"SELECT 1")
                finally:
                    await conn.close()
        except (psycopg.Error, OSError, TimeoutError, context.DatabaseRefused) as exc:
            error = f"no answer within {REACH_TIMEOUT:g}s" if isinstance(exc, TimeoutError) \
                else exc.reason if isinstance(exc, context.DatabaseRefused) \
                else db.safe_error(exc)
            return monitor.DatabaseReach(name=name, reachable=False, last_error=error[:1024],
                                         checked_at=kubetime.utcnow())
        if answered is not None:
            answered(name)
        return monitor.DatabaseReach(name=name, reachable=True, checked_at=kubetime.utcnow())

    return list(await asyncio.gather(*(one(name) for name in names)))

