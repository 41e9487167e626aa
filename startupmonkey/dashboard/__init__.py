"""``startupmonkey dashboard``: a web dashboard of the DatabaseMonitors and Remediations the
user may see, with approve / reject / roll back buttons (issue 25; docs/dashboard.md).

Three modes, one set of pages (:mod:`startupmonkey.dashboard.backend`): local with the user's
kubeconfig (below); ``--executor``, against a standalone ``startupmonkey run``'s executor API
(:mod:`startupmonkey.dashboard.standalone`); ``--in-cluster``, the chart's dashboard for a
cluster's users, who log in with their own bearer token (:mod:`startupmonkey.dashboard.
incluster`).

Local mode: it listens on 127.0.0.1 only and acts with the user's own kubeconfig and rights,
exactly as ``startupmonkey status|approve|reject|rollback --kube`` do (no identity of its own,
nothing new to secure in the cluster). It answers only the browser that opened the login URL it
prints once at start (a random key; the URL sets a session cookie), so other programs and OS
users of the machine cannot use it with your rights. Pages are rendered on the server (Jinja2
templates and one stylesheet in this package) and read without JavaScript; the buttons are
plain forms with a confirmation step.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

LOCAL_PORT = 8765
IN_CLUSTER_PORT = 8443


def _refused(reason: str) -> int:
    print(f"startupmonkey dashboard: {reason}", file=sys.stderr)
    return 1


def main(args: argparse.Namespace) -> int:
    """Entry point of ``startupmonkey dashboard``: local with the kubeconfig (the default),
    against a standalone executor (``--executor``), or for a cluster's users
    (``--in-cluster``)."""
    from startupmonkey.dashboard import server

    if args.in_cluster:
        if args.executor or args.token_file:
            return _refused("--in-cluster excludes --executor and --token-file (in the "
                            "cluster each user logs in with a token of its own)")
        from startupmonkey.dashboard import incluster

        args.port = IN_CLUSTER_PORT if args.port is None else args.port
        return incluster.main(args)
    if args.address or args.tls_cert or args.tls_key:
        return _refused("--address, --tls-cert and --tls-key go with --in-cluster only (a "
                        "local dashboard listens on 127.0.0.1 only)")
    port = LOCAL_PORT if args.port is None else args.port
    if args.executor:
        from startupmonkey.dashboard import standalone

        try:
            source = standalone.connect(args)
        except standalone.Failure as failure:
            return _refused(failure.reason)
        if args.namespace and args.namespace != source.namespace:
            source.close()
            return _refused(f"the executor at {args.executor} serves namespace "
                            f"{source.namespace}, not {args.namespace}")
        try:
            return asyncio.run(server.serve(server.Settings(namespace=source.namespace), port,
                                            source))
        finally:
            source.close()
    if args.token_file:
        return _refused("--token-file goes with --executor only")
    from startupmonkey import client  # this mode only: it loads the kubernetes client

    try:  # the kubeconfig is read once now, so a broken one is said at start
        api, _ = client._kube_client(argparse.Namespace(namespace=args.namespace))
        api.close()
    except client.Refused as exc:
        return _refused(str(exc))
    return asyncio.run(server.serve(server.Settings(namespace=args.namespace), port))
