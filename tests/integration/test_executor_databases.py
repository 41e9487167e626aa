"""An executor acting in several databases of one server (issue 19, item 1, layer 3).

A detection names its database (``database``) and, for any database but the executor's home
one, carries ``db=<name>/`` in its key. The executor acts through a connection to that
database, with its own login; it refuses (counts, logs, drops) a detection of a database it was
not told to act in, or whose key and database disagree. Real nats-server, real PostgreSQL
(one cluster, several databases), the real executor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from psycopg import sql

from startupmonkey import auditlog
from startupmonkey.executor import context, journal, records
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import messages, remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass
from startupmonkey.v1 import executor_pb2, executor_pb2_grpc
from tests.support import executor_helpers as helpers
from tests.support import workloads
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def _other_database(cluster: postgres.PostgresCluster, label: str
                    ) -> Iterator[postgres.PostgresDatabase]:
    """A database of the shared cluster besides the test's own, with a name SQL must quote
    (upper case, a space), dropped afterwards."""
    database = cluster.create_database(f"Shop {label} {uuid.uuid4().hex[:8]}")
    try:
        yield database
    finally:
        cluster.drop_database(database.dbname)


def _analyzes(conninfo: str, table: str = "orders") -> int:
    """``pg_stat_user_tables.analyze_count`` of ``table`` in the database of ``conninfo``."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT analyze_count FROM pg_catalog.pg_stat_user_tables "
                           "WHERE relname = %s", (table,)).fetchone()
    assert row is not None
    return int(row[0])


@contextlib.asynccontextmanager
async def _pending_in(other: postgres.PostgresDatabase, cfg: helpers.settings.ComponentConfig,
                      store: journal.JournalStore, url: str
                      ) -> AsyncIterator[tuple[Any, str]]:
    """A running executor (``cfg`` in mode approval) given a stale_statistics detection of
    ``orders`` in ``other``: the executor, and the name of the PendingApproval record."""
    helpers.stale_tables(other.conninfo, "orders")
    async with helpers.running_executor(cfg, store) as executor:
        await helpers.publish(url, helpers.table_detection(
            "orders", database=other.dbname, key_database=other.dbname))

        async def pending() -> list[str]:
            return [r.name for r in await store.list()
                    if r.state is RemediationState.PENDING_APPROVAL]

        (name,) = await eventually(pending, timeout=30)
        yield executor, name


def _journal(cfg: helpers.settings.ComponentConfig) -> journal.JournalStore:
    assert cfg.executor is not None and cfg.executor.audit_log is not None
    return journal.JournalStore(cfg.executor.audit_log, helpers.NAMESPACE, helpers.MONITOR)


