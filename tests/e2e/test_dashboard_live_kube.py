"""The dashboard's live pages on the real kube-apiserver (issue 25, "a live update without
reload"): each page names an event stream that follows a watch of what it shows, with the
user's own rights; the stream says ``changed`` when that changes, ``ended`` with ``stop`` for a
user who may not watch, and the watch lets go of the API server when the page goes away; at
most ``MAX_LIVE`` streams are open at once. Then in a real browser against a real executor: a
person approves a Remediation opened by a real problem (a session idle in a transaction), and
the page shows it reach Succeeded without a reload while the database changed."""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from startupmonkey.dashboard import server
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import remediation
from startupmonkey.models.enums import RemediationState
from tests.support import executor_helpers as helpers
from tests.support import kube_helpers
from tests.support.controlplane import ControlPlane
from tests.support.dashboard import (
    APPROVE,
    REPLACING,
    Screenshots,
    arrange,
    browser,
    chromium,
    click,
    dashboard,
    get,
    object_of,
    page_body,
)
from tests.support.eventually import eventually

pytestmark = pytest.mark.e2e
#: Longer than the dashboard's heartbeat, after which a page that went away is noticed.
NOTICED = server.HEARTBEAT_SECONDS * 2 + 10


def _live(page: str) -> str:
    found = re.search(r'<main data-live="([^"]+)">', page)
    assert found, "the page names no event stream"
    return html.unescape(found.group(1))


@contextlib.asynccontextmanager
async def _stream(session: aiohttp.ClientSession, url: str
                  ) -> AsyncIterator[aiohttp.ClientResponse]:
    """An open event stream (read with :func:`_next_event`); closed on leaving."""
    quiet = aiohttp.ClientTimeout(total=None, sock_read=NOTICED)
    async with session.get(url, timeout=quiet) as answer:
        assert answer.status == 200, await answer.text()
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        assert answer.headers["X-Frame-Options"] == "DENY"
        yield answer


