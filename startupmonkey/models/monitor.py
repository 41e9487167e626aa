"""The ``DatabaseMonitor`` kind (group ``startupmonkey.dev``, version ``v1alpha1``).

Spec: what to watch and how far StartupMonkey may go. Status: one owner per key
(docs/design.md#status-ownership): the operator
writes ``observedGeneration``, ``conditions`` and ``phase``;
the executor writes ``database``, ``databases`` and ``remediations``. The CRD in ``crds/`` is
generated from these classes by ``hack/gen_crds.py``; CEL rules that pydantic cannot express
are attached with ``x-kubernetes-validations`` in ``json_schema_extra`` and mirrored by a
pydantic validator, so a manifest is judged the same by ``startupmonkey run`` and by the API
server.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PlainSerializer,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from startupmonkey import kubetime
from startupmonkey.models import base, dbnames, durations
from startupmonkey.models import thresholds as thresholds_mod
from startupmonkey.models.enums import ActionId, Mode, RemediationState, RiskClass

GROUP = "startupmonkey.dev"
VERSION = "v1alpha1"
KIND = "DatabaseMonitor"
PLURAL = "databasemonitors"
SHORT_NAME = "dbm"

#: DNS-1035 label, at most 40 characters: it names Services and labels and is a NATS token.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX = 40
NAME_RULE = {
    "rule": f"self.metadata.name.size() <= {NAME_MAX} "
    f"&& self.metadata.name.matches('{NAME_PATTERN}')",
    "message": f"metadata.name must be a DNS-1035 label of at most {NAME_MAX} characters "
    "(lower-case letters, digits and '-', starting with a letter)",
}


def check_name(name: str) -> str:
    """Raise ValueError unless ``name`` is a valid monitor name."""
    if len(name) > NAME_MAX or not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(NAME_RULE["message"])
    return name


NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NAMESPACE_MAX = 63


def check_namespace(namespace: str) -> str:
    """Raise ValueError unless ``namespace`` is a Kubernetes namespace name (an RFC 1123 DNS
    label): it becomes a token of NATS subjects and part of stream names."""
    if len(namespace) > NAMESPACE_MAX or not re.fullmatch(NAMESPACE_PATTERN, namespace):
        raise ValueError(
            f"a namespace must be at most {NAMESPACE_MAX} characters of lower-case letters, "
            "digits and '-', starting and ending with a letter or digit (RFC 1123 DNS label)")
    return namespace


class SecretKeyRef(base.ApiModel):
    """A Secret in the monitor's namespace holding a database login."""

    name: str = Field(min_length=1, max_length=253, description="Secret name.")
    user_key: str = Field("username", max_length=253, description="Key of the user name.")
    password_key: str = Field("password", max_length=253, description="Key of the password "
                              "(mounted as a file, mode 0400; never an env var).")


#: Databases ``spec.database.databases`` lists at most: the home one makes the server's limit.
MAX_OTHER_DATABASES = dbnames.MAX_DATABASES - 1
#: Names ``spec.database.excludeDatabases`` holds at most (a bound the CEL rules' cost needs).
MAX_EXCLUDED_DATABASES = 64
#: What the CEL rules and their pydantic mirrors say, word for word.
BYTES_MESSAGE = (f"a database name is at most {dbnames.MAX_DATABASE_NAME_BYTES} bytes (UTF-8) "
                 "and has no NUL character")
TEMPLATES_MESSAGE = "template0 and template1 are never watched"
TWICE_MESSAGE = "a database is listed twice"
HOME_MESSAGE = ("lists the home database (database.dbname), which is always watched: list "
                "only the others")
BOTH_MESSAGE = "database: set databases (a list) or allDatabases: true, not both"
EXCLUDE_MESSAGE = "database.excludeDatabases applies only with allDatabases: true"


def _name_rules(field: str, *, templates: bool) -> list[Any]:
    """CEL rules of a list of database names (``self`` the list; items bounded to 63
    characters by the schema, so the cost stays within the API server's budget)."""
    rules: list[Any] = [
        {"rule": f"self.all(n, size(bytes(n)) <= {dbnames.MAX_DATABASE_NAME_BYTES} "
                 "&& !n.contains('\\u0000'))",
         "message": f"database.{field}: {BYTES_MESSAGE}"},
        {"rule": "self.all(n, self.exists_one(m, m == n))",
         "message": f"database.{field}: {TWICE_MESSAGE}"},
    ]
    if templates:
        rules.append({"rule": "self.all(n, !(n in ['template0', 'template1']))",
                      "message": f"database.{field}: {TEMPLATES_MESSAGE}"})
    return rules


