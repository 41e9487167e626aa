"""What the index actions read from the catalog, and the leftover clean-up they share.

Every index action re-reads its table and index here instead of trusting the detection
(docs/design.md#every-action). These reads take no lock on the table or index (sizes come from
``relpages``, not ``pg_relation_size``; ``pg_get_indexdef`` is read only when planning a
drop), so a session holding ACCESS EXCLUSIVE makes the DDL itself time out, cleanly and with
a retry, instead of the re-check.

The clean-up of INVALID leftovers lives here too because three actions need it (a build
before and after it runs, a reindex after it fails, the drop of an INVALID index): a killed
client's CREATE INDEX CONCURRENTLY keeps running on the server, so any backend still building
the leftover is cancelled first (``pg_stat_progress_create_index``), then the leftover is
dropped CONCURRENTLY.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from startupmonkey import db
from startupmonkey.executor import indexes

log = logging.getLogger(__name__)

_TABLE = """
SELECT c.oid, c.relkind, c.relispartition AS is_partition, c.reltuples::float8 AS rows,
       c.relpages::int8 * pg_catalog.current_setting('block_size')::int8 AS bytes,
       (SELECT count(*) FROM pg_catalog.pg_index AS i WHERE i.indrelid = c.oid) AS indexes,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS columns
FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""

_KEYS = "(i.indkey::int2[])[0:i.indnkeyatts - 1]"
_FK_KEYS = "[0:pg_catalog.array_length(co.conkey, 1) - 1]"
_INDEX = f"""
SELECT i.indexrelid AS oid, n.nspname::text AS schema, ic.relname::text AS name,
       ic.relkind, i.indrelid AS table_oid, tn.nspname::text AS table_schema,
       t.relname::text AS table_name, i.indisvalid AS valid, i.indisready AS ready,
       i.indisunique AS is_unique, i.indisprimary AS is_primary,
       i.indisexclusion AS is_exclusion, i.indisreplident AS replica_identity,
       i.indexprs IS NOT NULL AS has_expressions, i.indpred IS NOT NULL AS has_predicate,
       am.amname::text AS method,
       ARRAY(SELECT a.attname::text
             FROM pg_catalog.unnest({_KEYS}) WITH ORDINALITY AS k(attnum, pos)
             JOIN pg_catalog.pg_attribute AS a
               ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             ORDER BY k.pos) AS columns,
       EXISTS (SELECT 1 FROM pg_catalog.pg_constraint AS co
               WHERE co.conindid = i.indexrelid) AS constraint_backed,
       EXISTS (SELECT 1 FROM pg_catalog.pg_constraint AS co
               WHERE co.contype = 'f' AND co.conrelid = i.indrelid
                 AND (i.indkey::int2[]){_FK_KEYS} @> co.conkey
                 AND (i.indkey::int2[]){_FK_KEYS} <@ co.conkey
                 AND NOT EXISTS (
                   SELECT 1 FROM pg_catalog.pg_index AS o
                   WHERE o.indrelid = i.indrelid AND o.indexrelid <> i.indexrelid
                     AND o.indisvalid AND (o.indkey::int2[]){_FK_KEYS} @> co.conkey
                     AND (o.indkey::int2[]){_FK_KEYS} <@ co.conkey)) AS sole_fk_index,
       ic.relpages::int8 * pg_catalog.current_setting('block_size')::int8 AS bytes,
       coalesce(s.idx_scan, 0) AS idx_scan
FROM pg_catalog.pg_index AS i
JOIN pg_catalog.pg_class AS ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = ic.relnamespace
JOIN pg_catalog.pg_class AS t ON t.oid = i.indrelid
JOIN pg_catalog.pg_namespace AS tn ON tn.oid = t.relnamespace
JOIN pg_catalog.pg_am AS am ON am.oid = ic.relam
LEFT JOIN pg_catalog.pg_stat_all_indexes AS s ON s.indexrelid = i.indexrelid
"""
_INDEX_BY_NAME = _INDEX + " WHERE n.nspname = %s AND ic.relname = %s"
_INDEXES_OF_TABLE = _INDEX + " WHERE i.indrelid = %s ORDER BY ic.relname"
_RELATION = """
SELECT c.relkind FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""
#: pg_get_indexdef locks the index: read it only when a plan needs it, never in a re-check.
_DEFINITION = """
SELECT pg_catalog.pg_get_indexdef(c.oid) FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('i', 'I')
"""
_BUILDERS = """
SELECT p.pid FROM pg_catalog.pg_stat_progress_create_index AS p
WHERE p.index_relid = %s AND p.pid <> pg_catalog.pg_backend_pid()
  AND p.datid = (SELECT d.oid FROM pg_catalog.pg_database AS d
                 WHERE d.datname = pg_catalog.current_database())
