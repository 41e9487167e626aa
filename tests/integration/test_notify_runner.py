"""Notifications under ``startupmonkey run`` (issue 20, item 1): the real run in approval mode
sends a PendingApproval, signed, with the approve command for its executor socket, to a real
receiver on 127.0.0.1, the URL and key read from a private folder laid out as a mounted
Secret; the delivery record beside the audit log keeps a restarted notifier from sending it
again while a state it had not delivered is still sent; files others may read are refused."""

from __future__ import annotations

import contextlib
import datetime
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

from startupmonkey import auditlog, kubetime, notify, runner
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


def _plane(tmp_path: Path, history: list[str] | None,
           seen: datetime.timedelta | None = datetime.timedelta(hours=1)) -> Any:
    """What LocalNotifier reads of a run: a monitor notifying ``ops`` (first seen ``seen``
    ago, as the record file says; None: never), and its audit log, journaling one Remediation
    in ``history``'s last state now (None: nothing)."""
    monitor = models.DatabaseMonitor.model_validate({
        "metadata": {"name": "m", "namespace": "dev"},
        "spec": {"database": {"host": "h", "dbname": "d", "credentialsSecret": {"name": "u"}},
                 "notifications": [TARGET]}})
    plane = types.SimpleNamespace(monitor=monitor, audit_log=tmp_path / "audit.jsonl",
                                  executor_address="unix:///run/x.sock")
    if seen is not None:
        auditlog.Appender(_records(plane)).append(
            {"target": "ops", "since": kubetime.format(kubetime.utcnow() - seen)})
    if history is not None:
        _journal(plane.audit_log, history)
    return plane


def _records(plane: Any) -> Path:
    audit: Path = plane.audit_log
    return audit.with_name(audit.name + ".notified")


def _journal(audit: Path, history: list[str], at: datetime.datetime | None = None,
             name: str = "m-0123456789") -> None:
    """A Remediation in ``history``'s last state, each step taken ``at`` (default: now)."""
    when = kubetime.format(at or kubetime.utcnow())
    auditlog.Appender(audit).append({"kind": "Remediation", "object": {
        "metadata": {"name": name, "namespace": "dev"},
        "spec": {"monitor": "m", "action": "drop_index", "riskClass": "destructive",
                 "detector": "unused_index", "sql": "DROP INDEX CONCURRENTLY x",
                 "sqlHash": "c" * 64, "target": {"schema": "public", "index": "x"}},
        "status": {"state": history[-1], "history": [
            {"state": s, "time": when} for s in history]}}})


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


WEEKS_AGO = datetime.timedelta(days=14)


async def test_a_new_target_does_not_replay_the_old_audit_log(tmp_path: Path) -> None:
    """Notifications enabled on a run whose audit log holds finished Remediations: none of
    them is sent, not after a restart, not to a renamed target; what happens afterwards is
    sent once."""
    lines: list[str] = []
    old = kubetime.utcnow() - WEEKS_AGO
    with Receiver([200], key=KEY.encode()) as receiver:
        folder = _secret_folder(tmp_path, receiver.url)
        plane = _plane(tmp_path, None, seen=None)
        _journal(plane.audit_log, FAILED, old, name="m-0000000001")
        _journal(plane.audit_log, SUCCEEDED, old, name="m-0000000002")
        _journal(plane.audit_log, FAILED, kubetime.utcnow() - datetime.timedelta(minutes=5),
                 name="m-0000000003")
        async with _notifier(plane, folder, lines) as notifier:
            assert notifier.poll() == 0, "old news queued"
            since = notifier.since["ops"]
            _journal(plane.audit_log, FAILED, name="m-0000000004")
            assert notifier.poll() == 1
            await eventually(lambda: notifier.delivered.get("m-0000000004") == {"Failed@ops"})
        async with _notifier(plane, folder, lines) as again:  # a restart keeps the time
            assert again.since == {"ops": since}
            assert again.poll() == 0

        # Renamed (in a later second than the last Failed, which is then old news to it).
        seconds = kubetime.utcnow()
        await eventually(lambda: kubetime.utcnow() > seconds)
        plane.monitor.spec.notifications[0].name = "oncall"
        async with _notifier(plane, folder, lines) as renamed:
            assert renamed.since["oncall"] > since
            assert renamed.poll() == 0, "old news queued for the renamed target"
            _journal(plane.audit_log, FAILED, name="m-0000000005")
            assert renamed.poll() == 1
            await eventually(lambda: not renamed.workers["oncall"].pending)
        assert receiver.deliveries() == ["dev/m-0000000004/Failed", "dev/m-0000000005/Failed"]
    entries = auditlog.read(_records(plane)).entries
    assert {"target": "ops", "since": None} in entries  # removed: re-added, it starts anew


