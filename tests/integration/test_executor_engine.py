"""The executor end to end without Kubernetes: NATS in, journal records, real actions.

Real nats-server, real PostgreSQL; Remediations are kept in the JSONL journal (the standalone
store). Kubernetes-backed replicas are tested in tests/e2e.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest

from startupmonkey.executor import guard, journal, records
from startupmonkey.executor import main as executor_main
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import messages, remediation
from startupmonkey.models.enums import ActionId, Mode, RemediationState, RiskClass
from tests.support import components, workloads
from tests.support import executor_helpers as helpers
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration


def _journal(cfg: helpers.settings.ComponentConfig) -> journal.JournalStore:
    assert cfg.executor is not None and cfg.executor.audit_log is not None
    return journal.JournalStore(cfg.executor.audit_log, helpers.NAMESPACE, helpers.MONITOR)


async def _publish(url: str, *payloads: bytes, subject: str | None = None) -> None:
    client = await nats.connect(url)
    try:
        for payload in payloads:
            detection_subject = subject or messages.parse_detection(payload).subject
            await client.publish(detection_subject, payload)
        await client.flush()
    finally:
        await client.close()


async def test_idle_transaction_detection_is_terminated_once_and_journaled(
        app_conninfo: str, pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cfg = helpers.config(pg_db, nats_server.url, tmp_path)
    store = _journal(cfg)
    with workloads.idle_in_transaction(app_conninfo) as held:
        await eventually(lambda: _is_idle(pg_db.conninfo, held.pid), timeout=10)
        detection = helpers.idle_detection(pg_db.conninfo, held.pid)
        async with helpers.running_executor(cfg, store) as executor:
            await _publish(nats_server.url, *[detection.encode()] * 3)

            async def terminated() -> bool:
                return set((await helpers.states(store)).values()) == {"Succeeded"}

            await eventually(terminated, timeout=20)
            assert executor.engine is not None
            assert not held.is_alive()
    entries = [json.loads(line) for line in
               (tmp_path / "audit.jsonl").read_text().splitlines()]
    lines = [e for e in entries if e["kind"] == "Remediation"]
    (database,) = [e["status"] for e in entries if e["kind"] == "Database"]
    assert database["reachable"] is True and database["serverVersion"].startswith("15")
    assert database["extensions"] == ["hypopg", "pg_stat_statements"]
    names = {line["object"]["metadata"]["name"] for line in lines}
    assert len(names) == 1, "three copies of one detection made one Remediation"
    final = lines[-1]["object"]
    assert final["status"]["executedSql"] == [final["spec"]["sql"]]
    assert "pg_terminate_backend" in final["spec"]["sql"]
    assert [step["state"] for step in final["status"]["history"]] == [
        "Approved", "Running", "Succeeded"]


async def _pending(cfg: helpers.settings.ComponentConfig) -> list[records.Record]:
    """The journal's Remediations waiting for approval."""
    return [r for r in await _journal(cfg).list()
            if r.state is RemediationState.PENDING_APPROVAL]


def _is_idle(conninfo: str, pid: int) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = %s",
                           (pid,)).fetchone()
    return row is not None and row[0] == "idle in transaction"


