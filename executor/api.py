"""The executor's gRPC API (``startupmonkey.v1.Executor``): list, get, approve, reject, roll back,
and describe the monitor it serves (``DescribeMonitor``, for the dashboard standalone).

Served standalone only (docs/decisions.md, issue 24.2): on a Unix socket only its user can
open (mode 0600 in a 0700 folder), or on TCP with a token file readable only by its user (one
that group or others may access is refused: at start, and at every call; a wrong or missing
token is UNAUTHENTICATED; the CLI never sends a token over plain TCP). In a cluster the executor
serves no API at all: people approve, reject and roll back with Kubernetes API requests of their
own (``startupmonkey approve --kube``, or kubectl), so no user's token ever reaches the executor.

Approving sets ``spec.approved`` (the engine's tick then runs the planned SQL, hash checked);
the request must name the ``sql_hash`` the approver reviewed. Rejecting and rolling back are
requests too: an annotation on the Remediation (who asked, and why) that the engine acts on at
its next tick (a pending Remediation ends Rejected; a kept, reversible change is reverted), so
callers need ``patch`` on remediations only, never on their status, which only the executor
writes.
"""

from __future__ import annotations

import dataclasses
import datetime
import hmac
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol, runtime_checkable

import grpc
from google.protobuf import timestamp_pb2

from startupmonkey import grpcserve
from startupmonkey.executor import records
from startupmonkey.models import monitor as monitor_models
from startupmonkey.models import remediation
from startupmonkey.models.enums import RemediationState
from startupmonkey.v1 import executor_pb2, executor_pb2_grpc, limits

SERVICE = "startupmonkey.v1.Executor"
#: ListRemediations ends a page before its serialized size would pass this (a third of
#: ``limits.MAX_MESSAGE_BYTES`` is left for the last Remediation and the envelope), whatever
#: page_size asks for, and says where to go on in ``next_page_token``.
PAGE_TARGET_BYTES = 3 * limits.MIB
#: What a repeated message field adds to a message's size besides the message itself: its
#: tag and length (at most 1 + 5 bytes).
_ITEM_OVERHEAD = 6
_SURROGATE = re.compile("[\ud800-\udfff]")


@runtime_checkable
class Revisioned(Protocol):
    """What a store may offer the API beyond :class:`records.Store` (the JSONL store does;
    the Kubernetes store, whose executor serves no API, does not)."""

    def revision(self) -> str:
        """A token that changes whenever a Remediation is created or changed."""

    def snapshot(self) -> list[records.Record]:
        """Every record as held, not copied: for reading only."""


@dataclasses.dataclass
class Caller:
    """An authenticated caller and the store that acts with its identity."""

    identity: str
    store: records.Store


class NamedRequest(Protocol):
    """A request that names one Remediation (Get, Approve, Reject, Rollback)."""

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...


class Authenticator(Protocol):
    """Turns a call's metadata into a Caller, or aborts the call."""

    async def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        """The caller of this call."""


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The token of ``authorization: Bearer <token>``, if sent."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


async def _unauthenticated(context: grpc.aio.ServicerContext[Any, Any], why: str) -> NoReturn:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
    raise AssertionError("abort returned")  # pragma: no cover


class UnsafeTokenFile(ValueError):
    """The standalone API's token file is missing or others may access it."""


def check_token_file(path: Path) -> None:
    """Refuse a token file that anyone but its owner may read or write: whoever can read
    the token can approve, reject and roll back (UnsafeTokenFile, saying how to fix it)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UnsafeTokenFile(f"executor.tokenFile {path}: {exc.strerror or exc}") from exc
    if mode & 0o077:
        raise UnsafeTokenFile(f"executor.tokenFile {path} is accessible by group or others "
                         f"(mode {mode & 0o777:04o}); it must be readable only by its user: "
                         f"chmod 600 {path}")


class LocalAccess:
    """Standalone: a private Unix socket, or a token file for TCP."""

    def __init__(self, store: records.Store, token_file: Path | None) -> None:
        self.store = store
        self.token_file = token_file
        if token_file is not None:
            check_token_file(token_file)

    async def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        if self.token_file is None:
            return Caller(f"local user {os.getuid()}", self.store)
        try:  # checked again at every call: a token file loosened or removed since the start
            check_token_file(self.token_file)
            expected = self.token_file.read_text().strip()
        except (ValueError, OSError) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"the executor refuses every call: {exc}")
        token = bearer_token(context)
        if token is None or not hmac.compare_digest(token, expected):
            await _unauthenticated(context, "a valid token is required "
                                   "('authorization: Bearer <token from the token file>')")
        return Caller("token-file holder", self.store)


def json_text(value: Any) -> str:
    """``value`` as compact JSON text with its characters as they are (UTF-8 on the wire:
    an escaped non-ASCII character costs 6 to 12 bytes, written as itself 2 to 4), but a lone
    surrogate, which only its escape carries as valid UTF-8 (it can only be in a string)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)
    return text


