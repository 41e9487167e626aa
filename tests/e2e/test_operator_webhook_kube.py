"""Who approved: the operator's mutating admission webhook on the real API server.

The operator runs as in ``test_operator.py`` (a subprocess with a token of a ServiceAccount
bound to exactly ``rbac.OPERATOR_RULES`` plus ``rbac.webhook_rules(<its configuration>)``, the
chart's ClusterRoles with the webhook on, so creating and re-applying the
MutatingWebhookConfiguration with nothing but a named ``patch`` is proven enough) with
``STARTUPMONKEY_WEBHOOK_*`` set: a
serving certificate for 127.0.0.1 signed by a CA of the test's own (``openssl``), and the URL
the kube-apiserver calls.
Approvals are real ``kubectl patch`` calls made as a ServiceAccount with a token kubeconfig or
as the admin; the API server calls the webhook and applies its patch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from startupmonkey import rbac
from startupmonkey.models import remediation as rem_models
from tests.support.controlplane import ControlPlane, free_port
from tests.support.eventually import wait_until
from tests.support.kube_helpers import identity
from tests.support.operator_helpers import Operator, remediation

pytestmark = pytest.mark.e2e
APPROVED_BY = rem_models.ANNOTATION_APPROVED_BY
APPROVE = '{"spec":{"approved":true}}'
ADMIN = "startupmonkey-e2e-admin"  # the CN of the control plane's admin certificate
# The operator as test_operator.py runs it (``start_operator`` of conftest.py: a minted token,
# a clean stop), with the ``operator_kubeconfig`` below (a ServiceAccount of its own with the
# chart's rules, so this module never races another over the shared namespace).


def _openssl(cwd: Path, *args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the `openssl` command is needed to generate the webhook's certificate")
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def serving_certificate(d: Path) -> dict[str, Path]:
    """A CA and a serving certificate for 127.0.0.1 signed by it (EC P-256, one day)."""
    for name in ("ca", "tls"):
        _openssl(d, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", f"{name}.key")
    _openssl(d, "req", "-new", "-x509", "-key", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=webhook-e2e-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl(d, "req", "-new", "-x509", "-key", "tls.key", "-out", "tls.crt", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-addext", "basicConstraints=critical,CA:FALSE",
             "-addext", "keyUsage=critical,digitalSignature",
             "-addext", "extendedKeyUsage=serverAuth",
             "-addext", "subjectAltName=IP:127.0.0.1")
    return {"ca": d / "ca.crt", "cert": d / "tls.crt", "key": d / "tls.key"}


@pytest.fixture(scope="module")
def operator_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """The operator's own namespace; it also names the configuration this module's operators
    apply (so no other test's configuration is touched)."""
    namespace = control_plane.create_namespace("webhook-operator")
    yield namespace
    control_plane.delete_namespace(namespace, wait=False)


@pytest.fixture(scope="module")
def configuration_name(operator_namespace: str) -> str:
    return f"startupmonkey-approved-by-{operator_namespace}"


def _bound(name: str, namespace: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": name}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": name},
             "subjects": [{"kind": "ServiceAccount", "name": "operator",
                           "namespace": namespace}]}]


@pytest.fixture(scope="module")
def operator_kubeconfig(control_plane: ControlPlane, operator_namespace: str,
                        configuration_name: str,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A token kubeconfig of a ServiceAccount bound to exactly ``rbac.OPERATOR_RULES`` and
    ``rbac.webhook_rules(configuration_name)`` (what the chart grants with the webhook on)."""
    cp = control_plane
    namespace = operator_namespace
    role = f"startupmonkey-operator-{namespace}"
    objects = [{"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "operator", "namespace": namespace}},
               *_bound(role, namespace, rbac.OPERATOR_RULES),
               *_bound(f"{role}-webhook", namespace, rbac.webhook_rules(configuration_name))]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    token = cp.mint_token(namespace, "operator")
    yield cp.kubeconfig_for_token(token, tmp_path_factory.mktemp("operator") / "kubeconfig")
    cp.kubectl("delete", "clusterrolebinding,clusterrole", role, f"{role}-webhook",
               "--ignore-not-found")


@pytest.fixture
def webhook_settings(control_plane: ControlPlane, configuration_name: str,
                     tmp_path: Path) -> Iterator[dict[str, str]]:
    """The operator's webhook settings; the configuration is removed afterwards (the
    operator leaves it in place on purpose, failurePolicy Ignore covers its absence)."""
    certs = serving_certificate(tmp_path)
    name = configuration_name
    control_plane.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
    yield {"STARTUPMONKEY_WEBHOOK_ENABLED": "true",
           "STARTUPMONKEY_WEBHOOK_ADDRESS": "127.0.0.1",
           "STARTUPMONKEY_WEBHOOK_PORT": str(port := free_port()),
           "STARTUPMONKEY_WEBHOOK_URL": f"https://127.0.0.1:{port}",
           "STARTUPMONKEY_WEBHOOK_CERT_FILE": str(certs["cert"]),
           "STARTUPMONKEY_WEBHOOK_KEY_FILE": str(certs["key"]),
           "STARTUPMONKEY_WEBHOOK_CA_FILE": str(certs["ca"]),
           "STARTUPMONKEY_WEBHOOK_CONFIGURATION_NAME": name,
           "STARTUPMONKEY_WEBHOOK_TIMEOUT_SECONDS": "3"}
    control_plane.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")


def _create(cp: ControlPlane, namespace: str, name: str) -> None:
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(remediation(namespace, name)))


def _get(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cp.kubectl_json("get", "rem", name, "-n", namespace)
    return found


def _approved_by(cp: ControlPlane, namespace: str, name: str) -> str | None:
    annotations = _get(cp, namespace, name)["metadata"].get("annotations") or {}
    value = annotations.get(APPROVED_BY)
    return None if value is None else str(value)


def _patch(cp: ControlPlane, namespace: str, name: str, patch: str,
           kubeconfig: Path | None = None) -> None:
    cp.kubectl("patch", "rem", name, "-n", namespace, "--type", "merge", "-p", patch,
               kubeconfig=kubeconfig)


def _wait_for_the_webhook(cp: ControlPlane, namespace: str, configuration: str) -> None:
    """Until an admin approval of a fresh probe comes back annotated: the configuration is
    applied, the API server has loaded it and the operator's endpoint answers."""
    wait_until(lambda: cp.kubectl("get", "mutatingwebhookconfiguration", configuration,
                                  check=False).returncode == 0,
               timeout=30, interval=0.5, what="the MutatingWebhookConfiguration")
    probes = iter(range(1000))

    def annotated() -> bool:
        name = f"probe-{next(probes)}"
        _create(cp, namespace, name)
        _patch(cp, namespace, name, APPROVE)
        assert _approved_by(cp, namespace, name) == ADMIN, "the webhook is not called yet"
        return True

    wait_until(annotated, timeout=30, interval=0.5, what="the approval webhook")