"""
_EXTENSION_SCHEMA = """
SELECT n.nspname::text FROM pg_catalog.pg_extension AS e
JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace WHERE e.extname = %s
"""
_POLL = 0.1
#: ``client_connection_check_interval`` while index DDL runs: if the executor dies, the
#: server notices within this long and stops the statement instead of finishing it for nobody.
CHECK_INTERVAL = "1s"


@dataclasses.dataclass(frozen=True)
class TableInfo:
    """A table as the catalog sees it now."""

    oid: int
    relkind: str
    is_partition: bool
    rows: float
    bytes: int
    indexes: int
    columns: list[str]


@dataclasses.dataclass(frozen=True)
class IndexInfo:
    """An index as the catalog sees it now (``columns``: key columns, expressions left out)."""

    oid: int
    schema: str
    name: str
    relkind: str
    table_oid: int
    table_schema: str
    table_name: str
    valid: bool
    ready: bool
    is_unique: bool
    is_primary: bool
    is_exclusion: bool
    replica_identity: bool
    has_expressions: bool
    has_predicate: bool
    method: str
    columns: list[str]
    constraint_backed: bool
    sole_fk_index: bool
    bytes: int
    idx_scan: int

    @property
    def qualified(self) -> str:
        """``schema.name`` for messages and records (not SQL)."""
        return f"{self.schema}.{self.name}"

    def same_definition(self, target: indexes.IndexTarget) -> bool:
        """A plain btree on exactly the target's table and columns."""
        return (self.table_schema, self.table_name) == (target.schema, target.table) and (
            self.method == "btree" and tuple(self.columns) == target.columns
            and not (self.has_expressions or self.has_predicate or self.is_unique))


