"""The operator's own settings: one typed object, read from one environment variable per field.

The Helm chart maps its values onto these variables (``STARTUPMONKEY_<GROUP>_<FIELD>``), the
way CloudNativePG's operator reads its configuration struct. Every field says its unit and its
default; :func:`from_env` reports every bad variable at once, so a user who mistypes two
values sees both. ``startupmonkey operator --namespace`` overrides the watched namespaces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from startupmonkey import notify, rbac
from startupmonkey.models import durations

ENV_PREFIX = "STARTUPMONKEY_"
DEFAULT_NATS_IMAGE = "nats:2.15.1-alpine"
_PEER_KEYS = {"podSelector", "namespaceSelector", "ipBlock"}
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SERVICE = re.compile(rf"^{_DNS_LABEL}/{_DNS_LABEL}(:[0-9]{{1,5}})?$")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("startupmonkey")
    except metadata.PackageNotFoundError:
        return "latest"


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else []
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc.msg} at character {exc.pos}") from None
    return value


def _check_peers(value: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for index, peer in enumerate(value):
        unknown = set(peer) - _PEER_KEYS
        if not peer or unknown:
            raise ValueError(f"peer {index} must use only {sorted(_PEER_KEYS)} "
                             f"(a NetworkPolicyPeer), got {sorted(peer) or 'nothing'}")
    return value


CommaList = Annotated[list[str], BeforeValidator(_split_list)]
Peers = Annotated[list[dict[str, Any]], BeforeValidator(_json),
                  pydantic.AfterValidator(_check_peers)]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Watching(_Group):
    """What the operator watches and how often it looks again without being told."""

    namespaces: CommaList = Field(
        default_factory=list, description="Namespaces to watch, comma-separated. Default: "
        "empty, meaning every namespace (needs the ClusterRole).")
    resync_interval: durations.Duration = Field(
        "5m", description="Drift repair: the shortest period of the sweep that re-applies every "
        "monitor's children (and recomputes its status) even when nothing was noticed; the "
        "period grows to about one monitor a second beyond 300 monitors at 5m. Duration, "
        "default 5m.")
    status_interval: durations.Duration = Field(
        "30s", description="How often what no watch reports is re-checked: a missing or "
        "unreadable Secret, a failed status recomputation (conditions follow Deployment and "
        "executor-status events at once; an executor report is marked stale when it goes "
        "stale). Duration, default 30s.")
    inactivity_timeout: durations.Duration = Field(
        "70s", description="A watch stream silent for this long is considered dead and "
        "re-established (the API server sends bookmarks every 60s). Duration, default 70s.")
    server_timeout: durations.Duration = Field(
        "10m", description="Longest single watch request; the operator then reconnects. "
        "Duration, default 10m.")


class Images(_Group):
    """What the data-plane pods run."""

    data_plane: str = Field(
        f"ghcr.io/startupmonkey/startupmonkey:{_version()}", min_length=1,
        description="The one StartupMonkey image for collector, analyser and executor. "
        "Default: ghcr.io/startupmonkey/startupmonkey:<operator version>.")
    nats: str = Field(DEFAULT_NATS_IMAGE, min_length=1, description="Image of the managed "
                      f"NATS server. Default {DEFAULT_NATS_IMAGE}.")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="imagePullPolicy of every container. Default IfNotPresent.")


class Retention(_Group):
    """How long finished Remediations are kept (they outlive their monitor on purpose)."""

    count: int = Field(100, ge=1, description="Finished Remediations kept per monitor (the "
                       "newest). Open ones are never pruned. Count, default 100.")
    max_age: durations.Duration = Field(
        "720h", description="Finished Remediations older than this (since their last state "
        "change) are deleted. Duration, default 720h (30 days).")
    interval: durations.Duration = Field("10m", description="How often the pruning runs. "
                                         "Duration, default 10m.")


class Deletion(_Group):
    """The finalizer drain of a deleted monitor."""

    grace_period: durations.Duration = Field(
        "30m", description="Longest wait for in-flight Remediations (status.remediations."
        "inFlight) to finish before the data plane is removed anyway. Duration, default 30m.")
    poll_interval: durations.Duration = Field(
        "5s", description="How often a draining monitor is looked at again. Duration, "
        "default 5s.")


class Network(_Group):
    """Who may reach the data plane besides its own namespace."""

    policy_peers: Peers = Field(
        default_factory=list, description="Extra NetworkPolicyPeers (JSON list, e.g. "
        "[{\"namespaceSelector\": {\"matchLabels\": {\"name\": \"monitoring\"}}}]) allowed to "
        "reach every metrics port. Default: none.")


class Webhook(_Group):
    """The optional mutating admission webhook that records who approved a Remediation."""

    enabled: bool = Field(False, description="Serve the webhook and keep its "
                          "MutatingWebhookConfiguration applied. Without it the approver is "
                          "recorded as unknown. Default false.")
    address: str = Field("0.0.0.0", min_length=1,  # noqa: S104 - reached through a Service
                         description="Address the HTTPS endpoint listens on. Default 0.0.0.0.")
    port: int = Field(9443, ge=1, le=65535, description="Port of the HTTPS endpoint. "
                      "Default 9443.")
    cert_file: str = Field("", description="PEM certificate of the endpoint (re-read when "
                           "it changes). Required when enabled; default empty.")
    key_file: str = Field("", description="PEM private key of the endpoint. Required when "
                          "enabled; default empty.")
    ca_file: str = Field("", description="PEM CA bundle the API server verifies the endpoint "
                         "with (the configuration's caBundle). Default: the certificate itself.")
    url: str = Field("", description="https:// URL the API server calls (outside a cluster, "
                     "e.g. https://127.0.0.1:9443). Exactly one of url and service; default "
                     "empty.")
    service: str = Field("", description="The Service in front of the operator, as "
                         "namespace/name or namespace/name:port (port default 443). "
                         "Exactly one of url and service; default empty.")
    configuration_name: str = Field(
        rbac.WEBHOOK_CONFIGURATION, min_length=1, max_length=253,
        description="Name of the MutatingWebhookConfiguration the operator applies. "
        "Default startupmonkey-approved-by.")
    timeout_seconds: int = Field(5, ge=1, le=30, description="How long the API server waits "
                                 "for the webhook before it lets the request through "
                                 "unannotated. Seconds, default 5.")

    @model_validator(mode="after")
    def _complete(self) -> Webhook:
        if not self.enabled:
            return self
        problems = [f"{env_name('webhook', f)} is required when the webhook is enabled"
                    for f in ("cert_file", "key_file") if not getattr(self, f)]
        if bool(self.url) == bool(self.service):
            problems.append("set exactly one of STARTUPMONKEY_WEBHOOK_URL and "
                            "STARTUPMONKEY_WEBHOOK_SERVICE")
        elif self.url and not self.url.startswith("https://"):
            problems.append("STARTUPMONKEY_WEBHOOK_URL must start with https://")
        elif self.service and not _SERVICE.match(self.service):
            problems.append("STARTUPMONKEY_WEBHOOK_SERVICE must be namespace/name[:port]")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Approvals(_Group):
    """Whether the recorded approver can be trusted."""

    policy: bool = Field(False, description="The chart's ValidatingAdmissionPolicy is installed "
                         "(approverPolicy.enabled): the annotation startupmonkey.dev/approved-by "
                         "can only name the user who sent the approving request, so the executor "
                         "records it as the approver. Without it the approver is recorded as "
                         "unknown (the webhook alone guards no later rewrite). Default false.")


class Observability(_Group):
    """The operator's own endpoint: Prometheus metrics, liveness and readiness."""

    address: str = Field("0.0.0.0", min_length=1,  # noqa: S104 - scraped and probed in a pod
                         description="Address /metrics, /healthz and /readyz listen on. "
                         "Default 0.0.0.0.")
    port: int = Field(8081, ge=1, le=65535, description="Port of /metrics (Prometheus), "
                      "/healthz and /readyz (ready while the API server answers the operator "
                      "and kopf has started). Default 8081 (kopf's liveness endpoint is "
                      "--liveness-port, 8080).")


