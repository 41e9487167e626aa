"""The dashboard's end-to-end tests' shared parts: a running ``startupmonkey dashboard``
with a user's own kubeconfig, an aiohttp client that keeps its session cookie, the objects and
people of the tests (an approver and a viewer), and Debian's headless Chromium driven by
Selenium with its screenshots (tests/e2e/test_dashboard_kube.py,
tests/e2e/test_dashboard_live_kube.py), and the checked stop of a dashboard subprocess
(tests/e2e/test_dashboard_incluster_kube.py too)."""

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
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from startupmonkey import rbac
from startupmonkey.executor import records
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass
from tests.support import executor_helpers as helpers
from tests.support import kube_helpers
from tests.support.components import require
from tests.support.controlplane import ControlPlane
from tests.support.eventually import eventually

EXE = Path(sys.executable).with_name("startupmonkey")
#: A viewer who may read but not watch (so pages do not update themselves), and an approver
#: with the verbs of the chart's aggregated roles (so they do).
READ = [rbac.rule(rbac.GROUP, ["remediations", "databasemonitors"], ["get", "list"])]
APPROVE = [rbac.rule(rbac.GROUP, ["remediations"], ["get", "list", "watch", "patch"]),
           rbac.rule(rbac.GROUP, ["databasemonitors"], ["get", "list", "watch"])]


def sql_for(table: str) -> str:
    return f'CREATE INDEX CONCURRENTLY "{table}_customer_idx" ON "public"."{table}" (customer_id)'


SQL = sql_for("orders")


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
        """Stop it (SIGTERM); its output, checked: exit 0, no traceback, no secret, the login
        URL printed once."""
        text = stop_checked(self.proc, self.out, self.err, self.secrets, hidden=self.hidden)
        assert text.count("http://") == 1, "the login URL is printed once, and nothing else"
        return text


def stop_checked(proc: subprocess.Popen[bytes], out: Path, err: Path,
                 secrets: Iterable[str] = (), *,
                 hidden: Callable[[str], str] | None = None) -> str:
    """Stop a dashboard subprocess started in its own session (SIGTERM; SIGKILL to its process
    group if it has not ended in 20 s) and check its output (the files ``out`` and ``err``):
    exit 0, no traceback, none of ``secrets``. The output, passed through ``hidden`` (if given)
    and with each secret replaced by ``<secret>``, is what a message shows and what is
    returned: no token is ever put in an assertion message."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=20)
    text = out.read_text() + err.read_text()
    if hidden is not None:
        text = hidden(text)
    secrets = tuple(secrets)
    leaked = any(secret in text for secret in secrets)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<secret>")
    assert code == 0, f"exit code {code}: {text}"
    assert "Traceback" not in text, text
    assert not leaked, "a token reached the dashboard's output"
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


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as answer:
        return answer.status, await answer.text()


async def post(session: aiohttp.ClientSession, url: str, form: dict[str, str],
                **headers: str) -> tuple[int, str]:
    async with session.post(url, data=form, headers=headers) as answer:
        return answer.status, await answer.text()


def form_token(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def text_of(page: str) -> str:
    """The page's text on one line, tags removed (for phrases split over elements)."""
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", page).split()))


def make_record(namespace: str, name: str, table: str,
            action: ActionId = ActionId.CREATE_INDEX) -> records.Record:
    sql = sql_for(table)
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


def kept(namespace: str) -> records.Record:
    record = make_record(namespace, "shop-kept", "kept")
    record.status.after = {"after_window_seconds": 20.0, "index_bytes": 16384.0}
    record.status.decision = remediation.Decision(
        keep=True, reason="kept: faster", before_mean_ms=11.7, after_mean_ms=0.07,
        before_calls=320, after_calls=404, improvement=0.994)
    record.status.approved_by = f"system:serviceaccount:{namespace}:someone"
    for state in (RemediationState.APPROVED, RemediationState.RUNNING,
                  RemediationState.VERIFYING, RemediationState.SUCCEEDED):
        record.move(state, "kept: faster" if state is RemediationState.SUCCEEDED else "")
    return record


def pending(namespace: str, name: str, table: str) -> records.Record:
    record = make_record(namespace, name, table)
    record.move(RemediationState.PENDING_APPROVAL, "waits for a person (mode approval)")
    return record


def object_of(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cp.kubectl_json("get", "remediations.startupmonkey.dev", name,
                                            "-n", namespace)
    return found


def monitor_status(cp: ControlPlane, namespace: str) -> None:
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


async def arrange(cp: ControlPlane, namespace: str, tmp_path: Path) -> Users:
    """The monitor shop (mode approval, with a status), a kept index and two Remediations
    pending approval written by the executor's own ServiceAccount, an approver (get, list,
    patch) and a viewer (get, list)."""
    executor_kubeconfig = kube_helpers.setup_executor_namespace(cp, namespace, tmp_path)
    monitor_status(cp, namespace)
    approver = kube_helpers.identity(cp, namespace, "approver", APPROVE)
    viewer = kube_helpers.identity(cp, namespace, "viewer", READ)
    store = kube_helpers.store(executor_kubeconfig, namespace)
    try:
        for record in (kept(namespace), pending(namespace, "shop-orders", "orders"),
                       pending(namespace, "shop-returns", "returns")):
            assert await store.create(record)
    finally:
        kube_helpers.close(store)
    return Users(approver, viewer,
                 cp.kubeconfig_for_token(approver, tmp_path / "approver.kubeconfig", namespace),
                 cp.kubeconfig_for_token(viewer, tmp_path / "viewer.kubeconfig", namespace))


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


def replacing() -> tuple[type[Exception], ...]:
    """What Selenium raises while a page is being replaced (read again: not a failure)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    return (StaleElementReferenceException, NoSuchElementException)


REPLACING = replacing()


def page_body(driver: Any) -> str:
    """The page's text; "" while the page is being replaced, so a wait reads it again: the
    body found was the old page's (StaleElementReferenceException), or the new document has
    no body yet (NoSuchElementException); both seen under load."""
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)
    except REPLACING:
        return ""


async def click(driver: Any, by: str, target: str, shown: str, shots: Screenshots,
                 screenshot: str | None) -> str:
    """Click ``target`` (found ``by``), wait until the page shows ``shown``, save a screenshot
    (unless ``screenshot`` is None); the page's text."""
    driver.find_element(by, target).click()
    await eventually(lambda: shown in page_body(driver), timeout=30,
                     what=f"{shown!r} after clicking {target!r}")
    if screenshot is not None:
        shots.save(driver, screenshot)
    return page_body(driver)
