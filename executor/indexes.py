"""Index actions: the names, the SQL and the types every index layer shares.

Where it sits: the analyser proposes ``create_index`` (a table, its columns and the statements
the index would serve). The executor plans the SQL here, pre-checks it with HypoPG
(``index_precheck``), builds it CONCURRENTLY and cleans up INVALID leftovers (``index_build``),
keeps or reverts it from pg_stat_statements deltas (``index_verify``) and repairs INVALID,
unused or duplicate indexes (``index_repair``). ``docs/indexes.md`` has the safety model.

Names are deterministic (the same candidate always gets the same name, so a leftover of an
earlier attempt is recognised) and at most 63 bytes, so PostgreSQL never truncates them and a
rollback always names the index that was built (REFERENCE.md: the peer's rollback silently did
nothing once a generated name passed 63 bytes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence

from psycopg import sql

from startupmonkey.executor import outcome, plan
from startupmonkey.models.enums import ActionId

#: Every index this project builds starts with this; nothing else is ever ours.
PREFIX = "sm_"
#: NAMEDATALEN - 1: PostgreSQL truncates longer identifiers (with only a NOTICE).
NAME_MAX_BYTES = 63
HASH_CHARS = 8
#: INDEX_MAX_KEYS of a default build.
MAX_COLUMNS = 32
_NOT_WORD = re.compile(r"\W+")
_CREATE = re.compile(r"^CREATE (UNIQUE )?INDEX (?!CONCURRENTLY )")


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    return text.encode()[:max_bytes].decode(errors="ignore")


def _check_identifier(kind: str, value: str) -> str:
    if not value or "\x00" in value or len(value.encode()) > NAME_MAX_BYTES:
        raise ValueError(f"{kind} {value!r} is not a PostgreSQL identifier (1 to "
                         f"{NAME_MAX_BYTES} bytes, no NUL)")
    return value


def index_name(schema: str, table: str, columns: Sequence[str]) -> str:
    """``sm_<table>_<columns>_<hash8>``: deterministic, readable, at most 63 bytes.

    The hash covers schema, table and columns exactly (NUL-separated: no identifier contains
    NUL), so two candidates that read alike after lower-casing and truncation still differ.
    The readable part keeps letters and digits of any script, lower-cased, with ``_`` between
    words, and is cut on a character boundary.
    """
    digest = hashlib.sha256("\x00".join([schema, table, *columns]).encode()).hexdigest()
    readable = _NOT_WORD.sub("_", "_".join([table, *columns]).lower()).strip("_")
    room = NAME_MAX_BYTES - len(PREFIX) - 1 - HASH_CHARS
    readable = _truncate_utf8(readable, room).rstrip("_")
    return f"{PREFIX}{readable}_{digest[:HASH_CHARS]}" if readable else \
        f"{PREFIX}{digest[:HASH_CHARS]}"


@dataclasses.dataclass(frozen=True)
class IndexTarget:
    """One candidate index: a btree on ``columns`` of ``schema.table``, named ``name``.

    ``name`` defaults to :func:`index_name`; the engine rebuilds a target from the Remediation's
    ``spec.target`` (``schema``, ``table``, ``columns``, ``index``).
    """

    schema: str
    table: str
    columns: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        if not 1 <= len(self.columns) <= MAX_COLUMNS:
            raise ValueError(f"an index needs 1 to {MAX_COLUMNS} columns, "
                             f"got {len(self.columns)}")
        for kind, value in (("schema", self.schema), ("table", self.table),
                            *(("column", c) for c in self.columns)):
            _check_identifier(kind, value)
        if not self.name:
            object.__setattr__(self, "name", index_name(self.schema, self.table, self.columns))
        _check_identifier("index name", self.name)

    @property
    def label(self) -> str:
        """``schema.table (a, b)`` for messages (not SQL)."""
        return f"{self.schema}.{self.table} ({', '.join(self.columns)})"


def _index(schema: str, index: str) -> sql.Identifier:
    return sql.Identifier(_check_identifier("schema", schema), _check_identifier("index", index))


def _text(statement: sql.Composable) -> str:
    return statement.as_string(None)


def create_index_sql(target: IndexTarget, *, concurrently: bool = True) -> str:
    """``CREATE INDEX [CONCURRENTLY] name ON schema.table USING btree (columns)``."""
    return _text(sql.SQL("CREATE INDEX {how}{name} ON {table} USING btree ({columns})").format(
        how=sql.SQL("CONCURRENTLY " if concurrently else ""), name=sql.Identifier(target.name),
        table=sql.Identifier(target.schema, target.table),
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in target.columns)))


def plan_create_index(schema: str, table: str, columns: Sequence[str], *,
                      name: str | None = None) -> plan.Plan:
    """CREATE INDEX CONCURRENTLY; rollback ``DROP INDEX CONCURRENTLY IF EXISTS``."""
    target = IndexTarget(schema, table, tuple(columns), name or "")
    return plan_for(target)


def plan_for(target: IndexTarget) -> plan.Plan:
    """The create_index plan of a target (what :func:`plan_create_index` returns)."""
    rollback = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
        _index(target.schema, target.name))
    return plan.Plan(ActionId.CREATE_INDEX, create_index_sql(target), _text(rollback))


def plan_drop_invalid_index(schema: str, index: str) -> plan.Plan:
    """DROP INDEX CONCURRENTLY of an INVALID index; nothing to undo (it served no query)."""
    return plan.Plan(ActionId.DROP_INVALID_INDEX, _text(sql.SQL(
        "DROP INDEX CONCURRENTLY IF EXISTS {}").format(_index(schema, index))))


def plan_reindex(schema: str, index: str) -> plan.Plan:
    """REINDEX INDEX CONCURRENTLY: rebuilds an INVALID (or bloated) index in place."""
    return plan.Plan(ActionId.REINDEX, _text(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(
        _index(schema, index))))


def plan_drop_index(schema: str, index: str, definition: str | None = None) -> plan.Plan:
    """DROP INDEX CONCURRENTLY of an unused or duplicate index.

    ``definition`` (``pg_get_indexdef``, see ``index_catalog.index_definition``) becomes the
    rollback: the same index created CONCURRENTLY again.
    """
    rollback = concurrent_definition(definition) if definition else None
    return plan.Plan(ActionId.DROP_INDEX, _text(sql.SQL("DROP INDEX CONCURRENTLY {}").format(
        _index(schema, index))), rollback)


def concurrent_definition(definition: str) -> str:
    """``pg_get_indexdef`` output turned into its CREATE ... INDEX CONCURRENTLY twin."""
    if not _CREATE.match(definition):
        raise ValueError(f"not an index definition: {definition[:80]!r}")
    return _CREATE.sub(lambda m: f"CREATE {m.group(1) or ''}INDEX CONCURRENTLY ", definition,
                       count=1)


@dataclasses.dataclass
class IndexOutcome(outcome.Outcome):
    """An :class:`~startupmonkey.executor.outcome.Outcome` of an index action, with
    ``leftovers``: INVALID indexes found and dropped (or, when dropping failed, left for the
    next attempt), as ``schema.name``."""

    leftovers: list[str] = dataclasses.field(default_factory=list)

