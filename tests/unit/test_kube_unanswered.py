"""Issue 23.4: a Kubernetes call the API server does not answer fails with one clear line,
and is an error every caller already handles (``kubeapi.ERRORS``)."""

from __future__ import annotations

from typing import Any

import kubernetes.client
import kubernetes.config
import pytest
import urllib3.exceptions

from startupmonkey import kubeapi
from startupmonkey.executor import kube as executor_kube


async def test_an_unanswered_call_names_the_call_and_the_timeout() -> None:
    def hang(*_: Any, **options: Any) -> None:
        assert options["_request_timeout"] == kubeapi.REQUEST_TIMEOUT
        timed_out = urllib3.exceptions.ReadTimeoutError(
            None, "/apis/x", "Read timed out. (read timeout=20)")  # type: ignore[arg-type]
        raise urllib3.exceptions.MaxRetryError(None, "/apis/x", timed_out)  # type: ignore[arg-type]

    hang.__name__ = "list_namespaced_custom_object"
    store = executor_kube.KubernetesStore("prod", "shop", kubernetes.client.ApiClient())
    try:
        with pytest.raises(kubeapi.Unanswered) as raised:
            await store._call(hang)
    finally:
        store.client.close()
    message = str(raised.value)
    assert message.startswith("the Kubernetes API server did not answer "
                              "list_namespaced_custom_object within 5s (connect) / 20s (read)")
    assert "Read timed out" in message and "\n" not in message
    assert isinstance(raised.value, kubeapi.ERRORS)


def test_loaded_clients_retry_an_unanswered_request_at_most_once(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    load = kubernetes.config.load_kube_config
    monkeypatch.setattr(kubernetes.config, "load_kube_config",
                        lambda: load(config_file=str(config)))
    client = kubeapi.load_client()
    try:
        assert client.configuration.retries == kubeapi.RETRIES == 1
        assert client.configuration.host == "https://127.0.0.1:1"
    finally:
        client.close()
