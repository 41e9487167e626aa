"""The node itself (tests/support/node.py): real pods from the images built here, the kubelet
enforcing what a pod spec says, and the host left as it was."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.pods.helpers import pods_story
from tests.support.eventually import wait_until
from tests.support.node import SYSCTLS, Images, Node, PodsControlPlane

# The first test of the session also builds the images (cold: a few minutes) and starts the
# control plane and the node.
pytestmark = [pytest.mark.timeout(900)]
Cluster = tuple[PodsControlPlane, Node]


def _pod(name: str, image: str, command: list[str], **container: Any) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": image, "imagePullPolicy": "Never", "command": command,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                "readOnlyRootFilesystem": True,
                                "allowPrivilegeEscalation": False}, **container}]}})


def _status(cp: PodsControlPlane, name: str) -> dict[str, Any]:
    status: dict[str, Any] = cp.kubectl_json("get", "pod", name, "-n", "default", "-o",
                                             "json")["status"]
    return status


def _ready(cp: PodsControlPlane, name: str) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in _status(cp, name).get("conditions") or [])


def _terminated(cp: PodsControlPlane, name: str) -> dict[str, Any] | None:
    for container in _status(cp, name).get("containerStatuses") or []:
        state: dict[str, Any] | None = container.get("state", {}).get("terminated")
        if state:
            return state
    return None


def _log(node: Node, name: str) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in (node.tmp / "pod-logs").glob(f"default_{name}_*/*/*.log"))


def test_readiness_follows_the_real_probe(cluster: Cluster, images: Images) -> None:
    cp, _node = cluster
    name = f"nats-{uuid.uuid4().hex[:6]}"
    cp.kubectl("apply", "-f", "-", input=_pod(
        name, images.nats, ["nats-server", "-m", "8222"],
        readinessProbe={"httpGet": {"path": "/healthz", "port": 8222}, "periodSeconds": 1}))
    try:
        wait_until(lambda: _ready(cp, name), timeout=60, what=f"pod {name} Ready")
    finally:
        cp.kubectl("delete", "pod", name, "-n", "default", "--wait=false")


def test_the_image_runs_non_root_on_a_read_only_root(cluster: Cluster, images: Images) -> None:
    cp, node = cluster
    name = f"probe-{uuid.uuid4().hex[:6]}"
    script = ("import os\nprint('uid', os.getuid())\n"
              "try:\n    open('/written', 'w')\nexcept OSError as e:\n    print('refused', e)\n")
    cp.kubectl("apply", "-f", "-", input=_pod(name, images.image, ["python3", "-c", script]))
    try:
        done = wait_until(lambda: _terminated(cp, name), timeout=60, what=f"pod {name} ran")
        assert done["exitCode"] == 0, _log(node, name)
        log = wait_until(lambda: "refused" in _log(node, name) and _log(node, name),
                         timeout=30, what="the container's log")
        assert "uid 10001" in log
        assert "Read-only file system" in log
    finally:
        cp.kubectl("delete", "pod", name, "-n", "default", "--wait=false")


def test_a_root_image_is_refused_by_run_as_non_root(cluster: Cluster, images: Images) -> None:
    """runAsNonRoot is enforced: the same pod with runAsUser 0 never starts."""
    cp, _node = cluster
    name = f"root-{uuid.uuid4().hex[:6]}"
    pod = json.loads(_pod(name, images.image, ["startupmonkey", "--help"]))
    pod["spec"]["containers"][0]["securityContext"]["runAsUser"] = 0
    cp.kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        def refused() -> str | None:
            for c in _status(cp, name).get("containerStatuses") or []:
                reason: str | None = (c.get("state", {}).get("waiting") or {}).get("reason")
                if reason == "CreateContainerConfigError":
                    return reason
            return None
        wait_until(refused, timeout=60, what="the kubelet refusing a root container")
    finally:
        cp.kubectl("delete", "pod", name, "-n", "default", "--wait=false")


def test_the_host_keeps_its_sysctls(cluster: Cluster, host_sysctls: dict[str, str]) -> None:
    """kubelet wrote its kernel tunables (vm.overcommit_memory=1, kernel.panic=10, ...) into
    the files bind-mounted in the node's mount namespace: the host's are what they were before
    the node started (checked again after it stopped, in the fixture)."""
    _cp, node = cluster
    assert {f: Path(f"/proc/sys/{f}").read_text().strip() for f in SYSCTLS} == host_sysctls
    written = {p.name: p.read_text().strip() for p in (node.tmp / "sysctl").iterdir()}
    assert written["vm_overcommit_memory"] == "1", written


def test_kubectl_logs_and_exec_reach_the_kubelet(cluster: Cluster, images: Images) -> None:
    """The API server reaches the kubelet inside the node's network namespace through its
    egress proxy: `kubectl logs` shows what the container printed and `kubectl exec` runs a
    command in it (as the image's user)."""
    cp, _node = cluster
    name = f"talk-{uuid.uuid4().hex[:6]}"
    script = "import sys, time\nprint('hello from', sys.argv[1], flush=True)\ntime.sleep(600)\n"
    cp.kubectl("apply", "-f", "-", input=_pod(name, images.image,
                                              ["python3", "-c", script, name]))
    try:
        wait_until(lambda: _ready(cp, name), timeout=60, what=f"pod {name} Ready")
        wait_until(lambda: f"hello from {name}" in cp.kubectl(
            "logs", name, "-n", "default", check=False).stdout, timeout=30,
            what=lambda: str(cp.kubectl("logs", name, "-n", "default", check=False)))
        ran = cp.kubectl("exec", name, "-n", "default", "--", "id", "-u")
        assert ran.stdout.strip() == "10001", ran
        # The story a failed wait prints in the pods tests carries the container's own words.
        assert f"hello from {name}" in pods_story(cp, "default")
    finally:
        cp.kubectl("delete", "pod", name, "-n", "default", "--wait=false")


@pytest.mark.parametrize("target", ["127.0.0.1:{port}", "node1:10250"])
def test_the_egress_proxy_opens_nothing_outside_the_node(cluster: Cluster, target: str) -> None:
    """Asked for the host's loopback (the API server's own port) or a name, the proxy refuses:
    it only connects to the node's address and the pod subnet."""
    cp, _node = cluster
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(10)
        conn.connect(str(cp.egress_socket))
        where = target.format(port=cp.apiserver_port)
        conn.sendall(f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\n\r\n".encode())
        reply = conn.recv(4096).decode()
    assert reply.split("\r\n")[0] == "HTTP/1.1 403 Forbidden", reply
