"""The operator on the real API server, with exactly the RBAC the Helm chart will ship.

Each test runs ``startupmonkey operator --namespace <its namespace>`` as a subprocess whose
kubeconfig holds a token minted for the ServiceAccount of ``deploy/operator-rbac.yaml`` (the
ClusterRole ``rbac.OPERATOR_RULES``), so every call the operator makes is proven allowed. There
is no kubelet: a test plays the Deployment controller with ``mark_deployment_available`` and
the executor by patching ``status.database`` / ``status.remediations``; the garbage collector
of kube-controller-manager is real. Every operator must stop on SIGTERM with status 0 and no
traceback or warning in its log.
"""

from __future__ import annotations

import datetime
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from startupmonkey import rbac
from tests.support.controlplane import ControlPlane, KubectlError
from tests.support.eventually import wait_until
from tests.support.operator_helpers import (
    CHILDREN,
    COMPONENTS,
    OPERATOR_SA,
    Operator,
    create_secret,
    exists,
    get,
    monitor_manifest,
    remediation,
    spawn,
    wait_for_children,
)

pytestmark = pytest.mark.e2e


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of a GET on 127.0.0.1 (an error status is returned, not raised)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if line.startswith("#") or not sample.startswith(name):
            continue
        got_name, _, got_labels = sample.partition("{")
        got = ",".join(sorted(got_labels.rstrip("}").split(","))) if got_labels else ""
        if got_name == name and got == wanted:
            return float(value)
    return 0.0


# ----------------------------------------------------------------------------- helpers


def conditions(cp: ControlPlane, namespace: str, name: str = "shop") -> dict[str, Any]:
    body = get(cp, namespace, "dbm", name)
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}


def condition_is(cp: ControlPlane, namespace: str, kind: str, status: str,
                 reason: str | None = None) -> Callable[[], bool]:
    def check() -> bool:
        cond = conditions(cp, namespace).get(kind)
        assert cond is not None, f"no {kind} condition yet"
        assert cond["status"] == status, cond
        assert reason is None or cond["reason"] == reason, cond
        return True

    check.__qualname__ = f"{kind}={status}/{reason}"
    return check


