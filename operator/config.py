"""The operator's own settings: one typed object, read from one environment variable per field.

The Helm chart maps its values onto these variables (``STARTUPMONKEY_<GROUP>_<FIELD>``), the
way CloudNativePG's operator reads its configuration struct. Every field says its unit and its
default; :func:`from_env` reports every bad variable at once, so a user who mistypes two
values sees both. ``startupmonkey operator --namespace`` overrides the watched namespaces.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from startupmonkey.models import durations

ENV_PREFIX = "STARTUPMONKEY_"
DEFAULT_NATS_IMAGE = "nats:2.15.1-alpine"
_PEER_KEYS = {"podSelector", "namespaceSelector", "ipBlock"}


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
        "5m", description="Drift repair: every monitor's children are re-applied this often "
        "even when nothing was noticed. Duration, default 5m.")
    status_interval: durations.Duration = Field(
        "30s", description="Conditions are recomputed at least this often (they also follow "
        "Deployment and executor-status events at once). Duration, default 30s.")
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
        "reach the executor API and every metrics port. Default: none.")


class OperatorSettings(_Group):
    """Every setting of the operator, grouped by concern."""

    watching: Watching = Field(default_factory=Watching)
    images: Images = Field(default_factory=Images)
    retention: Retention = Field(default_factory=Retention)
    deletion: Deletion = Field(default_factory=Deletion)
    network: Network = Field(default_factory=Network)

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
