"""Notifications under ``startupmonkey run`` (issue 20, item 1): the real run in approval mode
sends a PendingApproval, signed, with the approve command for its executor socket, to a real
receiver on 127.0.0.1, the URL and key read from a private folder laid out as a mounted
Secret; the delivery record beside the audit log keeps a restarted notifier from sending it
again while a state it had not delivered is still sent; files others may read are refused."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import types
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from startupmonkey import auditlog, notify, runner
from startupmonkey.localserv import postgres
from startupmonkey.models import monitor as models
from tests.integration import test_runner as runner_test
from tests.support import workloads
from tests.support.eventually import eventually, wait_until
from tests.support.product import run_f
from tests.support.receivers import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
KEY = "run-signing-key"
FAST = notify.Retry(timeout=2, attempts=3, first_delay=0.05, max_delay=0.2)


def _secret_folder(tmp_path: Path, url: str, key: str | None = KEY) -> Path:
    folder = tmp_path / "secrets"
    (folder / "hook").mkdir(parents=True, mode=0o700)
    for name, value in (("url", url), ("hmac", key)):
        if value is not None:
            path = folder / "hook" / name
            path.write_text(value + "\n")
            path.chmod(0o600)
    return folder


TARGET = {"name": "ops", "secretRef": {"name": "hook", "hmacKey": "hmac"}}


def test_run_sends_a_pending_approval_to_a_real_receiver(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    spec = runner_test._manifest(pg_db)
    inner = spec["spec"]
    assert isinstance(inner, dict)
    inner.update({"mode": "approval", "notifications": [TARGET]})
    role = f"app_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_role(role)  # not a superuser: its session may be acted on
    app = pg_db.conninfo_for(role)
    with Receiver([200], key=KEY.encode()) as receiver, \
            workloads.idle_in_transaction(app):
        folder = _secret_folder(tmp_path, receiver.url)
        with run_f(spec, pg_cluster.superuser, tmp_path,
                   {runner.NOTIFY_FOLDER_ENV: str(folder)}, exit_zero=False) as run:
            wait_until(lambda: receiver.requests, timeout=150)
        output = run.output
        first = receiver.requests[0]
        assert first.signature_ok is True
        body = json.loads(first.body)
        assert body["state"] == "PendingApproval"
        name = body["remediation"]["name"]
        [command] = body["approval"]["commands"]
        assert command.startswith(f"startupmonkey approve {name} --executor unix://")
        assert f"--sql-hash {body['sqlHash'][:12]}" in command
        assert f"notification {name} PendingApproval to ops: delivered" in output, output
        assert receiver.url not in output and KEY not in output
    audit = run.audit
    record = auditlog.read(audit.with_name(audit.name + ".notified")).entries
    assert {"remediation": name, "pair": "PendingApproval@ops"} in record
    assert oct((audit.with_name(audit.name + ".notified")).stat().st_mode & 0o777) == "0o600"


def test_run_refuses_notifications_without_a_secret_folder(tmp_path: Path) -> None:
    manifest = tmp_path / "monitor.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
        "metadata": {"name": "m", "namespace": "dev"},
        "spec": {"database": {"host": "127.0.0.1", "dbname": "x",
                              "credentialsSecret": {"name": "unused"}},
                 "notifications": [TARGET]}}))
    env = {k: v for k, v in os.environ.items() if k != runner.NOTIFY_FOLDER_ENV}
    done = subprocess.run([str(runner_test.EXE), "run", "-f", str(manifest), "--plain"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 1
    assert "--notify-secret-dir" in done.stderr, done.stderr


PENDING = ["Proposed", "PendingApproval"]
SUCCEEDED = ["Proposed", "PendingApproval", "Approved", "Running", "Succeeded"]
FAILED = ["Proposed", "Running", "Failed"]


def _plane(tmp_path: Path, history: list[str]) -> Any:
    """What LocalNotifier reads of a run: a monitor notifying ``ops``, and its audit log,
    journaling one Remediation in ``history``'s last state."""
    monitor = models.DatabaseMonitor.model_validate({
        "metadata": {"name": "m", "namespace": "dev"},
        "spec": {"database": {"host": "h", "dbname": "d", "credentialsSecret": {"name": "u"}},
                 "notifications": [TARGET]}})
    plane = types.SimpleNamespace(monitor=monitor, audit_log=tmp_path / "audit.jsonl",
                                  executor_address="unix:///run/x.sock")
    _journal(plane.audit_log, history)
    return plane


def _journal(audit: Path, history: list[str]) -> None:
    auditlog.Appender(audit).append({"kind": "Remediation", "object": {
        "metadata": {"name": "m-0123456789", "namespace": "dev"},
        "spec": {"monitor": "m", "action": "drop_index", "riskClass": "destructive",
                 "detector": "unused_index", "sql": "DROP INDEX CONCURRENTLY x",
                 "sqlHash": "c" * 64, "target": {"schema": "public", "index": "x"}},
        "status": {"state": history[-1], "history": [
            {"state": s, "time": "2026-12-06T16:00:00Z"} for s in history]}}})


