"""The operator's record of deliveries (operator/notify.py): writers of one Remediation's
annotation take turns under one lock, and that lock is never dropped while a writer holds or
awaits it, so a third writer arriving just as the first finishes cannot run beside the second
(a record lost). The API is an in-memory fake that yields between the read and the patch.
Before each attempt the operator re-judges a job against a fresh GET: a PendingApproval
already left is dropped, the body is rebuilt, and without an answer the job is sent as built."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from startupmonkey import notify
from startupmonkey.models.enums import RemediationState
from startupmonkey.operator import notify as operator_notify

S = RemediationState


class SlowApi:
    """One Remediation in memory; a read yields to other tasks before it returns."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] = {"metadata": {"namespace": "ns", "name": "r",
                                                 "annotations": {}}}

    async def get(self, kind: Any, namespace: str, name: str) -> dict[str, Any]:
        seen = copy.deepcopy(self.obj)
        for _ in range(3):
            await asyncio.sleep(0)
        return seen

    async def merge_patch(self, kind: Any, namespace: str, name: str,
                          patch: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        self.obj["metadata"]["annotations"].update(patch["metadata"]["annotations"])


def _job(state: S) -> notify.Job:
    return notify.Job("ns", "r", state, b"{}", f"ns/r/{state.value}")


async def test_three_writers_all_end_recorded_and_no_lock_is_left() -> None:
    api = SlowApi()
    notifier = operator_notify.Notifier(api)  # type: ignore[arg-type]
    tasks: list[asyncio.Task[None]] = []

    def third(_: asyncio.Task[None]) -> None:  # arrives just as the first one is done
        tasks.append(asyncio.create_task(notifier._record("c", _job(S.FAILED))))

    first = asyncio.create_task(notifier._record("a", _job(S.FAILED)))
    first.add_done_callback(third)
    second = asyncio.create_task(notifier._record("b", _job(S.FAILED)))
    await asyncio.gather(first, second)
    await asyncio.gather(*tasks)
    assert len(tasks) == 1
    recorded = notify.parse_notified(api.obj["metadata"]["annotations"][
        notify.ANNOTATION_NOTIFIED])
    assert recorded == {"Failed@a", "Failed@b", "Failed@c"}
    assert notifier.locks == {} and not notifier._users  # dropped once nobody uses it


class OneApi:
    """Answers a GET of the Remediation with ``obj``, or raises ``error``."""

    def __init__(self, obj: dict[str, Any] | None, error: Exception | None = None) -> None:
        self.obj, self.error = obj, error

    async def get(self, kind: Any, namespace: str, name: str) -> dict[str, Any] | None:
        if self.error is not None:
            raise self.error
        return self.obj


def _remediation(state: str, history: list[str]) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "r"},
            "spec": {"monitor": "m", "riskClass": "ddl", "action": "create_index",
                     "sql": "CREATE INDEX CONCURRENTLY i ON t (c)", "sqlHash": "a" * 64},
            "status": {"state": state, "history": [{"state": s} for s in history]}}


async def test_the_operator_rejudges_a_job_against_a_fresh_get() -> None:
    target = operator_notify.models.NotificationTarget.model_validate(
        {"name": "ops", "secretRef": {"name": "hook"}})
    key = ("ns", "m", "ops")
    job = _job(S.PENDING_APPROVAL)
    approved = _remediation("Succeeded", ["PendingApproval", "Approved", "Succeeded"])
    notifier = operator_notify.Notifier(OneApi(approved))  # type: ignore[arg-type]
    notifier.targets[key] = target
    assert await notifier._refresh(key, job) is None  # left: never sent late
    notifier.api = OneApi(_remediation("PendingApproval", ["PendingApproval"]))  # type: ignore[assignment]
    fresh = await notifier._refresh(key, job)
    assert fresh is not None and b"approve" in fresh.body  # rebuilt from the fresh copy
    notifier.api = OneApi(None, OSError("connection refused"))  # type: ignore[assignment]
    assert await notifier._refresh(key, job) == job  # no fresher copy: as built