def patch_status(cp: ControlPlane, namespace: str, status: dict[str, Any],
                 kind: str = "dbm", name: str = "shop") -> None:
    cp.kubectl("patch", kind, name, "-n", namespace, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": status}))


def now_iso(offset_seconds: float = 0) -> str:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset_seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def restart_hash(cp: ControlPlane, namespace: str, component: str) -> str:
    dep = get(cp, namespace, "deployment", f"shop-{component}")
    return str(dep["spec"]["template"]["metadata"]["annotations"]["startupmonkey.dev/restart-hash"])


def mark_all(cp: ControlPlane, namespace: str, available: bool = True) -> None:
    for component in COMPONENTS:
        cp.mark_deployment_available(namespace, f"shop-{component}", available)


# ----------------------------------------------------------------------------- tests


def test_a_monitor_becomes_a_data_plane_owned_by_it(
        control_plane: ControlPlane, namespace: str,
        data_plane: Callable[..., Operator]) -> None:
    cp = control_plane
    data_plane(executor={"replicas": 2})
    uid = get(cp, namespace, "dbm", "shop")["metadata"]["uid"]
    for kind, name in CHILDREN:
        (owner,) = get(cp, namespace, kind, name)["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "DatabaseMonitor", "shop", uid, True), (kind, name)

    executor = get(cp, namespace, "deployment", "shop-executor")
    assert executor["spec"]["replicas"] == 2
    pod = executor["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.test/startupmonkey:e2e"
    assert container["command"][:2] == ["startupmonkey", "executor"]
    assert container["env"][0]["name"] == "POD_NAME"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    secret_volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert secret_volumes["database"]["secretName"] == "shop-db"
    assert secret_volumes["database"]["defaultMode"] == 0o400
    assert secret_volumes["nats"]["secretName"] == "shop-nats"
    assert get(cp, namespace, "role", "shop-executor")["rules"] == rbac.EXECUTOR_RULES
    for component in ("collector", "analyser", "nats"):
        sa = get(cp, namespace, "serviceaccount", f"shop-{component}")
        assert sa["automountServiceAccountToken"] is False

    config = yaml.safe_load(get(cp, namespace, "configmap", "shop-config")["data"]["config.yaml"])
    assert config["monitor"] == {"namespace": namespace, "name": "shop"}
    assert config["executor"]["nats"]["url"] == f"nats://shop-nats.{namespace}.svc:4222"
    assert "s3cret" not in json.dumps(config)
    nats_secret = get(cp, namespace, "secret", "shop-nats")
    assert {"analyser-user", "analyser-password", "executor-user", "executor-password",
            "nats.conf"} <= set(nats_secret["data"])
    wait_until(condition_is(cp, namespace, "DatabaseReachable", "Unknown", "NotReported"),
               timeout=15)
    body = get(cp, namespace, "dbm", "shop")
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    assert set(body["status"]) == {"observedGeneration", "conditions", "phase"}, \
        "only the operator's keys, no handler results"
    assert body["metadata"]["finalizers"] == ["startupmonkey.dev/drain"]
    annotations = body["metadata"]["annotations"]
    assert "startupmonkey.dev/last-handled-configuration" in annotations
    assert not any(k.startswith("kopf.zalando.org") for k in annotations)


def test_config_changes_hot_reload_and_restart_worthy_changes_roll(
        control_plane: ControlPlane, namespace: str,
        data_plane: Callable[..., Operator]) -> None:
    cp = control_plane
    data_plane("shop-db-rotated")
    before = {c: restart_hash(cp, namespace, c) for c in COMPONENTS}
    generations = {c: get(cp, namespace, "deployment", f"shop-{c}")["metadata"]["generation"]
                   for c in COMPONENTS}

    cp.kubectl("patch", "dbm", "shop", "-n", namespace, "--type=merge", "-p", json.dumps(
        {"spec": {"thresholds": {"dead_tuples": {"minDeadRatio": 0.42}}}}))

    def config_has_new_threshold() -> bool:
        text = get(cp, namespace, "configmap", "shop-config")["data"]["config.yaml"]
        return bool(yaml.safe_load(text)["spec"]["thresholds"]["dead_tuples"]["minDeadRatio"]
                    == 0.42)

    wait_until(config_has_new_threshold, timeout=20, interval=0.5)
    time.sleep(1)  # the apply of the Deployments follows the ConfigMap's
    for c in COMPONENTS:
        dep = get(cp, namespace, "deployment", f"shop-{c}")
        assert dep["metadata"]["generation"] == generations[c], f"{c} was rolled"
    assert {c: restart_hash(cp, namespace, c) for c in COMPONENTS} == before

    cp.kubectl("patch", "dbm", "shop", "-n", namespace, "--type=merge", "-p", json.dumps(
        {"spec": {"database": {"credentialsSecret": {"name": "shop-db-rotated"}}}}))

    def rolled() -> dict[str, str]:
        after = {c: restart_hash(cp, namespace, c) for c in COMPONENTS}
        assert after["executor"] != before["executor"], "executor not rolled yet"
        assert after["collector"] != before["collector"], "collector not rolled yet"
        return after

    after = wait_until(rolled, timeout=20, interval=0.5)
    time.sleep(1)
    after = {c: restart_hash(cp, namespace, c) for c in COMPONENTS}
    assert after["analyser"] == before["analyser"] and after["nats"] == before["nats"]
    pod = get(cp, namespace, "deployment", "shop-collector")["spec"]["template"]["spec"]
    assert {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]
            }["database"] == "shop-db-rotated"

    cp.kubectl("patch", "dbm", "shop", "-n", namespace, "--type=merge", "-p",
               '{"spec":{"suspend":true}}')

    def scaled_to_zero() -> bool:
        replicas = [get(cp, namespace, "deployment", f"shop-{c}")["spec"]["replicas"]
                    for c in COMPONENTS]
        assert replicas == [0, 0, 0, 0], replicas
        return True

    wait_until(scaled_to_zero, timeout=20, interval=0.5)
    wait_until(condition_is(cp, namespace, "Ready", "False", "Suspended"), timeout=15)
    assert get(cp, namespace, "dbm", "shop")["status"]["phase"] == "Suspended"


def test_a_deleted_child_is_put_back(control_plane: ControlPlane, namespace: str,
                                     data_plane: Callable[..., Operator]) -> None:
    cp = control_plane
    data_plane()
    victims = [("configmap", "shop-config"), ("deployment", "shop-executor"),
               ("role", "shop-executor"), ("networkpolicy", "shop-analyser"),
               ("service", "shop-nats"), ("serviceaccount", "shop-collector")]
    uids = {v: get(cp, namespace, *v)["metadata"]["uid"] for v in victims}
    for kind, name in victims:
        cp.kubectl("delete", kind, name, "-n", namespace, "--wait=false")

    def back() -> bool:
        for victim in victims:
            assert exists(cp, namespace, *victim), f"{victim} not back yet"
            assert get(cp, namespace, *victim)["metadata"]["uid"] != uids[victim]
        return True

    wait_until(back, timeout=30, interval=0.5)


def test_hand_edits_are_taken_back_by_the_drift_repair(
        control_plane: ControlPlane, namespace: str,
        data_plane: Callable[..., Operator]) -> None:
    """A ConfigMap edited and a Deployment scaled by hand are not deletions (no event puts
    them back): the resync timer re-applies every child and server-side apply takes the
    fields back."""
    cp = control_plane
    data_plane(operator={"STARTUPMONKEY_WATCHING_RESYNC_INTERVAL": "3s"})
    rendered = get(cp, namespace, "configmap", "shop-config")["data"]["config.yaml"]
    assert get(cp, namespace, "deployment", "shop-executor")["spec"]["replicas"] == 1

    # What each patch returns is the object as stored by it: proof that the edit landed,
    # which a later read cannot give (the 3 s resync may already have taken it back).
    edited = cp.kubectl_json("patch", "configmap", "shop-config", "-n", namespace,
                             "--type=merge", "-p",
                             json.dumps({"data": {"config.yaml": "edited: by hand\n"}}))
    scaled = cp.kubectl_json("patch", "deployment", "shop-executor", "-n", namespace,
                             "--type=merge", "-p", json.dumps({"spec": {"replicas": 3}}))
    assert edited["data"]["config.yaml"] == "edited: by hand\n", "the edit landed"
    assert scaled["spec"]["replicas"] == 3, "the scale landed"

    def repaired() -> bool:
        data = get(cp, namespace, "configmap", "shop-config")["data"]["config.yaml"]
        replicas = get(cp, namespace, "deployment", "shop-executor")["spec"]["replicas"]
        assert data == rendered, "the ConfigMap is not repaired yet"
        assert replicas == 1, f"the executor still has {replicas} replicas"
        return True

    wait_until(repaired, timeout=20, interval=0.5, what="the drift repair")


def test_conditions_follow_the_deployments_and_the_executors_report(
        control_plane: ControlPlane, namespace: str,
        data_plane: Callable[..., Operator]) -> None:
    cp = control_plane
    data_plane()
    wait_until(condition_is(cp, namespace, "CollectorAvailable", "False"), timeout=15)
    mark_all(cp, namespace)
    patch_status(cp, namespace, {"database": {"reachable": True, "serverVersion": "15.8",
                                              "superuserLogins": ["postgres"],
                                              "executorSuperuser": False,
                                              "checkedAt": now_iso()}})
    cp.kubectl("wait", "--for=condition=Ready", "dbm/shop", "-n", namespace, "--timeout=30s",
               timeout=40)
    ready = conditions(cp, namespace)
    # The application logs in as a superuser: said before any remediation is refused, as an
    # informational condition that does not hold Ready back (issue 17, item 4).
    superusers = ready.pop("SuperuserSessions")
    assert (superusers["status"], superusers["reason"]) == ("True", "SuperuserLogins")
    assert "log in as superuser(s) postgres" in superusers["message"]
    assert "spec.protect.superusers is true" in superusers["message"]
    assert all(c["status"] == "True" for c in ready.values()), ready
    assert get(cp, namespace, "dbm", "shop")["status"]["phase"] == "Ready"
    table = cp.kubectl("get", "dbm", "shop", "-n", namespace).stdout
    assert "True" in table

    cp.mark_deployment_available(namespace, "shop-executor", available=False)
    wait_until(condition_is(cp, namespace, "ExecutorAvailable", "False"), timeout=15)
    wait_until(condition_is(cp, namespace, "Ready", "False"), timeout=15)
    after = conditions(cp, namespace)
    for kind in ("CollectorAvailable", "AnalyserAvailable", "EventBusAvailable"):
        assert after[kind]["lastTransitionTime"] == ready[kind]["lastTransitionTime"], kind
    cp.mark_deployment_available(namespace, "shop-executor", available=True)
    wait_until(condition_is(cp, namespace, "Ready", "True"), timeout=15)

    patch_status(cp, namespace, {"database": {"reachable": False, "checkedAt": now_iso(),
                                              "lastError": "connection refused"}})
    wait_until(condition_is(cp, namespace, "DatabaseReachable", "False", "Unreachable"),
               timeout=15)
    cond = conditions(cp, namespace)
    assert cond["DatabaseReachable"]["message"] == "unreachable: connection refused"
    assert cond["Ready"]["status"] == "False"
    assert cond["Ready"]["reason"] == "Unreachable"
    body = get(cp, namespace, "dbm", "shop")
    assert body["status"]["database"]["reachable"] is False, "the executor's key is untouched"
    events = cp.kubectl_json("get", "events", "-n", namespace)["items"]
    assert any(e["reason"] == "Ready" and e["involvedObject"]["name"] == "shop" for e in events)


def test_a_missing_secret_is_a_readable_condition_and_an_event(
        control_plane: ControlPlane, namespace: str,
        start_operator: Callable[..., Operator]) -> None:
    cp = control_plane
    op = start_operator()
    cp.kubectl("apply", "-f", "-", input=monitor_manifest(namespace))
    wait_until(condition_is(cp, namespace, "DatabaseReachable", "False", "SecretNotFound"),
               timeout=20)
    cond = conditions(cp, namespace)
    assert cond["Ready"]["reason"] == "SecretNotFound"
    assert 'Secret "shop-db" (spec.database.credentialsSecret) not found' in \
        cond["Ready"]["message"]
    assert get(cp, namespace, "dbm", "shop")["status"]["phase"] == "Error"

    def warned() -> bool:
        events = cp.kubectl_json("get", "events", "-n", namespace)["items"]
        found = [e for e in events if e["reason"] == "SecretNotFound"]
        assert found, [e["reason"] for e in events]
        assert found[0]["type"] == "Warning"
        assert found[0]["involvedObject"]["kind"] == "DatabaseMonitor"
        return True

    wait_until(warned, timeout=15)
    wait_for_children(cp, namespace)  # the data plane is there, waiting for the Secret
    time.sleep(3)
    assert op.alive(), "never a crash loop"
    create_secret(cp, namespace)
    wait_until(condition_is(cp, namespace, "DatabaseReachable", "Unknown", "NotReported"),
               timeout=15)


def test_deletion_waits_for_in_flight_work_then_the_children_are_collected(
        control_plane: ControlPlane, namespace: str,
        data_plane: Callable[..., Operator]) -> None:
    cp = control_plane
    data_plane(operator={"STARTUPMONKEY_DELETION_GRACE_PERIOD": "5m"})
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(remediation(namespace, "shop-1")))
    patch_status(cp, namespace, {"remediations": {"inFlight": 1, "active": 1}})
    cp.kubectl("delete", "dbm", "shop", "-n", namespace, "--wait=false")

    def draining() -> bool:
        replicas = [get(cp, namespace, "deployment", f"shop-{c}")["spec"]["replicas"]
                    for c in ("collector", "analyser", "executor")]
        assert replicas == [0, 0, 1], replicas
        return True

    wait_until(draining, timeout=15, interval=0.5)
    time.sleep(3)
    body = get(cp, namespace, "dbm", "shop")
    assert body["metadata"].get("deletionTimestamp"), "deletion requested"
    assert "startupmonkey.dev/drain" in body["metadata"]["finalizers"], "still held"
    assert body["status"]["phase"] == "Terminating"
    assert all(exists(cp, namespace, k, n) for k, n in CHILDREN)

    patch_status(cp, namespace, {"remediations": {"inFlight": 0, "active": 0}})
    wait_until(lambda: not exists(cp, namespace, "dbm", "shop"), timeout=20, interval=0.5)

    def collected() -> bool:
        left = [f"{k}/{n}" for k, n in CHILDREN if exists(cp, namespace, k, n)]
        assert not left, f"not collected yet: {left}"
        return True

    wait_until(collected, timeout=60, interval=1)
    assert exists(cp, namespace, "remediation", "shop-1"), "the audit trail outlives it"
    events = cp.kubectl_json("get", "events", "-n", namespace)["items"]
    assert any(e["reason"] == "Drained" for e in events)


def test_the_drain_is_bounded_by_the_grace_period(
        control_plane: ControlPlane, namespace: str,
        data_plane: Callable[..., Operator]) -> None:
    cp = control_plane
    data_plane(operator={"STARTUPMONKEY_DELETION_GRACE_PERIOD": "4s"})
    patch_status(cp, namespace, {"remediations": {"inFlight": 2}})
    started = time.monotonic()
    cp.kubectl("delete", "dbm", "shop", "-n", namespace, "--wait=false")
    wait_until(lambda: not exists(cp, namespace, "dbm", "shop"), timeout=30, interval=0.5)
    assert time.monotonic() - started >= 3, "it did wait"
    events = cp.kubectl_json("get", "events", "-n", namespace)["items"]
    timed_out = [e for e in events if e["reason"] == "DrainTimedOut"]
    assert timed_out and "2 remediation(s) still in flight" in timed_out[0]["message"]


def test_retention_prunes_finished_remediations_also_of_deleted_monitors(
        control_plane: ControlPlane, namespace: str,
        start_operator: Callable[..., Operator]) -> None:
    cp = control_plane
    ages = {"gone-new1": (60, "Succeeded"), "gone-new2": (120, "Observed"),
            "gone-old3": (180, "Failed"), "gone-old4": (240, "Rejected"),
            "gone-ancient": (7200, "Succeeded"), "gone-open": (9000, "PendingApproval")}
    for name in ages:
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(remediation(namespace, name, "gone")))
    for name, (age, state) in ages.items():
        patch_status(cp, namespace, {"state": state, "history": [
            {"state": state, "time": now_iso(-age), "message": "test"}]},
            kind="remediation", name=name)
    start_operator(STARTUPMONKEY_RETENTION_COUNT="2", STARTUPMONKEY_RETENTION_MAX_AGE="1h",
                   STARTUPMONKEY_RETENTION_INTERVAL="1s")

    def pruned() -> bool:
        left = sorted(i["metadata"]["name"] for i in
                      cp.kubectl_json("get", "remediations", "-n", namespace)["items"])
        assert left == ["gone-new1", "gone-new2", "gone-open"], left
        return True

    wait_until(pruned, timeout=20, interval=0.5)


