"""The dashboard's Kubernetes API requests: the CLI's ``--kube`` mode, reused.

Every request is made with the user's own kubeconfig, loaded per request by
:func:`startupmonkey.client._kube_client` exactly as ``startupmonkey status --kube`` loads it
(``$KUBECONFIG``, tokens, token files, client certificates, exec plugins; ``https://`` only), so
the API server authenticates the user and RBAC decides. Approve, reject and roll back are the
CLI's own code path (:func:`startupmonkey.client._kube`): the same SelfSubjectReview, the same
checks and the same patch. Nothing is cached: the dashboard holds no state of its own.

A refusal is a :class:`Failure` carrying the HTTP status to answer with and the reason in one
line (the API server's own for a 403), never a traceback.

Live pages follow a :class:`Watch`: one Kubernetes watch request with the same kubeconfig, read
in a thread of its own (a watch waits for minutes, and the shared worker threads are kept for
the pages), from the resourceVersion the page was drawn at, each change handed to the page's
event stream; :meth:`Watch.stop` ends it at once from any thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import kubernetes.client
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from startupmonkey import client, kubeapi
from startupmonkey.dashboard.backend import (  # noqa: F401 (the names pages and tests use)
    ACTIONS,
    KINDS,
    REASON_CHARS,
    Change,
    Failure,
    Listing,
    one_line,
)
from startupmonkey.models import monitor, remediation

T = TypeVar("T")
#: How long the API server keeps one watch request open (then it is opened again from the last
#: version seen), and the longest silence read before the API server is taken as hung (the
#: watch then ends, and the page says live updates paused).
WATCH_SECONDS = 60
WATCH_READ_SECONDS = 90
#: The pause before opening again a watch request that ended at once without a line (then
#: twice as long each time, up to the second figure).
MIN_REOPEN_SECONDS = 1.0
MAX_REOPEN_SECONDS = 30.0
#: A watch request that ends sooner than this without a line "ended at once".
QUICK_END_SECONDS = 5.0
#: The longest watch line read: a Remediation is far smaller, and etcd keeps none over 1.5 MB.
MAX_WATCH_LINE = 4 * 1024 * 1024


def guarded(call: Callable[[], T]) -> T:
    """``call()``, with every way the API request can fail turned into a :class:`Failure`."""
    try:
        return call()
    except client.Refused as exc:
        raise Failure(409, str(exc)) from exc
    except ApiException as exc:
        raise Failure(int(exc.status or 502),
                      f"Kubernetes API: {client._api_reason(exc)}") from exc
    except urllib3.exceptions.HTTPError as exc:
        detail = " ".join(str(getattr(exc, "reason", None) or exc).split())[:300]
        raise Failure(502, f"the Kubernetes API server did not answer: {detail}") from exc


def _listing(answer: object, namespace: str | None, note: str = "") -> Listing:
    found = client._object(answer)
    items = [item for item in found.get("items") or [] if isinstance(item, dict)]
    version = (found.get("metadata") or {}).get("resourceVersion")
    return Listing(items, note, namespace, version if isinstance(version, str) else "")


def _args(namespace: str | None, credentials: client.Credentials | None = None,
          **more: Any) -> argparse.Namespace:
    """The CLI's arguments for a request in ``namespace``: with the kubeconfig, or (the
    in-cluster dashboard) with a logged-in user's ``credentials``."""
    return argparse.Namespace(namespace=namespace, credentials=credentials, **more)


def list_objects(plural: str, namespace: str | None,
                 credentials: client.Credentials | None = None) -> Listing:
    """Every ``plural`` object in ``namespace``; with None, in every namespace the user may
    list, else (403) in the kubeconfig context's namespace (the credentials' own), saying
    so."""
    api, default_namespace = client._kube_client(_args(namespace, credentials))
    custom = kubernetes.client.CustomObjectsApi(api)
    timeout = kubeapi.REQUEST_TIMEOUT
    group, version = monitor.GROUP, monitor.VERSION
    try:
        if namespace:
            return _listing(custom.list_namespaced_custom_object(
                group, version, namespace, plural, _request_timeout=timeout), namespace)
        try:
            return _listing(custom.list_cluster_custom_object(
                group, version, plural, _request_timeout=timeout), None)
        except ApiException as exc:
            if exc.status != 403:
                raise
            note = (f"You may not list {plural} in every namespace "
                    f"({client._api_reason(exc)}); showing namespace {default_namespace}.")
        return _listing(custom.list_namespaced_custom_object(
            group, version, default_namespace, plural, _request_timeout=timeout),
            default_namespace, note)
    finally:
        api.close()


