"""JetStream delivery: a detection whose executor died before recording it is redelivered
to another executor and handled exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from startupmonkey import settings
from startupmonkey.executor import journal
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from tests.support import executor_helpers as helpers
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration
EXE = Path(sys.executable).with_name("startupmonkey")


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
