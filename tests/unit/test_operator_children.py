"""Builders of a monitor's children: owners, labels, pods that meet the restricted profile,
Secrets only as files, least-privilege ServiceAccounts, NetworkPolicies."""

from __future__ import annotations

from typing import Any

import pytest

from startupmonkey import rbac
from startupmonkey.operator import children, monitor, nats, render
from startupmonkey.operator import config as config_mod

C = monitor.Component
SETTINGS = config_mod.OperatorSettings.model_validate({
    "images": {"data_plane": "example/sm:1", "nats": "example/nats:2"},
    "network": {"policy_peers": [{"namespaceSelector": {"matchLabels": {"name": "mon"}}}]}})


def view(**spec: Any) -> monitor.View:
    base: dict[str, Any] = {"database": {"host": "db", "dbname": "shop",
                                         "credentialsSecret": {"name": "shop-db"}}}
    base.update(spec)
    return monitor.parse({"metadata": {"name": "shop", "namespace": "prod", "uid": "u-1",
                                       "generation": 1}, "spec": base})


def objects(v: monitor.View) -> dict[tuple[str, str], dict[str, Any]]:
    every = children.data_plane(v, SETTINGS, "1") + nats.objects(v, SETTINGS, "1")
    return {(o["kind"], o["metadata"]["name"]): o for o in every}


def test_every_child_is_owned_labelled_and_named_after_the_monitor() -> None:
    every = objects(view())
    assert set(every) == {
        ("ConfigMap", "shop-config"),
        *{(k, f"shop-{c}") for k in ("ServiceAccount", "Deployment", "NetworkPolicy")
          for c in C},
        ("Role", "shop-executor"), ("RoleBinding", "shop-executor"),
        ("Service", "shop-analyser"), ("Service", "shop-executor"), ("Service", "shop-nats")}
    for obj in every.values():
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
                         "name": "shop", "uid": "u-1", "controller": True,
                         "blockOwnerDeletion": True}
        labels = obj["metadata"]["labels"]
        assert labels["startupmonkey.dev/monitor"] == "shop"
        assert labels["app.kubernetes.io/managed-by"] == "startupmonkey-operator"
        assert labels["app.kubernetes.io/instance"] == "shop"
        assert obj["metadata"]["namespace"] == "prod"


