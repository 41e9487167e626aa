"""Names of the databases of one server a monitor watches: what a name may be and how many.

Shared by the DatabaseMonitor model (``spec.database.databases``, the CRD and its CEL rules)
and the rendered component config (``startupmonkey.settings``), so a list judged valid in the
manifest is valid in every component's block.
"""

from __future__ import annotations

from typing import Final

MAX_DATABASES: Final = 32
"""Databases one collector watches at most, the home one included: each costs a connection
(a server's ``max_connections`` is 100 by default) and a share of every round."""

TEMPLATE_DATABASES: Final = frozenset({"template0", "template1"})
"""Databases never watched nor acted in, whatever the lists say."""

MAX_DATABASE_NAME_BYTES: Final = 63
"""A PostgreSQL identifier (NAMEDATALEN - 1 bytes, UTF-8)."""


def database_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a database, or None when it can (1 to 63 bytes of UTF-8,
    no NUL: what PostgreSQL accepts as a quoted identifier)."""
    if not isinstance(name, str):
        return f"{shown(name)} is not a string (quote it)"
    if not name:
        return "a database name cannot be empty"
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        return f"{shown(name)} is not valid UTF-8"
    if size > MAX_DATABASE_NAME_BYTES:
        return (f"{shown(name)} is {size} bytes long; a database name has at most "
                f"{MAX_DATABASE_NAME_BYTES}")
    if "\0" in name:
        return f"{shown(name)} contains a NUL character"
    return None


def shown(value: object, most: int = 40) -> str:
    """``repr(value)``, cut to about ``most`` characters, for an error message."""
    text = repr(value)
    return text if len(text) <= most else text[:most] + "..."


def database_names(value: object, field: str) -> list[str]:
    """``value`` as a list of valid, distinct database names (ValueError naming every
    problem otherwise)."""
    if not isinstance(value, list):
        raise ValueError(f"{field} is a list of database names")
    problems = [p for p in map(database_name_problem, value) if p is not None]
    seen: set[str] = set()
    for name in value:
        if isinstance(name, str):
            if name in seen:
                problems.append(f"{shown(name)} is listed twice")
            seen.add(name)
    if problems:
        raise ValueError("; ".join(dict.fromkeys(problems)))
    return value