def _check_names(value: Any, field: str, *, most: int, templates: bool) -> Any:
    """The pydantic mirror of :func:`_name_rules` and the list's ``maxItems``: ValueError
    naming every problem, in the CEL rules' words."""
    if value == "all" and field == "databases":  # the component config's spelling
        raise ValueError("database.databases is a list of names; for every database of the "
                         "server set allDatabases: true")
    if not isinstance(value, list):
        return value  # not a list: pydantic says so
    problems: list[str] = []
    try:
        dbnames.database_names(value, f"database.{field}")
    except ValueError as exc:
        problems.append(str(exc))
    if templates:
        named = sorted(dbnames.TEMPLATE_DATABASES.intersection(
            n for n in value if isinstance(n, str)))
        if named:
            problems.append(f"{TEMPLATES_MESSAGE} (remove {', '.join(named)})")
    if len(value) > most:
        problems.append(f"{len(value)} names; at most {most}")
    if problems:
        raise ValueError(f"database.{field}: " + "; ".join(problems))
    return value


class DatabaseSpec(base.ApiModel):
    """Where the database is and how to log in."""

    model_config = {
        **base.ApiModel.model_config,
        "json_schema_extra": {"x-kubernetes-validations": [
            {"rule": "!self.allDatabases || !has(self.databases) || size(self.databases) == 0",
             "message": BOTH_MESSAGE},
            {"rule": "self.allDatabases || !has(self.excludeDatabases) "
                     "|| size(self.excludeDatabases) == 0",
             "message": EXCLUDE_MESSAGE},
            {"rule": "!has(self.databases) || !(self.dbname in self.databases)",
             "message": f"database.databases {HOME_MESSAGE}"},
            {"rule": "!has(self.excludeDatabases) || !(self.dbname in self.excludeDatabases)",
             "message": "database.excludeDatabases names the home database (database.dbname), "
                        "which is always watched"},
        ]},
    }

    host: str = Field(min_length=1, max_length=253, description="Host name or address.")
    port: int = Field(5432, ge=1, le=65535, description="TCP port.")
    dbname: str = Field(min_length=1, max_length=63, description="Database to watch.")
    ssl_mode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = (
        Field("prefer", description="libpq sslmode."))
    credentials_secret: SecretKeyRef = Field(description="Login used by every component unless "
                                             "a per-component Secret is given.")
    collector_credentials_secret: SecretKeyRef | None = Field(
        None, description="Optional read-only login for the collector (needs only pg_monitor).")
    executor_credentials_secret: SecretKeyRef | None = Field(
        None, description="Optional login for the executor (pg_monitor, pg_signal_backend, "
        "ownership of the tables it maintains).")
    databases: list[base.Identifier] = Field(
        default_factory=list, max_length=MAX_OTHER_DATABASES, exclude_if=lambda v: v == [],
        description="Other databases of the same server to watch and fix besides dbname (the "
        "home database), with the same logins: at most 31, never template0 or template1, "
        "not dbname itself. Each costs the collector and the executor a connection. Status: "
        "status.databases (each one's reachability) and status.databasesReachable.",
        json_schema_extra={"x-kubernetes-validations": _name_rules("databases",
                                                                   templates=True)})
    all_databases: StrictBool = Field(
        False, exclude_if=lambda v: v is False,
        description="Watch and fix every database of the server that accepts connections "
        "(found again every minute) but excludeDatabases; template0 and template1 never; at "
        "most 32 with the home one (the newest beyond are left out, and counted).")
    exclude_databases: list[base.Identifier] = Field(
        default_factory=list, max_length=MAX_EXCLUDED_DATABASES, exclude_if=lambda v: v == [],
        description="With allDatabases: true, databases not watched.",
        json_schema_extra={"x-kubernetes-validations": _name_rules("excludeDatabases",
                                                                   templates=False)})

    # A null is what the API server prunes from a field that is not nullable: judged as absent
    # here too, so `run` and the API server accept the same manifests.
    @field_validator("databases", mode="before")
    @classmethod
    def _databases(cls, value: Any) -> Any:
        if value is None:
            return []
        return _check_names(value, "databases", most=MAX_OTHER_DATABASES, templates=True)

    @field_validator("all_databases", mode="before")
    @classmethod
    def _all_databases(cls, value: Any) -> Any:
        return False if value is None else value

    @field_validator("exclude_databases", mode="before")
    @classmethod
    def _excluded(cls, value: Any) -> Any:
        if value is None:
            return []
        return _check_names(value, "excludeDatabases", most=MAX_EXCLUDED_DATABASES,
                            templates=False)

    @model_validator(mode="after")
    def _lists(self) -> DatabaseSpec:
        if self.all_databases and self.databases:
            raise ValueError(BOTH_MESSAGE)
        if self.exclude_databases and not self.all_databases:
            raise ValueError(EXCLUDE_MESSAGE)
        if self.dbname in self.databases:
            raise ValueError(f"database.databases {HOME_MESSAGE} ({self.dbname!r})")
        if self.dbname in self.exclude_databases:
            raise ValueError("database.excludeDatabases names the home database "
                             f"(database.dbname), which is always watched ({self.dbname!r})")
        return self


