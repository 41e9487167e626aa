"""Identifier quoting round trip through PostgreSQL 15 (issue 24): for any name the server
accepts (at most 63 bytes, no NUL), a table, column and index created with
``psycopg.sql.Identifier`` are the very objects the executor's and the analyser's quoting
paths name: the plan's table identifier (``executor/plan.py``), the pre-check's regclass
text (``plan_safety._regclass_text``), the catalog look-ups (``index_catalog``), the index
SQL and name (``executor/indexes.py``) and the analyser's ``table_key``, which is unique."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st
from psycopg import sql

from startupmonkey.analyser import findings
from startupmonkey.executor import index_catalog, indexes, plan, plan_safety
from startupmonkey.localserv import postgres

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TRICKY = ['Order "Items"; DROP TABLE x', "a.b", "select", "user", "$1", " ", "Äpfel",
          "x" * 63, "é" * 31, '"', "public", "a b", "UPPER", "ørdér$", "🙂"]
NAMES = (st.sampled_from(TRICKY) | st.text(min_size=1, max_size=20)).filter(
    lambda n: "\x00" not in n and len(n.encode()) <= 63)


async def _regclass(conn: psycopg.AsyncConnection[Any], text: str) -> int | None:
    cursor = await conn.execute("SELECT pg_catalog.to_regclass(%s)::oid", (text,))
    row = await cursor.fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def _round_trip(conninfo: str, schema: str, table: str, column: str) -> None:
    conn = await psycopg.AsyncConnection.connect(conninfo)
    try:
        async with conn.transaction(force_rollback=True):
            try:
                async with conn.transaction():
                    await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        sql.Identifier(schema)))
                    await conn.execute(sql.SQL("CREATE TABLE {} ({} int)").format(
                        sql.Identifier(schema, table), sql.Identifier(column)))
            except psycopg.Error:
                reject()  # a name the server does not accept here (pg_*, a system schema)
            cursor = await conn.execute(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s", (schema, table))
            row = await cursor.fetchone()
            assert row is not None
            oid = int(row[0])
            # The plan's identifier (VACUUM/ANALYZE): it runs, and names this table.
            analyze = plan.analyze(schema, table).sql
            await conn.execute(analyze.encode())
            assert await _regclass(conn, analyze.removeprefix("ANALYZE ")) == oid
            # The pre-check's regclass text, qualified and through the search path.
            assert await _regclass(conn, plan_safety._regclass_text(schema, table)) == oid
            await conn.execute("SELECT pg_catalog.set_config('search_path', %s, true)",
                               (sql.Identifier(schema).as_string(conn),))
            assert await _regclass(conn, plan_safety._regclass_text(None, table)) == oid
            # The catalog look-ups.
            info = await index_catalog.table_info(conn, schema, table)
            assert info is not None and info.oid == oid and column in info.columns
            # The analyser's key, read as SQL, is this table.
            assert await _regclass(conn, findings.table_key(schema, table)) == oid
            # The index the executor would build: its SQL runs, its name is found on the table.
            target = indexes.IndexTarget(schema, table, (column,))
            await conn.execute(indexes.create_index_sql(target, concurrently=False).encode())
            found = await index_catalog.find_index(conn, schema, target.name)
            assert found is not None and found.columns == [column]
            assert await _regclass(conn, sql.Identifier(schema, target.name).as_string(conn)) \
                == found.oid
    finally:
        await conn.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(schema=NAMES, table=NAMES, column=NAMES)
def test_any_accepted_name_is_quoted_so_the_server_resolves_the_same_object(
        pg_db: postgres.PostgresDatabase, schema: str, table: str, column: str) -> None:
    asyncio.run(_round_trip(pg_db.conninfo, schema, table, column))


@settings(max_examples=500, deadline=None)
@given(first=st.tuples(NAMES, NAMES), second=st.tuples(NAMES, NAMES))
def test_table_keys_are_unique(first: tuple[str, str], second: tuple[str, str]) -> None:
    assume(first != second)
    assert findings.table_key(*first) != findings.table_key(*second)
