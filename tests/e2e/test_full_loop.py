"""End to end on the real control plane: helm install, kubectl apply a DatabaseMonitor (the
example manifest, pointed at the temporary PostgreSQL), the operator renders the data plane,
its Deployments run as local processes, real workloads create problems, and the story is read
with kubectl get."""

from __future__ import annotations

import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from startupmonkey.localserv import postgres
from tests.support import podrunner, workloads
from tests.support.controlplane import ControlPlane
from tests.support.eventually import wait_until
from tests.support.operator_helpers import CHART, Operator, helm, start_with_chart_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "monitor.yaml"


@pytest.fixture
def operator(control_plane: ControlPlane, namespace: str,
             tmp_path: Path) -> Iterator[Operator]:
    """The chart installed in the test namespace and its operator running with the chart's
    ServiceAccount token and the chart's environment."""
    cp = control_plane
    release = f"sm-{uuid.uuid4().hex[:6]}"
    helm(cp, "install", release, str(CHART), "-n", namespace)
    fullname = f"{release}-startupmonkey"
    deployment = cp.kubectl_json("get", "deployment", fullname, "-n", namespace)
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    kubeconfig = cp.kubeconfig_for_token(cp.mint_token(namespace, fullname),
                                         tmp_path / "operator.kubeconfig")
    running = start_with_chart_env(cp, kubeconfig, namespace, env, tmp_path / "operator.log")
    yield running
    assert running.stop() == 0, running.text()[-3000:]
    helm(cp, "uninstall", release, "-n", namespace, check=False)


@pytest.fixture
def login(pg_cluster: postgres.PostgresCluster, app_conninfo: str) -> tuple[str, str]:
    """A password login with exactly the executor's documented privileges."""
    owner = app_conninfo.split("user=")[1].split()[0]
    user, password = f"sm_{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    pg_cluster.create_role(user, password,
                           member_of=["pg_monitor", "pg_signal_backend", owner])
    return user, password