class Policy(base.ApiModel):
    """Per-risk-class override of ``spec.mode``. Unset classes follow ``spec.mode``, except
    ``destructive``, which is never automatic unless set here explicitly."""

    maintenance: Mode | None = Field(None, description="VACUUM and ANALYZE.")
    session: Mode | None = Field(None, description="Cancelling queries, terminating sessions.")
    ddl: Mode | None = Field(None, description="CREATE INDEX CONCURRENTLY, dropping INVALID "
                             "indexes, REINDEX CONCURRENTLY.")
    destructive: Mode | None = Field(None, description="Dropping unused or duplicate indexes. "
                                     "Unset means approval (observe in observe mode).")


class Protect(base.ApiModel):
    """Sessions that are never touched, whatever a detector says."""

    applications: list[base.ShortText] = Field(
        default_factory=list, max_length=64, description="application_name values.")
    users: list[base.ShortText] = Field(
        default_factory=list, max_length=64, description="Login roles.")
    roles: list[base.ShortText] = Field(default_factory=list, max_length=64,
                             description="Sessions of members of these roles.")
    superusers: bool = Field(
        True, description="Never touch sessions of superusers (the default). With false the "
        "executor may signal them, but only when its own role is a superuser: PostgreSQL lets "
        "nobody else signal a superuser's session, and the Remediation says so.")


class StatementTimeouts(base.ApiModel):
    """Timeouts for the SQL of one risk class."""

    lock_timeout: durations.Duration = Field(description="lock_timeout for the action.")
    statement_timeout: durations.Duration = Field(description="statement_timeout for the action.")


def _timeouts(lock: str, statement: str) -> StatementTimeouts:
    return StatementTimeouts(lock_timeout=lock, statement_timeout=statement)


class Timeouts(base.ApiModel):
    """Timeouts per risk class."""

    maintenance: StatementTimeouts = Field(default_factory=lambda: _timeouts("5s", "30m"))
    session: StatementTimeouts = Field(default_factory=lambda: _timeouts("1s", "10s"))
    ddl: StatementTimeouts = Field(default_factory=lambda: _timeouts("5s", "2h"))
    destructive: StatementTimeouts = Field(default_factory=lambda: _timeouts("5s", "10m"))


class Limits(base.ApiModel):
    """Rate and size limits that hold across executor replicas and restarts."""

    max_actions_per_hour: int = Field(
        10, ge=0, le=10_000, description="Actions started in any rolling hour, counted from the "
        "Remediation records (so it holds across replicas and restarts). ANALYZEs that restore "
        "statistics lost by a crash or a reset count in a budget of their own of the same "
        "size, so they never hold other actions back.")
    timeouts: Timeouts = Field(default_factory=Timeouts)
    max_indexes_per_table: int = Field(
        8, ge=0, le=64, description="Never build an index on a table that already has this many.")
    max_index_build_size: durations.Quantity = Field(
        "10Gi", description="Largest estimated index to build (PostgreSQL has no portable SQL "
        "view of free disk: size this to your headroom).")


Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
EVERY_DAY: list[Weekday] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


