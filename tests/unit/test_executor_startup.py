"""The executor's start-up holds the event loop up only before its observability port answers:
the store (in a cluster the Kubernetes client, the heaviest import, made on the loop) is made
first, so a liveness probe that found /healthz answering once is never left waiting by it (a
CPU-starved executor of a loaded node was killed so, tests/pods/test_chart_on_a_node.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from startupmonkey import observability, settings
from startupmonkey.executor import main as executor_main
from tests.support import executor_helpers as helpers


class _Stop(Exception):
    """Ends the start-up once both steps were seen."""


async def test_the_store_is_made_before_the_port_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = helpers.unreachable_config(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(settings.dump(config))
    steps: list[str] = []
    make_store = executor_main.make_store
    start = observability.Observability.start

    def store(cfg: settings.ComponentConfig) -> Any:
        steps.append("store")
        return make_store(cfg)

    async def port(self: observability.Observability, *args: Any, **kwargs: Any) -> None:
        steps.append("port")
        await start(self, 0, "127.0.0.1")

    async def connect(self: executor_main.Executor) -> None:
        raise _Stop

    monkeypatch.setattr(executor_main, "make_store", store)
    monkeypatch.setattr(observability.Observability, "start", port)
    monkeypatch.setattr(executor_main.Executor, "start", connect)
    with pytest.raises(_Stop):
        await executor_main.serve(path, 0, asyncio.Event())
    assert steps == ["store", "port"]