def test_service_accounts_can_do_what_they_need_and_nothing_more(
        control_plane: ControlPlane, namespace: str, operator_kubeconfig: Path,
        data_plane: Callable[..., Operator], tmp_path: Path) -> None:
    cp = control_plane
    data_plane()

    def can(kubeconfig: Path, *args: str, ns: str = namespace) -> bool:
        proc = cp.kubectl("auth", "can-i", *args, "-n", ns, kubeconfig=kubeconfig, check=False)
        return proc.stdout.strip() == "yes"

    def as_sa(name: str) -> Path:
        token = cp.mint_token(namespace, name)
        return cp.kubeconfig_for_token(token, tmp_path / f"{name}.kubeconfig", namespace)

    executor = as_sa("shop-executor")
    assert can(executor, "get", "databasemonitors.startupmonkey.dev")
    assert can(executor, "patch", "databasemonitors.startupmonkey.dev", "--subresource=status")
    assert can(executor, "create", "remediations.startupmonkey.dev")
    assert can(executor, "patch", "remediations.startupmonkey.dev", "--subresource=status")
    assert can(executor, "create", "events")
    assert not can(executor, "get", "secrets")
    assert not can(executor, "delete", "deployments.apps")
    assert not can(executor, "patch", "databasemonitors.startupmonkey.dev")
    assert not can(executor, "list", "remediations.startupmonkey.dev", ns="default")
    assert not can(executor, "list", "namespaces")
    for component in ("collector", "analyser", "nats"):
        kubeconfig = as_sa(f"shop-{component}")
        for verb, resource in (("get", "secrets"), ("get", "configmaps"), ("list", "pods"),
                               ("get", "databasemonitors.startupmonkey.dev"),
                               ("create", "remediations.startupmonkey.dev"),
                               ("create", "events")):
            assert not can(kubeconfig, verb, resource), (component, verb, resource)

    operator = operator_kubeconfig
    assert can(operator, "list", "databasemonitors.startupmonkey.dev", "--all-namespaces")
    assert can(operator, "create", "deployments.apps")
    assert can(operator, "delete", "remediations.startupmonkey.dev")
    assert can(operator, "get", "secrets") and can(operator, "create", "secrets")
    assert not can(operator, "list", "secrets")
    assert not can(operator, "delete", "secrets")
    assert not can(operator, "get", "pods")
    assert not can(operator, "create", "clusterroles.rbac.authorization.k8s.io")
    # The approver webhook is off here: no permission on any webhook configuration.
    for verb in ("get", "list", "create", "patch"):
        assert not can(operator, verb, "mutatingwebhookconfigurations."
                       "admissionregistration.k8s.io/startupmonkey-approved-by"), verb

    live = cp.kubectl_json("get", "clusterrole", OPERATOR_SA)["rules"]
    assert [_rule(r) for r in live] == [_rule(r) for r in rbac.OPERATOR_RULES]
    role = get(cp, namespace, "role", "shop-executor")["rules"]
    assert [_rule(r) for r in role] == [_rule(r) for r in rbac.EXECUTOR_RULES]
    assert "*" not in json.dumps(live) + json.dumps(role)


