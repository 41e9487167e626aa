"""Database connections shared by the collector and the executor.

Every connection gets a descriptive ``application_name`` and its password from a *file* (the
mounted Secret), passed to libpq as ``password=`` and never logged, put in an environment
variable or shown in a DSN string. :class:`Backoff` paces reconnects with jitter so a database
that went away is retried without a thundering herd.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Final, TypeAlias

import psycopg
from psycopg import conninfo as pg_conninfo

Conn: TypeAlias = psycopg.AsyncConnection[Any]
"""An open async psycopg connection, as every component holds one (rows as tuples unless a
cursor asks for ``row_factory``); one name so annotations stay short and agree."""


@dataclasses.dataclass(frozen=True)
class Login:
    """Where a component connects and as whom; the password stays in its file."""

    host: str
    port: int
    dbname: str
    user: str
    password_file: Path | None = None
    sslmode: str = "prefer"

    def conninfo(self, application_name: str) -> str:
        """A libpq connection string *without* the password (safe to log)."""
        return pg_conninfo.make_conninfo(
            host=self.host, port=self.port, dbname=self.dbname, user=self.user,
            sslmode=self.sslmode, application_name=application_name, connect_timeout=10)

    def password(self) -> str | None:
        """The password read from its file, without a trailing newline."""
        if self.password_file is None:
            return None
        return self.password_file.read_text().rstrip("\r\n")

    def describe(self) -> str:
        """``user@host:port/dbname`` for logs and status."""
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


async def connect(login: Login, application_name: str,
                  autocommit: bool = True) -> Conn:
    """Open one async connection for ``login`` (autocommit by default)."""
    kwargs: dict[str, Any] = {}
    password = login.password()
    if password is not None:
        kwargs["password"] = password
    return await psycopg.AsyncConnection.connect(
        login.conninfo(application_name), autocommit=autocommit, **kwargs)


def safe_error(exc: BaseException) -> str:
    """An error message fit for logs and status: one line, no password echoed back."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:1000]


#: SQLSTATEs of a server going away: admin_shutdown, crash_shutdown, cannot_connect_now.
_SERVER_GONE: Final = frozenset({"57P01", "57P02", "57P03"})


def server_gone(exc: BaseException) -> bool:
    """True when ``exc`` says the server went away or could not be reached (a restart, a
    crash, a network cut: class 08, 57P01-57P03, or a connection error without SQLSTATE),
    not that a statement failed (a timeout, a lock timeout, a missing privilege)."""
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _SERVER_GONE
    return isinstance(exc, OSError)


OTHER_DATABASES: Final = (
    "SELECT d.datname FROM pg_catalog.pg_database d "
    "WHERE d.datallowconn AND NOT d.datistemplate AND d.datconnlimit <> -2 "
    "AND d.datname NOT IN ('template0', 'template1') "
    "AND d.datname <> pg_catalog.current_database() "
    "AND pg_catalog.has_database_privilege(d.oid, 'CONNECT') ORDER BY d.oid"
)
"""The other databases of the server one can connect to (``databases: all``), oldest first,
read on the home connection: never the home database itself (whatever name it was reached
by: a pooler may alias it), template0 and template1, a database left invalid by an
interrupted DROP DATABASE (``datconnlimit = -2``) or one the login may not connect to. The
collector watches these and the executor acts in (and reports on) the same ones."""

DATABASE_REFUSAL: Final = (
    "SELECT d.datallowconn, d.datistemplate, d.datconnlimit = -2, "
    "pg_catalog.has_database_privilege(d.oid, 'CONNECT') "
    "FROM pg_catalog.pg_database d WHERE d.datname = %s"
)
"""Why a database refuses the login, asked on another connection (libpq reports a refused
connection without SQLSTATE, in the server's language): no row, it does not exist
(3D000); ``datallowconn`` false (55000); a template; invalid; no CONNECT privilege (42501)."""


def refusal_of(database: str, row: Any) -> str | None:
    """Why ``database`` cannot be connected to for good, from a :data:`DATABASE_REFUSAL` row
    (None: no row); None when nothing in the catalog refuses it (then the failure is
    temporary: a network cut, a server starting)."""
    name = repr(database) if len(database) < 80 else repr(database[:80]) + "..."
    if row is None:
        return f"database {name} does not exist"
    allow, template, invalid, may_connect = row
    if invalid:
        return f"database {name} cannot be connected to: it is invalid (a DROP DATABASE " \
               "was interrupted)"
    if not allow:
        return f"database {name} cannot be connected to: it does not allow connections " \
               "(datallowconn is false)"
    if template:
        return f"database {name} cannot be connected to: it is a template"
    if not may_connect:
        return f"database {name} cannot be connected to: the role lacks the CONNECT privilege"
    return None


MAX_DOUBLINGS = 512
"""Backoff's exponent stops growing here (far beyond any cap, far below float overflow)."""


class Backoff:
    """Exponential backoff with jitter: the n-th delay (from 0) is drawn uniformly from
    ``[ceiling / 2, ceiling]`` where ``ceiling = min(cap, base * 2**n)``, so 0.5 s doubling
    to at most 30 s by default. Half the ceiling is always waited (never a near-zero retry
    against a server that just went away), the other half is random so that clients that
    lost the same server spread their retries out."""

    def __init__(self, base: float = 0.5, cap: float = 30.0,
                 rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        # The exponent is bounded: 2**n as a float overflows past n = 1023 (a database down
        # for a day at the 30 s cap is about 3,000 attempts).
        ceiling = min(self.cap, self.base * 2.0 ** min(self.attempt, MAX_DOUBLINGS))
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """After a success, start again from the base delay."""
        self.attempt = 0