async def test_malformed_detections_are_counted_and_dropped(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cfg = helpers.config(pg_db, nats_server.url, tmp_path)
    helpers.stale_tables(pg_db.conninfo, "orders")
    store = _journal(cfg)
    async with helpers.running_executor(cfg, store) as executor:
        subject = messages.detection_subject(helpers.NAMESPACE, helpers.MONITOR,
                                             "stale_statistics")
        await _publish(nats_server.url, b"{not json", b'{"schema": "x"}', subject=subject)
        await _publish(nats_server.url, helpers.table_detection("orders").encode())

        async def analyzed() -> bool:
            return list((await helpers.states(store)).values()) == ["Succeeded"]

        await eventually(analyzed, timeout=20)
        assert executor.engine is not None
        malformed = executor.obs.registry.get_sample_value(
            "startupmonkey_executor_malformed_messages_total", {"kind": "detection"})
        assert malformed == 2


async def test_observe_mode_records_and_touches_nothing(
        app_conninfo: str, pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, mode="observe")
    store = _journal(cfg)
    with workloads.idle_in_transaction(app_conninfo) as held:
        await eventually(lambda: _is_idle(pg_db.conninfo, held.pid), timeout=10)
        async with helpers.running_executor(cfg, store):
            await _publish(nats_server.url,
                           helpers.idle_detection(pg_db.conninfo, held.pid).encode())

            async def observed() -> bool:
                return list((await helpers.states(store)).values()) == ["Observed"]

            await eventually(observed, timeout=20)
            await asyncio.sleep(1.5)  # a tick passes: still nothing runs
            assert held.is_alive()
    (record,) = await store.list()
    assert "pg_terminate_backend" in record.spec.sql


async def test_a_restarted_executor_expires_a_pending_approval(
        app_conninfo: str, pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, mode="approval",
                         approval={"expiry": "3s"})
    with workloads.idle_in_transaction(app_conninfo) as held:
        await eventually(lambda: _is_idle(pg_db.conninfo, held.pid), timeout=10)
        async with helpers.running_executor(cfg, _journal(cfg)):
            await _publish(nats_server.url,
                           helpers.idle_detection(pg_db.conninfo, held.pid).encode())

            async def pending() -> bool:
                return list((await helpers.states(_journal(cfg))).values()) == [
                    "PendingApproval"]

            await eventually(pending, timeout=20)
        # A new process: it rebuilds its work from the journal and expires the approval.
        restarted = _journal(cfg)
        async with helpers.running_executor(cfg, restarted):

            async def expired() -> bool:
                return list((await helpers.states(restarted)).values()) == ["Expired"]

            await eventually(expired, timeout=20)
        assert held.is_alive()


async def test_hourly_limit_holds_across_a_restart(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, limits={"maxActionsPerHour": 1})
    helpers.stale_tables(pg_db.conninfo, "a", "b")
    first = _journal(cfg)
    async with helpers.running_executor(cfg, first):
        await _publish(nats_server.url, helpers.table_detection("a").encode())

        async def one_done() -> bool:
            return list((await helpers.states(first)).values()) == ["Succeeded"]

        await eventually(one_done, timeout=20)
    second = _journal(cfg)
    async with helpers.running_executor(cfg, second):
        await _publish(nats_server.url, helpers.table_detection("b").encode())

        async def waiting() -> bool:
            records = await second.list()
            return any(r.state is RemediationState.APPROVED and "hourly limit" in
                       r.status.message for r in records)

        await eventually(waiting, timeout=20)
    assert sorted((await helpers.states(second)).values()) == ["Approved", "Succeeded"]


async def test_a_vanished_table_is_rejected_with_the_reason(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cfg = helpers.config(pg_db, nats_server.url, tmp_path)
    store = _journal(cfg)
    async with helpers.running_executor(cfg, store):
        await _publish(nats_server.url,
                       helpers.table_detection("ghost", ActionId.VACUUM).encode())

        async def rejected() -> bool:
            records = await store.list()
            return len(records) == 1 and records[0].state is RemediationState.REJECTED

        await eventually(rejected, timeout=20)
    (record,) = await store.list()
    assert "does not exist" in record.status.message
    assert record.spec.sql == ""


async def test_a_blocked_vacuum_names_the_holder_and_is_not_retried_in_a_loop(
        app_conninfo: str, pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cfg = helpers.config(pg_db, nats_server.url, tmp_path,
                         thresholds={"dead_tuples": {"cooldown": "1h"}})
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int) WITH (autovacuum_enabled = off)")
        conn.execute("INSERT INTO orders SELECT generate_series(1, 20000)")
    store = _journal(cfg)
    with workloads.idle_in_transaction(app_conninfo, statement="SELECT txid_current()",
                                       application_name="forgotten-migration") as holder:
        with psycopg.connect(app_conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM orders WHERE id % 2 = 0")
        async with helpers.running_executor(cfg, store):
            await _publish(nats_server.url,
                           helpers.table_detection("orders", ActionId.VACUUM).encode())

            async def rejected() -> bool:
                return list((await helpers.states(store)).values()) == ["Rejected"]

            await eventually(rejected, timeout=20)
            (first,) = await store.list()
            # The holder began before the dead tuples were detected: VACUUM could not remove
            # them, so it does not run at all, and the holder is named.
            assert f"session {holder.pid}" in first.status.message
            assert "forgotten-migration" in first.status.message
            assert "before the dead tuples were detected" in first.status.message
            assert first.status.executed_sql == []
            assert first.status.before["holder_xmin_age"] >= 1
            # The problem is still there, so a new occurrence arrives: it is not run again.
            await _publish(nats_server.url,
                           helpers.table_detection("orders", ActionId.VACUUM).encode())

            async def cooled() -> bool:
                return len(await store.list()) == 2

            await eventually(cooled, timeout=20)
        with psycopg.connect(app_conninfo, autocommit=True) as conn:
            counted = conn.execute("SELECT vacuum_count FROM pg_catalog.pg_stat_user_tables "
                                   "WHERE relname = 'orders'").fetchone()
        assert counted == (0,), "no VACUUM ran"
    second = next(r for r in await store.list() if r.name != first.name)
    assert second.state is RemediationState.REJECTED
    assert "cooling down" in second.status.message
    assert second.status.executed_sql == []


async def test_an_action_waiting_on_a_lock_does_not_stall_the_next_approval(
        app_conninfo: str, pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """Approval mode: an approved ANALYZE waits behind a lock; while it waits, the tick still
    runs the next approval (ending the session that holds the lock), so both end Succeeded."""
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, mode="approval", limits={
        "timeouts": {"maintenance": {"lockTimeout": "60s", "statementTimeout": "2m"}}})
    helpers.stale_tables(app_conninfo, "orders")
    store = _journal(cfg)
    with workloads.hold_lock(app_conninfo, "orders", mode="SHARE UPDATE EXCLUSIVE") as locker:
        async with helpers.running_executor(cfg, store):
            await _publish(nats_server.url, helpers.table_detection("orders").encode())

            async def pending(count: int) -> list[str]:
                names = [r.name for r in await store.list()
                         if r.state is RemediationState.PENDING_APPROVAL]
                assert len(names) == count, await helpers.states(store)
                return names

            (analyze,) = await eventually(lambda: pending(1), timeout=20)
            await store.approve(analyze, "tester")

            async def waiting_for_the_lock() -> bool:
                assert (await helpers.states(store))[analyze] == "Running"
                return _waits_for_a_lock(pg_db.conninfo, "ANALYZE")

            await eventually(waiting_for_the_lock, timeout=20)
            await _publish(nats_server.url,
                           helpers.idle_detection(pg_db.conninfo, locker.pid).encode())
            (terminate,) = [n for n in await eventually(lambda: pending(1), timeout=20)
                            if n != analyze]
            await store.approve(terminate, "tester")

            async def both_done() -> bool:
                return sorted((await helpers.states(store)).values()) == [
                    "Succeeded", "Succeeded"]

            await eventually(both_done, timeout=30)
        assert not locker.is_alive()


def _waits_for_a_lock(conninfo: str, statement: str) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s AND application_name = 'startupmonkey-executor'",
            (f"{statement}%",)).fetchone()
    return row == (1,)


async def test_an_approval_after_the_deadline_expires_and_nothing_runs(
        app_conninfo: str, pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, mode="approval",
                         approval={"expiry": "3s"})
    with workloads.idle_in_transaction(app_conninfo) as held:
        await eventually(lambda: _is_idle(pg_db.conninfo, held.pid), timeout=10)
        async with helpers.running_executor(cfg, _journal(cfg)):
            await _publish(nats_server.url,
                           helpers.idle_detection(pg_db.conninfo, held.pid).encode())
            (record,) = await eventually(lambda: _pending(cfg), timeout=20,
                                         what="a Remediation pending approval")
        # No executor runs while the deadline passes; then someone approves, too late.
        deadline = record.spec.approval_expires_at
        assert deadline is not None
        await eventually(lambda: records.utcnow() > deadline, timeout=10)
        await _journal(cfg).approve(record.name, "late-approver")
        restarted = _journal(cfg)
        async with helpers.running_executor(cfg, restarted):

            async def expired() -> bool:
                return list((await helpers.states(restarted)).values()) == ["Expired"]

            await eventually(expired, timeout=20)
        assert held.is_alive()
    (final,) = await restarted.list()
    assert final.spec.approved
    assert "not before the deadline" in final.status.message
    assert final.status.executed_sql == []
    assert RemediationState.RUNNING not in [s.state for s in final.status.history]


async def test_a_second_action_of_the_same_class_waits_for_the_first(
        app_conninfo: str, pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """Two ANALYZEs at once: the second waits (Approved) until the first, held up by a lock,
    is done, instead of meeting the maintenance advisory lock and ending Rejected."""
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, limits={
        "timeouts": {"maintenance": {"lockTimeout": "60s", "statementTimeout": "2m"}}})
    helpers.stale_tables(app_conninfo, "a", "b")
    store = _journal(cfg)
    async with helpers.running_executor(cfg, store):
        with workloads.hold_lock(app_conninfo, "a", mode="SHARE UPDATE EXCLUSIVE"):
            await _publish(nats_server.url, helpers.table_detection("a").encode())
            await eventually(lambda: _waits_for_a_lock(pg_db.conninfo, "ANALYZE"), timeout=20)
            await _publish(nats_server.url, helpers.table_detection("b").encode())

            async def b_waits() -> bool:
                by_table = {r.spec.target.table: r.state.value for r in await store.list()}
                return by_table == {"a": "Running", "b": "Approved"}

            await eventually(b_waits, timeout=20)
        # The lock is gone: a finishes, then b runs.

        async def both_done() -> bool:
            return sorted((await helpers.states(store)).values()) == ["Succeeded", "Succeeded"]

        await eventually(both_done, timeout=30)
    second = next(r for r in await store.list() if r.spec.target.table == "b")
    assert [s.state.value for s in second.status.history] == [
        "Approved", "Running", "Succeeded"]


async def test_a_class_lock_held_by_a_peer_makes_the_action_wait_not_end_rejected(
        app_conninfo: str, pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """Another replica holds the maintenance class's advisory lock on the database: the
    approved ANALYZE does not end Rejected (which would cool its key down for an hour, and a
    missing index's for a day); it stays Approved and unclaimed, "waiting" (no Running step,
    so no start counted against the hourly limit, no attempt), and runs once the peer lets
    go."""
    cfg = helpers.config(pg_db, nats_server.url, tmp_path)
    helpers.stale_tables(app_conninfo, "orders")
    store = _journal(cfg)
    with psycopg.connect(pg_db.conninfo, autocommit=True) as peer:
        peer.execute("SELECT pg_catalog.pg_advisory_lock(%s, %s)",
                     guard.lock_key(RiskClass.MAINTENANCE))
        async with helpers.running_executor(cfg, store):
            await _publish(nats_server.url, helpers.table_detection("orders").encode())

            async def waiting() -> records.Record:
                found = await store.list()
                assert len(found) == 1, found
                record = found[0]
                assert record.state is RemediationState.APPROVED, record.status.message
                assert record.status.message.startswith(
                    "waiting: another maintenance action holds the lock"), record.status.message
                return record

            record = await eventually(waiting, timeout=20)
            assert record.status.attempts == 0
            assert record.status.executed_sql == []
            assert record.started_at() is None
            peer.execute("SELECT pg_catalog.pg_advisory_unlock(%s, %s)",
                         guard.lock_key(RiskClass.MAINTENANCE))

            async def done() -> records.Record:
                (record,) = await store.list()
                assert record.state is RemediationState.SUCCEEDED, record.status.message
                return record

            record = await eventually(done, timeout=60)
    assert [s.state.value for s in record.status.history] == [
        "Approved", "Running", "Succeeded"]
    assert record.status.executed_sql == [record.spec.sql]


async def test_a_record_left_unplanned_by_a_dead_executor_is_failed_and_frees_its_key(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """An executor that died between creating a Remediation and writing its plan (the
    Kubernetes store creates, then patches status) leaves it Proposed; the next executor
    fails it (nothing ran) instead of letting it block its key for ever. (A short cooldown:
    after a Failed record the key cools down, as after any failure.)"""
    cfg = helpers.config(pg_db, nats_server.url, tmp_path,
                         thresholds={"stale_statistics": {"cooldown": "1s"}})
    helpers.stale_tables(pg_db.conninfo, "orders")
    store = _journal(cfg)
    lost = helpers.table_detection("orders")
    spec = remediation.RemediationSpec(
        monitor=lost.monitor, detection_key=lost.key, detection_id=lost.id,
        detector=lost.detector, action=lost.proposed_action, risk_class=helpers.risk(
            lost.proposed_action), target=lost.target, sql_hash=remediation.sql_hash("", None),
        summary=lost.summary)
    await store.create(records.Record(
        name=remediation.object_name(lost.monitor, lost.key, lost.id), namespace=lost.namespace,
        spec=spec, status=remediation.RemediationStatus(executor="executor-that-died"),
        created=records.utcnow()))
    assert list((await helpers.states(store)).values()) == ["Proposed"]
    async with helpers.running_executor(cfg, store):

        async def failed() -> bool:
            return list((await helpers.states(store)).values()) == ["Failed"]

        await eventually(failed, timeout=40)  # after the 15 s grace for a late status patch
        # The key is free again: once the 1 s cooldown has passed, the next occurrence of
        # the problem is acted on.
        await asyncio.sleep(1.5)
        await _publish(nats_server.url, helpers.table_detection("orders").encode())

        async def fixed() -> bool:
            return sorted((await helpers.states(store)).values()) == ["Failed", "Succeeded"]

        await eventually(fixed, timeout=20)
    (unplanned,) = [r for r in await store.list() if r.state is RemediationState.FAILED]
    assert "before planning it; nothing ran" in unplanned.status.message
    assert unplanned.status.executed_sql == []


async def test_two_occurrences_of_one_key_on_two_replicas_open_one_remediation(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """Two replicas (two engines over one store) each receive a different occurrence of the
    same key at the same moment: each has listed the records before the other created its
    own, so without a lock per key both would open one. Exactly one is opened."""
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, mode="approval")
    tables = [f"orders{attempt}" for attempt in range(3)]
    helpers.stale_tables(pg_db.conninfo, *tables)
    store = _journal(cfg)
    for attempt, table in enumerate(tables):  # a few rounds: not won by luck
        first = helpers.table_detection(table)
        second = first.model_copy(update={"id": messages.new_occurrence_id(
            first.key, first.first_seen + datetime.timedelta(seconds=1 + attempt))})
        assert first.key == second.key and first.id != second.id
        one, two = helpers.engine(cfg, store, "replica-1"), helpers.engine(cfg, store, "replica-2")
        handled = await asyncio.gather(one.handle(first.encode()), two.handle(second.encode()))
        assert handled == [True, True]
        opened = [r for r in await store.list() if r.open and r.spec.detection_key == first.key]
        assert len(opened) == 1, await helpers.states(store)
        assert opened[0].state is RemediationState.PENDING_APPROVAL
        # The loser saw the key taken: nothing of its occurrence was recorded.
        assert len([r for r in await store.list() if r.spec.detection_key == first.key]) == 1


async def test_on_a_standby_an_action_waits_with_the_reason_and_nothing_runs(
        pg_private_cluster_factory: components.PrivateClusterFactory,
        tmp_path: Path) -> None:
    """A private cluster restarted as a standby (standby.signal in its data directory, hot
    standby: read-only sessions are served): a session sits idle in a transaction there; the
    executor plans its termination (auto mode) but the guard refuses to run it on a standby,
    and the session lives. A standby is a temporary state (a failover, a promotion), so the
    record waits Approved, saying why, instead of being Rejected for good."""
    cluster = pg_private_cluster_factory(install_extensions=False)
    shop = cluster.create_database("shop")
    role = "app_standby"
    cluster.create_role(role)
    cluster.stop()
    signal = cluster.datadir / "standby.signal"
    signal.write_text("")
    owner = cluster.datadir.stat()
    os.chown(signal, owner.st_uid, owner.st_gid)
    cluster.start()
    with shop.connect() as conn:
        assert conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone() == (True,)
    cfg = helpers.config(shop, "nats://127.0.0.1:1", tmp_path)  # NATS is not used here
    store = _journal(cfg)
    with workloads.idle_in_transaction(shop.conninfo_for(role)) as held:
        await eventually(lambda: _is_idle(shop.conninfo, held.pid), timeout=10)
        executor = helpers.engine(cfg, store)
        assert await executor.handle(helpers.idle_detection(shop.conninfo, held.pid).encode())
        await executor.settle()
        (record,) = await store.list()
        assert record.state is RemediationState.APPROVED, record.status.message
        assert record.status.message.startswith("waiting: ")
        assert "standby" in record.status.message and "nothing runs" in record.status.message
        assert record.status.executed_sql == []
        # Refused before the claim: it never ran, so it never was Running.
        assert [s.state.value for s in record.status.history] == ["Approved"]
        assert held.is_alive()


async def test_a_rewritten_config_switches_auto_to_approval_without_a_restart(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``startupmonkey executor`` as it runs (``serve``: the config file watched): in auto mode
    an ANALYZE runs; the file is rewritten with spec.mode approval, and the next detection
    waits in PendingApproval while nothing runs."""
    caplog.set_level(logging.INFO, logger=executor_main.__name__)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path)
    assert cfg.spec.mode is Mode.AUTO
    helpers.stale_tables(pg_db.conninfo, "a", "b")
    path = tmp_path / "executor.yaml"
    path.write_text(helpers.settings.dump(cfg))
    stop = asyncio.Event()
    served = asyncio.create_task(executor_main.serve(path, postgres.free_port(), stop))

    async def state_of(table: str) -> str | None:
        found = [r.state.value for r in await _journal(cfg).list()
                 if r.spec.target.table == table]
        assert len(found) <= 1, found
        return found[0] if found else None

    async def published_and(table: str, state: str, payload: bytes) -> bool:
        if await state_of(table) is None:  # Core NATS: lost until the subscription exists
            await _publish(nats_server.url, payload)
        return await state_of(table) == state

    try:
        first = helpers.table_detection("a").encode()
        await eventually(lambda: published_and("a", "Succeeded", first), timeout=30)
        approval = cfg.model_copy(update={"spec": cfg.spec.model_copy(
            update={"mode": Mode.APPROVAL})})
        path.write_text(helpers.settings.dump(approval))
        await eventually(lambda: "configuration reloaded" in caplog.text, timeout=15)
        second = helpers.table_detection("b").encode()
        await eventually(lambda: published_and("b", "PendingApproval", second), timeout=30)
        await asyncio.sleep(2.5)  # ticks pass: still waiting, nothing ran
        assert await state_of("b") == "PendingApproval"
    finally:
        stop.set()
        await asyncio.wait_for(served, timeout=30)
    with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
        counts = dict(conn.execute("SELECT relname, analyze_count FROM "
                                   "pg_catalog.pg_stat_user_tables WHERE relname IN ('a', 'b')"
                                   ).fetchall())
    assert counts == {"a": 1, "b": 0}


async def test_every_state_change_is_published_as_a_remediation_event(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """A subscriber on the monitor's remediation subjects sees one RemediationEvent v1 per
    state change of the record, in order, each on the subject of its state and read with the
    real parser."""
    cfg = helpers.config(pg_db, nats_server.url, tmp_path)
    helpers.stale_tables(pg_db.conninfo, "orders")
    store = _journal(cfg)
    listener = await nats.connect(nats_server.url)
    received: list[tuple[str, messages.RemediationEvent]] = []

    async def on_event(msg: Any) -> None:
        received.append((msg.subject, messages.parse_remediation_event(msg.data)))

    wildcard = messages.remediation_subject(helpers.NAMESPACE, helpers.MONITOR,
                                            RemediationState.RUNNING).rsplit(".", 1)[0] + ".>"
    await listener.subscribe(wildcard, cb=on_event)
    await listener.flush()
    detection = helpers.table_detection("orders")
    try:
        async with helpers.running_executor(cfg, store):
            await _publish(nats_server.url, detection.encode())

            async def three_events() -> bool:
                return len(received) >= 3

            await eventually(three_events, timeout=20)
            await asyncio.sleep(1.5)  # a tick passes: no further event for a settled record
    finally:
        await listener.close()
    (record,) = await store.list()
    assert record.state is RemediationState.SUCCEEDED
    assert [event.state for _, event in received] == [
        RemediationState.APPROVED, RemediationState.RUNNING, RemediationState.SUCCEEDED]
    assert [step.state for step in record.status.history] == [
        event.state for _, event in received]
    for subject, event in received:
        assert subject == messages.remediation_subject(helpers.NAMESPACE, helpers.MONITOR,
                                                       event.state)
        assert (event.namespace, event.monitor, event.remediation) == (
            helpers.NAMESPACE, helpers.MONITOR, record.name)
        assert (event.key, event.detection_id) == (detection.key, detection.id)
        assert event.action is ActionId.ANALYZE
        assert event.detector is detection.detector
    assert received[-1][1].message == record.status.message


async def test_readiness_follows_the_nats_connection(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """The executor is not ready while NATS is away (it cannot take detections), and ready
    again once the client has reconnected; it keeps running meanwhile."""
    cfg = helpers.config(pg_db, nats_server.url, tmp_path)
    async with helpers.running_executor(cfg, _journal(cfg)) as executor:
        health = executor.obs.health
        await eventually(lambda: health.ready, timeout=20,
                         what=lambda: f"ready with database and NATS: {health.report()}")
        nats_server.stop()
        await eventually(lambda: not health.ready, timeout=20,
                         what=lambda: f"not ready without NATS: {health.report()}")
        assert "disconnected" in str(health.report())
        nats_server.start()  # the same port
        await eventually(lambda: health.ready, timeout=30,
                         what=lambda: f"ready after the reconnect: {health.report()}")


async def test_the_approval_time_gauge_follows_a_waiting_remediation_until_it_is_answered(
        app_conninfo: str, pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """startupmonkey_executor_approval_time_used_ratio (the StartupMonkeyApprovalWaiting alert
    reads it): 0 with nothing waiting, past 0.5 once half of spec.approval.expiry has passed
    for a waiting Remediation, 0 again once it is rejected."""
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, mode="approval",
                         approval={"expiry": "6s"})
    with workloads.idle_in_transaction(app_conninfo) as held:
        await eventually(lambda: _is_idle(pg_db.conninfo, held.pid), timeout=10)
        async with helpers.running_executor(cfg, _journal(cfg)) as executor:
            registry = executor.obs.registry

            def used() -> float | None:
                return registry.get_sample_value(
                    "startupmonkey_executor_approval_time_used_ratio")

            await eventually(lambda: used() == 0.0, timeout=10)
            await _publish(nats_server.url,
                           helpers.idle_detection(pg_db.conninfo, held.pid).encode())
            (record,) = await eventually(lambda: _pending(cfg), timeout=20,
                                         what="a Remediation pending approval")
            await eventually(lambda: 0.5 < (used() or 0.0) <= 1.0, timeout=10)
            await _journal(cfg).request_reject(record.name, "tester", "not now")
            await eventually(lambda: used() == 0.0, timeout=10)
        assert held.is_alive()


@pytest.mark.parametrize(("mode", "ended"), [(Mode.OBSERVE, RemediationState.OBSERVED),
                                             (Mode.APPROVAL, RemediationState.REJECTED)])
async def test_an_approval_by_policy_does_not_outlive_a_change_of_mode(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer, tmp_path: Path,
        mode: Mode, ended: RemediationState) -> None:
    # Auto mode approves b by policy, and the hourly limit holds it back (a ddl action can
    # wait hours for its maintenance window the same way). The user switches the monitor to
    # observe or approval mode, and lifts the limit: b must not run now.
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, mode="auto",
                         limits={"maxActionsPerHour": 1})
    helpers.stale_tables(pg_db.conninfo, "a", "b")
    store = _journal(cfg)
    async with helpers.running_executor(cfg, store) as executor:
        await _publish(nats_server.url, helpers.table_detection("a").encode())

        async def of_b() -> list[records.Record]:
            return [r for r in await store.list() if r.spec.target.table == "b"]

        async def held_back() -> bool:
            return any(r.state is RemediationState.APPROVED and "hourly limit" in
                       r.status.message for r in await of_b())

        await eventually(lambda: _states_are(store, ["Succeeded"]), timeout=20)
        await _publish(nats_server.url, helpers.table_detection("b").encode())
        await eventually(held_back, timeout=20)
        spec = cfg.spec.model_copy(update={
            "mode": mode, "limits": cfg.spec.limits.model_copy(update={
                "max_actions_per_hour": 100})})
        await executor.reconfigure(cfg.model_copy(update={"spec": spec}))

        async def ended_so() -> records.Record:
            (record,) = await of_b()
            assert record.state is ended, (record.state, record.status.message)
            return record

        record = await eventually(ended_so, timeout=20)
        assert record.status.message.startswith("not run: the mode changed")
        assert "nothing ran" in record.status.message
        if mode is Mode.APPROVAL:
            # Nothing was tried, so the key does not cool down: the next detection asks.
            await _publish(nats_server.url, helpers.table_detection("b").encode())

            async def asks() -> bool:
                return any(r.state is RemediationState.PENDING_APPROVAL for r in await of_b())

            await eventually(asks, timeout=20)
    with psycopg.connect(pg_db.conninfo) as conn:
        counts = conn.execute("SELECT analyze_count FROM pg_stat_user_tables "
                              "WHERE relname = 'b'").fetchone()
    assert counts == (0,)


async def _states_are(store: journal.JournalStore, states: list[str]) -> bool:
    return sorted((await helpers.states(store)).values()) == states


async def test_a_persons_approval_is_not_undone_by_a_change_of_mode(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    # A person approves b in approval mode; the hourly limit holds it back; the monitor goes
    # to observe mode (or a replica still reads an old one): b still runs once the limit
    # allows. Only rejecting it stops a person's approval.
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, mode="approval",
                         limits={"maxActionsPerHour": 1})
    helpers.stale_tables(pg_db.conninfo, "a", "b")
    store = _journal(cfg)
    async with helpers.running_executor(cfg, store) as executor:
        for table in ("a", "b"):
            await _publish(nats_server.url, helpers.table_detection(table).encode())

        async def named() -> dict[str, records.Record]:
            found = {r.spec.target.table or "": r for r in await store.list()}
            assert set(found) == {"a", "b"}, found
            return found

        both = await eventually(named, timeout=20)
        # a first, so that b is the one the hourly limit holds back.
        await store.approve(both["a"].name, "alice")

        async def a_done() -> bool:
            return any(r.spec.target.table == "a" and r.state is RemediationState.SUCCEEDED
                       for r in await store.list())

        await eventually(a_done, timeout=20)
        await store.approve(both["b"].name, "alice")

        async def b_held_back() -> bool:
            return any(r.spec.target.table == "b" and "hourly limit" in r.status.message
                       for r in await store.list())

        await eventually(b_held_back, timeout=20)
        spec = cfg.spec.model_copy(update={
            "mode": Mode.OBSERVE, "limits": cfg.spec.limits.model_copy(update={
                "max_actions_per_hour": 100})})
        await executor.reconfigure(cfg.model_copy(update={"spec": spec}))
        await eventually(lambda: _states_are(store, ["Succeeded", "Succeeded"]), timeout=20)


async def test_analyzes_restoring_lost_statistics_have_an_hourly_budget_of_their_own(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    # After a crash every table may need an ANALYZE to restore its counters; they must not use
    # up the hourly limit the actions a crash makes urgent need, nor be held back by them.
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, limits={"maxActionsPerHour": 1})
    helpers.stale_tables(pg_db.conninfo, "b", "c")
    helpers.stale_tables(pg_db.conninfo, "lost", rows=20_000)  # its inserts counted by now
    with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
        conn.execute("ANALYZE lost")
        # As a crash leaves it: the catalog knows 20,000 rows, the counters nothing.
        conn.execute("SELECT pg_stat_reset_single_table_counters('lost'::regclass)")
    restore = helpers.table_detection("lost")
    restore = restore.model_copy(update={"evidence": {"statistics_lost": True, "trigger": 100}})
    store = _journal(cfg)

    async def state_of(table: str) -> str:
        found = [r for r in await store.list() if r.spec.target.table == table]
        return "; ".join(f"{r.state.value}: {r.status.message}" for r in found)

    async with helpers.running_executor(cfg, store):
        await _publish(nats_server.url, helpers.table_detection("b").encode())
        await eventually(lambda: _states_are(store, ["Succeeded"]), timeout=20)
        # The shared budget is spent; the restoring ANALYZE still runs.
        await _publish(nats_server.url, restore.encode())

        async def restored() -> bool:
            now = await state_of("lost")
            assert now.startswith("Succeeded"), now
            return True

        await eventually(restored, timeout=20)
        assert "lost counters re-estimated" in await state_of("lost")
        # And it did not count in the shared budget: c is held back by b alone.
        await _publish(nats_server.url, helpers.table_detection("c").encode())

        async def held_back() -> bool:
            return "hourly limit reached: 1 actions" in await state_of("c")

        await eventually(held_back, timeout=20)