def _rule(rule: dict[str, Any]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(rule.get(k, [])) for k in ("apiGroups", "resources", "verbs"))


def test_an_external_event_bus_replaces_the_managed_nats(
        control_plane: ControlPlane, namespace: str,
        data_plane: Callable[..., Operator]) -> None:
    cp = control_plane
    data_plane("bus-login")
    cp.kubectl("apply", "-f", "-", input=monitor_manifest(namespace, eventBus={
        "url": "nats://nats.shared:4222", "credentialsSecret": {"name": "bus-login"}}))

    def managed_nats_gone() -> bool:
        left = [k for k in ("deployment", "service", "networkpolicy", "serviceaccount")
                if exists(cp, namespace, k, "shop-nats")]
        assert not left, left
        return True

    wait_until(managed_nats_gone, timeout=20, interval=0.5)
    pod = get(cp, namespace, "deployment", "shop-analyser")["spec"]["template"]["spec"]
    volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}
    assert volumes["nats"] == "bus-login"
    config = yaml.safe_load(get(cp, namespace, "configmap", "shop-config")["data"]["config.yaml"])
    assert config["analyser"]["nats"]["url"] == "nats://nats.shared:4222"
    wait_until(condition_is(cp, namespace, "EventBusAvailable", "True", "External"), timeout=15)
    with pytest.raises(KubectlError):
        cp.kubectl("get", "deployment", "shop-nats", "-n", namespace)


