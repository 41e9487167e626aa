"""``startupmonkey dashboard --in-cluster``: the chart's dashboard for a cluster's users (issue
25; docs/dashboard.md, "In the cluster").

It serves HTTPS only (TLS 1.2 at least, the certificate and key given; it does not start
without them). A user logs in with a Kubernetes bearer token, posted in a form: the dashboard's
OWN identity (the pod's ServiceAccount, or ``$KUBECONFIG`` when set) is used for exactly two
requests, a TokenReview (who is it?) and a SubjectAccessReview (may that user ``list``
``remediations.startupmonkey.dev`` in the dashboard's scope?), and for nothing else. A token
the API server does not accept is answered 401 with its reason, a user who may not list 403
naming the missing permission; otherwise a :class:`~startupmonkey.dashboard.server.Session`
starts (in memory only: a restart logs everyone out). From then on every page, action and live
watch of that session is a request to the API server WITH THE USER'S OWN TOKEN
(:class:`startupmonkey.client.Credentials`: the dashboard's API server address and CA, the
user's token), so RBAC decides and a refusal shows the API server's own reason.

Scope: with ``-n NS`` the review asks about NS. Without it, about the whole cluster; a user
refused there who is a ServiceAccount is asked about again in its own namespace, and when
allowed there the pages show that namespace (saying so); anyone else is refused, the page
saying which permission is missing (give it, or run the dashboard with ``-n``).

Logins are bounded: at most :data:`MAX_REVIEWS` reviewed at once and :data:`MAX_WAITING`
waiting (then 503), and :class:`LoginRate` per client address (then 429); a login body is a
urlencoded form, nothing else (415).

A token is never logged, printed, put in a page or in an exception's text.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import dataclasses
import json
import logging
import math
import os
import re
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from aiohttp import web
from kubernetes.client.exceptions import ApiException

from startupmonkey import client, kubeapi
from startupmonkey.dashboard import backend as backends
from startupmonkey.dashboard import kube, server
from startupmonkey.models import monitor, remediation

#: A bearer token as the form may carry it: visible ASCII only (no space, no control
#: character that could end a header), at most this long (a JWT is a few kB).
MAX_TOKEN_CHARS = 16384
TOKEN = re.compile(rf"[\x21-\x7e]{{1,{MAX_TOKEN_CHARS}}}")
#: At most this many logins are checked with the API server at once (each costs it two
#: reviews); at most this many more wait their turn (one more is answered 503).
MAX_REVIEWS = 4
MAX_WAITING = 16
#: Each client address may post this many logins at once, and one more each
#: 60 / LOGINS_PER_MINUTE seconds (then 429); this many addresses are remembered at most.
LOGINS_PER_MINUTE = 10
MAX_ADDRESSES = 4096
#: What a refused login waits before it is tried again (the Retry-After of a 503).
RETRY_SECONDS = 5
#: The only login body taken: what a browser sends for the login form.
FORM = "application/x-www-form-urlencoded"
#: What a client is told when the API server did not accept its token (the API server's own
#: reason is logged, never shown: it may say how the cluster authenticates).
NOT_ACCEPTED = ("The API server did not accept this token: it may have expired, or be meant "
                "for another cluster or audience. Get a new one.")
LOG = logging.getLogger(__name__)
#: What a user must be allowed, to log in.
VERB, GROUP, RESOURCE = "list", monitor.GROUP, remediation.PLURAL
SERVICE_ACCOUNT = re.compile(r"system:serviceaccount:([a-z0-9]([-a-z0-9]*[a-z0-9])?):[^:]+")

OWN = web.AppKey("own", kubernetes.client.Configuration)


class Reviews:
    """At most ``at_once`` logins reviewed at once, and at most ``waiting`` more waiting for
    their turn."""

    def __init__(self, at_once: int = MAX_REVIEWS, waiting: int = MAX_WAITING) -> None:
        self.semaphore = asyncio.Semaphore(at_once)
        self.limit = waiting
        self.waiting = 0

    async def enter(self) -> bool:
        """Wait for a turn (True: it came, :meth:`leave` when done); False at once when
        :attr:`limit` logins wait already."""
        if self.semaphore.locked() and self.waiting >= self.limit:
            return False
        self.waiting += 1
        try:
            await self.semaphore.acquire()
        finally:
            self.waiting -= 1
        return True

    def leave(self) -> None:
        self.semaphore.release()


class LoginRate:
    """A token bucket per client address: ``burst`` logins at once, one more each
    ``60 / per_minute`` seconds; at most ``addresses`` remembered (a full bucket is
    forgotten first, then the longest unused)."""

    def __init__(self, per_minute: float = LOGINS_PER_MINUTE,
                 burst: float = LOGINS_PER_MINUTE, addresses: int = MAX_ADDRESSES,
                 clock: Any = time.monotonic) -> None:
        self.rate, self.burst, self.addresses, self.clock = per_minute / 60, burst, \
            addresses, clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = \
            collections.OrderedDict()

    def _level(self, bucket: tuple[float, float], now: float) -> float:
        tokens, when = bucket
        return min(self.burst, tokens + (now - when) * self.rate)

    def take(self, address: str) -> float:
        """Take one login for ``address``: 0 when it may go on, else the seconds to wait."""
        now = self.clock()
        found = self._buckets.pop(address, None)
        tokens = self.burst if found is None else self._level(found, now)
        if tokens < 1:
            self._buckets[address] = (tokens, now)
            return (1 - tokens) / self.rate
        if len(self._buckets) >= self.addresses:
            for key in [k for k, b in self._buckets.items()
                        if self._level(b, now) >= self.burst]:
                del self._buckets[key]
            while len(self._buckets) >= self.addresses:
                self._buckets.popitem(last=False)
        self._buckets[address] = (tokens - 1, now)
        return 0.0

    def __len__(self) -> int:
        return len(self._buckets)


REVIEWS = web.AppKey("reviews", Reviews)
RATE = web.AppKey("rate", LoginRate)


class Refusal(Exception):
    """A login refused: the HTTP status and the reason, in one line, naming no token."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class User:
    """Who a token is, as TokenReview said."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def service_account_namespace(self) -> str | None:
        """The namespace of a ServiceAccount user (None: not one)."""
        found = SERVICE_ACCOUNT.fullmatch(self.name)
        return found.group(1) if found else None


@dataclasses.dataclass(frozen=True)
class Login:
    """A login that may go on: who, the namespace its pages fall back to, and whether the
    user was let in in that namespace only (a ServiceAccount refused cluster-wide)."""

    user: User
    namespace: str
    narrowed: bool = False


def read_token(sent: object) -> str | None:
    """The bearer token of the login form's ``token`` field (anything a browser sent): the
    text without surrounding blanks and an optional ``Bearer`` prefix, when it can be one;
    else None."""
    if not isinstance(sent, str):
        return None
    text = sent.strip()
    if text[:7].lower() == "bearer ":
        text = text[7:].strip()
    return text if TOKEN.fullmatch(text) else None


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim (Unix time) of a JWT bearer token, read without checking it (the
    API server checked the token; this only shortens the session); None for anything else."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or exp != exp:
        return None
    return float(exp)


def session_seconds(token: str, now: float) -> float:
    """How long a session of ``token`` lasts: :data:`server.SESSION_SECONDS`, or until the
    token expires when that is sooner (0: it has)."""
    expiry = token_expiry(token)
    if expiry is None:
        return float(server.SESSION_SECONDS)
    return max(0.0, min(float(server.SESSION_SECONDS), expiry - now))


def _hidden(text: str, token: str) -> str:
    return backends.one_line(text.replace(token, "<token>") if token else text)


def own_configuration() -> kubernetes.client.Configuration:
    """The dashboard's own identity: ``$KUBECONFIG`` when set, else the pod's ServiceAccount;
    its address must be ``https://`` (users' tokens go there)."""
    config = kubernetes.client.Configuration()
    files = os.environ.get("KUBECONFIG")
    try:
        if files:
            kubernetes.config.load_kube_config(config_file=files, client_configuration=config,
                                               persist_config=False)
        else:
            kubernetes.config.load_incluster_config(client_configuration=config)
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        where = f"the kubeconfig {files}" if files else "the pod's ServiceAccount"
        raise client.Refused(f"cannot load {where}: {' '.join(str(exc).split())}") from exc
    if not str(config.host).startswith("https://"):
        raise client.Refused(f"the API server's address {config.host} is not https://: "
                             "users' tokens are never sent in clear text")
    config.retries = kubeapi.RETRIES
    return config