def _timestamp(value: Any) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    if value is not None:
        stamp.FromDatetime(value)
    return stamp


def body(record: records.Record) -> dict[str, Any]:
    """The record as its Remediation object, with the store's version when it has one."""
    found = record.body()
    if record.version:
        found["metadata"]["resourceVersion"] = record.version
    return found


def decision(record: records.Record) -> executor_pb2.Decision | None:
    """The keep-or-revert decision's API form; None when there is none (yet)."""
    made = record.status.decision
    if made is None:
        return None
    message = executor_pb2.Decision(outcome="keep" if made.keep else "revert",
                                    reason=made.reason)
    before, after = made.before_mean_ms, made.after_mean_ms
    if before is not None and after is not None and before > 0 and math.isfinite(after / before):
        message.ratio = after / before
    when = decided_at(record.status.history)
    if when is not None:
        message.decided_at.CopyFrom(_timestamp(when))
    return message


def decided_at(history: list[remediation.StateChange]) -> datetime.datetime | None:
    """When the keep-or-revert decision was taken: the decision ends verification, so the
    time of the first step after the last Verifying one (Succeeded when kept, RolledBack or
    Failed when reverted); without such a step in the history (kept to its last 64 steps),
    its last step's; None without history."""
    verifying = [i for i, step in enumerate(history)
                 if step.state is RemediationState.VERIFYING]
    if verifying and verifying[-1] + 1 < len(history):
        return history[verifying[-1] + 1].time
    return history[-1].time if history else None


def to_proto(record: records.Record) -> executor_pb2.Remediation:
    """The API form of a record: its fields, and the whole object as JSON (``object_json``)."""
    spec, status, target = record.spec, record.status, record.spec.target
    message = executor_pb2.Remediation(
        name=record.name, namespace=record.namespace, monitor=spec.monitor,
        resource_version=record.version or "", detector=spec.detector.value,
        action=spec.action.value, risk_class=spec.risk_class.value, state=record.state.value,
        detection_key=spec.detection_key, detection_id=spec.detection_id,
        target=executor_pb2.Target(
            display=(f"{target.schema_}.{target.table}" if target.table else (
                f"pid {target.pid}" if target.pid else "")) + remediation.where(spec.database),
            database=spec.database or "",
            schema=target.schema_ or "", table=target.table or "", index=target.index or "",
            columns=target.columns, pid=target.pid),
        sql=spec.sql, rollback_sql=spec.rollback_sql or "", sql_hash=spec.sql_hash,
        evidence_json=json_text(spec.evidence), created_at=_timestamp(record.created),
        approved=spec.approved, approver=status.approved_by or "",
        message=status.message, summary=status.summary or "", benefit=status.benefit or "",
        rollback_available=bool(
            spec.rollback_sql and record.state is RemediationState.SUCCEEDED),
        before=executor_pb2.Measurement(details_json=json_text(status.before)),
        after=executor_pb2.Measurement(details_json=json_text(status.after)),
        object_json=json_text(body(record)))
    decided = decision(record)
    if decided is not None:
        message.decision.CopyFrom(decided)
    if spec.approval_expires_at is not None:
        message.approval_expires_at.CopyFrom(_timestamp(spec.approval_expires_at))
    for step in status.history:
        message.transitions.add(state=step.state.value, at=_timestamp(step.time),
                                message=step.message)
    if status.history:
        message.updated_at.CopyFrom(_timestamp(status.history[-1].time))
    return message