def test_a_child_controlled_by_something_else_is_an_apply_failure_not_a_crash(
        control_plane: ControlPlane, namespace: str,
        start_operator: Callable[..., Operator]) -> None:
    cp = control_plane
    create_secret(cp, namespace)
    cp.kubectl("create", "serviceaccount", "someone-else", "-n", namespace)
    other = get(cp, namespace, "serviceaccount", "someone-else")["metadata"]["uid"]
    squatter = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "shop-config", "namespace": namespace,
                             "ownerReferences": [{"apiVersion": "v1", "kind": "ServiceAccount",
                                                  "name": "someone-else", "uid": other,
                                                  "controller": True}]},
                "data": {"config.yaml": "not ours"}}
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(squatter))
    op = start_operator()
    cp.kubectl("apply", "-f", "-", input=monitor_manifest(namespace))
    wait_until(condition_is(cp, namespace, "Ready", "False", "ApplyFailed"), timeout=20)
    assert "could not apply the data plane" in conditions(cp, namespace)["Ready"]["message"]
    assert get(cp, namespace, "dbm", "shop")["status"]["phase"] == "Error"
    events = cp.kubectl_json("get", "events", "-n", namespace)["items"]
    assert any(e["reason"] == "ApplyFailed" and e["type"] == "Warning" for e in events)
    assert get(cp, namespace, "configmap", "shop-config")["data"]["config.yaml"] == "not ours"
    cp.kubectl("delete", "configmap", "shop-config", "-n", namespace)
    wait_for_children(cp, namespace)  # the retry (kopf backoff) succeeds once it is gone
    wait_until(condition_is(cp, namespace, "DatabaseReachable", "Unknown", "NotReported"),
               timeout=30)
    assert conditions(cp, namespace)["Ready"]["reason"] != "ApplyFailed"
    assert op.alive()