def credentials(own: kubernetes.client.Configuration, token: str,
                namespace: str) -> client.Credentials:
    """A user's credentials: the dashboard's API server and CA (and its TLS server name and
    proxy, when it has them), the user's token."""
    headers = getattr(own, "proxy_headers", None)
    return client.Credentials(host=str(own.host), ca_file=own.ssl_ca_cert, token=token,
                              namespace=namespace,
                              tls_server_name=getattr(own, "tls_server_name", None) or None,
                              proxy=own.proxy or None,
                              no_proxy=getattr(own, "no_proxy", None) or None,
                              proxy_headers=dict(headers) if headers else None)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _who(api: kubernetes.client.ApiClient, token: str) -> User:
    """Who ``token`` is (TokenReview). The API server's answer ECHOES THE TOKEN
    (``spec.token``): it is read unparsed by the client (``_preload_content=False``, so the
    client never logs or keeps it as an object) and only its ``status`` is kept. Never log
    that answer, even at DEBUG."""
    try:
        answer: Any = kubernetes.client.AuthenticationV1Api(api).create_token_review(
            kubernetes.client.V1TokenReview(
                api_version="authentication.k8s.io/v1", kind="TokenReview",
                spec=kubernetes.client.V1TokenReviewSpec(token=token)),
            _preload_content=False, _request_timeout=kubeapi.REQUEST_TIMEOUT)
    except ApiException as exc:
        raise Refusal(503, _hidden("The dashboard could not check the token (TokenReview): "
                                   f"Kubernetes API: {client._api_reason(exc)}",
                                   token)) from None
    try:
        status = _dict(_dict(json.loads(answer.data)).get("status"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refusal(503, "The dashboard could not check the token (TokenReview): the API "
                           "server's answer is not JSON") from None
    finally:
        answer.release_conn()
    user = _dict(status.get("user"))
    name = user.get("username")
    if status.get("authenticated") is not True or not isinstance(name, str) or not name:
        said = status.get("error")
        LOG.warning("a login was refused: the API server did not accept its token: %s",
                    _hidden(said if isinstance(said, str) and said else "not authenticated",
                            token))
        raise Refusal(401, NOT_ACCEPTED)
    extra = tuple(sorted((str(k), tuple(str(v) for v in values or ()))
                         for k, values in _dict(user.get("extra")).items()))
    return User(name, str(user.get("uid") or ""),
                tuple(str(g) for g in user.get("groups") or ()), extra)


def _may_list(api: kubernetes.client.ApiClient, user: User, namespace: str | None
              ) -> tuple[bool, str]:
    """Whether ``user`` may list remediations in ``namespace`` (None: cluster-wide), and the
    authorizer's reason."""
    spec = kubernetes.client.V1SubjectAccessReviewSpec(
        user=user.name, uid=user.uid or None, groups=list(user.groups) or None,
        extra={k: list(v) for k, v in user.extra} or None,
        resource_attributes=kubernetes.client.V1ResourceAttributes(
            namespace=namespace, verb=VERB, group=GROUP, resource=RESOURCE))
    try:
        review = kubernetes.client.AuthorizationV1Api(api).create_subject_access_review(
            kubernetes.client.V1SubjectAccessReview(
                api_version="authorization.k8s.io/v1", kind="SubjectAccessReview", spec=spec),
            _request_timeout=kubeapi.REQUEST_TIMEOUT)
    except ApiException as exc:
        raise Refusal(503, backends.one_line(
            "The dashboard could not check your rights (SubjectAccessReview): Kubernetes "
            f"API: {client._api_reason(exc)}")) from None
    status = review.status
    allowed = bool(status is not None and status.allowed and not status.denied)
    return allowed, str((status.reason or status.evaluation_error or "") if status else "")


def _missing(user: User, namespace: str | None, reason: str) -> str:
    where = f"in namespace {namespace}" if namespace else "in every namespace (cluster-wide)"
    said = f" ({reason})" if reason else ""
    return backends.one_line(
        f"{user.name} may not {VERB} {RESOURCE}.{GROUP} {where}{said}: this dashboard needs "
        f"RBAC's {VERB!r} verb on {RESOURCE!r} in API group {GROUP!r} there (the chart's "
        "aggregated view and edit roles include it).")


def review(own: kubernetes.client.ApiClient, token: str, scope: str | None) -> Login:
    """Who ``token`` is and whether it may use this dashboard (see the module's text), with
    the dashboard's own client; a :class:`Refusal` otherwise."""
    user = _who(own, token)
    allowed, reason = _may_list(own, user, scope)
    if allowed:
        return Login(user, scope or user.service_account_namespace() or "default")
    if scope is None:
        home = user.service_account_namespace()
        if home is not None and _may_list(own, user, home)[0]:
            return Login(user, home, narrowed=True)
    raise Refusal(403, _missing(user, scope, reason))


def _review(config: kubernetes.client.Configuration, token: str, scope: str | None) -> Login:
    api = kubernetes.client.ApiClient(config)
    try:
        return review(api, token, scope)
    except urllib3.exceptions.HTTPError as exc:
        detail = " ".join(str(getattr(exc, "reason", None) or exc).split())[:300]
        raise Refusal(503, _hidden("The API server did not answer the dashboard: "
                                   f"{detail}", token)) from None
    finally:
        api.close()


def _login_page(request: web.Request, status: int, reason: str,
                retry: float = 0) -> web.Response:
    page = server.render(request, "token_login.html", status=status, reason=reason, again="")
    if retry:
        page.headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return page


async def login_form(request: web.Request) -> web.Response:
    """``GET /login``: the token form."""
    return _login_page(request, 200, "")


async def login(request: web.Request) -> web.StreamResponse:
    """``POST /login``: check the token, start a session (ending the one this browser had),
    and on to the monitors; refused: 401 (who?) or 403 (not allowed) with the reason, and no
    cookie; 429 when this address posted too many logins, 503 when too many wait, 415 for a
    body that is not the form's."""
    wait = request.app[RATE].take(request.remote or "")
    if wait:
        return _login_page(request, 429, "Too many logins from this address: try again in a "
                           "minute.", retry=wait)
    if request.content_type != FORM:
        return _login_page(request, 415, "A login is the login form's fields, nothing else.")
    form = await request.post()
    token = read_token(form.get("token"))
    if token is None:
        return _login_page(request, 401, "That is not a bearer token: paste the whole token, "
                           "as the API server accepts it.")
    settings = request.app[server.SETTINGS]
    own = request.app[OWN]
    reviews = request.app[REVIEWS]
    if not await reviews.enter():
        return _login_page(request, 503, "Too many logins are being checked right now: try "
                           "again in a few seconds.", retry=RETRY_SECONDS)
    try:
        found: Login = await asyncio.to_thread(_review, own, token, settings.namespace)
    except Refusal as refusal:
        return _login_page(request, refusal.status, refusal.reason)
    finally:
        reviews.leave()
    seconds = session_seconds(token, time.time())
    if seconds <= 0:
        return _login_page(request, 401, "This token has expired: get a new one.")
    source = kube.KubeBackend(credentials(own, token, found.namespace),
                              rights=f"{found.user.name}'s own rights")
    sessions = request.app[server.SESSIONS]
    sessions.end(request.cookies.get(server.SESSION_COOKIE), server.REPLACED)
    session_id = sessions.add(server.Session(
        found.user.name, source, time.monotonic() + seconds,
        namespace=found.namespace if found.narrowed else None))
    response = web.Response(status=303, headers={"Location": "/"})
    response.set_cookie(server.SESSION_COOKIE, session_id, path="/", secure=True,
                        httponly=True, samesite="Strict", max_age=int(seconds))
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """``POST /logout`` (with the session's form token): the session ends; on to the login
    page."""
    form = await request.post()
    sent = form.get("csrf")
    if not server.same_secret(sent if isinstance(sent, str) else None,
                              server.form_secret(request)):
        return server.render(request, "error.html", status=403,
                             reason="Refused: this form did not come from this dashboard.")
    request.app[server.SESSIONS].end(request.cookies.get(server.SESSION_COOKIE))
    response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(server.SESSION_COOKIE, path="/", secure=True, httponly=True,
                        samesite="Strict")
    return response


async def healthz(request: web.Request) -> web.Response:
    """``/healthz``: the probes' page (no session needed, nothing said)."""
    return web.Response(text="ok\n")


class _NoSession:
    """The app's backend in the cluster: never used (every page but the public ones has a
    session, whose own backend answers), and refusing should it be."""

    rights = "no one's: log in"

    def _refuse(self) -> backends.Failure:
        return backends.Failure(401, "not logged in")

    def list_objects(self, plural: str, namespace: str | None) -> backends.Listing:
        raise self._refuse()

    def get_remediation(self, namespace: str, name: str, follow: bool = True
                        ) -> tuple[dict[str, Any], str]:
        raise self._refuse()

    def act(self, command: str, namespace: str, name: str, sql_hash: str | None,
            reason: str) -> None:
        raise self._refuse()

    def follower(self, plural: str, namespace: str | None, name: str, since: str,
                 deliver: Any) -> backends.Follower:
        raise self._refuse()


def make_app(settings: server.Settings,
             own: kubernetes.client.Configuration) -> web.Application:
    """The in-cluster application: the pages, the token login and logout, ``/healthz``."""
    settings.in_cluster = True
    app = server.make_app(settings, _NoSession())
    app[OWN] = own
    app[REVIEWS] = Reviews(MAX_REVIEWS, MAX_WAITING)
    app[RATE] = LoginRate()
    entry = app.router.add_resource("/login", name="login")  # public: GET and POST
    entry.add_route("GET", login_form)
    entry.add_route("POST", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/healthz", healthz, name="healthz")
    return app


def tls_context(cert: Path, key: str | Path) -> ssl.SSLContext:
    """The server's TLS: TLS 1.2 at least, the certificate (with its chain) and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def _shown(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{port}/"


async def serve(settings: server.Settings, own: kubernetes.client.Configuration,
                context: ssl.SSLContext, address: str, port: int) -> int:
    """Listen on ``address``:``port`` (0: any free port) over TLS until SIGINT or SIGTERM."""
    app = make_app(settings, own)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, address, port, ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            print(f"startupmonkey dashboard: cannot listen on {address}:{port}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        settings.port = int(runner.addresses[0][1])
        scope = f"namespace {settings.namespace}" if settings.namespace else "every namespace"
        print(f"startupmonkey dashboard: listening on {_shown(address, settings.port)} "
              f"(HTTPS; {scope}; each user logs in with a Kubernetes bearer token and acts "
              "with its own rights; SIGTERM stops it)", flush=True)
        await server.until_signalled()
        return 0
    finally:
        await runner.cleanup()
        await asyncio.to_thread(app[server.LIVE].join, server.JOIN_SECONDS)


def _refused(reason: str) -> int:
    print(f"startupmonkey dashboard: {reason}", file=sys.stderr)
    return 1


def main(args: argparse.Namespace) -> int:
    """``startupmonkey dashboard --in-cluster``: refuses to start (exit 1, one line) without
    a readable certificate and key or the dashboard's own identity."""
    cert, key = args.tls_cert, args.tls_key
    if cert is None or key is None:
        return _refused("--in-cluster serves HTTPS only: give --tls-cert and --tls-key (PEM "
                        "files, e.g. the chart's dashboard.tls.secretName Secret)")
    try:
        context = tls_context(cert, key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        return _refused(f"cannot use the TLS certificate {cert} and key {key}: "
                        f"{' '.join(str(detail).split())}")
    try:
        own = own_configuration()
    except client.Refused as exc:
        return _refused(str(exc))
    settings = server.Settings(namespace=args.namespace, in_cluster=True)
    port = 8443 if args.port is None else int(args.port)
    # Every interface by default: in a pod, the Service reaches it on the pod's address.
    address = args.address or "0.0.0.0"  # noqa: S104
    return asyncio.run(serve(settings, own, context, address, port))
