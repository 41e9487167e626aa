"""Delivery to real HTTP receivers on 127.0.0.1 (issue 20, item 1): a target answering 500
then 200 gets the notification once, after a retry; a hanging one times out, gives up within
its bound and says so, while another target is served at once; a signing key is checked by
the receiver, and a wrong key is detected."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest

from startupmonkey import notify
from startupmonkey.models.enums import RemediationState
from tests.support.eventually import eventually
from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration
FAST = notify.Retry(timeout=0.5, attempts=3, first_delay=0.05, max_delay=0.2)


def _job(state: RemediationState = RemediationState.FAILED, name: str = "shop-0123") -> (
        notify.Job):
    body = notify.encode({"state": state.value, "name": name})
    return notify.Job("ns", name, state, body, f"ns/{name}/{state.value}")


class Log:
    """What the workers told and recorded."""

    def __init__(self, failures: int = 0) -> None:
        self.recorded: list[tuple[str, str]] = []
        self.told: list[tuple[str, str, notify.Health]] = []
        self.failures = failures  # the next record writes that raise
        self.tries = 0

    async def record(self, target: str, job: notify.Job) -> None:
        self.tries += 1
        if self.failures:
            self.failures -= 1
            raise PermissionError("403 Forbidden: cannot patch remediations")
        self.recorded.append((target, job.delivery_id))

    def listener(self, name: str) -> notify.Listener:
        def told(outcome: str, job: notify.Job, health: notify.Health) -> None:
            self.told.append((name, outcome, health))
        return told


def _worker(name: str, url: str, log: Log, key: bytes | None = None,
            refresh: notify.Refresher | None = None) -> notify.Worker:
    async def resolve() -> notify.Endpoint:
        return notify.Endpoint(url, key)
    return notify.Worker(name, resolve, log.record, log.listener(name), FAST, refresh)


async def test_a_500_then_200_target_gets_it_once_after_a_retry() -> None:
    log = Log()
    with Receiver([500, 200]) as flaky:
        worker = _worker("flaky", flaky.url, log)
        try:
            worker.submit(_job())
            assert not worker.submit(_job()), "queued twice"
            await eventually(lambda: log.recorded == [("flaky", "ns/shop-0123/Failed")])
            assert flaky.deliveries() == ["ns/shop-0123/Failed"] * 2  # the 500, then the 200
            assert [o for _, o, _ in log.told] == ["retried", "delivered"]
            assert worker.health.ok
            assert not worker.submit(_job()), "a delivered one queued again from a stale copy"
            assert json.loads(flaky.bodies()[-1]) == {"state": "Failed", "name": "shop-0123"}
        finally:
            await worker.stop()


async def test_a_hanging_target_times_out_and_never_delays_another() -> None:
    log = Log()
    with Receiver(hang=True) as dead, Receiver([200]) as alive:
        stuck, fine = _worker("dead", dead.url, log), _worker("alive", alive.url, log)
        try:
            started = time.monotonic()
            stuck.submit(_job())
            fine.submit(_job())
            await eventually(lambda: ("alive", "ns/shop-0123/Failed") in log.recorded,
                             timeout=5)
            assert time.monotonic() - started < FAST.timeout, "waited behind the dead one"
            await eventually(lambda: stuck.health.reason == notify.REASON_TIMEOUT)
            await eventually(lambda: ("dead", "failed") in [(n, o) for n, o, _ in log.told],
                             timeout=10)
            assert "gave up" in stuck.health.message and "within 0.5s" in stuck.health.message
            assert len(dead.requests) == FAST.attempts  # the bound holds
            assert ("dead", "ns/shop-0123/Failed") not in log.recorded
            assert not stuck.submit(_job()), "a given-up delivery is not queued again"
        finally:
            await asyncio.gather(stuck.stop(), fine.stop())


@pytest.mark.parametrize("right", [True, False])
async def test_the_receiver_checks_the_signature(right: bool) -> None:
    log = Log()
    with Receiver([200], key=b"shared-secret") as checking:
        worker = _worker("signed", checking.url, log,
                         key=b"shared-secret" if right else b"wrong-key")
        try:
            worker.submit(_job())
            await eventually(lambda: len(checking.requests) == 1)
            [request] = checking.requests
            assert request.signature_ok is right
            assert request.headers[notify.SIGNATURE_HEADER].startswith("sha256=")
        finally:
            await worker.stop()


async def test_a_refused_connection_is_said_without_the_url() -> None:
    log = Log()
    with Receiver([200]) as gone:
        url = gone.url
    worker = _worker("gone", url + "?token=s3cr3t", log)
    try:
        worker.submit(_job())
        await eventually(lambda: not worker.health.ok)
        assert worker.health.reason == notify.REASON_FAILED
        assert "s3cr3t" not in worker.health.message and "127.0.0.1" not in \
            worker.health.message
    finally:
        await worker.stop()


async def test_a_given_up_delivery_is_sent_once_the_target_answers_again() -> None:
    log = Log()
    # three 500s: the first job is given up; then the target is back
    with Receiver([500, 500, 500, 200]) as back:
        worker = _worker("back", back.url, log)
        try:
            worker.submit(_job(name="first"))
            await eventually(lambda: "ns/first/Failed" in worker.given_up)
            assert log.recorded == []
            worker.submit(_job(name="second"))
            await eventually(lambda: sorted(log.recorded) == [("back", "ns/first/Failed"),
                                                             ("back", "ns/second/Failed")])
            assert not worker.given_up and worker.health.ok
            assert back.deliveries()[-2:] == ["ns/second/Failed", "ns/first/Failed"]
        finally:
            await worker.stop()


async def test_each_attempt_sends_what_the_remediation_warrants_now() -> None:
    log = Log()
    warranted = {"ns/shop-0123/Failed": True}
    seen: list[str] = []

    async def refresh(job: notify.Job) -> notify.Job | None:
        seen.append(job.delivery_id)
        if not warranted[job.delivery_id]:
            return None
        return dataclasses.replace(job, body=notify.encode({"rebuilt": len(seen)}))

    with Receiver([500, 200]) as flaky:
        worker = _worker("flaky", flaky.url, log, refresh=refresh)
        try:
            worker.submit(_job())
            await eventually(lambda: log.recorded == [("flaky", "ns/shop-0123/Failed")])
            assert [json.loads(b) for b in flaky.bodies()] == [{"rebuilt": 1}, {"rebuilt": 2}]
        finally:
            await worker.stop()
    with Receiver([500, 200]) as flaky:
        worker = _worker("flaky", flaky.url, log, refresh=refresh)
        try:
            warranted["ns/shop-0123/Failed"] = False  # left before the first attempt
            worker.submit(_job())
            await eventually(lambda: not worker.pending)
            assert flaky.requests == [] and len(log.recorded) == 1
        finally:
            await worker.stop()


async def test_a_record_write_that_fails_once_is_tried_again() -> None:
    log = Log(failures=1)
    with Receiver([200]) as hook:
        worker = _worker("hook", hook.url, log)
        try:
            worker.submit(_job())
            await eventually(lambda: log.recorded == [("hook", "ns/shop-0123/Failed")])
            assert log.tries == 2 and len(hook.requests) == 1
            assert [o for _, o, _ in log.told] == ["delivered"] and worker.health.ok
        finally:
            await worker.stop()


async def test_a_record_that_cannot_be_written_is_said_and_never_resends() -> None:
    log = Log(failures=100)
    with Receiver([200]) as hook:
        worker = _worker("hook", hook.url, log)
        try:
            worker.submit(_job())
            await eventually(lambda: [o for _, o, _ in log.told] == ["record_failed"])
            assert log.tries == notify.RECORD_TRIES, "the record tries are bounded"
            assert worker.health.reason == notify.REASON_RECORD_FAILED
            assert "could not record" in worker.health.message
            assert "PermissionError" in worker.health.message
            assert hook.url not in worker.health.message
            assert not worker.submit(_job()), "the same state queued again in this process"
            worker.submit(_job(name="other"))  # a later event: the first is not re-sent
            await eventually(lambda: len(log.told) == 2)
            assert hook.deliveries() == ["ns/shop-0123/Failed", "ns/other/Failed"]
        finally:
            await worker.stop()
