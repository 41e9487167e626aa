"""``startupmonkey check --kube NAME -n NS`` on a real API server (issue 21.1, the cluster half):
the RBAC of the ServiceAccounts the operator made (LocalSubjectAccessReviews), a Role that
lost a rule, a missing or forbidden monitor, a monitor the operator has not reconciled, a user
who may not ask what others may do; and the check pod as the API server accepts it, built from
the executor's pod template, and deleted when the check ends (this control plane has no node:
the pod never runs, and the check says why). Running the checks inside a pod is
tests/pods/test_check_pod_on_a_node.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from startupmonkey import rbac
from tests.support.controlplane import ControlPlane
from tests.support.eventually import wait_until
from tests.support.operator_helpers import Operator, monitor_manifest

pytestmark = pytest.mark.e2e
EXE = Path(sys.executable).with_name("startupmonkey")
CHECK_PODS = "startupmonkey.dev/check=true"


def _check(cp: ControlPlane, namespace: str, *extra: str, kubeconfig: Path | None = None,
           name: str = "shop") -> subprocess.Popen[str]:
    return subprocess.Popen([str(EXE), "check", "--kube", name, "-n", namespace, "-o", "json",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cp.env(kubeconfig))


def _report(proc: subprocess.Popen[str]) -> tuple[int, dict[str, dict[str, str]]]:
    out, err = proc.communicate(timeout=120)
    assert not err, err
    document = json.loads(out)
    checks = {c["name"]: c for c in document["checks"]}
    assert document["ok"] is (proc.returncode == 0), document
    return proc.returncode, checks


def _check_pods(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cp.kubectl_json("get", "pods", "-n", namespace, "-l",
                                                  CHECK_PODS)["items"]
    return found


def test_the_operators_service_accounts_pass_and_a_role_without_a_rule_fails(
        control_plane: ControlPlane, namespace: str,
        data_plane: Callable[..., Operator]) -> None:
    cp = control_plane
    operator = data_plane()
    proc = _check(cp, namespace, "--pod-timeout", "8")
    # The check pod as the API server accepted it: the executor's pod with another command.
    (pod,) = wait_until(lambda: _check_pods(cp, namespace), timeout=30, interval=0.2)
    code, checks = _report(proc)
    assert code == 1
    for component in ("collector", "analyser", "executor", "nats"):
        assert checks[f"rbac shop-{component}"]["level"] == "OK", checks
    assert "may do the 15 things the executor needs" in checks["rbac shop-executor"]["message"]
    assert checks["monitor"]["level"] == "OK"
    assert checks["check pod"]["level"] == "FAIL"
    assert "within 8 s: no node was assigned to it" in checks["check pod"]["message"], checks
    assert _check_pods(cp, namespace) == [], "the check pod was left behind"

    executor = cp.kubectl_json("get", "deployment", "shop-executor", "-n", namespace)
    template = executor["spec"]["template"]["spec"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["startupmonkey", "check", "--config",
                                    "/etc/startupmonkey/config.yaml", "--message-file",
                                    "/dev/termination-log", "-o", "json"]
    assert (spec["serviceAccountName"], spec["restartPolicy"], spec["activeDeadlineSeconds"],
            spec["automountServiceAccountToken"]) == ("shop-executor", "Never", 8, False)
    assert container["image"] == template["containers"][0]["image"]
    assert container["securityContext"] == template["containers"][0]["securityContext"]
    assert container["resources"] == template["containers"][0]["resources"]
    assert container["volumeMounts"] == template["containers"][0]["volumeMounts"]
    assert spec["volumes"] == template["volumes"]
    assert {"startupProbe", "livenessProbe", "readinessProbe", "ports"}.isdisjoint(container), \
        container
    uid = cp.kubectl_json("get", "dbm", "shop", "-n", namespace)["metadata"]["uid"]
    (owner,) = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("DatabaseMonitor", "shop", uid)
    assert not owner.get("controller"), owner
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "executor"
    assert pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "startupmonkey-check"

    # With the operator stopped (it would put the rule back), the executor's Role loses
    # "create events": the executor's check names exactly that, and the fix.
    assert operator.stop() == 0
    role = cp.kubectl_json("get", "role", "shop-executor", "-n", namespace)
    events = role["rules"].index(rbac.rule("", ["events"], ["create"]))
    cp.kubectl("patch", "role", "shop-executor", "-n", namespace, "--type", "json", "-p",
               json.dumps([{"op": "remove", "path": f"/rules/{events}"}]))
    code, checks = _report(_check(cp, namespace, "--pod-timeout", "1"))
    assert code == 1
    executor_check = checks["rbac shop-executor"]
    assert executor_check["level"] == "FAIL", checks
    assert executor_check["message"] == "shop-executor may not: create events (the executor " \
        "needs it)"
    assert f"kubectl describe role shop-executor -n {namespace}" in executor_check["fix"]
    assert checks["rbac shop-collector"]["level"] == "OK"
    assert _check_pods(cp, namespace) == []


def test_a_missing_or_forbidden_monitor_fails_with_the_api_servers_words(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    code, checks = _report(_check(cp, namespace, name="nowhere"))
    assert code == 1
    assert list(checks) == ["monitor"]
    assert checks["monitor"]["level"] == "FAIL"
    assert f"cannot read DatabaseMonitor {namespace}/nowhere: 404 Not Found" in \
        checks["monitor"]["message"]
    assert f"kubectl get databasemonitors -n {namespace}" in checks["monitor"]["fix"]

    cp.kubectl("create", "serviceaccount", "stranger", "-n", namespace)
    stranger = cp.kubeconfig_for_token(cp.mint_token(namespace, "stranger"),
                                       tmp_path / "stranger.kubeconfig")
    code, checks = _report(_check(cp, namespace, kubeconfig=stranger))
    assert code == 1
    assert list(checks) == ["monitor"]
    assert f"cannot read DatabaseMonitor {namespace}/shop: 403 Forbidden: " \
           f'databasemonitors.startupmonkey.dev "shop" is forbidden' in \
        checks["monitor"]["message"], checks
    assert "ask for get on databasemonitors.startupmonkey.dev" in checks["monitor"]["fix"]


def test_a_monitor_without_an_operator_fails_saying_its_children_are_missing(
        control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.kubectl("apply", "-f", "-", input=monitor_manifest(namespace))
    code, checks = _report(_check(cp, namespace))
    assert code == 1
    assert checks["monitor"]["level"] == "OK"
    for component in ("collector", "analyser", "executor", "nats"):
        missing = checks[f"rbac shop-{component}"]
        assert missing["level"] == "FAIL"
        assert missing["message"] == f"ServiceAccount {namespace}/shop-{component} does not " \
            f"exist: the {component}'s pods cannot be created"
        assert "is it running?" in missing["fix"]
    pod = checks["check pod"]
    assert pod["level"] == "FAIL"
    assert pod["message"] == f"cannot read Deployment {namespace}/shop-executor: 404 Not " \
        'Found: deployments.apps "shop-executor" not found: the operator has not made the ' \
        "monitor's data plane"
    assert f"is the operator running and watching {namespace}?" in pod["fix"]


def test_a_user_who_may_not_review_access_gets_a_warning_and_cannot_create_the_pod(
        control_plane: ControlPlane, namespace: str, data_plane: Callable[..., Operator],
        tmp_path: Path) -> None:
    cp = control_plane
    data_plane()
    reader = [rbac.rule(rbac.GROUP, ["databasemonitors"], ["get"]),
              rbac.rule("", ["serviceaccounts"], ["get"]),
              rbac.rule("apps", ["deployments"], ["get"])]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "reader", "namespace": namespace}},
        rbac.role("reader", namespace, reader),
        rbac.role_binding("reader", namespace, "reader")]))
    kubeconfig = cp.kubeconfig_for_token(cp.mint_token(namespace, "reader"),
                                         tmp_path / "reader.kubeconfig")
    code, checks = _report(_check(cp, namespace, kubeconfig=kubeconfig))
    assert code == 1
    assert checks["monitor"]["level"] == "OK"
    warned = checks["rbac shop-executor"]
    assert warned["level"] == "WARN", checks
    assert "not checked: you may not ask what ServiceAccount shop-executor may do" in \
        warned["message"]
    assert "kubectl auth can-i --as system:serviceaccount:" in warned["fix"]
    assert checks["rbac shop-collector"]["level"] == "OK"
    created = checks["check pod"]
    assert created["level"] == "FAIL"
    assert f"cannot create the check pod in {namespace}: 403 Forbidden" in created["message"]
    assert f"kubectl auth can-i create pods -n {namespace}" in created["fix"]