async def _next_event(answer: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    """The next event on the stream (comments skipped): its name and data."""
    name = ""
    while True:
        line = (await answer.content.readline()).decode()
        assert line, "the stream ended"
        if line.startswith("event: "):
            name = line.removeprefix("event: ").strip()
        elif line.startswith("data: "):
            return name, json.loads(line.removeprefix("data: "))


async def _changed(answer: aiohttp.ClientResponse, name: str) -> None:
    """Read events until one says ``name`` changed (or the stream ended: a failure)."""
    while True:
        kind, data = await _next_event(answer)
        assert kind == "changed", (kind, data)
        if name in data["names"].split(","):
            return


def _api_connections(pid: int, port: int) -> int:
    """How many TCP connections process ``pid`` holds open to ``port`` on 127.0.0.1."""
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                sockets.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in sockets:
                    count += 1
    return count


async def test_each_page_is_told_when_what_it_shows_changes_and_lets_go_when_it_closes(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    users = await arrange(cp, namespace, tmp_path)
    page_of = f"/ns/{namespace}/remediations"
    with dashboard(users.as_approver, tmp_path / "approver", users.approver) as own:
        url = await own.started()
        pid = own.proc.pid
        async with browser() as session:
            await own.log_in(session)
            # Something else changes first: the page of shop-orders follows from the version
            # of a list read now, not from shop-orders' own (older) resourceVersion, which
            # can be older than the API server's watch history (a 410 at once, and again).
            cp.kubectl("annotate", "remediations.startupmonkey.dev", "shop-returns",
                       "-n", namespace, "example.com/before=1")
            own_version = int(object_of(cp, namespace, "shop-orders")["metadata"][
                "resourceVersion"])
            _, one = await get(session, f"{url}{page_of}/shop-orders")
            assert int(_live(one).split("remediations=")[1].split("&")[0]) > own_version
            _, listed = await get(session, url + "/remediations")
            _, overview = await get(session, url + "/")
            assert _live(one).startswith("/live?remediations=")
            assert _live(one).endswith(f"&namespace={namespace}&name=shop-orders")
            assert _live(listed).startswith("/live?remediations=")
            assert _live(overview).startswith("/live?databasemonitors=")
            assert "&remediations=" in _live(overview)
            async with _stream(session, url + _live(one)) as of_one, \
                    _stream(session, url + _live(listed)) as of_list, \
                    _stream(session, url + _live(overview)) as of_overview:
                await eventually(lambda: _api_connections(pid, cp.apiserver_port) == 4,
                                 timeout=30, what=lambda: "one watch each, two for the "
                                 f"overview: {_api_connections(pid, cp.apiserver_port)} open")
                # What each page shows changes: the one object, another in the list, the
                # monitor's status; each stream is told.
                cp.kubectl("annotate", "remediations.startupmonkey.dev", "shop-orders",
                           "-n", namespace, "example.com/seen=1")
                await _changed(of_one, "shop-orders")
                cp.kubectl("annotate", "remediations.startupmonkey.dev", "shop-returns",
                           "-n", namespace, "example.com/seen=1")
                await _changed(of_list, "shop-returns")
                cp.kubectl("patch", "databasemonitors.startupmonkey.dev", helpers.MONITOR,
                           "-n", namespace, "--subresource=status", "--type=merge",
                           "-p", json.dumps({"status": {"phase": "Degraded"}}))
                await _changed(of_overview, helpers.MONITOR)
                # The page of one object is not told of another's change: shop-orders
                # changes after shop-returns did, and is the next name it hears.
                cp.kubectl("annotate", "remediations.startupmonkey.dev", "shop-orders",
                           "-n", namespace, "example.com/seen=2", "--overwrite")
                kind, data = await _next_event(of_one)
                assert (kind, data) == ("changed", {"names": "shop-orders"})
            # The pages went away: their watches stop, and nothing is left open.
            await eventually(lambda: _api_connections(pid, cp.apiserver_port) == 0,
                             timeout=NOTICED, what=lambda: "no watch left after the pages "
                             f"closed: {_api_connections(pid, cp.apiserver_port)} open")
            _, listed = await get(session, url + "/remediations")
            async with _stream(session, url + _live(listed)) as again:
                cp.kubectl("annotate", "remediations.startupmonkey.dev", "shop-kept",
                           "-n", namespace, "example.com/seen=1")
                await _changed(again, "shop-kept")
        # The dashboard stops with a stream open (checked by stop(): exit 0 at once, no
        # traceback, nothing printed but the login URL).


async def test_a_user_who_may_not_watch_is_told_so_and_a_stream_no_page_makes_is_refused(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    users = await arrange(cp, namespace, tmp_path)
    with dashboard(users.as_viewer, tmp_path / "viewer", users.viewer) as seen:
        url = await seen.started()
        async with browser() as session:
            await seen.log_in(session)
            _, one = await get(session, f"{url}/ns/{namespace}/remediations/shop-orders")
            async with _stream(session, url + _live(one)) as stream:
                kind, data = await _next_event(stream)
            assert kind == "ended" and data["then"] == "stop", (kind, data)
            assert "403 Forbidden" in data["reason"]
            assert 'cannot watch resource "remediations"' in data["reason"]
            for asked in ("/live", "/live?pods=1", "/live?remediations=1&name=x",
                          f"/live?remediations=1&namespace={namespace}&name=..%2Fx"):
                status, page = await get(session, url + asked)
                assert status == 400, (asked, status)
                assert "Not a live page:" in page
        async with browser() as stranger:  # no session cookie
            status, _ = await get(stranger, url + _live(one))
            assert status == 401


async def test_at_most_max_live_pages_are_live_at_once(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    users = await arrange(cp, namespace, tmp_path)
    with dashboard(users.as_approver, tmp_path / "approver", users.approver) as own:
        url = await own.started()
        async with browser() as session, contextlib.AsyncExitStack() as streams:
            await own.log_in(session)
            _, listed = await get(session, url + "/remediations")
            live = url + _live(listed)
            opened = [await streams.enter_async_context(_stream(session, live))
                      for _ in range(server.MAX_LIVE)]
            status, refused = await get(session, live)
            assert status == 503, status
            assert f"{server.MAX_LIVE} pages are already updating themselves" in refused
            opened[0].close()  # one page goes away: once that is noticed, another may come

            async def accepted() -> bool:
                async with session.get(live, timeout=aiohttp.ClientTimeout(
                        total=None, sock_read=NOTICED)) as answer:
                    return answer.status == 200

            await eventually(accepted, timeout=NOTICED, what="a stream accepted again")


async def test_a_person_approves_and_the_page_shows_it_succeed_without_a_reload(
        control_plane: ControlPlane, namespace: str, app_conninfo: str,
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.common.by import By

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    cp = control_plane
    executor_kubeconfig = kube_helpers.setup_executor_namespace(cp, namespace, tmp_path)
    approver = kube_helpers.identity(cp, namespace, "approver", APPROVE)
    as_approver = cp.kubeconfig_for_token(approver, tmp_path / "approver.kubeconfig",
                                          namespace)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, namespace=namespace,
                         mode="approval")
    store = kube_helpers.store(executor_kubeconfig, namespace)
    shots = Screenshots(tmp_path / "screenshots")
    try:
        async with helpers.awaiting_approval(cfg, store, app_conninfo, pg_db.conninfo,
                                             namespace) as (held, name):
            with dashboard(as_approver, tmp_path / "dashboard", approver) as own, \
                    chromium(tmp_path / "watching", shots) as watching, \
                    chromium(tmp_path / "approving", shots) as approving:
                url = await own.started()
                page = f"{url}/ns/{namespace}/remediations/{name}"
                for driver in (watching, approving):  # two browsers (a hidden tab lets go)
                    driver.get(own.login)
                    await eventually(lambda d=driver: d.current_url == url + "/", timeout=30,
                                     what="the overview after the login")
                # The first: the Remediation's page, waiting for approval, live. From now on it
                # is only ever drawn again in place (a reload would drop the mark).
                watching.get(page)
                await eventually(lambda: "Live: this page updates itself."
                                 in page_body(watching), timeout=30, what="a live page")
                assert _state(watching) == "PendingApproval"
                watching.execute_script("window.startupmonkeyNotReloaded = true;")
                # The second: the person clicks Approve, and confirms.
                approving.get(page)
                await click(approving, By.LINK_TEXT, "Approve", f"Approve {name}?", shots,
                            None)
                await click(approving, By.ID, "confirm", "Approved: the executor", shots,
                            None)
                # The first shows it reach Succeeded, never reloaded, its stream never lost.
                await eventually(lambda: _state(watching) == "Succeeded", timeout=60,
                                 what="Succeeded shown without a reload",
                                 retry_on=(AssertionError, *REPLACING))
                assert watching.execute_script(
                    "return window.startupmonkeyNotReloaded === true;"), "reloaded"
                assert watching.current_url == page
                assert _live_line(watching) == "Live: this page updates itself."
                shots.save(watching, "succeeded.png")
            # The database changed: the session idle in its transaction was ended.
            await eventually(lambda: helpers.session_state(pg_db.conninfo, held.pid) is None,
                             timeout=30, what="the idle session gone")
        record = await store.get(name)
        assert record is not None and record.state is RemediationState.SUCCEEDED
        # Without the chart's admission policy nobody vouches for the approved-by annotation,
        # and the executor says so rather than repeat it.
        assert record.status.approved_by == \
            "unknown (the approved-by annotation is not verified)"
        assert record.annotations[remediation.ANNOTATION_APPROVED_BY] == \
            f"system:serviceaccount:{namespace}:approver"
    finally:
        kube_helpers.close(store)


def _live_line(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, "live").text)


def _state(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, "dd.state").text)


