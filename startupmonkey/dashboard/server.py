"""The dashboard's web server (aiohttp): server-rendered pages and plain HTML forms.

Local mode (the default): it listens on 127.0.0.1 and answers only requests whose ``Host`` is
127.0.0.1 or localhost on its port (a page of another site that rebinds a name to 127.0.0.1 is
refused). It answers only the browser that logged in, as Jupyter does: at start it makes a
random login key and prints one login URL (``/login?key=...``) on the terminal, and nowhere
else; that URL sets an HttpOnly, SameSite=Strict session cookie (another random value, not the
key), and every other request without it (but the public stylesheet) gets 401, so another
program or OS user on the machine cannot read a page or post a form. A POST must also carry
this process's random form token (made at start, put in every form, never in a URL or a log)
and, when the browser sends one, an ``Origin`` of the dashboard itself; every answer forbids
framing and caching. Each request is made with the user's own kubeconfig
(:mod:`startupmonkey.dashboard.kube`).

Pages update themselves while open (issue 25's live update): the overview, the list and a
Remediation's page name an event stream (``/live?...``, server-sent events) that follows a
Kubernetes watch of what they show from the version they were drawn at, with the user's own
rights; the one script (``static/live.js``, no build step) draws the page again when it says
something changed. Without JavaScript every page still reads; it just does not update itself.

In-cluster mode (``Settings.in_cluster``, served by :mod:`startupmonkey.dashboard.incluster`
over HTTPS only): no Host check (the Host is the Service's or the Ingress's name), but a POST
must carry an ``Origin`` (or ``Referer``) of the request's own scheme and Host; a user logs in
with a Kubernetes bearer token and gets a :class:`Session` (a random id in a Secure, HttpOnly,
SameSite=Strict ``__Host-`` cookie, kept in memory with an expiry, and its own form token),
which replace the login key and the process's form token; every page and action of a session
is made with that user's token (the session's own backend); answers also carry HSTS. A session
owns its live streams: when it ends (logout, expiry, a new login in its browser, the API server
refusing its token, or eviction: :class:`Sessions`) they end too, saying why, and a stream checks
its session again at each event and heartbeat.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
import markupsafe
from aiohttp import web
from pydantic import ValidationError

from startupmonkey.dashboard import backend as backends
from startupmonkey.dashboard import views
from startupmonkey.models import monitor, remediation

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
LOCAL_NAMES = ("127.0.0.1", "localhost")
#: Sent with every answer: no framing, no caching, no referrer leaving the dashboard, and
#: nothing but its own stylesheet and forms.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "script-src 'self'; connect-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: Set on the 401 that asks for the login (not on one the API server gave a page).
LOGIN_HEADER = "X-StartupMonkey-Login"
#: What the page says after an action the API server accepted.
DONE = {
    "approve": "Approved: the executor re-checks the plan and runs it.",
    "reject": "Rejection asked: the executor records it and nothing runs.",
    "rollback": "Rollback asked: the executor reverts the change.",
}


@dataclasses.dataclass
class Settings:
    """What one dashboard process serves; ``port`` is known once it listens."""

    namespace: str | None = None
    port: int = 0
    #: The form token, in every form.
    token: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(32),
                                   repr=False)
    #: The login key, printed once in the login URL.
    key: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    #: The session cookie's value, set by a login with the key (never the key itself).
    session: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(32),
                                     repr=False)
    #: Served for a cluster's users (HTTPS, token logins, a :class:`Session` each), not
    #: locally.
    in_cluster: bool = False


#: In-cluster sessions: at most this long (sooner when the token says it expires sooner),
#: at most this many at once, and at most this many of one user (a login past either ends the
#: least recently used session: of that user, else of anyone), so no one, with however many
#: logins, locks the others out.
SESSION_SECONDS = 8 * 3600
MAX_SESSIONS = 1000
MAX_SESSIONS_PER_USER = 10
#: Expired sessions (and the tokens they hold) are dropped at each lookup and this often.
PURGE_SECONDS = 60.0
#: Why a session ended, as its live pages say it (``ended``, then ``stop``).
LOGGED_OUT = "you logged out: log in again to follow this page"
EXPIRED = "your session ended (it expired): log in again to follow this page"
REPLACED = "you logged in again in this browser: reload this page"
REFUSED = "the API server no longer accepts your token: log in again"
USER_EVICTED = (f"your session ended: you opened more than {MAX_SESSIONS_PER_USER} sessions, "
                "and this one was the least recently used")
EVICTED = (f"your session ended: {MAX_SESSIONS} sessions were open, and this one was the "
           "least recently used")
#: The in-cluster session cookie: ``__Host-`` makes the browser keep it only when it was set
#: Secure, with Path=/ and no Domain, by this very host.
SESSION_COOKIE = "__Host-startupmonkey-dashboard"
#: What a session id looks like (``secrets.token_urlsafe(32)``); anything else is no session.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")
#: Sent with every in-cluster answer besides :data:`HEADERS`.
TLS_HEADERS = {"Strict-Transport-Security": "max-age=31536000"}


@dataclasses.dataclass(eq=False)
class Stream:
    """One open event stream (``/live``): its queue and the watches that feed it."""

    queue: asyncio.Queue[backends.Change]
    watches: list[backends.Follower]

    def end(self, reason: str) -> None:
        """Stop its watches now, and tell the stream to end with ``reason`` (the page then
        stops following: ``ended``, ``then: stop``)."""
        for watch in self.watches:
            watch.stop()
        self.queue.put_nowait(backends.Change("failed", reason=reason, status=401))


@dataclasses.dataclass(eq=False)
class Session:
    """One logged-in user of the in-cluster dashboard: who (as TokenReview said), the backend
    acting with that user's token, when it ends (``time.monotonic()``), its form token, the
    namespace its pages show when narrower than the dashboard's (a ServiceAccount let in
    only in its own namespace; None: the dashboard's), its open live streams, and why it
    ended ("" while open)."""

    user: str
    source: backends.Backend = dataclasses.field(repr=False)
    expires: float
    csrf: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(32),
                                  repr=False)
    namespace: str | None = None
    streams: list[Stream] = dataclasses.field(default_factory=list, repr=False)
    ended: str = ""

    def end(self, reason: str) -> None:
        """The session is over: each of its live streams ends now, saying ``reason``."""
        self.ended = self.ended or reason
        streams, self.streams = self.streams, []
        for stream in streams:
            stream.end(self.ended)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """The in-cluster sessions, in memory only (a restart logs everyone out), by the SHA-256
    of their id (the ids themselves are kept nowhere, and a lookup compares no secret), least
    recently used first. A session that ends for any reason ends its live streams."""

    def __init__(self, limit: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic,
                 per_user: int = MAX_SESSIONS_PER_USER) -> None:
        self.limit, self.clock, self.per_user = limit, clock, per_user
        self._by_digest: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._by_digest)

    def _drop(self, key: str, reason: str) -> None:
        self._by_digest.pop(key).end(reason)

    def purge(self) -> None:
        """Drop every expired session (and the token it holds), ending its streams."""
        now = self.clock()
        for key in [k for k, s in self._by_digest.items() if s.expires <= now]:
            self._drop(key, EXPIRED)

    def add(self, session: Session) -> str:
        """A new random id for ``session``. Past :attr:`per_user` sessions of its user, that
        user's least recently used one ends; past :attr:`limit` sessions, anyone's."""
        self.purge()
        mine = [k for k, s in self._by_digest.items() if s.user == session.user]
        while mine and len(mine) >= self.per_user:
            self._drop(mine.pop(0), USER_EVICTED)
        while self._by_digest and len(self._by_digest) >= self.limit:
            self._drop(next(iter(self._by_digest)), EVICTED)
        session_id = secrets.token_urlsafe(32)
        self._by_digest[_digest(session_id)] = session
        return session_id

    def get(self, session_id: str | None) -> Session | None:
        """The open session of the cookie value ``session_id`` (anything a browser sent),
        now the most recently used; None when it is not one, or has expired."""
        self.purge()
        if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
            return None
        key = _digest(session_id)
        found = self._by_digest.get(key)
        if found is not None:
            self._by_digest.move_to_end(key)
        return found

    def end(self, session_id: str | None, reason: str = LOGGED_OUT) -> None:
        """End the session of ``session_id``, if there is one (its streams say ``reason``)."""
        if isinstance(session_id, str) and SESSION_ID.fullmatch(session_id):
            key = _digest(session_id)
            if key in self._by_digest:
                self._drop(key, reason)

    def gone(self, session: Session) -> str:
        """Why ``session`` is over ("" while it is open): ended, or expired by now."""
        if not session.ended and session.expires <= self.clock():
            self.purge()
            session.end(EXPIRED)  # (purge ended it, unless it was no longer held)
        return session.ended


@dataclasses.dataclass
class LivePages:
    """The event streams open now: each one's queue (told ``stopped`` when the dashboard
    stops), and the watches started, so the process waits for their threads before it exits
    (a thread still in a TLS read while the interpreter shuts down can abort it)."""

    queues: set[asyncio.Queue[backends.Change]] = dataclasses.field(default_factory=set)
    watches: list[backends.Follower] = dataclasses.field(default_factory=list)
    #: Set on shutdown: no new stream from then on.
    closing: bool = False

    def threads(self) -> int:
        """Watch threads still running (a stopped one may still be finishing its request)."""
        self.watches = [w for w in self.watches if w.thread.is_alive()]
        return len(self.watches)

    def started(self, watch: backends.Follower) -> None:
        self.threads()
        self.watches.append(watch)
        watch.start()

    def join(self, seconds: float) -> None:
        """Stop every watch and wait, ``seconds`` at most in all, for their threads."""
        deadline = time.monotonic() + seconds
        for watch in self.watches:
            watch.stop()
        for watch in self.watches:
            watch.thread.join(max(0.0, deadline - time.monotonic()))


SETTINGS = web.AppKey("settings", Settings)
#: Which dashboard this is, as the pages word who acts: "local", "standalone", "in-cluster".
MODE = web.AppKey("mode", str)
SESSIONS = web.AppKey("sessions", Sessions)
#: The request's in-cluster session (``request[SESSION]``), set by the guard.
SESSION = web.RequestKey("session", Session)
BACKEND = web.AppKey("backend", backends.Backend)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
LIVE = web.AppKey("live", LivePages)
#: At most this many live pages at once (each holds one or two watches of the API server and
#: a thread for each), and this many watch threads (a stopped watch's thread may still be
#: opening its request, against a hung API server for minutes); one more is answered 503, and
#: its page stays as it is. In the cluster (many users): more in all, and at most
#: :data:`MAX_LIVE_PER_SESSION` of one session (its next one ends its oldest), so no one
#: holds them all.
MAX_LIVE = 16
MAX_WATCH_THREADS = 2 * MAX_LIVE
MAX_LIVE_IN_CLUSTER = 64
MAX_WATCH_THREADS_IN_CLUSTER = 2 * MAX_LIVE_IN_CLUSTER
MAX_LIVE_PER_SESSION = 4
#: What the oldest stream of a session says when a newer one takes its place.
LIVE_REPLACED = (f"this session follows at most {MAX_LIVE_PER_SESSION} pages at once, and "
                 "newer ones are open: reload this page to follow it again")
#: A comment is sent on a quiet stream this often, so a page that went away is noticed (its
#: watch stopped) within about this long, and proxies keep the connection.
HEARTBEAT_SECONDS = 15
#: On the way out, the longest wait for the watches' threads (one still connecting, say).
JOIN_SECONDS = 10.0


#: Code points HTML forbids in a document (C0 controls but tab, newline, form feed and
#: carriage return; DEL and the C1 controls; the noncharacters; lone surrogates, which UTF-8
#: cannot encode at all). Autoescaping leaves them, and
#: names, SQL and messages from a database may hold them.
FORBIDDEN_CODE_POINTS = re.compile(
    "[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"\\U{plane:04x}fffe\\U{plane:04x}ffff" for plane in range(17)) + "]")


def printable(value: Any) -> Any:
    """Every ``{{ }}`` output (Jinja's finalize): forbidden code points become U+FFFD, so the
    page stays valid HTML; markup stays markup."""
    if isinstance(value, markupsafe.Markup):
        # It was markup already, and U+FFFD for a control character adds none.
        return markupsafe.Markup(FORBIDDEN_CODE_POINTS.sub("\ufffd", value))  # noqa: S704
    if isinstance(value, str):
        return FORBIDDEN_CODE_POINTS.sub("\ufffd", value)
    return value


def environment() -> jinja2.Environment:
    """The templates, autoescaped (every page is HTML), an undefined name an error, and no
    code point HTML forbids in what they print."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, finalize=printable)
    env.globals.update(remediation_url=views.remediation_url, list_url=views.list_url,
                       when=views.when)
    return env


def host_allowed(host: str | None, port: int) -> bool:
    """Whether a request's ``Host`` names this dashboard: 127.0.0.1 or localhost, on its port."""
    return host in {f"{name}:{port}" for name in LOCAL_NAMES}


def same_origin(origin: str | None, scheme: str, host: str) -> bool:
    """In-cluster: whether a POST's ``Origin`` (or ``Referer``) is the request's own scheme
    and Host; one that was not sent is refused too (every browser sends Origin on a POST)."""
    if not isinstance(origin, str) or not host:
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme == scheme and parts.netloc.lower() == host.lower()


def origin_allowed(origin: str | None, port: int) -> bool:
    """Whether a POST's ``Origin`` (or ``Referer``) is the dashboard itself; a header the
    browser did not send is judged by the form token alone."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme == "http" and host_allowed(parts.netloc, port)


def same_secret(sent: str | None, secret: str) -> bool:
    """Whether ``sent`` is ``secret``, compared in constant time (nothing sent: no)."""
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), secret.encode())


def cookie_name(port: int) -> str:
    """The session cookie's name: with the port, since a browser keeps one set of cookies for
    127.0.0.1 whatever the port, so two dashboards do not overwrite each other's."""
    return f"startupmonkey-dashboard-{port}"


def login_url(port: int, key: str) -> str:
    """The address printed at start: opening it logs this browser in."""
    return f"http://{LOOPBACK}:{port}/login?key={key}"


#: The routes answered without the session cookie: the login itself, and the stylesheet
#: (public, the same in every copy of the package, and needed by the login page).
PUBLIC_ROUTES = ("login", "static")
#: In-cluster, also the probes' ``/healthz`` (it says "ok" and nothing else).
CLUSTER_PUBLIC_ROUTES = (*PUBLIC_ROUTES, "healthz")


def needs_login(route: str | None) -> bool:
    """Whether a request to the route named ``route`` (None: no route matched) needs the
    session cookie."""
    return route not in PUBLIC_ROUTES


def again_link(method: str, path_qs: str) -> str:
    """Where the login page's "open it again" link points: the page asked for, when that is a
    GET of one of the dashboard's own addresses (a link followed from another site arrives
    without the SameSite=Strict cookie, and the same link followed from the dashboard's own
    page carries it); else nothing."""
    if method not in ("GET", "HEAD") or not path_qs.startswith("/") \
            or path_qs[1:2] in ("/", "\\"):
        return ""
    return path_qs


def session_of(request: web.Request) -> Session | None:
    """The request's in-cluster session (None: local mode, or not logged in)."""
    return request.get(SESSION)


def form_secret(request: web.Request) -> str:
    """The form token this request's forms carry: the session's in the cluster, else the
    process's."""
    session = session_of(request)
    return session.csrf if session is not None else request.app[SETTINGS].token


def render(request: web.Request, template: str, status: int = 200,
           **context: Any) -> web.Response:
    """``template`` with ``context`` as an HTML answer."""
    session = session_of(request)
    if request.app[SETTINGS].in_cluster:  # whose rights the header names, if anyone's
        context.setdefault("user", session.user if session is not None else "")
        if session is not None and session.namespace:  # the namespace its pages show
            context.setdefault("scope", session.namespace)
    context.setdefault("rights", backend(request).rights)
    context.setdefault("mode", request.app[MODE])
    text = page(request.app[TEMPLATES], template, request.app[SETTINGS],
                csrf=form_secret(request), **context)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def page(env: jinja2.Environment, template: str, settings: Settings, csrf: str | None = None,
         **context: Any) -> str:
    """The HTML of ``template`` with ``context`` (and the form token, the scope, whose rights
    and the mode, unless ``context`` says them)."""
    context.setdefault("scope", settings.namespace or "")
    context.setdefault("rights", "")
    context.setdefault("mode", "in-cluster" if settings.in_cluster else "local")
    return env.get_template(template).render(
        csrf=settings.token if csrf is None else csrf, **context)


def _problem(request: web.Request, status: int, reason: str) -> web.Response:
    return render(request, "error.html", status=status, reason=reason)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _answer(request: web.Request, handler: Handler,
                  headers: dict[str, str]) -> web.StreamResponse:
    """The handler's answer; an HTTP error raised as the error page, a redirect raised with
    ``headers``."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect: it leaves with the same headers
            exc.headers.update(headers)
            raise
        return _problem(request, exc.status, exc.reason)


async def _cluster_guard(request: web.Request, handler: Handler,
                         route: str | None) -> web.StreamResponse:
    """In-cluster: the session (else the token login page, 401), and a POST only from the
    dashboard's own origin."""
    sessions = request.app[SESSIONS]
    session_id = request.cookies.get(SESSION_COOKIE)
    session = sessions.get(session_id)
    response: web.StreamResponse
    if route not in CLUSTER_PUBLIC_ROUTES and session is None:
        response = render(request, "token_login.html", status=401, reason="",
                          again=again_link(request.method, request.path_qs))
        response.headers[LOGIN_HEADER] = "required"
        return response
    if request.method == "POST" and not same_origin(
            request.headers.get("Origin", request.headers.get("Referer")),
            request.scheme, request.host):
        return _problem(request, 403, "Refused: this form was sent from another site.")
    if session is not None:
        request[SESSION] = session
    response = await _answer(request, handler, {**HEADERS, **TLS_HEADERS})
    if session is not None and response.status == 401 and not response.headers.get(
            LOGIN_HEADER):
        sessions.end(session_id, REFUSED)  # the API server no longer takes the token
    return response


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host and cross-site checks before every handler; the security headers on every answer."""
    settings = request.app[SETTINGS]
    port = settings.port
    route = request.match_info.route.resource
    response: web.StreamResponse
    if settings.in_cluster:
        response = await _cluster_guard(request, handler,
                                        route.name if route is not None else None)
        response.headers.update(HEADERS)
        response.headers.update(TLS_HEADERS)
        return response
    if not host_allowed(request.headers.get("Host"), port):
        response = web.Response(status=421, text="this dashboard answers only at "
                                f"http://127.0.0.1:{port}/\n")
    elif needs_login(route.name if route is not None else None) and not same_secret(
            request.cookies.get(cookie_name(port)), settings.session):
        response = render(request, "login.html", status=401, wrong=False,
                          again=again_link(request.method, request.path_qs), port=port)
        # So a live page tells "log in again" from a 401 the API server gave a page.
        response.headers[LOGIN_HEADER] = "required"
    elif request.method == "POST" and not origin_allowed(
            request.headers.get("Origin", request.headers.get("Referer")), port):
        response = _problem(request, 403, "Refused: this form was sent from another site.")
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:  # a redirect: it leaves with the same headers
                exc.headers.update(HEADERS)
                raise
            response = _problem(request, exc.status, exc.reason)
    response.headers.update(HEADERS)
    return response


async def login(request: web.Request) -> web.Response:
    """``/login?key=<the key printed at start>``: the session cookie, and on to the monitors;
    a wrong or missing key: 401 and no cookie."""
    settings = request.app[SETTINGS]
    if not same_secret(request.query.get("key"), settings.key):
        return render(request, "login.html", status=401, wrong=True, again="",
                      port=settings.port)
    response = web.Response(status=303, headers={"Location": "/"})
    response.set_cookie(cookie_name(settings.port), settings.session, path="/",
                        httponly=True, samesite="Strict")
    return response


def backend(request: web.Request) -> backends.Backend:
    """What answers this request's pages, with the rights of who sent it (in the cluster:
    the session's, with the user's own token)."""
    session = session_of(request)
    return session.source if session is not None else request.app[BACKEND]


async def _call(call: Callable[[], Any]) -> Any:
    """A blocking backend request in a worker thread (refusals are
    :class:`backends.Failure`)."""
    return await asyncio.to_thread(call)


async def _listing(request: web.Request, plural: str,
                   namespace: str | None) -> backends.Listing | backends.Failure:
    """Every ``plural`` object the user may list, or the refusal."""
    source = backend(request)
    try:
        listed: backends.Listing = await _call(lambda: source.list_objects(plural, namespace))
    except backends.Failure as failure:
        return failure
    return listed


async def overview(request: web.Request) -> web.Response:
    """Every DatabaseMonitor the user may list: database, mode, counts, what needs a person,
    and its latest remediations (when the user may not list those, the cards and a note)."""
    namespace = request.app[SETTINGS].namespace
    listing, latest_listing = await asyncio.gather(
        _listing(request, monitor.PLURAL, namespace),
        _listing(request, remediation.PLURAL, namespace))
    if isinstance(listing, backends.Failure):
        return _problem(request, listing.status, listing.reason)
    cards: list[views.MonitorCard] = []
    unreadable: list[str] = []
    for obj in sorted(listing.items, key=lambda o: (o["metadata"].get("namespace", ""),
                                                     o["metadata"].get("name", ""))):
        try:
            cards.append(views.monitor_card(obj))
        except (ValidationError, ValueError) as exc:
            unreadable.append(f"{obj['metadata'].get('name', '?')}: "
                              f"{str(exc).splitlines()[0]}"[:300])
    latest: dict[tuple[str, str], list[views.RemediationRow]] = {}
    latest_note, unreadable_remediations = "", 0
    followed = {monitor.PLURAL: listing.version}
    if isinstance(latest_listing, backends.Failure):
        latest_note = f"The latest remediations could not be read: {latest_listing.reason}"
    else:
        items, skipped = views.parse_all(latest_listing.items)
        latest, unreadable_remediations = views.latest_by_monitor(items), len(skipped)
        if latest_listing.note and latest_listing.note != listing.note:
            latest_note = latest_listing.note
        if latest_listing.namespace == listing.namespace:  # else the monitors' scope only
            followed[remediation.PLURAL] = latest_listing.version
    return render(request, "overview.html", title="Monitors", cards=cards,
                  note=listing.note, unreadable=unreadable, latest=latest,
                  latest_note=latest_note, unreadable_remediations=unreadable_remediations,
                  live=views.live_url(listing.namespace, **followed))


async def remediations(request: web.Request) -> web.Response:
    """The remediations list, filtered by the query string (namespace, monitor, detector,
    state, since), one page of :data:`views.PAGE_SIZE` rows (``page``) at a time."""
    filters = views.Filters.parse(request.query)
    namespace = request.app[SETTINGS].namespace
    listing = await _listing(request, remediation.PLURAL, namespace)
    if isinstance(listing, backends.Failure):
        return _problem(request, listing.status, listing.reason)
    items, unreadable = views.parse_all(listing.items)
    shown = views.list_page(items, filters)
    return render(request, "remediations.html", title="Remediations", filters=shown.filters,
                  shown=shown, choices=views.choices(items), note=listing.note,
                  unreadable=unreadable,
                  live=views.live_url(listing.namespace,
                                      **{remediation.PLURAL: listing.version}))


async def _detail(request: web.Request, follow: bool = True) -> tuple[views.Detail, str]:
    """One Remediation as its page shows it, and (with ``follow``) the version to follow it
    from."""
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    source = backend(request)
    obj, since = await _call(lambda: source.get_remediation(namespace, name, follow))
    try:
        shown = views.detail(views.parse_remediation(obj))
    except (ValidationError, ValueError) as exc:
        raise backends.Failure(502, f"{name} does not read as a Remediation: "
                           f"{str(exc).splitlines()[0]}"[:300]) from exc
    return shown, since


async def one(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    """One remediation: summary, evidence, SQL, timeline, numbers, chart, who approved."""
    try:
        shown, version = await _detail(request, follow=not error)
    except backends.Failure as failure:
        reason = f"{error} (then reading it again: {failure.reason})" if error \
            else failure.reason
        return _problem(request, status if error else failure.status, reason)
    # Not live after a refused action: this page is the answer to a POST, and its address
    # is the confirmation form's, which a redraw would fetch.
    scope = request.app[SETTINGS].namespace
    live = "" if error or (scope and scope != shown.item.namespace) else views.live_url(
        shown.item.namespace, shown.item.name, **{remediation.PLURAL: version})
    return render(request, "remediation.html", status=status, title=shown.item.name,
                  d=shown, error=error, done=DONE.get(request.query.get("done", ""), ""),
                  live=live)


async def confirm(request: web.Request) -> web.Response:
    """The confirmation step of approve / reject / rollback: what will happen, and the form."""
    action = request.match_info["action"]
    if action not in backends.ACTIONS:
        raise web.HTTPNotFound()
    try:
        shown, _ = await _detail(request, follow=False)
    except backends.Failure as failure:
        return _problem(request, failure.status, failure.reason)
    return render(request, "confirm.html", title=f"{action.capitalize()} {shown.item.name}",
                  d=shown, action=action)


async def submit(request: web.Request) -> web.StreamResponse:
    """A confirmed approve / reject / rollback: the CLI's request, with the user's rights."""
    action = request.match_info["action"]
    if action not in backends.ACTIONS:
        raise web.HTTPNotFound()
    form = await request.post()
    sent = form.get("csrf")
    if not same_secret(sent if isinstance(sent, str) else None, form_secret(request)):
        return _problem(request, 403, "Refused: this form did not come from this dashboard "
                        "(its token is missing or from an earlier start): reload the page.")
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    sql_hash = form.get("sql_hash") if action == "approve" else None
    reason = form.get("reason")
    source = backend(request)
    try:
        await _call(lambda: source.act(action, namespace, name,
                                     sql_hash if isinstance(sql_hash, str) else None,
                                     reason if isinstance(reason, str) else ""))
    except backends.Failure as failure:
        return await one(request, error=f"{action.capitalize()} refused: {failure.reason}",
                         status=failure.status)
    raise web.HTTPSeeOther(f"{views.remediation_url(namespace, name)}?done={action}")


def event(name: str, data: dict[str, str]) -> bytes:
    """One server-sent event: its name, and its data as JSON on one line."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _changed(first: backends.Change, queue: asyncio.Queue[backends.Change]
             ) -> tuple[list[backends.Change], backends.Change | None]:
    """``first`` and every change waiting behind it (told as one), and the end of the
    stream when one waits there too."""
    changes = [first]
    while not queue.empty():
        change = queue.get_nowait()
        if change.kind != "changed":
            return changes, change
        changes.append(change)
    return changes, None


