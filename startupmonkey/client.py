"""``startupmonkey status|approve|reject|rollback``: the CLI, in two modes.

- **Cluster** (``--kube [-n NS]``): Kubernetes API requests made with your own kubeconfig,
  loaded by the ``kubernetes`` client as kubectl loads it (``$KUBECONFIG``, a list of files
  included; ``token``, ``tokenFile``, client certificates or an ``exec`` credential plugin), so
  the API server authenticates you and RBAC decides; no token of yours ever reaches the
  executor. ``status`` lists the namespace's Remediations; ``approve`` checks that the planned
  SQL's hash is the one you reviewed (``--sql-hash``, as ``status`` shows it), then
  merge-patches ``spec.approved: true`` with the annotation ``startupmonkey.dev/approved-by``
  naming you (your SelfSubjectReview user name: the chart's admission policy accepts only the
  sender's own name there); ``reject`` and ``rollback`` set the request annotations
  ``startupmonkey.dev/reject-requested`` / ``rollback-requested`` to ``"<you>: <reason>"``.
- **Standalone** (``--executor unix:///path``): the executor's gRPC API on its private Unix
  socket, whose permissions authenticate.

A token is never sent over plain TCP: a kubeconfig whose server is not ``https://``, and
``--token-file`` with a ``host:port`` executor address, are refused with a one-line error
saying what to do instead (docs/decisions.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from google.protobuf import json_format
from kubernetes.client.exceptions import ApiException

from startupmonkey import kubeapi, summary
from startupmonkey.models import monitor, remediation
from startupmonkey.models.enums import RemediationState
from startupmonkey.v1 import executor_pb2, executor_pb2_grpc, limits

log = logging.getLogger(__name__)
GROUP, VERSION = monitor.GROUP, monitor.VERSION
ANNOTATION_REJECT = remediation.LABEL_PREFIX + "reject-requested"
#: The shortest ``--sql-hash`` prefix accepted (``status`` shows 12 characters).
MIN_HASH_PREFIX = 8


class Refused(Exception):
    """A one-line reason the command did nothing."""


@dataclasses.dataclass
class Row:
    """What the table shows of one Remediation, from either mode."""

    name: str
    state: str
    action: str
    target: str
    created: float | None
    sql_hash: str
    message: str
    result: str = ""
    benefit: str = ""


def _age(created: float | None) -> str:
    if not created:
        return "-"
    seconds = int(datetime.datetime.now(datetime.UTC).timestamp() - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cell(text: str, width: int) -> str:
    """``text`` on one line, at most ``width`` characters (cut with "...")."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 3].rstrip() + "..."


def table(rows: list[Row]) -> str:
    """A readable table, one Remediation per line (SQL-HASH: what ``approve --sql-hash``
    takes; RESULT and BENEFIT: what changed and the time it saves, startupmonkey/summary.py)."""
    lines = [("NAME", "STATE", "ACTION", "TARGET", "AGE", "SQL-HASH", "RESULT", "BENEFIT",
              "MESSAGE")]
    lines += [(r.name, r.state, r.action, r.target or "-", _age(r.created),
               r.sql_hash[:12] or "-", _cell(r.result, 72) or "-", _cell(r.benefit, 40) or "-",
               _cell(r.message, 60)) for r in rows]
    last = len(lines[0]) - 1
    widths = [max(len(line[i]) for line in lines) for i in range(last)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line[:last], widths, strict=True))
                     + "  " + line[last] for line in lines)


def _check_hash(wanted: str | None, planned: str, name: str) -> None:
    """Refuse unless ``wanted`` (the hash the approver reviewed, or a prefix of it) names
    ``planned``."""
    if wanted is None:
        raise Refused(f"say which SQL you reviewed: --sql-hash <SQL-HASH of {name} as "
                      "`status` shows it>")
    wanted = wanted.strip().lower()
    if len(wanted) < MIN_HASH_PREFIX or not planned.startswith(wanted):
        raise Refused(f"the planned SQL's hash is {planned[:12]}, not {wanted!r} (at least "
                      f"{MIN_HASH_PREFIX} characters): review it again with `status`")


