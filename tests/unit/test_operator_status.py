"""Conditions and phase from the world: Deployments, Secrets, the executor's report."""

from __future__ import annotations

import datetime
from typing import Any

from startupmonkey.operator import credentials, monitor, status

NOW = datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.UTC)
COMPONENTS = ("collector", "analyser", "executor", "nats")


def deployment(name: str, available: bool = True, generation: int = 1,
               observed: int = 1, replicas: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": name, "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed,
                       "availableReplicas": replicas if available else 0,
                       "conditions": [
                           {"type": "Available", "status": str(available)},
                           {"type": "Progressing", "status": "True",
                            "reason": "NewReplicaSetAvailable" if available
                            else "ReplicaSetUpdated"}]}}


def healthy() -> dict[str, dict[str, Any]]:
    return {c: deployment(f"shop-{c}") for c in COMPONENTS}


def reachable(at: datetime.datetime = NOW) -> dict[str, Any]:
    return {"reachable": True, "serverVersion": "15.8", "inRecovery": False,
            "checkedAt": at.strftime("%Y-%m-%dT%H:%M:%SZ")}


def inputs(spec: dict[str, Any] | None = None, st: dict[str, Any] | None = None,
           deployments: dict[str, dict[str, Any]] | None = None,
           problems: list[credentials.Problem] | None = None,
           apply: credentials.Problem | None = None, deleting: bool = False,
           now: datetime.datetime = NOW) -> status.Inputs:
    body: dict[str, Any] = {
        "metadata": {"name": "shop", "namespace": "prod", "uid": "u", "generation": 4},
        "spec": {"database": {"host": "db", "dbname": "shop",
                              "credentialsSecret": {"name": "shop-db"}}, **(spec or {})},
        "status": st if st is not None else {"database": reachable()}}
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2026-11-28T11:59:00Z"
    return status.Inputs(view=monitor.parse(body),
                         deployments=healthy() if deployments is None else deployments,
                         secret_problems=problems or [], apply_problem=apply,
                         observed_generation=4, now=now)


def by_type(patch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in patch["conditions"]}


def test_everything_available_is_ready_with_observed_generation() -> None:
    patch = status.compute(inputs())
    conds = by_type(patch)
    assert list(conds) == list(status.TYPES)
    # SuperuserSessions is informational (not part of Ready): not reported in this report.
    assert all(c["status"] == "True" for t, c in conds.items()
               if t != status.SUPERUSER_SESSIONS)
    assert conds[status.SUPERUSER_SESSIONS]["status"] == "Unknown"
    assert conds["Ready"]["reason"] == "AllAvailable"
    assert conds["DatabaseReachable"]["message"] == "reachable: PostgreSQL 15.8, primary"
    assert all(c["observedGeneration"] == 4 for c in conds.values())
    assert patch["phase"] == "Ready" and patch["observedGeneration"] == 4
    assert conds["Ready"]["lastTransitionTime"] == "2026-11-28T12:00:00Z"


def test_an_unavailable_deployment_moves_its_condition_and_ready() -> None:
    deps = healthy()
    deps["executor"] = deployment("shop-executor", available=False)
    conds = by_type(status.compute(inputs(deployments=deps)))
    assert conds["ExecutorAvailable"]["status"] == "False"
    assert conds["ExecutorAvailable"]["reason"] == "Progressing"
    assert conds["Ready"]["status"] == "False"
    assert "ExecutorAvailable: 0/1 replicas available" in conds["Ready"]["message"]
    deps["executor"]["status"]["conditions"][1]["status"] = "False"
    conds = by_type(status.compute(inputs(deployments=deps)))
    assert conds["ExecutorAvailable"]["reason"] == "ProgressDeadlineExceeded"


def test_a_rollout_not_yet_observed_is_progressing_and_pending() -> None:
    deps = healthy()
    deps["collector"] = deployment("shop-collector", generation=2, observed=1)
    patch = status.compute(inputs(deployments=deps))
    assert by_type(patch)["CollectorAvailable"]["reason"] == "Progressing"
    assert patch["phase"] == "Pending"


def test_missing_deployment_and_no_report_yet_are_pending() -> None:
    patch = status.compute(inputs(st={}, deployments={}))
    conds = by_type(patch)
    assert conds["AnalyserAvailable"]["reason"] == "DeploymentNotFound"
    assert conds["DatabaseReachable"]["status"] == "Unknown"
    assert conds["DatabaseReachable"]["reason"] == "NotReported"
    assert patch["phase"] == "Pending"


def test_database_follows_the_executor_report() -> None:
    down = {"database": {"reachable": False, "lastError": "connection refused",
                         "checkedAt": "2026-11-28T11:59:55Z"}}
    patch = status.compute(inputs(st=down))
    conds = by_type(patch)
    assert conds["DatabaseReachable"]["status"] == "False"
    assert conds["DatabaseReachable"]["reason"] == "Unreachable"
    assert conds["DatabaseReachable"]["message"] == "unreachable: connection refused"
    assert conds["Ready"]["reason"] == "Unreachable"
    assert patch["phase"] == "Degraded"
    standby = {"database": {**reachable(), "inRecovery": True,
                            "privilegesMissing": ["pg_signal_backend"]}}
    message = by_type(status.compute(inputs(st=standby)))["DatabaseReachable"]["message"]
    assert "standby" in message and "pg_signal_backend" in message


def test_an_old_report_is_stale() -> None:
    old = {"database": reachable(NOW - datetime.timedelta(minutes=10))}
    cond = by_type(status.compute(inputs(st=old)))["DatabaseReachable"]
    assert (cond["status"], cond["reason"]) == ("Unknown", "Stale")
    fresh_enough = {"database": reachable(NOW - datetime.timedelta(seconds=90))}
    assert by_type(status.compute(inputs(st=fresh_enough)))["DatabaseReachable"]["status"] \
        == "True"


