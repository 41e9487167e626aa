"""JSON logs carry the monitor's identity and never a secret-looking extra."""

from __future__ import annotations

import io
import json
import logging

from startupmonkey import observability


def test_json_logs_carry_identity_and_redact_secrets() -> None:
    stream = io.StringIO()
    observability.setup_logging("executor", "prod", "shop", stream=stream)
    try:
        logging.getLogger("startupmonkey.test").info(
            "connected to %s", "db", extra={"dbname": "shop", "db_password": "hunter2"})
    finally:
        logging.getLogger().handlers.clear()
    entry = json.loads(stream.getvalue().strip())
    assert entry["message"] == "connected to db"
    assert entry["component"] == "executor"
    assert (entry["namespace"], entry["monitor"]) == ("prod", "shop")
    assert entry["dbname"] == "shop"
    assert entry["db_password"] == "<redacted>"
    assert "hunter2" not in stream.getvalue()


def test_health_is_ready_only_when_every_dependency_is() -> None:
    import prometheus_client

    health = observability.Health(prometheus_client.CollectorRegistry())
    health.expect("database", "nats")
    assert not health.ready
    health.set("database", True, "connected")
    assert not health.ready
    health.set("nats", True)
    assert health.ready
    health.set("database", False, "connection refused")
    report = health.report()
    assert report["ready"] is False
    assert report["dependencies"]["database"]["detail"] == "connection refused"