# --- standalone: the executor's gRPC API on its Unix socket ------------------------------

def _proto_summary(r: executor_pb2.Remediation) -> summary.Summary:
    """The executor's summary, or (an executor from before it wrote one) one made here from
    the measurements."""
    if r.summary or r.benefit:
        return summary.Summary(r.summary, r.benefit)
    status: dict[str, Any] = {"state": r.state}
    for key, measurement in (("before", r.before), ("after", r.after)):
        with contextlib.suppress(ValueError):
            numbers = json.loads(measurement.details_json or "{}")
            if isinstance(numbers, dict):
                status[key] = numbers
    return summary.describe_object({"spec": {"action": r.action}, "status": status})


def _proto_row(r: executor_pb2.Remediation) -> Row:
    said = _proto_summary(r)
    return Row(r.name, r.state, r.action, r.target.display, r.created_at.seconds or None,
               r.sql_hash, r.message, said.text, said.benefit)


def _proto_document(r: executor_pb2.Remediation, row: Row) -> dict[str, Any]:
    """The JSON form: every field of the message, with ``summary`` and ``benefit`` always
    there (the raw numbers stay in ``before``/``after``)."""
    return {**json_format.MessageToDict(r), "summary": row.result, "benefit": row.benefit}


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str | bytes], ...]:
    if args.token_file is None:
        return ()
    if not args.executor.startswith("unix:"):
        raise Refused(f"--token-file over {args.executor} would send the token in clear "
                      "text: use the executor's unix:///path socket (standalone) or --kube "
                      "(in a cluster)")
    return (("authorization", f"Bearer {args.token_file.read_text().strip()}"),)


def _grpc(args: argparse.Namespace) -> tuple[list[Row], list[dict[str, Any]]]:
    meta = _metadata(args)
    with grpc.insecure_channel(args.executor, options=list(
            limits.GRPC_MESSAGE_SIZE_OPTIONS)) as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)
        if args.command == "status":
            response = stub.ListRemediations(executor_pb2.ListRemediationsRequest(),
                                             metadata=meta, timeout=30)
            items = list(response.remediations)
        else:
            current = stub.GetRemediation(executor_pb2.GetRemediationRequest(
                name=args.remediation), metadata=meta, timeout=30)
            if args.command == "approve":
                if args.sql_hash is not None:
                    _check_hash(args.sql_hash, current.sql_hash, current.name)
                items = [stub.Approve(executor_pb2.ApproveRequest(
                    name=args.remediation, sql_hash=current.sql_hash, comment=args.reason),
                    metadata=meta, timeout=30).remediation]
            elif args.command == "reject":
                items = [stub.Reject(executor_pb2.RejectRequest(
                    name=args.remediation, reason=args.reason), metadata=meta,
                    timeout=30).remediation]
            else:
                items = [stub.Rollback(executor_pb2.RollbackRequest(
                    name=args.remediation, reason=args.reason), metadata=meta,
                    timeout=30).remediation]
    rows = [_proto_row(r) for r in items]
    return rows, [_proto_document(r, row) for r, row in zip(items, rows, strict=True)]


# --- cluster: Kubernetes API requests with the user's own kubeconfig ---------------------

