"""The e2e control plane itself: what later e2e tests rely on, proven against the real thing.

None of these depend on StartupMonkey's CRDs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.controlplane import Binaries, ControlPlane, KubectlError
from tests.support.eventually import wait_until

pytestmark = pytest.mark.e2e


def _exists(cp: ControlPlane, kind: str, name: str, namespace: str) -> bool:
    out = cp.kubectl("get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name")
    return bool(out.stdout.strip())


def test_garbage_collector_deletes_configmap_whose_owner_was_deleted(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    cp.kubectl("create", "configmap", "owner", "-n", namespace, "--from-literal=k=v")
    cp.kubectl("create", "configmap", "bystander", "-n", namespace, "--from-literal=k=v")
    owner_uid = cp.kubectl_json("get", "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
            ],
        },
        "data": {"k": "v"},
    }
    cp.kubectl("create", "-f", "-", input=json.dumps(dependent))
    assert _exists(cp, "configmap", "dependent", namespace)

    cp.kubectl("delete", "configmap", "owner", "-n", namespace, "--cascade=background")

    wait_until(
        lambda: not _exists(cp, "configmap", "dependent", namespace),
        timeout=60,
        interval=0.25,
        what="garbage collector removes the dependent ConfigMap",
    )
    assert not _exists(cp, "configmap", "owner", namespace)
    assert _exists(cp, "configmap", "bystander", namespace), "GC removed an unowned object"


def test_deployment_status_patch_stays_because_no_deployment_controller_runs(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    cp.kubectl("create", "deployment", "web", "-n", namespace,
               "--image=registry.invalid/web:1", "--replicas=2")
    assert cp.kubectl_json("get", "deployment", "web", "-n", namespace).get("status", {}) == {}

    dep = cp.mark_deployment_available(namespace, "web")
    assert dep["status"]["availableReplicas"] == 2
    assert dep["status"]["readyReplicas"] == 2
    conditions = {c["type"]: c for c in dep["status"]["conditions"]}
    assert conditions["Available"]["status"] == "True"

    # `kubectl rollout status` reads the same fields an operator would.
    out = cp.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=10s")
    assert "successfully rolled out" in out.stdout

    # No controller rewrites it: check repeatedly over a bounded window, and no ReplicaSet
    # (the deployment controller's first act) ever appears.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        status = cp.kubectl_json("get", "deployment", "web", "-n", namespace)["status"]
        assert status["availableReplicas"] == 2
        assert {c["type"]: c["status"] for c in status["conditions"]}["Available"] == "True"
        time.sleep(0.5)
    assert cp.kubectl_json("get", "replicasets", "-n", namespace)["items"] == []

    dep = cp.mark_deployment_available(namespace, "web", available=False)
    assert dep["status"].get("availableReplicas", 0) == 0
    assert dep["status"]["unavailableReplicas"] == 2
    conditions = {c["type"]: c for c in dep["status"]["conditions"]}
    assert conditions["Available"]["status"] == "False"
    assert conditions["Available"]["reason"] == "MinimumReplicasUnavailable"


def test_kubectl_auth_can_i_answers_for_a_serviceaccount_token(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    cp = control_plane
    cp.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    cp.kubectl("create", "role", "read-configmaps", "-n", namespace,
               "--verb=get", "--verb=list", "--resource=configmaps")
    cp.kubectl("create", "rolebinding", "reader-reads-configmaps", "-n", namespace,
               "--role=read-configmaps", f"--serviceaccount={namespace}:reader")
    cp.kubectl("create", "configmap", "visible", "-n", namespace, "--from-literal=k=v")
    cp.kubectl("create", "secret", "generic", "hidden", "-n", namespace, "--from-literal=k=v")

    token = cp.mint_token(namespace, "reader")
    kc = cp.kubeconfig_for_token(token, tmp_path / "reader.kubeconfig")

    whoami = json.loads(cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=kc).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"

    def can_i(*args: str) -> tuple[int, str]:
        p = cp.kubectl("auth", "can-i", *args, "-n", namespace, kubeconfig=kc, check=False)
        return p.returncode, p.stdout.strip()

    assert can_i("get", "configmaps") == (0, "yes")
    assert can_i("list", "configmaps") == (0, "yes")
    assert can_i("get", "secrets") == (1, "no")
    assert can_i("delete", "configmaps") == (1, "no")
    assert can_i("get", "deployments.apps") == (1, "no")

    # can-i is a SelfSubjectAccessReview; real requests must agree with it.
    got = cp.kubectl("get", "configmap", "visible", "-n", namespace, "-o", "name", kubeconfig=kc)
    assert got.stdout.strip() == "configmap/visible"
    with pytest.raises(KubectlError, match=r"(?i)forbidden"):
        cp.kubectl("get", "secret", "hidden", "-n", namespace, kubeconfig=kc)


def test_helm_version_is_the_pinned_v4_build(
    binaries: Binaries, kube_env: dict[str, str]
) -> None:
    helm = shutil.which("helm", path=kube_env["PATH"])
    assert helm == str(binaries.helm), "the built helm must come first on PATH"
    out = subprocess.run([helm, "version", "--template", "{{.Version}}"], env=kube_env,
                         capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == binaries.helm_version == "v4.3.1"


def test_kubectl_client_version_matches_server_minor(
    control_plane: ControlPlane, binaries: Binaries, kube_env: dict[str, str]
) -> None:
    kubectl = shutil.which("kubectl", path=kube_env["PATH"])
    assert kubectl == str(binaries.kubectl), "the built kubectl must come first on PATH"
    out = subprocess.run([kubectl, "version", "-o", "json"], env=kube_env,
                         capture_output=True, text=True, check=True, timeout=30)
    v = json.loads(out.stdout)
    client, server = v["clientVersion"], v["serverVersion"]
    assert (client["major"], client["minor"]) == (server["major"], server["minor"])
    assert client["gitVersion"] == server["gitVersion"] == binaries.k8s_version


def test_admin_kubeconfig_works_for_python_client_and_kopf(
    control_plane: ControlPlane, namespace: str, kube_env: dict[str, str], tmp_path: Path
) -> None:
    from kubernetes import client, config

    with config.new_client_from_config(config_file=str(control_plane.kubeconfig)) as api:
        ns = client.CoreV1Api(api).read_namespace(namespace)
        assert ns.metadata is not None and ns.metadata.name == namespace

    handler = tmp_path / "handler.py"
    handler.write_text(
        "import kopf\n\n"
        "@kopf.on.create('configmaps', labels={'e2e-kopf': 'yes'})\n"
        "def seen(patch, **_):\n"
        "    patch.metadata.annotations['e2e.startupmonkey.dev/seen-by-kopf'] = 'yes'\n"
    )
    log = (tmp_path / "kopf.log").open("wb")
    kopf = subprocess.Popen(
        [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", namespace,
         str(handler)],
        env=kube_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        control_plane.kubectl("create", "configmap", "watched", "-n", namespace,
                              "--from-literal=k=v")
        control_plane.kubectl("label", "configmap", "watched", "-n", namespace, "e2e-kopf=yes")

        def annotated() -> bool:
            if kopf.poll() is not None:
                # Not an AssertionError: wait_until would retry that; this must fail at once.
                raise RuntimeError(f"kopf exited {kopf.returncode}: "
                                     f"{(tmp_path / 'kopf.log').read_text()[-2000:]}")
            cm = control_plane.kubectl_json("get", "configmap", "watched", "-n", namespace)
            annotations = cm["metadata"].get("annotations") or {}
            return annotations.get("e2e.startupmonkey.dev/seen-by-kopf") == "yes"

        wait_until(annotated, timeout=60, interval=0.25, what="kopf annotates the ConfigMap")
    finally:
        if kopf.poll() is None:
            os.killpg(kopf.pid, signal.SIGTERM)
            try:
                kopf.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(kopf.pid, signal.SIGKILL)
                kopf.wait(timeout=5)
        log.close()


def test_stop_kills_every_process_and_removes_the_temp_dir(binaries: Binaries) -> None:
    cp = ControlPlane(binaries)
    with cp:
        pids = cp.pids()
        tmpdir = cp.tmpdir
        assert len(pids) == 3 and tmpdir is not None and tmpdir.is_dir()
        assert cp.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    for pid in pids:
        # Every child was reaped by stop(); nothing with that pid or process group remains.
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not tmpdir.exists()
    assert cp.tmpdir is None