class MaintenanceWindow(base.ApiModel):
    """When ddl-class actions may start (others are not held back)."""

    model_config = {
        **base.ApiModel.model_config,
        "json_schema_extra": {"x-kubernetes-validations": [{
            "rule": "duration(self.duration) <= duration('24h')",
            "message": "maintenanceWindow.duration must be at most 24h"}]},
    }

    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", max_length=5,
                       description="Start time HH:MM in the given time zone.")
    duration: durations.Duration = Field(description="Length of the window.")
    @field_validator("duration")
    @classmethod
    def _at_most_a_day(cls, value: str) -> str:
        if durations.parse_duration(value) > 86400:
            raise ValueError("maintenanceWindow.duration must be at most 24h")
        return value

    days: list[Weekday] = Field(default_factory=lambda: list(EVERY_DAY), max_length=7)
    time_zone: str = Field("UTC", max_length=64, description="IANA time zone name.")


class Verification(base.ApiModel):
    """Keep-or-revert of reversible actions, from pg_stat_statements deltas."""

    window: durations.Duration = Field("10m", description="Length of the after window of the "
                                       "served statements' mean time per call (the before "
                                       "figure is what the analyser already measured).")
    min_calls: int = Field(20, ge=1, description="Calls needed in each window to decide.")
    min_improvement: float = Field(0.1, ge=0, le=1, description="Keep when mean time per call "
                                   "dropped by at least this fraction; otherwise revert.")
    max_wait: durations.Duration = Field("2h", description="Give up waiting for enough calls "
                                         "after this long and keep the change, recorded as "
                                         "unverified.")


class Approval(base.ApiModel):
    """Approval mode settings."""

    expiry: durations.Duration = Field("24h", description="A Remediation not approved within "
                                       "this long ends Expired and never runs.")


class EventBus(base.ApiModel):
    """The NATS the components talk over."""

    model_config = {
        **base.ApiModel.model_config,
        "json_schema_extra": {"x-kubernetes-validations": [{
            "rule": "!has(self.credentialsSecret) || has(self.url)",
            "message": "eventBus.credentialsSecret is only for an external eventBus.url"}]},
    }

    url: str | None = Field(None, max_length=512, description="External NATS URL. Unset: the "
                            "operator runs a managed NATS for the monitor.")
    jetstream: bool = Field(False, description="Durable delivery (a stream per monitor).")
    credentials_secret: SecretKeyRef | None = Field(
        None, description="Login for an external NATS (user and password keys).")


    @model_validator(mode="after")
    def _credentials_need_url(self) -> EventBus:
        if self.credentials_secret is not None and not self.url:
            raise ValueError("eventBus.credentialsSecret is only for an external eventBus.url")
        return self


class ExecutorSpec(base.ApiModel):
    """The executor Deployment."""

    replicas: int = Field(1, ge=0, le=10, description="Executors share the work "
                          "(queue group or shared durable consumer).")


class QueryText(enum.StrEnum):
    """What detections and Remediations carry of a statement's text."""

    NORMALIZED = "normalized"
    FULL = "full"
    NONE = "none"


class Privacy(base.ApiModel):
    """What of the watched database's data may leave the analyser."""

    query_text: QueryText = Field(
        QueryText.NORMALIZED, description="Statement text in evidence (NATS detections, "
        "Remediations, Events): normalized replaces every constant with $n and drops "
        "comments, as pg_stat_statements does; full keeps the text as read, literals "
        "included (its first 200 characters); none leaves it out.")


class NotificationFormat(enum.StrEnum):
    """The body a notification target receives (docs/notifications.md)."""

    JSON = "json"
    SLACK = "slack"
    TEAMS = "teams"


#: A key of a Secret's data (what ``kubectl create secret --from-literal`` accepts).
DATA_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
MAX_NOTIFICATION_TARGETS = 8
#: States sent by default for every risk class (Succeeded: see ``succeededFor``).
DEFAULT_NOTIFY_STATES: list[RemediationState] = [
    RemediationState.PENDING_APPROVAL, RemediationState.FAILED, RemediationState.ROLLED_BACK]
#: Risk classes whose Succeeded is sent by default: the changes a person wants to hear of.
DEFAULT_SUCCEEDED_FOR: list[RiskClass] = [RiskClass.DDL, RiskClass.DESTRUCTIVE]


