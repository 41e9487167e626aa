"""Who approved a Remediation: the operator's mutating admission webhook (optional).

An approval is ``kubectl patch rem X --type merge -p '{"spec":{"approved":true}}'``. The API
server knows who sent it; the executor does not. When ``STARTUPMONKEY_WEBHOOK_ENABLED`` is
true, kopf serves a ``kopf.on.mutate`` handler over HTTPS (``kopf.WebhookServer`` with the
configured certificate and key) and the operator keeps one MutatingWebhookConfiguration
applied, so that on the UPDATE that turns ``spec.approved`` from false to true the API server
adds the annotation ``startupmonkey.dev/approved-by: <user name>``; the executor copies it into
``status.approvedBy``. An annotation, so the spec stays exactly as the CRD's rules demand.

The webhook never blocks and never alters anything else:

- its ``matchConditions`` send only approvals to it (every other update never leaves the API
  server), and :func:`annotations_for` patches nothing unless old false -> new true;
- ``failurePolicy: Ignore`` and a short timeout: an unreachable or slow operator lets the
  approval through unannotated (the executor then records the approver as ``unknown``);
- the handler itself never raises (kopf would turn an exception into a denial).

The configuration is built here rather than by kopf (``settings.admission.managed``) because
kopf's generated one cannot carry ``matchConditions``, a namespace selector for the watched
namespaces, a timeout other than 30s, or a Service ``clientConfig`` (kopf's server yields URLs
only); it is re-applied (server-side apply) every resync interval, which also picks up a new CA,
and is left in place when the operator stops (``failurePolicy: Ignore`` covers the downtime).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import kopf

from startupmonkey.models import durations, remediation
from startupmonkey.models import monitor as monitor_models
from startupmonkey.operator import config as config_mod
from startupmonkey.operator import kube, reconcile

log = logging.getLogger(__name__)

#: kopf's handler id; also the URL path the API server posts to (kopf routes by it).
HANDLER_ID = "approved-by"
WEBHOOK_NAME = "approved-by.startupmonkey.dev"
CONFIGURATION = kube.Kind("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration",
                          "mutatingwebhookconfigurations")
#: Only an UPDATE that turns spec.approved from (absent or) false to true is sent at all.
MATCH_APPROVAL = ("has(object.spec.approved) && object.spec.approved == true && "
                  "!(has(oldObject.spec.approved) && oldObject.spec.approved == true)")
UNKNOWN = "unknown"
#: Seconds between attempts when applying the configuration fails.
RETRY_DELAY = 30.0


# ----------------------------------------------------------------------------- the decision


def _approved(body: Mapping[str, Any] | None) -> bool:
    spec = (body or {}).get("spec") or {}
    return isinstance(spec, Mapping) and spec.get("approved") is True


def is_approval(operation: str | None, old: Mapping[str, Any] | None,
                new: Mapping[str, Any] | None) -> bool:
    """An UPDATE whose ``spec.approved`` goes from false (or absent) to true."""
    return operation == "UPDATE" and old is not None and _approved(new) and not _approved(old)


def approver(userinfo: Mapping[str, Any] | None) -> str:
    """The requesting user's name, as the API server authenticated it."""
    name = (userinfo or {}).get("username")
    return name if isinstance(name, str) and name else UNKNOWN


def annotations_for(operation: str | None, old: Mapping[str, Any] | None,
                    new: Mapping[str, Any] | None,
                    userinfo: Mapping[str, Any] | None) -> dict[str, str]:
    """The annotations to add: the approver on an approval, nothing on any other change.

    A value the requester put there himself is overwritten: the API server's word counts."""
    if not is_approval(operation, old, new):
        return {}
    return {remediation.ANNOTATION_APPROVED_BY: approver(userinfo)}


async def record_approver(patch: kopf.Patch, **kwargs: Any) -> None:
    """The ``kopf.on.mutate`` handler. Never raises: kopf would deny the request."""
    new = kwargs.get("new")
    try:
        added = annotations_for(kwargs.get("operation"), kwargs.get("old"), new,
                                kwargs.get("userinfo"))
    except Exception:  # an approval must never be blocked by us
        log.exception("could not evaluate an admission request; letting it through")
        return
    for key, value in added.items():
        patch.metadata.annotations[key] = value
    if added:
        meta = (new or {}).get("metadata") or {}
        log.info("approval of remediation %s/%s by %s", meta.get("namespace"),
                 meta.get("name"), added[remediation.ANNOTATION_APPROVED_BY])


# ----------------------------------------------------------------------------- the configuration


