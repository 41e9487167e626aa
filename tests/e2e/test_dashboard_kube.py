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

from pathlib import Path

import pytest

from startupmonkey.models import remediation
from tests.support.controlplane import ControlPlane
from tests.support.dashboard import (
    REPLACING,
    SQL,
    Screenshots,
    arrange,
    browser,
    chromium,
    click,
    dashboard,
    form_token,
    get,
    object_of,
    page_body,
    post,
    text_of,
)
from tests.support.eventually import eventually

pytestmark = pytest.mark.e2e


async def test_the_dashboard_shows_and_acts_with_the_users_own_rights(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    users = await arrange(cp, namespace, tmp_path)
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
            status, overview = await get(session, url + "/")
            assert status == 200, overview
            text = text_of(overview)
            assert "shop" in text and "Mode approval" in text
            assert "reachable: PostgreSQL 15.8, primary" in text
            assert "Needs a person: 2 remediations wait for a person's approval" in text
            # A namespaced Role: the cluster-wide list is refused, the context's is shown.
            assert f"showing namespace {namespace}" in text
            assert "cannot list resource" in text

            status, pending = await get(session, url + "/remediations?state=PendingApproval")
            assert status == 200, pending
            assert f'href="{page_of}/shop-orders"' in pending
            assert f'href="{page_of}/shop-returns"' in pending
            assert "shop-kept" not in pending
            status, everything = await get(session, url + "/remediations?monitor=shop")
            assert "3 of 3 shown" in text_of(everything)

            status, kept = await get(session, url + f"{page_of}/shop-kept")
            assert status == 200, kept
            assert "<svg" in kept and "11.7 ms (320 calls)" in kept
            assert "Approved by system:serviceaccount:" in text_of(kept)
            assert "14.1 min saved per hour (72,720 calls/h)" in kept

            status, one = await get(session, url + f"{page_of}/shop-orders")
            assert status == 200, one
            assert SQL.replace('"', "&#34;") in one
            assert "SELECT * FROM &lt;orders&gt;" in one  # evidence, escaped
            assert "waits for a person (mode approval)" in one  # the timeline

            status, confirm = await get(session, url + f"{page_of}/shop-orders/approve")
            assert status == 200, confirm
            token = form_token(confirm)
            form = {"csrf": token, "sql_hash": remediation.sql_hash(SQL, None)}
            status, refused = await post(session, url + f"{page_of}/shop-orders/approve",
                                          form)
            assert status == 403, refused
            text = text_of(refused)
            assert "Approve refused: Kubernetes API: 403 Forbidden:" in text
            assert f"system:serviceaccount:{namespace}:viewer" in text
            assert 'cannot patch resource "remediations"' in text
            assert "Traceback" not in refused
    assert object_of(cp, namespace, "shop-orders")["spec"]["approved"] is False

    with dashboard(as_approver, tmp_path / "approver", approver) as own:
        url = await own.started()
        approve = url + f"{page_of}/shop-orders/approve"
        async with browser() as session:
            await own.log_in(session)
            _, confirm = await get(session, approve)
            token = form_token(confirm)
            sql_hash = remediation.sql_hash(SQL, None)
            for form, headers, expected in (
                    ({"sql_hash": sql_hash}, {}, "did not come from this dashboard"),
                    ({"csrf": "0" * len(token), "sql_hash": sql_hash}, {},
                     "did not come from this dashboard"),
                    ({"csrf": token, "sql_hash": sql_hash},
                     {"Origin": "https://evil.example"}, "sent from another site")):
                status, refused = await post(session, approve, form, **headers)
                assert status == 403, refused
                assert expected in refused
            status, other_host = await post(session, approve,
                                             {"csrf": token, "sql_hash": sql_hash},
                                             Host="evil.example")
            assert status == 421, other_host
            assert object_of(cp, namespace, "shop-orders")["spec"]["approved"] is False

            async with session.post(approve, data={"csrf": token, "sql_hash": sql_hash},
                                    headers={"Origin": url}, allow_redirects=False) as answer:
                assert answer.status == 303, await answer.text()
                assert answer.headers["Location"] == f"{page_of}/shop-orders?done=approve"
                assert answer.headers["X-Frame-Options"] == "DENY"
            status, done = await get(session, f"{url}{page_of}/shop-orders?done=approve")
            assert status == 200, done
            assert "Approved: the executor re-checks the plan and runs it." in done
            approved = object_of(cp, namespace, "shop-orders")
            assert approved["spec"]["approved"] is True
            assert approved["metadata"]["annotations"][remediation.ANNOTATION_APPROVED_BY] == \
                f"system:serviceaccount:{namespace}:approver"

            _, confirm = await get(session, url + f"{page_of}/shop-returns/reject")
            status, done = await post(session, url + f"{page_of}/shop-returns/reject",
                                       {"csrf": form_token(confirm),
                                        "reason": "not during the sale"})
            assert status == 200, done
            rejected = object_of(cp, namespace, "shop-returns")
            assert rejected["metadata"]["annotations"]["startupmonkey.dev/reject-requested"] \
                == f"system:serviceaccount:{namespace}:approver: not during the sale"
            assert rejected["spec"]["approved"] is False


async def test_only_the_client_that_opened_the_printed_login_url_is_answered(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """Another program on the machine: it can reach 127.0.0.1 with the right Host and no
    Origin, and even hold a form token, but not the cookie; nor can it guess the key."""
    cp = control_plane
    users = await arrange(cp, namespace, tmp_path)
    page_of = f"/ns/{namespace}/remediations"
    sql_hash = remediation.sql_hash(SQL, None)
    with dashboard(users.as_approver, tmp_path / "approver", users.approver) as own:
        url = await own.started()
        approve = url + f"{page_of}/shop-orders/approve"
        async with browser() as person, browser() as other:
            # (c) the printed URL logs in once, and the cookie alone opens the later requests
            await own.log_in(person)
            status, confirm = await get(person, approve)
            assert status == 200, confirm
            token = form_token(confirm)

            # (a) no cookie: a page, the confirm page and an approve with the token: 401
            for address in (url + "/", f"{url}{page_of}/shop-orders", approve,
                            url + "/remediations?state=PendingApproval"):
                status, refused = await get(other, address)
                assert status == 401, refused
                assert "login address printed in the terminal" in refused
                # nothing of the cluster, no form (the "open it again" link names the path)
                assert "CREATE INDEX" not in refused and 'name="csrf"' not in refused
                assert "PendingApproval" not in text_of(refused) and token not in refused
                assert "key=&#8230;" in refused and own.key() not in refused
            status, refused = await post(other, approve, {"csrf": token, "sql_hash": sql_hash})
            assert status == 401, refused
            assert "CREATE INDEX" not in refused and "open this page again" not in refused
            status, refused = await post(other, url + f"{page_of}/shop-kept/rollback",
                                          {"csrf": token, "reason": "from another program"})
            assert status == 401, refused
            assert len(other.cookie_jar) == 0
            orders, kept = object_of(cp, namespace, "shop-orders"), \
                object_of(cp, namespace, "shop-kept")
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
            status, refused = await get(other, approve)
            assert status == 401, refused

            # (c) the person's cookie goes on working, for pages and for the form
            status, overview = await get(person, url + "/")
            assert status == 200, overview
            status, done = await post(person, approve, {"csrf": token, "sql_hash": sql_hash})
            assert status == 200, done
            assert "Approved: the executor re-checks the plan and runs it." in done
            assert object_of(cp, namespace, "shop-orders")["spec"]["approved"] is True



async def test_a_person_approves_in_a_real_browser(
        control_plane: ControlPlane, namespace: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.common.by import By

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    cp = control_plane
    users = await arrange(cp, namespace, tmp_path)
    shots = Screenshots(tmp_path / "screenshots")
    with dashboard(users.as_approver, tmp_path / "approver", users.approver) as own, \
            chromium(tmp_path / "chromium", shots) as driver:
        url = await own.started()
        driver.get(url + "/")
        assert "login address printed in the terminal" in page_body(driver)
        driver.get(own.login)  # as a person opens the URL printed in the terminal
        await eventually(lambda: driver.current_url == url + "/", timeout=30,
                         what="the overview after the login")
        assert "Needs a person: 2 remediations wait for a person's approval" in page_body(driver)
        shots.save(driver, "overview.png")
        await click(driver, By.PARTIAL_LINK_TEXT, "wait for a person", "2 of 3 shown",
                     shots, "pending.png")
        text = await click(driver, By.LINK_TEXT, "shop-orders", "The exact SQL",
                            shots, "remediation.png")
        assert driver.current_url == f"{url}/ns/{namespace}/remediations/shop-orders"
        assert SQL in text
        assert driver.find_element(By.ID, "approved").text == "no"
        await click(driver, By.LINK_TEXT, "Approve", "Approve shop-orders?",
                     shots, "confirm.png")
        await click(driver, By.ID, "confirm", "Approved: the executor", shots, None)
        driver.refresh()
        await eventually(lambda: driver.find_element(By.ID, "approved").text == "yes",
                         timeout=30, what="approved: yes after a reload",
                         retry_on=(AssertionError, *REPLACING))
        shots.save(driver, "approved.png")  # the same page, now saying approved: yes
        assert object_of(cp, namespace, "shop-orders")["spec"]["approved"] is True

    with dashboard(users.as_viewer, tmp_path / "viewer", users.viewer) as seen, \
            chromium(tmp_path / "chromium-viewer", shots) as driver:
        url = await seen.started()
        driver.get(seen.login)
        await eventually(lambda: driver.current_url == url + "/", timeout=30,
                         what="the overview after the login")
        driver.get(f"{url}/ns/{namespace}/remediations/shop-returns/approve")
        text = await click(driver, By.ID, "confirm", "Approve refused", shots,
                            "refused.png")
        assert "Kubernetes API: 403 Forbidden:" in text
        assert 'cannot patch resource "remediations"' in text
    assert object_of(cp, namespace, "shop-returns")["spec"]["approved"] is False
    assert sorted(p.name for p in shots.folder.iterdir()) == [
        "approved.png", "confirm.png", "overview.png", "pending.png", "refused.png",
        "remediation.png"]
