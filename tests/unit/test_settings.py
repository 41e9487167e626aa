"""The rendered component config: parsing, every error at once, hot reload by content."""

from __future__ import annotations

from pathlib import Path

import pytest

from startupmonkey import settings
from startupmonkey.models import monitor


def _config(tmp_path: Path, ratio: float = 0.2) -> settings.ComponentConfig:
    (tmp_path / "user").write_text("collector\n")
    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": "db", "dbname": "shop", "credentialsSecret": {"name": "s"}},
        "thresholds": {"dead_tuples": {"minDeadRatio": ratio}}})
    return settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace="prod", name="shop"), spec=spec,
        collector=settings.CollectorSettings(database=settings.DatabaseLogin(
            host="db", dbname="shop", user_file=tmp_path / "user",
            password_file=tmp_path / "password")))


def test_round_trip_and_login_from_files(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(settings.dump(_config(tmp_path)))
    loaded = settings.load(path)
    assert loaded.monitor.name == "shop"
    assert loaded.collector is not None
    login = loaded.collector.database.login()
    assert login.user == "collector"
    assert "password" not in login.conninfo("startupmonkey-collector")


def test_bad_config_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("monitor: {namespace: prod}\nspec: {interval: 1x}\n")
    with pytest.raises(ValueError, match=r"monitor.name.*spec.database.*spec.interval"):
        settings.load(path)


async def test_watcher_hands_over_changes_and_keeps_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(settings.dump(_config(tmp_path)))
    seen: list[float] = []

    async def on_change(config: settings.ComponentConfig) -> None:
        seen.append(config.spec.thresholds.dead_tuples.min_dead_ratio)

    watcher = settings.ConfigWatcher(path, on_change)
    assert not await watcher.check()
    path.write_text(settings.dump(_config(tmp_path, ratio=0.5)))
    assert await watcher.check()
    path.write_text("monitor: [broken")
    assert not await watcher.check()
    assert seen == [0.5]
