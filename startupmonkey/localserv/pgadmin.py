"""SQL administration of a throwaway PostgreSQL cluster: databases, extensions, roles, and the
``pg_hba.conf`` rules they rely on.

:class:`~startupmonkey.localserv.postgres.PostgresCluster` runs the server
(:mod:`~startupmonkey.localserv.process`) and offers these as its methods
(``create_role``, ``create_database``...); here is the SQL they send, as functions of a
superuser connection in autocommit.

Invariants:

- Authentication (:func:`hba`): the Unix socket trusts everyone; over TCP the bootstrap
  superuser and roles created *without* a password (members of :data:`TCP_TRUST_ROLE`) are
  trusted, every other role must pass SCRAM-SHA-256.
- Passwords never leave the caller in clear text: roles get a SCRAM verifier computed
  client-side by libpq (so the password is in neither the server log nor
  pg_stat_statements), and nothing here returns or logs a password.
- Names are quoted as identifiers (``psycopg.sql``), never formatted into SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[Any]

EXTENSIONS = ("pg_stat_statements", "hypopg")
"""Extensions the product relies on; neither is trusted, so an admin creates them per DB."""

TCP_TRUST_ROLE = "localserv_tcp_trust"
"""NOLOGIN group whose members log in over TCP without a password (roles made without one)."""


def hba_name(name: str) -> str:
    """``name`` quoted for pg_hba.conf (ValueError for names this helper cannot write)."""
    if '"' in name or "\n" in name or "\0" in name:
        raise ValueError(f"role name not supported by this helper: {name!r}")
    return f'"{name}"'


def hba(superuser: str) -> str:
    """pg_hba.conf: socket trust; over TCP the superuser and password-less roles trusted,
    others SCRAM."""
    lines = [
        "# Written by startupmonkey.localserv.postgres for a throwaway cluster.",
        "# Socket: trust. TCP: superuser and password-less roles trusted, others SCRAM.",
        "local all all trust",
    ]
    for address in ("127.0.0.1/32", "::1/128"):
        lines += [
            f"host all {hba_name(superuser)} {address} trust",
            f"host all +{TCP_TRUST_ROLE} {address} trust",
            f"host all all {address} scram-sha-256",
        ]
    return "\n".join(lines) + "\n"


def create_database(conn: Conn, name: str, owner: str | None = None) -> None:
    """``CREATE DATABASE`` (from template1, so extensions installed there are inherited)."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if owner is not None:
        statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(owner))
    conn.execute(statement)


def drop_database(conn: Conn, name: str) -> None:
    """``DROP DATABASE IF EXISTS ... WITH (FORCE)``: terminates sessions still in it."""
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
    conn.execute(statement.format(sql.Identifier(name)))


def install_extensions(conn: Conn, extensions: Sequence[str] = EXTENSIONS) -> None:
    """``CREATE EXTENSION IF NOT EXISTS`` each of ``extensions`` in the connected database."""
    statement = sql.SQL("CREATE EXTENSION IF NOT EXISTS {}")
    for extension in extensions:
        conn.execute(statement.format(sql.Identifier(extension)))


def available_extensions(conn: Conn) -> set[str]:
    """Names in ``pg_available_extensions`` (installed packages, not created ones)."""
    rows = conn.execute("SELECT name FROM pg_catalog.pg_available_extensions")
    return {row[0] for row in rows}


def create_role(conn: Conn, name: str, password: str | None = None, *, login: bool = True,
                member_of: Iterable[str] = ()) -> None:
    """Create a role; with a password it must log in over TCP with SCRAM-SHA-256, without
    one (a login role) it joins :data:`TCP_TRUST_ROLE`. ``member_of`` grants roles such as
    ``pg_monitor``."""
    hba_name(name)
    statement = sql.SQL("CREATE ROLE {} {}").format(
        sql.Identifier(name), sql.SQL("LOGIN" if login else "NOLOGIN"))
    if password is not None:
        verifier = scram_verifier(conn, name, password)
        statement = sql.SQL("{} PASSWORD {}").format(statement, sql.Literal(verifier))
    conn.execute(statement)
    groups = list(member_of)
    if login and password is None:
        ensure_trust_role(conn)
        groups.append(TCP_TRUST_ROLE)
    for group in groups:
        grant = sql.SQL("GRANT {} TO {}")
        conn.execute(grant.format(sql.Identifier(group), sql.Identifier(name)))


def set_password(conn: Conn, name: str, password: str) -> None:
    """Change a role's password (sent as a SCRAM verifier)."""
    verifier = scram_verifier(conn, name, password)
    statement = sql.SQL("ALTER ROLE {} PASSWORD {}")
    conn.execute(statement.format(sql.Identifier(name), sql.Literal(verifier)))


def drop_role(conn: Conn, name: str) -> None:
    """``DROP ROLE IF EXISTS`` (the caller drops or reassigns what it owns first)."""
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def scram_verifier(conn: Conn, role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, computed by libpq on our side."""
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    return verifier.decode()


def ensure_trust_role(conn: Conn) -> None:
    """Create :data:`TCP_TRUST_ROLE` unless it exists."""
    exists = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (TCP_TRUST_ROLE,)
    ).fetchone()
    if exists is None:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(TCP_TRUST_ROLE)))
