"""Nobody can record someone else as the approver (issue 24.6): the chart's
ValidatingAdmissionPolicy on the real API server.

The policy is rendered from the chart (``helm template``) and bound to this test's namespace
only, so no other test's Remediations are judged by it. The approver is a ServiceAccount with
just ``get`` and ``patch`` on Remediations (what approving needs, the chart's edit rights):
it can approve, but not write another name into startupmonkey.dev/approved-by, not change it
later, and not file a reject or rollback request in someone else's name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from startupmonkey import rbac
from startupmonkey.models import remediation as rem_models
from tests.support.controlplane import ControlPlane
from tests.support.eventually import wait_until
from tests.support.kube_helpers import identity
from tests.support.operator_helpers import CHART, helm, remediation

pytestmark = pytest.mark.e2e
APPROVED_BY = rem_models.ANNOTATION_APPROVED_BY
REJECT = "startupmonkey.dev/reject-requested"


@pytest.fixture
def policy(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    """The chart's policy, bound to ``namespace`` only; removed afterwards."""
    cp = control_plane
    rendered = helm(cp, "template", "sm", str(CHART), "--show-only",
                    "templates/approver-policy.yaml").stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy",
                                         "ValidatingAdmissionPolicyBinding"]
    name = f"approved-by-{namespace}"
    docs[0]["metadata"]["name"] = docs[1]["metadata"]["name"] = name
    docs[1]["spec"]["policyName"] = name
    docs[1]["spec"]["matchResources"] = {"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    probes = iter(range(1000))

    def enforced() -> bool:  # the API server has loaded it once a forged approval is refused
        probe = f"probe-{next(probes)}"
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(remediation(namespace, probe)))
        forged = _patch(cp, namespace, probe, {"metadata": {"annotations": {
            APPROVED_BY: "someone-else"}}, "spec": {"approved": True}})
        return forged.returncode != 0

    wait_until(enforced, timeout=30, interval=0.5, what="the policy to be enforced")
    yield name
    cp.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name,
               "--ignore-not-found")


def _patch(cp: ControlPlane, namespace: str, name: str, body: dict[str, Any],
           kubeconfig: Path | None = None) -> Any:
    return cp.kubectl("patch", "rem", name, "-n", namespace, "--type", "merge", "-p",
                      json.dumps(body), kubeconfig=kubeconfig, check=False)


def _object(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cp.kubectl_json("get", "rem", name, "-n", namespace)
    return found


@pytest.fixture
def approver(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> tuple[Path, str]:
    token = identity(control_plane, namespace, "approver",
                     [rbac.rule(rbac.GROUP, ["remediations"], ["get", "patch"])])
    kubeconfig = control_plane.kubeconfig_for_token(token, tmp_path / "approver", namespace)
    return kubeconfig, f"system:serviceaccount:{namespace}:approver"


def test_an_approval_may_name_only_its_sender(control_plane: ControlPlane, namespace: str,
                                              policy: str, approver: tuple[Path, str]) -> None:
    cp, (kubeconfig, me) = control_plane, approver
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(remediation(namespace, "r1")))

    forged = _patch(cp, namespace, "r1", {"metadata": {"annotations": {APPROVED_BY: "alice"}},
                                          "spec": {"approved": True}}, kubeconfig)
    assert forged.returncode != 0
    assert "may only be set in the request that approves" in forged.stderr and me in forged.stderr
    assert _object(cp, namespace, "r1")["spec"].get("approved") is not True, "nothing changed"

    honest = _patch(cp, namespace, "r1", {"metadata": {"annotations": {APPROVED_BY: me}},
                                          "spec": {"approved": True}}, kubeconfig)
    assert honest.returncode == 0, honest.stderr
    found = _object(cp, namespace, "r1")
    assert found["spec"]["approved"] is True
    assert found["metadata"]["annotations"][APPROVED_BY] == me


def test_the_recorded_approver_never_changes_and_is_never_set_without_approving(
        control_plane: ControlPlane, namespace: str, policy: str,
        approver: tuple[Path, str]) -> None:
    cp, (kubeconfig, me) = control_plane, approver
    for name in ("r2", "r3"):
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(remediation(namespace, name)))

    # Claiming an approval in advance (to be credited with someone else's later one).
    early = _patch(cp, namespace, "r2", {"metadata": {"annotations": {APPROVED_BY: me}}},
                   kubeconfig)
    assert early.returncode != 0 and "may only be set" in early.stderr
    # A plain approval is allowed; it names nobody (the executor records "unknown").
    plain = _patch(cp, namespace, "r3", {"spec": {"approved": True}}, kubeconfig)
    assert plain.returncode == 0, plain.stderr
    assert APPROVED_BY not in (_object(cp, namespace, "r3")["metadata"].get("annotations") or {})
    # ... and nobody writes a name afterwards, not even the approver's own.
    late = _patch(cp, namespace, "r3", {"metadata": {"annotations": {APPROVED_BY: me}}},
                  kubeconfig)
    assert late.returncode != 0


def test_a_reject_request_names_its_sender(control_plane: ControlPlane, namespace: str,
                                           policy: str, approver: tuple[Path, str]) -> None:
    cp, (kubeconfig, me) = control_plane, approver
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(remediation(namespace, "r4")))

    forged = _patch(cp, namespace, "r4", {"metadata": {"annotations": {
        REJECT: "alice: not now"}}}, kubeconfig)
    assert forged.returncode != 0 and "must read" in forged.stderr
    honest = _patch(cp, namespace, "r4", {"metadata": {"annotations": {
        REJECT: f"{me}: not now"}}}, kubeconfig)
    assert honest.returncode == 0, honest.stderr
