"""Issue 23 fault test: the real ``startupmonkey analyser`` process SIGKILLed mid-stream and
started again on the same address. The collector (real, reading a real PostgreSQL) keeps its
unacknowledged rounds, reconnects, delivers them to the new process in order and without a
gap, and detections resume from the new process for a problem that began while it was dead.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import messages
from startupmonkey.models.enums import DetectorId
from tests.integration.test_analyser_ingest import DETECTIONS
from tests.integration.test_analyser_process import accepted, spawn, write_config
from tests.integration.test_collector_ingest_server import collector_config, running_collector
from tests.integration.test_collector_ingest_server import metric as collector_metric
from tests.support import workloads
from tests.support.chain import http_get, subscriber
from tests.support.eventually import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def _ready(obs_port: int) -> bool:
    return (await http_get(obs_port, "/readyz"))[0] == 200


async def test_a_sigkilled_analyser_gets_the_buffered_rounds_and_detects_again(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    grpc_port = postgres.free_port()
    config = tmp_path / "config.yaml"
    write_config(config, nats_server.url, grpc_port, "2s")
    logs = [(tmp_path / f"analyser-{n}.log").open("wb") for n in (1, 2)]
    processes = []
    try:
        first_obs = postgres.free_port()
        processes.append(spawn(config, first_obs, logs[0]))
        await eventually(lambda: _ready(first_obs), timeout=30, interval=0.2,
                         retry_on=(AssertionError, OSError))
        async with (subscriber(nats_server.url, DETECTIONS) as (_, sub),
                    running_collector(collector_config(
                        pg_db, f"127.0.0.1:{grpc_port}")) as (collector, obs)):
            async def judged(port: int, count: int) -> bool:
                return await accepted(port) >= count

            await eventually(lambda: judged(first_obs, 3), timeout=30, interval=0.2)
            os.kill(processes[0].pid, signal.SIGKILL)
            assert await asyncio.to_thread(processes[0].wait, 10) == -signal.SIGKILL
            killed_at = collector.sequence
            with workloads.idle_in_transaction(pg_db.conninfo) as held:
                # Rounds go on while nobody listens, and are kept (unacknowledged).
                await eventually(lambda: collector.sequence >= killed_at + 4, timeout=30)
                assert len(collector.buffer) >= 3
                assert not obs.health.report()["dependencies"]["analyser"]["ok"]
                with pytest.raises(TimeoutError):  # nobody to detect it
                    await sub.next_msg(timeout=0.1)
                restarted_at = collector.sequence

                second_obs = postgres.free_port()
                processes.append(spawn(config, second_obs, logs[1]))
                # The buffered rounds and the new ones reach the new process; the buffer
                # drains and nothing was dropped.
                await eventually(lambda: judged(second_obs, restarted_at - killed_at + 1),
                                 timeout=60, interval=0.2, retry_on=(AssertionError, OSError))
                await eventually(lambda: len(collector.buffer) <= 1, timeout=30)
                assert collector.buffer.dropped == 0
                assert obs.health.report()["dependencies"]["analyser"]["ok"]
                assert collector_metric(obs, "startupmonkey_collector_reconnects_total",
                                        target="analyser") >= 1
                # Detections resume: the new process detects the session idle since the
                # first process died.
                while True:
                    msg = await sub.next_msg(timeout=30)
                    detection = messages.parse_detection(msg.data)
                    if detection.detector is DetectorId.IDLE_IN_TRANSACTION:
                        break
                assert detection.target.pid == held.pid
                # A second snapshot of a sequence is never judged again as new: the new
                # process accepted each round at most once.
                taken = collector.sequence
                assert await accepted(second_obs) <= taken
        processes[1].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(processes[1].wait, 20) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
