"""A forged detection cannot choose the executor's action (issue 24).

Anyone who can publish on the detection subjects could ask for any action on any finding; the
executor takes only the detector-to-action pairs the design allows
(``startupmonkey.models.enums.ALLOWED_ACTIONS``), in their own risk class, and counts, logs
and drops anything else. Real nats-server, real PostgreSQL, the real executor.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nats
import psycopg
import pytest

from startupmonkey.executor import journal
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import messages
from startupmonkey.models.enums import ActionId, DetectorId
from tests.support import executor_helpers as helpers
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration


def _forged(detector: DetectorId, action: ActionId, risk_class: str) -> tuple[str, bytes]:
    """A real vacuum-able detection rewritten to claim another detector's finding."""
    body = json.loads(helpers.table_detection("orders").encode())
    body.update(detector=detector.value, proposedAction=action.value, riskClass=risk_class)
    body["id"] = body["id"][:-6] + "forged"
    subject = messages.detection_subject(helpers.NAMESPACE, helpers.MONITOR, detector)
    return subject, json.dumps(body).encode()


def _vacuums(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT vacuum_count FROM pg_stat_user_tables "
                           "WHERE relname = 'orders'").fetchone()
    assert row is not None
    return int(row[0])


async def test_a_detection_asking_for_an_action_its_detector_cannot_propose_is_dropped(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path)
    helpers.stale_tables(pg_db.conninfo, "orders")
    assert cfg.executor is not None and cfg.executor.audit_log is not None
    store = journal.JournalStore(cfg.executor.audit_log, helpers.NAMESPACE, helpers.MONITOR)
    forged = [_forged(DetectorId.CACHE_HIT_RATIO, ActionId.VACUUM, "maintenance"),
              _forged(DetectorId.DEAD_TUPLES, ActionId.VACUUM, "advice")]
    async with helpers.running_executor(cfg, store) as executor:
        client = await nats.connect(nats_server.url)
        try:
            for subject, payload in forged:
                await client.publish(subject, payload)
            genuine = helpers.table_detection("orders")  # published after: processed after
            await client.publish(genuine.subject, genuine.encode())
            await client.flush()
        finally:
            await client.close()

        async def analyzed() -> bool:
            return list((await helpers.states(store)).values()) == ["Succeeded"]

        await eventually(analyzed, timeout=20)
        malformed = executor.obs.registry.get_sample_value(
            "startupmonkey_executor_malformed_messages_total", {"kind": "detection"})

    assert malformed == 2
    (record,) = await store.list()
    assert record.spec.action is ActionId.ANALYZE
    assert _vacuums(pg_db.conninfo) == 0
    reasons = " ".join(r.getMessage() for r in caplog.records)
    assert "detector cache_hit_ratio cannot propose vacuum" in reasons
