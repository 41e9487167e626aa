"""Approvals in a cluster (issue 24.2): the CLI's Kubernetes API requests with the user's own
kubeconfig, RBAC deciding on the real API server; the executor serves no API there at all, so
no user's token ever reaches it.

The approver holds exactly the chart's aggregated ``edit`` rules, the viewer its ``view`` rules
(bound directly: this control plane runs no ClusterRole aggregation controller): the approver may
approve, reject and ask for a rollback, never write a Remediation's status; the viewer may list
and get, and its writes are refused with the API server's reason and nothing changed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from startupmonkey import rbac
from startupmonkey.executor import indexes, records
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass
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
    record.status.after = {"after_window_seconds": 20.0, "index_bytes": 16384.0}
    record.status.decision = remediation.Decision(
        keep=True, reason="kept: faster", before_mean_ms=11.7, after_mean_ms=0.07,
        before_calls=320, after_calls=404, improvement=0.994)
    for state in (RemediationState.APPROVED, RemediationState.RUNNING,
                  RemediationState.VERIFYING, RemediationState.SUCCEEDED):
        record.move(state, "kept: faster" if state is RemediationState.SUCCEEDED else "")
    return record


def _index_exists(conninfo: str) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute("SELECT to_regclass('public.kept_idx') IS NOT NULL").fetchone() \
            == (True,)


async def _cli(kubeconfig: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``startupmonkey`` CLI with ``KUBECONFIG=kubeconfig`` (a file, or several
    separated by ``os.pathsep``)."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return await asyncio.to_thread(subprocess.run, [str(EXE), *args], capture_output=True,
                                   text=True, env=env, timeout=60)


def _one_line_refusal(proc: subprocess.CompletedProcess[str], command: str) -> str:
    assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
    assert proc.stdout == "", command
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"startupmonkey {command}: "), proc.stderr
    return proc.stderr


async def test_the_executor_serves_no_api_in_a_cluster(
        control_plane: ControlPlane, namespace: str, pg_db: postgres.PostgresDatabase,
        nats_server: natsserver.NatsServer, tmp_path: Path) -> None:
    kubeconfig = kube_helpers.setup_executor_namespace(control_plane, namespace, tmp_path)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, namespace=namespace)
    assert cfg.executor is not None
    cfg.executor.reporter = "kubernetes"
    port = postgres.free_port()
    cfg.executor.listen_address = f"127.0.0.1:{port}"  # as the operator still renders it
    store = kube_helpers.store(kubeconfig, namespace)
    try:
        async with helpers.running_executor(cfg, store) as executor:
            assert executor.engine is not None and executor.api is None
            with pytest.raises(OSError):  # nothing listens: no port takes a token
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        kube_helpers.close(store)


async def test_the_cli_in_cluster_mode_is_decided_by_the_users_own_rbac(
        control_plane: ControlPlane, namespace: str, approver: str, chart_viewer: str,
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cp = control_plane
    kubeconfig = kube_helpers.setup_executor_namespace(cp, namespace, tmp_path)
    as_approver = cp.kubeconfig_for_token(approver, tmp_path / "approver.kubeconfig", namespace)
    as_viewer = cp.kubeconfig_for_token(chart_viewer, tmp_path / "viewer.kubeconfig")
    stranger = kube_helpers.identity(cp, namespace, "stranger", [])
    as_stranger = cp.kubeconfig_for_token(stranger, tmp_path / "stranger.kubeconfig", namespace)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, namespace=namespace,
                         mode="approval")
    assert cfg.executor is not None
    cfg.executor.reporter = "kubernetes"
    # As the chart installs it: the API server vouches for the approved-by annotation
    # (tests/e2e/test_approver_policy.py proves the policy; without it: "unknown").
    cfg.executor.approver_verified = True
    helpers.stale_tables(pg_db.conninfo, "orders", "returns", "kept")
    store = kube_helpers.store(kubeconfig, namespace)
    ns = ("-n", namespace)
    try:
        kept = _kept_index(pg_db.conninfo, namespace)
        assert await store.create(kept)
        async with helpers.running_executor(cfg, store) as executor:
            assert executor.engine is not None and executor.api is None
            for table in ("orders", "returns"):
                await executor.engine.handle(
                    helpers.table_detection(table, namespace=namespace).encode())

            listed = await _cli(as_approver, "status", "--kube", "-o", "json")
            assert listed.returncode == 0, listed.stderr
            by_table = {item["spec"]["target"].get("table"): item
                        for item in json.loads(listed.stdout)}
            assert set(by_table) == {"orders", "returns", "kept"}
            to_approve, to_reject = (by_table["orders"]["metadata"]["name"],
                                     by_table["returns"]["metadata"]["name"])
            planned = by_table["orders"]["spec"]["sqlHash"]
            assert by_table["orders"]["status"]["state"] == "PendingApproval"
            shown = await _cli(as_viewer, "status", "--kube", *ns)
            assert shown.returncode == 0, shown.stderr
            assert shown.stdout.startswith("NAME") and "SQL-HASH" in shown.stdout
            assert f"{to_approve}  PendingApproval" in shown.stdout
            assert planned[:12] in shown.stdout
            # What the kept index changed and the time it saves, in words (issue 21.3).
            (kept_row,) = [line for line in shown.stdout.splitlines()
                           if line.startswith(kept.name)]
            assert "11.7 ms -> 0.07 ms per call over 320 / 404 calls; index 16 kB" in kept_row
            assert "14.1 min saved per hour (72,720 calls/h)" in kept_row
            assert by_table["kept"]["status"]["benefit"] == \
                "14.1 min saved per hour (72,720 calls/h)"

            unseen = _one_line_refusal(await _cli(as_stranger, "status", "--kube"), "status")
            assert unseen.startswith("startupmonkey status: Kubernetes API: 403 Forbidden: ")
            assert f"system:serviceaccount:{namespace}:stranger" in unseen
            assert "cannot list resource" in unseen

            before = {r.name: r.version for r in await store.list()}
            for command, name, extra in (("approve", to_approve, ("--sql-hash", planned)),
                                         ("reject", to_reject, ()),
                                         ("rollback", kept.name, ())):
                refused = _one_line_refusal(await _cli(
                    as_viewer, command, name, "--kube", *ns, *extra, "--reason",
                    "viewer tries"), command)
                assert refused.startswith(
                    f"startupmonkey {command}: Kubernetes API: 403 Forbidden: "), refused
                assert f"system:serviceaccount:{namespace}:viewer" in refused
                assert 'cannot patch resource "remediations"' in refused
            unreviewed = _one_line_refusal(await _cli(as_approver, "approve", to_approve,
                                                      "--kube"), "approve")
            assert "--sql-hash" in unreviewed
            stale = _one_line_refusal(await _cli(as_approver, "approve", to_approve, "--kube",
                                                 "--sql-hash", "0" * 12), "approve")
            assert f"the planned SQL's hash is {planned[:12]}" in stale
            await asyncio.sleep(2)  # two ticks: nothing was asked, so nothing happens
            assert {r.name: r.version for r in await store.list()} == before

            # KUBECONFIG as kubectl reads it: a list (a missing file is skipped).
            listed_files = f"{tmp_path / 'missing.kubeconfig'}{os.pathsep}{as_approver}"
            approved = await _cli(listed_files, "approve", to_approve, "--kube",
                                  "--sql-hash", planned[:12])
            assert approved.returncode == 0, approved.stderr
            assert to_approve in approved.stdout
            # A user whose token is in a tokenFile.
            doc = yaml.safe_load(as_approver.read_text())
            (tmp_path / "approver.token").write_text(approver)
            for user in doc["users"]:
                del user["user"]["token"]
                user["user"]["tokenFile"] = str(tmp_path / "approver.token")
            with_token_file = tmp_path / "token-file.kubeconfig"
            with_token_file.write_text(yaml.safe_dump(doc))
            rejected = await _cli(with_token_file, "reject", to_reject, "--kube", *ns,
                                  "--reason", "not during the sale")
            assert rejected.returncode == 0, rejected.stderr
            # An exec credential plugin (how cloud logins give tokens), run by the kubernetes
            # client's own loader; a failing plugin is a one-line error.
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
            rolled = await _cli(with_plugin, "rollback", kept.name, "--kube", *ns,
                                "--reason", "not needed")
            assert rolled.returncode == 0, rolled.stderr
            for user in doc["users"]:
                user["user"]["exec"]["env"].append({"name": "FAIL", "value": "1"})
            with_plugin.write_text(yaml.safe_dump(doc))
            no_login = _one_line_refusal(await _cli(with_plugin, "status", "--kube"),
                                         "status")
            assert no_login.startswith("startupmonkey status: cannot get a token: "), no_login
            assert "no login" in no_login

            async def settled() -> bool:
                states = await helpers.states(store)
                return (states[to_approve], states[to_reject], states[kept.name]) == (
                    "Succeeded", "Rejected", "RolledBack")

            await eventually(settled, timeout=30)
    finally:
        kube_helpers.close(store)
    who = f"system:serviceaccount:{namespace}:approver"
    ran = await _record(kubeconfig, namespace, to_approve)
    assert ran.spec.approved
    assert [s.state.value for s in ran.status.history].count("Running") == 1, \
        "approved once, ran once"
    assert ran.status.approved_by == who  # the sender's own name, from its SelfSubjectReview
    rejected_record = await _record(kubeconfig, namespace, to_reject)
    assert rejected_record.annotations[records.ANNOTATION_REJECT] == \
        f"{who}: not during the sale"
    assert rejected_record.status.message == f"rejected by {who}: not during the sale; nothing ran"
    assert rejected_record.status.executed_sql == []
    rolled_back = await _record(kubeconfig, namespace, kept.name)
    assert rolled_back.annotations[remediation.ANNOTATION_ROLLBACK] == f"{who}: not needed"
    assert rolled_back.status.executed_sql == [kept.spec.rollback_sql]
    assert rolled_back.status.message == f"rolled back on request of {who}: not needed"
    assert not _index_exists(pg_db.conninfo)
