"""``startupmonkey dashboard`` on the real kube-apiserver (issue 25): the dashboard runs as a
subprocess with a user's own kubeconfig; its pages show the monitor and the Remediations as the
API server holds them, Approve and Reject are that user's own requests (RBAC decides, and a
refusal shows the API server's reason on the page), and a POST without the form token, from
another origin or to another host name is refused with nothing changed. Only the client that
opened the login URL the dashboard printed on its stdout is answered: without its session
cookie (even with the form token in hand) or with a wrong key, 401 and nothing changed.

The login URL holds the dashboard's key: it is read from the process's stdout and never put in
an assertion message (answers are asserted on by status, not by their repr, which names the
URL)."""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from startupmonkey import rbac
from startupmonkey.executor import records
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass
from tests.support import executor_helpers as helpers
from tests.support import kube_helpers
from tests.support.components import require
from tests.support.controlplane import ControlPlane
from tests.support.eventually import eventually

pytestmark = pytest.mark.e2e
EXE = Path(sys.executable).with_name("startupmonkey")
READ = [rbac.rule(rbac.GROUP, ["remediations", "databasemonitors"], ["get", "list"])]
APPROVE = [rbac.rule(rbac.GROUP, ["remediations"], ["get", "list", "patch"]),
           rbac.rule(rbac.GROUP, ["databasemonitors"], ["get", "list"])]


def _sql(table: str) -> str:
    return f'CREATE INDEX CONCURRENTLY "{table}_customer_idx" ON "public"."{table}" (customer_id)'


SQL = _sql("orders")


class Dashboard:
    """A running ``startupmonkey dashboard --port 0`` and its output files."""

    def __init__(self, kubeconfig: Path, folder: Path, secrets: tuple[str, ...]) -> None:
        self.out, self.err = folder / "dashboard.out", folder / "dashboard.err"
        self.secrets = secrets
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [str(EXE), "dashboard", "--port", "0"], stdout=out, stderr=err,
                env={**os.environ, "KUBECONFIG": str(kubeconfig)}, start_new_session=True)
        self.url = ""
        self.login = ""  # the printed login URL, with the key: never in a message

    async def started(self) -> str:
        """Wait for the one line with the login URL; the dashboard's base address."""
        def login() -> str:
            assert self.proc.poll() is None, self.err.read_text()
            found = re.findall(r"http://127\.0\.0\.1:\d+/login\?key=[A-Za-z0-9_-]{43}\b",
                               self.out.read_text())
            return found[0] if found else ""

        self.login = await eventually(login, timeout=30, what="the dashboard's login URL")
        self.url = self.login.split("/login?", 1)[0]
        return self.url

    def key(self) -> str:
        return self.login.split("key=", 1)[1]

    def hidden(self, text: str) -> str:
        """``text`` with the login key replaced, fit for a message."""
        return text.replace(self.key(), "<key>") if self.login else text

    async def log_in(self, session: aiohttp.ClientSession) -> None:
        """Open the printed login URL once; the session keeps the cookie it sets."""
        async with session.get(self.login, allow_redirects=False) as answer:
            status, location = answer.status, answer.headers.get("Location")
        assert (status, location) == (303, "/")
        assert len(session.cookie_jar) == 1

    def stop(self) -> str:
        """Stop it (SIGTERM); its output, checked: exit 0, no traceback, no secret."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(timeout=20)
        text = self.hidden(self.out.read_text() + self.err.read_text())
        assert code == 0, text
        assert "Traceback" not in text, text
        for secret in self.secrets:
            assert secret not in text, "a token reached the dashboard's output"
        assert text.count("http://") == 1, "the login URL is printed once, and nothing else"
        return text


@contextlib.contextmanager
def dashboard(kubeconfig: Path, folder: Path, *secrets: str) -> Iterator[Dashboard]:
    folder.mkdir(parents=True, exist_ok=True)
    running = Dashboard(kubeconfig, folder, secrets)
    try:
        yield running
    except BaseException:
        with contextlib.suppress(AssertionError):  # the test's own failure is the one to see
            running.stop()
        raise
    running.stop()


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: aiohttp's cookie jar keeps no cookie of an IP address (127.0.0.1) without it
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as answer:
        return answer.status, await answer.text()


async def _post(session: aiohttp.ClientSession, url: str, form: dict[str, str],
                **headers: str) -> tuple[int, str]:
    async with session.post(url, data=form, headers=headers) as answer:
        return answer.status, await answer.text()


def _token(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def _text(page: str) -> str:
    """The page's text on one line, tags removed (for phrases split over elements)."""
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", page).split()))


