"""The web dashboard's cost per page with 100, 1,000 and 3,000 Remediations (issue 25).

Issue 25's aim: "The dashboard holds no state of its own; with 1,000 remediations its pages
render in under 200 ms here (a benchmark figure, not a test)." The dashboard keeps nothing
between requests, so every page starts from the objects as the Kubernetes API server sends
them (plain dicts) and ends with the HTML. No cluster is needed: the objects are made here,
realistic ones (5 monitors in 3 namespaces, every detector of ``DetectorId`` with one of the
actions it allows, every ``RemediationState``, a history leading to the state, evidence,
before/after numbers and a keep-or-revert decision where the executor would have written
them, ``status.summary`` written on most and missing on some, as an executor from before
issue 21.3 left them, so the page computes it), spread over 30 days.

Measured, in milliseconds, median and min-max over the repetitions (20; ``--quick``: 5, after
two warm-up renders, so the templates are compiled once as in a running dashboard), as wall
time (``ms``) and as this process's CPU time (``cpu_ms``, ``time.process_time``: on a busy
machine the wall time counts the time other processes held the CPU, the CPU time does not;
for ``http`` it includes the client's side, in the same process). The garbage collector
stays on, as in the dashboard: its full collections over the thousands of parsed models are
part of the cost, and why the list's cost grows faster than the number of objects:

1. ``render`` (in-process, the functions the handlers call, no HTTP):
   - ``list``: the remediations list unfiltered (its first page, ``views.PAGE_SIZE`` rows), from
     the list of objects to the final HTML string: ``views.parse_all`` + ``views.list_page`` +
     ``views.choices`` + ``server.page``; also split into ``parse_ms``, ``rows_ms`` (filter,
     sort, the page's rows, and choices) and ``render_ms`` (the template);
   - ``list_filtered``: the same with one monitor and one state selected;
   - ``detail``: one remediation's page (``parse_remediation`` + ``detail`` + template), each
     repetition another object (a kept index with its chart among them);
   - ``overview``: the monitors page with 5 DatabaseMonitors (their status counts add up to the
     number of Remediations) and each one's 5 latest Remediations: it lists and parses every
     Remediation (``views.parse_all`` + ``views.latest_by_monitor``), so its cost grows with
     them, but it builds only the rows it shows.
2. ``http``: the same four pages through the real aiohttp application
   (``server.make_app``, its ``guard`` middleware, the worker-thread hop of ``_call``), served
   by ``aiohttp.test_utils.TestServer`` on 127.0.0.1 and fetched over loopback HTTP by a
   ``TestClient`` that logged in first with the login key like a browser (``/login?key=``,
   then the session cookie): from sending the request to having read the whole body.
   The application's backend (``backend.Backend``) is one that returns the objects made
   here.

Not measured: the Kubernetes API server's own time to list (or get) the objects and to send
them, and the kubernetes client's JSON decoding of them (``kube.list_objects`` loads the
kubeconfig and lists through ``CustomObjectsApi`` per request; with 1,000 objects of ~3 KB
that is ~3 MB of JSON to send and decode on every list page); the browser's time to lay the
page out; approve / reject / rollback (a PATCH through the API server). The aim is judged on
the ``http`` wall-time figures (what the dashboard itself adds to a page), worst page's
median at 1,000 (``dashboard_ms_per_page_1000_remediations``); the in-process render's wall
and CPU medians are given beside it.

    .venv/bin/python bench/dashboard_render.py --quick    # 100 and 1,000, 5 repetitions
    .venv/bin/python bench/dashboard_render.py            # 100, 1,000 and 3,000, 20 repetitions

Writes ``bench/results/dashboard_render.json`` (``dashboard_render.quick.json`` with
``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from aiohttp import test_utils

from startupmonkey.dashboard import backend, server, views
from startupmonkey.models import monitor, remediation
from startupmonkey.models.enums import (
    ACTION_RISK,
    ALLOWED_ACTIONS,
    DEFAULT_ACTION,
    ActionId,
    DetectorId,
    RemediationState,
)

AIM_MS = 200.0
SEED = 25
NOW = datetime.datetime(2026, 12, 6, 20, 0, tzinfo=datetime.UTC)
#: (namespace, monitor name, database): 5 monitors in 3 namespaces.
MONITORS = (("shop", "shop", "orders"), ("shop", "shop-replica", "orders"),
            ("billing", "billing", "ledger"), ("billing", "billing-archive", "ledger_2025"),
            ("analytics", "events", "events"))
TABLES = ("orders", "order_items", "customers", "payments", "invoices", "events",
          "sessions", "line_items", "audit_log", "products")
COLUMNS = ("customer_id", "created_at", "status", "account_id", "order_id", "email")
#: A history that leads to each state (the last step is the state itself).
PATHS: dict[RemediationState, tuple[RemediationState, ...]] = {
    RemediationState.PROPOSED: (),
    RemediationState.PENDING_APPROVAL: (RemediationState.PENDING_APPROVAL,),
    RemediationState.APPROVED: (RemediationState.PENDING_APPROVAL, RemediationState.APPROVED),
    RemediationState.RUNNING: (RemediationState.APPROVED, RemediationState.RUNNING),
    RemediationState.VERIFYING: (RemediationState.APPROVED, RemediationState.RUNNING,
                                 RemediationState.VERIFYING),
    RemediationState.SUCCEEDED: (RemediationState.APPROVED, RemediationState.RUNNING,
                                 RemediationState.VERIFYING, RemediationState.SUCCEEDED),
    RemediationState.FAILED: (RemediationState.APPROVED, RemediationState.RUNNING,
                              RemediationState.FAILED),
    RemediationState.ROLLED_BACK: (RemediationState.APPROVED, RemediationState.RUNNING,
                                   RemediationState.VERIFYING, RemediationState.ROLLED_BACK),
    RemediationState.REJECTED: (RemediationState.PENDING_APPROVAL, RemediationState.REJECTED),
    RemediationState.EXPIRED: (RemediationState.PENDING_APPROVAL, RemediationState.EXPIRED),
    RemediationState.RECOMMENDED: (RemediationState.RECOMMENDED,),
    RemediationState.OBSERVED: (RemediationState.OBSERVED,),
}
DONE_STATES = (RemediationState.SUCCEEDED, RemediationState.ROLLED_BACK,
               RemediationState.VERIFYING, RemediationState.FAILED)
FILTER = {"monitor": "shop", "state": RemediationState.SUCCEEDED.value}


def _stamp(at: datetime.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _plan(action: ActionId, table: str, column: str, pid: int) -> tuple[dict[str, Any], str,
                                                                       str | None]:
    """Target, SQL and rollback SQL of ``action``."""
    index = f"{table}_{column}_idx"
    if action is ActionId.CREATE_INDEX:
        return ({"schema": "public", "table": table, "columns": [column]},
                f'CREATE INDEX CONCURRENTLY "{index}" ON "public"."{table}" ("{column}")',
                f'DROP INDEX CONCURRENTLY IF EXISTS "public"."{index}"')
    if action in (ActionId.VACUUM, ActionId.ANALYZE):
        return ({"schema": "public", "table": table},
                f'{action.value.upper()} (VERBOSE) "public"."{table}"', None)
    if action in (ActionId.CANCEL_QUERY, ActionId.TERMINATE_SESSION):
        function = "pg_cancel_backend" if action is ActionId.CANCEL_QUERY \
            else "pg_terminate_backend"
        return ({"pid": pid, "backendStart": "2026-12-06T18:00:00Z"},
                f"SELECT {function}({pid})", None)
    if action in (ActionId.DROP_INDEX, ActionId.DROP_INVALID_INDEX):
        return ({"schema": "public", "table": table, "index": index},
                f'DROP INDEX CONCURRENTLY IF EXISTS "public"."{index}"',
                f'CREATE INDEX CONCURRENTLY "{index}" ON "public"."{table}" ("{column}")')
    if action is ActionId.REINDEX:
        return ({"schema": "public", "table": table, "index": index},
                f'REINDEX INDEX CONCURRENTLY "public"."{index}"', None)
    return {"schema": "public", "table": table}, "", None  # advice: nothing to run


def _evidence(rng: random.Random, detector: DetectorId, table: str) -> dict[str, str]:
    evidence = {"table": f"public.{table}", "interval_seconds": "30",
                "detected_at": _stamp(NOW - datetime.timedelta(minutes=rng.randint(1, 999)))}
    if detector in (DetectorId.MISSING_INDEX, DetectorId.SLOW_STATEMENT):
        evidence.update(calls=str(rng.randint(50, 90_000)),
                        mean_ms=f"{rng.uniform(2, 900):.2f}",
                        seq_scans_per_minute=str(rng.randint(1, 400)),
                        query=f"SELECT * FROM public.{table} WHERE customer_id = $1 "
                              "ORDER BY created_at DESC LIMIT $2")
    elif detector in (DetectorId.DEAD_TUPLES, DetectorId.STALE_STATISTICS,
                      DetectorId.VACUUM_BLOCKED):
        evidence.update(n_dead_tup=str(rng.randint(10_000, 9_000_000)),
                        n_live_tup=str(rng.randint(10_000, 90_000_000)),
                        n_mod_since_analyze=str(rng.randint(1_000, 900_000)),
                        last_autovacuum="2026-12-01T03:14:00Z")
    elif detector in (DetectorId.LONG_RUNNING_QUERY, DetectorId.IDLE_IN_TRANSACTION,
                      DetectorId.BLOCKING_LOCK):
        evidence.update(duration_seconds=str(rng.randint(60, 7200)),
                        application_name="api-worker", usename="app",
                        blocked_sessions=str(rng.randint(0, 40)),
                        query="UPDATE public.orders SET status = $1 WHERE id = $2")
    else:
        evidence.update(value=f"{rng.uniform(0, 1):.4f}", threshold="0.90",
                        index_size_bytes=str(rng.randint(10**5, 10**10)))
    return evidence


def remediation_object(number: int, rng: random.Random) -> dict[str, Any]:
    """The ``number``-th Remediation as the API server returns it (camelCase dict)."""
    namespace, monitor_name, _ = MONITORS[number % len(MONITORS)]
    detectors = list(DetectorId)
    detector = detectors[rng.randrange(len(detectors))]
    allowed = sorted(ALLOWED_ACTIONS[detector] - {ActionId.ADVICE})
    action = DEFAULT_ACTION[detector] if rng.random() < 0.85 or not allowed \
        else rng.choice(allowed)
    if action is ActionId.ADVICE:
        state = rng.choice((RemediationState.RECOMMENDED, RemediationState.OBSERVED))
    else:
        state = rng.choice([s for s in RemediationState if s is not RemediationState.RECOMMENDED])
    table, column = rng.choice(TABLES), rng.choice(COLUMNS)
    target, sql, rollback_sql = _plan(action, table, column, rng.randint(100, 99_999))
    key = f"{namespace}/{monitor_name}/{detector.value}/public.{table}.{column}"
    detection_id = f"{number:08x}{rng.getrandbits(96):024x}"
    created = NOW - datetime.timedelta(seconds=rng.randint(0, 30 * 86_400))
    history = []
    at = created
    for step in PATHS[state]:
        at += datetime.timedelta(seconds=rng.randint(1, 900))
        history.append({"state": step.value, "time": _stamp(at),
                        "message": f"{step.value.lower()} by executor-{rng.randint(0, 2)}"})
    status: dict[str, Any] = {"state": state.value, "history": history,
                              "message": history[-1]["message"] if history else "",
                              "attempts": 1 if state in DONE_STATES else 0}
    if state in DONE_STATES and sql:
        status["executedSql"] = [sql]
        if action is ActionId.CREATE_INDEX:
            before, after = rng.uniform(5, 900), rng.uniform(0.05, 5)
            status["before"] = {"mean_ms": round(before, 3), "calls": rng.randint(100, 9000)}
            status["after"] = {"mean_ms": round(after, 3), "calls": rng.randint(100, 9000),
                               "after_window_seconds": 600.0, "idx_scan": rng.randint(1, 900)}
            status["decision"] = {"keep": state is not RemediationState.ROLLED_BACK,
                                  "reason": "mean time per call fell", "beforeMeanMs": before,
                                  "afterMeanMs": after, "beforeCalls": 320, "afterCalls": 404,
                                  "improvement": round(1 - after / before, 4)}
        elif action in (ActionId.VACUUM, ActionId.ANALYZE):
            status["before"] = {"n_dead_tup": float(rng.randint(10**4, 10**7)),
                                "table_bytes": float(rng.randint(10**6, 10**10))}
            status["after"] = {"n_dead_tup": float(rng.randint(0, 1000)),
                               "table_bytes": status["before"]["table_bytes"],
                               "duration_seconds": round(rng.uniform(0.1, 300), 2)}
        else:
            status["before"] = {"duration_seconds": float(rng.randint(60, 7200))}
            status["after"] = {}
        status["executor"] = f"startupmonkey-executor-{rng.randint(0, 2)}"
    if state is not RemediationState.PROPOSED and rng.random() < 0.9:
        # An executor since issue 21.3 writes the words; older objects are summarised by the
        # page itself (summary.describe_object), which is the slower path.
        status["summary"] = f"{action.value} on public.{table}: {state.value.lower()}"
        if state is RemediationState.SUCCEEDED and action is ActionId.CREATE_INDEX:
            status["benefit"] = "1.2 s saved per hour (2,424 calls/h)"
    approved = state not in (RemediationState.PROPOSED, RemediationState.PENDING_APPROVAL,
                             RemediationState.REJECTED, RemediationState.EXPIRED,
                             RemediationState.RECOMMENDED, RemediationState.OBSERVED)
    annotations: dict[str, str] = {}
    if approved:
        status["approvedBy"] = "alice@example.com"
        annotations[remediation.ANNOTATION_APPROVED_BY] = "alice@example.com"
    spec = {"monitor": monitor_name, "detectionKey": key, "detectionId": detection_id,
            "detector": detector.value, "action": action.value,
            "riskClass": ACTION_RISK[action].value, "target": target, "sql": sql,
            "sqlHash": remediation.sql_hash(sql, rollback_sql),
            "evidence": _evidence(rng, detector, table),
            "summary": f"{detector.value.replace('_', ' ')} on public.{table}",
            "approved": approved}
    if rollback_sql:
        spec["rollbackSql"] = rollback_sql
    return {"apiVersion": f"{monitor.GROUP}/{monitor.VERSION}", "kind": "Remediation",
            "metadata": {"name": remediation.object_name(monitor_name, key, detection_id),
                         "namespace": namespace, "creationTimestamp": _stamp(created),
                         "resourceVersion": str(10_000 + number), "uid": f"uid-{number}",
                         "labels": {"startupmonkey.dev/monitor": monitor_name,
                                    "startupmonkey.dev/state": state.token},
                         "annotations": annotations},
            "spec": spec, "status": status}


def monitor_objects(remediations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The 5 DatabaseMonitors, their status counts made from ``remediations``."""
    out = []
    for index, (namespace, name, dbname) in enumerate(MONITORS):
        mine = [r for r in remediations if r["spec"]["monitor"] == name]
        by_state: dict[str, int] = {}
        for r in mine:
            by_state[r["status"]["state"]] = by_state.get(r["status"]["state"], 0) + 1
        database: dict[str, Any] = {"reachable": index != 3, "serverVersion": "15.8"}
        if index == 3:
            database["lastError"] = "connection refused"
        out.append({
            "apiVersion": f"{monitor.GROUP}/{monitor.VERSION}", "kind": "DatabaseMonitor",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "3"},
            "spec": {"database": {"host": f"{dbname}-db.{namespace}.svc", "dbname": dbname,
                                  "credentialsSecret": {"name": f"{name}-db"}},
                     "mode": ("observe", "approval", "auto")[index % 3], "interval": "30s"},
            "status": {"phase": "Ready", "database": database,
                       "remediations": {"byState": by_state,
                                        "pendingApproval": by_state.get("PendingApproval", 0),
                                        "lastAction": "vacuum public.orders",
                                        "lastActionTime": _stamp(NOW)}}})
    return out


