"""One Remediation object that cannot be read must not stop every intake and tick (issue 23.3):
the Kubernetes store skips it, counts it and says which one to fix or delete."""

from __future__ import annotations

import logging

import kubernetes.client
import pytest

from startupmonkey.executor import kube


def test_an_unreadable_object_is_skipped_counted_and_named(
        caplog: pytest.LogCaptureFixture) -> None:
    store = kube.KubernetesStore("ns", "mon", api_client=kubernetes.client.ApiClient())
    caplog.set_level(logging.WARNING)

    assert store._readable({"metadata": {"name": "mon-broken"}, "spec": {"action": 7}}) is None
    assert store._readable({"metadata": {}}) is None

    assert store.unreadable == 2
    assert "skipping Remediation mon-broken: it cannot be read" in caplog.text
