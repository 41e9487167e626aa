"""The executor API in a cluster: the caller's own token, RBAC deciding, on the real server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from startupmonkey import rbac
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models.enums import RemediationState
from startupmonkey.v1 import executor_pb2, executor_pb2_grpc
from tests.support import executor_helpers as helpers
from tests.support import kube_helpers
from tests.support.controlplane import ControlPlane
from tests.support.eventually import eventually

pytestmark = pytest.mark.e2e
VIEW = [rbac.rule(rbac.GROUP, ["remediations"], ["get", "list"])]
APPROVE = [rbac.rule(rbac.GROUP, ["remediations"], ["get", "list", "patch"]),
           rbac.rule(rbac.GROUP, ["remediations/status"], ["patch"])]


async def test_approval_over_grpc_is_decided_by_the_callers_rbac(
        control_plane: ControlPlane, namespace: str, pg_db: postgres.PostgresDatabase,
        nats_server: natsserver.NatsServer, tmp_path: Path) -> None:
    cp = control_plane
    kubeconfig = kube_helpers.setup_executor_namespace(cp, namespace, tmp_path)
    viewer = kube_helpers.identity(cp, namespace, "viewer", VIEW)
    approver = kube_helpers.identity(cp, namespace, "approver", APPROVE)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, namespace=namespace,
                         mode="approval")
    assert cfg.executor is not None
    cfg.executor.reporter = "kubernetes"
    helpers.stale_tables(pg_db.conninfo, "orders")
    store = kube_helpers.store(kubeconfig, namespace)
    try:
        async with helpers.running_executor(cfg, store) as executor:
            assert executor.engine is not None
            await executor.engine.handle(
                helpers.table_detection("orders", namespace=namespace).encode())
            (record,) = await store.list()
            assert record.state is RemediationState.PENDING_APPROVAL
            async with grpc.aio.insecure_channel(cfg.executor.listen_address) as channel:
                stub = executor_pb2_grpc.ExecutorStub(channel)
                approve = executor_pb2.ApproveRequest(name=record.name,
                                                      sql_hash=record.spec.sql_hash)
                with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                    await stub.Approve(approve)
                assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
                listed = await stub.ListRemediations(
                    executor_pb2.ListRemediationsRequest(),
                    metadata=(("authorization", f"Bearer {viewer}"),))
                assert [r.name for r in listed.remediations] == [record.name]
                with pytest.raises(grpc.aio.AioRpcError) as forbidden:
                    await stub.Approve(approve,
                                       metadata=(("authorization", f"Bearer {viewer}"),))
                assert forbidden.value.code() is grpc.StatusCode.PERMISSION_DENIED
                with pytest.raises(grpc.aio.AioRpcError) as stale:
                    await stub.Approve(executor_pb2.ApproveRequest(
                        name=record.name, sql_hash="0" * 64),
                        metadata=(("authorization", f"Bearer {approver}"),))
                assert stale.value.code() is grpc.StatusCode.FAILED_PRECONDITION
                await stub.Approve(approve, metadata=(("authorization", f"Bearer {approver}"),))

            async def succeeded() -> bool:
                current = await store.get(record.name)
                return current is not None and current.state is RemediationState.SUCCEEDED

            await eventually(succeeded, timeout=30)
    finally:
        kube_helpers.close(store)
    final = await _history(kubeconfig, namespace, record.name)
    assert final.count("Running") == 1, "approved once, ran once"


async def _history(kubeconfig: Path, namespace: str, name: str) -> list[str]:
    store = kube_helpers.store(kubeconfig, namespace)
    try:
        current = await store.get(name)
        assert current is not None
        return [step.state.value for step in current.status.history]
    finally:
        kube_helpers.close(store)
