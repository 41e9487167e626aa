"""The operator at many monitors (issue 19, item 5), without a network: a status reconcile
reads the Deployments from the watch-fed cache (one listing per monitor, ever), repeated
triggers coalesce, nothing polls a healthy monitor, the drift-repair sweep slows down instead
of the API load growing, and every reconcile reports its cost by handler."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import kopf
import prometheus_client
import pytest

from startupmonkey import kubetime
from startupmonkey.operator import config, kube, metrics, monitor, reconcile, status
from tests.support.eventually import eventually

NS = "shop"


@pytest.fixture(autouse=True)
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """kopf posts Events only inside its own run: recorded here instead."""
    posted: list[str] = []
    for name in ("warn", "info"):
        monkeypatch.setattr(kopf, name, lambda _body, *, reason, message="", **_: posted.append(
            reason))
    return posted


class FakeApi(kube.Api):
    """Answers :class:`kube.Api`'s requests from a dict of objects by path (the counting and
    the listener of the real :meth:`kube.Api.request` run unchanged)."""

    def __init__(self) -> None:
        super().__init__(client=None)  # type: ignore[arg-type]
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.versions = itertools.count(100)
        self.gate: asyncio.Event | None = None  # when set: GETs of monitors wait for it

    def put(self, kind: kube.Kind, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        meta["resourceVersion"] = str(next(self.versions))
        meta.setdefault("generation", 1)
        self.objects[kind.path(meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def _request(self, method: str, path: str, body: Any = None,
                 query: list[tuple[str, str]] | None = None,
                 content_type: str = "application/json") -> tuple[int, Any]:
        self.calls.append((method, path))
        query_map = dict(query or [])
        if method == "GET" and path in self.objects:
            return 200, copy.deepcopy(self.objects[path])
        if method == "GET" and "labelSelector" in query_map:
            wanted = dict(p.split("=") for p in query_map["labelSelector"].split(","))
            items = [copy.deepcopy(o) for p, o in self.objects.items()
                     if p.startswith(path + "/") and
                     wanted.items() <= (o["metadata"].get("labels") or {}).items()]
            return 200, {"items": items}
        if method == "GET":
            return 404, {"message": "not found"}
        if method == "POST":
            obj = copy.deepcopy(body)
            obj["data"] = {k: base64.b64encode(v.encode()).decode()
                           for k, v in obj.pop("stringData", {}).items()}
            kind = kube.KINDS[obj["kind"]]
            if kind.path(obj["metadata"]["namespace"], obj["metadata"]["name"]) in self.objects:
                return 409, {"message": "exists"}
            return 201, self.put(kind, obj)
        if method == "PATCH" and content_type == "application/apply-patch+yaml":
            obj = copy.deepcopy(body)
            kind = kube.KINDS[obj["kind"]]
            if kind is kube.DEPLOYMENT:
                obj["status"] = {}
            return 200, self.put(kind, obj)
        if method == "PATCH" and path.endswith("/status"):
            target = self.objects[path.removesuffix("/status")]
            target.setdefault("status", {}).update(body["status"])
            target["metadata"]["resourceVersion"] = str(next(self.versions))
            return 200, copy.deepcopy(target)
        raise AssertionError(f"unexpected {method} {path}")


def _monitor(name: str, interval: str = "30s") -> dict[str, Any]:
    return {"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}",
                         "generation": 1},
            "spec": {"interval": interval,
                     "database": {"host": "db.example", "dbname": name,
                                  "credentialsSecret": {"name": "db"}}}}


def _world(*names: str) -> tuple[FakeApi, reconcile.Context, prometheus_client.CollectorRegistry]:
    api = FakeApi()
    api.put(kube.SECRET, {"apiVersion": "v1", "kind": "Secret",
                          "metadata": {"name": "db", "namespace": NS},
                          "data": {"username": "dQ==", "password": "cA=="}})
    for name in names:
        api.put(kube.MONITOR, _monitor(name))
    registry = prometheus_client.CollectorRegistry()
    ctx = reconcile.Context(settings=config.from_env({}), api=api,
                            metrics=metrics.OperatorMetrics(registry))
    return api, ctx, registry


def _lists(api: FakeApi) -> int:
    return sum(1 for m, p in api.calls if m == "GET" and p.endswith("/deployments"))


def _sample(registry: prometheus_client.CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_status_reconciles_read_the_watched_deployments_not_a_listing() -> None:
    api, ctx, registry = _world("a")
    assert await reconcile.converge(ctx, NS, "a", repair=True, handler="spec") is None
    assert set(ctx.deployments[(NS, "a")]) == {"collector", "analyser", "executor", "nats"}
    assert _lists(api) == 0, "the apply answers fill the cache"
    repair_requests = len(api.calls)

    api.calls.clear()
    await reconcile.converge(ctx, NS, "a", repair=False, handler="child-event")
    assert _lists(api) == 0
    assert [m for m, _ in api.calls] == ["GET", "GET"], "the monitor and its database Secret"

    # What each reconcile cost, by what started it.
    assert _sample(registry, "startupmonkey_operator_handler_reconcile_api_requests_sum",
                   handler="spec") == repair_requests
    assert _sample(registry, "startupmonkey_operator_handler_reconcile_api_requests_sum",
                   handler="child-event") == 2
    assert _sample(registry, "startupmonkey_operator_handler_reconcile_duration_seconds_count",
                   handler="spec") == 1

    # A new process: one listing the first time, then the cache.
    fresh = reconcile.Context(settings=ctx.settings, api=api)
    api.calls.clear()
    await reconcile.converge(fresh, NS, "a", repair=False)
    await reconcile.converge(fresh, NS, "a", repair=False)
    assert _lists(api) == 1
    assert set(fresh.deployments[(NS, "a")]) == {"collector", "analyser", "executor", "nats"}


async def test_the_watch_keeps_the_cache_and_echoes_of_our_applies_change_nothing() -> None:
    api, ctx, _ = _world("a")
    await reconcile.converge(ctx, NS, "a", repair=True)
    path = kube.DEPLOYMENT.path(NS, "a-executor")
    echo = copy.deepcopy(api.objects[path])
    assert reconcile.deployment_seen(ctx, echo, deleted=False) is False, "our own apply"

    older = copy.deepcopy(echo)
    older["metadata"]["resourceVersion"] = "1"
    older["status"] = {"availableReplicas": 1}
    assert reconcile.deployment_seen(ctx, older, deleted=False) is False, "out of order"

    available = copy.deepcopy(echo)
    available["metadata"]["resourceVersion"] = str(next(api.versions))
    available["status"] = {"observedGeneration": 1, "availableReplicas": 1, "conditions": [
        {"type": "Available", "status": "True"}]}
    assert reconcile.deployment_seen(ctx, available, deleted=False) is True
    assert ctx.deployments[(NS, "a")]["executor"]["status"]["availableReplicas"] == 1
    # A status computed now sees it without asking the API server for Deployments.
    api.objects[path] = available
    api.calls.clear()
    await reconcile.converge(ctx, NS, "a", repair=False)
    conds = {c["type"]: c for c in api.objects[kube.MONITOR.path(NS, "a")]["status"]
             ["conditions"]}
    assert conds["ExecutorAvailable"]["status"] == "True"
    assert _lists(api) == 0

    gone = copy.deepcopy(available)
    gone["metadata"]["resourceVersion"] = str(next(api.versions))
    assert reconcile.deployment_seen(ctx, gone, deleted=True) is True
    assert "executor" not in ctx.deployments[(NS, "a")]
    assert reconcile.deployment_seen(ctx, gone, deleted=True) is False, "already gone"

    other = _monitor("b")  # a monitor whose cache is not filled yet: it will list
    other_dep = copy.deepcopy(echo)
    other_dep["metadata"]["ownerReferences"][0]["name"] = "b"
    assert reconcile.deployment_seen(ctx, other_dep, deleted=False) is True
    assert (NS, other["metadata"]["name"]) not in ctx.deployments


async def test_status_triggers_coalesce_while_one_waits_for_the_lock() -> None:
    api, ctx, registry = _world("a")
    await reconcile.converge(ctx, NS, "a", repair=True)
    api.calls.clear()
    async with ctx.locks[(NS, "a")]:  # a reconcile in progress
        first = asyncio.create_task(reconcile.converge(ctx, NS, "a", repair=False,
                                                       handler="child-event"))
        await asyncio.sleep(0)
        for _ in range(5):  # four more Deployment events, an executor report: all covered
            await reconcile.converge(ctx, NS, "a", repair=False, handler="child-event")
        await reconcile.converge(ctx, NS, "a", repair=False, handler="monitor-event")
        assert not api.calls, "nothing ran while the lock was held"
    await first
    assert [m for m, _ in api.calls] == ["GET", "GET"], "one status reconcile in all"
    assert _sample(registry, "startupmonkey_operator_reconciles_coalesced_total",
                   handler="child-event") == 5
    assert _sample(registry, "startupmonkey_operator_reconciles_coalesced_total",
                   handler="monitor-event") == 1
    assert not ctx.waiting, "no counts left behind"

    # A repair is never skipped: it may be the one that re-creates a deleted child.
    api.calls.clear()
    async with ctx.locks[(NS, "a")]:
        status_task = asyncio.create_task(reconcile.converge(ctx, NS, "a", repair=False))
        await asyncio.sleep(0)
        repair = asyncio.create_task(reconcile.converge(ctx, NS, "a", repair=True))
        await asyncio.sleep(0)
    await asyncio.gather(status_task, repair)
    assert any(m == "PATCH" for m, _ in api.calls), "the repair applied"


async def test_a_healthy_monitor_is_not_polled_a_report_and_a_missing_secret_are() -> None:
    api, ctx, _ = _world("a", "b")
    await reconcile.converge(ctx, NS, "a", repair=True)
    assert (NS, "a") not in ctx.due, "nothing changes with time alone: no polling"

    # The executor reported 10 s ago; interval 30 s: stale after max(10 x 30 s, 300 s).
    checked = kubetime.utcnow() - datetime.timedelta(seconds=10)
    body = api.objects[kube.MONITOR.path(NS, "a")]
    body["status"]["database"] = {"reachable": True, "checkedAt": kubetime.format(checked)}
    await reconcile.converge(ctx, NS, "a", repair=False)
    assert 285 < ctx.due[(NS, "a")] - _now() <= 300 + status.STALE_MARGIN

    # A missing Secret: re-read every statusInterval (Secrets are not watched).
    del api.objects[kube.SECRET.path(NS, "db")]
    await reconcile.converge(ctx, NS, "b", repair=True)
    interval = float(config.from_env({}).watching.status_interval.rstrip("s"))
    assert ctx.due[(NS, "b")] - _now() == pytest.approx(interval, abs=1)
    assert (NS, "b") in ctx.rechecking

    # The clock runs what is due, and only that; until its reconcile reschedules it, it is
    # due again a statusInterval later (a failed reconcile is retried).
    ctx.due[(NS, "b")] = _now() - 1
    now = _now()
    assert reconcile.due_now(ctx, now) == [(NS, "b")]
    assert ctx.due[(NS, "b")] == now + interval and (NS, "a") in ctx.due
    ctx.forget((NS, "a"))
    assert (NS, "a") not in ctx.due and (NS, "a") not in ctx.deployments


class FakeTime:
    """A clock of our own for the status clock (``Context.clock``) and the status's
    ``now`` (kubetime.utcnow): moved forward at once instead of waiting real seconds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, ctx: reconcile.Context) -> None:
        self.offset = 0.0
        self.ctx = ctx
        start, wall = time.monotonic(), kubetime.utcnow()
        self.monotonic = lambda: start + self.offset
        monkeypatch.setattr(kubetime, "utcnow",
                            lambda: wall + datetime.timedelta(seconds=self.offset))
        ctx.clock = self.monotonic

    def advance(self, seconds: float) -> None:
        self.offset += seconds
        self.ctx.due_changed.set()  # the clock sleeps on real time: wake it to look again