def get_remediation(namespace: str, name: str, follow: bool = True,
                    credentials: client.Credentials | None = None
                    ) -> tuple[dict[str, Any], str]:
    """One Remediation as the API server sent it, and (with ``follow``) the version to follow
    it from: that of a list of just this object, read first (the object's own
    resourceVersion can be older than the API server's watch history, and a watch from it is
    refused at once with 410: the page would be drawn again and again); "" when the user may
    not list (the page is then not live) or without ``follow`` (a page that is not live, such
    as the confirmation step, spends no request on it)."""
    api, _ = client._kube_client(_args(namespace, credentials))
    custom = kubernetes.client.CustomObjectsApi(api)
    group, version = monitor.GROUP, monitor.VERSION
    try:
        since = ""
        try:
            if follow:
                since = _listing(custom.list_namespaced_custom_object(
                    group, version, namespace, remediation.PLURAL,
                    field_selector=f"metadata.name={name}", limit=1,
                    _request_timeout=kubeapi.REQUEST_TIMEOUT), namespace).version
        except ApiException as exc:
            if exc.status not in (401, 403):
                raise
        return client._object(custom.get_namespaced_custom_object(
            group, version, namespace, remediation.PLURAL, name,
            _request_timeout=kubeapi.REQUEST_TIMEOUT)), since
    finally:
        api.close()


def act(command: str, namespace: str, name: str, sql_hash: str | None, reason: str,
        credentials: client.Credentials | None = None) -> None:
    """``startupmonkey <command> <name> --kube -n <namespace>``, as the CLI runs it (with
    ``credentials``: the same code path with that user's token)."""
    if command not in ACTIONS:
        raise client.Refused(f"unknown action {command!r}")
    client._kube(_args(namespace, credentials, command=command, remediation=name,
                       sql_hash=sql_hash, reason=reason))


def _text_of(value: object) -> str:
    return value if isinstance(value, str) else ""


def read_change(line: bytes) -> Change:
    """One watch line (JSON: ``{"type": ..., "object": ...}``) as a :class:`Change`; anything
    else is ``failed`` with the reason, never an exception."""
    try:
        event = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Change("failed", reason="the API server sent a watch line that is not JSON")
    obj = event.get("object") if isinstance(event, dict) else None
    if not isinstance(obj, dict):
        return Change("failed", reason="the API server sent a watch line without an object")
    kind = event.get("type")
    found = obj.get("metadata")
    metadata: dict[str, Any] = found if isinstance(found, dict) else {}
    version, name = _text_of(metadata.get("resourceVersion")), _text_of(metadata.get("name"))
    if kind in ("ADDED", "MODIFIED", "DELETED"):
        return Change("changed", version, name)
    if kind == "BOOKMARK":
        return Change("bookmark", version)
    if kind == "ERROR":
        if obj.get("code") == 410:
            return Change("expired")
        return Change("failed", reason=one_line(
            f"the watch ended: {_text_of(obj.get('message')) or obj.get('code')}"))
    return Change("failed", reason=one_line(f"unknown watch event type {kind!r}"))


