"""``startupmonkey analyser --config FILE --observability-port N`` as a real process: ready
when NATS and gRPC are up, JSON logs, thresholds hot-reloaded from the file, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import grpc.aio
import pytest

from startupmonkey import settings
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import messages
from startupmonkey.v1 import ingest_pb2_grpc
from tests.integration import test_analyser_ingest as ingest
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration
EXE = Path(sys.executable).with_name("startupmonkey")


def write_config(path: Path, nats_url: str, grpc_port: int, idle_limit: str) -> None:
    config = ingest.make_config(nats_url, idle_in_transaction={"maxDuration": idle_limit})
    assert config.analyser is not None
    config.analyser.listen_address = f"127.0.0.1:{grpc_port}"
    path.write_text(settings.dump(config))


def spawn(config: Path, obs_port: int, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(EXE), "analyser", "--config", str(config), "--observability-port", str(obs_port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


async def test_process_ready_hot_reload_and_sigterm(nats_server: NatsServer,
                                                    tmp_path: Path) -> None:
    grpc_port, obs_port = postgres.free_port(), postgres.free_port()
    config = tmp_path / "config.yaml"
    write_config(config, nats_server.url, grpc_port, "30m")
    stderr = (tmp_path / "stderr.log").open("wb")
    process = spawn(config, obs_port, stderr)
    try:
        async def ready() -> bool:
            return (await ingest.http_get(obs_port, "/readyz"))[0] == 200

        await eventually(ready, timeout=30, interval=0.2, retry_on=(AssertionError, OSError))
        async with (ingest.subscriber(nats_server.url) as (_, sub),
                    grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch):
            call = ingest_pb2_grpc.MetricsIngestStub(ch).Stream()
            await ingest.send(call, ingest.idle_snapshot(0, 1))  # idle 60s: fine under 30m
            await ingest.ack(call)
            write_config(config, nats_server.url, grpc_port, "30s")
            sequence = 2

            async def detected() -> messages.Detection:
                nonlocal sequence
                await ingest.send(call, ingest.idle_snapshot(sequence, sequence))
                await ingest.ack(call)
                sequence += 1
                msg = await sub.next_msg(timeout=0.5)
                return messages.parse_detection(msg.data)

            detection = await eventually(detected, timeout=20, interval=0.2,
                                         retry_on=(AssertionError, TimeoutError,
                                                   asyncio.TimeoutError))
            assert detection.target.pid == 4242
            call.cancel()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr.close()
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