@pytest.mark.parametrize("component", list(C))
def test_pods_are_restricted_and_probed(component: C) -> None:
    dep = objects(view())[("Deployment", f"shop-{component}")]
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= \
        dep["spec"]["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] in ("/readyz", "/healthz")
    assert pod["automountServiceAccountToken"] is (component is C.EXECUTOR)
    for volume in pod["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["defaultMode"] == 0o400
    for env in container.get("env", []):
        assert "value" not in env, "no secret (or anything) as a literal env value"


@pytest.mark.parametrize("component", [c for c in C if c is not C.NATS])
def test_a_slow_start_is_not_taken_for_a_dead_process(component: C) -> None:
    """The liveness probe waits for /healthz to answer once (the startupProbe): a Python
    component starved of CPU at its start (a loaded node; requests of 50-100m) is not killed
    and restarted before its observability port is up, as an executor held to 25m was, and
    as the executor of a loaded CI run most likely was (restartCount 2 for the one kill of
    tests/pods/test_chart_on_a_node.py)."""
    (container,) = objects(view())[("Deployment", f"shop-{component}")]["spec"]["template"][
        "spec"]["containers"]
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    assert startup["httpGet"] == liveness["httpGet"] == {"path": "/healthz",
                                                         "port": "observability"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, startup
    # Once started, a hung process is still restarted within about a minute.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] <= 60, liveness
    assert "initialDelaySeconds" not in liveness


@pytest.mark.parametrize("component", list(monitor.DATA_PLANE))
def test_data_plane_pods_run_the_cli_with_the_mounted_config(component: C) -> None:
    pod = objects(view())[("Deployment", f"shop-{component}")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "example/sm:1"
    assert container["command"] == ["startupmonkey", str(component), "--config",
                                    "/etc/startupmonkey/config.yaml",
                                    "--observability-port", "8080"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == "/etc/startupmonkey"
    assert ("database" in mounts) is (component is not C.ANALYSER)
    assert ("nats" in mounts) is (component is not C.COLLECTOR)
    assert pod["serviceAccountName"] == f"shop-{component}"


def test_secret_volumes_map_the_spec_keys_onto_fixed_file_names() -> None:
    v = view(database={"host": "db", "dbname": "shop",
                       "credentialsSecret": {"name": "shared"},
                       "executorCredentialsSecret": {"name": "rw", "userKey": "u",
                                                     "passwordKey": "p"}})
    every = objects(v)

    def volume(component: C, name: str) -> dict[str, Any]:
        pod = every[("Deployment", f"shop-{component}")]["spec"]["template"]["spec"]
        found: dict[str, Any] = next(x for x in pod["volumes"] if x["name"] == name)["secret"]
        return found

    assert volume(C.COLLECTOR, "database")["secretName"] == "shared"
    executor = volume(C.EXECUTOR, "database")
    assert executor["secretName"] == "rw"
    assert executor["items"] == [{"key": "u", "path": "username"},
                                 {"key": "p", "path": "password"}]
    assert volume(C.ANALYSER, "nats")["items"] == [
        {"key": "analyser-user", "path": "username"},
        {"key": "analyser-password", "path": "password"}]


def test_executor_gets_pod_name_replicas_and_exactly_the_designed_role() -> None:
    every = objects(view(executor={"replicas": 3}))
    dep = every[("Deployment", "shop-executor")]
    assert dep["spec"]["replicas"] == 3
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [{"name": "POD_NAME", "valueFrom": {
        "fieldRef": {"fieldPath": "metadata.name"}}}]
    assert every[("Role", "shop-executor")]["rules"] == rbac.EXECUTOR_RULES
    binding = every[("RoleBinding", "shop-executor")]
    assert binding["roleRef"]["name"] == "shop-executor"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "shop-executor",
                                    "namespace": "prod"}]
    for name in ("shop-collector", "shop-analyser", "shop-nats"):
        assert every[("ServiceAccount", name)]["automountServiceAccountToken"] is False
    assert every[("ServiceAccount", "shop-executor")]["automountServiceAccountToken"] is True


def test_suspend_scales_everything_to_zero() -> None:
    every = objects(view(suspend=True, executor={"replicas": 2}))
    for component in C:
        assert every[("Deployment", f"shop-{component}")]["spec"]["replicas"] == 0


def _ingress(every: dict[tuple[str, str], dict[str, Any]], component: C
             ) -> list[tuple[list[dict[str, Any]], set[int]]]:
    spec = every[("NetworkPolicy", f"shop-{component}")]["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    return [(rule["from"], {p["port"] for p in rule["ports"]}) for rule in spec["ingress"]]


def test_only_own_components_reach_analyser_and_nats_while_metrics_are_open() -> None:
    every = objects(view())
    own = {"app.kubernetes.io/name": "startupmonkey", "app.kubernetes.io/instance": "shop"}
    namespace_and_extra = [{"podSelector": {}}, *SETTINGS.network.policy_peers]
    assert _ingress(every, C.ANALYSER) == [
        ([{"podSelector": {"matchLabels": {**own, "app.kubernetes.io/component": "collector"}}}],
         {50051}),
        (namespace_and_extra, {8080})]
    nats_rules = _ingress(every, C.NATS)
    assert nats_rules[0][1] == {4222}
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for p in nats_rules[0][0]] == ["analyser", "executor"]
    assert nats_rules[1] == (namespace_and_extra, {8222})
    # No executor API port: in a cluster nothing there takes a token (issue 24.2).
    assert _ingress(every, C.EXECUTOR) == [(namespace_and_extra, {8080})]
    assert _ingress(every, C.COLLECTOR) == [(namespace_and_extra, {8080})]


def test_services_expose_the_ingest_and_metrics_ports_and_no_executor_api() -> None:
    every = objects(view())
    ports = {name: {p["name"]: p["port"] for p in every[("Service", name)]["spec"]["ports"]}
             for name in ("shop-analyser", "shop-executor", "shop-nats")}
    assert ports == {"shop-analyser": {"grpc": 50051, "observability": 8080},
                     "shop-executor": {"observability": 8080},
                     "shop-nats": {"client": 4222, "monitoring": 8222}}


def test_external_bus_mounts_its_secret_and_needs_no_managed_nats() -> None:
    v = view(eventBus={"url": "nats://bus:4222",
                       "credentialsSecret": {"name": "bus", "userKey": "u", "passwordKey": "p"}})
    assert not v.managed_nats
    every = {(o["kind"], o["metadata"]["name"]): o
             for o in children.data_plane(v, SETTINGS, None)}
    pod = every[("Deployment", "shop-executor")]["spec"]["template"]["spec"]
    nats_volume = next(x for x in pod["volumes"] if x["name"] == "nats")
    assert nats_volume["secret"]["secretName"] == "bus"
    assert not any(name.endswith("-nats") for _, name in every)


def test_collector_and_analyser_mount_the_generated_ingest_token_and_use_it() -> None:
    built = objects(view())
    for component in (C.COLLECTOR, C.ANALYSER):
        pod = built[("Deployment", f"shop-{component}")]["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "ingest")["secret"]
        assert volume["secretName"] == "shop-ingest" and volume["defaultMode"] == 0o400
        (container,) = pod["containers"]
        assert {"name": "ingest", "mountPath": "/var/run/secrets/startupmonkey/ingest",
                "readOnly": True} in container["volumeMounts"]
    for component in (C.EXECUTOR,):
        pod = built[("Deployment", f"shop-{component}")]["spec"]["template"]["spec"]
        assert all(v["name"] != "ingest" for v in pod["volumes"])
    config = render.component_config(view())
    assert config.collector is not None and config.analyser is not None
    token = "/var/run/secrets/startupmonkey/ingest/token"
    assert str(config.collector.ingest_token_file) == str(config.analyser.ingest_token_file) \
        == token
