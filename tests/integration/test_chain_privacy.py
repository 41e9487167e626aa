"""spec.privacy.queryText through the whole chain (issue 24, item 7): a session idle in a
transaction after a statement with a secret literal is detected, and neither the NATS
detection nor the executor's Remediation record carries the literal, unless the monitor says
``queryText: full``.

Real collector process -> gRPC -> analyser -> NATS -> executor (observe mode) on a real
PostgreSQL (``tests/support/chain.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from startupmonkey import settings
from startupmonkey.executor import records
from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models.enums import DetectorId
from tests.support import chain as chain_support
from tests.support import executor_helpers, workloads
from tests.support.chain import chain
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration

STATEMENT = "SELECT count(*) FROM pg_class WHERE relname = 'hunter2' AND relpages > 4242"


@pytest.mark.parametrize(("query_text", "expected"), [
    ("normalized", "SELECT count(*) FROM pg_class WHERE relname = $1 AND relpages > $2"),
    ("full", STATEMENT),
])
async def test_session_evidence_follows_privacy_query_text(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path,
        query_text: str, expected: str) -> None:
    privacy = {"privacy": {"queryText": query_text}}
    folder = tmp_path / "executor"
    folder.mkdir()
    cfg = executor_helpers.config(pg_db, nats_server.url, folder, mode="observe",
                                  thresholds={"idle_in_transaction": {"maxDuration": "2s"}},
                                  **privacy)
    cfg = cfg.model_copy(update={"monitor": settings.MonitorRef(
        namespace=chain_support.NAMESPACE, name=chain_support.MONITOR)})
    with workloads.idle_in_transaction(pg_db.conninfo, statement=STATEMENT) as held:
        async with (chain(pg_db, nats_server, tmp_path, spec=privacy,
                          idle_in_transaction={"maxDuration": "2s"}) as run,
                    executor_helpers.running_executor(cfg) as executor):
            found = await run.find(DetectorId.IDLE_IN_TRANSACTION,
                                   lambda d: d.target.pid == held.pid)

            async def record() -> records.Record:
                mine = [r for r in await executor.store.list() if r.spec.target.pid == held.pid]
                assert mine
                return mine[0]

            remediation = await eventually(record, timeout=30)
    assert found.evidence["query"] == expected
    assert remediation.spec.evidence["query"] == expected
    # Nowhere else either: the detection message, the record, the audit log.
    audit = folder / "audit.jsonl"
    texts = [found.model_dump_json(), remediation.spec.model_dump_json(),
             remediation.status.model_dump_json(),
             audit.read_text() if audit.exists() else ""]
    assert any("hunter2" in t for t in texts) == (query_text == "full")
