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
import threading
from collections.abc import AsyncIterator, Mapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import hypothesis.strategies as st
import kubernetes.client
import pytest
from aiohttp import test_utils
from kubernetes.client.exceptions import ApiException

from startupmonkey import client as cli_client
from startupmonkey.dashboard import incluster, kube, server
from tests.support.eventually import eventually

GOOD, DENIED = "good." + "a" * 40, "denied-token-0123456789"
#: Let in only in its own namespace (a ServiceAccount refused cluster-wide), and a token the
#: API server stops accepting after the login (its first list is answered 401).
NARROWED, REVOKED = "narrowed-token-0123456789", "revoked-token-0123456789"


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


def _of(user: str, expires: float = float("inf")) -> server.Session:
    return server.Session(user, kube.KubeBackend(), expires)


def test_sessions_expire_and_end() -> None:
    clock = Clock()
    sessions = server.Sessions(limit=2, clock=clock)
    first = sessions.add(_session(clock.now + 10))
    second = sessions.add(_session(clock.now + 20))
    assert first and second and first != second
    assert "alice" not in repr(sessions._by_digest.keys()) and first not in repr(
        sessions._by_digest)
    clock.now += 10
    assert sessions.get(first) is None  # expired
    sessions.end(second)
    assert sessions.get(second) is None and len(sessions) == 0


def test_a_full_table_ends_the_least_recently_used_session_not_the_new_login() -> None:
    sessions = server.Sessions(limit=3, per_user=10)
    old, used, other = (sessions.add(_of(user)) for user in ("ann", "bea", "cid"))
    kept = {key: sessions.get(key) for key in (old, used, other)}
    assert sessions.get(used) is not None and sessions.get(other) is not None  # old: LRU
    new = sessions.add(_of("dan"))
    assert sessions.get(new) is not None and len(sessions) == 3
    assert sessions.get(old) is None  # the least recently used made room
    ended = kept[old]
    assert ended is not None and ended.ended == server.EVICTED
    assert sessions.get(used) is not None and sessions.get(other) is not None


def test_one_user_holds_at_most_its_own_share_of_sessions() -> None:
    sessions = server.Sessions(limit=1000, per_user=3)
    mallory = [sessions.add(_of("mallory")) for _ in range(3)]
    bob = sessions.add(_of("bob"))
    assert sessions.get(mallory[0]) is not None  # now the most recently used of hers
    fourth = sessions.add(_of("mallory"))
    assert len(sessions) == 4 and sessions.get(fourth) is not None
    assert sessions.get(mallory[1]) is None  # her least recently used ended
    assert sessions.get(mallory[0]) is not None and sessions.get(bob) is not None
    for _ in range(2 * server.MAX_SESSIONS):  # one valid token, logged in again and again
        sessions.add(_of("mallory"))
    assert len(sessions) == 4 and sessions.get(bob) is not None


def test_expired_sessions_and_their_tokens_are_dropped_at_any_lookup() -> None:
    clock = Clock()
    sessions = server.Sessions(clock=clock)
    for user in ("alice", "bob"):
        sessions.add(server.Session(user, kube.KubeBackend(cli_client.Credentials(
            "https://127.0.0.1:6443", None, f"{user}-token")), clock.now + 10))
    clock.now += 10
    assert sessions.get("x" * 43) is None
    assert len(sessions) == 0  # not kept (with their tokens) until the next login


def test_same_origin_is_the_requests_own_scheme_and_host() -> None:
    assert server.same_origin("https://sm.example:8443", "https", "sm.example:8443")
    assert server.same_origin("https://SM.example/ns/x", "https", "sm.example")
    for sent in (None, "", "null", "http://sm.example", "https://evil.example",
                 "https://sm.example.evil.example", "https://sm.example:444", "//sm.example",
                 "https://[::1"):
        assert not server.same_origin(sent, "https", "sm.example"), sent


