"""The dashboard's standalone backend against the real executor API (``executor/api.py``
served on a private Unix socket, over a real JSONL store): every page's read, DescribeMonitor
counted as the cluster counts, approve with and without the right hash, reject, the token
refused at connect, and a follower told of a change and of an executor gone."""

from __future__ import annotations

import argparse
import asyncio
import collections.abc
import contextlib
import shutil
import tempfile
from pathlib import Path

import pytest

from startupmonkey.dashboard import backend, standalone, views
from startupmonkey.executor import api, journal, records
from startupmonkey.models import monitor as monitor_models
from startupmonkey.models.enums import RemediationState
from tests.support import dashboard as shared
from tests.support.eventually import eventually

pytestmark = pytest.mark.component
SPEC = monitor_models.DatabaseMonitorSpec.model_validate({
    "database": {"host": "db.example", "port": 5433, "dbname": "shop",
                 "credentialsSecret": {"name": "unused"}}, "mode": "approval"})


@contextlib.asynccontextmanager
async def _executor(tmp_path: Path, token_file: Path | None = None
                    ) -> collections.abc.AsyncIterator[tuple[str, journal.JournalStore]]:
    """The real API over a JSONL store of namespace dev, monitor shop, holding a kept index
    and one Remediation pending approval."""
    folder = tempfile.mkdtemp(prefix="smdash-", dir="/tmp")  # 0700, and a short socket path
    store = journal.JournalStore(tmp_path / "audit.jsonl", "dev", "shop")
    for record in (shared.kept("dev"), shared.pending("dev", "shop-orders", "orders")):
        record.spec.monitor = "shop"
        assert await store.create(record)
    await store.report_database({"reachable": True, "serverVersion": "16.4",
                                 "inRecovery": False, "checkedAt": "2026-12-07T10:00:00Z"})
    address = f"unix://{folder}/executor.sock"
    server = await api.serve(address, api.ExecutorService(
        "dev", "shop", api.LocalAccess(store, token_file), spec=lambda: SPEC,
        database=lambda: store.database))
    try:
        yield address, store
    finally:
        await server.stop(0)
        shutil.rmtree(folder, ignore_errors=True)


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
