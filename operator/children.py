"""Builders of a monitor's data-plane children: pure functions from a monitor to manifests.

For each monitor: the ConfigMap with the rendered config; a ServiceAccount per component
(collector and analyser with no API access at all, the executor bound to a Role with exactly
``rbac.EXECUTOR_RULES``); Deployments for collector, analyser and executor; Services for the
analyser's gRPC ingest (and metrics) and the executor's metrics; NetworkPolicies that let only
the monitor's own collector reach its analyser while every metrics port stays reachable from the
namespace and from the configured extra peers. The executor serves no API in a cluster (people
act through the API server with their own credentials, issue 24.2), so it opens no gRPC port.
The managed NATS is in ``startupmonkey.operator.nats``. Every object carries the monitor's
owner reference (controller), so garbage collection removes it with the monitor.
"""

from __future__ import annotations

from typing import Any

from startupmonkey import rbac
from startupmonkey.operator import config as config_mod
from startupmonkey.operator import monitor, pods, render

Component = monitor.Component
GRPC_PORTS = {Component.ANALYSER: render.ANALYSER_PORT}
#: Components with a Service: the analyser's ingest and metrics, the executor's metrics.
SERVICES = (Component.ANALYSER, Component.EXECUTOR)


def config_map(view: monitor.View, approver_verified: bool = False) -> dict[str, Any]:
    """The rendered component config (mounted at /etc/startupmonkey, hot-reloaded)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": view.metadata(view.config_map_name, "config"),
            "data": {render.CONFIG_KEY: render.config_text(view, approver_verified)}}


def service_account(view: monitor.View, component: Component) -> dict[str, Any]:
    """Only the executor talks to the Kubernetes API; the others get no token at all."""
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": view.metadata(view.child_name(component), component),
            "automountServiceAccountToken": component is Component.EXECUTOR}


def executor_role(view: monitor.View) -> dict[str, Any]:
    """The executor's Role: exactly the list in docs/design.md#rbac."""
    role = rbac.role(view.child_name(Component.EXECUTOR), view.namespace, rbac.EXECUTOR_RULES)
    role["metadata"] = view.metadata(view.child_name(Component.EXECUTOR), Component.EXECUTOR)
    return role


def executor_role_binding(view: monitor.View) -> dict[str, Any]:
    """Binds the executor Role to the executor ServiceAccount."""
    name = view.child_name(Component.EXECUTOR)
    binding = rbac.role_binding(name, view.namespace, name)
    binding["metadata"] = view.metadata(name, Component.EXECUTOR)
    return binding


def replicas(view: monitor.View, component: Component) -> int:
    """Suspended: zero; executor: spec.executor.replicas; the others: one."""
    assert view.spec is not None
    if view.spec.suspend:
        return 0
    return view.spec.executor.replicas if component is Component.EXECUTOR else 1


def _volumes(view: monitor.View, component: Component) -> tuple[list[dict[str, Any]],
                                                                  list[dict[str, Any]]]:
    assert view.spec is not None
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {
        "name": view.config_map_name, "items": [{"key": render.CONFIG_KEY,
                                                 "path": render.CONFIG_KEY}]}},
               pods.tmp_volume()]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": str(render.CONFIG_DIR), "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108 - the pod's own emptyDir
    if component in (Component.COLLECTOR, Component.EXECUTOR):
        ref = render.database_secret(view.spec, component)
        volumes.append(pods.secret_volume("database", ref.name, {
            ref.user_key: render.USER_FILE, ref.password_key: render.PASSWORD_FILE}))
        mounts.append({"name": "database", "mountPath": str(render.DATABASE_SECRET_DIR),
                       "readOnly": True})
    if component in (Component.COLLECTOR, Component.ANALYSER):
        # The token the collector shows the analyser, read anew at every stream: a new
        # token in the Secret needs no restart.
        volumes.append(pods.secret_volume("ingest", view.ingest_secret_name, {
            render.INGEST_TOKEN_KEY: render.INGEST_TOKEN_KEY}))
        mounts.append({"name": "ingest", "mountPath": str(render.INGEST_SECRET_DIR),
                       "readOnly": True})
    if component in (Component.ANALYSER, Component.EXECUTOR) and \
            render.nats_has_credentials(view):
        volumes.append(nats_volume(view, component))
        mounts.append({"name": "nats", "mountPath": str(render.NATS_SECRET_DIR),
                       "readOnly": True})
    return volumes, mounts


def nats_volume(view: monitor.View, component: Component) -> dict[str, Any]:
    """The NATS login of one client: the generated Secret's keys, or the external Secret."""
    assert view.spec is not None
    external = view.spec.event_bus.credentials_secret
    if external is not None and not view.managed_nats:
        return pods.secret_volume("nats", external.name, {
            external.user_key: render.USER_FILE, external.password_key: render.PASSWORD_FILE})
    return pods.secret_volume("nats", view.nats_secret_name, {
        f"{component}-user": render.USER_FILE, f"{component}-password": render.PASSWORD_FILE})