def _apply_monitor(cp: ControlPlane, namespace: str, pg_db: postgres.PostgresDatabase,
                   login: tuple[str, str], mode: str, **spec_fields: Any) -> None:
    user, password = login
    subprocess.run([str(cp.binaries.kubectl), "create", "secret", "generic", "shop-db",
                    "-n", namespace, f"--from-literal=username={user}",
                    "--from-file=password=/dev/stdin"], input=password, text=True,
                   env=cp.env(), check=True, capture_output=True, timeout=60)
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["namespace"] = namespace
    spec = manifest["spec"]
    spec["database"].update(host=pg_db.cluster.host, port=pg_db.cluster.port,
                            dbname=pg_db.dbname, sslMode="disable")
    spec.update(interval="1s", mode=mode)
    spec["thresholds"] = {"idle_in_transaction": {"maxDuration": "3s"},
                          "stale_statistics": {"minModifiedRows": 500}}
    spec.update(spec_fields)
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def _rems(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cp.kubectl_json("get", "rem", "-n", namespace)["items"]
    return items


def _states(cp: ControlPlane, namespace: str) -> set[tuple[str, str]]:
    return {(r["spec"]["action"], r.get("status", {}).get("state", "")) for r in
            _rems(cp, namespace)}


def _story(cp: ControlPlane, namespace: str, plane: podrunner.DataPlane) -> str:
    """What a failed wait shows: every Remediation's state and message, then the logs."""
    lines = [f"{r['spec']['action']} {r.get('status', {}).get('state')}: "
             f"{r.get('status', {}).get('message')}" for r in _rems(cp, namespace)]
    return "remediations:\n" + "\n".join(lines or ["(none)"]) + \
        f"\ndata plane logs:\n{plane.logs()}"


def _columns(cp: ControlPlane, namespace: str) -> dict[str, str]:
    """What ``kubectl get dbm shop`` prints, read by column (the CRD's printer columns)."""
    shown = cp.kubectl("get", "dbm", "shop", "-n", namespace, "--no-headers", "-o",
                       "custom-columns=READY:.status.conditions[?(@.type==\"Ready\")].status,"
                       "FIXED:.status.remediations.succeeded,"
                       "PENDING:.status.remediations.pendingApproval,"
                       "LAST:.status.remediations.lastAction").stdout.strip().split(None, 3)
    return dict(zip(("ready", "fixed", "pending", "last"), shown, strict=True))


def _data_plane(cp: ControlPlane, namespace: str, tmp_path: Path) -> podrunner.DataPlane:
    def rendered() -> bool:
        found = cp.kubectl_json("get", "deployments", "-n", namespace, "-l",
                                "startupmonkey.dev/monitor=shop")["items"]
        return len(found) == 4

    wait_until(rendered, timeout=60, what="the operator's Deployments")
    plane = podrunner.DataPlane(cp, namespace, "shop", tmp_path / "plane")
    plane.start()
    return plane


def test_auto_mode_fixes_real_problems_and_kubectl_tells_the_story(
        control_plane: ControlPlane, namespace: str, operator: Operator,
        pg_db: postgres.PostgresDatabase, app_conninfo: str, login: tuple[str, str],
        tmp_path: Path) -> None:
    cp = control_plane
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int) WITH (autovacuum_enabled = off)")
        conn.execute("INSERT INTO items SELECT generate_series(1, 5000)")
    _apply_monitor(cp, namespace, pg_db, login, mode="auto")
    plane = _data_plane(cp, namespace, tmp_path)
    try:
        with workloads.idle_in_transaction(app_conninfo) as held:
            wanted = {("terminate_session", "Succeeded"), ("analyze", "Succeeded")}
            wait_until(lambda: wanted <= _states(cp, namespace), timeout=120,
                       what=lambda: _story(cp, namespace, plane))
            assert not held.is_alive()
        cp.kubectl("wait", "--for=condition=Ready", "dbm/shop", "-n", namespace,
                   "--timeout=60s")
        columns = wait_until(lambda: (c := _columns(cp, namespace))["fixed"].isdigit()
                             and int(c["fixed"]) >= 2 and c,
                             timeout=30, what=lambda: f"kubectl get dbm: {_columns(cp, namespace)}")
        assert columns["ready"] == "True", columns
        assert columns["last"].endswith("(Succeeded)"), columns
        rems = {r["spec"]["action"]: r for r in _rems(cp, namespace)}
        terminated = rems["terminate_session"]["status"]
        assert terminated["executedSql"] and "pg_terminate_backend" in terminated[
            "executedSql"][0]
        assert terminated["before"]["idle_seconds"] >= 3
        assert terminated["after"]["session_gone"] == 1
        assert [s["state"] for s in terminated["history"]][-1] == "Succeeded"
        # ANALYZE: the statistics are fresh in the database, and the record says so.
        analyzed = rems["analyze"]["status"]
        assert analyzed["executedSql"] == [rems["analyze"]["spec"]["sql"]]
        assert analyzed["before"]["n_mod_since_analyze"] >= 5000
        assert analyzed["after"]["n_mod_since_analyze"] == 0
        assert analyzed["after"]["analyze_count"] == analyzed["before"]["analyze_count"] + 1
        with psycopg.connect(app_conninfo, autocommit=True) as conn:
            fresh = conn.execute("SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables "
                                 "WHERE relname = 'items'").fetchone()
        assert fresh == (True,)
        listing = cp.kubectl("get", "rem", "-n", namespace).stdout
        assert "terminate_session" in listing and "analyze" in listing
    finally:
        plane.stop()


