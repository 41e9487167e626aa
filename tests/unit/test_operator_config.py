"""The operator's settings: one env var per field, defaults, every error at once."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from startupmonkey.operator import config, main


def test_defaults_need_no_environment() -> None:
    s = config.from_env({})
    assert s.watching.namespaces == []
    assert s.retention.count == 100 and s.retention.max_age == "720h"
    assert s.deletion.grace_period == "30m"
    assert s.images.data_plane.startswith("ghcr.io/startupmonkey/startupmonkey:")
    assert s.images.nats == config.DEFAULT_NATS_IMAGE
    assert s.network.policy_peers == []


def test_every_field_has_one_documented_variable() -> None:
    names = config.env_names()
    assert "STARTUPMONKEY_RETENTION_MAX_AGE" in names
    assert "STARTUPMONKEY_WATCHING_NAMESPACES" in names
    assert "STARTUPMONKEY_NETWORK_POLICY_PEERS" in names
    for group, field in names.values():
        info = type(getattr(config.OperatorSettings(), group)).model_fields[field]
        assert info.description and "default" in info.description.lower(), (group, field)


def test_values_are_parsed_from_the_environment() -> None:
    s = config.from_env({
        "STARTUPMONKEY_WATCHING_NAMESPACES": "shop, billing",
        "STARTUPMONKEY_RETENTION_COUNT": "5",
        "STARTUPMONKEY_RETENTION_MAX_AGE": "36h",
        "STARTUPMONKEY_DELETION_GRACE_PERIOD": "3s",
        "STARTUPMONKEY_IMAGES_DATA_PLANE": "registry.local/sm:dev",
        "STARTUPMONKEY_NETWORK_POLICY_PEERS":
            '[{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]',
    })
    assert s.watching.namespaces == ["shop", "billing"]
    assert s.retention.count == 5 and s.seconds(s.retention.max_age) == 36 * 3600
    assert s.seconds(s.deletion.grace_period) == 3
    assert s.images.data_plane == "registry.local/sm:dev"
    assert s.network.policy_peers[0]["namespaceSelector"]["matchLabels"]["name"] == "monitoring"


def test_every_bad_variable_is_reported_at_once() -> None:
    with pytest.raises(ValueError) as err:
        config.from_env({"STARTUPMONKEY_RETENTION_COUNT": "zero",
                         "STARTUPMONKEY_DELETION_GRACE_PERIOD": "2 days",
                         "STARTUPMONKEY_NETWORK_POLICY_PEERS": "[{\"pods\": {}}]",
                         "STARTUPMONKEY_IMAGES_PULL_POLICY": "Sometimes"})
    text = str(err.value)
    assert text.startswith("4 bad operator setting(s)")
    for name in ("STARTUPMONKEY_RETENTION_COUNT", "STARTUPMONKEY_DELETION_GRACE_PERIOD",
                 "STARTUPMONKEY_NETWORK_POLICY_PEERS", "STARTUPMONKEY_IMAGES_PULL_POLICY"):
        assert name in text


def test_invalid_json_is_reported_readably() -> None:
    with pytest.raises(ValueError, match=r"STARTUPMONKEY_NETWORK_POLICY_PEERS: .*not valid JSON"):
        config.from_env({"STARTUPMONKEY_NETWORK_POLICY_PEERS": "[{"})


def test_cli_namespaces_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARTUPMONKEY_WATCHING_NAMESPACES", "a")
    assert main.settings_from(argparse.Namespace(namespace=[])).watching.namespaces == ["a"]
    args = argparse.Namespace(namespace=["b", "c"])
    assert main.settings_from(args).watching.namespaces == ["b", "c"]


def test_main_refuses_bad_settings_with_status_2(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STARTUPMONKEY_RETENTION_COUNT", "-1")
    code = main.main(argparse.Namespace(namespace=[], liveness_port=0, log_level="info"))
    assert code == main.NOT_CONFIGURED
    assert "STARTUPMONKEY_RETENTION_COUNT" in capsys.readouterr().err


def test_docs_list_every_variable() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text()
    missing = [name for name in config.env_names() if f"`{name}`" not in docs]
    assert not missing, f"docs/operator.md does not document {missing}"