def client_config(settings: config_mod.Webhook, ca_bundle: bytes) -> dict[str, Any]:
    """How the API server reaches the handler: a URL, or a Service in the cluster."""
    config: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode("ascii")}
    if settings.service:
        where, _, port = settings.service.partition(":")
        namespace, name = where.split("/", 1)
        config["service"] = {"namespace": namespace, "name": name,
                             "port": int(port or 443), "path": f"/{HANDLER_ID}"}
    else:
        config["url"] = f"{settings.url.rstrip('/')}/{HANDLER_ID}"
    return config


def configuration(settings: config_mod.Webhook, namespaces: Sequence[str],
                  ca_bundle: bytes) -> dict[str, Any]:
    """The MutatingWebhookConfiguration: approvals of Remediations in the watched namespaces."""
    hook: dict[str, Any] = {
        "name": WEBHOOK_NAME,
        "admissionReviewVersions": ["v1"],
        "clientConfig": client_config(settings, ca_bundle),
        "rules": [{"apiGroups": [monitor_models.GROUP],
                   "apiVersions": [monitor_models.VERSION],
                   "resources": [remediation.PLURAL],
                   "operations": ["UPDATE"], "scope": "Namespaced"}],
        "matchConditions": [{"name": "approval", "expression": MATCH_APPROVAL}],
        "failurePolicy": "Ignore",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": settings.timeout_seconds,
        "reinvocationPolicy": "Never",
    }
    if namespaces:
        hook["namespaceSelector"] = {"matchExpressions": [{
            "key": "kubernetes.io/metadata.name", "operator": "In",
            "values": sorted(namespaces)}]}
    return {"apiVersion": CONFIGURATION.api_version, "kind": CONFIGURATION.kind,
            "metadata": {"name": settings.configuration_name,
                         "labels": {"app.kubernetes.io/managed-by": "startupmonkey-operator",
                                    "app.kubernetes.io/part-of": "startupmonkey"}},
            "webhooks": [hook]}


def ca_bundle(settings: config_mod.Webhook) -> bytes:
    """The CA file's content, or the serving certificate itself (self-signed or not)."""
    return Path(settings.ca_file or settings.cert_file).read_bytes()


async def apply_configuration(api: kube.Api, settings: config_mod.Webhook,
                              namespaces: Sequence[str]) -> None:
    """Server-side apply of the configuration (create or converge)."""
    bundle = await asyncio.to_thread(ca_bundle, settings)
    body = configuration(settings, namespaces, bundle)
    await api.request("PATCH", CONFIGURATION.path(None, settings.configuration_name), body,
                      query=[("fieldManager", kube.FIELD_MANAGER), ("force", "true")],
                      content_type="application/apply-patch+yaml")


async def keep_configured(api: kube.Api, settings: config_mod.OperatorSettings) -> None:
    """Apply the configuration now and every resync interval; retry failures."""
    every = durations.parse_duration(settings.watching.resync_interval)
    while True:
        try:
            await apply_configuration(api, settings.webhook, settings.watching.namespaces)
        except Exception as exc:  # API refusals, connection errors, an unreadable CA file
            log.error("could not apply the MutatingWebhookConfiguration %s (approvers are "
                      "recorded as unknown meanwhile): %s", settings.webhook.configuration_name,
                      exc)
            await asyncio.sleep(RETRY_DELAY)
            continue
        await asyncio.sleep(every)


# ----------------------------------------------------------------------------- kopf wiring


async def startup(memo: kopf.Memo, **_: Any) -> None:
    """Start keeping the configuration applied (stopped by the operator's cleanup)."""
    ctx = memo["context"]
    assert isinstance(ctx, reconcile.Context)
    task = asyncio.create_task(keep_configured(ctx.api, ctx.settings), name="webhook-config")
    ctx.background.append(task)


def server(settings: config_mod.Webhook) -> kopf.WebhookServer:
    """kopf's HTTPS endpoint with our certificate (re-read by kopf when the files change)."""
    return kopf.WebhookServer(addr=settings.address, port=settings.port,
                              certfile=settings.cert_file, pkeyfile=settings.key_file,
                              cafile=settings.ca_file or None)


def register(reg: kopf.OperatorRegistry) -> None:
    """The mutate handler and the configuration keeper, on the operator's registry."""
    kopf.on.mutate(monitor_models.GROUP, monitor_models.VERSION, remediation.PLURAL,
                   registry=reg, id=HANDLER_ID, operations=["UPDATE"], ignore_failures=True,
                   side_effects=False, persistent=True)(record_approver)
    kopf.on.startup(registry=reg, id="webhook-configuration")(startup)