def test_approval_mode_waits_survives_an_executor_crash_and_runs_once(
        control_plane: ControlPlane, namespace: str, operator: Operator,
        pg_db: postgres.PostgresDatabase, app_conninfo: str, login: tuple[str, str],
        tmp_path: Path) -> None:
    cp = control_plane
    _apply_monitor(cp, namespace, pg_db, login, mode="approval")
    plane = _data_plane(cp, namespace, tmp_path)
    try:
        with workloads.idle_in_transaction(app_conninfo) as held:
            wait_until(lambda: ("terminate_session", "PendingApproval") in _states(
                cp, namespace), timeout=120, what=lambda: _story(cp, namespace, plane))
            # The executor crashes (as a killed pod would) and comes back: nothing is lost.
            plane.restart("executor")
            (pending,) = [r for r in _rems(cp, namespace)
                          if r["spec"]["action"] == "terminate_session"]
            assert pending["status"]["state"] == "PendingApproval"
            # Nothing ran before the approval (looked up from outside: a round trip on the
            # held session itself would move it on, and the executor rightly refuses then).
            with psycopg.connect(app_conninfo, autocommit=True) as conn:
                still = conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s",
                                     (held.pid,)).fetchone()
            assert still == ("idle in transaction",)
            # The monitor's counts are written after the Remediation's change: wait for them.
            wait_until(lambda: _columns(cp, namespace)["pending"] == "1", timeout=30,
                       what=lambda: f"kubectl get dbm: {_columns(cp, namespace)}")
            name = pending["metadata"]["name"]
            cp.kubectl("patch", "rem", name, "-n", namespace, "--type", "merge",
                       "-p", '{"spec":{"approved":true}}')
            wait_until(lambda: cp.kubectl_json("get", "rem", name, "-n", namespace)
                       ["status"]["state"] == "Succeeded", timeout=60,
                       what=lambda: _story(cp, namespace, plane))
            assert not held.is_alive()
        final = cp.kubectl_json("get", "rem", name, "-n", namespace)["status"]
        assert [s["state"] for s in final["history"]].count("Running") == 1
        sessions = [r for r in _rems(cp, namespace)
                    if r["spec"]["action"] == "terminate_session"]
        assert len(sessions) == 1, "one occurrence, one Remediation, across the restart"
        wait_until(lambda: _columns(cp, namespace)["last"].startswith("terminate_session"),
                   timeout=30, what=lambda: f"kubectl get dbm: {_columns(cp, namespace)}")
    finally:
        plane.stop()


@pytest.mark.timeout(420)
def test_a_hot_query_on_an_unindexed_column_gets_its_index_approved_built_and_measured(
        control_plane: ControlPlane, namespace: str, operator: Operator,
        pg_db: postgres.PostgresDatabase, app_conninfo: str, login: tuple[str, str],
        tmp_path: Path) -> None:
    cp = control_plane
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, email_hash int NOT NULL, "
                     "name text)")
        conn.execute("INSERT INTO accounts SELECT g, g * 7, 'n' || g "
                     "FROM generate_series(1, 60000) g")
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE accounts")
    _apply_monitor(cp, namespace, pg_db, login, mode="auto",  # policy.ddl: approval
                   thresholds={"missing_index": {"minStatementTimePerSecond": 0.001}},
                   verification={"window": "8s", "minCalls": 10})
    plane = _data_plane(cp, namespace, tmp_path)
    try:
        with workloads.query_loop(app_conninfo,
                                  "SELECT id, name FROM accounts WHERE email_hash = %s",
                                  (7 * 1234,), rate=15, duration=280,
                                  application_name="shop-web") as loop:
            # The example's policy: index builds (ddl) wait for a person, with the exact SQL.
            wait_until(lambda: ("create_index", "PendingApproval") in _states(cp, namespace),
                       timeout=150, what=lambda: _story(cp, namespace, plane))
            (pending,) = [r for r in _rems(cp, namespace)
                          if r["spec"]["action"] == "create_index"]
            assert pending["spec"]["sql"].startswith("CREATE INDEX CONCURRENTLY")
            cp.kubectl("patch", "rem", pending["metadata"]["name"], "-n", namespace,
                       "--type", "merge", "-p", '{"spec":{"approved":true}}')
            wait_until(lambda: ("create_index", "Succeeded") in _states(cp, namespace),
                       timeout=120, what=lambda: _story(cp, namespace, plane))
            assert loop.calls > 0 and not loop.errors, loop.errors[:1]
        (rem,) = [r for r in _rems(cp, namespace) if r["spec"]["action"] == "create_index"]
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
        wait_until(lambda: _columns(cp, namespace)["last"].startswith("create_index"),
                   timeout=30, what=lambda: f"kubectl get dbm: {_columns(cp, namespace)}")
        assert _columns(cp, namespace)["ready"] == "True"
    finally:
        plane.stop()