class Lines:
    """Complete lines out of a stream of chunks (a watch sends one JSON object a line)."""

    def __init__(self, limit: int = MAX_WATCH_LINE) -> None:
        self.buffer = bytearray()
        self.limit = limit

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The lines ``chunk`` completes (empty ones left out); ValueError when one line grows
        past the limit."""
        self.buffer.extend(chunk)
        start = 0
        while (end := self.buffer.find(b"\n", start)) != -1:
            if end > start:
                yield bytes(self.buffer[start:end])
            start = end + 1
        del self.buffer[:start]
        if len(self.buffer) > self.limit:
            raise ValueError(f"a watch line longer than {self.limit} bytes")


def reopen_pause(previous: float, lines_read: int, seconds: float) -> float:
    """Seconds to wait before the next watch request, after one that ended as it should,
    having sent ``lines_read`` lines in ``seconds``: none after one that sent something or
    lasted (the API server ends each after :data:`WATCH_SECONDS`, quiet or not); after one
    that ended at once without a line (a proxy closing it, say) :data:`MIN_REOPEN_SECONDS`,
    twice the ``previous`` pause each time, at most :data:`MAX_REOPEN_SECONDS`."""
    if lines_read or seconds >= QUICK_END_SECONDS:
        return 0.0
    return min(max(2 * previous, MIN_REOPEN_SECONDS), MAX_REOPEN_SECONDS)


class Watch:
    """Changes of ``plural`` objects in ``namespace`` (None: every namespace; ``name``: that
    one object) after version ``since``, each handed to ``deliver`` (from the watch's own
    thread), then one last Change saying why it ended (not after :meth:`stop`).

    Nothing it meets ends its thread unsaid: a kubeconfig that no longer loads, a refusal, a
    broken stream, even a bug, is a ``failed`` Change. A watch request that ends without a
    line (a proxy closing it early) is opened again after a pause that grows, never at once.
    """

    def __init__(self, plural: str, namespace: str | None, name: str, since: str,
                 deliver: Callable[[Change], None],
                 credentials: client.Credentials | None = None) -> None:
        self.plural, self.namespace, self.name, self.since = plural, namespace, name, since
        self.deliver = deliver
        self.credentials = credentials
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._response: Any = None
        self.thread = threading.Thread(target=self._run, name=f"watch-{plural}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """End the watch now: a read waiting in its thread is interrupted, a pause cut short,
        and a watch still being opened is closed as soon as it is."""
        with self._lock:
            self._stopping.set()
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def _run(self) -> None:
        try:
            ended = self._follow()
        except Failure as failure:
            ended = Change("failed", reason=one_line(failure.reason), status=failure.status)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            ended = Change("failed", reason=one_line(
                f"the Kubernetes API server's watch broke off: {exc}"))
        except Exception as exc:  # the page is told, whatever it was
            ended = Change("failed", reason=one_line(
                f"the watch ended on an error: {type(exc).__name__}: {exc}"))
        if not self.stopped:
            self.deliver(ended)

    def _open(self, api: kubernetes.client.ApiClient) -> Any:
        custom = kubernetes.client.CustomObjectsApi(api)
        asked: dict[str, Any] = {
            "watch": True, "resource_version": self.since, "allow_watch_bookmarks": True,
            "timeout_seconds": WATCH_SECONDS, "_preload_content": False,
            "_request_timeout": (kubeapi.REQUEST_TIMEOUT[0], WATCH_READ_SECONDS)}
        if self.name:
            asked["field_selector"] = f"metadata.name={self.name}"
        if self.namespace:
            return custom.list_namespaced_custom_object(
                monitor.GROUP, monitor.VERSION, self.namespace, self.plural, **asked)
        return custom.list_cluster_custom_object(monitor.GROUP, monitor.VERSION, self.plural,
                                                 **asked)

    def _follow(self) -> Change:
        """Watch requests one after another (each the API server ends after
        :data:`WATCH_SECONDS`), from the last version seen, until one says to stop."""
        pause = 0.0
        while not self._stopping.wait(pause):
            api, _ = guarded(lambda: client._kube_client(
                _args(self.namespace, self.credentials)))
            try:
                if self.stopped:
                    break
                opened = time.monotonic()
                response = guarded(lambda: self._open(api))  # noqa: B023 (called at once)
                with self._lock:
                    stopped = self._stopping.is_set()
                    if not stopped:
                        self._response = response
                if stopped:
                    response.close()
                    break
                lines_read, ended = self._read(response)
                if ended is not None:
                    return ended
                pause = reopen_pause(pause, lines_read, time.monotonic() - opened)
            except (urllib3.exceptions.HTTPError, OSError):
                if self.stopped:  # the read interrupted by stop()
                    break
                raise
            finally:
                with self._lock:
                    response, self._response = self._response, None
                if response is not None:
                    response.close()
                api.close()
        return Change("stopped")

    def _read(self, response: Any) -> tuple[int, Change | None]:
        """Every change of one watch request: how many lines it sent, and the Change that
        ends the watch (None when the request ended as it should: open the next one)."""
        lines, count = Lines(), 0
        for chunk in response.stream(None, decode_content=True):
            for line in lines.feed(chunk):
                count += 1
                change = read_change(line)
                if change.version:
                    self.since = change.version
                if change.kind == "changed":
                    self.deliver(change)
                elif change.kind != "bookmark":
                    return count, change
        return count, None


class KubeBackend:
    """The pages' :class:`~startupmonkey.dashboard.backend.Backend` over the Kubernetes API,
    with the user's own kubeconfig, or (the in-cluster dashboard) with the ``credentials`` a
    user logged in with (the module's functions, refusals as Failures)."""

    def __init__(self, credentials: client.Credentials | None = None,
                 rights: str = "your kubeconfig, your rights") -> None:
        self.credentials = credentials
        self.rights = rights

    def _with(self) -> dict[str, Any]:
        """The credentials argument, only when there are some (the local mode calls the
        module's functions exactly as before)."""
        return {} if self.credentials is None else {"credentials": self.credentials}

    def list_objects(self, plural: str, namespace: str | None) -> Listing:
        return guarded(lambda: list_objects(plural, namespace, **self._with()))

    def get_remediation(self, namespace: str, name: str, follow: bool = True
                        ) -> tuple[dict[str, Any], str]:
        return guarded(lambda: get_remediation(namespace, name, follow, **self._with()))

    def act(self, command: str, namespace: str, name: str, sql_hash: str | None,
            reason: str) -> None:
        guarded(lambda: act(command, namespace, name, sql_hash, reason, **self._with()))

    def follower(self, plural: str, namespace: str | None, name: str, since: str,
                 deliver: Callable[[Change], None]) -> Watch:
        return Watch(plural, namespace, name, since, deliver, **self._with())