def test_credentials_go_the_way_of_the_dashboards_own_configuration() -> None:
    own = kubernetes.client.Configuration()
    own.host, own.ssl_ca_cert = "https://10.0.0.1:443", "/ca.crt"
    own.tls_server_name = "kubernetes.default.svc"
    own.proxy, own.no_proxy = "http://proxy.example:3128", "10.0.0.0/8"
    own.proxy_headers = {"proxy-authorization": "Basic c2VjcmV0"}
    creds = incluster.credentials(own, "secret-token", "shop")
    assert "c2VjcmV0" not in repr(creds) and "secret-token" not in repr(creds)
    api = creds.api_client()
    try:
        config = api.configuration
        assert config.tls_server_name == "kubernetes.default.svc"
        assert (config.proxy, config.no_proxy) == ("http://proxy.example:3128", "10.0.0.0/8")
        assert config.proxy_headers == {"proxy-authorization": "Basic c2VjcmV0"}
    finally:
        api.close()
    plain = incluster.credentials(kubernetes.client.Configuration(), "t", "shop")
    assert (plain.tls_server_name, plain.proxy, plain.no_proxy, plain.proxy_headers) == (
        None, None, None, None)


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


class FakeWatch:
    """A session's watch (kube.Watch replaced): which token it follows with, a thread alive
    until it is stopped, and ``deliver`` to hand the stream a change."""

    made: list[FakeWatch]

    def __init__(self, plural: str, namespace: str | None, name: str, since: str,
                 deliver: Any, credentials: cli_client.Credentials | None = None) -> None:
        self.deliver = deliver
        self.token = credentials.token if credentials else ""
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.stopping.wait, daemon=True)
        FakeWatch.made.append(self)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()


@pytest.fixture
async def app(monkeypatch: pytest.MonkeyPatch
              ) -> AsyncIterator[tuple[test_utils.TestClient, Asked]]:
    """The in-cluster app over plain HTTP in this process (the TLS is main's, tested in the
    e2e tier), with the reviews, the API server's list, get and actions and the watches
    replaced; what the list was asked with is recorded (plural, namespace, the token), and
    each action as ("act", command, the token). Logins per address are not limited here
    (test_logins_from_one_address_are_limited puts the limit back)."""
    def review(own: Any, token: str, scope: str | None) -> incluster.Login:
        if token in (GOOD, REVOKED) or token.startswith("user-"):
            name = token.split("-")[1] if token.startswith("user-") else "alice"
            return incluster.Login(incluster.User(name), "shop")
        if token == NARROWED:
            return incluster.Login(incluster.User("system:serviceaccount:shop:bot"), "shop",
                                   narrowed=True)
        if token == DENIED:
            raise incluster.Refusal(403, "alice may not list remediations.startupmonkey.dev")
        raise incluster.Refusal(401, "The API server did not accept this token: invalid")

    asked: Asked = []

    def list_objects(plural: str, namespace: str | None,
                     credentials: cli_client.Credentials | None = None) -> kube.Listing:
        token = credentials.token if credentials else ""
        asked.append((plural, namespace, token))
        if token == REVOKED:
            raise ApiException(status=401, reason="Unauthorized")
        return kube.Listing([], namespace=namespace)

    def act(command: str, namespace: str, name: str, sql_hash: str | None, reason: str,
            credentials: cli_client.Credentials | None = None) -> None:
        asked.append(("act", command, credentials.token if credentials else ""))

    FakeWatch.made = []
    monkeypatch.setattr(incluster, "_review", review)
    monkeypatch.setattr(kube, "list_objects", list_objects)
    monkeypatch.setattr(kube, "act", act)
    monkeypatch.setattr(kube, "Watch", FakeWatch)
    monkeypatch.setattr(server, "PURGE_SECONDS", 0.05)
    own = kubernetes.client.Configuration()
    own.host, own.ssl_ca_cert = "https://127.0.0.1:6443", "/ca.crt"
    settings = server.Settings(in_cluster=True)
    built = incluster.make_app(settings, own)
    built[incluster.RATE].burst = 10**6
    test = test_utils.TestClient(test_utils.TestServer(built, host="127.0.0.1"))
    await test.start_server()
    try:
        yield test, asked
    finally:
        for watch in FakeWatch.made:
            watch.stop()
        await test.close()


