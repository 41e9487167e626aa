"""The approver webhook: the decision, the handler's patch, the configuration, the settings
and the wiring (the real API server calling it is tests/e2e/test_operator_webhook_kube.py)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import kopf
import pytest

from startupmonkey.models import remediation
from startupmonkey.operator import config, handlers, main, webhook

KEY = remediation.ANNOTATION_APPROVED_BY
ALICE = {"username": "alice@example.com", "uid": "1", "groups": ["dba"]}
ENABLED = {"STARTUPMONKEY_WEBHOOK_ENABLED": "true",
           "STARTUPMONKEY_WEBHOOK_CERT_FILE": "/tls/tls.crt",
           "STARTUPMONKEY_WEBHOOK_KEY_FILE": "/tls/tls.key",
           "STARTUPMONKEY_WEBHOOK_URL": "https://127.0.0.1:9443/"}


def rem(approved: bool | None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"monitor": "shop", "sql": "VACUUM x"}
    if approved is not None:
        spec["approved"] = approved
    meta: dict[str, Any] = {"name": "shop-0123456789", "namespace": "db"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "Remediation",
            "metadata": meta, "spec": spec}


# ----------------------------------------------------------------------------- the decision


@pytest.mark.parametrize(("old", "new"), [(False, True), (None, True)])
def test_an_approval_names_the_requesting_user(old: bool | None, new: bool) -> None:
    assert webhook.annotations_for("UPDATE", rem(old), rem(new), ALICE) == {
        KEY: "alice@example.com"}


@pytest.mark.parametrize(("operation", "old", "new"), [
    ("UPDATE", False, False),   # a label or annotation change
    ("UPDATE", True, True),     # a later change of an approved one keeps its approver
    ("UPDATE", True, False),    # the CRD refuses it; we do not touch it either
    ("CREATE", None, True),     # created approved (the executor's policy): nobody approved
    ("DELETE", True, True),
])
def test_anything_else_gets_nothing(operation: str, old: bool | None, new: bool) -> None:
    old_body = None if operation == "CREATE" else rem(old)
    assert webhook.annotations_for(operation, old_body, rem(new), ALICE) == {}


def test_a_missing_user_name_is_unknown_and_a_forged_one_is_overwritten() -> None:
    assert webhook.annotations_for("UPDATE", rem(False), rem(True), {}) == {KEY: "unknown"}
    forged = rem(True, {KEY: "someone-else"})
    assert webhook.annotations_for("UPDATE", rem(False), forged, ALICE) == {
        KEY: "alice@example.com"}


def _run_handler(old: Any, new: Any, operation: str = "UPDATE",
                 userinfo: Any = None) -> kopf.Patch:
    patch = kopf.Patch()
    asyncio.run(webhook.record_approver(patch=patch, operation=operation, old=old, new=new,
                                        userinfo=ALICE if userinfo is None else userinfo))
    return patch


def test_the_handler_adds_exactly_the_annotation_as_a_json_patch() -> None:
    new = rem(True)
    patch = _run_handler(rem(False), new)
    assert patch.as_json_patch(new) == [
        {"op": "add", "path": "/metadata/annotations", "value": {KEY: "alice@example.com"}}]
    other = rem(True, {"team": "db"})
    assert _run_handler(rem(False, {"team": "db"}), other).as_json_patch(other) == [
        {"op": "add", "path": "/metadata/annotations/startupmonkey.dev~1approved-by",
         "value": "alice@example.com"}]


def test_the_handler_patches_nothing_otherwise_and_never_raises() -> None:
    assert not _run_handler(rem(False), rem(False))
    assert not _run_handler(rem(True), rem(True))
    assert not _run_handler("not a body", ["nor", "this"], userinfo="garbage")


# ----------------------------------------------------------------------------- configuration


def test_the_configuration_sends_only_approvals_and_never_blocks() -> None:
    settings = config.from_env(ENABLED).webhook
    body = webhook.configuration(settings, ["shop", "billing"], b"PEM")
    assert body["kind"] == "MutatingWebhookConfiguration"
    assert body["metadata"]["name"] == "startupmonkey-approved-by"
    [hook] = body["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] == 5
    assert hook["rules"] == [{"apiGroups": ["startupmonkey.dev"], "apiVersions": ["v1alpha1"],
                              "resources": ["remediations"], "operations": ["UPDATE"],
                              "scope": "Namespaced"}]
    assert hook["matchConditions"][0]["expression"] == webhook.MATCH_APPROVAL
    assert hook["clientConfig"] == {"url": "https://127.0.0.1:9443/approved-by",
                                    "caBundle": base64.b64encode(b"PEM").decode()}
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In",
         "values": ["billing", "shop"]}]
    assert "namespaceSelector" not in webhook.configuration(settings, [], b"PEM")["webhooks"][0]


def test_in_a_cluster_the_api_server_calls_a_service() -> None:
    env = {**ENABLED, "STARTUPMONKEY_WEBHOOK_URL": "",
           "STARTUPMONKEY_WEBHOOK_SERVICE": "startupmonkey/startupmonkey-operator:8443"}
    client = webhook.client_config(config.from_env(env).webhook, b"PEM")
    assert client["service"] == {"namespace": "startupmonkey", "name": "startupmonkey-operator",
                                 "port": 8443, "path": "/approved-by"}
    env["STARTUPMONKEY_WEBHOOK_SERVICE"] = "startupmonkey/op"
    assert webhook.client_config(config.from_env(env).webhook, b"")["service"]["port"] == 443


def test_the_ca_bundle_is_the_ca_file_or_else_the_certificate(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_bytes(b"CERT")
    (tmp_path / "ca.crt").write_bytes(b"CA")
    env = {**ENABLED, "STARTUPMONKEY_WEBHOOK_CERT_FILE": str(tmp_path / "tls.crt")}
    assert webhook.ca_bundle(config.from_env(env).webhook) == b"CERT"
    env["STARTUPMONKEY_WEBHOOK_CA_FILE"] = str(tmp_path / "ca.crt")
    assert webhook.ca_bundle(config.from_env(env).webhook) == b"CA"


# ----------------------------------------------------------------------------- settings, wiring


def test_the_webhook_is_off_by_default_and_its_variables_are_known() -> None:
    settings = config.from_env({}).webhook
    assert settings.enabled is False and settings.port == 9443
    names = config.env_names()
    for field in ("ENABLED", "ADDRESS", "PORT", "CERT_FILE", "KEY_FILE", "CA_FILE", "URL",
                  "SERVICE", "CONFIGURATION_NAME", "TIMEOUT_SECONDS"):
        assert f"STARTUPMONKEY_WEBHOOK_{field}" in names


@pytest.mark.parametrize(("env", "problem"), [
    ({"STARTUPMONKEY_WEBHOOK_CERT_FILE": ""}, "STARTUPMONKEY_WEBHOOK_CERT_FILE is required"),
    ({"STARTUPMONKEY_WEBHOOK_KEY_FILE": ""}, "STARTUPMONKEY_WEBHOOK_KEY_FILE is required"),
    ({"STARTUPMONKEY_WEBHOOK_URL": ""}, "exactly one of"),
    ({"STARTUPMONKEY_WEBHOOK_SERVICE": "a/b"}, "exactly one of"),
    ({"STARTUPMONKEY_WEBHOOK_URL": "http://127.0.0.1:9443"}, "must start with https://"),
    ({"STARTUPMONKEY_WEBHOOK_URL": "", "STARTUPMONKEY_WEBHOOK_SERVICE": "op"},
     "namespace/name"),
    ({"STARTUPMONKEY_WEBHOOK_TIMEOUT_SECONDS": "60"}, "STARTUPMONKEY_WEBHOOK_TIMEOUT_SECONDS"),
])
def test_an_incomplete_webhook_setting_stops_the_operator(env: dict[str, str],
                                                          problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        config.from_env({**ENABLED, **env})


def _webhook_ids(reg: kopf.OperatorRegistry) -> set[str]:
    return {str(h.id) for h in reg._webhooks.get_all_handlers()}


def test_enabled_it_is_registered_and_served_by_kopf() -> None:
    settings = config.from_env(ENABLED)
    reg = handlers.registry(settings)
    assert _webhook_ids(reg) == {webhook.HANDLER_ID}
    [handler] = reg._webhooks.get_all_handlers()
    assert list(handler.operations or []) == ["UPDATE"]
    assert "webhook-configuration" in {str(h.id) for h in reg._activities.get_all_handlers()}
    ks = handlers.kopf_settings(settings)
    assert isinstance(ks.admission.server, kopf.WebhookServer)
    assert ks.admission.server.certfile == "/tls/tls.crt"
    assert ks.admission.managed is None


def test_disabled_nothing_is_registered_or_served() -> None:
    settings = config.from_env({})
    assert _webhook_ids(handlers.registry(settings)) == set()
    assert handlers.kopf_settings(settings).admission.server is None


def test_routine_webhook_successes_are_not_logged() -> None:
    assert main.QUIET.match("Webhook 'approved-by' succeeded.")