async def test_a_detection_of_another_database_analyzes_there_and_a_home_one_at_home(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    with _other_database(pg_db.cluster, "B") as other:
        cfg = helpers.config(pg_db, nats_server.url, tmp_path, databases=[other.dbname])
        helpers.stale_tables(pg_db.conninfo, "orders")
        helpers.stale_tables(other.conninfo, "orders")
        store = _journal(cfg)
        there = helpers.table_detection("orders", database=other.dbname,
                                        key_database=other.dbname)
        assert f'/db="{other.dbname}"/public.orders' in there.key
        async with helpers.running_executor(cfg, store) as executor:
            await helpers.publish(nats_server.url, there)

            async def done(count: int) -> bool:
                return list((await helpers.states(store)).values()) == ["Succeeded"] * count

            await eventually(lambda: done(1), timeout=30)
            await eventually(lambda: _analyzes(other.conninfo) == 1, timeout=10)
            assert _analyzes(pg_db.conninfo) == 0, "the home database's orders were analyzed"

            await helpers.publish(nats_server.url, helpers.table_detection("orders"))
            await eventually(lambda: done(2), timeout=30)
            await eventually(lambda: _analyzes(pg_db.conninfo) == 1, timeout=10)
            assert _analyzes(other.conninfo) == 1
            recorded = executor.obs.registry.get_sample_value(
                "startupmonkey_executor_detections_total", {"outcome": "recorded"})
        assert recorded == 2
        by_key = {r.spec.detection_key: r for r in await store.list()}
        assert by_key[there.key].spec.database == other.dbname
        (home,) = [r for key, r in by_key.items() if key != there.key]
        assert home.spec.database is None, "a home record names no database (as before)"
        assert "database" not in home.spec.dump()


async def test_detections_of_databases_it_does_not_act_in_are_dropped_and_counted(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with _other_database(pg_db.cluster, "B") as other, \
            _other_database(pg_db.cluster, "C") as unwatched:
        cfg = helpers.config(pg_db, nats_server.url, tmp_path, databases=[other.dbname])
        home = helpers.home_database()
        for database in (pg_db, other, unwatched):
            helpers.stale_tables(database.conninfo, "orders")
        helpers.stale_tables(pg_db.conninfo, "sentinel")
        store = _journal(cfg)
        refused = [
            # a database the executor was not told to act in, key and database agreeing
            helpers.table_detection("orders", database=unwatched.dbname,
                                    key_database=unwatched.dbname),
            # a watched database, but the key names another one
            helpers.table_detection("orders", database=other.dbname,
                                    key_database=unwatched.dbname),
            # a watched database with a home key (no db= part)
            helpers.table_detection("orders", database=other.dbname),
            # the home database's name with a key of another database (db=)
            helpers.table_detection("orders", database=home, key_database=other.dbname),
            helpers.table_detection("orders", database=home, key_database=home),
        ]
        async with helpers.running_executor(cfg, store) as executor:
            # published after the refused ones on one subscription: handled after them
            await helpers.publish(nats_server.url, *refused, helpers.table_detection("sentinel"))

            async def sentinel_done() -> bool:
                return list((await helpers.states(store)).values()) == ["Succeeded"]

            await eventually(sentinel_done, timeout=30)
            await eventually(lambda: _analyzes(pg_db.conninfo, "sentinel") == 1, timeout=10)
            counted = executor.obs.registry.get_sample_value(
                "startupmonkey_executor_detections_total", {"outcome": "other_database"})
        assert counted == len(refused)
        (record,) = await store.list()
        assert record.spec.target.table == "sentinel"
        assert record.state is RemediationState.SUCCEEDED
        for database in (pg_db, other, unwatched):
            assert _analyzes(database.conninfo) == 0, f"orders analyzed in {database.dbname}"
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert f"database {unwatched.dbname!r} is not one this executor acts in" in logged


async def test_an_idle_transaction_in_another_database_is_ended_through_its_connection(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    pg_db.cluster.create_role(role)
    with _other_database(pg_db.cluster, "B") as other:
        cfg = helpers.config(pg_db, nats_server.url, tmp_path, databases=[other.dbname])
        store = _journal(cfg)
        with workloads.idle_in_transaction(other.conninfo_for(role)) as held:
            await eventually(lambda: helpers.idle(other.conninfo, held.pid), timeout=10)
            detection = helpers.idle_detection(other.conninfo, held.pid,
                                               key_database=other.dbname)
            assert detection.database == other.dbname
            async with helpers.running_executor(cfg, store):
                await helpers.publish(nats_server.url, detection)

                async def terminated() -> bool:
                    return list((await helpers.states(store)).values()) == ["Succeeded"]

                await eventually(terminated, timeout=30)
                await eventually(lambda: not held.is_alive(), timeout=10)
        (record,) = await store.list()
        assert record.spec.database == other.dbname
        assert "pg_terminate_backend" in record.spec.sql


async def test_each_other_database_reports_whether_it_answers(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    missing = f"gone {uuid.uuid4().hex[:8]}"
    with _other_database(pg_db.cluster, "B") as other:
        cfg = helpers.config(pg_db, nats_server.url, tmp_path,
                             databases=[other.dbname, missing])
        store = _journal(cfg)
        async with helpers.running_executor(cfg, store) as executor:
            live = executor.store
            assert isinstance(live, journal.JournalStore)
            reports = await eventually(lambda: live.databases, timeout=20)
            # Checked in the background every REACH_INTERVAL, not at every tick (each check
            # opens a connection per database): three ticks later, the same check.
            assert live.database is not None
            ticks = [live.database["checkedAt"]]

            def ticked() -> bool:
                assert live.database is not None
                if live.database["checkedAt"] != ticks[-1]:
                    ticks.append(live.database["checkedAt"])
                return len(ticks) >= 3

            await eventually(ticked, timeout=20)
            assert live.databases == reports, "the other databases were checked at a tick"
            # The standalone DescribeMonitor carries them, with databasesReachable ("N/M",
            # the home database included).
            assert cfg.executor is not None
            async with grpc.aio.insecure_channel(cfg.executor.listen_address) as channel:
                described = await executor_pb2_grpc.ExecutorStub(channel).DescribeMonitor(
                    executor_pb2.DescribeMonitorRequest())
            status = json.loads(described.object_json)["status"]
    assert [e["name"] for e in status["databases"]] == [other.dbname, missing]
    assert status["databasesReachable"] == "2/3"
    assert [r["name"] for r in reports] == [other.dbname, missing]
    there, gone = reports
    assert there["reachable"] is True and "lastError" not in there and there["checkedAt"]
    assert gone["reachable"] is False and "does not exist" in gone["lastError"]
    assert live.database is not None and live.database["reachable"] is True
    entries = [e for e in auditlog.read(tmp_path / "audit.jsonl").entries
               if e.get("kind") == "Database"]
    assert entries and entries[-1]["databases"][0]["name"] == other.dbname
    reopened = _journal(cfg)
    assert reopened.databases is not None and len(reopened.databases) == 2


async def test_an_approval_for_a_database_no_longer_listed_is_rejected_and_nothing_runs(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    with _other_database(pg_db.cluster, "B") as other:
        cfg = helpers.config(pg_db, nats_server.url, tmp_path, databases=[other.dbname],
                             mode="approval")
        store = _journal(cfg)
        async with _pending_in(other, cfg, store, nats_server.url) as (executor, name):
            await executor.reconfigure(helpers.config(pg_db, nats_server.url, tmp_path,
                                                      mode="approval"))
            await store.approve(name, "tests")

            async def rejected() -> str | None:
                record = await store.get(name)
                assert record is not None
                return record.status.message if record.state is RemediationState.REJECTED \
                    else None

            message = await eventually(rejected, timeout=30)
        assert "no longer acts in database" in message and other.dbname in message
        assert _analyzes(other.conninfo) == 0


def _counted(executor: Any, outcome: str) -> float:
    return executor.obs.registry.get_sample_value(
        "startupmonkey_executor_detections_total", {"outcome": outcome}) or 0.0


def _with(cfg: helpers.settings.ComponentConfig, **executor: Any
          ) -> helpers.settings.ComponentConfig:
    """``cfg`` with fields of its executor block replaced."""
    assert cfg.executor is not None
    return cfg.model_copy(update={"executor": cfg.executor.model_copy(update=executor)})


async def test_a_name_libpq_or_the_server_would_cut_is_refused_and_so_is_landing_elsewhere(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``databases: all`` covers() accepts any name: a NUL (libpq stops there) or a name
    over 63 bytes (the server cuts it) would reach another database than the one admitted.
    Routing refuses both (``bad_database``); and should a name get through anyway, the new
    connection's current_database() is compared with the name asked for."""
    # 63 bytes (33 characters): the longest name; asked for with one byte more (still under
    # the message's 63 characters), the server would cut it back to this one.
    name = f"Shop L {uuid.uuid4().hex[:8]} " + "é" * 23 + "x"
    assert len(name.encode()) == 63
    with _other_database(pg_db.cluster, "L") as plain:
        database = pg_db.cluster.create_database(name)
        try:
            cfg = _with(helpers.config(pg_db, nats_server.url, tmp_path), databases="all")
            helpers.stale_tables(database.conninfo, "orders")
            helpers.stale_tables(plain.conninfo, "orders")
            store = _journal(cfg)
            hostile = [helpers.table_detection("orders", database=f"{plain.dbname}\0x",
                                               key_database=f"{plain.dbname}\0x"),
                       helpers.table_detection("orders", database=name + "y",
                                               key_database=name + "y")]
            async with helpers.running_executor(cfg, store) as executor:
                await helpers.publish(nats_server.url, *hostile)
                await eventually(lambda: _counted(executor, "bad_database") == 2, timeout=30)
                assert executor.engine is not None
                ctx = executor.engine.context
                with pytest.raises(context.DatabaseRefused, match="NUL"):
                    await ctx.connect(f"{plain.dbname}\0x")
                # Past the name check (as a bug would let it), the server cuts the name to
                # another database's: the connection is refused, not used.
                monkeypatch.setattr(context.settings, "database_name_problem",
                                    lambda _: None)
                with pytest.raises(context.DatabaseRefused, match="connected to database"):
                    await ctx.connect(name + "y")
                assert ctx.refusal(name + "y") is not None
            assert _analyzes(database.conninfo) == 0 and _analyzes(plain.conninfo) == 0
            assert all(r.spec.database is None for r in await store.list())
        finally:
            pg_db.cluster.drop_database(name)


def _record(name: str, database: str, state: RemediationState,
            rollback: str | None = None) -> records.Record:
    """A record of ``database`` stored directly, as an earlier run would have left it."""
    key = messages.detection_key(helpers.NAMESPACE, helpers.MONITOR,
                                 DetectorId.MISSING_INDEX, f"public.{name}", database)
    sql = f'CREATE INDEX CONCURRENTLY "{name}_idx" ON public.orders (id)'
    spec = remediation.RemediationSpec(
        monitor=helpers.MONITOR, detection_key=key, detection_id=name,
        detector=DetectorId.MISSING_INDEX, action=ActionId.CREATE_INDEX,
        risk_class=RiskClass.DDL, database=database, sql=sql, rollback_sql=rollback,
        sql_hash=remediation.sql_hash(sql, rollback),
        target=remediation.Target(schema="public", table="orders", columns=["id"]))
    record = records.Record(name=name, namespace=helpers.NAMESPACE, spec=spec,
                            status=remediation.RemediationStatus(), created=records.utcnow())
    record.move(state, "left by an earlier run")
    return record


async def test_records_of_a_dropped_database_end_and_its_detections_are_refused_at_once(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A database the executor acts in is dropped: an approved record ends Rejected, a
    verifying one Failed, a requested rollback Failed, each saying the database does not
    exist (nothing waits for ever, no traceback at every tick); the refusal is remembered, so
    the next detection of it is dropped without a new connection."""
    caplog.set_level(logging.INFO)
    with _other_database(pg_db.cluster, "D") as other:
        cfg = helpers.config(pg_db, nats_server.url, tmp_path, databases=[other.dbname],
                             mode="approval")
        store = _journal(cfg)
        async with _pending_in(other, cfg, store, nats_server.url) as (executor, name):
            pg_db.cluster.drop_database(other.dbname)
            # Left by an earlier run: one verifying its index, one kept with a rollback asked.
            verifying = _record("verifying", other.dbname, RemediationState.VERIFYING)
            rolled = _record("rolled", other.dbname, RemediationState.SUCCEEDED,
                             rollback='DROP INDEX CONCURRENTLY IF EXISTS "public"."rolled_idx"')
            for kept in (verifying, rolled):
                assert await store.create(kept)
            await store.approve(name, "tests")
            await store.request_rollback("rolled", "tests", "undo")

            async def ended() -> dict[str, tuple[str, str]] | None:
                found = {r.name: (r.state.value, r.status.message) for r in await store.list()}
                done = all(state in ("Rejected", "Failed") for state, _ in found.values())
                return found if done else None

            found = await eventually(ended, timeout=30)
            assert found[name][0] == "Rejected"
            assert found["verifying"][0] == "Failed" and found["rolled"][0] == "Failed"
            for _, message in found.values():
                assert f"database {other.dbname!r} does not exist" in message, message
            assert executor.engine is not None
            assert executor.engine.context.refusal(other.dbname) is not None
            await helpers.publish(nats_server.url, helpers.table_detection(
                "customers", database=other.dbname, key_database=other.dbname))
            await eventually(lambda: _counted(executor, "database_refused") == 1, timeout=30)
        assert len(await store.list()) == 3, "the refused detection recorded nothing"
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_a_read_only_database_waits_approved_and_runs_once_it_accepts_writes(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """A database that refuses writes for now (default_transaction_read_only, as during a
    failover or on a standby) is a wait, not a verdict: the record stays Approved, "waiting",
    and runs once the database accepts writes again."""
    with _other_database(pg_db.cluster, "R") as other:
        cfg = helpers.config(pg_db, nats_server.url, tmp_path, databases=[other.dbname])
        helpers.stale_tables(other.conninfo, "orders")
        with psycopg.connect(pg_db.cluster.conninfo(), autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on")
                          .format(sql.Identifier(other.dbname)))
        store = _journal(cfg)
        async with helpers.running_executor(cfg, store):
            await helpers.publish(nats_server.url, helpers.table_detection(
                "orders", database=other.dbname, key_database=other.dbname))

            async def waiting() -> str | None:
                found = await store.list()
                if found and found[0].state is RemediationState.APPROVED and \
                        found[0].status.message.startswith("waiting:"):
                    return found[0].status.message
                return None

            message = await eventually(waiting, timeout=30)
            assert "read_only" in message
            with psycopg.connect(pg_db.cluster.conninfo(), autocommit=True) as admin:
                admin.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only")
                              .format(sql.Identifier(other.dbname)))

            async def done() -> bool:
                return list((await helpers.states(store)).values()) == ["Succeeded"]

            await eventually(done, timeout=30)
        assert _analyzes(other.conninfo) == 1


async def test_a_reload_that_moves_the_server_moves_every_connection(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer, tmp_path: Path,
        pg_private_cluster_factory: Any) -> None:
    """A hot reload with another host/port: the home connections, the lease and the other
    databases' connections all go to the new server (none stays on the old one)."""
    moved = pg_private_cluster_factory(install_extensions=False)
    with _other_database(pg_db.cluster, "M") as other:
        new_home = moved.create_database(pg_db.dbname)
        moved.create_database(other.dbname)
        cfg = helpers.config(pg_db, nats_server.url, tmp_path, databases=[other.dbname])
        store = _journal(cfg)
        async with helpers.running_executor(cfg, store) as executor:
            assert executor.engine is not None
            await executor.reconfigure(helpers.config(new_home, nats_server.url, tmp_path,
                                                      databases=[other.dbname]))

            async def port(conn: Any) -> int:
                try:
                    cursor = await conn.execute("SELECT pg_catalog.current_setting('port')")
                    row = await cursor.fetchone()
                    return int(row[0])
                finally:
                    await conn.close()

            assert await port(await executor.connect_db()) == moved.port
            assert await port(await executor.engine.context.connect()) == moved.port
            assert await port(await executor.engine.context.connect(other.dbname)) == \
                moved.port
            lease = executor.lease
            assert lease is not None
            await eventually(lambda: lease.held, timeout=20)
            with psycopg.connect(moved.conninfo(), autocommit=True) as admin:
                row = admin.execute("SELECT count(*) FROM pg_catalog.pg_locks "
                                    "WHERE locktype = 'advisory'").fetchone()
            assert row is not None and row[0] >= 1, "the lease is held on the new server"


async def test_with_all_the_status_and_the_routing_agree_on_which_databases(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """With ``databases: all``, a database that does not allow connections is neither listed
    in status.databases nor acted in (a detection of it is other_database), as the collector
    leaves it out too; an excluded one neither; a connectable one both."""
    with _other_database(pg_db.cluster, "A") as shut, \
            _other_database(pg_db.cluster, "X") as excluded, \
            _other_database(pg_db.cluster, "O") as open_:
        with psycopg.connect(pg_db.cluster.conninfo(), autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false")
                          .format(sql.Identifier(shut.dbname)))
        cfg = _with(helpers.config(pg_db, nats_server.url, tmp_path), databases="all",
                    exclude_databases=[excluded.dbname])
        helpers.stale_tables(open_.conninfo, "orders")
        store = _journal(cfg)
        async with helpers.running_executor(cfg, store) as executor:
            live = executor.store
            assert isinstance(live, journal.JournalStore)
            reports = await eventually(lambda: live.databases, timeout=20)
            await helpers.publish(nats_server.url, *(
                helpers.table_detection("orders", database=d.dbname, key_database=d.dbname)
                for d in (shut, excluded, open_)))

            async def done() -> bool:
                return list((await helpers.states(store)).values()) == ["Succeeded"]

            await eventually(done, timeout=30)
            await eventually(lambda: _counted(executor, "other_database") == 2, timeout=10)
        listed = {r["name"] for r in reports}
        assert open_.dbname in listed
        assert shut.dbname not in listed and excluded.dbname not in listed
        (record,) = await store.list()
        assert record.spec.database == open_.dbname
        with psycopg.connect(pg_db.cluster.conninfo(), autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true")
                          .format(sql.Identifier(shut.dbname)))
