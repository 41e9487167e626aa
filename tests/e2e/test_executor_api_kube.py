"""The executor API in a cluster: the caller's own token, RBAC deciding, on the real server.

The approver holds exactly the chart's aggregated ``edit`` rules, the viewer its ``view`` rules
(bound directly: this control plane runs no ClusterRole aggregation controller): the approver may
approve, reject and ask for a rollback through the API, never write a Remediation's status; the
viewer may list and get, and its writes are refused (PERMISSION_DENIED, the API server's reason)
with nothing changed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import yaml

from startupmonkey import rbac
from startupmonkey.executor import indexes, records
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass
from startupmonkey.v1 import executor_pb2, executor_pb2_grpc
from tests.support import executor_helpers as helpers
from tests.support import kube_helpers
from tests.support.controlplane import ControlPlane
from tests.support.eventually import eventually

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "startupmonkey"
EXE = Path(sys.executable).with_name("startupmonkey")
VIEW = [rbac.rule(rbac.GROUP, ["remediations"], ["get", "list"])]


def _chart_role(cp: ControlPlane, aggregated_to: str, name: str) -> dict[str, Any]:
    """The chart's ClusterRole aggregated into ``aggregated_to`` ("view" or "edit"), as
    rendered, renamed ``name``."""
    rendered = subprocess.run(
        [str(cp.binaries.helm), "template", "sm", str(CHART),
         "--show-only", "templates/aggregated-roles.yaml"],
        capture_output=True, text=True, env=cp.env(), timeout=120, check=True).stdout
    (role,) = [doc for doc in yaml.safe_load_all(rendered)
               if doc and doc["kind"] == "ClusterRole"
               and doc["metadata"]["name"].endswith(f"-{aggregated_to}")]
    role["metadata"] = {"name": name}
    return dict(role)


@contextlib.contextmanager
def _bound_to_chart_role(cp: ControlPlane, namespace: str, account: str,
                         aggregated_to: str) -> Iterator[str]:
    """A token of ServiceAccount ``account`` bound (in ``namespace``) to the chart's role
    aggregated into ``aggregated_to``; the ClusterRole is removed afterwards."""
    role = f"{namespace}-startupmonkey-{aggregated_to}"
    objects = [_chart_role(cp, aggregated_to, role),
               {"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": account, "namespace": namespace}},
               {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": account, "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": account,
                              "namespace": namespace}]}]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    try:
        yield cp.mint_token(namespace, account)
    finally:
        cp.kubectl("delete", "clusterrole", role, "--ignore-not-found")


@pytest.fixture
def approver(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    """A token of a ServiceAccount bound (in ``namespace``) to the chart's edit rules."""
    with _bound_to_chart_role(control_plane, namespace, "approver", "edit") as token:
        yield token