def test_the_operator_serves_metrics_and_readiness(
        control_plane: ControlPlane, namespace: str,
        start_operator: Callable[..., Operator]) -> None:
    cp = control_plane
    create_secret(cp, namespace)
    op = start_operator()
    assert op.observability_port is not None
    port = op.observability_port

    def ready() -> dict[str, Any]:
        status, body = http_get(port, "/readyz")
        report: dict[str, Any] = json.loads(body)
        assert status == 200, report
        return report

    report = wait_until(ready, timeout=30, interval=0.5, what="the operator's /readyz")
    assert report["dependencies"]["kubernetes-api"]["ok"] is True
    assert report["dependencies"]["kopf"]["ok"] is True
    assert namespace in report["dependencies"]["kopf"]["detail"]
    assert http_get(port, "/healthz")[0] == 200

    cp.kubectl("apply", "-f", "-", input=monitor_manifest(namespace))
    wait_for_children(cp, namespace)

    def counted() -> str:
        status, text = http_get(port, "/metrics")
        assert status == 200
        assert metric(text, "startupmonkey_operator_reconciles_total",
                      kind="repair", outcome="ok") >= 1, "no successful reconcile counted yet"
        assert sum(metric(text, "startupmonkey_operator_monitors", phase=p)
                   for p in ("Ready", "Pending", "Degraded", "Error")) == 1
        return text

    text = wait_until(counted, timeout=20, interval=0.5, what="the operator's metrics")
    assert metric(text, "startupmonkey_dependency_up", dependency="kubernetes-api") == 1
    assert metric(text, "startupmonkey_dependency_up", dependency="kopf") == 1
    assert metric(text, "startupmonkey_operator_api_requests_total",
                  method="PATCH", code="200") >= 1, "server-side applies are counted"
    assert metric(text, "startupmonkey_operator_reconcile_duration_seconds_count",
                  kind="repair") >= 1


def test_an_operator_the_api_server_refuses_is_alive_but_not_ready(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """A token without the operator's rules: the API answers 403, so /readyz says not ready
    (naming the refusal) while /healthz still answers: restarting would not help."""
    cp = control_plane
    cp.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    kubeconfig = cp.kubeconfig_for_token(cp.mint_token(namespace, "nobody"),
                                         tmp_path / "nobody.kubeconfig")
    op = spawn(cp, kubeconfig, namespace, tmp_path / "operator.log")
    observability_port = op.observability_port
    assert observability_port is not None
    try:
        def refused() -> dict[str, Any]:
            assert op.alive(), op.text()[-3000:]
            status, body = http_get(observability_port, "/readyz")
            report: dict[str, Any] = json.loads(body)
            assert status == 503, report
            api = report["dependencies"]["kubernetes-api"]
            assert api["ok"] is False and "403" in api["detail"], api
            return report

        wait_until(refused, timeout=30, interval=0.5, what="/readyz naming the refusal",
                   retry_on=(AssertionError, OSError))
        assert http_get(observability_port, "/healthz")[0] == 200
    finally:
        op.stop()
