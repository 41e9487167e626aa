"""Someone else's index build in flight is never cancelled (issue 23.1), on a real PostgreSQL.

A migration's CREATE INDEX CONCURRENTLY (application ``migrate-tool``, an ordinary role) and
one of the executor's own (application ``startupmonkey-executor``) are kept waiting in the
phase "waiting for old snapshots" by a REPEATABLE READ transaction that holds an old
snapshot: both indexes stay INVALID with a live builder. The collector reports both builds
(as a pg_monitor-only role); the chain's invalid_index holds the migration's index back
(``test_chain_indexes.py``); a forged detection handed to the executor refuses to signal the
migration's builder, with the reason, while the executor's own build is still repaired.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from startupmonkey.executor import index_repair, indexes, journal
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import messages, monitor, remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.integration.test_collector_ingest_server import (
    collector_config,
    ingest_server,
    running_collector,
)
from tests.support import executor_helpers as helpers
from tests.support import workloads
from tests.support.eventually import eventually, wait_until

pytestmark = pytest.mark.integration

MIGRATION_APP = "migrate-tool"
OWN_APP = "startupmonkey-executor"
MIGRATION_INDEX = "orders_sku_idx"
OWN_INDEX = "items_sku_idx"
_PROGRESS = """
SELECT p.phase, p.pid, p.index_relid::regclass::text
FROM pg_stat_progress_create_index AS p WHERE p.index_relid = to_regclass(%s)
"""
_VALID = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)"


@dataclasses.dataclass
class Builds:
    """The two waiting builds and the roles behind them."""

    migration: workloads.BackgroundQuery
    own: workloads.BackgroundQuery
    app_user: str
    superuser: str


def _waiting(conninfo: str, index: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(_PROGRESS, (index,)).fetchone()
        assert row is not None, f"no build of {index} in progress yet"
        assert row[0] == "waiting for old snapshots", row
        assert conn.execute(_VALID, (index,)).fetchone() == (False,)
        return int(row[1])


@contextlib.contextmanager
def waiting_builds(pg_db: postgres.PostgresDatabase, app_conninfo: str) -> Iterator[Builds]:
    """Both builds waiting for the old snapshot until the block exits (then they finish)."""
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int, sku int)")
        conn.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 1000) g")
        app_user = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
    with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int, sku int)")
        conn.execute("INSERT INTO items SELECT g, g FROM generate_series(1, 1000) g")
        superuser = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
    old = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class"
    with contextlib.ExitStack() as stack:
        holder = stack.enter_context(workloads.idle_in_transaction(
            pg_db.conninfo, statement=old, application_name="smtest-old-snapshot"))
        migration = stack.enter_context(workloads.background_query(
            app_conninfo, f"CREATE INDEX CONCURRENTLY {MIGRATION_INDEX} ON orders (sku)",
            application_name=MIGRATION_APP))
        own = stack.enter_context(workloads.background_query(
            pg_db.conninfo, f"CREATE INDEX CONCURRENTLY {OWN_INDEX} ON items (sku)",
            application_name=OWN_APP))
        assert wait_until(lambda: _waiting(pg_db.conninfo, MIGRATION_INDEX),
                          timeout=30) == migration.pid
        assert wait_until(lambda: _waiting(pg_db.conninfo, OWN_INDEX), timeout=30) == own.pid
        yield Builds(migration, own, app_user, superuser)
        holder.connection.rollback()  # the old snapshot goes: the migration's build finishes
        assert migration.done.wait(30), "the migration's build should finish"


def _protecting(pg_db: postgres.PostgresDatabase, policy: dict[str, str] | None = None,
                **protect: Any) -> monitor.DatabaseMonitorSpec:
    cluster = pg_db.cluster
    return monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": cluster.host, "port": cluster.port, "dbname": pg_db.dbname,
                     "credentialsSecret": {"name": "unused"}},
        "mode": "auto", "policy": policy or {}, "protect": protect})


def _still_building(pg_db: postgres.PostgresDatabase, builds: Builds) -> None:
    assert _waiting(pg_db.conninfo, MIGRATION_INDEX) == builds.migration.pid
    assert not builds.migration.done.is_set()


# ---- the collector reports them


async def test_the_collector_reports_who_builds_which_index(
        pg_db: postgres.PostgresDatabase, pg_cluster: postgres.PostgresCluster,
        app_conninfo: str) -> None:
    monitor_role = f"mon_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_role(monitor_role, member_of=["pg_monitor"])
    with waiting_builds(pg_db, app_conninfo) as builds:
        async with (ingest_server() as server,
                    running_collector(collector_config(pg_db, server.address,
                                                       user=monitor_role))):
            def reported() -> pb.Snapshot:
                snap = server.latest()
                assert snap is not None and len(snap.index_builds) >= 2, snap
                return snap
            snap = await eventually(reported, timeout=30)
        with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
            oids = dict(conn.execute(
                "SELECT relname::text, oid::int8 FROM pg_class WHERE relname IN "
                "('orders', 'items', %s, %s)", (MIGRATION_INDEX, OWN_INDEX)).fetchall())
            starts = dict(conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid IN (%s, %s)",
                (builds.migration.pid, builds.own.pid)).fetchall())
    states = {s.section: s.state for s in snap.collector.sections}
    assert states[pb.SECTION_INDEX_BUILDS] == pb.SECTION_STATE_OK
    by_pid = {b.pid: b for b in snap.index_builds}
    migration, own = by_pid[builds.migration.pid], by_pid[builds.own.pid]
    assert (migration.relid, migration.index_relid) == (oids["orders"], oids[MIGRATION_INDEX])
    assert (own.relid, own.index_relid) == (oids["items"], oids[OWN_INDEX])
    for build, app, user in ((migration, MIGRATION_APP, builds.app_user),
                             (own, OWN_APP, builds.superuser)):
        assert build.command == "CREATE INDEX CONCURRENTLY"
        assert build.phase == "waiting for old snapshots"
        assert (build.application_name, build.usename) == (app, user)
        assert build.backend_start.ToDatetime(tzinfo=datetime.UTC) == starts[build.pid]


# ---- the executor never signals a protected builder


def _drop_detection(index: str, table: str) -> messages.Detection:
    now = datetime.datetime.now(datetime.UTC)
    key = messages.detection_key(helpers.NAMESPACE, helpers.MONITOR, DetectorId.INVALID_INDEX,
                                 f"public.{index}")
    return messages.Detection(
        id=messages.new_occurrence_id(key, now), key=key, namespace=helpers.NAMESPACE,
        monitor=helpers.MONITOR, database=helpers.home_database(),
        detector=DetectorId.INVALID_INDEX,
        proposed_action=ActionId.DROP_INVALID_INDEX, risk_class=RiskClass.DDL,
        target=remediation.Target(schema="public", table=table, index=index),
        summary=f"{index} is INVALID (an old detection)", first_seen=now, last_seen=now,
        published_at=now)


async def test_a_forged_detection_never_signals_a_protected_builder(
        pg_db: postgres.PostgresDatabase, app_conninfo: str,
        executor_conn: psycopg.AsyncConnection[Any]) -> None:
    step = indexes.plan_drop_invalid_index("public", MIGRATION_INDEX)
    with waiting_builds(pg_db, app_conninfo) as builds:
        refusals = {
            "application": (_protecting(pg_db, applications=[MIGRATION_APP]),
                            f"application {MIGRATION_APP!r} is protected"),
            "user": (_protecting(pg_db, users=[builds.app_user]),
                     f"user {builds.app_user!r} is protected"),
            "session mode": (_protecting(pg_db, policy={"session": "approval"}),
                             "the session class is in approval mode"),
            "no policy": (None, "no monitor policy was given"),
        }
        for what, (spec, reason) in refusals.items():
            dropped = await index_repair.drop_invalid_index(
                executor_conn, step, "public", MIGRATION_INDEX, spec=spec, builder_wait=2.0)
            print(f"\n{what}: {dropped.message}")
            assert dropped.state is RemediationState.REJECTED, (what, dropped.message)
            assert reason in dropped.message, (what, dropped.message)
            assert f"backend {builds.migration.pid}" in dropped.message
            assert MIGRATION_APP in dropped.message
            _still_building(pg_db, builds)
        rebuilt = await index_repair.reindex(
            executor_conn, indexes.plan_reindex("public", MIGRATION_INDEX), "public",
            MIGRATION_INDEX, spec=refusals["application"][0], builder_wait=2.0)
        assert rebuilt.state is RemediationState.REJECTED, rebuilt.message
        assert f"application {MIGRATION_APP!r} is protected" in rebuilt.message
        _still_building(pg_db, builds)
        # The executor's own interrupted build is still repaired, protect.superusers or not.
        own = await index_repair.drop_invalid_index(
            executor_conn, indexes.plan_drop_invalid_index("public", OWN_INDEX), "public",
            OWN_INDEX, spec=refusals["application"][0], builder_wait=5.0)
        print(f"\nown: {own.message}")
        assert own.state is RemediationState.SUCCEEDED, own.message
        assert own.before["builders_cancelled"] == 1.0
        assert f"after cancelling backend(s) [{builds.own.pid}]" in own.message
        assert await asyncio.to_thread(builds.own.done.wait, 10)
        _still_building(pg_db, builds)
    with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (OWN_INDEX,)).fetchone() == (None,)
    assert builds.migration.error is None, "the migration's build should have finished"
    assert builds.own.error is not None


async def test_the_engine_refuses_a_forged_drop_and_still_repairs_its_own_build(
        pg_db: postgres.PostgresDatabase, app_conninfo: str,
        nats_server: natsserver.NatsServer, tmp_path: Path) -> None:
    store = journal.JournalStore(tmp_path / "audit.jsonl", helpers.NAMESPACE, helpers.MONITOR)
    config = helpers.config(pg_db, nats_server.url, tmp_path, mode="auto",
                            protect={"applications": [MIGRATION_APP]})
    with waiting_builds(pg_db, app_conninfo) as builds:
        async with helpers.running_executor(config, store) as executor:
            assert executor.engine is not None
            await executor.engine.handle(_drop_detection(MIGRATION_INDEX, "orders").encode())
            await executor.engine.handle(_drop_detection(OWN_INDEX, "items").encode())

            async def settled() -> dict[str, Any]:
                records = {r.spec.target.index: r for r in await store.list()}
                assert {i: r.state.value for i, r in records.items()} == {
                    MIGRATION_INDEX: "Rejected", OWN_INDEX: "Succeeded"}, records
                return records

            records = await eventually(settled, timeout=60)
        refused = records[MIGRATION_INDEX].status.message
        print(f"\n{refused}\n{records[OWN_INDEX].status.message}")
        assert f"backend {builds.migration.pid}" in refused and "not signalled" in refused
        _still_building(pg_db, builds)
    assert builds.migration.error is None