def ending(ended: backends.Change) -> dict[str, str]:
    """The ``ended`` event's data: why, and what the page does ``then``: ``redraw`` (the
    version shown is too old to follow: draw the page again and follow its new one), ``stop``
    (the user may not watch: the page says so and stays as it is) or ``retry`` (later, after
    a pause that grows)."""
    if ended.kind == "expired":
        return {"reason": "the version shown is too old to follow", "then": "redraw"}
    if ended.status in (401, 403):
        return {"reason": ended.reason, "then": "stop"}
    return {"reason": ended.reason, "then": "retry"}


def _limits(settings: Settings) -> tuple[int, int]:
    """The most live pages and watch threads at once."""
    if settings.in_cluster:
        return MAX_LIVE_IN_CLUSTER, MAX_WATCH_THREADS_IN_CLUSTER
    return MAX_LIVE, MAX_WATCH_THREADS


async def live(request: web.Request) -> web.StreamResponse:
    """``/live?...``: a page's event stream. ``changed`` when what it shows changed (draw it
    again), ``ended`` when the watch cannot go on (:func:`ending`) or, in the cluster, when
    its session is over (checked at each event and heartbeat, and told at once when it ends);
    a comment every :data:`HEARTBEAT_SECONDS`."""
    try:
        asked = views.Live.parse(request.query)
    except ValueError as exc:
        return _problem(request, 400, f"Not a live page: {exc}.")
    scope = request.app[SETTINGS].namespace
    if scope and asked.namespace != scope:
        return _problem(request, 400, f"Not a live page: this dashboard shows namespace "
                        f"{scope} only.")
    if request.method == "HEAD":  # the headers only: no stream, no watch
        return web.Response(headers={**HEADERS, "Content-Type": "text/event-stream"})
    pages = request.app[LIVE]
    if pages.closing:
        return _problem(request, 503, "The dashboard is stopping.")
    session, sessions = session_of(request), request.app[SESSIONS]
    if session is not None and len(session.streams) >= MAX_LIVE_PER_SESSION:
        oldest = session.streams.pop(0)  # the session's oldest page stops following
        oldest.end(LIVE_REPLACED)
        pages.queues.discard(oldest.queue)
    most, most_threads = _limits(request.app[SETTINGS])
    if len(pages.queues) >= most \
            or pages.threads() + len(asked.versions) > most_threads:
        return _problem(request, 503, f"{most} pages are already updating themselves: "
                        "this one is not; reload it to see what changed.")
    queue: asyncio.Queue[backends.Change] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def deliver(change: backends.Change) -> None:  # from a watch's thread
        with contextlib.suppress(RuntimeError):  # the loop closed: the dashboard exits
            loop.call_soon_threadsafe(queue.put_nowait, change)

    source = backend(request)
    watches = [source.follower(plural, asked.namespace, asked.name, since, deliver)
               for plural, since in asked.versions]
    response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream"})
    stream = Stream(queue, watches)
    pages.queues.add(queue)
    if session is not None:
        session.streams.append(stream)
    try:
        for watch in watches:  # counted before any await, so the caps hold
            pages.started(watch)
        await response.prepare(request)
        ended: backends.Change | None = None
        while ended is None:
            change: backends.Change | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_SECONDS):
                    change = await queue.get()
            gone = sessions.gone(session) if session is not None else ""
            if gone:  # logged out, expired or ended: not one more event with its token
                ended = backends.Change("failed", reason=gone, status=401)
            elif change is None:
                await response.write(b": still watching\n\n")
            elif change.kind == "changed":
                changes, ended = _changed(change, queue)
                await response.write(event("changed", {
                    "names": ",".join(sorted({c.name for c in changes if c.name}))[:1000]}))
            else:
                ended = change
        if ended.kind != "stopped":
            await response.write(event("ended", ending(ended)))
    except ConnectionResetError:
        pass  # the page went away: its watches stop below
    finally:
        pages.queues.discard(queue)
        if session is not None and stream in session.streams:
            session.streams.remove(stream)
        for watch in watches:
            watch.stop()
    return response


