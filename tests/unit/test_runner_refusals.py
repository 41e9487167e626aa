"""``startupmonkey run`` refuses, before starting anything, what it cannot honour."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from startupmonkey import cli


def test_an_external_nats_login_from_a_kubernetes_secret_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "monitor.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
        "metadata": {"name": "shop", "namespace": "dev"},
        "spec": {"database": {"host": "127.0.0.1", "dbname": "shop",
                              "credentialsSecret": {"name": "shop-db"}},
                 "eventBus": {"url": "nats://127.0.0.1:4222",
                              "credentialsSecret": {"name": "nats-login"}}}}))
    assert cli.main(["run", "-f", str(manifest), "--plain"]) == 1
    error = capsys.readouterr().err
    assert "spec.eventBus.credentialsSecret" in error and "cannot read" in error
    assert not list(tmp_path.glob("*.json")), "nothing started, no state written"
