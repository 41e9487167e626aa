"""``startupmonkey events`` on a real nats-server configured from ``startupmonkey.natsperms``
(as the operator's managed NATS and ``startupmonkey run``'s embedded one are): it follows a
detection published by the real analyser publisher and the state changes the real executor
publishes, with the watcher login, whose every publication the server refuses; its ``-o json``
lines are the messages as published, fitting the checked-in JSON Schemas; the command itself
reads run's work folder, says malformed messages and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from startupmonkey import events, natsperms, observability, settings
from startupmonkey.analyser import metrics as analyser_metrics
from startupmonkey.analyser import publisher
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import messages
from tests.support import executor_helpers as helpers
from tests.support.eventually import eventually
from tests.support.streams import next_line

pytestmark = pytest.mark.integration
NS, MON = helpers.NAMESPACE, helpers.MONITOR
Role = natsperms.Role
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "v1"


def connection(server: natsserver.NatsServer, login: natsperms.Login) -> events.Connection:
    return events.Connection(server.url, NS, MON, login.user, login.password)


class Following:
    """``events.follow`` running in this process: its printed lines and its other words."""

    def __init__(self, feed: events.Feed) -> None:
        self.feed = feed
        self.lines: list[str] = []
        self.said: list[str] = []
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


@contextlib.asynccontextmanager
async def following(conn: events.Connection, json_lines: bool) -> AsyncIterator[Following]:
    f = Following(events.Feed(conn.namespace, conn.monitor, json_lines))
    f.task = asyncio.create_task(events.follow(conn, f.feed, f.lines.append, f.said.append,
                                               f.stop))
    try:
        await eventually(lambda: any(s.startswith("following ") for s in f.said) or
                         f.task.done(), timeout=30)
        yield f
    finally:
        f.stop.set()
        await f.task


def login_files(tmp_path: Path, login: natsperms.Login) -> tuple[Path, Path]:
    user, password = tmp_path / f"{login.user}-user", tmp_path / f"{login.user}-password"
    user.write_text(login.user)
    password.write_text(login.password)
    return user, password


@contextlib.asynccontextmanager
async def analyser_publisher(server: natsserver.NatsServer, login: natsperms.Login,
                             tmp_path: Path) -> AsyncIterator[publisher.Publisher]:
    """The analyser's own publisher with the analyser's login, as its pod has it."""
    user, password = login_files(tmp_path, login)
    obs = observability.Observability("analyser")

    async def ignore(event: messages.RemediationEvent) -> None:
        pass
    pub = publisher.Publisher(settings.NatsSettings(url=server.url, user_file=user,
                                                    password_file=password),
                              settings.MonitorRef(namespace=NS, name=MON), obs.health,
                              analyser_metrics.Metrics(obs.registry), ignore)
    pub.start()
    try:
        async with asyncio.timeout(30):
            assert await pub.wait_connected()
        yield pub
    finally:
        await pub.close()


def fits_schema(document: dict[str, Any]) -> str:
    """The schema file a ``-o json`` line's message fits (checked here: the model accepts
    it and its keys are the schema's, every required one present); which one, by subject."""
    message = document["message"]
    kind = "detection" if ".detections." in document["subject"] else "remediation-event"
    schema = json.loads((SCHEMAS / f"{kind}.json").read_text())
    assert set(schema["required"]) <= set(message) <= set(schema["properties"]), message
    assert message["schema"] == schema["properties"]["schema"]["const"]
    parse = messages.parse_detection if kind == "detection" else \
        messages.parse_remediation_event
    assert parse(json.dumps(message).encode()).subject == document["subject"]
    return kind


async def test_follows_the_analysers_detection_and_the_executors_state_changes(
        pg_db: postgres.PostgresDatabase, nats_roles: natsserver.NatsServer,
        nats_logins: dict[Role, natsperms.Login], tmp_path: Path) -> None:
    helpers.stale_tables(pg_db.conninfo, "orders")
    cfg = helpers.config(pg_db, nats_roles.url, tmp_path)
    assert cfg.executor is not None
    cfg.executor.nats.user_file, cfg.executor.nats.password_file = login_files(
        tmp_path, nats_logins[Role.EXECUTOR])
    detection = helpers.table_detection("orders")
    async with (following(connection(nats_roles, nats_logins[Role.WATCHER]),
                          json_lines=True) as feed,
                helpers.running_executor(cfg),
                analyser_publisher(nats_roles, nats_logins[Role.ANALYSER], tmp_path) as pub):
        assert await pub.publish(detection)

        def states() -> list[str]:
            found = [json.loads(line)["message"] for line in feed.lines]
            return [m["state"] for m in found if "state" in m]
        await eventually(lambda: "Succeeded" in states(), timeout=60,
                         what=lambda: f"lines: {feed.lines}, said: {feed.said}")
    documents = [json.loads(line) for line in feed.lines]
    assert documents[0] == {"subject": detection.subject,
                            "message": json.loads(detection.encode())}
    assert [fits_schema(d) for d in documents] == \
        ["detection"] + ["remediation-event"] * (len(documents) - 1)
    assert {d["message"]["detectionId"] for d in documents[1:]} == {detection.id}
    assert feed.feed.counts["malformed"] == 0


