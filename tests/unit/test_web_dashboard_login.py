"""The dashboard's login (docs/dashboard.md, "Security model"): the key, the session cookie,
which routes need it, and the whole guard on the real application in this process (no
cluster: every request here is answered before any Kubernetes API request)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from http.cookies import SimpleCookie
from typing import Any

import pytest
from aiohttp import test_utils

from startupmonkey.dashboard import kube, server
from tests.unit.test_web_dashboard_views import _remediation

# --- the pure parts -------------------------------------------------------------------------


def test_secrets_are_compared_whole_and_nothing_sent_is_no() -> None:
    key = "k" * 43
    assert server.same_secret(key, key)
    for sent in (None, "", key[:-1], key + "x", key.upper(), "é" * 43):
        assert not server.same_secret(sent, key)


def test_each_start_makes_its_own_long_secrets_kept_out_of_repr() -> None:
    one, other = server.Settings(), server.Settings()
    for settings in (one, other):
        assert len({settings.key, settings.session, settings.token}) == 3
        assert all(len(s) >= 43 for s in (settings.key, settings.session, settings.token))
        assert not {settings.key, settings.session, settings.token} & set(repr(settings).split())
        assert settings.key not in repr(settings) and settings.session not in repr(settings)
    assert one.key != other.key and one.session != other.session


def test_the_login_url_and_the_cookie_name_carry_the_port() -> None:
    assert server.login_url(8765, "abc") == "http://127.0.0.1:8765/login?key=abc"
    assert server.cookie_name(8765) != server.cookie_name(8766)


def test_only_the_login_and_the_stylesheet_are_answered_without_the_cookie() -> None:
    assert not server.needs_login("login")
    assert not server.needs_login("static")
    for route in (None, "", "overview", "submit", "Login"):
        assert server.needs_login(route), route


def test_the_static_folder_holds_only_the_public_stylesheet() -> None:
    # It is answered without the cookie: nothing else may be put there.
    assert sorted(p.name for p in (server.HERE / "static").iterdir()) == ["dashboard.css",
                                                                          "live.js"]


def test_every_file_the_dashboard_serves_is_in_the_package_data() -> None:
    # A file left out of pyproject.toml's package-data is missing from a wheel install
    # (the editable install of the tests would not notice).
    import fnmatch
    import tomllib

    pyproject = tomllib.loads((server.HERE.parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["startupmonkey.dashboard"]
    for folder in ("static", "templates"):
        for path in (server.HERE / folder).iterdir():
            name = f"{folder}/{path.name}"
            assert any(fnmatch.fnmatch(name, glob) for glob in globs), name


def test_the_again_link_is_a_get_of_the_dashboards_own_address_only() -> None:
    assert server.again_link("GET", "/ns/a/remediations/b") == "/ns/a/remediations/b"
    assert server.again_link("GET", "/remediations?state=x") == "/remediations?state=x"
    for method, path in (("POST", "/ns/a/remediations/b/approve"), ("GET", "//evil.example/"),
                         ("GET", "/\\evil.example/"), ("GET", "http://evil.example/"),
                         ("GET", "")):
        assert server.again_link(method, path) == "", (method, path)


# --- the guard on the real application ------------------------------------------------------

@pytest.fixture
async def app() -> AsyncIterator[tuple[test_utils.TestClient, server.Settings]]:
    settings = server.Settings()
    client = test_utils.TestClient(test_utils.TestServer(server.make_app(settings),
                                                         host="127.0.0.1"))
    await client.start_server()
    settings.port = client.port
    try:
        yield client, settings
    finally:
        await client.close()


def _set_cookie(headers: Mapping[str, str]) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    for header in headers.getall("Set-Cookie", []):  # type: ignore[attr-defined]
        cookie.load(header)
    return cookie


async def test_without_the_cookie_every_page_and_form_is_401_and_says_where_to_log_in(
        app: tuple[test_utils.TestClient, server.Settings]) -> None:
    client, settings = app
    for method, path in (("GET", "/"), ("GET", "/remediations"),
                         ("GET", "/ns/a/remediations/b"), ("GET", "/ns/a/remediations/b/approve"),
                         ("POST", "/ns/a/remediations/b/approve"), ("GET", "/no-such-page")):
        data = {"csrf": settings.token} if method == "POST" else None
        async with client.request(method, path, data=data) as answer:
            text = await answer.text()
            assert answer.status == 401, (method, path, answer.status)
            assert "login address printed in the terminal" in text
            assert settings.key not in text and settings.session not in text
            assert settings.token not in text
            assert "Set-Cookie" not in answer.headers
            assert answer.headers["X-Frame-Options"] == "DENY"
            assert answer.headers[server.LOGIN_HEADER] == "required"  # live pages read it
    async with client.get("/static/dashboard.css") as answer:
        assert answer.status == 200
    async with client.get("/login", headers={"Host": "evil.example"}) as answer:
        assert answer.status == 421


async def test_a_wrong_key_is_401_and_sets_no_cookie(
        app: tuple[test_utils.TestClient, server.Settings]) -> None:
    client, settings = app
    for query in ("", "?key=", f"?key={settings.key[:-1]}", f"?key={settings.session}",
                  f"?key={settings.token}"):
        async with client.get("/login" + query, allow_redirects=False) as answer:
            # (the status alone: the answer's repr names the URL, and so the key sent)
            status, text = answer.status, await answer.text()
            set_cookie = answer.headers.getall("Set-Cookie", [])
        assert status == 401
        assert "not this dashboard" in text
        assert set_cookie == []
        assert settings.key not in text and settings.session not in text
    assert len(client.session.cookie_jar) == 0
    async with client.get("/no-such-page") as answer:
        assert answer.status == 401


async def test_the_key_sets_a_strict_httponly_session_cookie_that_opens_the_rest(
        app: tuple[test_utils.TestClient, server.Settings]) -> None:
    client, settings = app
    async with client.get(f"/login?key={settings.key}", allow_redirects=False) as answer:
        status, headers = answer.status, answer.headers
        (morsel,) = _set_cookie(headers).values()
    assert status == 303
    assert headers["Location"] == "/"
    assert headers["Cache-Control"] == "no-store"
    assert morsel.key == server.cookie_name(settings.port)
    assert morsel.value == settings.session and morsel.value != settings.key
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict" and morsel["path"] == "/"
    # The cookie is kept by the client: a page that needs it is now past the guard (no such
    # remediation action: 404 from the handler, before any API request).
    async with client.get("/ns/a/remediations/b/nothing") as answer:
        assert answer.status == 404
    async with client.post("/ns/a/remediations/b/nothing", data={"csrf": "x"},
                           headers={"Origin": "https://evil.example"}) as answer:
        assert answer.status == 403  # the Origin check stays, behind the cookie
    # The URL may be opened again while the dashboard runs: the same session cookie.
    client.session.cookie_jar.clear()
    async with client.get(f"/login?key={settings.key}", allow_redirects=False) as answer:
        again = _set_cookie(answer.headers)
    assert [m.value == settings.session for m in again.values()] == [True]
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({server.cookie_name(settings.port): settings.key})
    async with client.get("/ns/a/remediations/b/nothing") as answer:
        assert answer.status == 401  # the key is not a session


def test_the_login_page_names_no_secret_and_is_well_formed() -> None:
    settings = server.Settings(port=8765)
    env = server.environment()
    for wrong, again in ((True, ""), (False, "/ns/a/remediations/b")):
        page = server.page(env, "login.html", settings, wrong=wrong, again=again, port=8765)
        assert "http://127.0.0.1:8765/login?key=&#8230;" in page
        assert not re.search(r"key=[A-Za-z0-9_-]", page)
        assert settings.key not in page and settings.token not in page
        assert ('href="/ns/a/remediations/b"' in page) == bool(again)


# --- who acts, as each mode's pages say it --------------------------------------------------

class _Standalone:
    """A standalone backend's face (the executor API replaced): its rights, one Remediation."""

    rights = ("the executor API of `startupmonkey run` at unix:///tmp/sm/executor.sock, with "
              "the rights of whoever may open its socket")

    def get_remediation(self, namespace: str, name: str, follow: bool = True
                        ) -> tuple[dict[str, Any], str]:
        return _remediation(name), ""

    def list_objects(self, plural: str, namespace: str | None) -> Any:
        raise AssertionError("not asked")

    act = follower = list_objects