def _record(namespace: str, name: str, table: str,
            action: ActionId = ActionId.CREATE_INDEX) -> records.Record:
    sql = _sql(table)
    spec = remediation.RemediationSpec(
        monitor=helpers.MONITOR, detection_key=f"{namespace}/{helpers.MONITOR}/{table}",
        detection_id=f"{name}-1", detector=DetectorId.MISSING_INDEX, action=action,
        risk_class=RiskClass.DDL,
        target=remediation.Target(schema="public", table=table, columns=["customer_id"]),
        sql=sql, rollback_sql=None, sql_hash=remediation.sql_hash(sql, None),
        evidence={"calls": "320", "mean_ms": "11.7", "statement": "SELECT * FROM <orders>"},
        summary=f"{table} needs an index on customer_id")
    return records.Record(name=name, namespace=namespace, spec=spec,
                          status=remediation.RemediationStatus(executor="earlier"),
                          created=records.utcnow())


def _kept(namespace: str) -> records.Record:
    record = _record(namespace, "shop-kept", "kept")
    record.status.after = {"after_window_seconds": 20.0, "index_bytes": 16384.0}
    record.status.decision = remediation.Decision(
        keep=True, reason="kept: faster", before_mean_ms=11.7, after_mean_ms=0.07,
        before_calls=320, after_calls=404, improvement=0.994)
    record.status.approved_by = f"system:serviceaccount:{namespace}:someone"
    for state in (RemediationState.APPROVED, RemediationState.RUNNING,
                  RemediationState.VERIFYING, RemediationState.SUCCEEDED):
        record.move(state, "kept: faster" if state is RemediationState.SUCCEEDED else "")
    return record


def _pending(namespace: str, name: str, table: str) -> records.Record:
    record = _record(namespace, name, table)
    record.move(RemediationState.PENDING_APPROVAL, "waits for a person (mode approval)")
    return record