async def _eventually(check: Callable[[], bool], what: str) -> None:
    await eventually(check, timeout=5, interval=0.01, what=what)


def _reasons(api: FakeApi, name: str) -> dict[str, str]:
    return {c["type"]: c["reason"] for c in
            api.objects[kube.MONITOR.path(NS, name)].get("status", {}).get("conditions", [])}


async def _report(api: FakeApi, ctx: reconcile.Context, name: str, age: float) -> None:
    """The executor reported ``age`` seconds ago (interval 30 s: stale after 300 s)."""
    checked = kubetime.utcnow() - datetime.timedelta(seconds=age)
    api.objects[kube.MONITOR.path(NS, name)]["status"]["database"] = {
        "reachable": True, "checkedAt": kubetime.format(checked)}
    await reconcile.converge(ctx, NS, name, repair=False)


@contextlib.asynccontextmanager
async def _running_clock(ctx: reconcile.Context) -> AsyncIterator[asyncio.Task[None]]:
    clock = asyncio.create_task(reconcile.run_clock(ctx))
    try:
        yield clock
    finally:
        clock.cancel()
        await asyncio.gather(clock, return_exceptions=True)


async def test_the_clock_recomputes_a_due_status_and_marks_a_report_stale(
        monkeypatch: pytest.MonkeyPatch) -> None:
    api, ctx, _ = _world("a")
    fake = FakeTime(monkeypatch, ctx)
    await reconcile.converge(ctx, NS, "a", repair=True)
    await _report(api, ctx, "a", age=10)
    assert _reasons(api, "a")["DatabaseReachable"] == "Reachable"
    assert ctx.due[(NS, "a")] - fake.monotonic() == pytest.approx(291, abs=1)
    async with _running_clock(ctx):
        fake.advance(280)  # not due yet: nothing runs
        await asyncio.sleep(0)
        await _eventually(lambda: not ctx.due_changed.is_set(), "the clock looked again")
        assert _reasons(api, "a")["DatabaseReachable"] == "Reachable"
        fake.advance(20)
        await _eventually(lambda: (NS, "a") not in ctx.due, "the due status was recomputed")
    assert _reasons(api, "a")["DatabaseReachable"] == "Stale"
    assert (NS, "a") not in ctx.due, "stale: only a new report changes it"