async def _confirmation(settings: server.Settings, source: Any = None) -> str:
    """The approve confirmation page of a dashboard serving ``source``, its text on one line."""
    http = test_utils.TestClient(test_utils.TestServer(server.make_app(settings, source),
                                                       host="127.0.0.1"))
    await http.start_server()
    settings.port = http.port
    try:
        async with http.get(f"/login?key={settings.key}", allow_redirects=False) as answer:
            assert answer.status == 303
        async with http.get("/ns/shop-ns/remediations/shop-0123456789/approve") as answer:
            text = await answer.text()
            assert answer.status == 200, text
    finally:
        await http.close()
    return re.sub(r"\s+", " ", text)


async def test_the_local_mode_says_your_kubeconfigs_user_acts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "get_remediation", lambda namespace, name, follow=True,
                        **_: (_remediation(name), ""))
    page = await _confirmation(server.Settings())
    assert "Every namespace you may list; with your kubeconfig, your rights." in page
    assert "It is done with your kubeconfig's user and its rights, and recorded under that " \
           "user's name." in page
    assert "executor" not in page.split("<main>")[0]


async def test_the_standalone_mode_says_the_executor_records_who_asked() -> None:
    page = await _confirmation(server.Settings(namespace="shop-ns"), _Standalone())
    assert f"Namespace shop-ns; with {_Standalone.rights}." in page
    assert "kubeconfig" not in page and "your rights" not in page
    assert 'records who asked as it knows them: "local user &lt;uid&gt;" (whoever opened its ' \
           'socket) or "token-file holder" (where it asks for a token).' in page


def test_the_mode_is_the_backends() -> None:
    assert server.mode_of(server.Settings(), kube.KubeBackend()) == "local"
    assert server.mode_of(server.Settings(), _Standalone()) == "standalone"  # type: ignore[arg-type]
    assert server.mode_of(server.Settings(in_cluster=True), kube.KubeBackend()) == "in-cluster"
