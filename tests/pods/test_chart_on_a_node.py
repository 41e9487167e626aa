"""The chart on a real kubelet (issue 18): `helm install` with the image built here, the
operator as a pod under the chart's ServiceAccount, `kubectl apply` a DatabaseMonitor, and the
operator's NATS, collector, analyser and executor as pods that reach a PostgreSQL this test
runs (relayed into the node); a real problem is detected and fixed, `kubectl get dbm,rem`
tells the story, readiness follows the real probes, every container runs as 10001 on a
read-only root, and each container's peak memory (its cgroup's) is recorded against its
limit. The executor container is killed once before the problems start and comes back, and
the fixes go through the restarted one; deleting the monitor garbage-collects its pods."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from startupmonkey.localserv import postgres
from tests.support import workloads
from tests.support.eventually import wait_until
from tests.support.node import NODE_IP, Images, Node, PodsControlPlane

pytestmark = [pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "startupmonkey"
EXAMPLE = ROOT / "examples" / "monitor.yaml"
PG_PORT = 5432
Cluster = tuple[PodsControlPlane, Node]


def _helm(cp: PodsControlPlane, *args: str) -> str:
    result = subprocess.run([str(cp.binaries.helm), *args], capture_output=True, text=True,
                            env=cp.env(), timeout=600, check=False)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def release(cluster: Cluster, images: Images) -> Iterator[str]:
    """The chart installed with our image and the local NATS image; `helm install --wait`
    returns once the operator pod is Ready by its real readiness probe."""
    cp, node = cluster
    namespace = cp.create_namespace("pods")
    repository, tag = images.image.rsplit(":", 1)
    name = f"sm-{uuid.uuid4().hex[:6]}"
    try:
        _helm(cp, "install", name, str(CHART), "-n", namespace, "--wait", "--timeout", "300s",
              "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
              "--set", "image.pullPolicy=Never", "--set", f"natsImage={images.nats}",
              "--set", "resync.statusInterval=2s")
        yield namespace
    except BaseException:
        print(_pods_story(cp, node, namespace), file=sys.stderr)
        raise
    finally:
        subprocess.run([str(cp.binaries.helm), "uninstall", name, "-n", namespace],
                       env=cp.env(), capture_output=True, timeout=120, check=False)
        cp.delete_namespace(namespace, wait=False)


@pytest.fixture
def login(pg_cluster: postgres.PostgresCluster, app_conninfo: str) -> tuple[str, str]:
    """A password login with the executor's documented privileges."""
    owner = app_conninfo.split("user=")[1].split()[0]
    user, password = f"sm_{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    pg_cluster.create_role(user, password, member_of=["pg_monitor", "pg_signal_backend", owner])
    return user, password


def _pods(cp: PodsControlPlane, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cp.kubectl_json("get", "pods", "-n", namespace)["items"]
    return items


def _pods_story(cp: PodsControlPlane, node: Node, namespace: str) -> str:
    lines = [cp.kubectl("get", "dbm,rem,deploy,pods", "-n", namespace, "-o", "wide",
                        check=False).stdout]
    for log in sorted((node.tmp / "pod-logs").glob(f"{namespace}_*/*/*.log")):
        lines.append(f"--- {log.parent.parent.name}/{log.parent.name}\n"
                     + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
    return "\n".join(lines)


def _apply_monitor(cp: PodsControlPlane, namespace: str, dbname: str,
                   login: tuple[str, str]) -> None:
    user, password = login
    # The password goes through stdin, never argv.
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "shop-db", "namespace": namespace},
        "stringData": {"username": user, "password": password}}))
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["database"].update(host=NODE_IP, port=PG_PORT, dbname=dbname,
                                        sslMode="disable")
    manifest["spec"].update(interval="1s", mode="auto")
    manifest["spec"]["thresholds"] = {"idle_in_transaction": {"maxDuration": "3s"},
                                      "stale_statistics": {"minModifiedRows": 500}}
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def _states(cp: PodsControlPlane, namespace: str) -> set[tuple[str, str]]:
    return {(r["spec"]["action"], r.get("status", {}).get("state", ""))
            for r in cp.kubectl_json("get", "rem", "-n", namespace)["items"]}


def _data_plane_ready(cp: PodsControlPlane, namespace: str) -> bool:
    found = cp.kubectl_json("get", "deployments", "-n", namespace, "-l",
                            "startupmonkey.dev/monitor=shop")["items"]
    return len(found) == 4 and all(
        d.get("status", {}).get("readyReplicas") == d["spec"]["replicas"] for d in found)


