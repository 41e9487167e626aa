"""The dashboard of a standalone run in a real browser (issue 25, "tested in a real browser
against a real run"): ``startupmonkey run -f`` in mode approval on the temporary PostgreSQL,
a session idle in its transaction (a real problem, found by the real collector and analyser),
and ``startupmonkey dashboard --executor unix:///...`` on the run's executor socket. Debian's
headless Chromium opens the printed login URL, sees the monitor's card with its database
reachable, follows the links to the Remediation waiting for approval, and a person clicks
Approve and confirms; the page, never reloaded, shows it reach Succeeded (live.js following
the dashboard's poll of the executor), and the session is gone from pg_stat_activity.

Two browsers, as in tests/e2e/test_dashboard_live_kube.py: one keeps the Remediation's page
open while the other approves (a hidden tab lets go of its stream, so both are in view)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from startupmonkey.localserv import postgres
from tests.integration.test_dashboard_standalone import dashboard
from tests.support.dashboard import REPLACING, Screenshots, chromium, page_body
from tests.support.eventually import wait_until
from tests.support.executor_helpers import session_state
from tests.support.standalone import approval_run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
LIVE = "Live: this page updates itself."
#: A real problem takes a few collector intervals to become a Remediation (and two browsers
#: share the machine with everything else).
FOUND_SECONDS = 150


def _state(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, "dd.state").text)


def _live_line(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, "live").text)


def _click(driver: Any, by: str, target: str, shown: str, timeout: float = 30) -> str:
    """Click ``target`` (found ``by``) and wait until the page shows ``shown``; its text."""
    driver.find_element(by, target).click()
    return wait_until(lambda: page_body(driver) if shown in page_body(driver) else "",
                      timeout=timeout, what=f"{shown!r} after clicking {target!r}")


def _log_in(driver: Any, login: str, base: str) -> None:
    driver.get(login)
    wait_until(lambda: driver.current_url == base + "/", timeout=30,
               what="the overview after the login")


def _open_pending(driver: Any) -> str:
    """From the overview, by its links: the list of what waits for approval, then its one
    Remediation; the Remediation's address."""
    from selenium.webdriver.common.by import By

    _click(driver, By.PARTIAL_LINK_TEXT, "PendingApproval: 1", "Remediations")
    rows = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "main table tbody tr"),
                      timeout=30, what="the list of Remediations pending approval",
                      retry_on=(AssertionError, *REPLACING))
    assert len(rows) == 1, page_body(driver)
    assert "PendingApproval" in rows[0].text and "idle_in_transaction" in rows[0].text, \
        rows[0].text
    name = rows[0].find_element(By.CSS_SELECTOR, "td a").text
    _click(driver, By.LINK_TEXT, name, "The exact SQL")
    wait_until(lambda: _live_line(driver) == LIVE, timeout=30, what="a live page",
               retry_on=(AssertionError, *REPLACING))
    return str(driver.current_url)


def test_a_person_approves_in_a_browser_and_the_page_shows_it_succeed_live(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.common.by import By

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    shots = Screenshots(tmp_path / "screenshots")
    with approval_run(pg_cluster, pg_db, tmp_path) as run:
        with dashboard(tmp_path / "dash", "--executor", run.address) as running, \
                chromium(tmp_path / "watching", shots) as watching, \
                chromium(tmp_path / "approving", shots) as approving:
            base = running.started()
            for driver in (watching, approving):  # two browsers (a hidden tab lets go)
                _log_in(driver, running.login, base)
            # The overview: the monitor's card, its database reachable; once the problem
            # is found (the overview follows the executor live), one Remediation waits.
            card = "section.card"
            wait_until(lambda: "reachable: PostgreSQL" in watching.find_element(
                By.CSS_SELECTOR, card).text, timeout=30, what="the database reachable",
                retry_on=(AssertionError, *REPLACING))
            wait_until(lambda: "PendingApproval: 1" in page_body(watching),
                       timeout=FOUND_SECONDS, what="a Remediation pending approval on the "
                       "overview, without a reload")
            text = watching.find_element(By.CSS_SELECTOR, card).text
            assert "runner-test" in text and "approval" in text, text
            shots.save(watching, "standalone-overview.png")
            # The first browser opens it by the links, and keeps it open: from now on it is
            # only ever drawn again in place (a reload would drop the mark).
            page = _open_pending(watching)
            assert _state(watching) == "PendingApproval"
            assert "pg_terminate_backend" in page_body(watching)
            assert str(run.held.pid) in page_body(watching)
            shots.save(watching, "standalone-remediation.png")
            watching.execute_script("window.startupmonkeyNotReloaded = true;")
            # The second: the person opens it the same way, clicks Approve, and confirms.
            wait_until(lambda: "PendingApproval: 1" in page_body(approving),
                       timeout=30, what="the second browser's overview")
            assert _open_pending(approving) == page
            name = page.rsplit("/", 1)[1]
            _click(approving, By.LINK_TEXT, "Approve", f"Approve {name}?")
            _click(approving, By.ID, "confirm", "Approved: the executor")
            # The first shows it reach Succeeded, never reloaded, its stream never lost.
            wait_until(lambda: _state(watching) == "Succeeded", timeout=90,
                       what="Succeeded shown without a reload",
                       retry_on=(AssertionError, *REPLACING))
            assert watching.execute_script(
                "return window.startupmonkeyNotReloaded === true;"), "reloaded"
            assert watching.current_url == page
            assert _live_line(watching) == LIVE
            shown = page_body(watching)
            assert "Approved by" in shown and "local user" in shown, shown
            shots.save(watching, "standalone-succeeded.png")
        # The database changed: the session idle in its transaction was ended.
        wait_until(lambda: session_state(pg_db.conninfo, run.held.pid) is None, timeout=30,
                   what="the idle session gone from pg_stat_activity")
