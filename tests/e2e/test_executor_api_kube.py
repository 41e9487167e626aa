"""The executor API in a cluster: the caller's own token, RBAC deciding, on the real server.

The approver holds exactly the chart's aggregated ``edit`` rules (bound directly: this control
plane runs no ClusterRole aggregation controller): enough to approve and to reject through the
API, never enough to write a Remediation's status."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from startupmonkey import rbac
from startupmonkey.executor import records
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models.enums import RemediationState
from startupmonkey.v1 import executor_pb2, executor_pb2_grpc
from tests.support import executor_helpers as helpers
from tests.support import kube_helpers
from tests.support.controlplane import ControlPlane
from tests.support.eventually import eventually

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "startupmonkey"
VIEW = [rbac.rule(rbac.GROUP, ["remediations"], ["get", "list"])]


def _chart_edit_role(cp: ControlPlane, name: str) -> dict[str, Any]:
    """The chart's ClusterRole aggregated into "edit", renamed ``name``."""
    rendered = subprocess.run(
        [str(cp.binaries.helm), "template", "sm", str(CHART),
         "--show-only", "templates/aggregated-roles.yaml"],
        capture_output=True, text=True, env=cp.env(), timeout=120, check=True).stdout
    (role,) = [doc for doc in yaml.safe_load_all(rendered)
               if doc and doc["kind"] == "ClusterRole"
               and doc["metadata"]["name"].endswith("-edit")]
    role["metadata"] = {"name": name}
    return dict(role)


@pytest.fixture
def approver(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    """A token of a ServiceAccount bound (in ``namespace``) to the chart's edit rules."""
    cp, role = control_plane, f"{namespace}-startupmonkey-edit"
    objects = [_chart_edit_role(cp, role),
               {"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "approver", "namespace": namespace}},
               {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "approver", "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": "approver",
                              "namespace": namespace}]}]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    try:
        yield cp.mint_token(namespace, "approver")
    finally:
        cp.kubectl("delete", "clusterrole", role, "--ignore-not-found")


def test_an_approver_cannot_write_a_remediations_status(
        control_plane: ControlPlane, namespace: str, approver: str, tmp_path: Path) -> None:
    cp = control_plane
    kubeconfig = cp.kubeconfig_for_token(approver, tmp_path / "approver.kubeconfig")

    def can(*args: str) -> bool:
        proc = cp.kubectl("auth", "can-i", *args, "-n", namespace, kubeconfig=kubeconfig,
                          check=False)
        return proc.stdout.strip() == "yes"

    assert can("patch", "remediations.startupmonkey.dev")
    assert can("get", "remediations.startupmonkey.dev")
    assert not can("patch", "remediations.startupmonkey.dev", "--subresource=status")
    assert not can("update", "remediations.startupmonkey.dev", "--subresource=status")
    assert not can("create", "remediations.startupmonkey.dev")


async def test_approval_and_rejection_over_grpc_are_decided_by_the_callers_rbac(
        control_plane: ControlPlane, namespace: str, approver: str,
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cp = control_plane
    kubeconfig = kube_helpers.setup_executor_namespace(cp, namespace, tmp_path)
    viewer = kube_helpers.identity(cp, namespace, "viewer", VIEW)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, namespace=namespace,
                         mode="approval")
    assert cfg.executor is not None
    cfg.executor.reporter = "kubernetes"
    helpers.stale_tables(pg_db.conninfo, "orders", "returns")
    store = kube_helpers.store(kubeconfig, namespace)
    as_approver = (("authorization", f"Bearer {approver}"),)
    as_viewer = (("authorization", f"Bearer {viewer}"),)
    try:
        async with helpers.running_executor(cfg, store) as executor:
            assert executor.engine is not None
            for table in ("orders", "returns"):
                await executor.engine.handle(
                    helpers.table_detection(table, namespace=namespace).encode())
            by_table = {r.spec.target.table: r for r in await store.list()}
            record, other = by_table["orders"], by_table["returns"]
            assert {record.state, other.state} == {RemediationState.PENDING_APPROVAL}
            async with grpc.aio.insecure_channel(cfg.executor.listen_address) as channel:
                stub = executor_pb2_grpc.ExecutorStub(channel)
                approve = executor_pb2.ApproveRequest(name=record.name,
                                                      sql_hash=record.spec.sql_hash)
                with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                    await stub.Approve(approve)
                assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
                listed = await stub.ListRemediations(
                    executor_pb2.ListRemediationsRequest(), metadata=as_viewer)
                assert sorted(r.name for r in listed.remediations) == sorted(
                    [record.name, other.name])
                with pytest.raises(grpc.aio.AioRpcError) as forbidden:
                    await stub.Approve(approve, metadata=as_viewer)
                assert forbidden.value.code() is grpc.StatusCode.PERMISSION_DENIED
                with pytest.raises(grpc.aio.AioRpcError) as not_a_rejecter:
                    await stub.Reject(executor_pb2.RejectRequest(name=other.name),
                                      metadata=as_viewer)
                assert not_a_rejecter.value.code() is grpc.StatusCode.PERMISSION_DENIED
                with pytest.raises(grpc.aio.AioRpcError) as stale:
                    await stub.Approve(executor_pb2.ApproveRequest(
                        name=record.name, sql_hash="0" * 64), metadata=as_approver)
                assert stale.value.code() is grpc.StatusCode.FAILED_PRECONDITION
                await stub.Approve(approve, metadata=as_approver)
                await stub.Reject(executor_pb2.RejectRequest(
                    name=other.name, reason="not during the sale"), metadata=as_approver)

            async def settled() -> bool:
                states = await helpers.states(store)
                return (states[record.name], states[other.name]) == ("Succeeded", "Rejected")

            await eventually(settled, timeout=30)
    finally:
        kube_helpers.close(store)
    final = await _record(kubeconfig, namespace, record.name)
    assert [s.state.value for s in final.status.history].count("Running") == 1, \
        "approved once, ran once"
    rejected = await _record(kubeconfig, namespace, other.name)
    who = f"system:serviceaccount:{namespace}:approver"
    assert rejected.annotations[records.ANNOTATION_REJECT] == f"{who}: not during the sale"
    assert rejected.status.message == f"rejected by {who}: not during the sale; nothing ran"
    assert rejected.status.executed_sql == []


async def _record(kubeconfig: Path, namespace: str, name: str) -> records.Record:
    store = kube_helpers.store(kubeconfig, namespace)
    try:
        current = await store.get(name)
        assert current is not None
        return current
    finally:
        kube_helpers.close(store)