def _memory(cp: PodsControlPlane, node: Node, namespace: str) -> list[dict[str, Any]]:
    """Each container's peak memory (memory.max_usage_in_bytes of its cgroup), its limit, its
    user and whether its root filesystem is read-only, read from the kernel."""
    by_id = {}
    for pod in _pods(cp, namespace):
        for status in pod["status"].get("containerStatuses") or []:
            by_id[status.get("containerID", "").removeprefix("containerd://")] = (
                pod["metadata"]["name"], status["name"], status["restartCount"])
    rows = []
    for _uid, container_id, folder in node.container_cgroups():
        if container_id not in by_id:
            continue  # the pause container, or another namespace's
        pod, name, restarts = by_id[container_id]
        pid = int((folder / "cgroup.procs").read_text().split()[0])
        uid = next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text()
                   .splitlines() if line.startswith("Uid:"))
        root = next(line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text()
                    .splitlines() if line.split()[4] == "/")
        rows.append({"pod": pod, "container": name, "restarts": restarts, "uid": uid, "pid": pid,
                     "root_options": root[5],
                     "peak_mib": int((folder / "memory.max_usage_in_bytes").read_text())
                     / 2**20,
                     "limit_mib": int((folder / "memory.limit_in_bytes").read_text()) / 2**20})
    return rows


def _restarted_and_ready(cp: PodsControlPlane, namespace: str, pod: str) -> bool:
    status = cp.kubectl_json("get", "pod", pod, "-n", namespace)["status"]
    (container,) = status["containerStatuses"]
    return bool(container["restartCount"] >= 1 and container["ready"])


def test_the_chart_runs_the_loop_in_real_pods(
        cluster: Cluster, release: str, pg_cluster: postgres.PostgresCluster,
        pg_db: postgres.PostgresDatabase, app_conninfo: str, login: tuple[str, str],
        tmp_path: Path) -> None:
    cp, node = cluster
    namespace = release
    node.relay(pg_cluster.port, NODE_IP, PG_PORT)
    (operator,) = _pods(cp, namespace)
    assert operator["spec"]["serviceAccountName"].endswith("startupmonkey")
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int) WITH (autovacuum_enabled = off)")
        conn.execute("INSERT INTO items SELECT generate_series(1, 5000)")
    _apply_monitor(cp, namespace, pg_db.dbname, login)
    wait_until(lambda: _data_plane_ready(cp, namespace), timeout=300, interval=1,
               what=lambda: _pods_story(cp, node, namespace))
    # A container killed mid-run (SIGKILL from outside, as the OOM killer would) is restarted
    # by the kubelet, its pod is Ready again by its probe, and the problems below are fixed
    # through the restarted executor.
    (killed,) = [r for r in _memory(cp, node, namespace) if r["container"] == "executor"]
    os.kill(killed["pid"], signal.SIGKILL)
    wait_until(lambda: _restarted_and_ready(cp, namespace, killed["pod"]), timeout=120,
               interval=1, what=lambda: _pods_story(cp, node, namespace))
    with workloads.idle_in_transaction(app_conninfo) as held:
        wanted = {("terminate_session", "Succeeded"), ("analyze", "Succeeded")}
        wait_until(lambda: wanted <= _states(cp, namespace), timeout=240, interval=1,
                   what=lambda: _pods_story(cp, node, namespace))
        assert not held.is_alive()
    story = cp.kubectl("get", "dbm,rem", "-n", namespace).stdout
    print(f"\nkubectl get dbm,rem:\n{story}", file=sys.stderr)
    assert "terminate_session" in story and "analyze" in story and "Succeeded" in story
    rows = _memory(cp, node, namespace)
    print("container memory (peak / limit, MiB):\n" + "\n".join(
        f"  {r['pod']}/{r['container']}: {r['peak_mib']:.0f} / {r['limit_mib']:.0f}"
        f" (uid {r['uid']}, root {r['root_options']}, restarts {r['restarts']})"
        for r in rows), file=sys.stderr)
    (tmp_path / "memory.json").write_text(json.dumps(rows, indent=1))
    components = {r["container"] for r in rows}
    assert {"operator", "nats", "collector", "analyser", "executor"} <= components, rows
    for row in rows:
        assert row["uid"] == "10001", row
        assert row["root_options"].split(",")[0] == "ro", row
        assert row["peak_mib"] < row["limit_mib"], row
        assert row["restarts"] == (row["container"] == "executor"), row

    # Deleting the monitor drains it and garbage-collects every data-plane pod.
    cp.kubectl("delete", "dbm", "shop", "-n", namespace, "--wait=false")
    wait_until(lambda: not [p for p in _pods(cp, namespace)
                            if p["metadata"].get("labels", {}).get("startupmonkey.dev/monitor")]
               and not cp.kubectl_json("get", "dbm", "-n", namespace)["items"],
               timeout=180, interval=1, what=lambda: _pods_story(cp, node, namespace))
