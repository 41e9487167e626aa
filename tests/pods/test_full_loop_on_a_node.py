"""The full loop on real pods (issue 18, step 4), with approvals: the chart's operator (one
install for the session, tests/pods/conftest.py) renders the monitor's data plane, its
NATS, collector, analyser and executor run as containers from the image built here on the
node, reaching a PostgreSQL this test runs, and a person approves with `kubectl patch`.

- approval mode: a stuck session waits in PendingApproval and nothing runs; the executor
  container is killed and restarted by the kubelet meanwhile; the approval then runs the
  termination exactly once, and `kubectl get dbm` counts and names it.
- the example's policy (auto, ``ddl: approval``): a hot query on an unindexed column gets a
  CREATE INDEX CONCURRENTLY proposal (HypoPG's estimate in the test PostgreSQL), which waits
  for the approval, is built, measured before and after over a window, and kept.

Auto mode without approvals (a stuck session, stale statistics) is tests/pods/
test_chart_on_a_node.py."""

from __future__ import annotations

import psycopg
import pytest

from startupmonkey.localserv import postgres
from tests.pods.helpers import (
    Cluster,
    apply_monitor,
    approve,
    columns,
    kill_container,
    only_rem,
    pods_story,
    rems,
    start_data_plane,
    states,
)
from tests.support import workloads
from tests.support.eventually import wait_until

pytestmark = [pytest.mark.timeout(900)]


def test_approval_mode_waits_survives_an_executor_crash_and_runs_once(
        cluster: Cluster, namespace: str, pg_in_node: str, pg_db: postgres.PostgresDatabase,
        app_conninfo: str, login: tuple[str, str]) -> None:
    cp, node = cluster
    story = lambda: pods_story(cp, namespace)  # noqa: E731
    shown = lambda: f"kubectl get dbm: {columns(cp, namespace)}"  # noqa: E731
    apply_monitor(cp, namespace, pg_db.dbname, login, mode="approval")
    start_data_plane(cp, namespace)
    with workloads.idle_in_transaction(app_conninfo) as held:
        wait_until(lambda: ("terminate_session", "PendingApproval") in states(cp, namespace),
                   timeout=120, interval=1, what=story)
        # The executor crashes (SIGKILL from outside) and the kubelet restarts it: nothing is
        # lost, nothing runs.
        kill_container(cp, node, namespace, "executor")
        pending = only_rem(cp, namespace, "terminate_session")
        assert pending["status"]["state"] == "PendingApproval"
        # Nothing ran before the approval (looked up from outside: a round trip on the held
        # session itself would move it on, and the executor rightly refuses then).
        with psycopg.connect(app_conninfo, autocommit=True) as conn:
            still = conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s",
                                 (held.pid,)).fetchone()
        assert still == ("idle in transaction",)
        # The monitor's counts are written after the Remediation's change: wait for them.
        wait_until(lambda: columns(cp, namespace)["pending"] == "1", timeout=30, what=shown)
        name = pending["metadata"]["name"]
        approve(cp, namespace, name)
        wait_until(lambda: cp.kubectl_json("get", "rem", name, "-n", namespace)
                   ["status"]["state"] == "Succeeded", timeout=90, interval=1, what=story)
        assert not held.is_alive()
    final = cp.kubectl_json("get", "rem", name, "-n", namespace)["status"]
    assert [s["state"] for s in final["history"]].count("Running") == 1, final["history"]
    sessions = [r for r in rems(cp, namespace) if r["spec"]["action"] == "terminate_session"]
    assert len(sessions) == 1, "one occurrence, one Remediation, across the restart"
    wait_until(lambda: columns(cp, namespace)["last"].startswith("terminate_session"),
               timeout=30, what=shown)


def test_a_hot_query_on_an_unindexed_column_gets_its_index_approved_built_and_measured(
        cluster: Cluster, namespace: str, pg_in_node: str, pg_db: postgres.PostgresDatabase,
        app_conninfo: str, login: tuple[str, str]) -> None:
    cp, _node = cluster
    story = lambda: pods_story(cp, namespace)  # noqa: E731
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, email_hash int NOT NULL, "
                     "name text)")
        conn.execute("INSERT INTO accounts SELECT g, g * 7, 'n' || g "
                     "FROM generate_series(1, 60000) g")
        conn.execute("VACUUM ANALYZE accounts")
    apply_monitor(cp, namespace, pg_db.dbname, login, mode="auto",  # policy.ddl: approval
                  thresholds={"missing_index": {"minStatementTimePerSecond": 0.001}},
                  verification={"window": "8s", "minCalls": 10})
    start_data_plane(cp, namespace)
    with workloads.query_loop(app_conninfo,
                              "SELECT id, name FROM accounts WHERE email_hash = %s",
                              (7 * 1234,), rate=15, duration=400,
                              application_name="shop-web") as loop:
        # The example's policy: index builds (ddl) wait for a person, with the exact SQL.
        wait_until(lambda: ("create_index", "PendingApproval") in states(cp, namespace),
                   timeout=180, interval=1, what=story)
        pending = only_rem(cp, namespace, "create_index")
        assert pending["spec"]["sql"].startswith("CREATE INDEX CONCURRENTLY")
        approve(cp, namespace, pending["metadata"]["name"])
        wait_until(lambda: ("create_index", "Succeeded") in states(cp, namespace),
                   timeout=180, interval=1, what=story)
        assert loop.calls > 0 and not loop.errors, loop.errors[:1]
    rem = only_rem(cp, namespace, "create_index")
    spec, status = rem["spec"], rem["status"]
    assert spec["sql"].startswith("CREATE INDEX CONCURRENTLY") and "email_hash" in spec["sql"]
    assert spec["target"]["columns"] == ["email_hash"]
    # Built, valid, and in the database under the planned name.
    index_name = spec["sql"].split('"')[1]
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        valid = conn.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s", (index_name,)).fetchone()
    assert valid == (True,)
    # The story: pre-check numbers, the statement measured before and after, the verdict.
    assert status["before"]["cost_reduction"] >= 0.5
    assert status["decision"]["keep"] is True
    assert status["decision"]["improvement"] > 0.5
    assert status["executedSql"][0] == spec["sql"]
    assert [s["state"] for s in status["history"]] == [
        "PendingApproval", "Approved", "Running", "Verifying", "Succeeded"]
    listing = cp.kubectl("get", "rem", "-n", namespace).stdout
    assert "create_index" in listing and "Succeeded" in listing, listing
    wait_until(lambda: columns(cp, namespace)["last"].startswith("create_index"),
               timeout=30, what=lambda: f"kubectl get dbm: {columns(cp, namespace)}")
    assert columns(cp, namespace)["ready"] == "True"
