"""``startupmonkey events --executor <address>`` follows a real ``startupmonkey run`` (review
finding: run never wrote the watcher login, so the documented mode could not work): the
address run prints is enough, the login file is private to the user, and the feed is read-only
(the watcher login) and sees the run's own detections."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import psycopg
import pytest

from startupmonkey import events
from startupmonkey.localserv import postgres
from tests.integration import test_runner as runner_test
from tests.integration.test_run_database_state import Run, _manifest
from tests.integration.test_runner_supervision import Output
from tests.support.eventually import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_events_follows_a_run_from_the_address_it_printed(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    run = Run(tmp_path, _manifest(tmp_path, pg_cluster.host, pg_cluster.port, pg_db.dbname),
              pg_cluster.superuser)
    try:
        _follow(run, pg_db)
    finally:
        run.stop()


def _follow(run: Run, pg_db: postgres.PostgresDatabase) -> None:
    (started,) = run.wait_for("running analyser, executor, collector")
    address = started.rsplit("startupmonkey events --executor ", 1)[1].strip()
    folder = Path(address.removeprefix("unix://")).parent
    login = folder / events.CONNECTION_FILE
    assert stat.S_IMODE(login.stat().st_mode) == 0o600
    assert json.loads(login.read_text())["user"] == "watcher"
    feed = subprocess.Popen([str(runner_test.EXE), "events", "--executor", address, "-o",
                             "json"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    output = Output(feed)
    try:
        wait_until(lambda: "following startupmonkey.v1.dev.db-state" in output.text(),
                   timeout=60, what=output.text)
        # A problem the run detects: a table never analysed, with rows changed. Autovacuum is
        # off for it: under load, autovacuum's own ANALYZE came first once (T1, 6 Dec), and
        # then there was nothing left to detect.
        with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE fresh (id int) WITH (autovacuum_enabled = off)")
            conn.execute("INSERT INTO fresh SELECT generate_series(1, 2000)")

        def detection() -> list[dict[str, object]]:
            lines = [json.loads(line) for line in output.text().splitlines()
                     if line.startswith("{")]
            return [line for line in lines if ".detections." in str(line.get("subject"))]

        wait_until(detection, timeout=120, what=output.text)
    finally:
        feed.terminate()
        feed.wait(timeout=30)
        output._reader.join(timeout=10)
        assert feed.stdout is not None
        feed.stdout.close()
    run.stop()
    assert not login.exists()  # removed with run's work folder