class Notifications(_Group):
    """How the operator delivers ``spec.notifications`` (docs/notifications.md)."""

    timeout: durations.Duration = Field(
        f"{notify.Retry.timeout:g}s", description="Longest wait for one attempt of a "
        f"notification to be answered. Duration, default {notify.Retry.timeout:g}s.")
    attempts: int = Field(
        notify.Retry.attempts, ge=1, le=1000, description="Attempts of one notification "
        "before it is given up (queued again when the target next answers 2xx). Count, "
        f"default {notify.Retry.attempts}.")
    first_delay: durations.Duration = Field(
        f"{notify.Retry.first_delay:g}s", description="Wait after the first failed attempt; "
        f"it doubles after each one, up to {notify.Retry.max_delay:g}s. Duration, default "
        f"{notify.Retry.first_delay:g}s.")

    @field_validator("timeout", "first_delay")
    @classmethod
    def _bounded(cls, value: str) -> str:
        if not 0 < durations.parse_duration(value) <= 3600:
            raise ValueError("must be above 0 and at most 1h")
        return value

    def retry(self) -> notify.Retry:
        """The notifier's bounds."""
        return notify.Retry(timeout=durations.parse_duration(self.timeout),
                            attempts=self.attempts,
                            first_delay=durations.parse_duration(self.first_delay))


class OperatorSettings(_Group):
    """Every setting of the operator, grouped by concern."""

    watching: Watching = Field(default_factory=Watching)
    images: Images = Field(default_factory=Images)
    retention: Retention = Field(default_factory=Retention)
    deletion: Deletion = Field(default_factory=Deletion)
    network: Network = Field(default_factory=Network)
    webhook: Webhook = Field(default_factory=Webhook)
    approvals: Approvals = Field(default_factory=Approvals)
    observability: Observability = Field(default_factory=Observability)
    notifications: Notifications = Field(default_factory=Notifications)

    def seconds(self, value: str) -> float:
        """Seconds of one of the duration fields (a convenience for the callers)."""
        return durations.parse_duration(value)


def env_name(group: str, field: str) -> str:
    """``STARTUPMONKEY_RETENTION_MAX_AGE`` for ``retention.max_age``."""
    return f"{ENV_PREFIX}{group}_{field}".upper()


def env_names() -> dict[str, tuple[str, str]]:
    """Every environment variable the operator reads -> (group, field)."""
    names: dict[str, tuple[str, str]] = {}
    for group, info in OperatorSettings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, _Group)
        for field in model.model_fields:
            names[env_name(group, field)] = (group, field)
    return names


def from_env(environ: Mapping[str, str]) -> OperatorSettings:
    """Read the settings; raises ValueError naming every bad variable at once."""
    raw: dict[str, dict[str, str]] = {}
    for name, (group, field) in env_names().items():
        if name in environ:
            raw.setdefault(group, {})[field] = environ[name]
    try:
        return OperatorSettings.model_validate(raw)
    except pydantic.ValidationError as exc:
        problems = [f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ValueError(f"{len(problems)} bad operator setting(s): " + "; ".join(problems)
                         ) from None


def _where(loc: tuple[int | str, ...]) -> str:
    if len(loc) < 2:
        return str(loc[0]) if loc else "settings"
    return env_name(str(loc[0]), str(loc[1]))