def _object(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cp.kubectl_json("get", "remediations.startupmonkey.dev", name,
                                            "-n", namespace)
    return found


def _monitor_status(cp: ControlPlane, namespace: str) -> None:
    """Mode approval, and the status the operator and executor would have written."""
    status = {"phase": "Ready",
              "database": {"reachable": True, "serverVersion": "15.8", "inRecovery": False},
              "remediations": {"byState": {"PendingApproval": 2, "Succeeded": 1},
                               "active": 2, "succeeded": 1, "pendingApproval": 2,
                               "lastAction": "create_index public.kept (Succeeded)"}}
    cp.kubectl("patch", "databasemonitors.startupmonkey.dev", helpers.MONITOR, "-n", namespace,
               "--type=merge", "-p", json.dumps({"spec": {"mode": "approval"}}))
    cp.kubectl("patch", "databasemonitors.startupmonkey.dev", helpers.MONITOR, "-n", namespace,
               "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))


@dataclasses.dataclass(frozen=True)
class Users:
    """The two people of these tests: tokens and kubeconfigs (namespace: the test's)."""

    approver: str
    viewer: str
    as_approver: Path
    as_viewer: Path


async def _arrange(cp: ControlPlane, namespace: str, tmp_path: Path) -> Users:
    """The monitor shop (mode approval, with a status), a kept index and two Remediations
    pending approval written by the executor's own ServiceAccount, an approver (get, list,
    patch) and a viewer (get, list)."""
    executor_kubeconfig = kube_helpers.setup_executor_namespace(cp, namespace, tmp_path)
    _monitor_status(cp, namespace)
    approver = kube_helpers.identity(cp, namespace, "approver", APPROVE)
    viewer = kube_helpers.identity(cp, namespace, "viewer", READ)
    store = kube_helpers.store(executor_kubeconfig, namespace)
    try:
        for record in (_kept(namespace), _pending(namespace, "shop-orders", "orders"),
                       _pending(namespace, "shop-returns", "returns")):
            assert await store.create(record)
    finally:
        kube_helpers.close(store)
    return Users(approver, viewer,
                 cp.kubeconfig_for_token(approver, tmp_path / "approver.kubeconfig", namespace),
                 cp.kubeconfig_for_token(viewer, tmp_path / "viewer.kubeconfig", namespace))


async def test_the_dashboard_shows_and_acts_with_the_users_own_rights(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    users = await _arrange(cp, namespace, tmp_path)
    approver, viewer, as_approver, as_viewer = (users.approver, users.viewer,
                                                users.as_approver, users.as_viewer)
    page_of = f"/ns/{namespace}/remediations"

    with dashboard(as_viewer, tmp_path / "viewer", viewer) as seen:
        url = await seen.started()
        async with browser() as session:
            await seen.log_in(session)
            async with session.get(url + "/") as answer:
                assert answer.headers["X-Frame-Options"] == "DENY"
                assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
                assert answer.headers["Cache-Control"] == "no-store"
            status, overview = await _get(session, url + "/")
            assert status == 200, overview
            text = _text(overview)
            assert "shop" in text and "Mode approval" in text
            assert "reachable: PostgreSQL 15.8, primary" in text
            assert "Needs a person: 2 remediations wait for a person's approval" in text
            # A namespaced Role: the cluster-wide list is refused, the context's is shown.
            assert f"showing namespace {namespace}" in text
            assert "cannot list resource" in text

            status, pending = await _get(session, url + "/remediations?state=PendingApproval")
            assert status == 200, pending
            assert f'href="{page_of}/shop-orders"' in pending
            assert f'href="{page_of}/shop-returns"' in pending
            assert "shop-kept" not in pending
            status, everything = await _get(session, url + "/remediations?monitor=shop")
            assert "3 of 3 shown" in _text(everything)

            status, kept = await _get(session, url + f"{page_of}/shop-kept")
            assert status == 200, kept
            assert "<svg" in kept and "11.7 ms (320 calls)" in kept
            assert "Approved by system:serviceaccount:" in _text(kept)
            assert "14.1 min saved per hour (72,720 calls/h)" in kept

            status, one = await _get(session, url + f"{page_of}/shop-orders")
            assert status == 200, one
            assert SQL.replace('"', "&#34;") in one
            assert "SELECT * FROM &lt;orders&gt;" in one  # evidence, escaped
            assert "waits for a person (mode approval)" in one  # the timeline

            status, confirm = await _get(session, url + f"{page_of}/shop-orders/approve")
            assert status == 200, confirm
            token = _token(confirm)
            form = {"csrf": token, "sql_hash": remediation.sql_hash(SQL, None)}
            status, refused = await _post(session, url + f"{page_of}/shop-orders/approve",
                                          form)
            assert status == 403, refused
            text = _text(refused)
            assert "Approve refused: Kubernetes API: 403 Forbidden:" in text
            assert f"system:serviceaccount:{namespace}:viewer" in text
            assert 'cannot patch resource "remediations"' in text
            assert "Traceback" not in refused
    assert _object(cp, namespace, "shop-orders")["spec"]["approved"] is False

    with dashboard(as_approver, tmp_path / "approver", approver) as own:
        url = await own.started()
        approve = url + f"{page_of}/shop-orders/approve"
        async with browser() as session:
            await own.log_in(session)
            _, confirm = await _get(session, approve)
            token = _token(confirm)
            sql_hash = remediation.sql_hash(SQL, None)
            for form, headers, expected in (
                    ({"sql_hash": sql_hash}, {}, "did not come from this dashboard"),
                    ({"csrf": "0" * len(token), "sql_hash": sql_hash}, {},
                     "did not come from this dashboard"),
                    ({"csrf": token, "sql_hash": sql_hash},
                     {"Origin": "https://evil.example"}, "sent from another site")):
                status, refused = await _post(session, approve, form, **headers)
                assert status == 403, refused
                assert expected in refused
            status, other_host = await _post(session, approve,
                                             {"csrf": token, "sql_hash": sql_hash},
                                             Host="evil.example")
            assert status == 421, other_host
            assert _object(cp, namespace, "shop-orders")["spec"]["approved"] is False

            async with session.post(approve, data={"csrf": token, "sql_hash": sql_hash},
                                    headers={"Origin": url}, allow_redirects=False) as answer:
                assert answer.status == 303, await answer.text()
                assert answer.headers["Location"] == f"{page_of}/shop-orders?done=approve"
                assert answer.headers["X-Frame-Options"] == "DENY"
            status, done = await _get(session, f"{url}{page_of}/shop-orders?done=approve")
            assert status == 200, done
            assert "Approved: the executor re-checks the plan and runs it." in done
            approved = _object(cp, namespace, "shop-orders")
            assert approved["spec"]["approved"] is True
            assert approved["metadata"]["annotations"][remediation.ANNOTATION_APPROVED_BY] == \
                f"system:serviceaccount:{namespace}:approver"

            _, confirm = await _get(session, url + f"{page_of}/shop-returns/reject")
            status, done = await _post(session, url + f"{page_of}/shop-returns/reject",
                                       {"csrf": _token(confirm),
                                        "reason": "not during the sale"})
            assert status == 200, done
            rejected = _object(cp, namespace, "shop-returns")
            assert rejected["metadata"]["annotations"]["startupmonkey.dev/reject-requested"] \
                == f"system:serviceaccount:{namespace}:approver: not during the sale"
            assert rejected["spec"]["approved"] is False


async def test_only_the_client_that_opened_the_printed_login_url_is_answered(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """Another program on the machine: it can reach 127.0.0.1 with the right Host and no
    Origin, and even hold a form token, but not the cookie; nor can it guess the key."""
    cp = control_plane
    users = await _arrange(cp, namespace, tmp_path)
    page_of = f"/ns/{namespace}/remediations"
    sql_hash = remediation.sql_hash(SQL, None)
    with dashboard(users.as_approver, tmp_path / "approver", users.approver) as own:
        url = await own.started()
        approve = url + f"{page_of}/shop-orders/approve"
        async with browser() as person, browser() as other:
            # (c) the printed URL logs in once, and the cookie alone opens the later requests
            await own.log_in(person)
            status, confirm = await _get(person, approve)
            assert status == 200, confirm
            token = _token(confirm)

            # (a) no cookie: a page, the confirm page and an approve with the token: 401
            for address in (url + "/", f"{url}{page_of}/shop-orders", approve,
                            url + "/remediations?state=PendingApproval"):
                status, refused = await _get(other, address)
                assert status == 401, refused
                assert "login address printed in the terminal" in refused
                # nothing of the cluster, no form (the "open it again" link names the path)
                assert "CREATE INDEX" not in refused and 'name="csrf"' not in refused
                assert "PendingApproval" not in _text(refused) and token not in refused
                assert "key=&#8230;" in refused and own.key() not in refused
            status, refused = await _post(other, approve, {"csrf": token, "sql_hash": sql_hash})
            assert status == 401, refused
            assert "CREATE INDEX" not in refused and "open this page again" not in refused
            status, refused = await _post(other, url + f"{page_of}/shop-kept/rollback",
                                          {"csrf": token, "reason": "from another program"})
            assert status == 401, refused
            assert len(other.cookie_jar) == 0
            orders, kept = _object(cp, namespace, "shop-orders"), \
                _object(cp, namespace, "shop-kept")
            assert orders["spec"]["approved"] is False
            assert remediation.ANNOTATION_APPROVED_BY not in \
                orders["metadata"].get("annotations", {})
            assert remediation.ANNOTATION_ROLLBACK not in kept["metadata"].get("annotations", {})

            # (b) a wrong key: 401, no cookie, and still nothing answered
            for wrong in ("", "?key=", "?key=" + "A" * 43, "?key=" + own.key()[:-1]):
                async with other.get(url + "/login" + wrong, allow_redirects=False) as answer:
                    status, text = answer.status, await answer.text()
                    set_cookie = answer.headers.getall("Set-Cookie", [])
                assert status == 401, text
                assert "not this dashboard" in text
                assert set_cookie == []
                assert len(other.cookie_jar) == 0
            status, refused = await _get(other, approve)
            assert status == 401, refused

            # (c) the person's cookie goes on working, for pages and for the form
            status, overview = await _get(person, url + "/")
            assert status == 200, overview
            status, done = await _post(person, approve, {"csrf": token, "sql_hash": sql_hash})
            assert status == 200, done
            assert "Approved: the executor re-checks the plan and runs it." in done
            assert _object(cp, namespace, "shop-orders")["spec"]["approved"] is True


SCREENSHOTS = "STARTUPMONKEY_SCREENSHOTS"
"""A folder (relative: to the repository) that also gets the browser test's screenshots, as
``STARTUPMONKEY_SCREENSHOTS=docs/images/dashboard`` does for docs/dashboard.md."""
WINDOW = (1280, 900)  # one size, so the screenshots are the same from run to run


class Screenshots:
    """The browser test's PNG of each page, saved once the page shows what is waited for: always
    in the test's own folder (a failed run leaves them to look at), and also in the folder
    ``STARTUPMONKEY_SCREENSHOTS`` names when it is set."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        wanted = os.environ.get(SCREENSHOTS, "")
        self.also = Path(__file__).resolve().parents[2] / wanted if wanted else None
        if self.also is not None:
            self.also.mkdir(parents=True, exist_ok=True)

    def save(self, driver: Any, name: str) -> None:
        path = self.folder / name
        assert driver.save_screenshot(str(path)), f"no screenshot saved to {path}"
        if self.also is not None:
            shutil.copyfile(path, self.also / name)


@contextlib.contextmanager
def chromium(folder: Path, shots: Screenshots) -> Iterator[Any]:
    """Debian's chromium, headless, driven by its chromium-driver through Selenium (both
    named by path, so Selenium Manager looks for nothing). A failure inside is told where the
    screenshots are, with one more of the page as it was then (at-failure.png, in the test's
    folder only)."""
    browser_path, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if browser_path is None or driver_path is None:
        require("chromium and chromium-driver (the real-browser test)",
                "run `bash hack/install-system-packages.sh chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    folder.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for argument in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1",
                     "--hide-scrollbars", f"--user-data-dir={folder / 'profile'}",
                     "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # chromium refuses to run as root with it
    service = Service(executable_path=driver_path, log_output=str(folder / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    except BaseException as error:
        with contextlib.suppress(Exception):
            driver.save_screenshot(str(folder / "at-failure.png"))
        error.add_note(f"screenshots: {shots.folder}, and the page at the failure: "
                       f"{folder / 'at-failure.png'}")
        raise
    finally:
        driver.quit()


def _replacing() -> tuple[type[Exception], ...]:
    """What Selenium raises while a page is being replaced (read again: not a failure)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    return (StaleElementReferenceException, NoSuchElementException)


_REPLACING = _replacing()


def _body(driver: Any) -> str:
    """The page's text; "" while the page is being replaced, so a wait reads it again: the
    body found was the old page's (StaleElementReferenceException), or the new document has
    no body yet (NoSuchElementException); both seen under load."""
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)
    except _REPLACING:
        return ""


async def _click(driver: Any, by: str, target: str, shown: str, shots: Screenshots,
                 screenshot: str | None) -> str:
    """Click ``target`` (found ``by``), wait until the page shows ``shown``, save a screenshot
    (unless ``screenshot`` is None); the page's text."""
    driver.find_element(by, target).click()
    await eventually(lambda: shown in _body(driver), timeout=30,
                     what=f"{shown!r} after clicking {target!r}")
    if screenshot is not None:
        shots.save(driver, screenshot)
    return _body(driver)


async def test_a_person_approves_in_a_real_browser(
        control_plane: ControlPlane, namespace: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.common.by import By

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    cp = control_plane
    users = await _arrange(cp, namespace, tmp_path)
    shots = Screenshots(tmp_path / "screenshots")
    with dashboard(users.as_approver, tmp_path / "approver", users.approver) as own, \
            chromium(tmp_path / "chromium", shots) as driver:
        url = await own.started()
        driver.get(url + "/")
        assert "login address printed in the terminal" in _body(driver)
        driver.get(own.login)  # as a person opens the URL printed in the terminal
        await eventually(lambda: driver.current_url == url + "/", timeout=30,
                         what="the overview after the login")
        assert "Needs a person: 2 remediations wait for a person's approval" in _body(driver)
        shots.save(driver, "overview.png")
        await _click(driver, By.PARTIAL_LINK_TEXT, "wait for a person", "2 of 3 shown",
                     shots, "pending.png")
        text = await _click(driver, By.LINK_TEXT, "shop-orders", "The exact SQL",
                            shots, "remediation.png")
        assert driver.current_url == f"{url}/ns/{namespace}/remediations/shop-orders"
        assert SQL in text
        assert driver.find_element(By.ID, "approved").text == "no"
        await _click(driver, By.LINK_TEXT, "Approve", "Approve shop-orders?",
                     shots, "confirm.png")
        await _click(driver, By.ID, "confirm", "Approved: the executor", shots, None)
        driver.refresh()
        await eventually(lambda: driver.find_element(By.ID, "approved").text == "yes",
                         timeout=30, what="approved: yes after a reload",
                         retry_on=(AssertionError, *_REPLACING))
        shots.save(driver, "approved.png")  # the same page, now saying approved: yes
        assert _object(cp, namespace, "shop-orders")["spec"]["approved"] is True

    with dashboard(users.as_viewer, tmp_path / "viewer", users.viewer) as seen, \
            chromium(tmp_path / "chromium-viewer", shots) as driver:
        url = await seen.started()
        driver.get(seen.login)
        await eventually(lambda: driver.current_url == url + "/", timeout=30,
                         what="the overview after the login")
        driver.get(f"{url}/ns/{namespace}/remediations/shop-returns/approve")
        text = await _click(driver, By.ID, "confirm", "Approve refused", shots,
                            "refused.png")
        assert "Kubernetes API: 403 Forbidden:" in text
        assert 'cannot patch resource "remediations"' in text
    assert _object(cp, namespace, "shop-returns")["spec"]["approved"] is False
    assert sorted(p.name for p in shots.folder.iterdir()) == [
        "approved.png", "confirm.png", "overview.png", "pending.png", "refused.png",
        "remediation.png"]