async def _stop_live(app: web.Application) -> None:
    """On shutdown: every event stream ends, so the server need not wait for them, and no
    new one starts."""
    app[LIVE].closing = True
    for queue in app[LIVE].queues:
        queue.put_nowait(backends.Change("stopped"))


async def _purging(app: web.Application) -> AsyncIterator[None]:
    """In the cluster: expired sessions (and their tokens) are dropped every
    :data:`PURGE_SECONDS`, even while no one asks for a page."""
    async def purge() -> None:
        while True:
            await asyncio.sleep(PURGE_SECONDS)
            app[SESSIONS].purge()

    task = asyncio.create_task(purge())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def mode_of(settings: Settings, source: backends.Backend) -> str:
    """Which dashboard serves ``source``: "in-cluster", "local" (the Kubernetes API with the
    user's kubeconfig) or "standalone" (anything else: a ``startupmonkey run``'s executor)."""
    if settings.in_cluster:
        return "in-cluster"
    kube = sys.modules.get("startupmonkey.dashboard.kube")  # not loaded: not a KubeBackend
    return "local" if kube is not None and isinstance(source, kube.KubeBackend) \
        else "standalone"


def make_app(settings: Settings, source: backends.Backend | None = None) -> web.Application:
    """The dashboard application serving ``settings`` from ``source`` (default: the
    Kubernetes API with the user's kubeconfig)."""
    if source is None:
        from startupmonkey.dashboard import kube  # only this mode loads the kubernetes client

        source = kube.KubeBackend()
    app = web.Application(middlewares=[guard])
    app[SETTINGS] = settings
    app[SESSIONS] = Sessions()
    app[BACKEND] = source
    app[MODE] = mode_of(settings, source)
    app[TEMPLATES] = environment()
    app[LIVE] = LivePages()
    app.on_shutdown.append(_stop_live)
    if settings.in_cluster:
        app.cleanup_ctx.append(_purging)
    if not settings.in_cluster:  # the in-cluster login is incluster.py's
        app.router.add_get("/login", login, name="login")
    app.router.add_get("/live", live)
    app.router.add_get("/", overview)
    app.router.add_get("/remediations", remediations)
    app.router.add_get("/ns/{namespace}/remediations/{name}", one)
    app.router.add_get("/ns/{namespace}/remediations/{name}/{action}", confirm)
    app.router.add_post("/ns/{namespace}/remediations/{name}/{action}", submit)
    app.router.add_static("/static", HERE / "static", name="static")
    return app


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


async def serve(settings: Settings, port: int, source: backends.Backend | None = None) -> int:
    """Listen on 127.0.0.1:``port`` (0: any free one) until SIGINT or SIGTERM."""
    runner = web.AppRunner(make_app(settings, source), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, LOOPBACK, port)
        try:
            await site.start()
        except OSError as exc:
            print(f"startupmonkey dashboard: cannot listen on {LOOPBACK}:{port}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        settings.port = int(runner.addresses[0][1])
        # The only place the key is ever written: this terminal, as Jupyter prints its own.
        print(f"startupmonkey dashboard: open {login_url(settings.port, settings.key)} "
              "(this address logs your browser in; keep it to yourself. "
              f"{_sentence(runner.app[BACKEND].rights)}; Ctrl-C stops it)", flush=True)
        await until_signalled()
        return 0
    finally:
        await runner.cleanup()
        await asyncio.to_thread(runner.app[LIVE].join, JOIN_SECONDS)


async def until_signalled() -> None:
    """Return on SIGINT or SIGTERM (how every mode of the dashboard is stopped)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for each in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(each, stop.set)
    await stop.wait()