def workload(count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``count`` Remediations and the 5 monitors, the same for a given count every run."""
    rng = random.Random(SEED * 100_000 + count)
    objects = [remediation_object(n, rng) for n in range(count)]
    return objects, monitor_objects(objects)


def detail_samples(objects: list[dict[str, Any]], wanted: int) -> list[dict[str, Any]]:
    """``wanted`` objects for the detail page: kept indexes with a chart first, then others."""
    charted = [o for o in objects if "decision" in o["status"]]
    rest = [o for o in objects if "decision" not in o["status"]]
    picked = (charted[:max(1, wanted // 4)] + rest)[:wanted]
    return picked or objects[:1]


# ---- in-process --------------------------------------------------------------------------


SETTINGS = server.Settings(namespace=None, port=8765)


def list_page(env: Any, objects: list[dict[str, Any]], query: dict[str, str],
              phases: dict[str, list[float]] | None = None) -> str:
    """The remediations list exactly as ``server.remediations`` makes it."""
    t0 = time.perf_counter()
    filters = views.Filters.parse(query)
    items, unreadable = views.parse_all(objects)
    t1 = time.perf_counter()
    shown, choices = views.list_page(items, filters), views.choices(items)
    t2 = time.perf_counter()
    html = server.page(env, "remediations.html", SETTINGS, title="Remediations",
                       filters=shown.filters, shown=shown, choices=choices, note="",
                       unreadable=unreadable)
    t3 = time.perf_counter()
    if phases is not None:
        phases["parse_ms"].append((t1 - t0) * 1000)
        phases["rows_ms"].append((t2 - t1) * 1000)
        phases["render_ms"].append((t3 - t2) * 1000)
    return html


def detail_page(env: Any, obj: dict[str, Any]) -> str:
    """One remediation's page exactly as ``server.one`` makes it."""
    shown = views.detail(views.parse_remediation(obj))
    return server.page(env, "remediation.html", SETTINGS, title=shown.item.name, d=shown,
                       error="", done="")


def overview_page(env: Any, monitors: list[dict[str, Any]],
                  objects: list[dict[str, Any]]) -> str:
    """The monitors page exactly as ``server.overview`` makes it."""
    cards = [views.monitor_card(obj) for obj in sorted(
        monitors, key=lambda o: (o["metadata"].get("namespace", ""),
                                 o["metadata"].get("name", "")))]
    items, skipped = views.parse_all(objects)
    return server.page(env, "overview.html", SETTINGS, title="Monitors", cards=cards, note="",
                       unreadable=[], latest=views.latest_by_monitor(items), latest_note="",
                       unreadable_remediations=len(skipped))


def timed(make: Callable[[int], str], repeats: int, warmup: int = 2) -> dict[str, Any]:
    """``make(i)`` ``repeats`` times after ``warmup`` calls: times (ms) and the page's size."""
    html = ""
    for i in range(warmup):
        html = make(i)
    times, cpu, sizes = [], [], []
    for i in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        html = make(i)
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
        sizes.append(len(html.encode()))
    return {"ms": common.summary(times, 2), "cpu_ms": common.summary(cpu, 2),
            "html_bytes": int(statistics.median(sizes))}


def measure_render(objects: list[dict[str, Any]], monitors: list[dict[str, Any]],
                   repeats: int) -> dict[str, Any]:
    env = server.environment()
    phases: dict[str, list[float]] = {"parse_ms": [], "rows_ms": [], "render_ms": []}
    out: dict[str, Any] = {}
    out["list"] = timed(lambda _: list_page(env, objects, {}), repeats)
    for _ in range(repeats):
        list_page(env, objects, {}, phases)
    out["list"]["phases"] = {k: common.summary(v, 2) for k, v in phases.items()}
    out["list_filtered"] = timed(lambda _: list_page(env, objects, FILTER), repeats)
    samples = detail_samples(objects, repeats)
    out["detail"] = timed(lambda i: detail_page(env, samples[i % len(samples)]), repeats)
    out["overview"] = timed(lambda _: overview_page(env, monitors, objects), repeats)
    return out


# ---- through aiohttp ---------------------------------------------------------------------


async def measure_http(objects: list[dict[str, Any]], monitors: list[dict[str, Any]],
                       repeats: int) -> dict[str, Any]:
    """The four pages through ``server.make_app`` over loopback HTTP, logged in first."""
    by_name = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}

    class Made:
        """The pages' backend: the objects made here, as the Kubernetes one returns them."""

        rights = "the objects made here"

        def list_objects(self, plural: str, namespace: str | None) -> backend.Listing:
            source = monitors if plural == monitor.PLURAL else objects
            return backend.Listing([o for o in source if namespace is None
                                    or o["metadata"]["namespace"] == namespace])

        def get_remediation(self, namespace: str, name: str, follow: bool = True
                            ) -> tuple[dict[str, Any], str]:
            return by_name[(namespace, name)], "1" if follow else ""

        def act(self, command: str, namespace: str, name: str, sql_hash: str | None,
                reason: str) -> None:
            raise backend.Failure(405, "not measured")

        def follower(self, plural: str, namespace: str | None, name: str, since: str,
                     deliver: Any) -> backend.Follower:
            raise backend.Failure(405, "not measured")

    settings = server.Settings(namespace=None)
    async with test_utils.TestServer(server.make_app(settings, Made()), host=server.LOOPBACK) \
            as test_server, test_utils.TestClient(test_server) as client:
        settings.port = test_server.port or 0
        login = await client.get(f"/login?key={settings.key}", allow_redirects=False)
        if login.status != 303:
            raise RuntimeError(f"login answered {login.status}, not 303")
        samples = detail_samples(objects, repeats)
        paths = {"list": lambda _: "/remediations",
                 "list_filtered": lambda _: "/remediations?" + "&".join(
                     f"{k}={v}" for k, v in FILTER.items()),
                 "detail": lambda i: views.remediation_url(
                     samples[i % len(samples)]["metadata"]["namespace"],
                     samples[i % len(samples)]["metadata"]["name"]),
                 "overview": lambda _: "/"}
        out: dict[str, Any] = {}
        for page_name, path in paths.items():
            times, cpu, sizes = [], [], []
            for i in range(-2, repeats):  # two warm-up requests
                started, cpu_started = time.perf_counter(), time.process_time()
                async with client.get(path(i)) as response:
                    body = await response.read()
                elapsed = (time.perf_counter() - started) * 1000
                cpu_used = (time.process_time() - cpu_started) * 1000
                if response.status != 200:
                    raise RuntimeError(f"{path(i)} answered {response.status}: "
                                       f"{body[:200]!r}")
                if i >= 0:
                    times.append(elapsed)
                    cpu.append(cpu_used)
                    sizes.append(len(body))
            out[page_name] = {"ms": common.summary(times, 2),
                              "cpu_ms": common.summary(cpu, 2),
                              "html_bytes": int(statistics.median(sizes))}
        return out


