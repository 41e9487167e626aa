"""Reading DatabaseMonitor manifests from files, with every error reported at once.

``startupmonkey run -f`` and ``startupmonkey validate -f`` read the same manifest a user would
``kubectl apply``; the same pydantic models as the CRD judge it, and a user who mistypes two
fields sees both (docs/design.md#conventions, 4).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

import pydantic
import yaml

from startupmonkey import dbreport
from startupmonkey.models import monitor


class ManifestError(ValueError):
    """A manifest that cannot be used; ``problems`` lists every one of them."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def load(path: Path) -> monitor.DatabaseMonitor:
    """Parse and validate one DatabaseMonitor manifest file."""
    try:
        data = yaml.safe_load(path.read_bytes().decode())
    except UnicodeDecodeError as exc:
        raise ManifestError(path, [f"not UTF-8 text (byte {exc.start}): a manifest is YAML "
                                   "in UTF-8"]) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(path, [f"cannot read YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ManifestError(path, ["expected a YAML mapping (a DatabaseMonitor manifest)"])
    try:
        return monitor.DatabaseMonitor.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = [f"{_location(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ManifestError(path, problems) from None


def main(args: argparse.Namespace) -> int:
    """``startupmonkey validate -f FILE``."""
    try:
        manifest = load(args.filename)
    except ManifestError as exc:
        print(f"{exc.path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    meta = manifest.metadata
    print(f"{args.filename}: DatabaseMonitor {meta.namespace}/{meta.name} is valid")
    print(f"  note: {superuser_note(manifest.spec.protect)}")
    if getattr(args, "database", False):
        user = args.user or os.environ.get("PGUSER") or getpass.getuser()
        found = dbreport.notices(manifest.spec, user, os.environ.get("PGPASSWORD"),
                                 "startupmonkey-validate")
        for notice in found or ["nothing is off on this database"]:
            print(f"  database: {notice}")
    return 0


def superuser_note(protect: monitor.Protect) -> str:
    """What happens to sessions that log in as a superuser (issue 17, item 4): told before a
    remediation on one is refused. ``validate`` cannot see the database; the executor's
    report (the SuperuserSessions condition, ``startupmonkey run``) names such sessions."""
    if protect.superusers:
        return ("sessions that log in as a superuser are never touched "
                "(spec.protect.superusers: true, the default): if your application logs in as "
                "one (postgres, say), its runaway queries, idle transactions and lock chains "
                "are Rejected. Log it in as an ordinary role, or set spec.protect.superusers "
                "to false. The DatabaseMonitor's SuperuserSessions condition names such "
                "sessions once the executor has checked the database")
    return ("spec.protect.superusers is false: sessions that log in as a superuser may be "
            "signalled, but only when the executor itself logs in as a superuser (PostgreSQL "
            "lets nobody else signal them); otherwise those remediations are Rejected")
