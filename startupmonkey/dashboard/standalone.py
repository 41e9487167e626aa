"""The dashboard against a standalone ``startupmonkey run``: its executor's gRPC API on the
run's private Unix socket (``startupmonkey dashboard --executor unix:///PATH``; issue 25).

The executor serves one namespace and one monitor. Its pages are drawn from the objects the
executor stores, exactly as in Kubernetes: each Remediation comes whole in ``object_json``
(``executor.proto``), the monitor from ``DescribeMonitor`` (its spec, its last database
report and its Remediations counted as the executor counts them for a DatabaseMonitor). The
rights are those of whoever may open the socket (only the run's user: the socket is 0600 in a
0700 folder), or of the token file's holder where the executor asks for one; the token is sent
on a ``unix://`` socket only, as the CLI sends it.

The executor API has no watch, so a live page's follower polls: every :data:`POLL_SECONDS` it
reads a version of what the page shows and compares it with the version the page was drawn
at. The list's version is the executor's revision of its Remediations (one call with one
Remediation, ``ListRemediationsResponse.revision``), or, from an executor that keeps none, a
fingerprint of every page; the monitor's and one Remediation's, a fingerprint (a hash of what
the executor sent) of that one object. Every call has a timeout; the channel tries to
reconnect at least every few seconds (:data:`CHANNEL_OPTIONS`), so an executor started again at
the same address is found again within one or two reads. Nothing here imports the Kubernetes
client.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from startupmonkey.dashboard.backend import (
    ACTIONS,
    Change,
    Listing,
    one_line,
)
from startupmonkey.dashboard.backend import Failure as Failure  # what connect raises
from startupmonkey.models import monitor, remediation
from startupmonkey.v1 import executor_pb2, executor_pb2_grpc, limits

T = TypeVar("T")
#: Every call to the executor: at most this long.
CALL_SECONDS = 10.0
#: A follower reads what its page shows this often, and after a failed read waits twice as
#: long each time, up to the second figure; it gives up after :data:`MAX_POLL_FAILURES`
#: failed reads in a row (the executor is gone: the page says so).
POLL_SECONDS = 2.0
MAX_POLL_SECONDS = 16.0
MAX_POLL_FAILURES = 4
#: The most pages of ListRemediations read for one list, and the most Remediations (an
#: executor whose tokens never end, or come back, is said, not followed).
MAX_PAGES = 10_000
MAX_ITEMS = 50_000
#: The channel's options: gRPC's message limits, and a reconnect backoff of 1 s to 4 s
#: (gRPC's default grows to 120 s, and a follower's read fails fast meanwhile).
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    *limits.GRPC_MESSAGE_SIZE_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 1000),
    ("grpc.min_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 4000),
)
#: What a token may hold: what a gRPC header value may (printable ASCII).
_HEADER_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F))
#: The HTTP status a page answers with, by the executor's gRPC status (others: 502).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
}
#: Where the executor's last database report says when it was made: left out of a monitor's
#: fingerprint, so a report that only says "checked again" is not a change.
CHECKED_AT = "checkedAt"


def failure_of(code: grpc.StatusCode | None, details: str | None) -> Failure:
    """The :class:`Failure` of a call the executor refused or did not answer."""
    status = HTTP_STATUS.get(code, 502) if code is not None else 502
    said = " ".join((details or "").split())
    if code is grpc.StatusCode.UNAVAILABLE:
        reason = (f"the executor did not answer (is `startupmonkey run` still running?): "
                  f"{said or 'unavailable'}")
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        reason = f"the executor did not answer within {CALL_SECONDS:g} s"
    elif code is grpc.StatusCode.UNIMPLEMENTED:
        reason = (f"the executor is older than this dashboard; run both from one install "
                  f"(executor: {said or 'unimplemented'})")
    else:
        name = code.name if code is not None else "error"
        reason = f"executor: {said}" if said else f"executor: {name}"
    return Failure(status, one_line(reason))


def code_of(exc: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    """The status code and details of a failed call."""
    if isinstance(exc, grpc.Call):
        return exc.code(), exc.details() or ""
    return None, str(exc)


def guarded(call: Callable[[], T]) -> T:
    """``call()``, with a refused or unanswered gRPC call as a :class:`Failure`."""
    try:
        return call()
    except grpc.RpcError as exc:
        raise failure_of(*code_of(exc)) from exc


def fingerprint(parts: Iterable[bytes]) -> str:
    """A version of what was read: the same bytes, the same version (hex, as a live page's
    address takes it)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:32]


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        found = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Failure(502, one_line(f"the executor sent {what} that is not JSON: {exc}")
                      ) from exc
    if not isinstance(found, dict):
        raise Failure(502, f"the executor sent {what} that is not a JSON object")
    return found


