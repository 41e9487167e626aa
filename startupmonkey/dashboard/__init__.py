"""``startupmonkey dashboard``: a web dashboard of the DatabaseMonitors and Remediations the
user may see, with approve / reject / roll back buttons (issue 25; docs/dashboard.md).

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

from startupmonkey import client


def main(args: argparse.Namespace) -> int:
    """Entry point of ``startupmonkey dashboard``."""
    from startupmonkey.dashboard import server

    try:  # the kubeconfig is read once now, so a broken one is said at start
        api, _ = client._kube_client(argparse.Namespace(namespace=args.namespace))
        api.close()
    except client.Refused as exc:
        print(f"startupmonkey dashboard: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(server.serve(server.Settings(namespace=args.namespace), args.port))