# ---- the run -----------------------------------------------------------------------------


def measure(sizes: tuple[int, ...], repeats: int) -> tuple[list[dict[str, Any]], list[dict]]:
    results: list[dict[str, Any]] = []
    not_measured: list[dict[str, str]] = []
    for size in sizes:
        print(f"{size} remediations...", file=sys.stderr, flush=True)
        objects, monitors = workload(size)
        row: dict[str, Any] = {
            "remediations": size, "monitors": len(monitors),
            "api_json_bytes": len(json.dumps({"items": objects}).encode()),
            "filtered_rows": len(list_filtered_rows(objects)),
            "render": measure_render(objects, monitors, repeats)}
        try:
            row["http"] = asyncio.run(measure_http(objects, monitors, repeats))
        except Exception as exc:  # a measurement: say what failed and keep the rest
            row["http"] = None
            not_measured.append({"what": f"http path with {size} remediations",
                                 "why": f"{type(exc).__name__}: {exc}"[:300]})
        results.append(row)
    return results, not_measured


def list_filtered_rows(objects: list[dict[str, Any]]) -> list[views.RemediationRow]:
    items, _ = views.parse_all(objects)
    return views.rows(items, views.Filters.parse(FILTER))


PAGES = ("list", "list_filtered", "detail", "overview")


