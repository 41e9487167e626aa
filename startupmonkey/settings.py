"""The rendered component config: one YAML file every data-plane process reads.

The operator renders it from a DatabaseMonitor into the monitor's ConfigMap (mounted at
``/etc/startupmonkey/config.yaml``); ``startupmonkey run`` writes the same file locally. It
holds the monitor's identity, its whole ``spec`` (thresholds, mode, policy, protect and limits
are hot-reloaded: :class:`ConfigWatcher` re-reads the file when it changes) and one block per
component with addresses and *paths* of mounted secrets, never secret values.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, Literal

import pydantic
import yaml
from pydantic import Field

from startupmonkey import db
from startupmonkey.models import base, dbnames
from startupmonkey.models import monitor as monitor_models

log = logging.getLogger(__name__)
DEFAULT_PATH = Path("/etc/startupmonkey/config.yaml")


class MonitorRef(base.ApiModel):
    """Which DatabaseMonitor this process works for."""

    namespace: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=40)


class DatabaseLogin(base.ApiModel):
    """How one component logs in; user and password come from mounted files."""

    host: str
    port: int = 5432
    dbname: str
    ssl_mode: str = "prefer"
    user: str | None = Field(None, description="User name, or the file below.")
    user_file: Path | None = Field(None, description="File holding the user (mounted Secret).")
    password_file: Path | None = Field(None, description="File holding the password (mode 0400).")

    def login(self) -> db.Login:
        """The resolved login (reads the user file; the password stays in its file)."""
        user = self.user
        if user is None and self.user_file is not None:
            user = self.user_file.read_text().strip()
        if not user:
            raise ValueError("database login needs user or userFile")
        return db.Login(self.host, self.port, self.dbname, user, self.password_file,
                        self.ssl_mode)


class NatsSettings(base.ApiModel):
    """How to reach the event bus."""

    url: str = "nats://127.0.0.1:4222"
    user_file: Path | None = None
    password_file: Path | None = None
    jetstream: bool = False
    ack_wait: str = Field("30s", description="JetStream: how long a delivered detection may "
                          "stay unacknowledged before another executor gets it.")


# What a database name may be and how many are watched: startupmonkey.models.dbnames (the
# DatabaseMonitor model judges spec.database.databases by the same rules).
MAX_DATABASES: Final = dbnames.MAX_DATABASES
TEMPLATE_DATABASES: Final = dbnames.TEMPLATE_DATABASES
MAX_DATABASE_NAME_BYTES: Final = dbnames.MAX_DATABASE_NAME_BYTES
database_name_problem = dbnames.database_name_problem
_shown = dbnames.shown
_database_names = dbnames.database_names


def _databases_or_all(value: Any) -> Any:
    """``databases``: the word ``all`` or a list of valid, distinct database names."""
    if isinstance(value, str):
        if value != "all":
            raise ValueError("databases is a list of database names or the word all, "
                             f"not {_shown(value)}")
        return value
    return _database_names(value, "databases")


def _other_databases_or_all(value: Any) -> Any:
    """The analyser's and executor's ``databases``: as :func:`_databases_or_all`, at most
    ``MAX_DATABASES - 1`` names (the home database is not listed)."""
    value = _databases_or_all(value)
    if value != "all" and len(value) > MAX_DATABASES - 1:
        raise ValueError(f"databases names {len(value)} databases; at most "
                         f"{MAX_DATABASES - 1} besides the home one")
    return value


def _exclude_only_with_all(databases: list[str] | str, exclude: list[str]) -> None:
    if exclude and databases != "all":
        raise ValueError("excludeDatabases applies only with databases: all")


class CollectorSettings(base.ApiModel):
    """The collector: where to read from and where to stream to."""

    database: DatabaseLogin
    databases: list[str] | Literal["all"] = Field(
        default_factory=list, exclude_if=lambda value: value == [],
        description="Databases of the same server to watch besides database.dbname (the "
        "home database), with the same login; 'all': every database that accepts "
        "connections (template0 and template1 never), re-read every minute, less "
        "excludeDatabases. Each is one snapshot per round.")
    exclude_databases: list[str] = Field(
        default_factory=list, exclude_if=lambda value: value == [],
        description="With databases: all, databases not to watch.")
    analyser_address: str = Field("127.0.0.1:50051", description="host:port or unix:///path")
    buffer_snapshots: int = Field(30, ge=1, description="Rounds kept while the analyser is "
                                  "away (this many snapshots per watched database); the "
                                  "oldest is dropped (and counted) beyond this.")
    top_statements: int = Field(50, ge=1, description="Statements whose text is sent.")
    query_timeout: str = Field("5s", description="statement_timeout of each monitoring query.")
    ingest_token_file: Path | None = Field(
        None, description="File holding the token the collector presents to the analyser "
        "(a mounted Secret); the analyser refuses streams without it when it has one.")

    @pydantic.field_validator("databases", mode="before")
    @classmethod
    def _databases(cls, value: Any) -> Any:
        return _databases_or_all(value)

    @pydantic.field_validator("exclude_databases", mode="before")
    @classmethod
    def _exclude_databases(cls, value: Any) -> Any:
        return _database_names(value, "excludeDatabases")

    @pydantic.model_validator(mode="after")
    def _watched(self) -> CollectorSettings:
        home = self.database.dbname
        _exclude_only_with_all(self.databases, self.exclude_databases)
        if home in self.exclude_databases:
            raise ValueError(f"excludeDatabases names the home database {home!r} "
                             "(database.dbname), which is always watched")
        if self.databases != "all" and len(self.other_databases()) > MAX_DATABASES - 1:
            raise ValueError(f"databases names {len(self.other_databases())} databases "
                             f"besides the home one; at most {MAX_DATABASES - 1}")
        return self

    def other_databases(self) -> list[str]:
        """The listed databases besides the home one, in order (the home one listed again is
        left out); [] with ``all`` (the collector finds those itself)."""
        if self.databases == "all":
            return []
        return [name for name in self.databases if name != self.database.dbname]


class AnalyserSettings(base.ApiModel):
    """The analyser: where to listen and where to publish."""

    listen_address: str = Field("0.0.0.0:50051", description="gRPC host:port or unix:///path")
    nats: NatsSettings = Field(default_factory=NatsSettings)
    databases: list[str] | Literal["all"] = Field(
        default_factory=list, exclude_if=lambda value: value == [],
        description="Databases analysed besides the collector's home database (the "
        "collector's list); 'all': every one but excludeDatabases (template0 and template1 "
        "never). Snapshots of any other database are refused.")
    exclude_databases: list[str] = Field(
        default_factory=list, exclude_if=lambda value: value == [],
        description="With databases: all, databases not analysed.")
    ingest_token_file: Path | None = Field(
        None, description="File holding the token every collector stream must present "
        "(a mounted Secret); unset: streams are not authenticated.")

    @pydantic.field_validator("databases", mode="before")
    @classmethod
    def _databases(cls, value: Any) -> Any:
        return _other_databases_or_all(value)

    @pydantic.field_validator("exclude_databases", mode="before")
    @classmethod
    def _exclude_databases(cls, value: Any) -> Any:
        return _database_names(value, "excludeDatabases")

    @pydantic.model_validator(mode="after")
    def _watched(self) -> AnalyserSettings:
        _exclude_only_with_all(self.databases, self.exclude_databases)
        return self


class ExecutorSettings(base.ApiModel):
    """The executor: database, bus, API and where it reports."""

    database: DatabaseLogin
    nats: NatsSettings = Field(default_factory=NatsSettings)
    listen_address: str = Field("0.0.0.0:50052", description="gRPC API host:port or "
                                "unix:///path")
    reporter: Literal["kubernetes", "jsonl"] = "kubernetes"
    audit_log: Path | None = Field(None, description="JSONL audit log (reporter jsonl).")
    token_file: Path | None = Field(None, description="Standalone API token file.")
    approver_verified: bool = Field(
        False, description="The API server vouches for the annotation "
        "startupmonkey.dev/approved-by (the chart's ValidatingAdmissionPolicy), so it is "
        "recorded as the approver; otherwise the approver of a Remediation "
        "approved through Kubernetes is recorded as unknown. The JSONL store (standalone) "
        "always believes it: only the executor's own API writes it there.")
    databases: list[str] | Literal["all"] = Field(
        default_factory=list, exclude_if=lambda value: value == [],
        description="Databases of the same server acted in besides the home database "
        "(database.dbname), with the same login; 'all': every one but excludeDatabases "
        "(template0 and template1 never). Detections naming any other database are "
        "refused.")
    exclude_databases: list[str] = Field(
        default_factory=list, exclude_if=lambda value: value == [],
        description="With databases: all, databases not acted in.")

    @pydantic.field_validator("databases", mode="before")
    @classmethod
    def _databases(cls, value: Any) -> Any:
        return _other_databases_or_all(value)

    @pydantic.field_validator("exclude_databases", mode="before")
    @classmethod
    def _exclude_databases(cls, value: Any) -> Any:
        return _database_names(value, "excludeDatabases")

    @pydantic.model_validator(mode="after")
    def _watched(self) -> ExecutorSettings:
        _exclude_only_with_all(self.databases, self.exclude_databases)
        return self

    def covers(self, dbname: str) -> bool:
        """Whether the executor acts in ``dbname`` besides its home database: listed in
        ``databases``, or with ``all`` not excluded; template0 and template1 never."""
        if dbname in TEMPLATE_DATABASES:
            return False
        if self.databases == "all":
            return dbname not in self.exclude_databases
        return dbname in self.databases


def watched_databases(spec: monitor_models.DatabaseSpec) -> dict[str, Any]:
    """The ``databases`` and ``excludeDatabases`` of the collector, analyser and executor
    blocks, from the monitor's ``spec.database`` (``databases``, or ``allDatabases`` and
    ``excludeDatabases``), as keyword arguments of their settings: the operator's ConfigMap
    and ``startupmonkey run`` render them with this one function."""
    if spec.all_databases:
        return {"databases": "all", "exclude_databases": list(spec.exclude_databases)}
    return {"databases": list(spec.databases), "exclude_databases": []}


class ComponentConfig(base.ApiModel):
    """The whole file."""

    monitor: MonitorRef
    spec: monitor_models.DatabaseMonitorSpec
    collector: CollectorSettings | None = None
    analyser: AnalyserSettings | None = None
    executor: ExecutorSettings | None = None


def load(path: Path) -> ComponentConfig:
    """Parse the config file; raises ValueError listing every problem."""
    try:
        return ComponentConfig.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from None
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None


def dump(config: ComponentConfig) -> str:
    """The YAML text of a config (what the operator and ``run`` write)."""
    return yaml.safe_dump(config.dump(), sort_keys=False)


class ConfigWatcher:
    """Re-reads the config file when its content changes and hands the new one over.

    Kubernetes updates a mounted ConfigMap by swapping a symlink, so the watcher compares
    content hashes rather than trusting mtimes. A file that stops parsing keeps the last good
    config in force and logs the problem once per bad version.
    """

    def __init__(self, path: Path, on_change: Callable[[ComponentConfig], Awaitable[None]],
                 interval: float = 2.0) -> None:
        self.path = path
        self.on_change = on_change
        self.interval = interval
        self._digest = self._read_digest()

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    async def check(self) -> bool:
        """Look once; True when a new valid config was handed over."""
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        try:
            config = load(self.path)
        except ValueError as exc:
            log.error("config change ignored, keeping the previous one: %s", exc)
            return False
        await self.on_change(config)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            await self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
