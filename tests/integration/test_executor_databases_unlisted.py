"""Records of another database the executor no longer acts in, or cannot enter for a while.

A database taken off ``executor.databases``: a verification or a requested rollback there runs
no DDL and ends Failed naming what stays in place; an interrupted index build sent back to
Approved ends saying that its INVALID leftover stays (never "nothing ran"). A database closed
for a while (``ALLOW_CONNECTIONS false``, maintenance): a verification and a rollback wait,
saying why, and run once it lets the executor in again. Real PostgreSQL (one cluster, several
databases), a bare engine ticked by the test.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from startupmonkey.executor import engine as executor_engine
from startupmonkey.executor import journal, records
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models.enums import RemediationState
from tests.integration.test_executor_databases import _journal, _other_database, _record
from tests.support import executor_helpers as helpers
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration


def _index_record(name: str, database: str, state: RemediationState,
                  rollback: str | None = None) -> records.Record:
    """``_record`` of the databases test (a create_index of ``public.orders (id)`` in
    ``database``), its target naming the index its SQL builds: ``<name>_idx``."""
    record = _record(name, database, state, rollback)
    target = record.spec.target.model_copy(update={"index": f"{name}_idx"})
    record.spec = record.spec.model_copy(update={"target": target})
    return record


def _orders(conninfo: str, *indexes: str) -> None:
    """``public.orders (id)`` in the database of ``conninfo``, with valid ``indexes`` on it."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int)")
        for index in indexes:
            conn.execute(sql.SQL("CREATE INDEX {} ON public.orders (id)").format(
                sql.Identifier(index)))


async def _judged_and_kept(store: journal.JournalStore, database: str) -> None:
    """Store ``judged`` (Verifying its ``judged_idx``) and ``kept`` (Succeeded, ``kept_idx``
    kept, with its rollback SQL) in ``database``."""
    assert await store.create(_index_record("judged", database, RemediationState.VERIFYING))
    assert await store.create(_index_record(
        "kept", database, RemediationState.SUCCEEDED,
        rollback='DROP INDEX CONCURRENTLY IF EXISTS "public"."kept_idx"'))