def _cookies(headers: Mapping[str, str]) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    for header in headers.getall("Set-Cookie", []):  # type: ignore[attr-defined]
        cookie.load(header)
    return cookie


def _origin(test: test_utils.TestClient) -> dict[str, str]:
    return {"Origin": f"http://127.0.0.1:{test.port}"}


async def _log_in(test: test_utils.TestClient, token: str = GOOD,
                  cookie: str = "") -> str:
    headers = {**_origin(test), **({"Cookie": f"{server.SESSION_COOKIE}={cookie}"}
                                   if cookie else {})}
    async with test.post("/login", data={"token": token}, headers=headers,
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


# --- live streams belong to their session ---------------------------------------------------

def _cookie(session_id: str) -> dict[str, str]:
    return {"Cookie": f"{server.SESSION_COOKIE}={session_id}"}


async def _next_event(answer: Any) -> tuple[str, dict[str, Any]]:
    """The next event on a stream (comments skipped), waited for 10 s at most."""
    name = ""
    async with asyncio.timeout(10):
        while True:
            line = (await answer.content.readline()).decode()
            assert line, "the stream ended"
            if line.startswith("event: "):
                name = line.removeprefix("event: ").strip()
            elif line.startswith("data: "):
                return name, json.loads(line.removeprefix("data: "))


async def _ends(answer: Any) -> None:
    """The stream is closed by the dashboard (waited for 10 s at most)."""
    async with asyncio.timeout(10):
        while await answer.content.readline():
            pass


async def _stream(test: test_utils.TestClient, session_id: str) -> Any:
    answer = await test.get("/live?remediations=1", headers=_cookie(session_id))
    assert answer.status == 200, await answer.text()
    return answer


async def _following(count: int) -> list[FakeWatch]:
    """Wait until ``count`` watches were started; them."""
    def started() -> list[FakeWatch]:
        assert len(FakeWatch.made) >= count
        assert all(w.thread.is_alive() or w.stopping.is_set() for w in FakeWatch.made)
        return FakeWatch.made

    return await eventually(started, timeout=10, what=f"{count} watches started")


async def test_logging_out_ends_the_sessions_live_pages_and_their_watches(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, _ = app
    session_id = await _log_in(test)
    async with test.get("/", headers=_cookie(session_id)) as answer:
        csrf = re.findall(r'name="csrf" value="([^"]+)"', await answer.text())[0]
    stream = await _stream(test, session_id)
    try:
        (watch,) = await _following(1)
        assert watch.token == GOOD
        watch.deliver(kube.Change("changed", "5", "shop-orders"))
        assert await _next_event(stream) == ("changed", {"names": "shop-orders"})
        async with test.post("/logout", data={"csrf": csrf},
                             headers={**_cookie(session_id), **_origin(test)},
                             allow_redirects=False) as answer:
            assert answer.status == 303
        watch.deliver(kube.Change("changed", "6", "shop-orders"))  # (a late one: not sent)
        assert await _next_event(stream) == ("ended", {"reason": server.LOGGED_OUT,
                                                       "then": "stop"})
        await _ends(stream)
        assert watch.stopping.is_set()  # no more requests with the token
    finally:
        stream.close()


async def test_an_expired_session_ends_its_live_pages_at_the_next_event(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, _ = app
    sessions = test.server.app[server.SESSIONS]
    session_id = await _log_in(test)
    stream = await _stream(test, session_id)
    try:
        (watch,) = await _following(1)
        session = sessions.get(session_id)
        assert session is not None
        # Gone from the table without its streams being told (the stream's own check).
        sessions._by_digest.clear()
        session.expires = 0.0
        watch.deliver(kube.Change("changed", "5", "shop-orders"))
        assert await _next_event(stream) == ("ended", {"reason": server.EXPIRED,
                                                       "then": "stop"})
        await _ends(stream)
        assert watch.stopping.is_set()
    finally:
        stream.close()


async def test_expired_sessions_are_purged_and_their_pages_ended_without_any_request(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, _ = app
    sessions = test.server.app[server.SESSIONS]
    session_id = await _log_in(test)
    stream = await _stream(test, session_id)
    try:
        (watch,) = await _following(1)
        clock = Clock()
        sessions.clock = clock
        clock.now = 10.0**12  # every session expired; nothing asked from here on
        assert await _next_event(stream) == ("ended", {"reason": server.EXPIRED,
                                                       "then": "stop"})
        assert watch.stopping.is_set() and len(sessions) == 0
    finally:
        stream.close()


async def test_a_401_from_the_api_server_ends_the_session_and_its_live_pages(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, asked = app
    sessions = test.server.app[server.SESSIONS]
    session_id = await _log_in(test, REVOKED)
    other = await _log_in(test)
    stream = await _stream(test, session_id)
    try:
        (watch,) = await _following(1)
        async with test.get("/remediations", headers=_cookie(session_id)) as answer:
            assert answer.status == 401
            assert "401" in await answer.text()
            assert server.LOGIN_HEADER not in answer.headers  # the API server's page
        assert await _next_event(stream) == ("ended", {"reason": server.REFUSED,
                                                       "then": "stop"})
        assert watch.stopping.is_set()
        asked.clear()
        async with test.get("/remediations", headers=_cookie(session_id)) as answer:
            assert answer.status == 401
            assert answer.headers[server.LOGIN_HEADER] == "required"  # log in again
        assert asked == []  # the token is not used again
        assert len(sessions) == 1 and sessions.get(other) is not None
    finally:
        stream.close()


async def test_one_session_follows_at_most_four_pages_and_leaves_room_for_others(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, _ = app
    assert (server.MAX_LIVE, server.MAX_WATCH_THREADS) == (16, 32)  # local: as before
    assert server._limits(server.Settings()) == (16, 32)
    assert server._limits(server.Settings(in_cluster=True)) == (
        server.MAX_LIVE_IN_CLUSTER, server.MAX_WATCH_THREADS_IN_CLUSTER) == (64, 128)
    mallory = await _log_in(test, "user-mallory")
    streams = [await _stream(test, mallory) for _ in range(server.MAX_LIVE_PER_SESSION)]
    try:
        await _following(server.MAX_LIVE_PER_SESSION)
        streams.append(await _stream(test, mallory))  # one more: her oldest ends
        assert await _next_event(streams[0]) == ("ended", {"reason": server.LIVE_REPLACED,
                                                           "then": "stop"})
        watches = await _following(server.MAX_LIVE_PER_SESSION + 1)
        assert watches[0].stopping.is_set()
        assert not any(w.stopping.is_set() for w in watches[1:])
        assert len(test.server.app[server.LIVE].queues) == server.MAX_LIVE_PER_SESSION
        bob = await _log_in(test, "user-bob")
        streams.append(await _stream(test, bob))
        assert (await _following(server.MAX_LIVE_PER_SESSION + 2))[-1].token == "user-bob"
    finally:
        for stream in streams:
            stream.close()


# --- logins: one per browser, bounded -------------------------------------------------------

async def test_a_new_login_in_a_browser_ends_the_session_its_cookie_had(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, _ = app
    sessions = test.server.app[server.SESSIONS]
    alice = await _log_in(test)
    bob = await _log_in(test, "user-bob", cookie=alice)
    async with test.get("/", headers=_cookie(alice)) as answer:
        assert answer.status == 401
    async with test.get("/", headers=_cookie(bob)) as answer:
        assert answer.status == 200
    assert len(sessions) == 1


async def test_at_most_four_logins_are_reviewed_at_once_and_sixteen_wait(
        app: tuple[test_utils.TestClient, Asked], monkeypatch: pytest.MonkeyPatch) -> None:
    test, _ = app
    lock, inside, most = threading.Lock(), [0], [0]
    go_on = threading.Event()

    def slow_review(own: Any, token: str, scope: str | None) -> incluster.Login:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            assert go_on.wait(30)
            return incluster.Login(incluster.User(token.split("-")[1]), "shop")
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(incluster, "_review", slow_review)
    reviews = test.server.app[incluster.REVIEWS]

    async def post(token: str) -> tuple[int, str]:
        async with test.post("/login", data={"token": token}, headers=_origin(test),
                             allow_redirects=False) as answer:
            return answer.status, answer.headers.get("Retry-After", "")

    waiting = incluster.MAX_REVIEWS + incluster.MAX_WAITING
    logins = [asyncio.create_task(post(f"user-u{n}-token")) for n in range(waiting)]
    try:
        def queued() -> bool:  # four in review, sixteen waiting their turn
            assert inside[0] >= incluster.MAX_REVIEWS
            assert reviews.waiting >= incluster.MAX_WAITING
            return True

        await eventually(queued, timeout=10, what="the logins in review and waiting")
        assert inside[0] == incluster.MAX_REVIEWS
        async with asyncio.timeout(10):  # one more: refused at once, not queued
            status, retry = await post("user-late-token")
        assert status == 503 and int(retry) > 0
    finally:
        go_on.set()
    assert [status for status, _ in await asyncio.gather(*logins)] == [303] * waiting
    assert most[0] == incluster.MAX_REVIEWS


async def test_logins_from_one_address_are_limited(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, _ = app
    test.server.app[incluster.RATE].burst = incluster.LOGINS_PER_MINUTE
    statuses = []
    for n in range(incluster.LOGINS_PER_MINUTE + 1):
        async with test.post("/login", data={"token": f"wrong-{n}"}, headers=_origin(test),
                             allow_redirects=False) as answer:
            statuses.append((answer.status, answer.headers.get("Retry-After")))
    assert statuses[:-1] == [(401, None)] * incluster.LOGINS_PER_MINUTE
    status, retry = statuses[-1]
    assert status == 429 and retry is not None and 1 <= int(retry) <= 60


def test_the_login_rate_refills_and_remembers_a_bounded_number_of_addresses() -> None:
    clock = Clock()
    rate = incluster.LoginRate(per_minute=10, burst=10, addresses=100, clock=clock)
    assert [rate.take("a") for _ in range(10)] == [0.0] * 10
    assert rate.take("a") == pytest.approx(6.0)  # one more each 6 s
    assert rate.take("b") == 0.0  # another address has its own
    clock.now += 6
    assert rate.take("a") == 0.0 and rate.take("a") > 0
    for n in range(1000):
        rate.take(f"10.0.{n // 256}.{n % 256}")
    assert len(rate) <= 100


async def test_a_login_body_that_is_not_the_form_is_415(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, asked = app
    upload = aiohttp.FormData()
    upload.add_field("token", GOOD.encode(), filename="token.bin")
    upload.add_field("pad", b"y" * 100_000, filename="pad.bin")
    for body in (upload, json.dumps({"token": GOOD})):
        async with test.post("/login", data=body, headers=_origin(test),
                             allow_redirects=False) as answer:
            assert answer.status == 415
            assert answer.headers.getall("Set-Cookie", []) == []
    assert asked == []


# --- the form token of approve, reject and roll back ---------------------------------------

async def test_an_action_without_this_sessions_form_token_is_403_and_does_nothing(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, asked = app
    alice, bob = await _log_in(test), await _log_in(test, "user-bob")
    tokens = {}
    for name, session_id in (("alice", alice), ("bob", bob)):
        async with test.get("/", headers=_cookie(session_id)) as answer:
            tokens[name] = re.findall(r'name="csrf" value="([^"]+)"', await answer.text())[0]
    assert tokens["alice"] != tokens["bob"]
    for action in ("approve", "reject", "rollback"):
        for form in ({"sql_hash": "abc"}, {"csrf": "", "sql_hash": "abc"},
                     {"csrf": "x" * 43, "sql_hash": "abc"},
                     {"csrf": tokens["bob"], "sql_hash": "abc"},
                     {"csrf": server.Settings().token}):
            async with test.post(f"/ns/shop/remediations/shop-orders/{action}", data=form,
                                 headers={**_cookie(alice), **_origin(test)},
                                 allow_redirects=False) as answer:
                assert answer.status == 403, (action, form.keys())
                assert "did not come from this dashboard" in await answer.text()
    assert [a for a in asked if a[0] == "act"] == []
    async with test.post("/ns/shop/remediations/shop-orders/reject",
                         data={"csrf": tokens["alice"], "reason": "no"},
                         headers={**_cookie(alice), **_origin(test)},
                         allow_redirects=False) as answer:
        assert answer.status == 303  # its own token: done, with its own credentials
    assert [a for a in asked if a[0] == "act"] == [("act", "reject", GOOD)]


# --- who acts, as the pages say it ----------------------------------------------------------

async def test_a_session_let_in_only_in_its_own_namespace_says_that_namespace(
        app: tuple[test_utils.TestClient, Asked]) -> None:
    test, _ = app
    for token, said in ((NARROWED, "Namespace shop; as system:serviceaccount:shop:bot"),
                        (GOOD, "Every namespace you may list; as alice")):
        async with test.get("/", headers=_cookie(await _log_in(test, token))) as answer:
            page = re.sub(r"\s+", " ", await answer.text())
        assert f"{said}, with your own token and rights." in page, token


def test_a_token_the_api_server_refuses_is_told_plainly_and_its_detail_logged_hidden(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    token = "eyJ.secret-token.sig"
    asked: dict[str, Any] = {}

    class Answer:
        data = json.dumps({"spec": {"token": token}, "status": {
            "authenticated": False,
            "error": f"[invalid bearer token {token}, audiences [\"https://vault\"]]"}}).encode()
        released = False

        def release_conn(self) -> None:
            Answer.released = True

    class Authentication:
        def __init__(self, api: Any) -> None:
            pass

        def create_token_review(self, body: Any, **given: Any) -> Answer:
            asked.update(given)
            return Answer()

    monkeypatch.setattr(kubernetes.client, "AuthenticationV1Api", Authentication)
    with caplog.at_level("DEBUG"), pytest.raises(incluster.Refusal) as refused:
        incluster._who(None, token)  # type: ignore[arg-type]
    assert asked["_preload_content"] is False and Answer.released
    assert refused.value.status == 401
    assert refused.value.reason == incluster.NOT_ACCEPTED  # not the API server's detail
    assert "vault" not in refused.value.reason and token not in refused.value.reason
    assert "vault" in caplog.text and "<token>" in caplog.text and token not in caplog.text


async def test_the_in_cluster_confirmation_names_the_logged_in_user(
        app: tuple[test_utils.TestClient, Asked], monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_web_dashboard_views import _remediation

    test, _ = app
    monkeypatch.setattr(kube, "get_remediation", lambda namespace, name, follow=True,
                        **_: (_remediation(name), ""))
    async with test.get("/ns/shop-ns/remediations/shop-0123456789/approve",
                        headers=_cookie(await _log_in(test))) as answer:
        page = re.sub(r"\s+", " ", await answer.text())
        assert answer.status == 200, page
    assert "It is done with the rights of the user you logged in as (alice), and recorded " \
           "under that name." in page
    assert "kubeconfig" not in page and "executor records" not in page