class WebhookSecretRef(base.ApiModel):
    """A Secret in the monitor's namespace holding a webhook's URL (and signing key): the URL
    of an incoming webhook is itself a credential, so it never appears in the monitor."""

    name: str = Field(min_length=1, max_length=253, description="Secret name.")
    url_key: str = Field("url", min_length=1, max_length=253, pattern=DATA_KEY_PATTERN,
                         description="Key of the webhook URL (http:// or https://).")
    hmac_key: str | None = Field(
        None, min_length=1, max_length=253, pattern=DATA_KEY_PATTERN,
        description="Key of an HMAC-SHA256 signing key (the name of the key, never the key "
        "itself); unset: requests are not signed.")


class NotificationTarget(base.ApiModel):
    """One webhook told about Remediations (docs/notifications.md)."""

    model_config = {
        **base.ApiModel.model_config,
        "json_schema_extra": {"x-kubernetes-validations": [{
            "rule": "!has(self.states) || self.states.all(s, s != 'Succeeded') "
                    "|| !has(self.succeededFor) || size(self.succeededFor) == 0",
            "message": "notifications: list Succeeded in states (every risk class) or use "
                       "succeededFor (some risk classes), not both"}]},
    }

    name: str = Field(min_length=1, max_length=40, pattern=NAME_PATTERN,
                      description="Names the target in the condition, the metric and the "
                      "delivery record (a DNS-1035 label).")
    secret_ref: WebhookSecretRef = Field(description="Where the URL (and signing key) are.")
    format: NotificationFormat = Field(
        NotificationFormat.JSON, description="json: the generic JSON body; slack: a Slack "
        "incoming webhook; teams: a Microsoft Teams incoming webhook (a MessageCard).")
    states: list[RemediationState] = Field(
        default_factory=lambda: list(DEFAULT_NOTIFY_STATES), max_length=12,
        description="States sent for every risk class (default PendingApproval, Failed, "
        "RolledBack).", json_schema_extra={"x-kubernetes-list-type": "set"})
    succeeded_for: list[RiskClass] = Field(
        default_factory=lambda: list(DEFAULT_SUCCEEDED_FOR), max_length=5,
        description="Risk classes whose Succeeded is also sent (default ddl and destructive: "
        "the changes of the schema); [] for none.",
        json_schema_extra={"x-kubernetes-list-type": "set"})
    advice: bool = Field(False, description="Also send advice (Recommended Remediations, "
                         "which never run anything).")

    @model_validator(mode="after")
    def _succeeded_once(self) -> NotificationTarget:
        if len(set(self.states)) != len(self.states):
            raise ValueError(f"notifications[{self.name}].states lists a state twice")
        if len(set(self.succeeded_for)) != len(self.succeeded_for):
            raise ValueError(f"notifications[{self.name}].succeededFor lists a class twice")
        if RemediationState.SUCCEEDED in self.states and self.succeeded_for \
                and "succeeded_for" in self.model_fields_set:
            raise ValueError("notifications: list Succeeded in states (every risk class) or "
                             "use succeededFor (some risk classes), not both")
        return self


