"""The operator's metrics and readiness rules (no network): which API answers make it not
ready, what the counters and the phase gauge show."""

from __future__ import annotations

import asyncio

import prometheus_client

from startupmonkey import observability
from startupmonkey.operator import config, metrics


def _fresh() -> tuple[metrics.OperatorMetrics, observability.Health,
                      prometheus_client.CollectorRegistry]:
    registry = prometheus_client.CollectorRegistry()
    health = observability.Health(registry)
    health.expect(metrics.API, metrics.KOPF)
    return metrics.OperatorMetrics(registry, health), health, registry


def _sample(registry: prometheus_client.CollectorRegistry, name: str,
            **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_not_ready_until_the_api_answered_and_kopf_started() -> None:
    numbers, health, _ = _fresh()
    assert not health.ready
    numbers.api_answered("GET", 200)
    assert not health.ready, "kopf has not started yet"
    asyncio.run(metrics.follow_kopf(health, _set(asyncio.Event()), ["shop"]))
    assert health.ready
    assert "watching shop" in health.report()["dependencies"][metrics.KOPF]["detail"]


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event


def test_refusals_and_silence_make_it_not_ready_ordinary_answers_do_not() -> None:
    numbers, health, registry = _fresh()
    health.set(metrics.KOPF, True)
    for status in (200, 201, 404, 409, 422):  # answers the operator works with
        numbers.api_answered("GET", status, "whatever")
        assert health.ready, status
    numbers.api_answered("GET", 403, 'databasemonitors is forbidden: User "x" cannot list')
    detail = health.report()["dependencies"][metrics.API]["detail"]
    assert not health.ready and "403" in detail and "forbidden" in detail
    numbers.api_answered("GET", 200)
    assert health.ready
    numbers.api_answered("PATCH", None, "MaxRetryError: connection refused")
    assert not health.ready
    assert "connection refused" in health.report()["dependencies"][metrics.API]["detail"]
    numbers.api_answered("GET", 503, "etcd is down")
    assert not health.ready
    assert _sample(registry, "startupmonkey_operator_api_requests_total",
                   method="PATCH", code="none") == 1
    assert _sample(registry, "startupmonkey_operator_api_requests_total",
                   method="GET", code="200") == 2


def test_reconciles_are_counted_and_monitors_shown_by_phase() -> None:
    numbers, _, registry = _fresh()
    numbers.reconciled(True, "ok", 0.2)
    numbers.reconciled(False, "apply_failed", 0.1)
    numbers.phases[("shop", "a")] = "Ready"
    numbers.phases[("shop", "b")] = "Error"
    numbers.phases[("other", "c")] = "Ready"
    assert _sample(registry, "startupmonkey_operator_reconciles_total",
                   kind="repair", outcome="ok") == 1
    assert _sample(registry, "startupmonkey_operator_reconciles_total",
                   kind="status", outcome="apply_failed") == 1
    assert _sample(registry, "startupmonkey_operator_reconcile_duration_seconds_count",
                   kind="repair") == 1
    assert _sample(registry, "startupmonkey_operator_monitors", phase="Ready") == 2
    assert _sample(registry, "startupmonkey_operator_monitors", phase="Error") == 1
    assert _sample(registry, "startupmonkey_operator_monitors", phase="Pending") == 0


def test_the_endpoint_is_an_operator_setting() -> None:
    defaults = config.from_env({})
    assert (defaults.observability.address, defaults.observability.port) == ("0.0.0.0", 8081)
    chosen = config.from_env({"STARTUPMONKEY_OBSERVABILITY_PORT": "9090"})
    assert chosen.observability.port == 9090
    assert "STARTUPMONKEY_OBSERVABILITY_PORT" in config.env_names()
