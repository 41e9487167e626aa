"""``startupmonkey dashboard --executor`` against a real ``startupmonkey run -f`` (issue 25's
standalone mode) on the temporary PostgreSQL: the dashboard as a subprocess, logged in through
the login URL it prints, shows the monitor with its database reachable; a session idle in its
transaction becomes a Remediation waiting for approval (mode approval); its page shows the
SQL; the approve form is posted as a browser posts it, the page's live stream says
``changed``, the Remediation reaches Succeeded and the session is gone. A token the executor
refuses, a token a gRPC header cannot carry (refused before any call: no gRPC log line), and a
socket that is not there, end the dashboard at once with one line."""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from tests.support import dashboard as shared
from tests.support import executor_helpers as helpers
from tests.support import workloads
from tests.support.eventually import eventually, wait_until
from tests.support.standalone import approval_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
EXE = Path(sys.executable).with_name("startupmonkey")
LOGIN = re.compile(r"http://127\.0\.0\.1:\d+/login\?key=[A-Za-z0-9_-]{43}\b")


class Dashboard:
    """``startupmonkey dashboard --executor <address> --port 0`` as a subprocess."""

    def __init__(self, folder: Path, *args: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out, self.err = folder / "dashboard.out", folder / "dashboard.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen([str(EXE), "dashboard", "--port", "0", *args],
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.login = ""

    def started(self) -> str:
        """The printed login URL (a secret: never in a message), once it is printed."""
        def printed() -> str:
            assert self.proc.poll() is None, self.err.read_text()
            found = LOGIN.findall(self.out.read_text())
            assert found, "no login URL yet"
            return str(found[0])

        self.login = wait_until(printed, timeout=30)
        return self.login.split("/login?", 1)[0]

    def output(self) -> str:
        text = self.out.read_text() + self.err.read_text()
        return text.replace(self.login, "<login URL>") if self.login else text

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(timeout=20)
        return code, self.output()


@contextlib.contextmanager
def dashboard(folder: Path, *args: str) -> Iterator[Dashboard]:
    running = Dashboard(folder, *args)
    try:
        yield running
    finally:
        code, output = running.stop()
    assert code == 0, output
    assert "Traceback" not in output, output
    raw = running.out.read_text() + running.err.read_text()
    assert raw.count("http://") == 1, output  # the login URL, once, and nothing else


def _page_link(page: str) -> str:
    found = re.findall(r'href="(/ns/dev/remediations/[a-z0-9.-]+)"', page)
    assert found, shared.text_of(page)[:2000]
    return str(found[0])


def _live(page: str) -> str:
    found = re.search(r'data-live="([^"]+)"', page)
    assert found, "the page is not live"
    return html.unescape(found.group(1))


async def _first_event(session: aiohttp.ClientSession, url: str,
                       opened: asyncio.Event) -> str:
    """The first event the stream at ``url`` sends (comments skipped)."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=120)) as stream:
        assert stream.status == 200, await stream.text()
        opened.set()
        async for line in stream.content:
            text = line.decode().strip()
            if text.startswith("event: "):
                return text.removeprefix("event: ")
    return ""


async def _approve_through_the_pages(base: str, login: str, held: workloads.HeldSession
                                     ) -> None:
    async with shared.browser() as session:
        async with session.get(login, allow_redirects=False) as answer:
            assert (answer.status, answer.headers.get("Location")) == (303, "/")
        status, overview = await shared.get(session, base + "/")
        text = shared.text_of(overview)
        assert status == 200 and "runner-test" in text and "reachable: PostgreSQL" in text, \
            text[:2000]

        async def waiting() -> str:
            code, listed = await shared.get(session, base + "/remediations?state="
                                            "PendingApproval")
            assert code == 200
            return _page_link(listed)

        link = await eventually(waiting, timeout=120, what="a Remediation pending approval")
        status, page = await shared.get(session, base + link)
        assert status == 200 and "pg_terminate_backend" in html.unescape(page), page[:3000]
        assert "PendingApproval" in shared.text_of(page)
        opened = asyncio.Event()
        listening = asyncio.create_task(_first_event(session, base + _live(page), opened))
        try:
            await asyncio.wait_for(opened.wait(), timeout=30)
            status, confirm = await shared.get(session, base + link + "/approve")
            assert status == 200, confirm
            sql_hash = re.search(r'name="sql_hash" value="([0-9a-f]{64})"', confirm)
            assert sql_hash, confirm
            async with session.post(base + link + "/approve", allow_redirects=False, data={
                    "csrf": shared.form_token(confirm), "sql_hash": sql_hash.group(1),
                    "reason": ""}) as answer:
                assert answer.status == 303, await answer.text()
                assert answer.headers["Location"] == f"{link}?done=approve"
            assert await asyncio.wait_for(listening, timeout=60) == "changed"
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listening

        async def succeeded() -> str:
            code, shown = await shared.get(session, base + link)
            assert code == 200 and "Succeeded" in shared.text_of(shown)
            return shown

        shown = await eventually(succeeded, timeout=120, what="the Remediation Succeeded")
        assert "local user" in shared.text_of(shown)  # who approved: the executor's record
    await eventually(lambda: not held.is_alive(), timeout=30, what="the session ended")


def test_a_person_approves_through_the_dashboard_of_a_standalone_run(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    with approval_run(pg_cluster, pg_db, tmp_path) as run, \
            dashboard(tmp_path / "dash", "--executor", run.address) as running:
        base = running.started()
        asyncio.run(_approve_through_the_pages(base, running.login, run.held))


async def test_a_refused_token_or_no_socket_ends_the_dashboard_with_one_line(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, mode="approval")
    assert cfg.executor is not None
    token, wrong, odd = tmp_path / "token", tmp_path / "wrong", tmp_path / "odd"
    for path, value in ((token, "the-executor-token"), (wrong, "a-wrong-token"),
                        (odd, "a-wrong-tökén")):
        path.write_text(value + "\n")
        path.chmod(0o600)
    cfg.executor.token_file = token
    address = cfg.executor.listen_address
    async with helpers.running_executor(cfg):
        for args, said in (
                (("--token-file", str(wrong)), f"the executor at {address} refused the token"),
                (("--token-file", str(tmp_path / "none")), "cannot read the token file"),
                (("--token-file", str(odd)), "holds characters a gRPC header cannot carry")):
            done = await asyncio.to_thread(
                subprocess.run, [str(EXE), "dashboard", "--port", "0", "--executor", address,
                                 *args], capture_output=True, text=True, timeout=60,
                check=False)
            assert done.returncode == 1, done.stdout + done.stderr
            assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
            assert said in done.stderr and "a-wrong-token" not in done.stderr, done.stderr
    gone = await asyncio.to_thread(
        subprocess.run, [str(EXE), "dashboard", "--port", "0", "--executor", address],
        capture_output=True, text=True, timeout=60, check=False)
    assert gone.returncode == 1 and "no executor at" in gone.stderr, gone.stderr