def aims(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The worst page's median at 1,000 Remediations: through HTTP (the aim), and rendered
    in-process (what the handlers compute, without the server around them)."""
    at = next((r for r in results if r["remediations"] == 1000), None)

    def worst(kind: str, figure: str = "ms") -> float | None:
        if at is None or not at.get(kind):
            return None
        return max(at[kind][p][figure]["median"] for p in PAGES)

    http, render = worst("http"), worst("render")
    return {"dashboard_ms_per_page_1000_remediations": common.gap(
                http if http is not None else render, AIM_MS),
            "dashboard_render_ms_per_page_1000_remediations": common.gap(render, AIM_MS),
            "dashboard_render_cpu_ms_per_page_1000_remediations": common.gap(
                worst("render", "cpu_ms"), AIM_MS)}


def _print(results: list[dict[str, Any]]) -> None:
    print(f"{'remediations':>12} {'page':<14} {'render ms (min-max)':>24} {'cpu ms':>7} "
          f"{'http ms (min-max)':>24} {'cpu ms':>7} {'HTML KB':>8}")
    for row in results:
        for page_name in PAGES:
            render = row["render"][page_name]
            http = (row.get("http") or {}).get(page_name)

            def cell(figure: dict[str, Any] | None) -> str:
                if not figure:
                    return "-"
                ms = figure["ms"]
                return f"{ms['median']:.1f} ({ms['min']:.1f}-{ms['max']:.1f})"

            def cpu(figure: dict[str, Any] | None) -> str:
                return f"{figure['cpu_ms']['median']:.1f}" if figure else "-"

            print(f"{row['remediations']:>12} {page_name:<14} {cell(render):>24} "
                  f"{cpu(render):>7} {cell(http):>24} {cpu(http):>7} "
                  f"{render['html_bytes'] / 1024:>8.0f}")
        phases = row["render"]["list"]["phases"]
        print(f"{'':>12} {'  list split':<14} parse {phases['parse_ms']['median']:.1f} ms, "
              f"rows+choices {phases['rows_ms']['median']:.1f} ms, template "
              f"{phases['render_ms']['median']:.1f} ms; API JSON "
              f"{row['api_json_bytes'] / 2**20:.1f} MB; filtered rows {row['filtered_rows']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="100 and 1,000 remediations, 5 repetitions")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: bench/results/dashboard_render[.quick].json")
    args = parser.parse_args(argv)
    args.output = args.output or common.result_path("dashboard_render", args.quick)
    started = time.monotonic()
    sizes, repeats = ((100, 1000), 5) if args.quick else ((100, 1000, 3000), 20)
    results, not_measured = measure(sizes, repeats)
    not_measured.append({
        "what": "the Kubernetes API server's listing and the client's JSON decoding",
        "why": "the pages' backend returns objects made in the process; see api_json_bytes "
               "for what a list page would have the API server send and the client decode "
               "per request"})
    common.publish(
        "dashboard_render", quick=args.quick, started=started, output=args.output,
        results=results, printer=_print, machine_info=common.machine(),
        repetitions=repeats, filter=FILTER, aims=aims(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
