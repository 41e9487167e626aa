"""``startupmonkey status|approve|reject|rollback``: the CLI on top of the executor's gRPC API.

Addresses are ``unix:///path`` (standalone: the socket's permissions authenticate) or
``host:port``. A bearer token comes from ``--token-file`` or, when there is none, from the
current kubeconfig user (``token``, ``tokenFile`` or an ``exec`` credential plugin; in a
cluster, ``kubectl create token <sa>`` gives one); the executor makes its Kubernetes calls with
it, so RBAC decides what you may do.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format

from startupmonkey.v1 import executor_pb2, executor_pb2_grpc, limits

log = logging.getLogger(__name__)


def _kubeconfig_token() -> str | None:
    """The current kubeconfig user's bearer token (``token`` or ``tokenFile``). ``KUBECONFIG``
    may list several files, as for kubectl: the first to set a value wins."""
    listed = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    docs: list[dict[str, Any]] = []
    for name in filter(None, listed.split(os.pathsep)):
        try:
            doc = yaml.safe_load(Path(name).expanduser().read_text())
        except FileNotFoundError:
            continue  # listed but absent (no Kubernetes here): kubectl allows it too
        except (OSError, yaml.YAMLError) as exc:
            log.debug("kubeconfig %s skipped: %s", name, exc)
            continue
        if isinstance(doc, dict):
            docs.append(doc)
    current = next((d["current-context"] for d in docs if d.get("current-context")), None)
    context: dict[str, Any] = next((c.get("context") or {} for d in docs
                                    for c in d.get("contexts") or []
                                    if c.get("name") == current), {})
    user: dict[str, Any] = next((u.get("user") or {} for d in docs
                                 for u in d.get("users") or []
                                 if u.get("name") == context.get("user")), {})
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).expanduser().read_text().strip()
    if not token and user.get("exec"):
        token = _exec_token(user["exec"])
    return str(token) if token else None


class TokenError(Exception):
    """The kubeconfig's credential plugin gave no token."""


def _exec_token(plugin: dict[str, Any]) -> str | None:
    """Run a kubeconfig ``exec`` credential plugin (cloud logins, kubelogin) and return the
    token of its ExecCredential."""
    api_version = plugin.get("apiVersion", "client.authentication.k8s.io/v1")
    env = {**os.environ, **{e["name"]: e["value"] for e in plugin.get("env") or []},
           "KUBERNETES_EXEC_INFO": json.dumps({
               "apiVersion": api_version, "kind": "ExecCredential",
               "spec": {"interactive": False}})}
    try:
        done = subprocess.run([plugin["command"], *(plugin.get("args") or [])], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError, KeyError) as exc:
        raise TokenError(f"kubeconfig exec plugin: {exc}") from exc
    if done.returncode != 0:
        raise TokenError(f"kubeconfig exec plugin {plugin['command']} exited "
                         f"{done.returncode}: {done.stderr.strip()[:500]}")
    try:
        token = json.loads(done.stdout)["status"].get("token")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TokenError(f"kubeconfig exec plugin {plugin['command']}: no ExecCredential "
                         "on its output") from exc
    return str(token) if token else None


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str | bytes], ...]:
    token = args.token_file.read_text().strip() if args.token_file else None
    if token is None and not args.executor.startswith("unix:"):
        token = _kubeconfig_token()
    return (("authorization", f"Bearer {token}"),) if token else ()


def _age(stamp: Any) -> str:
    if not stamp.seconds:
        return "-"
    seconds = int(datetime.datetime.now(datetime.UTC).timestamp()) - stamp.seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(items: list[executor_pb2.Remediation]) -> str:
    """A readable table, one Remediation per line."""
    rows = [("NAME", "STATE", "ACTION", "TARGET", "AGE", "MESSAGE")]
    rows += [(r.name, r.state, r.action, r.target.display or "-", _age(r.created_at),
              r.message[:60]) for r in items]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True))
                     + "  " + row[5] for row in rows)


def _print(args: argparse.Namespace, items: list[executor_pb2.Remediation]) -> None:
    if args.output == "json":
        print(json.dumps([json_format.MessageToDict(r) for r in items], indent=2))
    else:
        print(table(items))


def _call(args: argparse.Namespace) -> list[executor_pb2.Remediation]:
    with grpc.insecure_channel(args.executor, options=list(
            limits.GRPC_MESSAGE_SIZE_OPTIONS)) as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)
        meta = _metadata(args)
        if args.command == "status":
            response = stub.ListRemediations(executor_pb2.ListRemediationsRequest(),
                                             metadata=meta, timeout=30)
            return list(response.remediations)
        current = stub.GetRemediation(executor_pb2.GetRemediationRequest(
            name=args.remediation), metadata=meta, timeout=30)
        if args.command == "approve":
            return [stub.Approve(executor_pb2.ApproveRequest(
                name=args.remediation, sql_hash=current.sql_hash, comment=args.reason),
                metadata=meta, timeout=30).remediation]
        if args.command == "reject":
            return [stub.Reject(executor_pb2.RejectRequest(
                name=args.remediation, reason=args.reason), metadata=meta,
                timeout=30).remediation]
        return [stub.Rollback(executor_pb2.RollbackRequest(
            name=args.remediation, reason=args.reason), metadata=meta, timeout=30).remediation]


def main(args: argparse.Namespace) -> int:
    """Entry point of the client subcommands."""
    try:
        items = _call(args)
    except grpc.RpcError as exc:
        code = exc.code()
        print(f"startupmonkey {args.command}: {code.name}: {exc.details()}",
              file=sys.stderr)
        return 1
    except TokenError as exc:
        print(f"startupmonkey {args.command}: cannot get a token: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an unreadable --token-file or kubeconfig tokenFile
        print(f"startupmonkey {args.command}: cannot read the token: "
              f"{exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 1
    _print(args, items)
    return 0
