"""The in-cluster dashboard's login and sessions (docs/dashboard.md, "In the cluster"), in this
process with the API server's reviews replaced: the token form's input and the session cookie
are what comes from outside (property tests), the guard's in-cluster rules on the real
application, and every page of a session asked with that user's own token. The real reviews and
the real API server: tests/e2e/test_dashboard_incluster_kube.py."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Mapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import kubernetes.client
import pytest
from aiohttp import test_utils

from startupmonkey import client as cli_client
from startupmonkey.dashboard import incluster, kube, server

GOOD, DENIED = "good." + "a" * 40, "denied-token-0123456789"


# --- the pure parts -------------------------------------------------------------------------

@hypothesis.given(st.text(max_size=300))
def test_the_token_field_is_a_token_or_nothing(sent: str) -> None:
    token = incluster.read_token(sent)
    if token is not None:
        assert incluster.TOKEN.fullmatch(token)
        assert token in sent
        assert not any(c.isspace() for c in token)


@hypothesis.given(st.one_of(st.none(), st.integers(), st.binary(), st.text(max_size=50)))
def test_anything_not_text_is_no_token(sent: object) -> None:
    token = incluster.read_token(sent)
    assert token is None or isinstance(sent, str)


def test_the_token_field_takes_a_pasted_bearer_header_and_refuses_blanks_inside() -> None:
    assert incluster.read_token("  Bearer abc.def.ghi\n") == "abc.def.ghi"
    assert incluster.read_token("abc def") is None
    assert incluster.read_token("abc\r\nX-Injected: 1") is None
    assert incluster.read_token("") is None
    assert incluster.read_token("x" * (incluster.MAX_TOKEN_CHARS + 1)) is None


def _jwt(claims: Any) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.c2lnbmF0dXJl"


@hypothesis.given(st.text(max_size=200))
def test_a_token_expiry_is_read_from_anything_without_an_exception(token: str) -> None:
    found = incluster.token_expiry(token)
    assert found is None or isinstance(found, float)


@hypothesis.given(st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False)
                               | st.integers() | st.text(max_size=5),
                               lambda inner: st.lists(inner, max_size=3)
                               | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                               max_leaves=10))
def test_a_jwt_with_any_claims_gives_an_expiry_only_from_a_number(exp: Any) -> None:
    found = incluster.token_expiry(_jwt({"exp": exp}))
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        assert found is None
    else:
        assert found == float(exp)


def test_a_session_lasts_8_hours_or_until_the_token_expires() -> None:
    assert incluster.session_seconds("opaque", 1000.0) == server.SESSION_SECONDS
    assert incluster.session_seconds(_jwt({"exp": 1600}), 1000.0) == 600.0
    assert incluster.session_seconds(_jwt({"exp": 10**10}), 1000.0) == server.SESSION_SECONDS
    assert incluster.session_seconds(_jwt({"exp": 500}), 1000.0) == 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _session(expires: float) -> server.Session:
    return server.Session("alice", kube.KubeBackend(), expires)


@hypothesis.given(st.one_of(st.none(), st.text(max_size=100),
                            st.from_regex(server.SESSION_ID, fullmatch=True)))
def test_a_cookie_value_from_outside_opens_no_session_but_its_own(sent: str | None) -> None:
    sessions = server.Sessions()
    real = sessions.add(_session(float("inf")))
    assert real is not None
    found = sessions.get(sent)
    assert (found is not None) == (sent == real)
    sessions.end(sent)  # ending anything at all never raises
    assert (sessions.get(real) is None) == (sent == real)


def test_sessions_expire_are_capped_and_end() -> None:
    clock = Clock()
    sessions = server.Sessions(limit=2, clock=clock)
    first = sessions.add(_session(clock.now + 10))
    second = sessions.add(_session(clock.now + 20))
    assert first and second and first != second
    assert sessions.add(_session(clock.now + 30)) is None  # full
    assert "alice" not in repr(sessions._by_digest.keys()) and first not in repr(
        sessions._by_digest)
    clock.now += 10
    assert sessions.get(first) is None  # expired
    assert sessions.add(_session(clock.now + 30)) is not None  # room again
    sessions.end(second)
    assert sessions.get(second) is None


def test_same_origin_is_the_requests_own_scheme_and_host() -> None:
    assert server.same_origin("https://sm.example:8443", "https", "sm.example:8443")
    assert server.same_origin("https://SM.example/ns/x", "https", "sm.example")
    for sent in (None, "", "null", "http://sm.example", "https://evil.example",
                 "https://sm.example.evil.example", "https://sm.example:444", "//sm.example",
                 "https://[::1"):
        assert not server.same_origin(sent, "https", "sm.example"), sent


def test_credentials_send_only_the_users_token_and_never_show_it() -> None:
    creds = cli_client.Credentials("https://10.0.0.1:443", "/ca.crt", "secret-token", "shop")
    assert "secret-token" not in repr(creds)
    api = creds.api_client()
    try:
        config = api.configuration
        assert config.get_api_key_with_prefix("authorization") == "Bearer secret-token"
        assert config.cert_file is None and config.key_file is None and config.verify_ssl
    finally:
        api.close()
    with pytest.raises(cli_client.Refused, match="not https"):
        cli_client.Credentials("http://10.0.0.1", None, "t").api_client()
    found, namespace = cli_client._kube_client(argparse.Namespace(namespace=None,
                                                                  credentials=creds))
    found.close()
    assert namespace == "shop"


def test_without_a_readable_certificate_it_does_not_start(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    def args(**given: Any) -> argparse.Namespace:
        return argparse.Namespace(**{"tls_cert": None, "tls_key": None, "namespace": None,
                                     "port": 0, "address": "127.0.0.1", **given})

    assert incluster.main(args()) == 1
    assert "HTTPS only" in capsys.readouterr().err
    missing = tmp_path / "nope.crt"
    assert incluster.main(args(tls_cert=missing, tls_key=missing)) == 1
    err = capsys.readouterr().err
    assert "cannot use the TLS certificate" in err and len(err.strip().splitlines()) == 1
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert incluster.main(args(tls_cert=junk, tls_key=junk)) == 1
    assert "cannot use the TLS certificate" in capsys.readouterr().err


# --- the guard and the login on the real application ---------------------------------------

Asked = list[tuple[str, str | None, str]]


@pytest.fixture
async def app(monkeypatch: pytest.MonkeyPatch
              ) -> AsyncIterator[tuple[test_utils.TestClient, Asked]]:
    """The in-cluster app over plain HTTP in this process (the TLS is main's, tested in the
    e2e tier), with the reviews and the API server's list replaced; what the list was asked
    with is recorded (plural, namespace, the token)."""
    def review(own: Any, token: str, scope: str | None) -> incluster.Login:
        if token == GOOD:
            return incluster.Login(incluster.User("alice"), "shop")
        if token == DENIED:
            raise incluster.Refusal(403, "alice may not list remediations.startupmonkey.dev")
        raise incluster.Refusal(401, "The API server did not accept this token: invalid")

    asked: Asked = []

    def list_objects(plural: str, namespace: str | None,
                     credentials: cli_client.Credentials | None = None) -> kube.Listing:
        asked.append((plural, namespace, credentials.token if credentials else ""))
        return kube.Listing([], namespace=namespace)

    monkeypatch.setattr(incluster, "_review", review)
    monkeypatch.setattr(kube, "list_objects", list_objects)
    own = kubernetes.client.Configuration()
    own.host, own.ssl_ca_cert = "https://127.0.0.1:6443", "/ca.crt"
    settings = server.Settings(in_cluster=True)
    test = test_utils.TestClient(test_utils.TestServer(incluster.make_app(settings, own),
                                                       host="127.0.0.1"))
    await test.start_server()
    try:
        yield test, asked
    finally:
        await test.close()


def _cookies(headers: Mapping[str, str]) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    for header in headers.getall("Set-Cookie", []):  # type: ignore[attr-defined]
        cookie.load(header)
    return cookie


def _origin(test: test_utils.TestClient) -> dict[str, str]:
    return {"Origin": f"http://127.0.0.1:{test.port}"}


async def _log_in(test: test_utils.TestClient, token: str = GOOD) -> str:
    async with test.post("/login", data={"token": token}, headers=_origin(test),
                         allow_redirects=False) as answer:
        assert answer.status == 303, await answer.text()
        (morsel,) = _cookies(answer.headers).values()
    return morsel.value


async def test_without_a_session_every_page_is_the_token_form(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, asked = app
    for method, path in (("GET", "/"), ("GET", "/remediations"), ("GET", "/nope"),
                         ("POST", "/ns/a/remediations/b/approve"), ("POST", "/logout")):
        async with test.request(method, path, headers=_origin(test)) as answer:
            text = await answer.text()
            assert answer.status == 401, (method, path)
            assert 'type="password"' in text and 'autocomplete="off"' in text
            assert answer.headers[server.LOGIN_HEADER] == "required"
            assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
    async with test.get("/healthz") as answer:
        assert (answer.status, await answer.text()) == (200, "ok\n")
    async with test.get("/login", headers={"Host": "dashboard.shop.svc"}) as answer:
        assert answer.status == 200  # no 127.0.0.1 Host check in the cluster
    assert asked == []


async def test_a_refused_token_is_401_or_403_with_the_reason_and_no_cookie(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, _ = app
    for token, status, said in (("wrong", 401, "did not accept this token"),
                                (DENIED, 403, "may not list remediations"),
                                ("two words", 401, "not a bearer token"),
                                ("", 401, "not a bearer token")):
        async with test.post("/login", data={"token": token}, headers=_origin(test),
                             allow_redirects=False) as answer:
            text = await answer.text()
            assert answer.status == status, token
            assert said in text
            assert answer.headers.getall("Set-Cookie", []) == []
            if token:
                assert f"value=\"{token}" not in text and token not in text.split("<main>")[0]


async def test_a_login_starts_a_secure_session_whose_pages_use_the_users_token(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, asked = app
    async with test.post("/login", data={"token": "Bearer " + GOOD}, headers=_origin(test),
                         allow_redirects=False) as answer:
        assert answer.status == 303 and answer.headers["Location"] == "/"
        (morsel,) = _cookies(answer.headers).values()
    assert morsel.key == server.SESSION_COOKIE
    assert morsel["secure"] is True and morsel["httponly"] is True
    assert morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert 0 < int(morsel["max-age"]) <= server.SESSION_SECONDS
    assert server.SESSION_ID.fullmatch(morsel.value) and GOOD not in morsel.value
    cookie = {"Cookie": f"{server.SESSION_COOKIE}={morsel.value}"}
    async with test.get("/", headers=cookie) as answer:
        page = await answer.text()
        assert answer.status == 200, page
    assert "as alice, with your own token and rights" in re.sub(r"\s+", " ", page)
    assert GOOD not in page
    assert asked and all(token == GOOD for _, _, token in asked)
    csrf = re.findall(r'name="csrf" value="([^"]+)"', page)
    assert csrf and len(set(csrf)) == 1

    # A POST from another origin, or without one, is refused before anything else.
    for headers in ({"Origin": "https://evil.example"}, {"Referer": "http://evil.example/x"},
                    {}):
        async with test.post("/logout", data={"csrf": csrf[0]},
                             headers={**cookie, **headers}) as answer:
            assert answer.status == 403, headers
            assert "another site" in await answer.text()
    # The session's form token, not another's.
    other = await _log_in(test)
    async with test.post("/logout", data={"csrf": csrf[0]}, headers={
            "Cookie": f"{server.SESSION_COOKIE}={other}", **_origin(test)}) as answer:
        assert answer.status == 403
    async with test.post("/logout", data={"csrf": csrf[0]}, headers={**cookie, **_origin(test)},
                         allow_redirects=False) as answer:
        assert answer.status == 303 and answer.headers["Location"] == "/login"
        assert _cookies(answer.headers)[server.SESSION_COOKIE].value == ""
    async with test.get("/", headers=cookie) as answer:
        assert answer.status == 401  # the session ended
    async with test.get("/", headers={"Cookie": f"{server.SESSION_COOKIE}={other}"}) as answer:
        assert answer.status == 200  # another one did not


async def test_hostile_login_fields_and_cookies_are_refused_plainly(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, _ = app
    for token in ("<script>alert(1)</script>", "a\x00b", "é" * 10, "x" * 20000, "\ud7ff"):
        async with test.post("/login", data={"token": token}, headers=_origin(test)) as answer:
            text = await answer.text()
            assert answer.status == 401
            assert "<script>alert" not in text
    for value in ("", "x", "A" * 43 + "=", "../../etc", '"quoted"', "A" * 44):
        async with test.get("/", headers={"Cookie": f"{server.SESSION_COOKIE}={value}"}
                            ) as answer:
            assert answer.status == 401, value


def _refuse_every_token(own: Any, token: str, scope: str | None) -> incluster.Login:
    raise incluster.Refusal(401, "The API server did not accept this token: invalid")


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(st.text(max_size=200),
                  st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=60))
def test_any_login_form_and_cookie_from_outside_is_answered_plainly(token: str,
                                                                    cookie: str) -> None:
    """Whatever a browser posts as the token and sends as the cookie: a 401 login page, no
    cookie set, the text never echoed, never a 500."""
    async def run() -> None:
        own = kubernetes.client.Configuration()
        own.host = "https://127.0.0.1:6443"
        test = test_utils.TestClient(test_utils.TestServer(
            incluster.make_app(server.Settings(in_cluster=True), own), host="127.0.0.1"))
        await test.start_server()
        try:
            headers = {**_origin(test), "Cookie": f"{server.SESSION_COOKIE}={cookie}"}
            async with test.post("/login", data={"token": token}, headers=headers,
                                 allow_redirects=False) as answer:
                text = await answer.text()
                assert answer.status == 401
                assert answer.headers.getall("Set-Cookie", []) == []
            async with test.get("/login") as bare:
                form = await bare.text()
            stripped = token.strip()
            said = ("The API server did not accept this token: invalid That is not a bearer "
                    "token: paste the whole token, as the API server accepts it.")
            if len(stripped) >= 4 and stripped not in form + said:  # not echoed
                assert stripped not in text
            async with test.get("/", headers=headers) as answer:
                assert answer.status == 401
        finally:
            await test.close()

    original = incluster._review
    incluster._review = _refuse_every_token
    try:
        asyncio.run(run())
    finally:
        incluster._review = original
