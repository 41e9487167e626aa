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
reads what the page shows and compares a fingerprint of it (a hash of what the executor sent)
with the version the page was drawn at. Every call has a timeout. Nothing here imports the
Kubernetes client.
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
#: The most pages of ListRemediations read for one list (a token that never ends is a bug).
MAX_PAGES = 10_000
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
    else:
        name = code.name if code is not None else "error"
        reason = f"executor: {said}" if said else f"executor: {name}"
    return Failure(status, one_line(reason))


def guarded(call: Callable[[], T]) -> T:
    """``call()``, with a refused or unanswered gRPC call as a :class:`Failure`."""
    try:
        return call()
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        raise failure_of(code, details) from exc


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


def remediation_object(message: executor_pb2.Remediation) -> dict[str, Any]:
    """The Remediation object the executor stores, as the pages read one (``object_json``);
    a :class:`Failure` from an executor older than that field."""
    if not message.object_json:
        raise Failure(502, one_line(
            f"the executor sent {message.name or 'a Remediation'} without its object "
            "(object_json): it is older than this dashboard; run both from one install"))
    obj = _json_object(message.object_json, f"Remediation {message.name}")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        raise Failure(502, f"the executor sent Remediation {message.name} without metadata")
    return obj


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

    def describe(self) -> dict[str, Any]:
        """The monitor, as a DatabaseMonitor object."""
        answer = guarded(lambda: self.stub.DescribeMonitor(
            executor_pb2.DescribeMonitorRequest(namespace=self.namespace),
            metadata=self.metadata, timeout=CALL_SECONDS))
        return _json_object(answer.object_json, "its monitor")

    def remediation_pages(self) -> list[executor_pb2.Remediation]:
        """Every Remediation, every page of ListRemediations."""
        found: list[executor_pb2.Remediation] = []
        token = ""
        for _ in range(MAX_PAGES):
            page = guarded(lambda: self.stub.ListRemediations(
                executor_pb2.ListRemediationsRequest(
                    namespace=self.namespace, page_size=limits.LIST_PAGE_SIZE_MAX,
                    page_token=token),  # noqa: B023
                metadata=self.metadata, timeout=CALL_SECONDS))
            found.extend(page.remediations)
            if not page.next_page_token or page.next_page_token == token:
                return found
            token = page.next_page_token
        raise Failure(502, f"the executor's list did not end after {MAX_PAGES} pages")

    def _listed(self, plural: str) -> tuple[list[dict[str, Any]], str]:
        """The objects of ``plural`` and their fingerprint."""
        if plural == monitor.PLURAL:
            obj = self.describe()
            return [obj], monitor_version(obj)
        if plural == remediation.PLURAL:
            messages = self.remediation_pages()
            version = fingerprint(m.SerializeToString(deterministic=True) for m in messages)
            return [remediation_object(m) for m in messages], version
        raise Failure(404, f"nothing called {plural!r} here")

    def version_of(self, plural: str, name: str = "") -> str:
        """What a follower compares: the fingerprint of the list, or of one Remediation
        (``"gone"`` once it is not found)."""
        if name:
            try:
                return self._one(name)[1]
            except Failure as failure:
                if failure.status == 404:
                    return "gone"
                raise
        if plural == monitor.PLURAL:
            return monitor_version(self.describe())
        return fingerprint(m.SerializeToString(deterministic=True)
                           for m in self.remediation_pages())

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
    channel = grpc.insecure_channel(address, options=list(limits.GRPC_MESSAGE_SIZE_OPTIONS))
    try:
        answer = guarded(lambda: executor_pb2_grpc.ExecutorStub(channel).DescribeMonitor(
            executor_pb2.DescribeMonitorRequest(), metadata=metadata, timeout=CALL_SECONDS))
    except Failure as failure:
        channel.close()
        if failure.status == 401:
            raise Failure(401, one_line(f"the executor at {address} refused the token: "
                                        f"{failure.reason}")) from failure
        raise
    except BaseException:
        channel.close()
        raise
    return StandaloneBackend(address, channel, metadata, answer.namespace, answer.name)
