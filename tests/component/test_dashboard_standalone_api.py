"""The dashboard's standalone backend against the real executor API (``executor/api.py``
served on a private Unix socket, over a real JSONL store): every page's read, DescribeMonitor
counted as the cluster counts, approve with and without the right hash, reject, the token
refused at connect (and asked for over TCP), a follower told of a change and of an executor
gone, pages ended by their size (and a reader that asks again for fewer), the store's revision
followed instead of every record, no copy of each record per call, and Remediations of another
namespace left out."""

from __future__ import annotations

import argparse
import asyncio
import collections.abc
import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest

from startupmonkey.dashboard import backend, standalone, views
from startupmonkey.executor import api, journal, records
from startupmonkey.models import monitor as monitor_models
from startupmonkey.models.enums import RemediationState
from startupmonkey.v1 import executor_pb2, executor_pb2_grpc, limits
from tests.support import dashboard as shared
from tests.support.eventually import eventually

pytestmark = pytest.mark.component
SPEC = monitor_models.DatabaseMonitorSpec.model_validate({
    "database": {"host": "db.example", "port": 5433, "dbname": "shop",
                 "credentialsSecret": {"name": "unused"}}, "mode": "approval"})


@contextlib.asynccontextmanager
async def _executor(tmp_path: Path, token_file: Path | None = None, *, tcp: bool = False,
                    more: collections.abc.Iterable[records.Record] = ()
                    ) -> collections.abc.AsyncIterator[tuple[str, journal.JournalStore]]:
    """The real API over a JSONL store of namespace dev, monitor shop, holding a kept index,
    one Remediation pending approval and ``more``; on a private Unix socket, or (``tcp``)
    on 127.0.0.1."""
    folder = tempfile.mkdtemp(prefix="smdash-", dir="/tmp")  # 0700, and a short socket path
    store = journal.JournalStore(tmp_path / "audit.jsonl", "dev", "shop")
    for record in (shared.kept("dev"), shared.pending("dev", "shop-orders", "orders"), *more):
        record.spec.monitor = "shop"
        assert await store.create(record)
    await store.report_database({"reachable": True, "serverVersion": "16.4",
                                 "inRecovery": False, "checkedAt": "2026-12-07T10:00:00Z"})
    address = "127.0.0.1:0" if tcp else f"unix://{folder}/executor.sock"
    server = await api.serve(address, api.ExecutorService(
        "dev", "shop", api.LocalAccess(store, token_file), spec=lambda: SPEC,
        database=lambda: store.database))
    try:
        yield (f"127.0.0.1:{server.port}" if tcp else address), store
    finally:
        await server.stop(0)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """A follower reads every 50 ms, and at most every 100 ms after failures."""
    monkeypatch.setattr(standalone, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(standalone, "MAX_POLL_SECONDS", 0.1)


def _wide(count: int, chars: int) -> list[records.Record]:
    """``count`` Remediations, each with ``chars`` Cyrillic characters of evidence (two
    UTF-8 bytes each, twelve as a JSON escape)."""
    found = []
    for i in range(count):
        record = shared.pending("dev", f"shop-wide-{i}", f"t{i}")
        record.spec.evidence["statement"] = "ж" * chars
        found.append(record)
    return found


def _connect(address: str, token_file: Path | None = None) -> standalone.StandaloneBackend:
    return standalone.connect(argparse.Namespace(executor=address, token_file=token_file))


async def test_every_page_reads_what_the_executor_stores(tmp_path: Path) -> None:
    async with _executor(tmp_path) as (address, store):
        source = await asyncio.to_thread(_connect, address)
        assert (source.namespace, source.monitor) == ("dev", "shop")
        monitors = await asyncio.to_thread(source.list_objects, "databasemonitors", None)
        [card] = [views.monitor_card(o) for o in monitors.items]
        assert (card.name, card.mode, card.database, card.reachable) == (
            "shop", "approval", "db.example:5433/shop", True)
        assert dict(card.counts) == {"PendingApproval": 1, "Succeeded": 1}
        expected = records.remediation_counts(await store.list()).model_dump(
            mode="json", by_alias=True, exclude_none=True)
        assert monitors.items[0]["status"]["remediations"] == expected
        listing = await asyncio.to_thread(source.list_objects, "remediations", None)
        assert listing.namespace == "dev" and listing.version
        parsed, unreadable = views.parse_all(listing.items)
        assert unreadable == [] and {p.name for p in parsed} == {"shop-kept", "shop-orders"}
        obj, version = await asyncio.to_thread(source.get_remediation, "dev", "shop-kept")
        shown = views.detail(views.parse_remediation(obj))
        assert shown.chart is not None and shown.approved_by.startswith("system:")
        assert shown.item.model.spec.summary == "kept needs an index on customer_id"
        assert version and (await asyncio.to_thread(
            source.get_remediation, "dev", "shop-kept", False))[1] == ""
        with pytest.raises(backend.Failure) as missing:
            await asyncio.to_thread(source.get_remediation, "dev", "shop-nothing")
        assert missing.value.status == 404 and "no Remediation" in missing.value.reason


async def test_approve_and_reject_are_the_executors_and_checked_by_it(tmp_path: Path) -> None:
    async with _executor(tmp_path) as (address, store):
        source = await asyncio.to_thread(_connect, address)
        for sql_hash, status in ((None, 400), ("0" * 64, 409)):
            with pytest.raises(backend.Failure) as refused:
                await asyncio.to_thread(source.act, "approve", "dev", "shop-orders", sql_hash,
                                        "")
            assert refused.value.status == status, refused.value.reason
        with pytest.raises(backend.Failure) as not_pending:
            await asyncio.to_thread(source.act, "reject", "dev", "shop-kept", None, "no")
        assert not_pending.value.status == 409 and "not PendingApproval" in \
            not_pending.value.reason
        await asyncio.to_thread(source.act, "reject", "dev", "shop-orders", None,
                                "not during the sale")
        obj, _ = await asyncio.to_thread(source.get_remediation, "dev", "shop-orders")
        assert views.detail(views.parse_remediation(obj)).reject_requested.endswith(
            ": not during the sale")
        found = await store.get("shop-orders")
        assert found is not None and found.state is RemediationState.PENDING_APPROVAL


@pytest.mark.usefixtures("quick")
async def test_a_follower_is_told_of_a_change_and_of_an_executor_gone(tmp_path: Path) -> None:
    told: list[backend.Change] = []
    async with _executor(tmp_path) as (address, store):
        source = await asyncio.to_thread(_connect, address)
        listing = await asyncio.to_thread(source.list_objects, "remediations", None)
        follower = source.follower("remediations", "dev", "", listing.version, told.append)
        follower.start()
        try:
            record = await store.get("shop-orders")
            assert record is not None
            await store.approve("shop-orders", "someone")
            await eventually(lambda: [c.kind for c in told] == ["changed"], timeout=20)
        except BaseException:
            follower.stop()
            raise
    await eventually(lambda: [c.kind for c in told] == ["changed", "failed"], timeout=60)
    assert told[1].status == 502 and "did not answer" in told[1].reason
    follower.thread.join(5)


async def test_a_wrong_token_is_refused_at_connect(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("the-right-one\n")
    token.chmod(0o600)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-it\n")
    async with _executor(tmp_path, token) as (address, _store):
        with pytest.raises(backend.Failure) as refused:
            await asyncio.to_thread(_connect, address, wrong)
        assert refused.value.status == 401
        assert refused.value.reason.startswith(f"the executor at {address} refused the token")
        assert "not-it" not in refused.value.reason
        source = await asyncio.to_thread(_connect, address, token)
        assert source.namespace == "dev" and "the-right-one" not in repr(source)


async def test_over_tcp_without_a_token_file_the_dashboard_says_it_needs_one(
        tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("the-right-one\n")
    token.chmod(0o600)
    async with _executor(tmp_path, token, tcp=True) as (address, _store):
        with pytest.raises(backend.Failure) as refused:
            await asyncio.to_thread(_connect, address)
    assert refused.value.status == 401
    assert "a TCP executor needs --token-file" in refused.value.reason, refused.value.reason
    assert "refused the token" not in refused.value.reason


async def test_a_page_ends_by_its_size_and_every_remediation_is_listed(tmp_path: Path) -> None:
    """200 Remediations of 4,096 Cyrillic characters of evidence each: escaped (\\u0436),
    a page of 200 was about 10 MB; as UTF-8 about 3.6 MB, still more than a page takes."""
    async with _executor(tmp_path, more=_wide(200, 4096)) as (address, _store):
        async with grpc.aio.insecure_channel(
                address, options=list(limits.GRPC_MESSAGE_SIZE_OPTIONS)) as channel:
            page = await executor_pb2_grpc.ExecutorStub(channel).ListRemediations(
                executor_pb2.ListRemediationsRequest(page_size=limits.LIST_PAGE_SIZE_MAX))
        assert page.ByteSize() <= api.PAGE_TARGET_BYTES and page.next_page_token
        assert 0 < len(page.remediations) < limits.LIST_PAGE_SIZE_MAX
        wide = next(m for m in page.remediations if m.name.startswith("shop-wide-"))
        assert "ж" * 4096 in wide.object_json and "ж" * 4096 in wide.evidence_json
        source = await asyncio.to_thread(_connect, address)
        listing = await asyncio.to_thread(source.list_objects, "remediations", None)
        names = [o["metadata"]["name"] for o in listing.items]
        assert len(names) == len(set(names)) == 202
        source.close()


async def test_a_page_too_large_to_send_is_asked_again_smaller(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An executor that does not end its pages by size (as before it did) answers a page of
    200 with RESOURCE_EXHAUSTED: the dashboard asks again for fewer."""
    monkeypatch.setattr(api, "PAGE_TARGET_BYTES", 1 << 40, raising=False)
    async with _executor(tmp_path, more=_wide(60, 40_000)) as (address, _store):
        source = await asyncio.to_thread(_connect, address)
        listing = await asyncio.to_thread(source.list_objects, "remediations", None)
        assert len({o["metadata"]["name"] for o in listing.items}) == 62
        source.close()


async def test_a_list_follower_compares_the_revision_and_reads_one_remediation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _executor(tmp_path, more=_wide(30, 10)) as (address, store):
        source = await asyncio.to_thread(_connect, address)
        listing = await asyncio.to_thread(source.list_objects, "remediations", None)
        sent: list[str] = []
        to_proto = api.to_proto

        def counted(record: records.Record) -> executor_pb2.Remediation:
            sent.append(record.name)
            return to_proto(record)

        monkeypatch.setattr(api, "to_proto", counted)
        assert await asyncio.to_thread(source.version_of, "remediations") == listing.version
        assert len(sent) <= 1, sent  # not the 32 of every page
        before = store.revision()
        await store.request_reject("shop-orders", "someone", "not now")
        assert store.revision() != before
        assert await asyncio.to_thread(source.version_of, "remediations") != listing.version
        again = await asyncio.to_thread(source.list_objects, "remediations", None)
        assert again.version == await asyncio.to_thread(source.version_of, "remediations")
        source.close()


async def test_the_api_reads_the_records_once_without_copying_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _executor(tmp_path, more=_wide(30, 10)) as (address, store):
        copies: list[str] = []
        copy = journal.JournalStore._copy

        def counted(record: records.Record) -> records.Record:
            copies.append(record.name)
            return copy(record)

        monkeypatch.setattr(journal.JournalStore, "_copy", staticmethod(counted))
        async with grpc.aio.insecure_channel(address) as channel:
            stub = executor_pb2_grpc.ExecutorStub(channel)
            page = await stub.ListRemediations(executor_pb2.ListRemediationsRequest())
            described = await stub.DescribeMonitor(executor_pb2.DescribeMonitorRequest())
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.ListRemediations(executor_pb2.ListRemediationsRequest(
                    page_token="not-a-token"))
        assert copies == []
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert page.revision == described.revision == store.revision() != ""
        counts = json.loads(described.object_json)["status"]["remediations"]
        assert counts["byState"]["PendingApproval"] == 31


async def test_the_revision_moves_with_every_commit_and_never_repeats_after_a_restart(
        tmp_path: Path) -> None:
    store = journal.JournalStore(tmp_path / "audit.jsonl", "dev", "shop")
    seen = [store.revision()]
    record = shared.pending("dev", "shop-orders", "orders")
    record.spec.monitor = "shop"
    assert await store.create(record)
    seen.append(store.revision())
    await store.report_database({"reachable": True})  # not a Remediation: the same revision
    assert store.revision() == seen[-1]
    await store.request_reject("shop-orders", "someone", "no")
    seen.append(store.revision())
    await store.approve("shop-orders", "someone")
    seen.append(store.revision())
    current = await store.get("shop-orders")
    assert current is not None
    current.move(RemediationState.APPROVED, "approved")
    await store.update(current, RemediationState.PENDING_APPROVAL)
    seen.append(store.revision())
    again = journal.JournalStore(tmp_path / "audit.jsonl", "dev", "shop")  # a new process
    assert len(set(seen)) == len(seen) == 5 and again.revision() not in seen
    assert [r.name for r in again.snapshot()] == ["shop-orders"]


async def test_remediations_of_another_namespace_are_left_out(tmp_path: Path) -> None:
    stray = shared.pending("elsewhere", "shop-stray", "stray")
    async with _executor(tmp_path, more=[stray]) as (address, _store):
        source = await asyncio.to_thread(_connect, address)
        listing = await asyncio.to_thread(source.list_objects, "remediations", None)
        assert {o["metadata"]["name"] for o in listing.items} == {"shop-kept", "shop-orders"}
        source.close()


async def test_close_closes_the_channel(tmp_path: Path) -> None:
    async with _executor(tmp_path) as (address, _store):
        source = await asyncio.to_thread(_connect, address)
        await asyncio.to_thread(source.describe)
        source.close()
        with pytest.raises(ValueError, match="closed channel"):
            await asyncio.to_thread(source.describe)
        source.close()  # twice: nothing more
