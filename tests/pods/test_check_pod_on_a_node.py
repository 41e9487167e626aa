"""``startupmonkey check --kube shop -n NS`` on a real kubelet (issue 21.1): with the chart
installed and a monitor whose database is a PostgreSQL this test runs, the check pod (the
executor's pod with the check command, from the image built here) logs in with the monitor's
own Secret and reaches the managed NATS from inside the namespace, and the CLI exits 0; after
the Secret's password is changed to a wrong one, the same check exits 1 with PostgreSQL's
"password authentication failed" in the database login line; without the Secret the pod
cannot start, and the check says so with the kubelet's events. No check pod is left
behind."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from startupmonkey.localserv import postgres
from tests.pods.helpers import PG_PORT, Cluster, apply_monitor, start_data_plane
from tests.support.node import NODE_IP, PodsControlPlane

pytestmark = [pytest.mark.timeout(900)]
EXE = Path(sys.executable).with_name("startupmonkey")


class _Login(tuple[str, str]):
    """(user, password), shown without the password."""

    def __repr__(self) -> str:
        return f"({self[0]!r}, '***')"


@pytest.fixture
def login(pg_cluster: postgres.PostgresCluster) -> Iterator[_Login]:
    """A role that must give its password (SCRAM over TCP): not a member of a password-less
    role, which the test cluster's pg_hba.conf trusts (so the app owner's members get in with
    any password). pg_monitor and pg_signal_backend: what the collector and executor need."""
    user, password = f"sm_{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    pg_cluster.create_role(user, password, member_of=["pg_monitor", "pg_signal_backend"])
    try:
        yield _Login((user, password))
    finally:
        pg_cluster.drop_role(user)


def _check(cp: PodsControlPlane, namespace: str, pod_timeout: float = 240,
           ) -> tuple[int, dict[str, dict[str, str]]]:
    proc = subprocess.run([str(EXE), "check", "--kube", "shop", "-n", namespace, "-o", "json",
                           "--pod-timeout", str(pod_timeout)], capture_output=True, text=True,
                          env=cp.env(), timeout=300, check=False)
    print(f"\nstartupmonkey check --kube shop (exit {proc.returncode}):\n{proc.stdout}"
          f"{proc.stderr}", file=sys.stderr)
    document = json.loads(proc.stdout)
    assert document["ok"] is (proc.returncode == 0)
    return proc.returncode, {c["name"]: c for c in document["checks"]}


def _check_pods(cp: PodsControlPlane, namespace: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cp.kubectl_json(
        "get", "pods", "-n", namespace, "-l", "startupmonkey.dev/check=true")["items"]
    return found


def test_check_kube_logs_in_from_a_pod_and_names_a_wrong_password(
        cluster: Cluster, namespace: str, pg_in_node: str,
        pg_db: postgres.PostgresDatabase, login: _Login) -> None:
    cp, _node = cluster
    apply_monitor(cp, namespace, pg_db.dbname, login)
    start_data_plane(cp, namespace)

    code, checks = _check(cp, namespace)
    failed = {n: c for n, c in checks.items() if c["level"] == "FAIL"}
    assert code == 0, failed
    user = login[0]
    assert checks["database login"] == {
        "name": "database login", "level": "OK",
        "message": f"logged in as {user}@{NODE_IP}:{PG_PORT}/{pg_db.dbname}", "fix": ""}
    assert checks["config"]["message"].endswith("read from inside the namespace")
    assert checks["event bus"]["level"] == "OK", checks["event bus"]
    assert f"shop-nats.{namespace}.svc" in checks["event bus"]["message"]
    assert "ServiceAccount shop-executor" in checks["check pod"]["message"]
    assert _check_pods(cp, namespace) == [], "the check pod was left behind"

    # A wrong password in the monitor's Secret (through stdin, never argv).
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "shop-db", "namespace": namespace},
        "stringData": {"username": user, "password": secrets.token_urlsafe(16)}}))
    code, checks = _check(cp, namespace)
    assert code == 1
    refused = checks["database login"]
    assert refused["level"] == "FAIL", checks
    assert "password authentication failed" in refused["message"], refused
    assert "credentialsSecret" in refused["fix"], refused
    assert _check_pods(cp, namespace) == [], "the check pod was left behind"

    # Without the Secret the pod cannot start: the check says so with the kubelet's events.
    cp.kubectl("delete", "secret", "shop-db", "-n", namespace)
    code, checks = _check(cp, namespace, pod_timeout=30)
    assert code == 1
    stuck = checks["check pod"]
    assert stuck["level"] == "FAIL", checks
    assert 'secret "shop-db" not found' in stuck["message"], stuck
    assert "kubectl describe pod" in stuck["fix"]
    assert "database login" not in checks
    assert _check_pods(cp, namespace) == [], "the check pod was left behind"