async def test_a_corrupt_record_file_is_said_once_and_quarantined(tmp_path: Path) -> None:
    """Unreadable lines of the record file are said in one line, moved aside, and every
    target starts from now: neither a delivery they may have recorded nor the old log is
    sent again; readable records still count; the next start says nothing."""
    lines: list[str] = []
    with Receiver([200], key=KEY.encode()) as receiver:
        folder = _secret_folder(tmp_path, receiver.url)
        plane = _plane(tmp_path, None, seen=WEEKS_AGO)
        records = _records(plane)
        auditlog.Appender(records).append({"remediation": "m-0000000001",
                                           "pair": "Failed@ops"})
        with records.open("a") as f:
            f.write('{"remediation": "m-0000000002", "pa\n[1, 2]\n{"what": "else"}\n')
        hour_ago = kubetime.utcnow() - datetime.timedelta(hours=1)
        for name in ("m-0000000001", "m-0000000002"):
            _journal(plane.audit_log, FAILED, hour_ago, name=name)
        async with _notifier(plane, folder, lines) as notifier:
            [said] = [line for line in lines if "unreadable" in line]
            assert "3 unreadable line(s)" in said and "lines 3, 4" in said, said
            assert notifier.delivered == {"m-0000000001": {"Failed@ops"}}
            assert notifier.since["ops"] > hour_ago, "the lost records' sends could repeat"
            assert notifier.poll() == 0
            _journal(plane.audit_log, FAILED, name="m-0000000003")
            assert notifier.poll() == 1
            await eventually(lambda: not notifier.workers["ops"].pending)
        quarantined = records.with_name(records.name + ".quarantine").read_text()
        assert '"pa' in quarantined and "[1, 2]" in quarantined and "else" in quarantined
        assert auditlog.read(records).bad_lines == []
        assert oct(records.stat().st_mode & 0o777) == "0o600"
        async with _notifier(plane, folder, lines) as again:
            assert again.poll() == 0
        assert len([line for line in lines if "unreadable" in line]) == 1, lines
        assert receiver.deliveries() == ["dev/m-0000000003/Failed"]


async def test_a_record_file_that_cannot_be_read_at_start_is_said_and_only_news_sent(
        tmp_path: Path) -> None:
    lines: list[str] = []
    with Receiver([200], key=KEY.encode()) as receiver:
        folder = _secret_folder(tmp_path, receiver.url)
        plane = _plane(tmp_path, None, seen=None)
        _records(plane).mkdir()  # a real read error (EISDIR)
        _journal(plane.audit_log, FAILED, kubetime.utcnow() - WEEKS_AGO, name="m-0000000001")
        async with _notifier(plane, folder, lines) as notifier:
            assert any("cannot be read" in line for line in lines), lines
            assert any("could not be written" in line for line in lines), lines
            assert notifier.poll() == 0, "old news queued"
            _journal(plane.audit_log, FAILED, name="m-0000000002")
            assert notifier.poll() == 1
            await eventually(lambda: any("could not record" in line for line in lines))
        assert receiver.deliveries() == ["dev/m-0000000002/Failed"]