def test_the_operator_may_apply_its_one_configuration_and_nothing_else(
        control_plane: ControlPlane, operator_kubeconfig: Path, configuration_name: str) -> None:
    cp = control_plane

    def can(*args: str) -> bool:
        proc = cp.kubectl("auth", "can-i", *args, kubeconfig=operator_kubeconfig, check=False)
        return proc.stdout.strip() == "yes"

    kind = "mutatingwebhookconfigurations.admissionregistration.k8s.io"
    assert can("patch", f"{kind}/{configuration_name}")
    assert not can("patch", f"{kind}/someone-elses-webhook")
    assert can("create", f"{kind}/{configuration_name}"), "the first server-side apply"
    assert not can("create", kind), "but nothing under another name"
    for verb in ("get", "list", "watch", "delete", "update"):
        assert not can(verb, f"{kind}/{configuration_name}"), verb
    assert not can("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/"
                   f"{configuration_name}")


def test_the_webhook_records_who_approved_and_nothing_else(
        control_plane: ControlPlane, namespace: str, tmp_path: Path,
        webhook_settings: dict[str, str], start_operator: Callable[..., Operator]) -> None:
    cp = control_plane
    token = identity(cp, namespace, "approver",
                     [rbac.rule(rbac.GROUP, ["remediations"], ["get", "patch"])])
    approver = cp.kubeconfig_for_token(token, tmp_path / "approver.kubeconfig", namespace)
    approver_name = f"system:serviceaccount:{namespace}:approver"
    for name in ("a", "b", "c", "d"):
        _create(cp, namespace, name)
    specs = {name: _get(cp, namespace, name)["spec"] for name in ("a", "c")}  # with defaults
    configuration = webhook_settings["STARTUPMONKEY_WEBHOOK_CONFIGURATION_NAME"]

    op = start_operator(**webhook_settings)
    _wait_for_the_webhook(cp, namespace, configuration)
    applied = cp.kubectl_json("get", "mutatingwebhookconfiguration", configuration)
    hook = applied["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["rules"][0]["operations"] == ["UPDATE"]
    assert hook["rules"][0]["apiGroups"] == ["startupmonkey.dev"]
    assert hook["rules"][0]["resources"] == ["remediations"]

    # An approval by a ServiceAccount names it.
    _patch(cp, namespace, "a", APPROVE, kubeconfig=approver)
    assert _approved_by(cp, namespace, "a") == approver_name

    # A change that is not an approval gets nothing, whoever makes it.
    _patch(cp, namespace, "b", '{"metadata":{"labels":{"team":"db"}}}', kubeconfig=approver)
    assert _approved_by(cp, namespace, "b") is None
    assert _get(cp, namespace, "b")["spec"]["approved"] is False
    # ... nor does a later change of an approved one (the approver stays who approved).
    _patch(cp, namespace, "a", '{"metadata":{"labels":{"team":"db"}}}')
    assert _approved_by(cp, namespace, "a") == approver_name

    # A requester cannot name someone else: the API server's word counts.
    forged = json.dumps({"metadata": {"annotations": {APPROVED_BY: "someone-else"}},
                         "spec": {"approved": True}})
    _patch(cp, namespace, "c", forged, kubeconfig=approver)
    assert _approved_by(cp, namespace, "c") == approver_name

    # The spec is exactly as the CRD's rules demand: only approved changed, and only forward.
    for name in ("a", "c"):
        spec = _get(cp, namespace, name)["spec"]
        assert spec == {**specs[name], "approved": True}
    back = cp.kubectl("patch", "rem", "a", "-n", namespace, "--type", "merge",
                      "-p", '{"spec":{"approved":false}}', check=False)
    assert back.returncode != 0 and "may only change from false to true" in back.stderr

    # The operator stops: the configuration stays, the endpoint is gone, approvals still work
    # (failurePolicy Ignore) and the approver is unknown (no annotation).
    assert op.stop() == 0
    assert cp.kubectl("get", "mutatingwebhookconfiguration", configuration,
                      check=False).returncode == 0
    started = time.monotonic()
    _patch(cp, namespace, "d", APPROVE, kubeconfig=approver)
    assert time.monotonic() - started < 30
    assert _get(cp, namespace, "d")["spec"]["approved"] is True
    assert _approved_by(cp, namespace, "d") is None
    assert "approval of remediation" in op.text()