def _ports(component: Component) -> list[dict[str, Any]]:
    ports = [{"name": "observability", "containerPort": render.OBSERVABILITY_PORT,
              "protocol": "TCP"}]
    if component in GRPC_PORTS:
        ports.insert(0, {"name": "grpc", "containerPort": GRPC_PORTS[component],
                         "protocol": "TCP"})
    return ports


def container(view: monitor.View, component: Component,
              settings: config_mod.OperatorSettings) -> dict[str, Any]:
    """The one container of a component: the CLI subcommand of the one image."""
    _, mounts = _volumes(view, component)
    spec: dict[str, Any] = {
        "name": str(component),
        "image": settings.images.data_plane,
        "imagePullPolicy": settings.images.pull_policy,
        "command": ["startupmonkey", str(component), "--config", str(render.CONFIG_PATH),
                    "--observability-port", str(render.OBSERVABILITY_PORT)],
        "ports": _ports(component),
        "volumeMounts": mounts,
        # Liveness only once /healthz first answered (pods.STARTUP_PERIOD says why).
        "startupProbe": pods.startup_probe("/healthz", "observability"),
        "livenessProbe": pods.http_probe("/healthz", "observability", 10, 6),
        "readinessProbe": pods.http_probe("/readyz", "observability", 5, 3),
        "resources": pods.RESOURCES[component],
        "securityContext": pods.container_security(),
    }
    if component is Component.EXECUTOR:
        spec["env"] = [{"name": "POD_NAME",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    return spec


def pod_spec(view: monitor.View, component: Component,
             settings: config_mod.OperatorSettings) -> dict[str, Any]:
    """The pod of a data-plane component."""
    volumes, _ = _volumes(view, component)
    return {
        "serviceAccountName": view.child_name(component),
        "automountServiceAccountToken": component is Component.EXECUTOR,
        "enableServiceLinks": False,
        "securityContext": pods.pod_security(),
        "terminationGracePeriodSeconds": 60 if component is Component.EXECUTOR else 30,
        "containers": [container(view, component, settings)],
        "volumes": volumes,
    }


def deployment(view: monitor.View, component: Component, settings: config_mod.OperatorSettings,
               nats_secret_version: str | None) -> dict[str, Any]:
    """A data-plane Deployment. Collector and analyser are single streams: Recreate."""
    inputs = render.restart_inputs(view, component, settings.images.data_plane, nats_secret_version)
    strategy = "RollingUpdate" if component is Component.EXECUTOR else "Recreate"
    return pods.deployment(view, component, replicas(view, component),
                           pod_spec(view, component, settings), render.restart_hash(inputs),
                           strategy)


def service(view: monitor.View, component: Component) -> dict[str, Any]:
    """The gRPC ingest and metrics of the analyser; the metrics of the executor."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": view.metadata(view.child_name(component), component),
            "spec": {"type": "ClusterIP", "selector": view.selector(component),
                     "ports": [{"name": p["name"], "port": p["containerPort"],
                                "targetPort": p["name"], "protocol": "TCP"}
                               for p in _ports(component)]}}


def _from_pods(view: monitor.View, *components: Component) -> list[dict[str, Any]]:
    return [{"podSelector": {"matchLabels": view.selector(c)}} for c in components]


def namespace_peers(settings: config_mod.OperatorSettings) -> list[dict[str, Any]]:
    """Every pod of the namespace, plus the configured extra peers."""
    return [{"podSelector": {}}, *settings.network.policy_peers]


def _port(number: int) -> dict[str, Any]:
    return {"protocol": "TCP", "port": number}


def network_policy(view: monitor.View, component: Component,
                   settings: config_mod.OperatorSettings) -> dict[str, Any]:
    """Ingress of one data-plane component (egress is open: the database is anywhere)."""
    open_ports = [_port(render.OBSERVABILITY_PORT)]
    rules: list[dict[str, Any]] = []
    if component is Component.ANALYSER:
        rules.append({"from": _from_pods(view, Component.COLLECTOR),
                      "ports": [_port(render.ANALYSER_PORT)]})
    rules.append({"from": namespace_peers(settings), "ports": open_ports})
    return policy(view, component, rules)


def policy(view: monitor.View, component: Component,
           rules: list[dict[str, Any]]) -> dict[str, Any]:
    """A NetworkPolicy selecting one component's pods."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": view.metadata(view.child_name(component), component),
            "spec": {"podSelector": {"matchLabels": view.selector(component)},
                     "policyTypes": ["Ingress"], "ingress": rules}}


def data_plane(view: monitor.View, settings: config_mod.OperatorSettings,
               nats_secret_version: str | None) -> list[dict[str, Any]]:
    """Every data-plane child, in apply order (what pods mount comes before the pods)."""
    objects: list[dict[str, Any]] = [
        config_map(view, settings.approvals.policy)]
    objects += [service_account(view, c) for c in monitor.DATA_PLANE]
    objects += [executor_role(view), executor_role_binding(view)]
    objects += [service(view, c) for c in SERVICES]
    objects += [network_policy(view, c, settings) for c in monitor.DATA_PLANE]
    objects += [deployment(view, c, settings, nats_secret_version) for c in monitor.DATA_PLANE]
    return objects
