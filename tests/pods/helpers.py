"""What the real-pods tests share (tests/pods/conftest.py holds the fixtures): helm, the
monitor's manifest, reading Remediations and ``kubectl get dbm`` columns, the pods' state, a
container killed from outside, each container's cgroup, and the story a failed wait prints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.eventually import wait_until
from tests.support.node import NODE_IP, Node, PodsControlPlane

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "startupmonkey"
EXAMPLE = ROOT / "examples" / "monitor.yaml"
PG_PORT = 5432
MONITOR = "shop"
Cluster = tuple[PodsControlPlane, Node]


def helm(cp: PodsControlPlane, *args: str) -> str:
    result = subprocess.run([str(cp.binaries.helm), *args], capture_output=True, text=True,
                            env=cp.env(), timeout=600, check=False)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def pods(cp: PodsControlPlane, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cp.kubectl_json("get", "pods", "-n", namespace)["items"]
    return items


def rems(cp: PodsControlPlane, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cp.kubectl_json("get", "rem", "-n", namespace)["items"]
    return items


def states(cp: PodsControlPlane, namespace: str) -> set[tuple[str, str]]:
    """(action, state) of every Remediation in the namespace."""
    return {(r["spec"]["action"], r.get("status", {}).get("state", ""))
            for r in rems(cp, namespace)}


def only_rem(cp: PodsControlPlane, namespace: str, action: str) -> dict[str, Any]:
    """The one Remediation for ``action`` (fails when there are none or several)."""
    (found,) = [r for r in rems(cp, namespace) if r["spec"]["action"] == action]
    return found


def columns(cp: PodsControlPlane, namespace: str) -> dict[str, str]:
    """What ``kubectl get dbm shop`` prints, read by column (the CRD's printer columns)."""
    shown = cp.kubectl("get", "dbm", MONITOR, "-n", namespace, "--no-headers", "-o",
                       "custom-columns=READY:.status.conditions[?(@.type==\"Ready\")].status,"
                       "FIXED:.status.remediations.succeeded,"
                       "PENDING:.status.remediations.pendingApproval,"
                       "LAST:.status.remediations.lastAction").stdout.strip().split(None, 3)
    return dict(zip(("ready", "fixed", "pending", "last"), shown, strict=True))


def approve(cp: PodsControlPlane, namespace: str, name: str) -> None:
    """What a person does: ``kubectl patch rem NAME --type merge -p spec.approved=true``."""
    cp.kubectl("patch", "rem", name, "-n", namespace, "--type", "merge",
               "-p", '{"spec":{"approved":true}}')


def pods_story(cp: PodsControlPlane, *namespaces: str) -> str:
    """What a failed wait shows: the resources, every Remediation's state and message, and
    the last lines of each pod's containers' logs (``kubectl logs``: the API server reaches
    the kubelet through the node's egress proxy, tests/support/node.py)."""
    lines = []
    for namespace in namespaces:
        lines.append(cp.kubectl("get", "dbm,rem,deploy,pods", "-n", namespace, "-o", "wide",
                                check=False).stdout)
        result = cp.kubectl("get", "rem", "-n", namespace, "-o", "json", check=False)
        if result.returncode == 0:
            lines += [f"{r['spec']['action']} {r.get('status', {}).get('state')}: "
                      f"{r.get('status', {}).get('message')}"
                      for r in json.loads(result.stdout)["items"]]
        for pod in pods(cp, namespace):
            name = pod["metadata"]["name"]
            shown = cp.kubectl("logs", name, "-n", namespace, "--all-containers", "--tail",
                               "25", check=False)
            lines.append(f"--- kubectl logs {name}\n{shown.stdout}{shown.stderr}")
    return "\n".join(lines)


def restarts_story(cp: PodsControlPlane, namespace: str, pod: str) -> str:
    """Why a pod's containers restarted: each one's last termination (reason, exit code, when)
    and the end of its previous log, for an assertion on restarts that failed."""
    result = cp.kubectl("get", "pod", pod, "-n", namespace, "-o", "json", check=False)
    lines = []
    if result.returncode == 0:
        for status in json.loads(result.stdout).get("status", {}).get("containerStatuses", []):
            lines.append(f"{status['name']}: restarts {status.get('restartCount')}, last state "
                         f"{json.dumps(status.get('lastState', {}))}")
    shown = cp.kubectl("logs", pod, "-n", namespace, "--all-containers", "--previous",
                       "--tail", "40", check=False)
    lines.append(f"--- kubectl logs --previous {pod}\n{shown.stdout}{shown.stderr}")
    return "\n".join(lines)


def apply_monitor(cp: PodsControlPlane, namespace: str, dbname: str, login: tuple[str, str],
                  mode: str = "auto", **spec_fields: Any) -> None:
    """The example monitor, pointed at the PostgreSQL relayed into the node, checking every
    second, with its Secret (the password through stdin, never argv)."""
    user, password = login
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "shop-db", "namespace": namespace},
        "stringData": {"username": user, "password": password}}))
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["database"].update(host=NODE_IP, port=PG_PORT, dbname=dbname,
                                        sslMode="disable")
    manifest["spec"].update(interval="1s", mode=mode)
    manifest["spec"]["thresholds"] = {"idle_in_transaction": {"maxDuration": "3s"},
                                      "stale_statistics": {"minModifiedRows": 500}}
    manifest["spec"].update(spec_fields)
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def data_plane_ready(cp: PodsControlPlane, namespace: str) -> bool:
    """The operator's four Deployments exist and every replica is Ready by its probe."""
    found = cp.kubectl_json("get", "deployments", "-n", namespace, "-l",
                            f"startupmonkey.dev/monitor={MONITOR}")["items"]
    return len(found) == 4 and all(
        d.get("status", {}).get("readyReplicas") == d["spec"]["replicas"] for d in found)


def start_data_plane(cp: PodsControlPlane, namespace: str) -> None:
    wait_until(lambda: data_plane_ready(cp, namespace), timeout=300, interval=1,
               what=lambda: pods_story(cp, namespace))


def memory(cp: PodsControlPlane, node: Node, *namespaces: str) -> list[dict[str, Any]]:
    """Each container's peak memory (memory.max_usage_in_bytes of its cgroup), its limit, its
    user and whether its root filesystem is read-only, read from the kernel."""
    by_id = {}
    for namespace in namespaces:
        for pod in pods(cp, namespace):
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


def _restarted_and_ready(cp: PodsControlPlane, namespace: str, pod: str, before: int) -> bool:
    status = cp.kubectl_json("get", "pod", pod, "-n", namespace)["status"]
    (container,) = status["containerStatuses"]
    return bool(container["restartCount"] > before and container["ready"])


def kill_container(cp: PodsControlPlane, node: Node, namespace: str, container: str) -> str:
    """SIGKILL the container's process from outside (as the OOM killer would), then wait until
    the kubelet restarted it and its pod is Ready again by its probe. Returns the pod's name."""
    (killed,) = [r for r in memory(cp, node, namespace) if r["container"] == container]
    os.kill(killed["pid"], signal.SIGKILL)
    wait_until(lambda: _restarted_and_ready(cp, namespace, killed["pod"], killed["restarts"]),
               timeout=120, interval=1, what=lambda: pods_story(cp, namespace))
    pod: str = killed["pod"]
    return pod