@contextlib.asynccontextmanager
async def _notifier(plane: Any, folder: Path, lines: list[str]
                    ) -> AsyncIterator[runner.LocalNotifier]:
    """run's notifier on ``plane`` and the secret ``folder``, its lines said into ``lines``;
    stopped at the end."""
    notifier = runner.LocalNotifier(plane, folder, lines.append, FAST)
    try:
        yield notifier
    finally:
        await notifier.stop()


async def test_a_restarted_notifier_sends_only_what_it_had_not_delivered(
        tmp_path: Path) -> None:
    lines: list[str] = []
    with Receiver([200], key=KEY.encode()) as receiver:
        folder = _secret_folder(tmp_path, receiver.url)
        plane = _plane(tmp_path, PENDING)
        async with _notifier(plane, folder, lines) as first:
            assert first.poll() == 1
            await eventually(lambda: len(receiver.requests) == 1)
            await eventually(lambda: first.delivered == {"m-0123456789": {
                "PendingApproval@ops"}})

        async with _notifier(plane, folder, lines) as second:  # the restart
            assert second.poll() == 0, "a recorded delivery was queued again"
            _journal(plane.audit_log, SUCCEEDED)
            assert second.poll() == 1
            await eventually(lambda: len(receiver.requests) == 2)
        states = [json.loads(r.body)["state"] for r in receiver.requests]
        assert states == ["PendingApproval", "Succeeded"]
        assert all(r.signature_ok for r in receiver.requests)


async def test_a_url_file_others_may_read_is_refused(tmp_path: Path) -> None:
    lines: list[str] = []
    with Receiver([200]) as receiver:
        folder = _secret_folder(tmp_path, receiver.url, key=None)
        (folder / "hook" / "url").chmod(0o644)
        plane = _plane(tmp_path, FAILED)
        plane.monitor.spec.notifications[0].secret_ref.hmac_key = None
        async with _notifier(plane, folder, lines) as notifier:
            notifier.poll()
            await eventually(lambda: any("chmod 600" in line for line in lines), timeout=10)
        assert receiver.requests == []
        assert receiver.url not in "\n".join(lines)


async def test_a_record_file_that_cannot_be_written_is_said_in_a_line(tmp_path: Path) -> None:
    lines: list[str] = []
    with Receiver([200], key=KEY.encode()) as receiver:
        folder = _secret_folder(tmp_path, receiver.url)
        plane = _plane(tmp_path, FAILED)
        async with _notifier(plane, folder, lines) as notifier:
            notifier.record_path.unlink(missing_ok=True)
            notifier.record_path.mkdir()  # a real write error (EISDIR), as ENOSPC would be
            assert notifier.poll() == 1
            await eventually(lambda: any("could not record" in line for line in lines))
            _journal(plane.audit_log, FAILED)
            assert notifier.poll() == 0, "the delivered state queued again"
        assert len(receiver.requests) == 1
        assert receiver.url not in "\n".join(lines)


async def test_a_pending_approval_approved_while_queued_is_not_sent(tmp_path: Path) -> None:
    lines: list[str] = []
    with Receiver([200], key=KEY.encode()) as receiver:
        folder = _secret_folder(tmp_path, receiver.url)
        plane = _plane(tmp_path, PENDING)
        async with _notifier(plane, folder, lines) as notifier:
            assert notifier.poll() == 1  # queued; its worker has not run yet
            _journal(plane.audit_log, SUCCEEDED)
            assert notifier.poll() == 1  # the Succeeded
            await eventually(lambda: not notifier.workers["ops"].pending)
        states = [json.loads(r.body)["state"] for r in receiver.requests]
        assert states == ["Succeeded"], "an approved PendingApproval was still sent"


async def test_run_refuses_an_empty_key_and_signs_with_the_key_less_its_newline(
        tmp_path: Path) -> None:
    lines: list[str] = []
    with Receiver([200], key=b" spaced key ") as receiver:
        folder = _secret_folder(tmp_path, receiver.url, key="")  # the file holds "\n"
        plane = _plane(tmp_path, FAILED)
        async with _notifier(plane, folder, lines) as notifier:
            notifier.poll()
            await eventually(lambda: any("is empty" in line for line in lines))
            assert receiver.requests == [], "sent unsigned"
            assert notifier.workers["ops"].health.reason == "SecretKeyNotFound"
        (folder / "hook" / "hmac").write_text(" spaced key \n")  # white space kept
        async with _notifier(plane, folder, lines) as again:
            again.poll()
            await eventually(lambda: len(receiver.requests) == 1)
            assert receiver.requests[0].signature_ok
