"""``startupmonkey``: the one CLI and container entrypoint.

Server subcommands (``operator``, ``collector``, ``analyser``, ``executor``) are what the
operator puts in each Deployment's command; ``run`` starts the whole data plane without
Kubernetes and ``demo`` runs it against a throwaway PostgreSQL; the client subcommands talk to a
running executor. A subcommand that is not built yet exits with status 3 and says so, rather
than pretending to work.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Before any subcommand imports grpc: `run` and `demo` fork child processes, which grpcio's
# fork handlers make unsafe while gRPC threads live.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
from collections.abc import Callable, Sequence
from pathlib import Path

NOT_BUILT = 3

#: subcommand -> (module with ``main(args) -> int``, or None when not built yet; help text)
COMMANDS: dict[str, tuple[str | None, str]] = {
    "operator": ("startupmonkey.operator.main",
                 "run the Kubernetes operator (reconciles DatabaseMonitors)"),
    "collector": ("startupmonkey.collector.main",
                  "snapshot one PostgreSQL database and stream it to the analyser"),
    "analyser": ("startupmonkey.analyser.main",
                 "detect problems in the snapshots and publish detections on NATS"),
    "executor": ("startupmonkey.executor.main",
                 "act on detections safely and record every Remediation"),
    "run": ("startupmonkey.runner",
            "run collector, analyser, executor and NATS locally from a manifest"),
    "demo": ("startupmonkey.demo",
             "throwaway PostgreSQL with real problems, fixed while you watch"),
    "status": ("startupmonkey.client", "list remediations (--kube: in the cluster, with your "
                                        "kubeconfig; else of a standalone executor)"),
    "approve": ("startupmonkey.client", "approve a pending remediation"),
    "reject": ("startupmonkey.client", "reject a pending remediation"),
    "rollback": ("startupmonkey.client", "roll back a kept remediation (e.g. drop a built index)"),
    "validate": ("startupmonkey.manifest", "check a DatabaseMonitor manifest and list every error"),
    "check": ("startupmonkey.check", "connect as each component would and say what works, "
              "what does not and how to fix it (OK / WARN / FAIL, one line each)"),
    "events": ("startupmonkey.events", "print a monitor's detections and Remediation state "
               "changes as they happen, with a read-only NATS login"),
    "dashboard": ("startupmonkey.dashboard", "a web dashboard on 127.0.0.1 of the monitors and "
                  "remediations you may see, with approve/reject buttons (your kubeconfig, "
                  "your rights)"),
}


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="rendered component config file (YAML), "
                        "re-read when it changes")
    parser.add_argument("--observability-port", type=int, default=8080,
                        help="port of /metrics, /healthz and /readyz (default 8080)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])


def _client_options(parser: argparse.ArgumentParser, command: str) -> None:
    if command != "status":
        parser.add_argument("remediation", help="Remediation name")
        parser.add_argument("--reason", default="", help="recorded with the decision")
    if command == "approve":
        parser.add_argument("--sql-hash", help="the SQL-HASH `status` showed you (at least 8 "
                            "characters): approve only that SQL (required with --kube)")
    parser.add_argument("--kube", action="store_true", help="in a cluster: Kubernetes API "
                        "requests with your own kubeconfig, as kubectl makes them")
    parser.add_argument("-n", "--namespace", help="with --kube: the namespace (default: the "
                        "kubeconfig context's, else default)")
    parser.add_argument("--executor", default="unix:///tmp/startupmonkey/executor.sock",
                        help="standalone: the executor's gRPC socket (unix:///path)")
    parser.add_argument("--token-file", type=Path, help="standalone: bearer token file, "
                        "sent on a unix:// socket only (never over plain TCP)")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")


def _manifest_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", type=Path, required=True,
                        help="DatabaseMonitor manifest (YAML)")


def _validate_options(parser: argparse.ArgumentParser) -> None:
    _manifest_option(parser)
    parser.add_argument("--database", action="store_true",
                        help="also connect to spec.database and say which features are off "
                        "on that server and why (password: PGPASSWORD or your libpq passfile)")
    parser.add_argument("--user", help="database user for --database (default: PGUSER, else "
                        "your OS user)")


def _run_options(parser: argparse.ArgumentParser) -> None:
    _manifest_option(parser)
    parser.add_argument("--user", help="database user (default: PGUSER, else your OS user); "
                        "the password comes from PGPASSWORD, your libpq passfile, or a prompt")
    parser.add_argument("--audit-log", type=Path, default=Path("startupmonkey-audit.jsonl"),
                        help="JSONL audit log of every Remediation (default %(default)s)")
    parser.add_argument("--state-file", type=Path,
                        default=Path("startupmonkey-final-state.json"),
                        help="final-state JSON written on exit (default %(default)s)")
    parser.add_argument("--plain", action="store_true",
                        help="one line per event even on a terminal")
    parser.add_argument("--give-up-after", type=float, metavar="SECONDS",
                        help="exit 1 with the reason when the database has not once been "
                        "reachable within this many seconds of the start (default: keep "
                        "retrying, and say so at every retry)")
    parser.add_argument("--notify-secret-dir", type=Path, metavar="DIR",
                        help="spec.notifications' webhook URLs and keys as files "
                        "DIR/<secret name>/<key>, mode 0600 (docs/notifications.md)")


def _check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", type=Path,
                        help="DatabaseMonitor manifest (YAML): check from this machine")
    parser.add_argument("--user", help="database user (default: PGUSER, else your OS user); "
                        "the password comes from PGPASSWORD or your libpq passfile")
    parser.add_argument("--executor-user", help="the executor's database user when it differs "
                        "from --user (its password: PGPASSWORD_EXECUTOR, else as --user's)")
    parser.add_argument("--kube", metavar="NAME", help="check the DatabaseMonitor NAME in a "
                        "cluster instead (your kubeconfig): its ServiceAccounts' RBAC, and the "
                        "database and NATS from a short-lived pod in its namespace with its "
                        "own Secrets")
    parser.add_argument("-n", "--namespace", help="with --kube: the namespace (default: the "
                        "kubeconfig context's, else default)")
    parser.add_argument("--pod-timeout", type=float, default=180.0, metavar="SECONDS",
                        help="with --kube: how long the check pod may take (default 180)")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    pod = parser.add_argument_group("inside the cluster (the check pod)")
    pod.add_argument("--config", type=Path, help="the rendered component config, with the "
                     "Secrets mounted as the components mount them")
    pod.add_argument("--collector-secret-dir", type=Path, help="where the collector's own "
                     "database Secret is mounted, when it has one")
    pod.add_argument("--message-file", type=Path, help="also write the checks there as "
                     "compact JSON (the pod's termination message)")


def _events_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("monitor", nargs="?", help="the DatabaseMonitor to follow (in a "
                        "cluster: its Secret <MONITOR>-nats-watcher gives the read-only "
                        "login, read with your kubeconfig)")
    parser.add_argument("-n", "--namespace", help="the monitor's namespace (default: the "
                        "kubeconfig context's, else default)")
    parser.add_argument("--nats", metavar="URL", help="where NATS is reached (default "
                        "nats://127.0.0.1:4222: after kubectl port-forward -n NS "
                        "svc/MONITOR-nats 4222)")
    parser.add_argument("--nats-user-file", type=Path, help="instead of the Secret: a file "
                        "holding the NATS user (e.g. of an external NATS)")
    parser.add_argument("--nats-password-file", type=Path, help="the file holding its "
                        "password (never on the command line)")
    parser.add_argument("--executor", metavar="unix:///PATH", help="standalone: the executor "
                        "address `startupmonkey run` printed; its work folder holds the "
                        "watcher login")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text",
                        help="json: one object per line, the message as published and its "
                        "subject (docs/protocol.md#live-events)")


def _dashboard_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=None, help="port (default 8765 on "
                        "127.0.0.1, 8443 with --in-cluster; 0: any free port, printed at start)")
    parser.add_argument("-n", "--namespace", help="show only this namespace (default: every "
                        "namespace you may list, else the kubeconfig context's)")
    parser.add_argument("--executor", metavar="unix:///PATH", help="standalone: the executor "
                        "address `startupmonkey run` printed, instead of Kubernetes")
    parser.add_argument("--token-file", type=Path, help="standalone: the executor's bearer "
                        "token file, when it asks for one (sent on its unix:// socket only)")
    parser.add_argument("--in-cluster", action="store_true", help="serve a cluster's users "
                        "(the chart's dashboard): HTTPS only, each user logs in with a "
                        "Kubernetes bearer token and acts with its rights (docs/dashboard.md)")
    parser.add_argument("--tls-cert", type=Path, help="with --in-cluster: the server "
                        "certificate (PEM, with its chain)")
    parser.add_argument("--tls-key", type=Path, help="with --in-cluster: its private key (PEM)")
    parser.add_argument("--address", default=None, help="with --in-cluster: the address to "
                        "listen on (default 0.0.0.0); without it always 127.0.0.1")


def _operator_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", action="append", default=[],
                        help="watch this namespace (repeatable; default: "
                        "$STARTUPMONKEY_WATCHING_NAMESPACES, else all namespaces)")
    parser.add_argument("--liveness-port", type=int, default=8080,
                        help="port of the liveness endpoint /healthz (default 8080)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])


def _demo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true",
                        help="keep the throwaway database for inspection")


OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "operator": _operator_options,
    "collector": _server_options,
    "analyser": _server_options,
    "executor": _server_options,
    "run": _run_options,
    "demo": _demo_options,
    "status": lambda p: _client_options(p, "status"),
    "approve": lambda p: _client_options(p, "approve"),
    "reject": lambda p: _client_options(p, "reject"),
    "rollback": lambda p: _client_options(p, "rollback"),
    "validate": _validate_options,
    "check": _check_options,
    "events": _events_options,
    "dashboard": _dashboard_options,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="startupmonkey",
        description="Watches PostgreSQL, finds what hurts, and fixes it safely.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, text) in COMMANDS.items():
        child = sub.add_parser(name, help=text, description=text)
        OPTIONS[name](child)
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("startupmonkey")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``startupmonkey`` console script."""
    args = build_parser().parse_args(argv)
    module_name, _ = COMMANDS[args.command]
    if module_name is None:
        print(f"startupmonkey {args.command}: not built yet in this version; "
              "see the project's open issues", file=sys.stderr)
        return NOT_BUILT
    module = importlib.import_module(module_name)
    code: int = module.main(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