async def test_the_watcher_login_may_publish_nothing(
        nats_roles: natsserver.NatsServer, nats_logins: dict[Role, natsperms.Login]) -> None:
    """Straight with nats-py and the watcher's credentials: every publication is refused by
    the server and reaches no subscriber."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())
    watcher = nats_logins[Role.WATCHER]
    detection, subjects = helpers.table_detection("orders"), []
    async with following(connection(nats_roles, watcher), json_lines=True) as feed:
        client = Client()
        await client.connect(nats_roles.url, user=watcher.user, password=watcher.password,
                             error_cb=on_error, max_reconnect_attempts=0)
        try:
            subjects = [detection.subject,
                        messages.remediation_subject(NS, MON, messages.RemediationState.FAILED),
                        f"$JS.API.STREAM.CREATE.{natsperms.stream_name(NS, MON)}",
                        "_INBOX.anything"]
            for subject in subjects:
                await client.publish(subject, detection.encode())
            await client.flush()
            for subject in subjects:
                await eventually(lambda s=subject: any(
                    "permissions violation for publish" in e and s.lower() in e
                    for e in errors), timeout=10, what=lambda: str(errors))
        finally:
            await client.close()
    assert feed.lines == [], "a refused publication reached the feed"


async def test_a_login_that_may_not_read_the_monitor_is_refused_in_words(
        nats_roles: natsserver.NatsServer, nats_logins: dict[Role, natsperms.Login]) -> None:
    analyser = nats_logins[Role.ANALYSER]  # may read remediation events only, not everything
    with pytest.raises(events.Refused, match=r"(?i)permissions violation for subscription"):
        async with following(connection(nats_roles, analyser), json_lines=False) as feed:
            assert feed.task is not None
            await feed.task
    wrong = natsperms.Login("watcher", "not-the-password", Role.WATCHER)
    with pytest.raises(events.Refused, match=r"(?i)refused the login: .*authorization"):
        await events.follow(connection(nats_roles, wrong), events.Feed(NS, MON, False),
                            print, print, asyncio.Event())


async def test_a_bus_not_there_yet_is_said_and_retried_until_asked_to_stop() -> None:
    """As when the port-forward is not up yet: no crash, no refusal, words; Ctrl-C ends it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    said: list[str] = []
    stop = asyncio.Event()
    task = asyncio.create_task(events.follow(
        events.Connection(f"nats://127.0.0.1:{port}", NS, MON), events.Feed(NS, MON, False),
        print, said.append, stop))
    await eventually(lambda: any(f"cannot reach NATS at nats://127.0.0.1:{port}" in s
                                 and s.endswith("retrying") for s in said), timeout=30)
    assert not task.done()
    stop.set()
    async with asyncio.timeout(30):
        await task  # returns: no Refused
    assert not any(s.startswith("following") for s in said)


async def test_the_command_reads_runs_work_folder_and_stops_on_sigterm(
        nats_roles: natsserver.NatsServer, nats_logins: dict[Role, natsperms.Login],
        tmp_path: Path) -> None:
    """A folder laid out as `startupmonkey run` writes it (events.write_connection), the real
    command as a process: one JSON line per message, malformed ones said and counted."""
    folder = tmp_path / "startupmonkey-run"
    folder.mkdir(mode=0o700)
    events.write_connection(folder, connection(nats_roles, nats_logins[Role.WATCHER]))
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "startupmonkey.cli", "events", "--executor",
        f"unix://{folder}/executor.sock", "-o", "json", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    analyser = Client()
    try:
        said = await next_line(process.stderr, "stderr")
        assert said.startswith("startupmonkey events: following startupmonkey.v1.tests.shop.>")
        assert nats_logins[Role.WATCHER].password not in said
        await analyser.connect(nats_roles.url, user=nats_logins[Role.ANALYSER].user,
                               password=nats_logins[Role.ANALYSER].password)
        detection = helpers.table_detection("orders")
        await analyser.publish(detection.subject, b"\x00\xff not a detection")
        await analyser.publish(detection.subject, detection.encode())
        await analyser.flush()
        first = json.loads(await next_line(process.stdout, "stdout"))
        assert first["subject"] == detection.subject and first["malformedCount"] == 1
        assert first["malformed"].startswith("detection: ")
        second = json.loads(await next_line(process.stdout, "stdout"))
        assert second == {"subject": detection.subject,
                          "message": json.loads(detection.encode())}
        assert fits_schema(second) == "detection"
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
        rest = (await process.stderr.read()).decode()
        assert "stopped; 1 detection messages, 0 state changes, 1 malformed" in rest
    finally:
        await analyser.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
