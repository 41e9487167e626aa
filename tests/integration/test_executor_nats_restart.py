"""nats-server killed and restarted under a running executor, with its JetStream store kept
or wiped, and Core NATS: every detection published is handled exactly once, nothing is lost
and nothing is done twice (issue 23, item 2).

The analyser's side is played as the analyser plays it (``analyser/publisher.py``,
``analyser/lifecycle.py``): each active detection is published again and again with the same
id and ``Nats-Msg-Id``, so a detection sent into a server that is down, or into a stream that
no longer exists, arrives with a later publication. Exactly once is read from the records (one
Remediation per detection, each ran once: Approved, Running, Succeeded) and from PostgreSQL
itself (each table analyzed once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.js.api
import nats.js.errors
import psycopg
import pytest

from startupmonkey.executor import intake, journal
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import messages
from tests.support import components
from tests.support import executor_helpers as helpers
from tests.support.eventually import eventually, wait_until

pytestmark = pytest.mark.integration
STREAM = intake.stream_name(helpers.NAMESPACE, helpers.MONITOR)


class Analyser:
    """Publishes every active detection every round, as the analyser re-publishes them."""

    def __init__(self, client: nats.NATS) -> None:
        self.client = client
        self.active: list[messages.Detection] = []
        self.rounds = 0

    async def run(self) -> None:
        while True:
            for detection in list(self.active):
                # Core publish with the dedup header, exactly as analyser/publisher.py does; a
                # server that is down buffers it in the client until the reconnect.
                with contextlib.suppress(nats.errors.Error, OSError):
                    await self.client.publish(detection.subject, detection.encode(),
                                              headers={"Nats-Msg-Id": detection.id})
            self.rounds += 1
            await asyncio.sleep(0.2)  # the analyser's cadence, shortened

    async def published_again(self) -> None:
        """Wait for one more full round of publications."""
        target = self.rounds + 2
        await eventually(lambda: self.rounds >= target, timeout=10)


@contextlib.asynccontextmanager
async def analyser(url: str) -> AsyncIterator[Analyser]:
    client = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    publisher = Analyser(client)
    task = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


def kill_and_restart(server: natsserver.NatsServer, *, wipe_store: bool) -> None:
    """SIGKILL the server (no clean shutdown), optionally delete its JetStream store, as a
    pod on an emptyDir comes back, and start it again on the same port."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    wait_until(lambda: not server.running, timeout=10)
    server.stop()  # reaps the dead child; nothing left to signal
    if wipe_store:
        shutil.rmtree(server.store_dir)
    server.start()


def analyze_counts(conninfo: str, tables: list[str]) -> dict[str, int]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, analyze_count FROM pg_catalog.pg_stat_user_tables "
            "WHERE relname = ANY(%s)", (tables,)).fetchall()
    return {name: count for name, count in rows}


async def handled_exactly_once(store: journal.JournalStore,
                               detections: list[messages.Detection]) -> bool:
    """One Remediation per detection, each ran once and Succeeded, and no other."""
    found = await store.list()
    by_id = {r.spec.detection_id: r for r in found}
    assert len(by_id) == len(found), "two Remediations for one detection"
    assert sorted(by_id) == sorted(d.id for d in detections), (
        f"{len(by_id)} of {len(detections)} recorded")
    for record in found:
        assert [s.state.value for s in record.status.history] == [
            "Approved", "Running", "Succeeded"], (record.name, record.status.message)
    return True


