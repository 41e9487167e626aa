"""Guards of acting in several databases, against real PostgreSQL (review findings 1 and 3).

A listed custom template (``datistemplate`` true, connections allowed) is neither acted in
by the executor (what is changed there would be copied into every database created from it)
nor watched by the collector; and an index build in a database cloned from another (same
index OID) is never signalled, nor its lock holders named, from the database it was cloned
from: ``pg_stat_progress_create_index`` and ``pg_locks`` list every database's backends.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from startupmonkey.executor import index_build, index_catalog
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models.enums import RemediationState
from tests.integration import test_collector_cli
from tests.integration import test_collector_ingest_server as ingest
from tests.integration.test_executor_databases import (
    _analyzes,
    _journal,
    _other_database,
)
from tests.support import executor_helpers as helpers
from tests.support.eventually import eventually, wait_until

pytestmark = pytest.mark.integration

monitor_login = test_collector_cli.monitor_role


@contextlib.contextmanager
def _template(pg_db: postgres.PostgresDatabase, database: postgres.PostgresDatabase
              ) -> Iterator[None]:
    """``database`` marked a template (connections still allowed) for the block."""
    def mark(value: bool) -> None:
        with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE {}").format(
                sql.Identifier(database.dbname), sql.Literal(value)))
    mark(True)
    try:
        yield
    finally:
        mark(False)  # or it cannot be dropped


async def test_a_listed_template_is_not_acted_in(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    with _other_database(pg_db.cluster, "T") as template:
        helpers.stale_tables(template.conninfo, "orders")
        before = _analyzes(template.conninfo)
        with _template(pg_db, template):
            cfg = helpers.config(pg_db, nats_server.url, tmp_path, databases=[template.dbname])
            store = _journal(cfg)
            async with helpers.running_executor(cfg, store):
                await helpers.publish(nats_server.url, helpers.table_detection(
                    "orders", database=template.dbname, key_database=template.dbname))

                async def ended() -> list[tuple[RemediationState, str]]:
                    return [(r.state, r.status.message) for r in await store.list()
                            if r.state.terminal]

                done = await eventually(ended, timeout=30)
                # The reachability check says why too.
                reports = await eventually(lambda: store.databases, timeout=20)
            assert _analyzes(template.conninfo) == before, "nothing ran in the template"
    assert len(done) == 1
    state, message = done[0]
    assert state is RemediationState.REJECTED, message
    assert "is a template: changes would be copied into every database created from it" \
        in message
    assert [(r["name"], r["reachable"]) for r in reports] == [(template.dbname, False)]
    assert "is a template" in reports[0]["lastError"]


async def test_the_collector_does_not_watch_a_listed_template(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        monitor_login: tuple[str, str, Path]) -> None:
    role, _password, password_file = monitor_login
    token = secrets.token_hex(3)
    with _other_database(pg_cluster, f"CT{token}") as template, \
            _other_database(pg_cluster, f"CK{token}") as kept, _template(pg_db, template):
        async with ingest.ingest_server() as recorder:
            config = ingest.collector_config(pg_db, recorder.address, user=role,
                                             password_file=password_file)
            assert config.collector is not None
            config = config.model_copy(update={"collector": config.collector.model_copy(
                update={"databases": [template.dbname, kept.dbname]})})
            async with ingest.running_collector(config) as (collector, obs):
                await eventually(lambda: len([
                    s for s in recorder.snapshots() if s.database.dbname == kept.dbname]) >= 3,
                    timeout=60)
                assert list(collector.sources) == [pg_db.dbname, kept.dbname]
                assert ingest.metric(obs, "startupmonkey_collector_databases",
                                     state="left_out") == 1
        names = {r.snapshot.database.dbname for r in recorder.received}
    assert template.dbname not in names, "a template is never read"
    assert names == {pg_db.dbname, kept.dbname}


def _cloned(cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase
            ) -> contextlib.AbstractContextManager[tuple[postgres.PostgresDatabase,
                                                         postgres.PostgresDatabase]]:
    @contextlib.contextmanager
    def clone() -> Iterator[tuple[postgres.PostgresDatabase, postgres.PostgresDatabase]]:
        token = secrets.token_hex(3)
        source = cluster.create_database(f"sm_guard_a_{token}")
        copy_name = f"sm_guard_b_{token}"
        try:
            with psycopg.connect(source.conninfo, autocommit=True) as conn:
                conn.execute("CREATE TABLE orders (id int)")
                conn.execute("INSERT INTO orders SELECT generate_series(1, 1000)")
                conn.execute("CREATE INDEX sm_orders_id ON orders (id)")
            with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(copy_name), sql.Identifier(source.dbname)))
            yield source, cluster.database(copy_name)
        finally:
            with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(copy_name)))
            cluster.drop_database(source.dbname)
    return clone()


def _oid(conninfo: str, relation: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT %s::regclass::oid", (relation,)).fetchone()
    assert row is not None
    return int(row[0])


def _building(conninfo: str, database: str) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_catalog.pg_stat_progress_create_index "
                            "WHERE datname = %s", (database,)).fetchone() == (1,)


@pytest.mark.parametrize("build", [
    "REINDEX INDEX CONCURRENTLY sm_orders_id",
    "CREATE INDEX CONCURRENTLY sm_orders_id_2 ON orders (id)"])
async def test_a_build_in_a_cloned_database_is_not_signalled_from_its_source(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        build: str) -> None:
    with _cloned(pg_cluster, pg_db) as (source, clone):
        index_oid = _oid(source.conninfo, "sm_orders_id")
        table_oid = _oid(source.conninfo, "orders")
        assert _oid(clone.conninfo, "sm_orders_id") == index_oid, "a clone shares OIDs"
        # In the clone a writer's open transaction holds the build in its wait phase.
        writer = psycopg.connect(clone.conninfo)
        errors: list[BaseException] = []

        def run_build() -> None:
            try:
                with psycopg.connect(clone.conninfo, autocommit=True) as conn:
                    conn.execute(build.encode())
            except BaseException as exc:
                errors.append(exc)

        builder = threading.Thread(target=run_build)
        try:
            writer.execute("INSERT INTO orders VALUES (0)")
            builder.start()
            wait_until(lambda: _building(pg_db.conninfo, clone.dbname), timeout=20)
            if build.startswith("CREATE"):
                index_oid = _oid(clone.conninfo, "sm_orders_id_2")
                assert index_oid not in {_oid(source.conninfo, "sm_orders_id"), table_oid}
            conn = await psycopg.AsyncConnection.connect(source.conninfo, autocommit=True)
            try:
                assert await index_catalog.builders(conn, index_oid) == []
                assert await index_catalog.cancel_builders(conn, index_oid, wait=1) == []
                assert await index_build.lock_holders(conn, table_oid) == \
                    "no session holds a lock on the table any more"
            finally:
                await conn.close()
            assert _building(pg_db.conninfo, clone.dbname), "the clone's build goes on"
        finally:
            writer.rollback()
            writer.close()
            builder.join(30)
    assert errors == [], "the build in the clone was not cancelled"
