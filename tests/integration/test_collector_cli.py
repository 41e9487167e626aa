"""``startupmonkey collector`` as a process, with the minimal role, and without pg_stat_statements.

The collector logs in as a role that has only ``pg_monitor``, with its password read from a
file (mode 0400), exactly as in a cluster; the password must appear in no log line. A database
without the pg_stat_statements extension still gets snapshots, which say why statements are
missing, and the collector stays ready.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from pathlib import Path

import pytest

from startupmonkey import settings
from startupmonkey.collector import service
from startupmonkey.localserv import postgres
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.integration.test_collector_ingest_server import (
    IngestRecorder,
    collector_config,
    ingest_server,
    running_collector,
)
from tests.support import components, workloads
from tests.support.chain import http_get as _get
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration
EXE = Path(sys.executable).with_name("startupmonkey")


@pytest.fixture
def monitor_role(pg_cluster: postgres.PostgresCluster, tmp_path: Path) -> tuple[str, str, Path]:
    """A login role with only pg_monitor, and its password in a 0400 file."""
    role = f"collector_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(18)
    pg_cluster.create_role(role, password=password, member_of=["pg_monitor"])
    password_file = tmp_path / "password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o400)
    yield role, password, password_file
    pg_cluster.drop_role(role)


async def test_cli_with_a_pg_monitor_role_collects_everything_and_never_logs_the_password(
        pg_db: postgres.PostgresDatabase, monitor_role: tuple[str, str, Path],
        tmp_path: Path) -> None:
    role, password, password_file = monitor_role
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 50) g")
        for n in range(5):
            conn.execute("SELECT * FROM items WHERE name = %s", (str(n),))
    obs_port = postgres.free_port()
    log_path = tmp_path / "collector.log"
    with workloads.idle_in_transaction(pg_db.conninfo) as idle:
        async with ingest_server() as server:
            config = collector_config(pg_db, server.address, user=role,
                                      password_file=password_file)
            config_path = tmp_path / "config.yaml"
            config_path.write_text(settings.dump(config))
            with log_path.open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    str(EXE), "collector", "--config", str(config_path),
                    "--observability-port", str(obs_port), "--log-level", "debug",
                    stdout=log, stderr=log)
                try:
                    await eventually(lambda: len(server.snapshots()) >= 2, timeout=60)
                    _, body = await eventually(
                        lambda: _ready(obs_port), timeout=20, retry_on=(AssertionError, OSError))
                    _, metrics_text = await _get(obs_port, "/metrics")
                finally:
                    if process.returncode is None:
                        process.send_signal(signal.SIGTERM)
                    code = await asyncio.wait_for(process.wait(), timeout=30)
            snap = server.latest()
            first = server.snapshots()[0]

    assert code == 0
    report = json.loads(body)
    assert report["ready"] and report["dependencies"]["database"]["ok"]
    assert report["dependencies"]["analyser"]["ok"]
    assert b"startupmonkey_collector_snapshots_sent_total" in metrics_text

    # Everything a pg_monitor role can read is there.
    assert snap.collector.can_read_all_stats
    assert all(s.state == pb.SECTION_STATE_OK for s in snap.collector.sections), \
        snap.collector.sections
    assert any(t.name == "items" and t.n_live_tup == 50 for t in snap.tables)
    assert any(i.name == "items_pkey" and i.size_bytes > 0 for i in snap.indexes)
    assert snap.statements_info.available and snap.statements
    assert any("FROM items WHERE name" in t.text
               for r in server.received for t in r.snapshot.statement_texts)
    other = next(s for s in snap.sessions if s.pid == idle.pid)
    assert other.state == "idle in transaction" and other.query == "SELECT 1"
    assert first.HasField("catalog") and any(c.name == "items" for c in first.catalog.relations)
    assert any(s.usename == role and s.application_name == "startupmonkey-collector"
               for s in snap.sessions)

    # JSON logs with the monitor's identity, and never the password.
    text = log_path.read_text()
    assert password not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines and all(e["namespace"] == "tests" and e["monitor"] == "shop" for e in lines)
    assert any(e["message"] == "connected to the database" for e in lines)
    assert any(e["message"] == "collector stopped" for e in lines)


async def _ready(port: int) -> tuple[int, bytes]:
    status, body = await _get(port, "/readyz")
    assert status == 200, body
    return status, body


async def test_cli_refuses_a_config_without_collector_block(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("monitor: {namespace: a, name: b}\n"
                    "spec: {database: {host: h, dbname: d, credentialsSecret: {name: s}}}\n")
    process = await asyncio.create_subprocess_exec(
        str(EXE), "collector", "--config", str(path), stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert b"no collector block" in stderr


async def test_wrong_password_is_reported_without_echoing_it(
        pg_db: postgres.PostgresDatabase, monitor_role: tuple[str, str, Path],
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    role, password, _ = monitor_role
    wrong = tmp_path / "wrong"
    wrong.write_text("not-" + password)
    os.chmod(wrong, 0o400)
    async with ingest_server() as server:
        config = collector_config(pg_db, server.address, user=role, password_file=wrong)
        async with running_collector(config) as (_, obs):
            received = await eventually(lambda: server.snapshots(connected=False), timeout=30)
            detail = obs.health.report()["dependencies"]["database"]
    error = received[0].collector.connection_error
    assert "password authentication failed" in error and not received[0].collector.sections
    assert not detail["ok"] and "password authentication failed" in detail["detail"]
    assert password not in caplog.text and password not in error


async def test_without_pg_stat_statements_snapshots_say_why_and_the_collector_stays_ready(
        pg_db: postgres.PostgresDatabase) -> None:
    with pg_db.connect() as conn:
        conn.execute("DROP EXTENSION pg_stat_statements")
        conn.execute("CREATE TABLE t (id int)")
    async with (ingest_server() as server,
                running_collector(collector_config(pg_db, server.address)) as (_, obs)):
        await eventually(lambda: len(server.snapshots()) >= 2, timeout=30)
        report = obs.health.report()
    snap = server.latest()
    assert not snap.statements_info.available
    assert "pg_stat_statements is not installed" in snap.statements_info.unavailable_reason
    assert not snap.statements and not snap.statement_texts
    states = {s.section: s for s in snap.collector.sections}
    assert states[pb.SECTION_STATEMENTS].state == pb.SECTION_STATE_UNAVAILABLE
    assert states[pb.SECTION_TABLES].state == pb.SECTION_STATE_OK
    assert any(t.name == "t" for t in snap.tables)
    assert report["ready"]
    assert "pg_stat_statements" in report["dependencies"]["database"]["detail"]


async def test_pg_stat_statements_not_preloaded_is_reported_as_unavailable(
        pg_private_cluster_factory: components.PrivateClusterFactory) -> None:
    cluster = pg_private_cluster_factory(settings={"shared_preload_libraries": ""})
    database = cluster.create_database("app")  # the extension exists, the library is not loaded
    async with (ingest_server() as server,
                running_collector(collector_config(database, server.address)) as (_, obs)):
        await eventually(lambda: len(server.snapshots()) >= 1, timeout=30)
        report = obs.health.report()
    snap = server.latest()
    assert not snap.statements_info.available
    assert "shared_preload_libraries" in snap.statements_info.unavailable_reason
    assert snap.statements_info.extension_version == ""
    assert report["ready"]


def _replace(path: Path, text: str) -> None:
    """Write ``path`` whole at once, as Kubernetes swaps a mounted ConfigMap (a reader never
    sees half a file)."""
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    part.replace(path)


def _stream_state(collector: service.Collector, recorder: IngestRecorder) -> str:
    """Where the collector's stream stands, for a failure message."""
    stream = collector.stream
    errors = {r.snapshot.collector.connection_error for r in recorder.received} - {""}
    return (f"a snapshot with data at {recorder.address} (stream address {stream.address}, "
            f"streams opened {stream.streams_opened}, buffered {collector.buffer.sequences()}, "
            f"health {collector.health.report()}, "
            f"received there {len(recorder.received)}, connection errors {sorted(errors)})")


async def test_config_changes_are_taken_into_use_without_a_restart(
        pg_db: postgres.PostgresDatabase, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    async with ingest_server() as first, ingest_server() as second:
        config = collector_config(pg_db, first.address, top_statements=50)
        path.write_text(settings.dump(config))
        async with running_collector(config, config_path=path) as (collector, _):
            await eventually(lambda: len(first.snapshots()) >= 1, timeout=30)
            changed = collector_config(pg_db, second.address, interval="2s",
                                       buffer_snapshots=5, top_statements=7)
            assert changed.collector is not None
            changed.collector.query_timeout = "1500ms"
            _replace(path, settings.dump(changed))
            await eventually(lambda: collector.buffer.capacity == 5, timeout=20)
            assert collector.interval == 2.0
            assert collector.options.query_timeout_ms == 1500
            assert collector.options.top_statements == 7
            # A new analyser address: the stream moves there.
            await eventually(lambda: len(second.snapshots()) >= 1, timeout=30,
                             what=lambda: _stream_state(collector, second))
