"""``startupmonkey run --plain`` says the state of the database (issue 21, item 2), on real
components: against a port where nothing listens it starts anyway, says why in words and that
it keeps retrying, and with ``--give-up-after`` exits 1 with the reason; against a real server
it says "reachable" once, not at every check; a server that goes away and comes back is a line
each time; a wrong PGPASSWORD is the state, named as such."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from startupmonkey.localserv import postgres
from tests.integration import test_runner as runner_test
from tests.integration.test_runner_supervision import Output
from tests.support import components
from tests.support.eventually import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _manifest(tmp_path: Path, host: str, port: int, dbname: str) -> Path:
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
        "metadata": {"name": "db-state", "namespace": "dev"},
        "spec": {"database": {"host": host, "port": port, "dbname": dbname,
                              "credentialsSecret": {"name": "unused-standalone"}},
                 "interval": "1s"}}))
    return path


class Run:
    """A ``startupmonkey run --plain`` process with its output read as it comes."""

    def __init__(self, tmp_path: Path, manifest: Path, user: str, *extra: str,
                 password: str | None = None) -> None:
        self.audit, self.state = tmp_path / "audit.jsonl", tmp_path / "state.json"
        env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
        if password is not None:
            env["PGPASSWORD"] = password  # the environment, never argv
        self.proc = subprocess.Popen(
            [str(runner_test.EXE), "run", "-f", str(manifest), "--plain", "--user", user,
             "--audit-log", str(self.audit), "--state-file", str(self.state), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, text=True)
        self.output = Output(self.proc)
        self.children: list[int] = []

    def lines(self, start: str) -> list[str]:
        """The output lines whose text (after the time stamp) starts with ``start``."""
        return [line.split(" ", 1)[1].rstrip("\n") for line in list(self.output.lines)
                if line[:2].isdigit() and line.split(" ", 1)[1].startswith(start)]

    def wait_for(self, start: str, timeout: float = 90) -> list[str]:
        return wait_until(lambda: self.lines(start), timeout=timeout,
                          what=lambda: f"a line starting {start!r} in:\n{self.output.text()}")

    def executor_reports(self) -> list[dict[str, object]]:
        """The executor's database reports in the audit log, oldest first."""
        found = []
        for line in self.audit.read_text().splitlines() if self.audit.exists() else []:
            entry = json.loads(line)
            if entry["kind"] == "Database":
                found.append(entry["status"])
        return found

    def stop(self) -> None:
        """SIGTERM (when still running) and wait for the end, the output read to its end."""
        if self.proc.poll() is None:
            self.children = runner_test._children_of(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.output._reader.join(timeout=10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()

    def final_state(self) -> dict[str, object]:
        state: dict[str, object] = json.loads(self.state.read_text())
        return state


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """The runs a test starts, each stopped at the end also when the test fails."""
    started: list[Run] = []
    yield started
    for run in started:
        run.stop()


def test_nothing_listening_is_said_in_words_with_retries(tmp_path: Path,
                                                          runs: list[Run]) -> None:
    port = postgres.free_port()
    run = Run(tmp_path, _manifest(tmp_path, "127.0.0.1", port, "shop"), "nobody")
    runs.append(run)
    (state,) = run.wait_for("database unreachable: ")
    assert state.startswith(f'database unreachable: connection refused (connection failed: '
                            f'connection to server at "127.0.0.1", port {port} failed: '
                            "Connection refused"), state
    retry = run.wait_for("database still unreachable (connection refused) since ")[0]
    assert retry.endswith("; retrying"), retry
    # The executor's own report, in the audit log, has the same words: no second line.
    wait_until(run.executor_reports, timeout=60, what=run.output.text)
    running = run.wait_for("running analyser, executor, collector")
    run.stop()
    assert run.proc.returncode == 0, run.output.text()
    assert run.lines("database unreachable: ") == [state], run.output.text()
    assert len(running) == 1
    final = run.final_state()
    assert final["stoppedBecause"] == "asked to stop (SIGINT or SIGTERM)"
    database = final["database"]
    assert isinstance(database, dict) and database["reachable"] is False
    assert "Connection refused" in database["lastError"]


def test_give_up_after_exits_1_with_the_reason(tmp_path: Path, runs: list[Run]) -> None:
    port = postgres.free_port()
    run = Run(tmp_path, _manifest(tmp_path, "127.0.0.1", port, "shop"), "nobody",
              "--give-up-after", "5")
    runs.append(run)
    (state,) = run.wait_for("database unreachable: ")
    (gave_up,) = run.wait_for("giving up: ", timeout=120)
    wait_until(lambda: run.proc.poll() is not None, timeout=90, what=run.output.text)
    run.stop()
    reason = ("the database was not reachable within 5 s of the start (--give-up-after 5); "
              f"{state}")
    assert gave_up == f"giving up: {reason}", run.output.text()
    assert run.proc.returncode == 1, run.output.text()
    assert run.final_state()["stoppedBecause"] == reason
    assert "Traceback" not in run.output.text(), run.output.text()


def test_a_database_that_goes_away_and_comes_back_is_a_line_each_time(
        tmp_path: Path, runs: list[Run],
        pg_private_cluster_factory: components.PrivateClusterFactory) -> None:
    cluster = pg_private_cluster_factory()
    run = Run(tmp_path, _manifest(tmp_path, cluster.host, cluster.port, "postgres"),
              cluster.superuser)
    runs.append(run)
    with cluster.connect() as conn:
        row = conn.execute("SHOW server_version").fetchone()
    assert row is not None
    (reachable,) = run.wait_for("database reachable: PostgreSQL ")
    assert reachable.startswith(f"database reachable: PostgreSQL {row[0]}, primary"), reachable
    # The executor has checked it too (the same words: no new line), then it goes away.
    wait_until(lambda: any(r["reachable"] for r in run.executor_reports()), timeout=90,
               what=run.output.text)
    cluster.stop()
    (gone,) = run.wait_for("database unreachable: ")
    assert gone.startswith("database unreachable: connection refused ("), gone
    # Every report before it was read, in order: "reachable" was said once, not per check.
    assert run.lines("database reachable: ") == [reachable], run.output.text()
    run.wait_for("database still unreachable (connection refused) since ")
    cluster.start()
    wait_until(lambda: len(run.lines("database reachable: ")) == 2, timeout=90,
               what=run.output.text)
    run.stop()
    assert run.proc.returncode == 0, run.output.text()
    assert run.lines("database reachable: ") == [reachable, reachable]
    assert run.lines("database unreachable: ") == [gone]
    for child in run.children:
        assert not Path(f"/proc/{child}").exists(), f"child {child} left running"


def test_a_wrong_pgpassword_is_the_state_and_says_where_it_came_from(
        tmp_path: Path, runs: list[Run], pg_cluster: postgres.PostgresCluster,
        pg_db: postgres.PostgresDatabase) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_role(role, secrets.token_urlsafe(16))
    run = Run(tmp_path, _manifest(tmp_path, pg_cluster.host, pg_cluster.port, pg_db.dbname),
              role, password=secrets.token_urlsafe(16))
    runs.append(run)
    (state,) = run.wait_for("database unreachable: ")
    assert state.startswith("database unreachable: wrong password (connection failed: "), state
    assert f'password authentication failed for user "{role}"' in state, state
    assert state.endswith("); the password comes from PGPASSWORD"), state
    run.wait_for("database still unreachable (wrong password) since ")
    run.stop()
    assert run.proc.returncode == 0, run.output.text()