def _indexes(conninfo: str) -> dict[str, bool]:
    """Index name -> valid, of ``public.orders`` in the database of ``conninfo``."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute("SELECT c.relname, i.indisvalid FROM pg_catalog.pg_index i "
                            "JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
                            "WHERE i.indrelid = 'public.orders'::regclass").fetchall()
    return {str(name): bool(valid) for name, valid in rows}


async def _tick_until_ended(engine: executor_engine.Engine, store: journal.JournalStore,
                            *names: str) -> dict[str, tuple[str, str]]:
    """Tick ``engine`` until every record of ``names`` has ended: name -> (state, message)."""

    async def ended() -> dict[str, tuple[str, str]] | None:
        await engine.tick()
        await engine.settle()
        found = {r.name: (r.state.value, r.status.message) for r in await store.list()
                 if r.name in names}
        done = all(not r.active for r in await store.list() if r.name in names)
        return found if done and len(found) == len(names) else None

    return await eventually(ended, timeout=30)


async def test_a_verification_and_a_rollback_in_a_database_no_longer_listed_change_nothing(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    with _other_database(pg_db.cluster, "U") as other:
        _orders(other.conninfo, "judged_idx", "kept_idx")
        cfg = helpers.config(pg_db, nats_server.url, tmp_path)  # `other` no longer listed
        store = _journal(cfg)
        await _judged_and_kept(store, other.dbname)
        await store.request_rollback("kept", "tests", "undo")
        engine = helpers.engine(cfg, store)
        try:
            found = await _tick_until_ended(engine, store, "judged", "kept")
        finally:
            await engine.close()
        assert found["judged"] == ("Failed", (
            f"verification stopped: the executor no longer acts in database {other.dbname!r} "
            '(executor.databases); index "public"."judged_idx" left in place, judge it '
            "yourself or list the database again"))
        state, message = found["kept"]
        assert state == "Failed"
        assert message.startswith("not rolled back: the executor no longer acts in database "
                                  f"{other.dbname!r}"), message
        assert 'index "public"."kept_idx" left in place' in message
        assert _indexes(other.conninfo) == {"judged_idx": True, "kept_idx": True}


async def test_an_interrupted_build_in_a_database_no_longer_listed_names_its_leftover(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """Orphaned Running -> Approved ("an INVALID leftover is dropped first"), then refused
    before the retry that would drop it: the leftover stays, and the message says so."""
    with _other_database(pg_db.cluster, "O") as other:
        with psycopg.connect(other.conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id int)")
            conn.execute("INSERT INTO orders VALUES (1), (1)")
            with pytest.raises(psycopg.errors.UniqueViolation):  # leaves an INVALID index
                conn.execute('CREATE UNIQUE INDEX CONCURRENTLY "orphan_idx" '
                             "ON public.orders (id)")
        cfg = helpers.config(pg_db, nats_server.url, tmp_path)  # `other` no longer listed
        store = _journal(cfg)
        record = _index_record("orphan", other.dbname, RemediationState.APPROVED)
        record.status.executor = "test-executor"
        record.move(RemediationState.RUNNING, "running")
        assert await store.create(record)
        engine = helpers.engine(cfg, store, identity="test-executor")
        try:
            found = await _tick_until_ended(engine, store, "orphan")
        finally:
            await engine.close()
        state, message = found["orphan"]
        assert state == "Failed"
        assert "nothing ran" not in message
        assert f"no longer acts in database {other.dbname!r}" in message
        assert '1 earlier attempt(s) ran' in message
        assert 'INVALID index "public"."orphan_idx"' in message and "not dropped" in message
        current = await store.get("orphan")
        assert current is not None
        assert any("retrying now" in step.message for step in current.status.history)
        assert _indexes(other.conninfo) == {"orphan_idx": False}


def _allow_connections(pg_db: postgres.PostgresDatabase, database: str, allow: bool) -> None:
    with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(database), sql.SQL("true" if allow else "false")))


async def test_a_database_closed_for_a_while_makes_a_verification_and_a_rollback_wait(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """datallowconn false (maintenance; it holds for superusers too, unlike CONNECT): the
    Verifying record and the requested rollback stay, saying why; once the database opens
    again both run (the rollback drops its index, the verification is judged)."""
    with _other_database(pg_db.cluster, "C") as other:
        _orders(other.conninfo, "judged_idx", "kept_idx")
        cfg = helpers.config(pg_db, nats_server.url, tmp_path, databases=[other.dbname])
        store = _journal(cfg)
        await _judged_and_kept(store, other.dbname)
        engine = helpers.engine(cfg, store)
        _allow_connections(pg_db, other.dbname, False)
        try:
            await store.request_rollback("kept", "tests", "undo")

            async def waiting() -> dict[str, tuple[str, str]] | None:
                await engine.tick()
                await engine.settle()
                found = {r.name: (r.state.value, r.status.message) for r in await store.list()}
                return found if found["judged"][1].startswith("verification waiting") and \
                    found["kept"][1].startswith("rollback waiting") else None

            found = await eventually(waiting, timeout=30)
            assert found["judged"][0] == "Verifying" and found["kept"][0] == "Succeeded"
            for _, message in found.values():
                assert "does not allow connections" in message, message
            # Still waiting a few ticks later: nothing ended it meanwhile.
            for _ in range(3):
                await engine.tick()
                await engine.settle()
            assert {r.name: r.state.value for r in await store.list()} == {
                "judged": "Verifying", "kept": "Succeeded"}
        finally:
            _allow_connections(pg_db, other.dbname, True)
        try:
            found = await _tick_until_ended(engine, store, "judged", "kept")
        finally:
            await engine.close()
        assert found["kept"][0] == "RolledBack", found
        # Judged by the verification itself (this record was stored without a window).
        assert found["judged"] == ("Failed", "no verification window was started"), found
        assert _indexes(other.conninfo) == {"judged_idx": True}
        assert engine.context.refusal(other.dbname) is None