def monitor_object(namespace: str, name: str, spec: monitor_models.DatabaseMonitorSpec,
                   database: dict[str, Any] | None, counts: monitor_models.RemediationCounts,
                   databases: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The DatabaseMonitor object DescribeMonitor answers: the spec the executor runs with,
    its last database report (``status.database``, and with other databases
    ``status.databases`` and ``status.databasesReachable``, as the Kubernetes store writes
    them) and the counts (no conditions or phase: the operator's)."""
    status: dict[str, Any] = {"remediations": monitor_models.DatabaseMonitorStatus(
        remediations=counts).patch()["remediations"]}
    if database is not None:
        status["database"] = database
    if databases is not None:
        reached = [monitor_models.DatabaseReach.model_validate(e) for e in databases]
        status["databases"] = [r.dump() for r in reached]
        status["databasesReachable"] = monitor_models.databases_reachable(
            bool((database or {}).get("reachable")), reached)
    return {"apiVersion": f"{monitor_models.GROUP}/{monitor_models.VERSION}",
            "kind": "DatabaseMonitor", "metadata": {"name": name, "namespace": namespace},
            "spec": spec.dump(),
            "status": status}


class ExecutorService(executor_pb2_grpc.ExecutorServicer):
    """The servicer; every call authenticates first.

    ``spec`` gives the monitor's spec as the executor runs it now (it is hot-reloaded) and
    ``database`` its last database report and ``databases`` its last report of the other
    databases (``status.databases``), for DescribeMonitor; without ``spec`` that call is
    refused (FAILED_PRECONDITION), saying where the monitor is read instead.
    """

    def __init__(self, namespace: str, monitor: str, auth: Authenticator,
                 spec: Callable[[], monitor_models.DatabaseMonitorSpec] | None = None,
                 database: Callable[[], dict[str, Any] | None] | None = None,
                 databases: Callable[[], list[dict[str, Any]] | None] | None = None) -> None:
        self.namespace = namespace
        self.monitor = monitor
        self.auth = auth
        self.spec = spec
        self.database = database
        self.databases = databases

    async def _check_scope(self, namespace: str,
                           context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if namespace and namespace != self.namespace:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"this executor serves namespace "
                                f"{self.namespace!r}, not {namespace!r}")

    async def _guarded(self, context: grpc.aio.ServicerContext[Any, Any], work: Any) -> Any:
        try:
            return await work
        except records.Conflict as exc:
            await context.abort(grpc.StatusCode.ABORTED, str(exc))

    async def _record(self, caller: Caller, name: str,
                      context: grpc.aio.ServicerContext[Any, Any]) -> records.Record:
        found = await self._guarded(context, caller.store.get(name))
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no Remediation {name!r}")
        record: records.Record = found
        return record

    async def _named(self, request: NamedRequest, context: grpc.aio.ServicerContext[Any, Any]
                     ) -> tuple[Caller, records.Record]:
        """The caller, and the Remediation the request names in this executor's scope."""
        await self._check_scope(request.namespace, context)
        caller = await self.auth.caller(context)
        return caller, await self._record(caller, request.name, context)

    async def _pending(self, request: NamedRequest, context: grpc.aio.ServicerContext[Any, Any]
                       ) -> tuple[Caller, records.Record]:
        """:meth:`_named`, refused unless the Remediation awaits approval."""
        caller, record = await self._named(request, context)
        if record.state is not RemediationState.PENDING_APPROVAL:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"{record.name} is {record.state.value}, not PendingApproval")
        return caller, record

    async def _reread(self, caller: Caller, name: str,
                      context: grpc.aio.ServicerContext[Any, Any]) -> executor_pb2.Remediation:
        """The Remediation as stored after a change."""
        return to_proto(await self._record(caller, name, context))

    async def _every(self, caller: Caller, context: grpc.aio.ServicerContext[Any, Any]
                     ) -> tuple[list[records.Record], str]:
        """Every record, for reading only, and the store's revision ("" when it keeps
        none): the records as held where the store allows it (no copy of each), else its
        list."""
        store = caller.store
        if isinstance(store, Revisioned):
            return store.snapshot(), store.revision()
        found: list[records.Record] = await self._guarded(context, store.list())
        return found, ""

    async def ListRemediations(self, request: executor_pb2.ListRemediationsRequest,
                               context: grpc.aio.ServicerContext[Any, Any]
                               ) -> executor_pb2.ListRemediationsResponse:
        await self._check_scope(request.namespace, context)
        caller = await self.auth.caller(context)
        token = request.page_token or "0"
        if not (token.isascii() and token.isdigit()) or len(token) > 18:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "page_token: not a token this executor gave")
        found, revision = await self._every(caller, context)
        wanted = set(request.states)
        by_name = sorted(found, key=lambda r: r.name)
        chosen = [r for r in sorted(by_name, key=lambda r: r.created, reverse=True)
                  if (not wanted or r.state.value in wanted or r.state.token in wanted)
                  and (not request.detector or r.spec.detector.value == request.detector)]
        size = min(request.page_size or limits.LIST_PAGE_SIZE_DEFAULT, limits.LIST_PAGE_SIZE_MAX)
        start = int(token)
        page: list[executor_pb2.Remediation] = []
        used = len(revision) + 64  # the revision, the token and their tags
        for record in chosen[start:start + size]:
            message = to_proto(record)
            used += message.ByteSize() + _ITEM_OVERHEAD
            if page and used > PAGE_TARGET_BYTES:
                break
            page.append(message)
        end = start + len(page)
        return executor_pb2.ListRemediationsResponse(
            remediations=page, next_page_token=str(end) if end < len(chosen) else "",
            revision=revision)

    async def GetRemediation(self, request: executor_pb2.GetRemediationRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> executor_pb2.Remediation:
        _caller, record = await self._named(request, context)
        return to_proto(record)

    async def Approve(self, request: executor_pb2.ApproveRequest,
                      context: grpc.aio.ServicerContext[Any, Any]
                      ) -> executor_pb2.ApproveResponse:
        caller, record = await self._pending(request, context)
        if request.sql_hash != record.spec.sql_hash:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "sql_hash does not match the planned SQL: review it again "
                                f"(planned {record.spec.sql_hash})")
        await self._guarded(context, caller.store.approve(record.name, caller.identity))
        return executor_pb2.ApproveResponse(
            remediation=await self._reread(caller, request.name, context))

    async def Reject(self, request: executor_pb2.RejectRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> executor_pb2.RejectResponse:
        caller, record = await self._pending(request, context)
        await self._guarded(context, caller.store.request_reject(
            record.name, caller.identity, request.reason or "no reason given"))
        return executor_pb2.RejectResponse(
            remediation=await self._reread(caller, request.name, context))

    async def Rollback(self, request: executor_pb2.RollbackRequest,
                       context: grpc.aio.ServicerContext[Any, Any]
                       ) -> executor_pb2.RollbackResponse:
        caller, record = await self._named(request, context)
        if not record.spec.rollback_sql or record.state is not RemediationState.SUCCEEDED:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"{record.name} ({record.spec.action.value}, "
                                f"{record.state.value}) has nothing to roll back")
        await self._guarded(context, caller.store.request_rollback(
            record.name, caller.identity, request.reason or "no reason given"))
        return executor_pb2.RollbackResponse(
            remediation=await self._reread(caller, request.name, context))

    async def DescribeMonitor(self, request: executor_pb2.DescribeMonitorRequest,
                              context: grpc.aio.ServicerContext[Any, Any]
                              ) -> executor_pb2.DescribeMonitorResponse:
        await self._check_scope(request.namespace, context)
        caller = await self.auth.caller(context)
        if self.spec is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"this executor does not describe its monitor: read "
                                f"DatabaseMonitor {self.namespace}/{self.monitor} from the "
                                "Kubernetes API")
            raise AssertionError("abort returned")  # pragma: no cover
        found, revision = await self._every(caller, context)
        described = monitor_object(self.namespace, self.monitor, self.spec(),
                                   self.database() if self.database else None,
                                   records.remediation_counts(found),
                                   self.databases() if self.databases else None)
        return executor_pb2.DescribeMonitorResponse(
            namespace=self.namespace, name=self.monitor, object_json=json_text(described),
            revision=revision)


async def serve(address: str, service: ExecutorService) -> grpcserve.Server:
    """Start the API (and grpc.health.v1) on ``address`` (``unix:///path``, a socket only
    our user may open, or host:port); ``stop(grace)`` ends it."""
    server = grpcserve.Server(
        lambda s: executor_pb2_grpc.add_ExecutorServicer_to_server(service, s), (SERVICE,),
        options=limits.GRPC_MESSAGE_SIZE_OPTIONS)
    await server.start(address)
    return server
