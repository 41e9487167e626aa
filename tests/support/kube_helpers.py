"""Helpers for executor tests on the real API server: a namespace with the executor's
ServiceAccount and Role, a store authenticated as that ServiceAccount, extra identities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import yaml

from startupmonkey import rbac
from startupmonkey.executor import kube
from tests.support import executor_helpers as helpers
from tests.support.controlplane import ControlPlane

EXECUTOR_SA = "shop-executor"


def setup_executor_namespace(cp: ControlPlane, namespace: str, tmp_path: Path) -> Path:
    """The monitor, the executor's ServiceAccount bound to exactly its Role; returns a
    kubeconfig with a token minted for that ServiceAccount."""
    monitor = {"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
               "metadata": {"name": helpers.MONITOR, "namespace": namespace},
               "spec": {"database": {"host": "db", "dbname": "shop",
                                     "credentialsSecret": {"name": "shop-db"}}}}
    identity(cp, namespace, EXECUTOR_SA, rbac.EXECUTOR_RULES, extra=[monitor])
    token = cp.mint_token(namespace, EXECUTOR_SA)
    return cp.kubeconfig_for_token(token, tmp_path / "executor.kubeconfig", namespace)


def identity(cp: ControlPlane, namespace: str, name: str, rules: list[rbac.Rule],
             extra: list[dict[str, Any]] | None = None) -> str:
    """A ServiceAccount with a Role of ``rules``; returns a token minted for it."""
    objects = [*(extra or []),
               {"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace}},
               rbac.role(name, namespace, rules), rbac.role_binding(name, namespace, name)]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    return cp.mint_token(namespace, name)


def store(kubeconfig: Path, namespace: str) -> kube.KubernetesStore:
    """A Kubernetes store authenticated by ``kubeconfig``."""
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    return kube.KubernetesStore(namespace, helpers.MONITOR, api_client=client)


def close(*stores: kube.KubernetesStore) -> None:
    """Close the stores' API clients (their thread pools)."""
    for each in stores:
        each.client.close()