def _unique_target_names(targets: list[NotificationTarget]) -> list[NotificationTarget]:
    names = [t.name for t in targets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError("notifications: target names must be unique; repeated: "
                         + ", ".join(twice))
    return targets


class DatabaseMonitorSpec(base.ApiModel):
    """``spec`` of a DatabaseMonitor."""

    database: DatabaseSpec
    interval: durations.Duration = Field(
        "10s", description="How often the collector takes a snapshot (minimum 1s).",
        json_schema_extra={"x-kubernetes-validations": [{
            "rule": "duration(self) >= duration('1s')",
            "message": "interval must be at least 1s"}]},
    )
    mode: Mode = Field(Mode.AUTO, description="observe: record only; approval: wait for a "
                       "person; auto: act within policy and limits.")
    policy: Policy = Field(default_factory=Policy)
    thresholds: thresholds_mod.Thresholds = Field(default_factory=thresholds_mod.Thresholds)
    protect: Protect = Field(default_factory=Protect)
    limits: Limits = Field(default_factory=Limits)
    maintenance_window: MaintenanceWindow | None = None
    verification: Verification = Field(default_factory=Verification)
    approval: Approval = Field(default_factory=Approval)
    event_bus: EventBus = Field(default_factory=EventBus)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    privacy: Privacy = Field(default_factory=Privacy)
    suspend: bool = Field(False, description="Scale the data plane to zero; nothing is touched.")
    notifications: list[NotificationTarget] = Field(
        default_factory=list, max_length=MAX_NOTIFICATION_TARGETS,
        description="Webhooks told when a Remediation reaches chosen states "
        "(docs/notifications.md).",
        json_schema_extra={"x-kubernetes-validations": [{
            "rule": "self.all(t, self.exists_one(u, u.name == t.name))",
            "message": "notifications: target names must be unique"}]})

    @field_validator("notifications")
    @classmethod
    def _notification_names(cls, value: list[NotificationTarget]) -> list[NotificationTarget]:
        return _unique_target_names(value)

    @field_validator("interval")
    @classmethod
    def _interval_minimum(cls, value: str) -> str:
        if durations.parse_duration(value) < 1:
            raise ValueError("interval must be at least 1s")
        return value

    def mode_for(self, risk: RiskClass) -> Mode:
        """The effective mode of a risk class: destructive is never auto by default
        (docs/design.md#databasemonitor)."""
        if risk is RiskClass.ADVICE:
            return Mode.OBSERVE
        override: Mode | None = getattr(self.policy, risk.value)
        if override is not None:
            return override
        if risk is RiskClass.DESTRUCTIVE and self.mode is Mode.AUTO:
            return Mode.APPROVAL
        return self.mode


#: ``metav1.Time`` on the wire: UTC, at the second, ``Z`` (see ``startupmonkey.kubetime``).
KubeTime = Annotated[datetime.datetime,
                     PlainSerializer(kubetime.format, return_type=str, when_used="json")]


class Condition(base.ApiModel):
    """A standard Kubernetes condition (metav1.Condition shape)."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: KubeTime
    observed_generation: int | None = Field(None, ge=0)


OLDEST_MAJOR = 13
NEWEST_MAJOR = 18
"""The PostgreSQL majors StartupMonkey supports and tests (docs/postgres-support.md)."""


def server_major(version: str | None) -> int | None:
    """The major of a ``server_version`` text (``15.4 (Debian 15.4-1)`` -> 15, betas and
    development builds too: ``17beta1`` -> 17, ``19devel`` -> 19), or None."""
    digits = re.match(r"\d+", version or "")
    return int(digits.group()) if digits else None


#: What libpq's connection errors mean, in a few plain words: (a fragment of the error in
#: lower case, the words); the first fragment found wins, so the narrower ones come first.
PROBLEM_WORDS: tuple[tuple[str, str], ...] = (
    ("password authentication failed", "wrong password"),
    ("no password supplied", "no password given"),
    ("no pg_hba.conf entry", "refused by the server's pg_hba.conf"),
    ("not permitted to log in", "the role may not log in"),
    ("permission denied for database", "no CONNECT privilege on the database"),
    ("too many clients", "too many connections"),
    ("connection slots are reserved", "too many connections"),
    ("the database system is starting up", "the server is starting up"),
    ("the database system is not yet accepting connections", "the server is starting up"),
    ("the database system is shutting down", "the server is shutting down"),
    ("the database system is in recovery mode", "the server is recovering from a crash"),
    ("terminating connection due to administrator command", "the server was shut down"),
    ("server closed the connection unexpectedly", "the server closed the connection"),
    ("connection refused", "connection refused"),
    ("failed: no such file or directory", "no server at that socket"),
    ("name or service not known", "host name not found"),
    ("temporary failure in name resolution", "host name not found"),
    ("could not translate host name", "host name not found"),
    ("failed to resolve host", "host name not found"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network unreachable"),
    ("timeout expired", "connection timed out"),
    ("timed out", "connection timed out"),
    ("server does not support ssl", "the server does not support SSL"),
)
_MISSING = re.compile(r'\b(database|role) "[^"]*" does not exist')


class DatabaseStatus(base.ApiModel):
    """``status.database``: written by the executor from its own connection."""

    reachable: bool = False
    server_version: str | None = None
    in_recovery: bool | None = None
    extensions: list[base.ShortText] = Field(default_factory=list, max_length=64)
    privileges_missing: list[base.ShortText] = Field(default_factory=list, max_length=64)
    superuser_logins: list[base.ShortText] = Field(
        default_factory=list, max_length=64,
        description="Superuser roles with sessions in the watched database (other than the "
        "executor's own), seen at the last check: their sessions are never signalled while "
        "spec.protect.superusers is true, or while the executor is not a superuser itself.")
    executor_superuser: bool | None = Field(
        None, description="Whether the executor's own role is a superuser (only a superuser "
        "may signal a superuser's session).")
    last_error: str | None = Field(None, max_length=4096)
    checked_at: datetime.datetime | None = None

    def superuser_notice(self, protected: bool) -> str | None:
        """What superuser logins mean for remediations, None when there are none: the
        operator's SuperuserSessions condition and ``startupmonkey run`` say it."""
        if not self.superuser_logins:
            return None
        who = ", ".join(self.superuser_logins)
        if protected:
            then = ("spec.protect.superusers is true (the default), so their sessions are "
                    "never touched: a runaway query, idle transaction or lock chain of theirs "
                    "is Rejected; log the application in as an ordinary role, or set "
                    "spec.protect.superusers to false")
        elif self.executor_superuser:
            then = ("spec.protect.superusers is false and the executor is a superuser: their "
                    "sessions may be signalled")
        else:
            then = ("spec.protect.superusers is false, but the executor's role is not a "
                    "superuser, and PostgreSQL lets only a superuser signal a superuser's "
                    "session: remediations on them are Rejected")
        return f"sessions of the watched database log in as superuser(s) {who}; {then}"[:4096]

    def problem(self) -> str | None:
        """Why the database cannot be used, in a few plain words ("connection refused",
        "wrong password", "the database does not exist"), read from libpq's error; None when
        it is reachable or the error is not one of the known kinds. The short form a person
        recognises at a glance, in ``startupmonkey run``'s retry lines."""
        if self.reachable or not self.last_error:
            return None
        error = self.last_error.lower()
        missing = _MISSING.search(error)
        if missing is not None:
            return f"the {missing.group(1)} does not exist"
        return next((words for fragment, words in PROBLEM_WORDS if fragment in error), None)

    def state_line(self) -> str:
        """The database's state in one line, the same words everywhere it is shown (the
        DatabaseReachable and Ready conditions, ``startupmonkey run``'s live view and its plain
        lines): ``reachable: PostgreSQL 15.8, primary`` then, when so, the standby, the missing
        privileges and what is off on this server and why; or ``unreachable: <the problem in
        words> (<libpq's error>)``."""
        if not self.reachable:
            error = self.last_error or "no detail reported"
            words = self.problem()
            return f"unreachable: {words} ({error})" if words and words != error \
                else f"unreachable: {error}"
        parts = [f"reachable: PostgreSQL {self.server_version or '(version unknown)'}"]
        if self.in_recovery:
            parts[0] += ", standby (in recovery): no action runs on it"
        elif self.in_recovery is not None:
            parts[0] += ", primary"
        if self.privileges_missing:
            parts.append("missing privileges: " + ", ".join(self.privileges_missing))
        off = self.features_off()
        if off:
            parts.append("off on this server: " + "; ".join(off))
        return "; ".join(parts)

    def features_off(self) -> list[str]:
        """What is off on this server and why, from what the executor saw (version,
        extensions, privileges): the DatabaseReachable condition's message and
        ``startupmonkey run``/``validate --database`` say it (docs/postgres-support.md)."""
        off: list[str] = []
        major = server_major(self.server_version)
        if major is not None and major < OLDEST_MAJOR:
            off.append(f"everything may fail: PostgreSQL {major} is too old (supported: "
                       f"{OLDEST_MAJOR} to {NEWEST_MAJOR})")
        elif major is not None and major > NEWEST_MAJOR:
            off.append(f"nothing is known off, but PostgreSQL {major} is newer than the "
                       f"newest tested ({NEWEST_MAJOR})")
        # Judged only when reported (a report may carry the version alone).
        extensions = (set(self.extensions) if "extensions" in self.model_fields_set
                      else {"pg_stat_statements", "hypopg"})
        if "pg_stat_statements" not in extensions:
            off.append("missing_index, slow_statement and index keep-or-revert: "
                       "pg_stat_statements is not created in this database (an admin runs "
                       "CREATE EXTENSION pg_stat_statements, with pg_stat_statements in "
                       "shared_preload_libraries)")
        if "hypopg" not in extensions:
            off.append("create_index: no index is built without the HypoPG pre-check, and "
                       "hypopg is not created in this database (an admin runs CREATE "
                       "EXTENSION hypopg)")
        missing = set(self.privileges_missing)
        if "pg_monitor" in missing or "pg_read_all_stats" in missing:
            off.append("other roles' sessions and statements are hidden, so their detections "
                       "and session actions are off: the executor's role lacks "
                       + ("pg_monitor" if "pg_monitor" in missing else "pg_read_all_stats"))
        if "pg_signal_backend" in missing:
            off.append("cancel_query and terminate_session: the executor's role lacks "
                       "pg_signal_backend")
        return off


class DatabaseReach(base.ApiModel):
    """One entry of ``status.databases``: a database of the server besides the home one that
    the executor acts in (``executor.databases``), as a connection of its own found it."""

    name: base.Identifier
    reachable: bool = False
    last_error: str | None = Field(None, max_length=1024)
    checked_at: datetime.datetime | None = None


def databases_reachable(home_reachable: bool, others: Sequence[DatabaseReach]) -> str:
    """``status.databasesReachable``: ``"N/M"``, the databases that answered of every one the
    executor acts in, the home database included."""
    return f"{int(home_reachable) + sum(1 for r in others if r.reachable)}/{1 + len(others)}"


class RemediationCounts(base.ApiModel):
    """``status.remediations``: recomputed from the Remediation objects, never incremented."""

    by_state: dict[RemediationState, int] = Field(default_factory=dict)
    active: int = Field(0, description="Remediations not in a terminal state.")
    succeeded: int = 0
    pending_approval: int = 0
    in_flight: int = Field(0, description="Running or Verifying: what deletion waits for.")
    last_action: str | None = Field(None, description="e.g. 'create_index public.orders "
                                    "(Succeeded)'.")
    last_action_time: datetime.datetime | None = None
    last_action_id: ActionId | None = None


class DatabaseMonitorStatus(base.ApiModel):
    """``status`` of a DatabaseMonitor; see the module docstring for who owns which key."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    phase: str | None = None
    database: DatabaseStatus | None = None
    databases: list[DatabaseReach] | None = Field(
        None, max_length=64,
        description="The databases besides the home one (status.database) that the executor "
        "acts in, each reachable or not from the executor's login, at its last check; absent "
        "when it acts in its home database only.")
    databases_reachable: str | None = Field(
        None, max_length=16, pattern=r"^[0-9]+/[0-9]+$",
        description="'N/M': of the M databases the executor acts in (the home one included), "
        "N answered at the last check; written with databases, absent when it acts in its "
        "home database only.")
    remediations: RemediationCounts | None = None

    def patch(self) -> dict[str, Any]:
        """A merge patch of ``status``: the wire form of the keys given to this object only,
        so each writer sends its own keys and leaves the others' as stored."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True,
                               include=set(self.model_fields_set))

    @classmethod
    def parse(cls, status: Any) -> DatabaseMonitorStatus:
        """``status`` as read from the object, key by key: a key that is missing or not in its
        model's shape reads as not reported (the default), never as an error, so one writer's
        bad key cannot hide the others'. Only the keys that parsed count as set."""
        raw = dict(status) if isinstance(status, Mapping) else {}
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if key in raw:
                try:
                    values[name] = getattr(cls.model_validate({key: raw[key]}), name)
                except ValidationError:
                    continue  # not in shape: reads as not reported (see above)
        return cls(**values)


class ObjectMeta(base.ApiModel):
    """The metadata fields we read; everything else is passed through untouched."""

    model_config = {**base.ApiModel.model_config, "extra": "ignore"}

    name: str
    namespace: str = "default"
    generation: int | None = None
    uid: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return check_namespace(value)


class DatabaseMonitor(base.ApiModel):
    """A whole DatabaseMonitor manifest (what ``startupmonkey run -f`` reads)."""

    api_version: Literal["startupmonkey.dev/v1alpha1"] = "startupmonkey.dev/v1alpha1"
    kind: Literal["DatabaseMonitor"] = "DatabaseMonitor"
    metadata: ObjectMeta
    spec: DatabaseMonitorSpec
    status: DatabaseMonitorStatus | None = None
