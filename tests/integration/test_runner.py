"""``startupmonkey run -f`` end to end on the temporary PostgreSQL: real workloads, the real
collector, analyser, executor and embedded nats-server as child processes; the audit log, the
final-state file, and a clean stop on SIGTERM with no process left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml

from startupmonkey.localserv import postgres
from tests.support import workloads
from tests.support.eventually import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
EXE = Path(sys.executable).with_name("startupmonkey")


def _manifest(pg_db: postgres.PostgresDatabase) -> dict[str, object]:
    cluster = pg_db.cluster
    return {
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
        "metadata": {"name": "runner-test", "namespace": "dev"},
        "spec": {
            "database": {"host": cluster.host, "port": cluster.port, "dbname": pg_db.dbname,
                         "credentialsSecret": {"name": "unused-standalone"}},
            "interval": "1s",
            "thresholds": {"idle_in_transaction": {"maxDuration": "3s"},
                           "stale_statistics": {"minModifiedRows": 500}},
        },
    }


def _audit_states(path: Path) -> dict[str, tuple[str, str]]:
    """Remediation name -> (action, last state) from the JSONL audit log."""
    found: dict[str, tuple[str, str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["kind"] == "Remediation":
                obj = entry["object"]
                found[obj["metadata"]["name"]] = (obj["spec"]["action"],
                                                  obj["status"]["state"])
    return found


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_run_fixes_real_problems_and_stops_cleanly(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_role(role)
    with pg_db.connect() as conn:
        conn.execute(f'GRANT ALL ON SCHEMA public TO "{role}"')  # type: ignore[arg-type]
    app = pg_db.conninfo_for(role)
    with psycopg.connect(app, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int) WITH (autovacuum_enabled = off)")
        conn.execute("INSERT INTO items SELECT generate_series(1, 5000)")
    manifest = tmp_path / "monitor.yaml"
    manifest.write_text(yaml.safe_dump(_manifest(pg_db)))
    audit, state = tmp_path / "audit.jsonl", tmp_path / "state.json"
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    with workloads.idle_in_transaction(app) as held:
        proc = subprocess.Popen(
            [str(EXE), "run", "-f", str(manifest), "--plain", "--user", pg_cluster.superuser,
             "--audit-log", str(audit), "--state-file", str(state)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, text=True)
        wanted = {("analyze", "Succeeded"), ("terminate_session", "Succeeded")}
        problem: AssertionError | None = None
        children: list[int] = []
        try:
            wait_until(lambda: wanted <= set(_audit_states(audit).values()), timeout=120)
            children = _children_of(proc.pid)
        except AssertionError as exc:
            problem = exc
        finally:
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=60)
        assert problem is None, f"{problem}\nrun output:\n{output}\naudit: {_audit_states(audit)}"
        assert len(children) >= 4, "collector, analyser, executor and nats-server"
        assert proc.returncode == 0, output
        assert not held.is_alive()
    lines = output.splitlines()
    assert any("detected idle_in_transaction" in line for line in lines), output
    assert any("terminate_session -> Succeeded" in line for line in lines), output
    for child in children:
        assert not Path(f"/proc/{child}").exists(), f"child {child} left running"
    final = json.loads(state.read_text())
    assert final["monitor"] == {"namespace": "dev", "name": "runner-test"}
    assert final["database"]["reachable"] is True
    actions = {r["spec"]["action"] for r in final["remediations"].values()}
    assert actions >= {"analyze", "terminate_session"}
    assert {d["detector"] for d in final["detections"]} >= {"idle_in_transaction",
                                                            "stale_statistics"}


def _work_folders(tmp: Path) -> set[Path]:
    """The runner's work folder and the embedded nats-server's (both hold a password)."""
    return set(tmp.glob("startupmonkey-*")) | set(tmp.glob("smnats-*"))


def test_ctrl_c_while_starting_and_again_while_stopping_still_stops_cleanly(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    manifest = tmp_path / "monitor.yaml"
    manifest.write_text(yaml.safe_dump(_manifest(pg_db)))
    state = tmp_path / "state.json"
    # A private TMPDIR: what is left there is this run's own, whatever else runs at once.
    private = Path(tempfile.mkdtemp(prefix="smrun-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    env["TMPDIR"] = str(private)
    proc = subprocess.Popen(
        [str(EXE), "run", "-f", str(manifest), "--plain", "--user", pg_cluster.superuser,
         "--audit-log", str(tmp_path / "audit.jsonl"), "--state-file", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=env, text=True)
    try:
        # The first child (nats-server) is up: the plane is still starting the others.
        children = wait_until(lambda: _children_of(proc.pid), timeout=60)
        proc.send_signal(signal.SIGINT)
        # A second, impatient signal right after must not cut the stop short.
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "stopped; audit log" in output, output
    assert json.loads(state.read_text())["monitor"]["name"] == "runner-test"
    for child in children:
        assert not Path(f"/proc/{child}").exists(), f"child {child} left running"
    left = _work_folders(private)
    shutil.rmtree(private, ignore_errors=True)
    assert left == set(), "a folder with a password was left behind"