def test_a_missing_secret_is_the_root_cause_of_ready() -> None:
    problem = credentials.Problem("DatabaseReachable", "SecretNotFound",
                                  'Secret "shop-db" (spec.database.credentialsSecret) not found')
    deps = healthy()
    deps["collector"] = deployment("shop-collector", available=False)
    patch = status.compute(inputs(problems=[problem], deployments=deps))
    conds = by_type(patch)
    assert conds["DatabaseReachable"]["reason"] == "SecretNotFound"
    assert conds["Ready"]["reason"] == "SecretNotFound"
    assert 'Secret "shop-db"' in conds["Ready"]["message"]
    assert patch["phase"] == "Error"
    assert [c.type for c in status.new_problems({}, patch)] == ["DatabaseReachable"]
    assert status.new_problems({"conditions": patch["conditions"]}, patch) == []


def test_apply_failure_and_invalid_spec_are_errors() -> None:
    failed = credentials.Problem("Ready", "ApplyFailed", "could not apply: 403")
    patch = status.compute(inputs(apply=failed))
    assert by_type(patch)["Ready"]["reason"] == "ApplyFailed" and patch["phase"] == "Error"
    assert [c.type for c in status.new_problems({}, patch)] == ["Ready"]
    broken = inputs(spec={"mode": "yolo"})
    patch = status.compute(broken)
    assert by_type(patch)["Ready"]["reason"] == "InvalidSpec"
    assert "spec.mode" in by_type(patch)["Ready"]["message"]


def test_suspended_and_terminating() -> None:
    patch = status.compute(inputs(spec={"suspend": True}))
    conds = by_type(patch)
    assert patch["phase"] == "Suspended"
    assert {conds[t]["reason"] for t in ("Ready", "CollectorAvailable", "EventBusAvailable")} \
        == {"Suspended"}
    patch = status.compute(inputs(deleting=True))
    assert patch["phase"] == "Terminating"
    assert by_type(patch)["Ready"]["reason"] == "Terminating"


def test_executor_scaled_to_zero_and_external_bus() -> None:
    conds = by_type(status.compute(inputs(spec={
        "executor": {"replicas": 0},
        "eventBus": {"url": "nats://user:secret@bus:4222"}}, deployments={
            c: deployment(f"shop-{c}") for c in ("collector", "analyser")})))
    assert conds["ExecutorAvailable"]["reason"] == "ScaledToZero"
    assert conds["EventBusAvailable"]["status"] == "True"
    assert conds["EventBusAvailable"]["reason"] == "External"
    assert "secret" not in conds["EventBusAvailable"]["message"]
    assert "nats://bus:4222" in conds["EventBusAvailable"]["message"]


def test_transition_time_moves_only_with_the_status() -> None:
    first = status.compute(inputs())
    later = NOW + datetime.timedelta(minutes=5)
    deps = healthy()
    deps["analyser"] = deployment("shop-analyser", replicas=2)  # message changes, status not
    second_in = inputs(st={"database": reachable(later), "conditions": first["conditions"]},
                       deployments=deps, now=later)
    second = status.compute(second_in)
    assert by_type(second)["AnalyserAvailable"]["message"] == "2/2 replicas available"
    assert by_type(second)["Ready"]["lastTransitionTime"] == "2026-11-28T12:00:00Z"
    deps["analyser"] = deployment("shop-analyser", available=False)
    third = status.compute(inputs(st={"database": reachable(later),
                                      "conditions": second["conditions"]},
                                  deployments=deps, now=later))
    assert by_type(third)["AnalyserAvailable"]["lastTransitionTime"] == "2026-11-28T12:05:00Z"
    assert by_type(third)["ExecutorAvailable"]["lastTransitionTime"] == "2026-11-28T12:00:00Z"


def test_changed_and_became_ready() -> None:
    patch = status.compute(inputs())
    assert status.changed({}, patch)
    assert not status.changed({**patch, "database": {"reachable": True}}, patch)
    assert status.became_ready({}, patch)
    assert not status.became_ready(patch, patch)


def test_superuser_logins_are_a_condition_before_any_remediation_is_refused() -> None:
    seen = {"database": {**reachable(), "superuserLogins": ["postgres"],
                         "executorSuperuser": False}}
    patch = status.compute(inputs(st=seen))
    cond = by_type(patch)[status.SUPERUSER_SESSIONS]
    assert (cond["status"], cond["reason"]) == ("True", "SuperuserLogins")
    assert "superuser(s) postgres" in cond["message"]
    assert "spec.protect.superusers is true (the default)" in cond["message"]
    # Informational only: the monitor stays Ready.
    assert by_type(patch)["Ready"]["status"] == "True" and patch["phase"] == "Ready"
    # Unprotected, but the executor cannot signal them: said as clearly.
    cond = by_type(status.compute(inputs(spec={"protect": {"superusers": False}}, st=seen)))[
        status.SUPERUSER_SESSIONS]
    assert "the executor's role is not a superuser" in cond["message"]
    able = {"database": {**seen["database"], "executorSuperuser": True}}
    cond = by_type(status.compute(inputs(spec={"protect": {"superusers": False}}, st=able)))[
        status.SUPERUSER_SESSIONS]
    assert "may be signalled" in cond["message"]
    none = {"database": {**reachable(), "superuserLogins": []}}
    cond = by_type(status.compute(inputs(st=none)))[status.SUPERUSER_SESSIONS]
    assert (cond["status"], cond["reason"]) == ("False", "NoSuperuserLogins")