def _with_metadata(text: str, what: str) -> dict[str, Any]:
    """The JSON object ``text``, which must hold a ``metadata`` object (every page reads it)."""
    obj = _json_object(text, what)
    if not isinstance(obj.get("metadata"), dict):
        raise Failure(502, one_line(f"the executor sent {what} without metadata"))
    return obj


def remediation_object(message: executor_pb2.Remediation) -> dict[str, Any]:
    """The Remediation object the executor stores, as the pages read one (``object_json``);
    a :class:`Failure` from an executor older than that field."""
    if not message.object_json:
        raise Failure(502, one_line(
            f"the executor sent {message.name or 'a Remediation'} without its object "
            "(object_json): it is older than this dashboard; run both from one install"))
    return _with_metadata(message.object_json, f"Remediation {message.name}")


def revision_version(revision: str) -> str:
    """The version of a list the executor gave ``revision`` (hex, as a fingerprint)."""
    return fingerprint([b"revision", revision.encode()])


def monitor_version(obj: dict[str, Any]) -> str:
    """The fingerprint of a DescribeMonitor object, without the database report's time."""
    status = obj.get("status")
    if isinstance(status, dict) and isinstance(status.get("database"), dict):
        database = {k: v for k, v in status["database"].items() if k != CHECKED_AT}
        obj = {**obj, "status": {**status, "database": database}}
    return fingerprint([json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()])


def _token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise Failure(400, one_line(f"cannot read the token file {path}: "
                                    f"{exc.strerror or exc}")) from exc
    if not token:
        raise Failure(400, f"the token file {path} is empty")
    if not set(token) <= _HEADER_CHARS:
        raise Failure(400, f"the token file {path} holds characters a gRPC header cannot "
                           "carry (a token is printable ASCII, without line breaks)")
    return token


def metadata_for(address: str, token_file: Path | None) -> tuple[tuple[str, str], ...]:
    """What every call sends: the token, on a ``unix://`` socket only (never in clear text
    over TCP, as the CLI refuses it too)."""
    if token_file is None:
        return ()
    if not address.startswith("unix:"):
        raise Failure(400, f"--token-file over {address} would send the token in clear text: "
                           "use the executor's unix:///path socket")
    return (("authorization", f"Bearer {_token(token_file)}"),)


def socket_path(address: str) -> Path | None:
    """The file of a ``unix://`` address (None: not one)."""
    if address.startswith("unix://"):
        return Path(address[len("unix://"):])
    if address.startswith("unix:"):
        return Path(address[len("unix:"):])
    return None