async def _rows(conn: db.Conn, query: str,
                params: Sequence[Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query.encode(), params)
        return await cursor.fetchall()


async def scalar(conn: db.Conn, query: str,
                 params: Sequence[Any] = ()) -> Any:
    """The first column of the first row, or None."""
    cursor = await conn.execute(query.encode(), params)
    row = await cursor.fetchone()
    return None if row is None else row[0]


async def extension_schema(conn: db.Conn, name: str) -> str | None:
    """The schema an extension is installed in, or None when it is not installed here."""
    schema = await scalar(conn, _EXTENSION_SCHEMA, (name,))
    return None if schema is None else str(schema)


async def table_info(conn: db.Conn, schema: str,
                     table: str) -> TableInfo | None:
    """The table, or None when there is no relation of that name."""
    rows = await _rows(conn, _TABLE, (schema, table))
    return TableInfo(**rows[0]) if rows else None


async def relation_kind(conn: db.Conn, schema: str,
                        name: str) -> str | None:
    """``relkind`` of whatever relation has this name in the schema, or None."""
    kind = await scalar(conn, _RELATION, (schema, name))
    return None if kind is None else str(kind)


async def find_index(conn: db.Conn, schema: str,
                     name: str) -> IndexInfo | None:
    """The index ``schema.name``, or None."""
    rows = await _rows(conn, _INDEX_BY_NAME, (schema, name))
    return IndexInfo(**rows[0]) if rows else None


#: Whether an index is exactly what ``indexes.create_index_sql`` builds, beyond its key
#: columns: no INCLUDE columns, no storage parameters, the default tablespace, ascending keys
#: with default NULLS order, default operator classes and the columns' own collations.
_AS_PLANNED = """
SELECT i.indnkeyatts = i.indnatts AND c.reloptions IS NULL AND c.reltablespace = 0
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(i.indoption::int2[]) AS o(v) WHERE o.v <> 0)
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(i.indclass::oid[]) AS k(cls)
                   JOIN pg_catalog.pg_opclass AS oc ON oc.oid = k.cls WHERE NOT oc.opcdefault)
   AND NOT EXISTS (
     SELECT 1 FROM ROWS FROM (pg_catalog.unnest(i.indcollation::oid[]),
                              pg_catalog.unnest(i.indkey::int2[])) AS k(coll, attnum)
     JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE k.coll <> a.attcollation)
FROM pg_catalog.pg_index AS i JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
WHERE i.indexrelid = %s
"""


async def as_planned(conn: db.Conn, index_oid: int) -> bool:
    """Whether the index carries nothing our CREATE INDEX would not give it (see
    :data:`_AS_PLANNED`); key columns, method, uniqueness, expressions and predicate are
    :meth:`IndexInfo.same_definition`'s."""
    return bool(await scalar(conn, _AS_PLANNED, (index_oid,)))


async def table_indexes(conn: db.Conn, table_oid: int) -> list[IndexInfo]:
    """Every index of a table, valid or not."""
    return [IndexInfo(**row) for row in await _rows(conn, _INDEXES_OF_TABLE, (table_oid,))]


async def index_definition(conn: db.Conn, schema: str,
                           index: str) -> str | None:
    """``pg_get_indexdef`` of an index (what ``indexes.plan_drop_index`` turns into a rollback)."""
    definition = await scalar(conn, _DEFINITION, (schema, index))
    return None if definition is None else str(definition)


async def leftovers(conn: db.Conn, table_oid: int,
                    target: indexes.IndexTarget) -> list[IndexInfo]:
    """INVALID indexes of an earlier attempt at ``target``: its name, or ours (``sm_``) with
    the same definition. Other people's INVALID indexes are not touched here."""
    return [info for info in await table_indexes(conn, table_oid) if not info.valid and (
        info.name == target.name or (info.name.startswith(indexes.PREFIX)
                                     and info.same_definition(target)))]


@contextlib.asynccontextmanager
async def session_settings(conn: db.Conn,
                           **settings: str) -> AsyncIterator[None]:
    """Set session GUCs for the block and put the previous values back afterwards. One the
    server does not have is left out (PostgreSQL 13 has no client_connection_check_interval,
    docs/postgres-support.md)."""
    previous: dict[str, str] = {}
    for name, value in settings.items():
        current = await scalar(conn, "SELECT pg_catalog.current_setting(%s, true)", (name,))
        if current is None:
            continue
        previous[name] = str(current)
        await conn.execute("SELECT pg_catalog.set_config(%s, %s, false)", (name, value))
    try:
        yield
    finally:
        if not (conn.closed or conn.broken):
            try:
                for name, value in previous.items():
                    await conn.execute("SELECT pg_catalog.set_config(%s, %s, false)",
                                       (name, value))
            except psycopg.Error as exc:  # they stay on this connection until it closes
                log.warning("could not restore the session settings %s: %s",
                            ", ".join(previous), db.safe_error(exc))


async def builders(conn: db.Conn, index_oid: int) -> list[int]:
    """Backends still building this index (other than ours)."""
    cursor = await conn.execute(_BUILDERS.encode(), (index_oid,))
    return [int(row[0]) for row in await cursor.fetchall()]


class StuckBuilder(Exception):
    """A backend building the index survived cancel and terminate."""


class RefusedBuilder(StuckBuilder):
    """A backend building the index must not be signalled (``vet`` said why)."""


#: Why a builder (by pid) must not be signalled, or None: the caller's protection check.
Vet = Callable[[db.Conn, int], Awaitable[str | None]]

#: Signal a backend only while it still builds this index: a pid reused in between by
#: another backend is never signalled.
_SIGNAL_BUILDER = """
SELECT pg_catalog.{}(p.pid) FROM pg_catalog.pg_stat_progress_create_index AS p
WHERE p.pid = %s AND p.index_relid = %s
  AND p.datid = (SELECT d.oid FROM pg_catalog.pg_database AS d
                 WHERE d.datname = pg_catalog.current_database())
"""


async def _signal_until_gone(conn: db.Conn, index_oid: int,
                             function: str, pids: list[int], wait: float,
                             vet: Vet | None = None) -> list[int]:
    for pid in pids:
        reason = None if vet is None else await vet(conn, pid)
        if reason is not None:
            raise RefusedBuilder(reason)
        await conn.execute(sql.SQL(_SIGNAL_BUILDER).format(sql.Identifier(function)),
                           (pid, index_oid))
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        left = await builders(conn, index_oid)
        if not left or asyncio.get_running_loop().time() >= deadline:
            return left
        await asyncio.sleep(_POLL)


async def cancel_builders(conn: db.Conn, index_oid: int,
                          wait: float = 10.0, *, vet: Vet | None = None) -> list[int]:
    """Cancel every backend still building the index; terminate what ignores the cancel.

    Returns the pids that were signalled. Raises :class:`StuckBuilder` if one survives both
    (the caller must not drop an index that is still being built), and
    :class:`RefusedBuilder` when ``vet`` refuses a builder right before it would be
    signalled (cancel or terminate), with ``vet``'s reason.
    """
    pids = await builders(conn, index_oid)
    if not pids:
        return []
    left = await _signal_until_gone(conn, index_oid, "pg_cancel_backend", pids, wait, vet)
    if left:
        left = await _signal_until_gone(conn, index_oid, "pg_terminate_backend", left, wait,
                                        vet)
    if left:
        raise StuckBuilder(f"backend(s) {left} still build index {index_oid} after cancel "
                           "and terminate")
    return pids


@dataclasses.dataclass
class Cleanup:
    """What a leftover clean-up did: ``dropped`` (schema.name), ``cancelled`` builder pids,
    ``executed_sql``, and ``error`` (why a leftover is still there) or None; ``refused``
    when that is because a builder must not be signalled (the vet's reason)."""

    dropped: list[str] = dataclasses.field(default_factory=list)
    cancelled: list[int] = dataclasses.field(default_factory=list)
    executed_sql: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    refused: str | None = None


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


async def drop_leftovers(conn: db.Conn, found: Sequence[IndexInfo], *,
                         lock_wait: float | None = None, builder_wait: float = 10.0,
                         vet: Vet | None = None) -> Cleanup:
    """Cancel the builders of each INVALID leftover, then DROP INDEX CONCURRENTLY it.

    ``lock_wait`` overrides ``lock_timeout`` for the drops (DROP INDEX CONCURRENTLY waits for
    every transaction holding any lock on the table, but never queues ahead of them, so
    waiting longer blocks no application query). ``vet``: see :func:`cancel_builders`.
    Errors end the clean-up and are reported in ``error``; nothing is raised for database
    errors or a refused builder.
    """
    done = Cleanup()
    for info in found:
        try:
            done.cancelled += await cancel_builders(conn, info.oid, builder_wait, vet=vet)
            statement = indexes.plan_drop_invalid_index(info.schema, info.name).sql
            settings = {"client_connection_check_interval": CHECK_INTERVAL}
            if lock_wait is not None:
                settings["lock_timeout"] = _ms(lock_wait)
            async with session_settings(conn, **settings):
                await conn.execute(statement.encode())
        except RefusedBuilder as exc:
            done.refused = str(exc)
            done.error = f"INVALID index {info.qualified} is still there: {exc}"
            return done
        except (psycopg.Error, StuckBuilder) as exc:
            done.error = f"INVALID index {info.qualified} is still there: {db.safe_error(exc)}"
            return done
        done.executed_sql.append(statement)
        done.dropped.append(info.qualified)
    return done