class _Collected(logging.Handler):
    """Keeps what the kubernetes config loader logs (a failing exec plugin is logged there,
    not raised) so the refusal can say it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@dataclasses.dataclass(frozen=True)
class Credentials:
    """A user's bearer token for one API server (its ``https://`` address and CA file):
    what the in-cluster dashboard acts with for a user who logged in with that token, in
    place of a kubeconfig (``args.credentials``, read by :func:`_kube_client`). ``namespace``
    is the one to act in when ``args.namespace`` names none. ``tls_server_name`` and the proxy
    settings are the dashboard's own configuration's, when it has them (the user's requests go
    the way its own do). The token (and the proxy's headers, which may hold a password) is
    never in a repr."""

    host: str
    ca_file: str | None
    token: str = dataclasses.field(repr=False)
    namespace: str = "default"
    tls_server_name: str | None = None
    proxy: str | None = None
    no_proxy: str | None = None
    proxy_headers: dict[str, str] | None = dataclasses.field(default=None, repr=False)

    def api_client(self) -> kubernetes.client.ApiClient:
        """A new client sending this token only (no client certificate, no other header)."""
        if not self.host.startswith("https://"):
            raise Refused(f"the API server's address {self.host} is not https://: a user's "
                          "token is never sent in clear text")
        config = kubernetes.client.Configuration()
        config.host = self.host
        config.ssl_ca_cert = self.ca_file
        config.verify_ssl = True
        config.api_key = {"authorization": self.token}
        config.api_key_prefix = {"authorization": "Bearer"}
        if self.tls_server_name:
            config.tls_server_name = self.tls_server_name
        if self.proxy:
            config.proxy = self.proxy
        if self.no_proxy:
            config.no_proxy = self.no_proxy
        if self.proxy_headers:
            config.proxy_headers = dict(self.proxy_headers)
        config.retries = kubeapi.RETRIES
        return kubernetes.client.ApiClient(config)


def _kube_client(args: argparse.Namespace) -> tuple[kubernetes.client.ApiClient, str]:
    """A client with the user's kubeconfig (or, when ``args.credentials`` is a
    :class:`Credentials`, with that token instead), and the namespace to act in."""
    given = getattr(args, "credentials", None)
    if isinstance(given, Credentials):
        return given.api_client(), args.namespace or given.namespace
    config = kubernetes.client.Configuration()
    collected = _Collected()
    root = logging.getLogger()
    root.addHandler(collected)
    # Read now (the client's default is fixed when it is imported): one file, or a list.
    files = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    try:
        kubernetes.config.load_kube_config(config_file=files, client_configuration=config,
                                           persist_config=False)
        _contexts, active = kubernetes.config.list_kube_config_contexts(config_file=files)
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        raise Refused(f"cannot load the kubeconfig: {' '.join(str(exc).split())}") from exc
    finally:
        root.removeHandler(collected)
    if not str(config.host).startswith("https://"):
        raise Refused(f"the kubeconfig's server {config.host} is not https://: your "
                      "credentials are never sent in clear text; use the API server's TLS "
                      "address")
    if collected.messages and not config.api_key and not config.cert_file:
        raise Refused(f"cannot get a token: kubeconfig {collected.messages[-1]}")
    config.retries = kubeapi.RETRIES
    namespace = args.namespace or (active or {}).get("context", {}).get("namespace") \
        or "default"
    return kubernetes.client.ApiClient(config), namespace


def _kube_row(obj: dict[str, Any]) -> Row:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    target = spec.get("target") or {}
    shown = (f"{target.get('schema', 'public')}.{target['table']}" if target.get("table")
             else f"pid {target['pid']}" if target.get("pid") else "")
    database = spec.get("database")
    shown += remediation.where(database if isinstance(database, str) else None)
    created = obj.get("metadata", {}).get("creationTimestamp")
    stamp = datetime.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() \
        if created else None
    said = summary.of_object(obj)
    return Row(obj["metadata"]["name"], status.get("state") or "-", spec.get("action", ""),
               shown, stamp, spec.get("sqlHash", ""), status.get("message", ""), said.text,
               said.benefit)


def _kube_document(obj: dict[str, Any], row: Row) -> dict[str, Any]:
    """The object as the API server sent it, with ``status.summary`` and ``status.benefit``
    always there (made here for an object an older executor wrote)."""
    status = {**(obj.get("status") or {}), "summary": row.result, "benefit": row.benefit}
    return {**obj, "status": status}


def _who_am_i(client: kubernetes.client.ApiClient) -> str:
    review = kubernetes.client.AuthenticationV1Api(client).create_self_subject_review(
        kubernetes.client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1",
                                              kind="SelfSubjectReview"),
        _request_timeout=kubeapi.REQUEST_TIMEOUT)
    user = review.status.user_info if review.status else None
    if user is None or not user.username:
        raise Refused("the API server did not say who you are (SelfSubjectReview)")
    return str(user.username)


def _object(answer: object) -> dict[str, Any]:
    """A custom-object answer (the client returns the decoded JSON)."""
    if not isinstance(answer, dict):
        raise Refused(f"the API server sent {type(answer).__name__}, not an object")
    return answer


def _kube(args: argparse.Namespace) -> tuple[list[Row], list[dict[str, Any]]]:
    client, namespace = _kube_client(args)
    custom = kubernetes.client.CustomObjectsApi(client)
    timeout = kubeapi.REQUEST_TIMEOUT
    try:
        if args.command == "status":
            found = _object(custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, remediation.PLURAL, _request_timeout=timeout))
            items = sorted(found.get("items") or [], reverse=True,
                           key=lambda o: o["metadata"].get("creationTimestamp") or "")
            rows = [_kube_row(o) for o in items]
            return rows, [_kube_document(o, row) for o, row in zip(items, rows, strict=True)]
        who = _who_am_i(client)
        current = _object(custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, remediation.PLURAL, args.remediation,
            _request_timeout=timeout))
        row = _kube_row(current)
        reason = " ".join((args.reason or "no reason given").split())
        annotations: dict[str, str]
        spec: dict[str, Any] = {}
        if args.command in ("approve", "reject") and \
                row.state != RemediationState.PENDING_APPROVAL.value:
            raise Refused(f"{row.name} is {row.state}, not PendingApproval")
        if args.command == "approve":
            _check_hash(args.sql_hash, row.sql_hash, row.name)
            annotations = {remediation.ANNOTATION_APPROVED_BY: who}
            spec = {"approved": True}
        elif args.command == "reject":
            annotations = {ANNOTATION_REJECT: f"{who}: {reason}"[:1024]}
        else:
            if not current.get("spec", {}).get("rollbackSql") or \
                    row.state != RemediationState.SUCCEEDED.value:
                raise Refused(f"{row.name} ({row.action}, {row.state}) has nothing to roll back")
            annotations = {remediation.ANNOTATION_ROLLBACK: f"{who}: {reason}"[:1024]}
        # resourceVersion: the object approved is the one just checked, or the patch fails.
        patch: dict[str, Any] = {"metadata": {
            "resourceVersion": current["metadata"]["resourceVersion"],
            "annotations": annotations}}
        if spec:
            patch["spec"] = spec
        changed = _object(custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, remediation.PLURAL, args.remediation, patch,
            _request_timeout=timeout))
        row = _kube_row(changed)
        return [row], [_kube_document(changed, row)]
    finally:
        client.close()


def _api_reason(exc: ApiException) -> str:
    """The API server's own explanation, on one line."""
    error = kubeapi.ApiError.from_exception(exc)
    return " ".join(f"{error.status} {exc.reason or ''}: {error.message}".split())[:1500]


def main(args: argparse.Namespace) -> int:
    """Entry point of the client subcommands."""
    try:
        rows, documents = _kube(args) if args.kube else _grpc(args)
    except Refused as exc:
        print(f"startupmonkey {args.command}: {exc}", file=sys.stderr)
        return 1
    except ApiException as exc:
        print(f"startupmonkey {args.command}: Kubernetes API: {_api_reason(exc)}",
              file=sys.stderr)
        return 1
    except urllib3.exceptions.HTTPError as exc:
        print(f"startupmonkey {args.command}: the Kubernetes API server did not answer: "
              f"{' '.join(str(getattr(exc, 'reason', None) or exc).split())[:300]}",
              file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        code = exc.code()
        print(f"startupmonkey {args.command}: {code.name}: {exc.details()}",
              file=sys.stderr)
        return 1
    except OSError as exc:  # an unreadable --token-file
        print(f"startupmonkey {args.command}: cannot read the token: "
              f"{exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(documents, indent=2))
    else:
        print(table(rows))
    return 0
