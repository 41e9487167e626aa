"""Idle-in-transaction sessions of one application and one user, one after the other,
through the whole product (``startupmonkey run -f``: the real collector, analyser, executor
and nats-server on the temporary PostgreSQL).

The real-pods tier reported a second such session, opened after the executor terminated the
first, as never detected. Here the second one is terminated like the first: the detection
key is the backend and its idle spell (``pid@backend_start/state_change``), never the user
or the application. What does keep a session from being detected is running statements in
its transaction: each one starts a new idle spell (PostgreSQL's own definition of idle, as
``idle_in_transaction_session_timeout`` uses it). ``HeldSession.is_alive()`` is such a
statement (``SELECT 1`` on the held connection), so a test that waits by polling it keeps
its session from ever being idle for ``maxDuration``; the last test here shows that
behaviour, and why these tests check liveness from another connection.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from startupmonkey.localserv import postgres
from tests.support import workloads
from tests.support.eventually import wait_until
from tests.support.product import run_f

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
APPLICATION = "smtest-same-app"
MAX_IDLE_S = 3


def _manifest(pg_db: postgres.PostgresDatabase) -> dict[str, object]:
    cluster = pg_db.cluster
    return {
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
        "metadata": {"name": "idle-in-turn", "namespace": "dev"},
        "spec": {
            "database": {"host": cluster.host, "port": cluster.port, "dbname": pg_db.dbname,
                         "credentialsSecret": {"name": "unused-standalone"}},
            "interval": "1s", "mode": "auto",
            "thresholds": {"idle_in_transaction": {"maxDuration": f"{MAX_IDLE_S}s"}},
        },
    }


@contextlib.contextmanager
def _product(pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
             tmp_path: Path) -> Iterator[Path]:
    """``startupmonkey run -f`` on ``pg_db``; yields its audit log. Stopped with SIGTERM; its
    output is attached to any failure of the block."""
    with run_f(_manifest(pg_db), pg_cluster.superuser, tmp_path) as run:
        yield run.audit


def _app(pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase) -> str:
    role = f"app_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_role(role)
    return pg_db.conninfo_for(role)


def _terminations(audit: Path) -> dict[str, dict[str, Any]]:
    """terminate_session Remediations of the JSONL audit log, by name (last version)."""
    found: dict[str, dict[str, Any]] = {}
    if audit.exists():
        for line in audit.read_text().splitlines():
            entry = json.loads(line)
            if (entry["kind"] == "Remediation"
                    and entry["object"]["spec"]["action"] == "terminate_session"):
                found[entry["object"]["metadata"]["name"]] = entry["object"]
    return found


def _of(audit: Path, pid: int) -> list[dict[str, Any]]:
    return [r for r in _terminations(audit).values() if r["spec"]["target"].get("pid") == pid]


def _terminated(audit: Path, database: postgres.PostgresDatabase, pid: int) -> bool:
    """The executor's Remediation for ``pid`` Succeeded and the backend is gone, checked from
    another connection (a statement on the held one would start a new idle spell)."""
    done = [r for r in _of(audit, pid) if r.get("status", {}).get("state") == "Succeeded"]
    assert done, f"no Succeeded terminate_session for pid {pid}: {_terminations(audit)}"
    with database.connect() as conn:
        left = conn.execute("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = %s",
                            (pid,)).fetchone()
    assert left == (0,), f"pid {pid} is still there"
    return True


def test_a_second_idle_session_of_the_same_application_and_user_is_terminated_too(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    app = _app(pg_cluster, pg_db)
    pids: list[int] = []
    with _product(pg_cluster, pg_db, tmp_path) as audit:
        for _ in range(2):
            # The second session opens only once the first one has been terminated.
            with workloads.idle_in_transaction(app, application_name=APPLICATION) as held:
                pids.append(held.pid)
                wait_until(lambda: _terminated(audit, pg_db, held.pid), timeout=90)
    first, second = pids
    assert first != second
    # One Remediation per session, each carried out, under different detection keys.
    records = [r for pid in pids for r in _of(audit, pid)]
    assert [r["status"]["state"] for r in records] == ["Succeeded", "Succeeded"], records
    assert len({r["spec"]["detectionKey"] for r in records}) == 2, records


def test_a_transaction_that_keeps_running_statements_is_not_idle(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    app = _app(pg_cluster, pg_db)
    with (_product(pg_cluster, pg_db, tmp_path) as audit,
          workloads.idle_in_transaction(app, application_name=APPLICATION) as busy):

        def busy_and_idle_terminated() -> bool:
            busy.connection.execute("SELECT 1")  # what HeldSession.is_alive() does
            return _terminated(audit, pg_db, idle.pid)

        with workloads.idle_in_transaction(app, application_name=APPLICATION) as idle:
            # Statements on `busy` at least every 0.2 s: its idle spells never last 3 s,
            # while the product, judging the very same snapshots, terminates `idle`.
            wait_until(busy_and_idle_terminated, timeout=90, interval=0.2)
        with pg_db.connect() as conn:
            open_for, state = conn.execute(
                "SELECT extract(epoch FROM now() - xact_start), state "
                "FROM pg_catalog.pg_stat_activity WHERE pid = %s", (busy.pid,)).fetchone()
        assert open_for > MAX_IDLE_S and state == "idle in transaction"
        assert busy.is_alive()
        assert _of(audit, busy.pid) == []
