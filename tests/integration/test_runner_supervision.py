"""``startupmonkey run`` watches its own children (issue 23.7): the embedded nats-server
SIGKILLed under a real run is restarted, the run says so in its output (no tracebacks) and in
the final state, and problems that appear after the restart are still fixed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
import yaml

from startupmonkey.localserv import postgres
from tests.support.eventually import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
EXE = Path(sys.executable).with_name("startupmonkey")


class Output:
    """The run's output, read line by line as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        self._reader = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._reader.start()

    def has(self, fragment: str) -> bool:
        return any(fragment in line for line in list(self.lines))

    def text(self) -> str:
        return "".join(self.lines)


def _nats_pid(run_pid: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == run_pid and b"nats-server" in cmdline:
            return int(entry.name)
    return None


def _audit(path: Path) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(line)
        if entry["kind"] == "Remediation":
            obj = entry["object"]
            found[obj["spec"]["target"].get("table", "")] = (obj["spec"]["action"],
                                                            obj["status"]["state"])
    return found


def _stale_table(conninfo: str, name: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int) WITH (autovacuum_enabled = off)")  # type: ignore[arg-type]
        conn.execute(f"INSERT INTO {name} SELECT generate_series(1, 5000)")  # type: ignore[arg-type]


def test_a_killed_nats_server_is_restarted_and_work_goes_on(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    cluster = pg_cluster
    manifest = {
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
        "metadata": {"name": "supervised", "namespace": "dev"},
        "spec": {"database": {"host": cluster.host, "port": cluster.port,
                              "dbname": pg_db.dbname,
                              "credentialsSecret": {"name": "unused-standalone"}},
                 "interval": "1s", "mode": "auto",
                 "thresholds": {"stale_statistics": {"minModifiedRows": 500}}}}
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(manifest))
    audit, state = tmp_path / "audit.jsonl", tmp_path / "state.json"
    _stale_table(pg_db.conninfo, "before_kill")
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    proc = subprocess.Popen(
        [str(EXE), "run", "-f", str(path), "--plain", "--user", cluster.superuser,
         "--audit-log", str(audit), "--state-file", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        text=True)
    output = Output(proc)
    try:
        wait_until(lambda: _audit(audit).get("before_kill") == ("analyze", "Succeeded"),
                   timeout=120)
        killed = wait_until(lambda: _nats_pid(proc.pid), timeout=10)
        os.kill(killed, signal.SIGKILL)

        wait_until(lambda: output.has("nats-server restarted"), timeout=60)
        restarted = wait_until(lambda: _nats_pid(proc.pid), timeout=10)
        _stale_table(pg_db.conninfo, "after_kill")
        wait_until(lambda: _audit(audit).get("after_kill") == ("analyze", "Succeeded"),
                   timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
        output._reader.join(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    text = output.text()
    assert proc.returncode == 0, text
    assert restarted != killed
    assert "nats-server exited (exit code -9); restarting it in 1 s" in text
    assert "Traceback" not in text, text
    final = json.loads(state.read_text())
    assert [(e["child"], e["event"]) for e in final["supervision"]] == [
        ("nats-server", "exited"), ("nats-server", "restarted")], (final["supervision"], text)
    assert final["supervision"][0]["exitCode"] == -9
    assert final["stoppedBecause"] == "asked to stop (SIGINT or SIGTERM)"
