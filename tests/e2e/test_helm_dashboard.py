"""The chart's optional in-cluster dashboard (docs/dashboard.md, "In the cluster"): off by
default; on, it needs a TLS Secret, runs ``startupmonkey dashboard --in-cluster`` with the
operator's security settings and HTTPS probes, and its ServiceAccount gets exactly ``create``
on TokenReviews and SubjectAccessReviews (what
tests/e2e/test_dashboard_incluster_kube.py gives the dashboard it runs)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from startupmonkey import cli
from tests.e2e.test_dashboard_incluster_kube import DASHBOARD_RULES
from tests.support.controlplane import ControlPlane
from tests.support.operator_helpers import CHART, helm

pytestmark = pytest.mark.e2e
ON = ("dashboard.enabled=true", "dashboard.tls.secretName=dashboard-tls")


def _render(cp: ControlPlane, namespace: str, *sets: str) -> list[dict[str, Any]]:
    flags = [f"--set={s}" for s in sets]
    out = helm(cp, "template", "sm", str(CHART), "-n", namespace, *flags).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _dashboard(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
            == "dashboard"}


def test_the_defaults_render_no_dashboard(control_plane: ControlPlane, namespace: str) -> None:
    docs = _render(control_plane, namespace)
    assert _dashboard(docs) == {}
    text = yaml.safe_dump_all(docs)
    assert "--in-cluster" not in text and "tokenreviews" not in text


def test_enabled_without_a_tls_secret_fails_saying_so(control_plane: ControlPlane) -> None:
    result = helm(control_plane, "template", "sm", str(CHART), "--set",
                  "dashboard.enabled=true", check=False)
    assert result.returncode != 0
    assert "dashboard.enabled needs dashboard.tls.secretName" in result.stderr
    typo = helm(control_plane, "template", "sm", str(CHART), "--set",
                "dashboard.tls.secret=x", check=False)
    assert typo.returncode != 0 and "dashboard" in typo.stderr


def test_enabled_renders_exactly_the_review_rules_and_an_https_only_pod(
        control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    docs = _render(cp, namespace, *ON, "dashboard.namespace=shop")
    found = _dashboard(docs)
    name = "sm-startupmonkey-dashboard"
    assert sorted(found) == sorted([("ServiceAccount", name), ("ClusterRole", name),
                                    ("ClusterRoleBinding", name), ("Service", name),
                                    ("Deployment", name)])
    assert found[("ClusterRole", name)]["rules"] == DASHBOARD_RULES
    binding = found[("ClusterRoleBinding", name)]
    assert binding["roleRef"]["name"] == name
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name,
                                    "namespace": namespace}]
    # No other object of the chart names the dashboard's ServiceAccount.
    others = [d for d in docs if (d["kind"], d["metadata"]["name"]) not in found]
    assert name not in yaml.safe_dump_all(others)

    pod = found[("Deployment", name)]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["startupmonkey", "dashboard", "--in-cluster"]
    assert command[command.index("--tls-cert") + 1].endswith("/tls.crt")
    assert command[command.index("--tls-key") + 1].endswith("/tls.key")
    assert command[command.index("--namespace") + 1] == "shop"
    # The pod's command is one the real CLI takes, reading the files the Secret is mounted as.
    parsed = cli.build_parser().parse_args(command[1:])
    assert parsed.in_cluster and parsed.port == 8443 and parsed.namespace == "shop"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    assert {str(parsed.tls_cert.parent), str(parsed.tls_key.parent)} == {mount["mountPath"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "https",
                                               "scheme": "HTTPS"}
    startup = container["startupProbe"]  # a slow start is not taken for a dead server
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, startup
    assert "initialDelaySeconds" not in container["livenessProbe"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "dashboard-tls"
    # A writable /tmp under the read-only root filesystem (the web server's temporary files).
    (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
    assert "emptyDir" in tmp
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    service = found[("Service", name)]["spec"]
    assert service["ports"] == [{"name": "https", "port": 443, "targetPort": "https"}]
    assert service["selector"]["app.kubernetes.io/component"] == "dashboard"

    without_scope = _dashboard(_render(cp, namespace, *ON))
    assert "--namespace" not in without_scope[("Deployment", name)]["spec"]["template"][
        "spec"]["containers"][0]["command"]
    cp.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
               input=yaml.safe_dump_all(docs))
