"""``startupmonkey analyser --config FILE --observability-port N`` as a real process, fed by a
real collector reading a real PostgreSQL: ready when NATS and gRPC are up, JSON logs,
thresholds hot-reloaded from the file, clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import pytest

from startupmonkey import settings
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import messages
from startupmonkey.models.enums import DetectorId
from tests.integration.test_analyser_ingest import DETECTIONS, analyser_config
from tests.integration.test_collector_ingest_server import collector_config, running_collector
from tests.integration.test_collector_ingest_server import metric as collector_metric
from tests.support import workloads
from tests.support.chain import http_get, subscriber
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration
EXE = Path(sys.executable).with_name("startupmonkey")


def write_config(path: Path, nats_url: str, grpc_port: int, idle_limit: str) -> None:
    config = analyser_config(nats_url, listen_address=f"127.0.0.1:{grpc_port}",
                             idle_in_transaction={"maxDuration": idle_limit})
    path.write_text(settings.dump(config))


def spawn(config: Path, obs_port: int, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(EXE), "analyser", "--config", str(config), "--observability-port", str(obs_port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


@dataclasses.dataclass
class AnalyserProcess:
    """A running ``startupmonkey analyser`` and the config file it watches."""

    process: subprocess.Popen[bytes]
    config: Path
    nats_url: str
    grpc_port: int
    obs_port: int

    def rewrite(self, idle_limit: str) -> None:
        """Write the config again with another idle-in-transaction limit (hot reload)."""
        write_config(self.config, self.nats_url, self.grpc_port, idle_limit)


@contextlib.asynccontextmanager
async def analyser_process(nats_url: str, tmp_path: Path, idle_limit: str = "30m"
                           ) -> AsyncIterator[AnalyserProcess]:
    """``startupmonkey analyser`` as a process on free ports, its config in
    ``tmp_path/config.yaml`` and its stderr in ``tmp_path/stderr.log``; yielded once /readyz
    answers 200, terminated at the end unless it has already exited."""
    grpc_port, obs_port = postgres.free_port(), postgres.free_port()
    config = tmp_path / "config.yaml"
    write_config(config, nats_url, grpc_port, idle_limit)
    with (tmp_path / "stderr.log").open("wb") as stderr:
        process = spawn(config, obs_port, stderr)
        try:
            async def ready() -> bool:
                return (await http_get(obs_port, "/readyz"))[0] == 200

            await eventually(ready, timeout=30, interval=0.2, retry_on=(AssertionError, OSError))
            yield AnalyserProcess(process, config, nats_url, grpc_port, obs_port)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def accepted(obs_port: int) -> float:
    """startupmonkey_analyser_snapshots_total{status="accepted"} from the process's /metrics."""
    _, body = await http_get(obs_port, "/metrics")
    prefix = 'startupmonkey_analyser_snapshots_total{status="accepted"} '
    lines = [line for line in body.decode().splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


async def test_process_ready_hot_reload_and_sigterm(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    async with analyser_process(nats_server.url, tmp_path) as analyser:
        with workloads.idle_in_transaction(pg_db.conninfo) as held:
            async with (subscriber(nats_server.url, DETECTIONS) as (_, sub),
                        running_collector(collector_config(
                            pg_db, f"127.0.0.1:{analyser.grpc_port}")) as (_, obs)):
                # Idle for seconds: fine under 30m, however many snapshots are judged.
                async def judged() -> bool:
                    return await accepted(analyser.obs_port) >= 4
                await eventually(judged, timeout=30, interval=0.2)

                # The analyser counts a snapshot before its ack has reached the collector.
                def acked() -> bool:
                    return collector_metric(obs, "startupmonkey_collector_acks_total",
                                            status="accepted") >= 4
                await eventually(acked, timeout=30, interval=0.2)
                with pytest.raises(TimeoutError):
                    await sub.next_msg(timeout=0.5)
                analyser.rewrite("2s")  # hot reload
                msg = await sub.next_msg(timeout=30)
        detection = messages.parse_detection(msg.data)
        assert detection.detector is DetectorId.IDLE_IN_TRANSACTION
        assert detection.target.pid == held.pid
        analyser.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(analyser.process.wait, 20) == 0
    lines = [json.loads(line) for line in (tmp_path / "stderr.log").read_text().splitlines()]
    assert all(line["component"] == "analyser" and line["monitor"] == "shop" for line in lines)
    assert any("thresholds reloaded" in line["message"] for line in lines)
    assert any("analyser stopped" in line["message"] for line in lines)


def test_a_bad_config_exits_non_zero_saying_why(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("monitor: {namespace: prod}\n")
    result = subprocess.run([str(EXE), "analyser", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "monitor.name" in result.stderr
