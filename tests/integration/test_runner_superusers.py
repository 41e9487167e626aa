"""``startupmonkey run`` says at start when sessions of the watched database log in as a
superuser (issue 17, item 4), from the executor's own query as the executor's login sees it,
so the user learns it before a remediation is refused."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psycopg
import pytest
import yaml

from startupmonkey.localserv import postgres
from tests.integration import test_runner as runner_test
from tests.support.eventually import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _run_until_started(pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
                       tmp_path: Path, protect: bool) -> str:
    """Start ``startupmonkey run``, stop it once its first child is up, return its output."""
    spec = runner_test._manifest(pg_db)
    inner = spec["spec"]
    assert isinstance(inner, dict)
    inner["protect"] = {"superusers": protect}
    manifest = tmp_path / "monitor.yaml"
    manifest.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    proc = subprocess.Popen(
        [str(runner_test.EXE), "run", "-f", str(manifest), "--plain", "--user",
         pg_cluster.superuser, "--audit-log", str(tmp_path / "audit.jsonl"),
         "--state-file", str(tmp_path / "state.json")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=env, text=True)
    try:
        wait_until(lambda: runner_test._children_of(proc.pid), timeout=60)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    return output


@pytest.mark.parametrize("protect", [True, False])
def test_run_names_superuser_logins_of_the_watched_database_at_start(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path, protect: bool) -> None:
    # The application logs in as the cluster's superuser, as small teams often do.
    with psycopg.connect(pg_db.conninfo, autocommit=True, application_name="shop-app"):
        output = _run_until_started(pg_cluster, pg_db, tmp_path, protect)
    notes = [line for line in output.splitlines() if line.startswith("note: ")]
    assert notes, output
    (note,) = notes
    assert (f"sessions of the watched database log in as superuser(s) "
            f"{pg_cluster.superuser};") in note
    if protect:
        assert "spec.protect.superusers is true (the default)" in note
    else:  # the run logs the executor in as the superuser too
        assert "spec.protect.superusers is false and the executor is a superuser" in note
    # Before the components start: the notice is the first thing said.
    assert output.splitlines()[0] == note, output


def test_run_says_nothing_when_no_session_logs_in_as_a_superuser(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    output = _run_until_started(pg_cluster, pg_db, tmp_path, True)
    assert "log in as superuser" not in output, output