async def test_a_failed_clock_reconcile_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    api, ctx, _ = _world("a")
    fake = FakeTime(monkeypatch, ctx)
    await reconcile.converge(ctx, NS, "a", repair=True)
    await _report(api, ctx, "a", age=10)
    real = api._request
    failures = {"left": 1}

    def flaky(method: str, path: str, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        if failures["left"] and method == "GET" and "databasemonitors" in path:
            failures["left"] -= 1
            return 500, {"message": "etcd blip"}
        return real(method, path, *args, **kwargs)

    monkeypatch.setattr(api, "_request", flaky)
    interval = reconcile._status_interval(ctx)
    async with _running_clock(ctx):
        fake.advance(300)
        await _eventually(lambda: not failures["left"], "the clock reconcile ran (and failed)")
        await _eventually(lambda: (NS, "a") in ctx.due and
                     ctx.due[(NS, "a")] - fake.monotonic() == pytest.approx(interval),
                     "retry scheduled one statusInterval later")
        assert _reasons(api, "a")["DatabaseReachable"] == "Reachable"
        fake.advance(interval)
        await _eventually(lambda: _reasons(api, "a")["DatabaseReachable"] == "Stale",
                     "the retry marked the report stale")


async def test_one_blocked_monitor_holds_up_no_other_on_the_clock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    api, ctx, _ = _world("a", "b")
    fake = FakeTime(monkeypatch, ctx)
    for name in "ab":
        await reconcile.converge(ctx, NS, name, repair=True)
        await _report(api, ctx, name, age=10)
    held = ctx.locks[(NS, "a")]
    await held.acquire()  # a slow repair of "a" (an apply timing out)
    try:
        async with _running_clock(ctx):
            ctx.due[(NS, "a")] = fake.monotonic()  # "a" due first, then "b"
            fake.advance(300)
            await _eventually(lambda: _reasons(api, "b")["DatabaseReachable"] == "Stale",
                         "b recomputed while a waits for its lock")
            assert _reasons(api, "a")["DatabaseReachable"] == "Reachable"
            fake.advance(reconcile._status_interval(ctx))  # "a" due again: not started twice
            await _eventually(lambda: not ctx.due_changed.is_set(), "the clock looked again")
            assert ctx.waiting[(NS, "a")] == 1
            held.release()
            await _eventually(lambda: _reasons(api, "a")["DatabaseReachable"] == "Stale",
                         "a recomputed once its lock is free")
    finally:
        if held.locked():
            held.release()


async def test_a_deployment_event_during_the_first_listing_is_kept() -> None:
    api, ctx, _ = _world("a")
    await reconcile.converge(ctx, NS, "a", repair=True)
    fresh = reconcile.Context(settings=ctx.settings, api=api)  # a new process
    path = kube.DEPLOYMENT.path(NS, "a-executor")
    snapshot = copy.deepcopy(api.objects)  # what the listing answers: taken before the event
    listed = asyncio.Event()
    answer = asyncio.Event()
    real_list = api.list

    async def slow_list(kind: kube.Kind, namespace: str, selector: str) -> Any:
        now, api.objects = api.objects, snapshot
        try:
            items = await real_list(kind, namespace, selector)
        finally:
            api.objects = now
        listed.set()
        await answer.wait()  # the answer is on its way while the watch reports a change
        return items

    api.list = slow_list  # type: ignore[method-assign]
    task = asyncio.create_task(reconcile.converge(fresh, NS, "a", repair=False))
    await listed.wait()
    available = copy.deepcopy(api.objects[path])
    available["metadata"]["resourceVersion"] = str(next(api.versions))
    available["status"] = {"observedGeneration": 1, "availableReplicas": 1, "conditions": [
        {"type": "Available", "status": "True"}]}
    api.objects[path] = available
    reconcile.deployment_seen(fresh, available, deleted=False)
    gone = copy.deepcopy(api.objects[kube.DEPLOYMENT.path(NS, "a-collector")])
    gone["metadata"]["resourceVersion"] = str(next(api.versions))
    del api.objects[kube.DEPLOYMENT.path(NS, "a-collector")]
    reconcile.deployment_seen(fresh, gone, deleted=True)
    answer.set()
    await task
    cache = fresh.deployments[(NS, "a")]
    assert cache["executor"]["status"].get("availableReplicas") == 1, "the later state wins"
    assert "collector" not in cache, "deleted after the listing's snapshot"
    assert _reasons(api, "a")["ExecutorAvailable"] == "Available"
    assert not fresh.listing


async def test_a_deployment_deleted_while_the_watch_was_down_is_forgotten_by_the_sweep() -> None:
    api, ctx, _ = _world("a")
    await reconcile.converge(ctx, NS, "a", repair=True)
    path = kube.DEPLOYMENT.path(NS, "a-executor")
    available = copy.deepcopy(api.objects[path])
    available["metadata"]["resourceVersion"] = str(next(api.versions))
    available["status"] = {"observedGeneration": 1, "availableReplicas": 1, "conditions": [
        {"type": "Available", "status": "True"}]}
    api.objects[path] = available
    reconcile.deployment_seen(ctx, available, deleted=False)
    # Being deleted (draining): the sweep applies nothing, so no apply answer replaces it.
    body = api.objects[kube.MONITOR.path(NS, "a")]
    body["metadata"]["deletionTimestamp"] = kubetime.format(kubetime.utcnow())
    del api.objects[path]  # during a watch gap: the re-listing just omits it
    await reconcile.converge(ctx, NS, "a", repair=False)
    assert _reasons(api, "a")["ExecutorAvailable"] == "Available", "the cache is all we have"
    await reconcile.converge(ctx, NS, "a", repair=True, handler="resync")
    assert _reasons(api, "a")["ExecutorAvailable"] == "DeploymentNotFound"
    assert "executor" not in ctx.deployments[(NS, "a")]


async def test_a_monitor_listed_again_after_a_watch_gap_is_compared() -> None:
    from startupmonkey.operator import handlers

    api, ctx, _ = _world("a")
    memo = kopf.Memo(context=ctx)
    body = api.objects[kube.MONITOR.path(NS, "a")]
    await handlers.monitor_event({"type": None, "object": body}, body, memo)  # start listing
    assert not api.calls, "the first listing: kopf's resume handler reconciles it"
    await reconcile.converge(ctx, NS, "a", repair=True, handler="spec")
    await _report(api, ctx, "a", age=0)
    event = copy.deepcopy(body)
    await handlers.monitor_event({"type": "MODIFIED", "object": event}, event, memo)
    # A watch gap (410), kopf lists again: the report changed meanwhile, its event has no type.
    body["status"]["database"] = {"reachable": False, "lastError": "connection refused",
                                 "checkedAt": kubetime.format(kubetime.utcnow())}
    event = copy.deepcopy(body)
    api.calls.clear()
    await handlers.monitor_event({"type": None, "object": event}, event, memo)
    assert _reasons(api, "a")["DatabaseReachable"] == "Unreachable"
    api.calls.clear()
    event = copy.deepcopy(api.objects[kube.MONITOR.path(NS, "a")])
    await handlers.monitor_event({"type": None, "object": event}, event, memo)
    assert not api.calls, "listed again unchanged: nothing to do"


async def test_a_gone_monitor_leaves_no_lock_behind() -> None:
    api, ctx, _ = _world("a")
    ctx.seen[(NS, "a")] = ""
    await reconcile.converge(ctx, NS, "a", repair=True)
    assert (NS, "a") in ctx.locks, "a known monitor keeps its lock"
    del api.objects[kube.MONITOR.path(NS, "a")]
    await reconcile.converge(ctx, NS, "a", repair=False, handler="clock")
    assert (NS, "a") not in ctx.locks and (NS, "a") not in ctx.seen
    assert not ctx.lock_users and not ctx.waiting

    # Forgotten while another waits for the lock: the lock stays until the last one leaves.
    api.put(kube.MONITOR, _monitor("a"))
    ctx.seen[(NS, "a")] = ""
    lock = ctx.locks[(NS, "a")]
    await lock.acquire()
    waiter = asyncio.create_task(reconcile.converge(ctx, NS, "a", repair=True))
    await _eventually(lambda: ctx.lock_users[(NS, "a")] == 1, "the repair waits for the lock")
    ctx.forget((NS, "a"))
    assert ctx.locks.get((NS, "a")) is lock, "a waiter holds it"
    lock.release()
    await waiter
    assert (NS, "a") not in ctx.locks


def test_the_drift_repair_sweep_slows_down_instead_of_the_load_growing() -> None:
    assert reconcile.resync_period(300, 10) == 300
    assert reconcile.resync_period(300, 300) == 300
    assert reconcile.resync_period(300, 1000) == 1000 / reconcile.RESYNC_MAX_PER_SECOND
    assert reconcile.resync_period(3, 1) == 3


async def test_the_sweep_repairs_every_known_monitor_in_turn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, ctx, _ = _world()
    ctx = reconcile.Context(settings=config.from_env(
        {"STARTUPMONKEY_WATCHING_RESYNC_INTERVAL": "1s"}), api=ctx.api)
    ctx.seen.update({(NS, "a"): "", (NS, "b"): ""})
    done: list[tuple[str, bool, str]] = []

    async def converge(ctx: reconcile.Context, namespace: str, name: str, *, repair: bool,
                       handler: str) -> None:
        done.append((name, repair, handler))
        if name == "a":
            raise RuntimeError("one failure does not stop the sweep")

    monkeypatch.setattr(reconcile, "converge", converge)
    sweep = asyncio.create_task(reconcile.run_resync(ctx))
    try:
        for _ in range(100):  # up to 5 s; 0.5 s apart (1 s over 2 monitors)
            if len(done) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        sweep.cancel()
        await asyncio.gather(sweep, return_exceptions=True)
    assert done[:2] == [("a", True, "resync"), ("b", True, "resync")]


def test_handler_labels_stay_bounded() -> None:
    registry = prometheus_client.CollectorRegistry()
    numbers = metrics.OperatorMetrics(registry)
    numbers.reconciled(False, "ok", 0.01, "prod/shop", 3)  # never a monitor's name
    numbers.reconciled(True, "ok", 0.5, "resync", 21)
    numbers.skipped("child-event")
    assert _sample(registry, "startupmonkey_operator_handler_reconcile_api_requests_count",
                   handler="other") == 1
    assert _sample(registry, "startupmonkey_operator_handler_reconcile_api_requests_sum",
                   handler="resync") == 21
    assert _sample(registry, "startupmonkey_operator_reconciles_coalesced_total",
                   handler="child-event") == 1
    exported = prometheus_client.generate_latest(registry).decode()
    assert "prod/shop" not in exported
    handlers = {line.split('handler="')[1].split('"')[0] for line in exported.splitlines()
                if 'handler="' in line}
    assert handlers <= {*metrics.HANDLERS, metrics.OTHER}


def _now() -> float:
    return time.monotonic()


def test_fixtures_serialise() -> None:  # the fake's objects are plain JSON, as the API's are
    api, _, _ = _world("a")
    json.dumps(api.objects)
    assert monitor.parse(api.objects[kube.MONITOR.path(NS, "a")]).spec is not None


async def test_a_new_monitor_costs_no_reads_of_secrets_that_cannot_exist_yet() -> None:
    api, ctx, _ = _world("a")
    await reconcile.converge(ctx, NS, "a", repair=True)
    missing = [p for m, p in api.calls if m == "GET" and "/secrets/" in p and
               p not in api.objects]
    assert not missing, f"404s asked for: {missing}"
    assert kube.SECRET.path(NS, "a-nats") in api.objects

    # Reconciled once (observedGeneration set): a resync reads them, and keeps them.
    before = copy.deepcopy(api.objects[kube.SECRET.path(NS, "a-nats")]["data"])
    api.calls.clear()
    await reconcile.converge(ctx, NS, "a", repair=True, handler="resync")
    assert not any(m == "POST" for m, _ in api.calls)
    assert api.objects[kube.SECRET.path(NS, "a-nats")]["data"] == before


async def test_monitor_events_reconcile_only_what_changed() -> None:
    from startupmonkey.operator import handlers

    api, ctx, registry = _world("a")
    memo = kopf.Memo(context=ctx)
    body = api.objects[kube.MONITOR.path(NS, "a")]
    await handlers.monitor_event({"type": "ADDED", "object": body}, body, memo)
    assert not api.calls, "a new monitor: kopf's create handler reconciles it"
    await reconcile.converge(ctx, NS, "a", repair=True, handler="spec")
    body = copy.deepcopy(api.objects[kube.MONITOR.path(NS, "a")])
    api.calls.clear()
    await handlers.monitor_event({"type": "MODIFIED", "object": body}, body, memo)
    assert not api.calls, "the echo of our own status patch changes nothing"
    body["status"]["database"] = {"reachable": True,
                                  "checkedAt": kubetime.format(kubetime.utcnow())}
    await handlers.monitor_event({"type": "MODIFIED", "object": body}, body, memo)
    assert api.calls, "the executor's report moves the conditions"
    assert _sample(registry, "startupmonkey_operator_handler_reconcile_api_requests_count",
                   handler="monitor-event") == 1
