"""The Helm chart on the real API server: lint, template, schema, install, the operator running
with the chart's ServiceAccount, and an uninstall that keeps CRDs and the audit trail."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from startupmonkey import cli, rbac
from startupmonkey.operator import config
from tests.support.controlplane import Binaries, ControlPlane
from tests.support.eventually import wait_until
from tests.support.operator_helpers import (
    CHART,
    create_secret,
    helm,
    monitor_manifest,
    start_with_chart_env,
    wait_for_children,
)

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CRDS = ("databasemonitors.startupmonkey.dev", "remediations.startupmonkey.dev")


def _render(cp: ControlPlane, namespace: str, *sets: str) -> list[dict[str, Any]]:
    flags = [f"--set={s}" for s in sets]
    out = helm(cp, "template", "sm", str(CHART), "-n", namespace, *flags).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_lint_strict_passes(control_plane: ControlPlane) -> None:
    result = helm(control_plane, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout


def test_template_is_accepted_by_the_api_server(control_plane: ControlPlane,
                                                namespace: str) -> None:
    cp = control_plane
    for variant in ((), ("watchNamespaces={" + namespace + "}",),
                    ("webhook.enabled=true", "webhook.certSecret=webhook-tls")):
        manifest = yaml.safe_dump_all(_render(cp, namespace, *variant))
        cp.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=manifest)


def test_a_values_typo_is_refused_by_the_schema(control_plane: ControlPlane) -> None:
    result = helm(control_plane, "template", "sm", str(CHART), "--set", "imagee.tag=1",
                  check=False)
    assert result.returncode != 0
    assert "imagee" in result.stderr
    wrong_type = helm(control_plane, "template", "sm", str(CHART), "--set",
                      "retention.count=many", check=False)
    assert wrong_type.returncode != 0 and "retention" in wrong_type.stderr
    no_cert = helm(control_plane, "template", "sm", str(CHART), "--set",
                   "webhook.enabled=true", check=False)
    assert no_cert.returncode != 0 and "webhook.certSecret" in no_cert.stderr


def test_network_policy_peers_are_refused_unless_they_are_peers(
        control_plane: ControlPlane, tmp_path: Path) -> None:
    def template(peers: list[Any]) -> subprocess.CompletedProcess[str]:
        values = tmp_path / "values.yaml"
        values.write_text(yaml.safe_dump({"networkPolicyPeers": peers}))
        return helm(control_plane, "template", "sm", str(CHART), "-f", str(values),
                    check=False)

    for bad in ([{"pods": {"matchLabels": {"app": "prometheus"}}}], [{}],
                [{"namespaceSelector": {"matchLabel": {"name": "monitoring"}}}],
                [{"ipBlock": {"except": ["10.0.0.0/24"]}}]):
        result = template(bad)
        assert result.returncode != 0, bad
        assert "networkPolicyPeers" in result.stderr, result.stderr
    good = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}},
             "podSelector": {"matchExpressions": [{"key": "app", "operator": "In",
                                                   "values": ["prometheus"]}]}},
            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/24"]}}]
    result = template(good)
    assert result.returncode == 0, result.stderr
    (deployment,) = [d for d in yaml.safe_load_all(result.stdout)
                     if d and d["kind"] == "Deployment"]
    env = {e["name"]: e["value"]
           for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert config.from_env(env).network.policy_peers == good


def _operator_roles(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], Any]:
    """(kind, namespace, name) -> rules of the operator's own Roles and ClusterRoles (not the
    aggregated view/edit roles for people)."""
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d["rules"]
            for d in docs if d["kind"] in ("ClusterRole", "Role")
            and not d["metadata"]["name"].endswith(("-view", "-edit"))}


WEBHOOK_ON = ("webhook.enabled=true", "webhook.certSecret=webhook-tls")


def test_the_chart_grants_exactly_the_documented_rules(control_plane: ControlPlane,
                                                       namespace: str) -> None:
    docs = _render(control_plane, namespace)
    assert _operator_roles(docs) == {("ClusterRole", "", "sm-startupmonkey"):
                                     rbac.OPERATOR_RULES}, "no webhook permission when it is off"
    for doc in docs:
        for rule in doc.get("rules", []):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["startupmonkey", "operator"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_with_the_webhook_on_a_small_cluster_role_names_its_one_configuration(
        control_plane: ControlPlane, namespace: str) -> None:
    """In both modes; in namespaced mode the Roles hold only namespaced rules (a cluster-scoped
    rule in a Role grants nothing)."""
    configuration = "sm-startupmonkey-approved-by"
    webhook_role = ("ClusterRole", "", "sm-startupmonkey-webhook")
    cluster = _render(control_plane, namespace, *WEBHOOK_ON)
    assert _operator_roles(cluster) == {("ClusterRole", "", "sm-startupmonkey"):
                                        rbac.OPERATOR_RULES,
                                        webhook_role: rbac.webhook_rules(configuration)}
    namespaced = _render(control_plane, namespace, *WEBHOOK_ON, "watchNamespaces={a,b}")
    assert _operator_roles(namespaced) == {("Role", "a", "sm-startupmonkey"): rbac.OPERATOR_RULES,
                                           ("Role", "b", "sm-startupmonkey"): rbac.OPERATOR_RULES,
                                           webhook_role: rbac.webhook_rules(configuration)}
    for docs in (cluster, namespaced):
        (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"
                      and d["metadata"]["name"] == "sm-startupmonkey-webhook"]
        assert binding["roleRef"]["name"] == "sm-startupmonkey-webhook"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sm-startupmonkey",
                                        "namespace": namespace}]
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        env = {e["name"]: e.get("value") for e in
               deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["STARTUPMONKEY_WEBHOOK_CONFIGURATION_NAME"] == configuration


@pytest.mark.timeout(120)
def test_namespaced_install_with_the_webhook_grants_what_the_docs_say(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """helm install with watchNamespaces and the webhook on, then `kubectl auth can-i` as the
    chart's ServiceAccount: the watched namespace's rules, only its own configuration."""
    cp = control_plane
    name = f"sm-{uuid.uuid4().hex[:6]}"
    fullname = f"{name}-startupmonkey"
    helm(cp, "install", name, str(CHART), "-n", namespace, "--set",
         f"watchNamespaces={{{namespace}}}", *[f"--set={v}" for v in WEBHOOK_ON])
    try:
        assert cp.kubectl("get", "clusterrole", fullname, check=False).returncode != 0
        kubeconfig = cp.kubeconfig_for_token(cp.mint_token(namespace, fullname),
                                             tmp_path / "operator.kubeconfig")

        def can(*args: str) -> bool:
            proc = cp.kubectl("auth", "can-i", *args, kubeconfig=kubeconfig, check=False)
            return proc.stdout.strip() == "yes"

        kind = "mutatingwebhookconfigurations.admissionregistration.k8s.io"
        assert can("create", "deployments.apps", "-n", namespace)
        assert can("patch", "databasemonitors.startupmonkey.dev", "-n", namespace)
        assert not can("create", "deployments.apps", "-n", "default")
        assert not can("list", "databasemonitors.startupmonkey.dev", "--all-namespaces")
        assert can("patch", f"{kind}/{fullname}-approved-by")
        assert not can("patch", f"{kind}/other")
        assert not can("create", kind)
        for verb in ("get", "list", "watch", "delete"):
            assert not can(verb, f"{kind}/{fullname}-approved-by"), verb
    finally:
        helm(cp, "uninstall", name, "-n", namespace, check=False)


def test_secret_namespaces_move_secret_access_out_of_the_cluster_role(
        control_plane: ControlPlane, namespace: str) -> None:
    """Issue 24.7: a cluster-wide install confines its Secret rights to secretNamespaces (a
    Role each); with watchNamespaces the option is refused (Roles confine them already)."""
    docs = _render(control_plane, namespace, "secretNamespaces={a,b}")
    secrets_role = "sm-startupmonkey-secrets"
    assert _operator_roles(docs) == {
        ("ClusterRole", "", "sm-startupmonkey"): rbac.operator_rules(secrets=False),
        ("Role", "a", secrets_role): rbac.SECRET_RULES,
        ("Role", "b", secrets_role): rbac.SECRET_RULES}
    assert not any("secrets" in r["resources"] for r in rbac.operator_rules(secrets=False))
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in bindings} == {
        ("a", secrets_role), ("b", secrets_role)}
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sm-startupmonkey",
                                        "namespace": namespace}]
    both = helm(control_plane, "template", "sm", str(CHART), "--set", "watchNamespaces={a}",
                "--set", "secretNamespaces={a}", check=False)
    assert both.returncode != 0 and "secretNamespaces" in both.stderr
    notes = {variant: helm(control_plane, "install", "sm", str(CHART), "--dry-run", "-n",
                           namespace, *variant).stdout
             for variant in ((), ("--set", "secretNamespaces={a}"),
                             ("--set", "watchNamespaces={a}"))}
    assert "every Secret in the cluster" in notes[()]
    assert "Secrets only in a:" in notes[("--set", "secretNamespaces={a}")]
    assert "Secrets only in those namespaces" in notes[("--set", "watchNamespaces={a}")]


@pytest.mark.timeout(300)
def test_secret_namespaces_install_runs_monitors_there_and_reads_no_secret_elsewhere(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """helm install with secretNamespaces: the operator (with the chart's identity) makes its
    generated Secrets for a monitor in that namespace; elsewhere it may not get a Secret, and
    a monitor there says so (SecretNotReadable) instead of failing silently."""
    cp = control_plane
    name = f"sm-{uuid.uuid4().hex[:6]}"
    fullname = f"{name}-startupmonkey"
    other = cp.create_namespace()
    helm(cp, "install", name, str(CHART), "-n", namespace, "--set",
         f"secretNamespaces={{{namespace}}}")
    try:
        deployment = cp.kubectl_json("get", "deployment", fullname, "-n", namespace)
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        kubeconfig = cp.kubeconfig_for_token(cp.mint_token(namespace, fullname),
                                             tmp_path / "operator.kubeconfig")

        def can(*args: str) -> bool:
            proc = cp.kubectl("auth", "can-i", *args, kubeconfig=kubeconfig, check=False)
            return proc.stdout.strip() == "yes"

        for verb in ("get", "create", "patch"):
            assert can(verb, "secrets", "-n", namespace), verb
            assert not can(verb, "secrets", "-n", other), verb
        assert not can("list", "secrets", "-n", namespace)
        assert not can("delete", "secrets", "-n", namespace)
        assert can("create", "deployments.apps", "-n", other)

        operator = start_with_chart_env(cp, kubeconfig, namespace, env,
                                        tmp_path / "operator.log")
        try:
            create_secret(cp, namespace)
            cp.kubectl("apply", "-f", "-", input=monitor_manifest(namespace))
            wait_for_children(cp, namespace)
            assert cp.kubectl("get", "secret", "shop-ingest", "-n", namespace,
                              check=False).returncode == 0
        finally:
            assert operator.stop() == 0, operator.text()[-3000:]
        # The same identity in a namespace outside secretNamespaces (an operator of its own:
        # the e2e operators watch their test's namespace only).
        operator = start_with_chart_env(cp, kubeconfig, other, env, tmp_path / "other.log")
        try:
            create_secret(cp, other)
            cp.kubectl("apply", "-f", "-", input=monitor_manifest(other))

            def refused() -> dict[str, Any]:
                body = cp.kubectl_json("get", "databasemonitor", "shop", "-n", other)
                reasons = {c["type"]: c["reason"]
                           for c in body.get("status", {}).get("conditions", [])}
                assert reasons.get("DatabaseReachable") == "SecretNotReadable", reasons
                return body

            wait_until(refused, timeout=60, interval=0.5)
            assert cp.kubectl("get", "secret", "shop-nats", "-n", other,
                              check=False).returncode != 0
        finally:
            assert operator.stop() == 0, operator.text()[-3000:]
    finally:
        helm(cp, "uninstall", name, "-n", namespace, check=False)
        cp.kubectl("delete", "databasemonitor", "shop", "-n", other, "--wait=false",
                   check=False)
        cp.delete_namespace(other, wait=False)


@pytest.mark.parametrize("variant", [
    (), WEBHOOK_ON, (*WEBHOOK_ON, "watchNamespaces={a,b}", "retention.count=7",
                     "networkPolicyPeers[0].namespaceSelector.matchLabels.name=monitoring")],
    ids=["defaults", "webhook", "webhook-namespaced"])
def test_the_charts_operator_settings_and_command_are_what_the_operator_reads(
        control_plane: ControlPlane, namespace: str, variant: tuple[str, ...]) -> None:
    """Every variable the chart sets is one operator/config.py reads, and from_env accepts
    their values; the command parses with the CLI's own parser; ports agree with both."""
    docs = _render(control_plane, namespace, *variant)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    unknown = set(env) - set(config.env_names())
    assert not unknown, f"the operator does not read {sorted(unknown)}"
    settings = config.from_env(env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    command = container["command"]
    assert command[0] == "startupmonkey", "the image's entrypoint (pyproject's script)"
    args = cli.build_parser().parse_args(command[1:])
    assert args.command == "operator"
    assert args.liveness_port == ports["health"]
    assert settings.observability.port == ports["metrics"]
    assert settings.images.data_plane == container["image"]
    assert settings.images.pull_policy == container["imagePullPolicy"]
    if "watchNamespaces={a,b}" in variant:
        assert settings.watching.namespaces == ["a", "b"]
        assert settings.retention.count == 7
        assert settings.network.policy_peers == [
            {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    if WEBHOOK_ON[0] in variant:
        assert settings.webhook.enabled is True
        assert settings.webhook.port == ports["webhook"]
        (service,) = [d for d in docs if d["kind"] == "Service"]
        assert settings.webhook.service == \
            f"{namespace}/{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
        assert service["spec"]["ports"][0]["targetPort"] == "webhook"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        for path in (settings.webhook.cert_file, settings.webhook.key_file,
                     settings.webhook.ca_file):
            assert Path(path).parent == Path(mounts["webhook-cert"])
    else:
        assert settings.webhook.enabled is False


def test_the_probes_point_at_the_operators_endpoints(control_plane: ControlPlane,
                                                     namespace: str) -> None:
    """Liveness is kopf's /healthz on --liveness-port; readiness the operator's /readyz on
    STARTUPMONKEY_OBSERVABILITY_PORT (where /metrics is too), both as the operator reads them."""
    (deployment,) = [d for d in _render(control_plane, namespace) if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    command = container["command"]
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"]["path"] == "/healthz"
    # A slow start (a loaded node) is not taken for a dead operator: liveness starts after
    # the first answer, as for the data plane (operator/pods.py STARTUP_PERIOD).
    startup = container["startupProbe"]
    assert startup["httpGet"] == liveness["httpGet"] and "initialDelaySeconds" not in liveness
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, startup
    assert str(ports[liveness["httpGet"]["port"]]) == command[command.index("--liveness-port")
                                                            + 1]
    assert readiness["httpGet"]["path"] == "/readyz"
    assert str(ports[readiness["httpGet"]["port"]]) == env["STARTUPMONKEY_OBSERVABILITY_PORT"]
    assert readiness["httpGet"]["port"] == "metrics"


@pytest.fixture
def release(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    name = f"sm-{uuid.uuid4().hex[:6]}"
    helm(control_plane, "install", name, str(CHART), "-n", namespace)
    yield name
    helm(control_plane, "uninstall", name, "-n", namespace, check=False)


@pytest.mark.timeout(300)
def test_install_run_the_operator_with_the_charts_identity_and_uninstall(
        control_plane: ControlPlane, namespace: str, release: str, tmp_path: Path) -> None:
    cp = control_plane
    fullname = f"{release}-startupmonkey"
    for kind in ("deployment", "serviceaccount"):
        cp.kubectl("get", kind, fullname, "-n", namespace)
    for kind in ("clusterrole", "clusterrolebinding"):
        cp.kubectl("get", kind, fullname)
    deployment = cp.kubectl_json("get", "deployment", fullname, "-n", namespace)
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    token = cp.mint_token(namespace, fullname)
    kubeconfig = cp.kubeconfig_for_token(token, tmp_path / "operator.kubeconfig")

    def can(*args: str) -> bool:
        proc = cp.kubectl("auth", "can-i", *args, kubeconfig=kubeconfig, check=False)
        return proc.stdout.strip() == "yes"

    assert can("create", "deployments.apps", "-n", namespace)
    assert not can("delete", "secrets", "-n", namespace)
    assert not can("get", "pods", "-n", namespace)
    assert not can("create", "clusterroles")

    operator = start_with_chart_env(cp, kubeconfig, namespace, env, tmp_path / "operator.log")
    try:
        create_secret(cp, namespace)
        cp.kubectl("apply", "-f", "-", input=monitor_manifest(namespace))
        wait_for_children(cp, namespace)
    finally:
        assert operator.stop() == 0, operator.text()[-3000:]
    remediation = {
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "Remediation",
        "metadata": {"name": "shop-0000000001", "namespace": namespace,
                     "labels": {"startupmonkey.dev/monitor": "shop"}},
        "spec": {"monitor": "shop", "detectionKey": "k", "detectionId": "d" * 32,
                 "detector": "stale_statistics", "action": "analyze",
                 "riskClass": "maintenance", "sqlHash": "a" * 64}}
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(remediation))
    helm(cp, "uninstall", release, "-n", namespace)
    assert cp.kubectl("get", "deployment", fullname, "-n", namespace,
                      check=False).returncode != 0
    for crd in ("databasemonitors.startupmonkey.dev", "remediations.startupmonkey.dev"):
        cp.kubectl("get", "crd", crd)
    cp.kubectl("get", "rem", "shop-0000000001", "-n", namespace)


@pytest.fixture
def bare_control_plane(binaries: Binaries) -> Iterator[ControlPlane]:
    """A control plane of this test's own with no CRDs (the session one has crds/ applied
    before any helm runs, so it cannot show that the chart installs them); always stopped."""
    cp = ControlPlane(binaries)
    cp.start(timeout=90)
    try:
        yield cp
    finally:
        cp.stop()


def _crd_conditions(cp: ControlPlane, name: str) -> dict[str, str]:
    crd = cp.kubectl_json("get", "crd", name)
    return {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}


@pytest.mark.timeout(300)
def test_helm_install_installs_the_crds_and_uninstall_keeps_them(
        bare_control_plane: ControlPlane) -> None:
    cp = bare_control_plane
    for crd in CRDS:
        assert cp.kubectl("get", "crd", crd, check=False).returncode != 0, \
            f"{crd} exists before the chart is installed"

    helm(cp, "install", "sm", str(CHART), "-n", "startupmonkey", "--create-namespace")
    for crd in CRDS:
        conditions = _crd_conditions(cp, crd)
        assert conditions.get("Established") == "True", (crd, conditions)
        assert conditions.get("NamesAccepted") == "True", (crd, conditions)
        installed = cp.kubectl_json("get", "crd", crd)
        shipped = yaml.safe_load((CHART / "crds" / f"startupmonkey.dev_{crd.split('.')[0]}.yaml"
                                  ).read_text())
        names = installed["spec"]["names"]
        assert {k: names.get(k) for k in shipped["spec"]["names"]} == shipped["spec"]["names"]
        assert [v["name"] for v in installed["spec"]["versions"]] == \
            [v["name"] for v in shipped["spec"]["versions"]]
    # Usable at once: the API server validates a monitor against the installed schema.
    cp.kubectl("apply", "--dry-run=server", "-n", "default", "-f",
               str(ROOT / "examples" / "monitor.yaml"))
    cp.kubectl("get", "deployment", "sm-startupmonkey", "-n", "startupmonkey")

    helm(cp, "uninstall", "sm", "-n", "startupmonkey")
    assert cp.kubectl("get", "deployment", "sm-startupmonkey", "-n", "startupmonkey",
                      check=False).returncode != 0, "the release's objects are gone"
    for crd in CRDS:
        assert _crd_conditions(cp, crd).get("Established") == "True", \
            f"{crd} must survive helm uninstall"
