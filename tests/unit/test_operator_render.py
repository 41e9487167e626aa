"""The rendered config of a monitor and the restart hashes: what hot-reloads, what rolls."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from startupmonkey import settings
from startupmonkey.operator import monitor, render

C = monitor.Component
IMAGE = "example/startupmonkey:1"


def body(**spec: Any) -> dict[str, Any]:
    """A DatabaseMonitor as the API server returns it (defaults filled by the models)."""
    base: dict[str, Any] = {"database": {"host": "db.shop", "dbname": "shop",
                                         "credentialsSecret": {"name": "shop-db"}}}
    base.update(spec)
    return {"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
            "metadata": {"name": "shop", "namespace": "prod", "uid": "u-1", "generation": 3},
            "spec": base}


def hashes(b: dict[str, Any], secret_version: str | None = "7") -> dict[C, str]:
    view = monitor.parse(b)
    return {c: render.restart_hash(render.restart_inputs(view, c, IMAGE, secret_version))
            for c in C}


def test_config_is_a_valid_component_config_with_secret_paths_only(tmp_path: Path) -> None:
    view = monitor.parse(body(executor={"replicas": 2}))
    path = tmp_path / "config.yaml"
    path.write_text(render.config_text(view))
    config = settings.load(path)
    assert config.monitor.namespace == "prod" and config.monitor.name == "shop"
    assert config.spec.executor.replicas == 2
    assert config.collector is not None and config.executor is not None
    assert config.analyser is not None
    assert config.collector.analyser_address == "shop-analyser.prod.svc:50051"
    assert str(config.collector.database.password_file) == \
        "/var/run/secrets/startupmonkey/database/password"
    assert config.executor.nats.url == "nats://shop-nats.prod.svc:4222"
    assert str(config.analyser.nats.user_file) == "/var/run/secrets/startupmonkey/nats/username"
    assert config.executor.reporter == "kubernetes"
    assert config.executor.listen_address == "0.0.0.0:50052"


def test_external_bus_without_credentials_has_no_secret_files() -> None:
    view = monitor.parse(body(eventBus={"url": "nats://bus:4222", "jetstream": True}))
    config = render.component_config(view)
    assert config.executor is not None
    assert config.executor.nats.url == "nats://bus:4222"
    assert config.executor.nats.jetstream is True
    assert config.executor.nats.user_file is None


@pytest.mark.parametrize("change", [
    {"thresholds": {"dead_tuples": {"minDeadRatio": 0.5}}},
    {"mode": "observe"},
    {"policy": {"ddl": "approval"}},
    {"protect": {"applications": ["pg_dump"]}},
    {"limits": {"maxActionsPerHour": 1}},
    {"interval": "30s"},
    {"executor": {"replicas": 3}},
    {"suspend": True},
])
def test_hot_reloaded_fields_change_the_config_but_no_hash(change: dict[str, Any]) -> None:
    before, after = body(), body(**change)
    assert render.config_text(monitor.parse(before)) != render.config_text(monitor.parse(after))
    assert hashes(before) == hashes(after)


@pytest.mark.parametrize(("field", "value", "rolled"), [
    ("host", "db2.shop", {C.COLLECTOR, C.EXECUTOR}),
    ("port", 6432, {C.COLLECTOR, C.EXECUTOR}),
    ("credentialsSecret", {"name": "rotated"}, {C.COLLECTOR, C.EXECUTOR}),
    ("collectorCredentialsSecret", {"name": "ro"}, {C.COLLECTOR}),
    ("executorCredentialsSecret", {"name": "rw", "passwordKey": "pw"}, {C.EXECUTOR}),
])
def test_database_and_credentials_roll_only_their_users(field: str, value: Any,
                                                        rolled: set[C]) -> None:
    before = body()
    after = copy.deepcopy(before)
    after["spec"]["database"][field] = value
    old, new = hashes(before), hashes(after)
    assert {c for c in C if old[c] != new[c]} == rolled


def test_event_bus_and_image_roll_what_uses_them() -> None:
    old = hashes(body())
    jetstream = hashes(body(eventBus={"jetstream": True}))
    assert {c for c in C if old[c] != jetstream[c]} == {C.ANALYSER, C.EXECUTOR, C.NATS}
    regenerated = hashes(body(), secret_version="8")
    assert {c for c in C if old[c] != regenerated[c]} == {C.ANALYSER, C.EXECUTOR, C.NATS}
    view = monitor.parse(body())
    other = render.restart_hash(render.restart_inputs(view, C.COLLECTOR, "other:2", "7"))
    assert other != old[C.COLLECTOR]


def test_hash_is_stable_and_short() -> None:
    assert hashes(body()) == hashes(body())
    assert all(len(h) == 16 for h in hashes(body()).values())