@pytest.fixture
def chart_viewer(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    """A token of a ServiceAccount bound (in ``namespace``) to the chart's view rules."""
    with _bound_to_chart_role(control_plane, namespace, "viewer", "view") as token:
        yield token


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
    # As the chart installs it: the API server vouches for the approved-by annotation
    # (tests/e2e/test_approver_policy.py proves the policy; without it: "unknown").
    cfg.executor.approver_verified = True
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
    who = f"system:serviceaccount:{namespace}:approver"
    # Who approved is the caller the API server vouched for (no webhook runs here).
    assert final.status.approved_by == who
    rejected = await _record(kubeconfig, namespace, other.name)
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


def _kept_index(conninfo: str, namespace: str) -> records.Record:
    """A create_index Remediation that was built, verified and kept: the index exists in the
    database and the record says Succeeded, as the index flow leaves it (that flow is tested
    end to end in tests/integration/test_executor_indexes.py; here only its rollback through
    the API matters)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE INDEX kept_idx ON kept (id)")
    planned = indexes.plan_create_index("public", "kept", ["id"], name="kept_idx")
    spec = remediation.RemediationSpec(
        monitor=helpers.MONITOR, detection_key=f"{namespace}/{helpers.MONITOR}/kept",
        detection_id="kept-1", detector=DetectorId.MISSING_INDEX,
        action=ActionId.CREATE_INDEX, risk_class=RiskClass.DDL,
        target=remediation.Target(schema="public", table="kept", columns=["id"]),
        sql=planned.sql, rollback_sql=planned.rollback_sql, sql_hash=planned.sql_hash,
        summary="kept needs an index on id")
    record = records.Record(name=f"{helpers.MONITOR}-kept-index", namespace=namespace,
                            spec=spec, status=remediation.RemediationStatus(executor="earlier"),
                            created=records.utcnow())
    for state in (RemediationState.APPROVED, RemediationState.RUNNING,
                  RemediationState.VERIFYING, RemediationState.SUCCEEDED):
        record.move(state, "kept: faster" if state is RemediationState.SUCCEEDED else "")
    return record


def _index_exists(conninfo: str) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute("SELECT to_regclass('public.kept_idx') IS NOT NULL").fetchone() \
            == (True,)


async def test_get_reject_and_rollback_over_grpc_are_decided_by_the_callers_rbac(
        control_plane: ControlPlane, namespace: str, approver: str, chart_viewer: str,
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cp = control_plane
    kubeconfig = kube_helpers.setup_executor_namespace(cp, namespace, tmp_path)
    viewer = chart_viewer
    stranger = kube_helpers.identity(cp, namespace, "stranger", [])
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, namespace=namespace,
                         mode="approval")
    assert cfg.executor is not None
    cfg.executor.reporter = "kubernetes"
    helpers.stale_tables(pg_db.conninfo, "orders", "kept")
    store = kube_helpers.store(kubeconfig, namespace)
    as_approver = (("authorization", f"Bearer {approver}"),)
    as_viewer = (("authorization", f"Bearer {viewer}"),)
    as_stranger = (("authorization", f"Bearer {stranger}"),)
    try:
        kept = _kept_index(pg_db.conninfo, namespace)
        assert await store.create(kept)
        async with helpers.running_executor(cfg, store) as executor:
            assert executor.engine is not None
            await executor.engine.handle(
                helpers.table_detection("orders", namespace=namespace).encode())
            (pending,) = [r for r in await store.list() if r.spec.target.table == "orders"]
            assert pending.state is RemediationState.PENDING_APPROVAL
            before = {r.name: r for r in await store.list()}
            async with grpc.aio.insecure_channel(cfg.executor.listen_address) as channel:
                stub = executor_pb2_grpc.ExecutorStub(channel)
                for who in (as_viewer, as_approver):
                    got = await stub.GetRemediation(
                        executor_pb2.GetRemediationRequest(name=kept.name), metadata=who)
                    assert (got.state, got.rollback_available) == ("Succeeded", True)
                    assert got.rollback_sql == kept.spec.rollback_sql
                with pytest.raises(grpc.aio.AioRpcError) as unseen:
                    await stub.GetRemediation(
                        executor_pb2.GetRemediationRequest(name=kept.name), metadata=as_stranger)
                assert unseen.value.code() is grpc.StatusCode.PERMISSION_DENIED
                assert f"system:serviceaccount:{namespace}:stranger" in unseen.value.details()
                assert "cannot get resource" in unseen.value.details()
                refusals = {
                    "reject": stub.Reject(executor_pb2.RejectRequest(
                        name=pending.name, reason="viewer says no"), metadata=as_viewer),
                    "rollback": stub.Rollback(executor_pb2.RollbackRequest(
                        name=kept.name, reason="viewer says undo"), metadata=as_viewer)}
                for call, pending_call in refusals.items():
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await pending_call
                    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED, call
                    details = refused.value.details()
                    assert details.startswith("Kubernetes API: 403 Forbidden: "), details
                    assert f"system:serviceaccount:{namespace}:viewer" in details, details
                    assert 'cannot patch resource "remediations"' in details, details
                # Refused means untouched: same objects, same versions, nothing requested.
                await asyncio.sleep(2)  # two ticks: nothing was asked, so nothing happens
                after = {r.name: r for r in await store.list()}
                assert {n: r.version for n, r in after.items()} == {
                    n: r.version for n, r in before.items()}
                assert after[kept.name].state is RemediationState.SUCCEEDED
                assert after[pending.name].state is RemediationState.PENDING_APPROVAL
                assert _index_exists(pg_db.conninfo)

                await stub.Reject(executor_pb2.RejectRequest(
                    name=pending.name, reason="not today"), metadata=as_approver)
                rolled = await stub.Rollback(executor_pb2.RollbackRequest(
                    name=kept.name, reason="not needed"), metadata=as_approver)
                assert rolled.remediation.name == kept.name

            async def settled() -> bool:
                states = await helpers.states(store)
                return (states[pending.name], states[kept.name]) == ("Rejected", "RolledBack")

            await eventually(settled, timeout=30)
    finally:
        kube_helpers.close(store)
    who = f"system:serviceaccount:{namespace}:approver"
    rolled_back = await _record(kubeconfig, namespace, kept.name)
    assert rolled_back.annotations[remediation.ANNOTATION_ROLLBACK] == f"{who}: not needed"
    assert rolled_back.status.executed_sql == [kept.spec.rollback_sql]
    assert rolled_back.status.message == f"rolled back on request of {who}: not needed"
    assert not _index_exists(pg_db.conninfo)
    rejected = await _record(kubeconfig, namespace, pending.name)
    assert rejected.status.message == f"rejected by {who}: not today; nothing ran"
    assert rejected.status.executed_sql == []


async def _cli(kubeconfig: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``startupmonkey`` CLI, its token taken from ``kubeconfig`` (KUBECONFIG:
    a file, or several separated by ``os.pathsep``)."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return await asyncio.to_thread(subprocess.run, [str(EXE), *args], capture_output=True,
                                   text=True, env=env, timeout=60)


async def test_the_cli_in_cluster_mode_acts_with_the_kubeconfig_token(
        control_plane: ControlPlane, namespace: str, approver: str, chart_viewer: str,
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cp = control_plane
    kubeconfig = kube_helpers.setup_executor_namespace(cp, namespace, tmp_path)
    as_approver = cp.kubeconfig_for_token(approver, tmp_path / "approver.kubeconfig", namespace)
    as_viewer = cp.kubeconfig_for_token(chart_viewer, tmp_path / "viewer.kubeconfig", namespace)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, namespace=namespace,
                         mode="approval")
    assert cfg.executor is not None
    cfg.executor.reporter = "kubernetes"
    cfg.executor.listen_address = f"127.0.0.1:{postgres.free_port()}"
    address = cfg.executor.listen_address
    helpers.stale_tables(pg_db.conninfo, "orders", "returns", "kept")
    store = kube_helpers.store(kubeconfig, namespace)
    try:
        kept = _kept_index(pg_db.conninfo, namespace)
        assert await store.create(kept)
        async with helpers.running_executor(cfg, store) as executor:
            assert executor.engine is not None
            for table in ("orders", "returns"):
                await executor.engine.handle(
                    helpers.table_detection(table, namespace=namespace).encode())

            listed = await _cli(as_approver, "status", "--executor", address, "-o", "json")
            assert listed.returncode == 0, listed.stderr
            by_table = {item["target"].get("table"): item for item in json.loads(listed.stdout)}
            assert set(by_table) == {"orders", "returns", "kept"}
            to_approve, to_reject = by_table["orders"]["name"], by_table["returns"]["name"]
            assert by_table["orders"]["state"] == "PendingApproval"
            table = await _cli(as_viewer, "status", "--executor", address)
            assert table.returncode == 0, table.stderr
            assert table.stdout.startswith("NAME") and to_approve in table.stdout

            anonymous = await _cli(tmp_path / "no.kubeconfig", "status", "--executor", address)
            assert anonymous.returncode == 1 and anonymous.stdout == ""
            assert anonymous.stderr.startswith("startupmonkey status: UNAUTHENTICATED: ")
            assert "Traceback" not in anonymous.stderr

            before = {r.name: r.version for r in await store.list()}
            for command, name in (("approve", to_approve), ("reject", to_reject),
                                  ("rollback", kept.name)):
                refused = await _cli(as_viewer, command, name, "--executor", address,
                                     "--reason", "viewer tries")
                assert refused.returncode == 1, (command, refused.stdout)
                assert refused.stdout == "", command
                assert refused.stderr.startswith(
                    f"startupmonkey {command}: PERMISSION_DENIED: Kubernetes API: 403 "
                    "Forbidden: "), refused.stderr
                assert f"system:serviceaccount:{namespace}:viewer" in refused.stderr
                assert 'cannot patch resource "remediations"' in refused.stderr
                assert "Traceback" not in refused.stderr
            await asyncio.sleep(2)  # two ticks: nothing was asked, so nothing happens
            assert {r.name: r.version for r in await store.list()} == before

            # KUBECONFIG as kubectl reads it: a list (the first file that sets a value wins;
            # a missing one is skipped), and a user whose token is in a tokenFile.
            listed_files = f"{tmp_path / 'missing.kubeconfig'}{os.pathsep}{as_approver}"
            approved = await _cli(listed_files, "approve", to_approve, "--executor", address)
            assert approved.returncode == 0, approved.stderr
            assert to_approve in approved.stdout
            doc = yaml.safe_load(as_approver.read_text())
            (tmp_path / "approver.token").write_text(approver)
            for user in doc["users"]:
                del user["user"]["token"]
                user["user"]["tokenFile"] = str(tmp_path / "approver.token")
            with_token_file = tmp_path / "token-file.kubeconfig"
            with_token_file.write_text(yaml.safe_dump(doc))
            rejected = await _cli(with_token_file, "reject", to_reject, "--executor", address,
                                  "--reason", "not during the sale")
            assert rejected.returncode == 0, rejected.stderr
            # An exec credential plugin (how cloud logins give tokens): it is run and its
            # ExecCredential's token used; a failing plugin is a one-line error.
            plugin = ("import json, os, sys\n"
                      "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
                      "if info['kind'] != 'ExecCredential': sys.exit(3)\n"
                      "if os.environ.get('FAIL'): sys.exit('no login')\n"
                      "print(json.dumps({'apiVersion': info['apiVersion'], "
                      "'kind': 'ExecCredential', 'status': {'token': "
                      "open(os.environ['TOKEN']).read()}}))\n")
            for user in doc["users"]:
                user["user"] = {"exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": sys.executable, "args": ["-c", plugin],
                    "env": [{"name": "TOKEN", "value": str(tmp_path / "approver.token")}],
                    "interactiveMode": "Never"}}
            with_plugin = tmp_path / "exec.kubeconfig"
            with_plugin.write_text(yaml.safe_dump(doc))
            rolled = await _cli(with_plugin, "rollback", kept.name, "--executor", address,
                                "--reason", "not needed")
            assert rolled.returncode == 0, rolled.stderr
            for user in doc["users"]:
                user["user"]["exec"]["env"].append({"name": "FAIL", "value": "1"})
            with_plugin.write_text(yaml.safe_dump(doc))
            no_login = await _cli(with_plugin, "status", "--executor", address)
            assert no_login.returncode == 1 and no_login.stdout == ""
            assert no_login.stderr.startswith("startupmonkey status: cannot get a token: "
                                              "kubeconfig exec plugin "), no_login.stderr
            assert "exited 1: no login" in no_login.stderr

            async def settled() -> bool:
                states = await helpers.states(store)
                return (states[to_approve], states[to_reject], states[kept.name]) == (
                    "Succeeded", "Rejected", "RolledBack")

            await eventually(settled, timeout=30)
    finally:
        kube_helpers.close(store)
    who = f"system:serviceaccount:{namespace}:approver"
    ran = await _record(kubeconfig, namespace, to_approve)
    # The approver's name needs the operator's webhook, not running here (docs/executor.md).
    assert ran.spec.approved
    assert [s.state.value for s in ran.status.history].count("Running") == 1
    assert (await _record(kubeconfig, namespace, to_reject)).status.message == (
        f"rejected by {who}: not during the sale; nothing ran")
    assert not _index_exists(pg_db.conninfo)
