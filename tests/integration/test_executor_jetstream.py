"""JetStream delivery: a detection whose executor died before recording it is redelivered
to another executor and handled exactly once; a detection is acked as soon as its Remediation
is recorded, however long its action takes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import nats
import psycopg
import pytest

from startupmonkey import settings
from startupmonkey.executor import intake, journal, kube, records
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models.enums import ActionId, RemediationState
from tests.support import executor_helpers as helpers
from tests.support import workloads
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration
EXE = Path(sys.executable).with_name("startupmonkey")
STREAM = f"startupmonkey_{helpers.NAMESPACE}_{helpers.MONITOR}"


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a database that hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


async def test_redelivered_after_the_holder_is_sigkilled_before_ack(
        pg_db: postgres.PostgresDatabase, nats_jetstream: natsserver.NatsServer,
        tmp_path: Path) -> None:

    helpers.stale_tables(pg_db.conninfo, "orders")
    good = helpers.config(pg_db, nats_jetstream.url, tmp_path / "b", jetstream=True)
    assert good.executor is not None
    good.executor.nats.ack_wait = "2s"
    with black_hole() as port:
        stuck = good.model_copy(deep=True)
        assert stuck.executor is not None
        stuck.executor.database.port = port
        stuck.executor.audit_log = tmp_path / "a" / "audit.jsonl"
        config_file = tmp_path / "stuck.yaml"
        config_file.write_text(settings.dump(stuck))
        holder = subprocess.Popen(  # noqa: ASYNC220 - a real second executor process
            [str(EXE), "executor", "--config", str(config_file), "--observability-port", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            detection = helpers.table_detection("orders")
            await _wait_for_consumer(nats_jetstream.url)
            client = await nats.connect(nats_jetstream.url)
            try:
                ack = await client.jetstream().publish(
                    detection.subject, detection.encode(), headers={"Nats-Msg-Id": detection.id})
                assert ack.seq == 1 and not ack.duplicate
                await _wait_delivered(client)  # the stuck executor holds it, unacked
            finally:
                await client.close()
        finally:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(10)
            assert holder.stderr is not None
            holder.stderr.close()
    store = journal.JournalStore(tmp_path / "b" / "audit.jsonl", helpers.NAMESPACE,
                                 helpers.MONITOR)
    async with helpers.running_executor(good, store):

        async def handled_once() -> bool:
            return list((await helpers.states(store)).values()) == ["Succeeded"]

        await eventually(handled_once, timeout=30)
        await asyncio.sleep(3)  # past another ack wait: no second delivery, no second record
        assert list((await helpers.states(store)).values()) == ["Succeeded"]
    assert not (tmp_path / "a" / "audit.jsonl").exists()


async def _consumer_info(url: str) -> object | None:
    client = await nats.connect(url)
    try:
        return await client.jetstream().consumer_info(
            f"startupmonkey_{helpers.NAMESPACE}_{helpers.MONITOR}", "startupmonkey-executor")
    except nats.js.errors.NotFoundError:
        return None
    finally:
        await client.close()


async def _wait_for_consumer(url: str) -> None:
    async def exists() -> bool:
        return await _consumer_info(url) is not None

    await eventually(exists, timeout=30)


async def _wait_delivered(client: nats.NATS) -> None:
    async def delivered() -> bool:
        info = await client.jetstream().consumer_info(
            f"startupmonkey_{helpers.NAMESPACE}_{helpers.MONITOR}", "startupmonkey-executor")
        return info.num_ack_pending == 1

    await eventually(delivered, timeout=15)


def _analyze_waits_for_the_lock(conninfo: str) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'ANALYZE%%' AND application_name = 'startupmonkey-executor'"
        ).fetchone()
    return row == (1,)


async def test_a_detection_is_acked_once_recorded_while_its_action_still_runs(
        app_conninfo: str, pg_db: postgres.PostgresDatabase,
        nats_jetstream: natsserver.NatsServer, tmp_path: Path) -> None:
    """An ANALYZE waits behind a lock for far longer than the ack wait: its message is acked
    as soon as the Remediation exists (never redelivered), and the intake takes the next
    detection meanwhile: ending the session that holds the lock, which lets the ANALYZE end."""
    ack_wait = 1.0
    cfg = helpers.config(pg_db, nats_jetstream.url, tmp_path, jetstream=True, limits={
        "timeouts": {"maintenance": {"lockTimeout": "60s", "statementTimeout": "2m"}}})
    assert cfg.executor is not None
    cfg.executor.nats.ack_wait = f"{ack_wait:.0f}s"
    helpers.stale_tables(app_conninfo, "orders")
    store = journal.JournalStore(tmp_path / "audit.jsonl", helpers.NAMESPACE, helpers.MONITOR)
    with workloads.hold_lock(app_conninfo, "orders", mode="SHARE UPDATE EXCLUSIVE") as locker:
        async with helpers.running_executor(cfg, store):
            client = await nats.connect(nats_jetstream.url)
            try:
                js = client.jetstream()
                analyze = helpers.table_detection("orders", ActionId.ANALYZE)
                await js.publish(analyze.subject, analyze.encode(),
                                 headers={"Nats-Msg-Id": analyze.id})

                async def running() -> records.Record:
                    found = await store.list()
                    assert len(found) == 1, found
                    record = found[0]
                    assert record.state is RemediationState.RUNNING, record.status.message
                    assert _analyze_waits_for_the_lock(pg_db.conninfo)
                    return record

                first = await eventually(running, timeout=20)

                async def acked() -> bool:
                    info = await js.consumer_info(STREAM, "startupmonkey-executor")
                    assert info.delivered.consumer_seq == 1
                    assert info.num_ack_pending == 0, "not acked"
                    return info.ack_floor.consumer_seq == 1

                await eventually(acked, timeout=10)
                # Held past the ack wait twice over: still Running, never redelivered.
                since = first.started_at()
                assert since is not None
                await eventually(lambda: records.utcnow() - since > datetime.timedelta(
                    seconds=2 * ack_wait + 1), timeout=10)
                info = await js.consumer_info(STREAM, "startupmonkey-executor")
                assert (info.num_redelivered, info.num_ack_pending) == (0, 0)
                assert (await helpers.states(store)) == {first.name: "Running"}

                idle = helpers.idle_detection(pg_db.conninfo, locker.pid)
                await js.publish(idle.subject, idle.encode(), headers={"Nats-Msg-Id": idle.id})

                async def both_done() -> bool:
                    states = sorted((await helpers.states(store)).values())
                    return states == ["Succeeded", "Succeeded"]

                await eventually(both_done, timeout=30)
                info = await js.consumer_info(STREAM, "startupmonkey-executor")
                assert info.delivered.consumer_seq == 2
                assert (info.num_redelivered, info.num_ack_pending) == (0, 0)
            finally:
                await client.close()
        assert not locker.is_alive()
    analyzed = next(r for r in await store.list() if r.spec.action is ActionId.ANALYZE)
    assert [s.state.value for s in analyzed.status.history] == [
        "Approved", "Running", "Succeeded"]


async def test_an_unreachable_api_server_naks_the_message_and_the_pull_loop_goes_on(
        pg_db: postgres.PostgresDatabase, nats_jetstream: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """The Kubernetes store cannot reach its API server (urllib3 errors): each delivery of the
    detection is counted, logged and naked, and the pull loop lives on to take the
    redeliveries instead of dying with the first error."""
    cfg = helpers.config(pg_db, nats_jetstream.url, tmp_path, jetstream=True)
    assert cfg.executor is not None
    cfg.executor.reporter = "kubernetes"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens here once the probe is closed
    api = kubernetes.client.Configuration()
    api.host = f"http://127.0.0.1:{closed}"
    api.retries = 0
    store = kube.KubernetesStore(helpers.NAMESPACE, helpers.MONITOR,
                                 api_client=kubernetes.client.ApiClient(api))
    try:
        async with helpers.running_executor(cfg, store) as executor:
            client = await nats.connect(nats_jetstream.url)
            try:
                detection = helpers.table_detection("orders")
                await client.jetstream().publish(detection.subject, detection.encode(),
                                                 headers={"Nats-Msg-Id": detection.id})

                def errors() -> float:
                    return executor.obs.registry.get_sample_value(
                        "startupmonkey_executor_detections_total", {"outcome": "error"}) or 0

                await eventually(lambda: errors() >= 3, timeout=20)

                # One message, delivered again and again: the same pull loop took each.
                info = await client.jetstream().consumer_info(STREAM, "startupmonkey-executor")
                assert info.delivered.stream_seq == 1, info
                assert info.delivered.consumer_seq >= 3, info
            finally:
                await client.close()
            assert isinstance(executor.intake, intake.JetStreamIntake)
            assert executor.intake._task is not None and not executor.intake._task.done()
    finally:
        store.client.close()