class StandaloneBackend:
    """The pages' :class:`~startupmonkey.dashboard.backend.Backend` over one executor's API.

    ``namespace`` and ``monitor`` are the executor's, read at :func:`connect`.
    """

    def __init__(self, address: str, channel: grpc.Channel,
                 metadata: tuple[tuple[str, str], ...], namespace: str, monitor_name: str
                 ) -> None:
        self.address = address
        self.channel = channel
        self.stub = executor_pb2_grpc.ExecutorStub(channel)
        self.metadata = metadata
        self.namespace = namespace
        self.monitor = monitor_name
        self.rights = (f"the executor API of `startupmonkey run` at {address}, with the rights "
                       "of whoever may open its socket")

    def __repr__(self) -> str:  # the metadata holds the token
        return f"StandaloneBackend({self.address!r}, {self.namespace}/{self.monitor})"

    # --- reads ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel (a call under way ends with an error); nothing else stops."""
        self.channel.close()

    def describe(self) -> dict[str, Any]:
        """The monitor, as a DatabaseMonitor object."""
        answer = guarded(lambda: self.stub.DescribeMonitor(
            executor_pb2.DescribeMonitorRequest(namespace=self.namespace),
            metadata=self.metadata, timeout=CALL_SECONDS))
        return _with_metadata(answer.object_json, "its monitor")

    def _page(self, token: str, size: int) -> tuple[executor_pb2.ListRemediationsResponse, int]:
        """One page of ListRemediations from ``token``, and the page size it was read with:
        ``size``, or fewer where the executor could not send that many in one message
        (RESOURCE_EXHAUSTED: an executor that does not end its pages by their size)."""
        while True:
            try:
                return self.stub.ListRemediations(
                    executor_pb2.ListRemediationsRequest(
                        namespace=self.namespace, page_size=size, page_token=token),
                    metadata=self.metadata, timeout=CALL_SECONDS), size
            except grpc.RpcError as exc:
                code, details = code_of(exc)
                if code is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise failure_of(code, details) from exc
                if size <= 1:
                    raise Failure(502, one_line(
                        "the executor could not send a Remediation within gRPC's message "
                        f"limit: {details}")) from exc
                size = max(1, size // 4)

    def remediation_pages(self) -> tuple[list[executor_pb2.Remediation], str]:
        """Every Remediation, every page of ListRemediations, and the executor's revision
        when the first page was read ("": it keeps none)."""
        found: list[executor_pb2.Remediation] = []
        token, size, revision = "", limits.LIST_PAGE_SIZE_MAX, None
        seen = {token}
        for _ in range(MAX_PAGES):
            page, size = self._page(token, size)
            revision = page.revision if revision is None else revision
            found.extend(page.remediations)
            if len(found) > MAX_ITEMS:
                raise Failure(502, f"the executor's list passed {MAX_ITEMS:,} Remediations, "
                                   "more than this dashboard reads in one list")
            if not page.next_page_token:
                return found, revision
            if page.next_page_token in seen:
                raise Failure(502, one_line(
                    "the executor's list does not end: it gave a page token it had given "
                    f"before ({page.next_page_token[:40]!r}, after {len(seen)} pages)"))
            token = page.next_page_token
            seen.add(token)
        raise Failure(502, f"the executor's list did not end after {MAX_PAGES:,} pages")

    @staticmethod
    def _list_version(messages: list[executor_pb2.Remediation], revision: str) -> str:
        if revision:
            return revision_version(revision)
        return fingerprint(m.SerializeToString(deterministic=True) for m in messages)

    def _listed(self, plural: str) -> tuple[list[dict[str, Any]], str]:
        """The objects of ``plural`` (Remediations of the executor's namespace only) and
        their version."""
        if plural == monitor.PLURAL:
            obj = self.describe()
            return [obj], monitor_version(obj)
        if plural == remediation.PLURAL:
            messages, revision = self.remediation_pages()
            objects = [remediation_object(m) for m in messages]
            ours = [o for o in objects if o["metadata"].get("namespace") == self.namespace]
            return ours, self._list_version(messages, revision)
        raise Failure(404, f"nothing called {plural!r} here")

    def version_of(self, plural: str, name: str = "") -> str:
        """What a follower compares: the version of the list (the executor's revision, read
        with one Remediation; without one, the fingerprint of every page), of the monitor, or
        of one Remediation (``"gone"`` once it is not found)."""
        if name:
            try:
                return self._one(name)[1]
            except Failure as failure:
                if failure.status == 404:
                    return "gone"
                raise
        if plural == monitor.PLURAL:
            return monitor_version(self.describe())
        first, _ = self._page("", 1)
        if first.revision:
            return revision_version(first.revision)
        return self._list_version(*self.remediation_pages())

    def list_objects(self, plural: str, namespace: str | None) -> Listing:
        if namespace not in (None, self.namespace):
            return Listing([], f"This executor serves namespace {self.namespace} only.",
                           namespace)
        items, version = self._listed(plural)
        return Listing(items, "", self.namespace, version)

    def _one(self, name: str) -> tuple[dict[str, Any], str]:
        message = guarded(lambda: self.stub.GetRemediation(
            executor_pb2.GetRemediationRequest(namespace=self.namespace, name=name),
            metadata=self.metadata, timeout=CALL_SECONDS))
        version = fingerprint([message.SerializeToString(deterministic=True)])
        return remediation_object(message), version

    def get_remediation(self, namespace: str, name: str, follow: bool = True
                        ) -> tuple[dict[str, Any], str]:
        if namespace != self.namespace:
            raise Failure(404, f"this executor serves namespace {self.namespace}, "
                               f"not {namespace}")
        obj, version = self._one(name)
        return obj, version if follow else ""

    # --- actions -------------------------------------------------------------------------

    def act(self, command: str, namespace: str, name: str, sql_hash: str | None,
            reason: str) -> None:
        if command not in ACTIONS:
            raise Failure(400, f"unknown action {command!r}")
        if namespace != self.namespace:
            raise Failure(404, f"this executor serves namespace {self.namespace}, "
                               f"not {namespace}")
        reason = reason.strip()[:1024]
        if command == "approve":
            if not sql_hash:
                raise Failure(400, "approve needs the hash of the SQL you reviewed: reload "
                                   "the page and confirm again")
            guarded(lambda: self.stub.Approve(executor_pb2.ApproveRequest(
                namespace=namespace, name=name, sql_hash=sql_hash, comment=reason),
                metadata=self.metadata, timeout=CALL_SECONDS))
        elif command == "reject":
            guarded(lambda: self.stub.Reject(executor_pb2.RejectRequest(
                namespace=namespace, name=name, reason=reason),
                metadata=self.metadata, timeout=CALL_SECONDS))
        else:
            guarded(lambda: self.stub.Rollback(executor_pb2.RollbackRequest(
                namespace=namespace, name=name, reason=reason),
                metadata=self.metadata, timeout=CALL_SECONDS))

    def follower(self, plural: str, namespace: str | None, name: str, since: str,
                 deliver: Callable[[Change], None]) -> Poll:
        return Poll(lambda: self.version_of(plural, name), name, since, deliver)


def next_pause(pause: float, failed: bool) -> float:
    """The wait before the next read: :data:`POLL_SECONDS` after one that answered; after a
    failure twice the last wait, at most :data:`MAX_POLL_SECONDS`."""
    if not failed:
        return POLL_SECONDS
    return min(max(2 * pause, POLL_SECONDS), MAX_POLL_SECONDS)


class Poll:
    """Follows one page by reading its version (``read``) every :data:`POLL_SECONDS` in a
    thread of its own: ``changed`` (with ``name``) each time it differs from the last seen
    (at first, ``since``), and one last Change when it cannot go on (a refusal such as 401
    or 403 at once; an executor that does not answer after :data:`MAX_POLL_FAILURES` reads
    in a row), never after :meth:`stop`. Nothing escapes its thread unsaid."""

    def __init__(self, read: Callable[[], str], name: str, since: str,
                 deliver: Callable[[Change], None]) -> None:
        self.read, self.name, self.since, self.deliver = read, name, since, deliver
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="poll-executor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """End it now: a wait is cut short (a call under way ends within its timeout)."""
        self._stopping.set()

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def _run(self) -> None:
        try:
            ended = self._follow()
        except Exception as exc:  # the page is told, whatever it was
            ended = Change("failed", reason=one_line(
                f"following the executor ended on an error: {type(exc).__name__}: {exc}"))
        if not self.stopped:
            self.deliver(ended)

    def _follow(self) -> Change:
        pause, failures = 0.0, 0  # the first read at once: a change since the page was drawn
        while not self._stopping.wait(pause):
            try:
                version = self.read()
            except Failure as failure:
                if failure.status in (400, 401, 403):
                    return Change("failed", reason=failure.reason, status=failure.status)
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    return Change("failed", reason=one_line(
                        f"{failure.reason} ({failures} reads in a row)"),
                        status=failure.status)
                pause = next_pause(pause, failed=True)
                continue
            failures, pause = 0, next_pause(pause, failed=False)
            if version != self.since and not self.stopped:
                self.since = version
                self.deliver(Change("changed", version=version, name=self.name))
        return Change("stopped")


def unauthenticated(address: str, sent: bool, said: str) -> str:
    """Why the executor at ``address`` refused the first call (UNAUTHENTICATED), ``sent``: with
    a token."""
    if sent:
        return one_line(f"the executor at {address} refused the token: {said}")
    if socket_path(address) is None:
        return one_line(
            f"the executor at {address} asks for a token: a TCP executor needs --token-file, "
            "which this dashboard sends on a unix:///path socket only (never in clear text): "
            "use the executor's unix:// address with --token-file")
    return one_line(f"the executor at {address} asks for a token: pass --token-file (the "
                    "file the executor's executor.tokenFile names)")


def connect(args: argparse.Namespace) -> StandaloneBackend:
    """The backend of ``--executor`` (with ``--token-file``), once the executor has answered
    :meth:`~StandaloneBackend.describe`; a :class:`Failure` with a one-line reason when it
    cannot be reached or refuses."""
    address: str = args.executor
    path = socket_path(address)
    if path is not None and not path.is_socket():
        said = "no such file" if not path.exists() else "not a socket"
        raise Failure(502, f"no executor at {address} ({said}): start `startupmonkey run -f "
                           "<monitor.yaml>`, which prints its executor's address")
    metadata = metadata_for(address, args.token_file)
    channel = grpc.insecure_channel(address, options=list(CHANNEL_OPTIONS))
    try:
        answer = guarded(lambda: executor_pb2_grpc.ExecutorStub(channel).DescribeMonitor(
            executor_pb2.DescribeMonitorRequest(), metadata=metadata, timeout=CALL_SECONDS))
    except Failure as failure:
        channel.close()
        if failure.status == 401:
            raise Failure(401, unauthenticated(address, bool(metadata), failure.reason)
                          ) from failure
        raise
    except BaseException:
        channel.close()
        raise
    return StandaloneBackend(address, channel, metadata, answer.namespace, answer.name)
