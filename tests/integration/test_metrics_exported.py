"""What running components serve on /metrics is what tests/support/promql.py says they export.

The dashboard and alert checks (tests/unit/test_dashboard.py, tests/e2e/test_alerts.py) build
the components' metrics on fresh registries; here a real analyser process, fed by a real
collector reading a real PostgreSQL, is scraped over HTTP, and every family it declares (a
labelled counter not incremented yet still has its ``# TYPE`` line) must be in that list, and
the reverse for the analyser's and the collector's own names.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from tests.integration.test_analyser_process import analyser_process
from tests.integration.test_collector_ingest_server import collector_config, running_collector
from tests.support import promql
from tests.support.chain import http_get
from tests.support.eventually import eventually
from tests.unit.test_dashboard import dashboard_exprs

pytestmark = pytest.mark.integration
TYPE = re.compile(r"^# TYPE (?P<name>\S+) (?P<type>\S+)$", re.MULTILINE)
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def served(text: str) -> set[str]:
    """Sample names of every family a /metrics text declares (``x_created``, the time a
    counter or histogram series began, is declared as a gauge of its own)."""
    names = set()
    for match in TYPE.finditer(text):
        name = match["name"]
        if match["type"] == "counter":
            name = name.removesuffix("_total")
        names |= {name + suffix for suffix in SUFFIXES[match["type"]]}
    return names


async def test_a_running_analyser_and_collector_serve_what_the_checks_expect(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    async with analyser_process(nats_server.url, tmp_path) as analyser:
        async with running_collector(collector_config(
                pg_db, f"127.0.0.1:{analyser.grpc_port}")) as (_, collector_obs):
            await collector_obs.start(port=0, host="127.0.0.1")
            try:
                async def acked() -> bool:
                    _, body = await http_get(collector_obs.port, "/metrics")
                    return 'startupmonkey_collector_acks_total{status="accepted"}' in \
                        body.decode()
                await eventually(acked, timeout=30, interval=0.2)
                collector_text = (await http_get(collector_obs.port, "/metrics"))[1].decode()
            finally:
                await collector_obs.stop()
        analyser_text = (await http_get(analyser.obs_port, "/metrics"))[1].decode()
    listed = set(promql.exported())
    scraped = served(analyser_text) | served(collector_text)
    assert scraped - listed == set()
    for prefix in ("startupmonkey_analyser_", "startupmonkey_collector_"):
        # a labelled series' _created is declared once the series exists
        declared = {n for n in listed if n.startswith(prefix) and not n.endswith("_created")}
        assert declared <= {n for n in scraped if n.startswith(prefix)}, prefix
    assert "startupmonkey_dependency_up" in scraped
    named = {s.metric for expr in dashboard_exprs() for s in promql.selectors(expr)}
    for prefix in ("startupmonkey_analyser_", "startupmonkey_collector_"):
        assert {n for n in named if n.startswith(prefix)} <= scraped