async def stream_drained(url: str) -> bool:
    """Every message the stream took was delivered and acked, and so removed (work queue)."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        stream = await js.stream_info(STREAM)
        consumer = await js.consumer_info(STREAM, intake.DURABLE)
        assert stream.state.messages == 0, stream.state
        assert (consumer.num_pending, consumer.num_ack_pending) == (0, 0), consumer
        return True
    finally:
        await client.close()


@pytest.mark.parametrize(("jetstream", "wipe_store"), [
    pytest.param(False, False, id="core"),
    pytest.param(True, False, id="jetstream-kept-store"),
    pytest.param(True, True, id="jetstream-wiped-store"),
])
async def test_nats_killed_mid_stream_loses_nothing_and_does_nothing_twice(
        pg_db: postgres.PostgresDatabase, tmp_path: Path, jetstream: bool,
        wipe_store: bool) -> None:
    tables = [f"orders_{i}" for i in range(9)]
    helpers.stale_tables(pg_db.conninfo, *tables)
    detections = [helpers.table_detection(t) for t in tables]
    before, during, after = detections[:3], detections[3:6], detections[6:]
    with components.nats_server(jetstream=jetstream) as server:
        cfg = helpers.config(pg_db, server.url, tmp_path, jetstream=jetstream,
                             limits={"maxActionsPerHour": 100})
        store = journal.JournalStore(tmp_path / "audit.jsonl", helpers.NAMESPACE,
                                     helpers.MONITOR)
        async with helpers.running_executor(cfg, store) as executor:
            async with analyser(server.url) as publisher:
                publisher.active.extend(before)
                await eventually(lambda: handled_exactly_once(store, before), timeout=30)
                # Mid-stream: these go out while the server dies; the ones before stay active
                # (published again after the restart, into a new stream when it was wiped).
                publisher.active.extend(during)
                await asyncio.to_thread(kill_and_restart, server, wipe_store=wipe_store)
                publisher.active.extend(after)
                await eventually(lambda: handled_exactly_once(store, detections), timeout=60)
                await eventually(lambda: executor.obs.health.ready, timeout=20,
                                 what=lambda: str(executor.obs.health.report()))
                if wipe_store:
                    assert isinstance(executor.intake, intake.JetStreamIntake)
                    assert executor.intake.rebinds >= 1
                # The publications go on: each arrives again and is recognised, never redone.
                await publisher.published_again()
            if jetstream:
                await eventually(lambda: stream_drained(server.url), timeout=20)
    assert await handled_exactly_once(store, detections)
    await eventually(lambda: analyze_counts(pg_db.conninfo, tables) == dict.fromkeys(tables, 1),
                     timeout=30)


async def test_not_ready_while_jetstream_is_gone_and_recovers_when_it_is_back(
        pg_db: postgres.PostgresDatabase, nats_jetstream: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """A nats-server without JetStream on the executor's port (a server that came back without
    its store or its JetStream config): the executor is connected but has no consumer, so it is
    not ready and says why; once JetStream is back it re-creates everything and handles what is
    published."""
    helpers.stale_tables(pg_db.conninfo, "orders")
    cfg = helpers.config(pg_db, nats_jetstream.url, tmp_path, jetstream=True)
    store = journal.JournalStore(tmp_path / "audit.jsonl", helpers.NAMESPACE, helpers.MONITOR)
    port = nats_jetstream.port
    async with helpers.running_executor(cfg, store) as executor:
        health = executor.obs.health
        await eventually(lambda: health.ready, timeout=20, what=lambda: str(health.report()))
        await asyncio.to_thread(nats_jetstream.stop)
        core = natsserver.NatsServer(port, binary=components.nats_server_binary())
        try:
            await asyncio.to_thread(core.start)

            def no_consumer() -> bool:
                report = health.report()["dependencies"]
                assert report["nats"]["ok"], report  # connected again ...
                assert not report["jetstream"]["ok"], report  # ... but nothing to pull from
                assert STREAM in report["jetstream"]["detail"], report
                return not health.ready

            await eventually(no_consumer, timeout=20)
        finally:
            await asyncio.to_thread(core.close)
        await asyncio.to_thread(kill_and_restart_empty, nats_jetstream)
        await eventually(lambda: health.ready, timeout=20, what=lambda: str(health.report()))
        async with analyser(nats_jetstream.url) as publisher:
            detection = helpers.table_detection("orders")
            publisher.active.append(detection)
            await eventually(lambda: handled_exactly_once(store, [detection]), timeout=30)


def kill_and_restart_empty(server: natsserver.NatsServer) -> None:
    """Start a stopped server again with an empty store."""
    shutil.rmtree(server.store_dir, ignore_errors=True)
    server.start()


async def test_a_limits_stream_of_an_earlier_version_becomes_a_bounded_work_queue(
        pg_db: postgres.PostgresDatabase, nats_jetstream: natsserver.NatsServer,
        tmp_path: Path) -> None:
    """Earlier executors made a Limits stream over all the monitor's subjects, which cannot be
    changed into a work queue in place: it is re-created, and detections flow."""
    client = await nats.connect(nats_jetstream.url)
    try:
        js = client.jetstream()
        await js.add_stream(name=STREAM, retention=nats.js.api.RetentionPolicy.LIMITS,
                            subjects=[messages.monitor_subjects(helpers.NAMESPACE,
                                                                helpers.MONITOR)])
        helpers.stale_tables(pg_db.conninfo, "orders")
        cfg = helpers.config(pg_db, nats_jetstream.url, tmp_path, jetstream=True)
        store = journal.JournalStore(tmp_path / "audit.jsonl", helpers.NAMESPACE,
                                     helpers.MONITOR)
        async with helpers.running_executor(cfg, store):
            info = await js.stream_info(STREAM)
            assert info.config.retention == nats.js.api.RetentionPolicy.WORK_QUEUE
            assert info.config.subjects == [intake.detections_subject(helpers.NAMESPACE,
                                                                      helpers.MONITOR)]
            assert (info.config.max_msgs, info.config.max_bytes) == (
                intake.STREAM_MAX_MSGS, intake.STREAM_MAX_BYTES)
            assert info.config.discard == nats.js.api.DiscardPolicy.OLD
            async with analyser(nats_jetstream.url) as publisher:
                detection = helpers.table_detection("orders")
                publisher.active.append(detection)
                await eventually(lambda: handled_exactly_once(store, [detection]), timeout=30)
            await eventually(lambda: stream_drained(nats_jetstream.url), timeout=20)
    finally:
        await client.close()
