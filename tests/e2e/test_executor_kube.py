"""The executor on the real API server: Remediation objects, monitor status, replicas, RBAC.

Executors run in this process with the Kubernetes store, authenticated by a token minted for a
ServiceAccount bound to exactly the executor Role of docs/design.md#rbac (startupmonkey/rbac.py),
against
a real PostgreSQL and a real nats-server.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import messages
from startupmonkey.models.enums import RemediationState
from tests.support import executor_helpers as helpers
from tests.support import kube_helpers, workloads
from tests.support.controlplane import ControlPlane
from tests.support.eventually import eventually

pytestmark = pytest.mark.e2e


async def test_remediation_objects_and_monitor_status_tell_the_story(
        control_plane: ControlPlane, namespace: str, app_conninfo: str,
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cp = control_plane
    kubeconfig = kube_helpers.setup_executor_namespace(cp, namespace, tmp_path)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, namespace=namespace)
    store = kube_helpers.store(kubeconfig, namespace)
    try:
        with workloads.idle_in_transaction(app_conninfo) as held:
            await eventually(lambda: helpers.idle(pg_db.conninfo, held.pid), timeout=10)
            detection = helpers.idle_detection(pg_db.conninfo, held.pid, namespace)
            async with helpers.running_executor(cfg, store) as executor:
                assert executor.engine is not None
                assert await executor.engine.handle(detection.encode())

                async def succeeded() -> bool:
                    return list((await helpers.states(store)).values()) == ["Succeeded"]

                await eventually(succeeded, timeout=30)

                # The labels, Events and monitor counts are written after the Remediation's
                # own change, by the executor: wait for them while it runs.
                def counted() -> dict[str, Any] | None:
                    found = cp.kubectl_json("get", "dbm", helpers.MONITOR, "-n", namespace)
                    counts = found.get("status", {}).get("remediations", {})
                    done = counts.get("succeeded") == 1 and counts.get("active") == 0
                    return found if done else None

                dbm = await eventually(counted, timeout=30)
            assert not held.is_alive()
        rems = cp.kubectl_json("get", "rem", "-n", namespace)["items"]
        assert len(rems) == 1
        rem = rems[0]
        assert rem["metadata"]["labels"]["startupmonkey.dev/state"] == "succeeded"
        assert rem["status"]["executedSql"] == [rem["spec"]["sql"]]
        assert rem["status"]["before"]["idle_seconds"] >= 0
        assert [s["state"] for s in rem["status"]["history"]] == [
            "Approved", "Running", "Succeeded"]
        counts = dbm["status"]["remediations"]
        assert {k: v for k, v in counts["byState"].items() if v} == {"Succeeded": 1}
        assert counts["lastAction"].startswith("terminate_session pid")
        assert dbm["status"]["database"]["reachable"] is True
        events = cp.kubectl_json("get", "events", "-n", namespace)["items"]
        assert {e["reason"] for e in events} >= {"Approved", "Running", "Succeeded"}
        table = cp.kubectl("get", "rem", "-n", namespace).stdout
        assert "terminate_session" in table and "Succeeded" in table
        # What changed, in words, beside the numbers (issue 21.3), and in `-o wide`.
        said = rem["status"]["summary"]
        assert said.startswith("terminated a session idle "), rem["status"]
        assert "benefit" not in rem["status"], "no time saved is invented for a session"
        header, row = cp.kubectl("get", "rem", "-n", namespace, "-o", "wide").stdout.splitlines()
        assert header.index("RESULT") < header.index("BENEFIT"), header
        assert said in row, row
    finally:
        kube_helpers.close(store)


async def test_a_detection_seen_by_two_replicas_is_acted_on_once(
        control_plane: ControlPlane, namespace: str, pg_db: postgres.PostgresDatabase,
        nats_server: natsserver.NatsServer, tmp_path: Path) -> None:
    kubeconfig = kube_helpers.setup_executor_namespace(control_plane, namespace, tmp_path)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, namespace=namespace)
    helpers.stale_tables(pg_db.conninfo, "orders")
    one, two = kube_helpers.store(kubeconfig, namespace), kube_helpers.store(kubeconfig, namespace)
    try:
        async with helpers.running_executor(cfg, one) as first, \
                helpers.running_executor(cfg, two) as second:
            assert first.engine is not None and second.engine is not None
            payload = helpers.table_detection("orders", namespace=namespace).encode()
            await asyncio.gather(first.engine.handle(payload), second.engine.handle(payload))

            async def done() -> bool:
                return list((await helpers.states(one)).values()) == ["Succeeded"]

            await eventually(done, timeout=30)
        (record,) = await one.list()
        assert len(record.status.executed_sql) == 1
        assert [s.state for s in record.status.history].count(RemediationState.RUNNING) == 1
        with psycopg.connect(pg_db.conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT analyze_count FROM pg_catalog.pg_stat_user_tables "
                               "WHERE relname = 'orders'").fetchone()
        assert row == (1,)
    finally:
        kube_helpers.close(one, two)


async def test_hourly_limit_holds_across_two_replicas(
        control_plane: ControlPlane, namespace: str, pg_db: postgres.PostgresDatabase,
        nats_server: natsserver.NatsServer, tmp_path: Path) -> None:
    kubeconfig = kube_helpers.setup_executor_namespace(control_plane, namespace, tmp_path)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, namespace=namespace,
                         limits={"maxActionsPerHour": 1})
    helpers.stale_tables(pg_db.conninfo, "a", "b")
    one, two = kube_helpers.store(kubeconfig, namespace), kube_helpers.store(kubeconfig, namespace)
    try:
        async with helpers.running_executor(cfg, one) as first, \
                helpers.running_executor(cfg, two) as second:
            assert first.engine is not None and second.engine is not None
            await asyncio.gather(
                first.engine.handle(helpers.table_detection("a", namespace=namespace).encode()),
                second.engine.handle(helpers.table_detection("b", namespace=namespace).encode()))

            async def settled() -> bool:
                records = await one.list()
                return sorted(r.state.value for r in records) == ["Approved", "Succeeded"] and \
                    any("hourly limit" in r.status.message for r in records)

            await eventually(settled, timeout=30)
            await asyncio.sleep(2.5)  # two more ticks on both replicas: still one action
            assert sorted((await helpers.states(one)).values()) == ["Approved", "Succeeded"]

            # The monitor's status counts what `kubectl get rem` lists, state by state.
            def counts_match() -> bool:
                listed = collections.Counter(
                    r["status"]["state"] for r in control_plane.kubectl_json(
                        "get", "rem", "-n", namespace)["items"])
                counts = control_plane.kubectl_json(
                    "get", "dbm", helpers.MONITOR, "-n", namespace)["status"]["remediations"]
                shown = {k: v for k, v in counts["byState"].items() if v}
                assert shown == dict(listed), (shown, listed)
                assert counts["succeeded"] == listed["Succeeded"]
                return True

            await eventually(counts_match, timeout=20)
    finally:
        kube_helpers.close(one, two)


async def test_approval_by_kubectl_runs_the_action_once(
        control_plane: ControlPlane, namespace: str, app_conninfo: str,
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cp = control_plane
    kubeconfig = kube_helpers.setup_executor_namespace(cp, namespace, tmp_path)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, namespace=namespace,
                         mode="approval")
    store = kube_helpers.store(kubeconfig, namespace)
    try:
        async with helpers.awaiting_approval(cfg, store, app_conninfo, pg_db.conninfo,
                                             namespace) as (held, name):
            await asyncio.sleep(2)
            # Looked at from outside: a query on the held connection would itself move
            # the session on (new state_change), and the executor would rightly refuse.
            assert helpers.idle(pg_db.conninfo, held.pid), "nothing runs before approval"
            cp.kubectl("patch", "rem", name, "-n", namespace, "--type=merge",
                       "-p", '{"spec":{"approved":true}}')

            async def succeeded() -> bool:
                record = await store.get(name)
                return record is not None and record.state is RemediationState.SUCCEEDED

            await eventually(succeeded, timeout=30)
            await asyncio.sleep(2)
            assert not held.is_alive()
        record = await store.get(name)
        assert record is not None
        assert [s.state for s in record.status.history].count(RemediationState.RUNNING) == 1
        assert record.status.approved_by == "unknown"
    finally:
        kube_helpers.close(store)


def test_the_executor_role_is_exactly_what_it_needs(control_plane: ControlPlane,
                                                    namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    kubeconfig = kube_helpers.setup_executor_namespace(cp, namespace, tmp_path)

    def can(*args: str, ns: str = namespace) -> bool:
        proc = cp.kubectl("auth", "can-i", *args, "-n", ns, kubeconfig=kubeconfig, check=False)
        return proc.stdout.strip() == "yes"

    assert can("create", "remediations.startupmonkey.dev")
    assert can("patch", "remediations.startupmonkey.dev", "--subresource=status")
    assert can("patch", "databasemonitors.startupmonkey.dev", "--subresource=status")
    assert can("create", "events")
    assert not can("get", "secrets")
    assert not can("delete", "deployments.apps")
    assert not can("delete", "remediations.startupmonkey.dev")
    assert not can("patch", "databasemonitors.startupmonkey.dev")
    assert not can("list", "remediations.startupmonkey.dev", ns="default")
    assert not can("list", "namespaces")


async def test_two_occurrences_of_one_key_on_two_replicas_open_one_remediation(
        control_plane: ControlPlane, namespace: str, pg_db: postgres.PostgresDatabase,
        nats_server: natsserver.NatsServer, tmp_path: Path) -> None:
    """Two replicas, each with its own API client, handed different occurrences (ids) of one
    key at the same moment: the names differ, so the API server would accept both; the key's
    advisory lock makes the second see the first and open nothing."""
    kubeconfig = kube_helpers.setup_executor_namespace(control_plane, namespace, tmp_path)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, namespace=namespace,
                         mode="approval")
    helpers.stale_tables(pg_db.conninfo, "orders")
    one, two = kube_helpers.store(kubeconfig, namespace), kube_helpers.store(kubeconfig, namespace)
    try:
        first = helpers.table_detection("orders", namespace=namespace)
        second = first.model_copy(update={"id": messages.new_occurrence_id(
            first.key, first.first_seen + datetime.timedelta(seconds=1))})
        assert first.key == second.key and first.id != second.id
        replicas = helpers.engine(cfg, one, "replica-1"), helpers.engine(cfg, two, "replica-2")
        assert await asyncio.gather(replicas[0].handle(first.encode()),
                                    replicas[1].handle(second.encode())) == [True, True]
        items = control_plane.kubectl_json("get", "rem", "-n", namespace)["items"]
        assert len(items) == 1, [i["metadata"]["name"] for i in items]
        (record,) = await two.list()
        assert record.state is RemediationState.PENDING_APPROVAL
        assert record.spec.detection_id in (first.id, second.id)
    finally:
        kube_helpers.close(one, two)
