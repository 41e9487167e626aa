"""An executor acting in several databases of one server (issue 19, item 1, layer 3).

A detection names its database (``database``) and, for any database but the executor's home
one, carries ``db=<name>/`` in its key. The executor acts through a connection to that
database, with its own login; it refuses (counts, logs, drops) a detection of a database it was
not told to act in, or whose key and database disagree. Real nats-server, real PostgreSQL
(one cluster, several databases), the real executor.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import psycopg
import pytest

from startupmonkey import auditlog
from startupmonkey.executor import journal
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import messages
from startupmonkey.models.enums import RemediationState
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


async def _publish(url: str, *detections: messages.Detection) -> None:
    client = await nats.connect(url)
    try:
        for detection in detections:
            await client.publish(detection.subject, detection.encode())
        await client.flush()
    finally:
        await client.close()


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
            await _publish(nats_server.url, there)

            async def done(count: int) -> bool:
                return list((await helpers.states(store)).values()) == ["Succeeded"] * count

            await eventually(lambda: done(1), timeout=30)
            await eventually(lambda: _analyzes(other.conninfo) == 1, timeout=10)
            assert _analyzes(pg_db.conninfo) == 0, "the home database's orders were analyzed"

            await _publish(nats_server.url, helpers.table_detection("orders"))
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
            await _publish(nats_server.url, *refused, helpers.table_detection("sentinel"))

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
                await _publish(nats_server.url, detection)

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
        helpers.stale_tables(other.conninfo, "orders")
        store = _journal(cfg)
        async with helpers.running_executor(cfg, store) as executor:
            await _publish(nats_server.url, helpers.table_detection(
                "orders", database=other.dbname, key_database=other.dbname))

            async def pending() -> list[str]:
                return [r.name for r in await store.list()
                        if r.state is RemediationState.PENDING_APPROVAL]

            (name,) = await eventually(pending, timeout=30)
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
