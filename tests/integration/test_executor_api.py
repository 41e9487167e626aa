"""The executor API standalone: approve, reject and status through the real CLI over gRPC,
authentication by socket permissions or token file (which the CLI sends on a Unix socket only),
and NATS credentials keeping forged detections out."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.errors
import psycopg
import pytest

from startupmonkey import observability, settings
from startupmonkey.executor import journal
from startupmonkey.executor import main as executor_main
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models.enums import ActionId, RemediationState
from startupmonkey.v1 import executor_pb2, executor_pb2_grpc
from tests.support import components, workloads
from tests.support import executor_helpers as helpers
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration
EXE = Path(sys.executable).with_name("startupmonkey")


def _idle(conninfo: str, pid: int) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = %s",
                           (pid,)).fetchone()
    return row is not None and row[0] == "idle in transaction"


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [str(EXE), *args], capture_output=True,
                                   text=True, timeout=60)


def _store(cfg: settings.ComponentConfig) -> journal.JournalStore:
    assert cfg.executor is not None and cfg.executor.audit_log is not None
    return journal.JournalStore(cfg.executor.audit_log, helpers.NAMESPACE, helpers.MONITOR)


def _config(pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
            tmp_path: Path, mode: str) -> tuple[settings.ComponentConfig, str]:
    """An executor config in ``mode`` and the address its API listens on."""
    cfg = helpers.config(pg_db, nats_server.url, tmp_path, mode=mode)
    assert cfg.executor is not None
    return cfg, cfg.executor.listen_address


async def _pending(store: journal.JournalStore) -> list[str]:
    return [r.name for r in await store.list() if r.state is RemediationState.PENDING_APPROVAL]


async def test_approve_and_reject_through_the_cli(
        app_conninfo: str, pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cfg, address = _config(pg_db, nats_server, tmp_path, "approval")
    with workloads.idle_in_transaction(app_conninfo) as first, \
            workloads.idle_in_transaction(app_conninfo) as second:
        for held in (first, second):
            await eventually(lambda h=held: _idle(pg_db.conninfo, h.pid), timeout=10)
        async with helpers.running_executor(cfg) as executor:
            assert executor.engine is not None
            for held in (first, second):
                await executor.engine.handle(
                    helpers.idle_detection(pg_db.conninfo, held.pid).encode())
            listed = await _cli("status", "--executor", address, "-o", "json")
            assert listed.returncode == 0, listed.stderr
            by_pid = {int(item["target"]["pid"]): item["name"]
                      for item in json.loads(listed.stdout)}
            assert set(by_pid) == {first.pid, second.pid}
            table = await _cli("status", "--executor", address)
            assert "PendingApproval" in table.stdout and "terminate_session" in table.stdout

            approved = await _cli("approve", by_pid[first.pid], "--executor", address)
            assert approved.returncode == 0, approved.stderr
            rejected = await _cli("reject", by_pid[second.pid], "--executor", address,
                                  "--reason", "the report needs it")
            assert rejected.returncode == 0, rejected.stderr

            async def settled() -> dict[str, str]:
                # A fresh reader each time: a JournalStore reads the file when created.
                states = await helpers.states(_store(cfg))
                return states if set(states.values()) == {"Succeeded", "Rejected"} else {}

            states = await eventually(settled, timeout=30)
            again = await _cli("approve", by_pid[second.pid], "--executor", address)
            assert again.returncode == 1 and "FAILED_PRECONDITION" in again.stderr
        assert states[by_pid[first.pid]] == "Succeeded"
        assert states[by_pid[second.pid]] == "Rejected"
        assert not _idle(pg_db.conninfo, first.pid)
        assert _idle(pg_db.conninfo, second.pid)
    record = next(r for r in await _store(cfg).list() if r.name == by_pid[second.pid])
    assert "the report needs it" in record.status.message


async def test_tcp_api_needs_the_token(pg_db: postgres.PostgresDatabase,
                                       nats_server: natsserver.NatsServer,
                                       tmp_path: Path) -> None:
    cfg = helpers.config(pg_db, nats_server.url, tmp_path)
    assert cfg.executor is not None
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    cfg.executor.token_file = token
    cfg.executor.listen_address = "127.0.0.1:0"
    async with helpers.running_executor(cfg) as executor:
        port = executor.api.bound_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = executor_pb2_grpc.ExecutorStub(channel)
            request = executor_pb2.ListRemediationsRequest()
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ListRemediations(request, metadata=metadata)
                assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            ok = await stub.ListRemediations(
                request, metadata=(("authorization", "Bearer s3cret-token"),))
            assert list(ok.remediations) == []
        # The CLI never sends a token over plain TCP: refused before anything is sent.
        refused = await _cli("status", "--executor", f"127.0.0.1:{port}",
                             "--token-file", str(token))
        assert refused.returncode == 1 and refused.stdout == ""
        assert refused.stderr == (
            f"startupmonkey status: --token-file over 127.0.0.1:{port} would send the token "
            "in clear text: use the executor's unix:///path socket (standalone) or --kube "
            "(in a cluster)\n")
        # Loosened after the start: every call is refused until it is private again.
        token.chmod(0o644)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = executor_pb2_grpc.ExecutorStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as loose:
                await stub.ListRemediations(
                    request, metadata=(("authorization", "Bearer s3cret-token"),))
            assert loose.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert loose.value.details() == (
                "the executor refuses every call: "
                f"executor.tokenFile {token} is accessible by group or others (mode 0644); it "
                f"must be readable only by its user: chmod 600 {token}")
            token.chmod(0o600)
            again = await stub.ListRemediations(
                request, metadata=(("authorization", "Bearer s3cret-token"),))
            assert list(again.remediations) == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
async def test_a_token_file_others_may_access_is_refused_at_start(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path, mode: int) -> None:
    cfg = helpers.config(pg_db, nats_server.url, tmp_path)
    assert cfg.executor is not None
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(mode)
    cfg.executor.token_file = token
    cfg.executor.listen_address = f"127.0.0.1:{postgres.free_port()}"
    executor = executor_main.Executor(cfg, observability.Observability("executor"))
    try:
        with pytest.raises(ValueError) as refused:
            await executor.start()
    finally:
        await executor.stop()
    assert str(refused.value) == (
        f"executor.tokenFile {token} is accessible by group or others (mode {mode:04o}); "
        f"it must be readable only by its user: chmod 600 {token}")
    assert executor.api is None
    with pytest.raises(OSError):  # nothing listens: the API never started
        socket.create_connection(("127.0.0.1", int(
            cfg.executor.listen_address.rsplit(":", 1)[1])), timeout=2).close()


async def test_a_forged_detection_without_nats_credentials_never_arrives(
        pg_db: postgres.PostgresDatabase, nats_auth: components.NatsAuth,
        tmp_path: Path) -> None:
    helpers.stale_tables(pg_db.conninfo, "orders")
    cfg = helpers.config(pg_db, nats_auth.url, tmp_path)
    assert cfg.executor is not None
    (tmp_path / "nats-user").write_text(nats_auth.user)
    (tmp_path / "nats-password").write_text(nats_auth.password)
    cfg.executor.nats.user_file = tmp_path / "nats-user"
    cfg.executor.nats.password_file = tmp_path / "nats-password"
    store = _store(cfg)
    async with helpers.running_executor(cfg, store):
        forged = helpers.table_detection("orders")
        intruder = nats.NATS()
        with pytest.raises(nats.errors.Error):
            await intruder.connect(nats_auth.url, allow_reconnect=False, max_reconnect_attempts=0)
        await intruder.close()
        legit: Any = await nats.connect(nats_auth.url, user=nats_auth.user,
                                        password=nats_auth.password)
        try:
            await asyncio.sleep(1)
            assert await store.list() == []
            await legit.publish(forged.subject, forged.encode())
            await legit.flush()
        finally:
            await legit.close()

        async def arrived() -> bool:
            return len(await store.list()) == 1

        await eventually(arrived, timeout=20)


async def test_a_vacuum_says_what_it_removed_in_its_status_and_in_the_status_table(
        app_conninfo: str, pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    cfg, address = _config(pg_db, nats_server, tmp_path, "auto")
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int) WITH (autovacuum_enabled = off)")
        conn.execute("INSERT INTO orders SELECT generate_series(1, 24000)")
        conn.execute("DELETE FROM orders WHERE id % 2 = 0")
    async with helpers.running_executor(cfg) as executor:
        assert executor.engine is not None
        await executor.engine.handle(
            helpers.table_detection("orders", ActionId.VACUUM).encode())

        async def succeeded() -> dict[str, str]:
            states = await helpers.states(_store(cfg))
            return states if list(states.values()) == ["Succeeded"] else {}

        await eventually(succeeded, timeout=30)
        shown = await _cli("status", "--executor", address, "-o", "table")
        listed = await _cli("status", "--executor", address, "-o", "json")
    (record,) = await _store(cfg).list()
    # The audit log carries the sentence next to the raw numbers it was made from.
    # with the table's size as the catalog recorded it after the VACUUM (relpages)
    assert record.status.after["table_bytes"] > 0, record.status.after
    assert re.fullmatch(r"12,000 dead rows removed \(\d[\d,.]* (kB|MB) table\)",
                        record.status.summary or ""), record.status.after
    assert record.status.after["dead_removed"] == 12000
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.splitlines()
    assert header.split()[6:9] == ["RESULT", "BENEFIT", "MESSAGE"], header
    assert record.status.summary in row, shown.stdout
    (document,) = json.loads(listed.stdout)
    assert document["summary"] == record.status.summary and document["benefit"] == ""
    assert json.loads(document["after"]["detailsJson"])["dead_removed"] == 12000
