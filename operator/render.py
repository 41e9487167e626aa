"""The rendered component config of a monitor, and the hashes that decide when pods roll.

The ConfigMap holds one :class:`startupmonkey.settings.ComponentConfig` for the whole data
plane: the monitor's identity, its whole spec (hot-reloaded by every component: thresholds,
mode, policy, protect, limits, interval...) and one block per component with addresses and the
*paths* of mounted Secrets. Changing it never restarts a pod: the databases a monitor watches
besides its home one (``spec.database.databases``, or ``allDatabases`` less
``excludeDatabases``, rendered into the collector, analyser and executor blocks by
:func:`startupmonkey.settings.watched_databases`) are hot-reloaded too.

Only inputs that need a new process are hashed onto each Deployment's pod template
(:func:`restart_hash`): the image, the database address, the credentials Secret references
and the event bus (URL, JetStream, credentials, and the resourceVersion of the generated NATS
Secret, so new credentials or server config roll NATS and its clients). Each component hashes
only what it consumes, so a database move does not restart the analyser. Rotating a password
*inside* the same Secret rolls nothing: the mounted file changes and the components read it
at every connection.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from startupmonkey import settings
from startupmonkey.models import monitor as monitor_models
from startupmonkey.operator import monitor

CONFIG_DIR = PurePosixPath("/etc/startupmonkey")
CONFIG_KEY = "config.yaml"
CONFIG_PATH = CONFIG_DIR / CONFIG_KEY
DATABASE_SECRET_DIR = PurePosixPath("/var/run/secrets/startupmonkey/database")
NATS_SECRET_DIR = PurePosixPath("/var/run/secrets/startupmonkey/nats")
INGEST_SECRET_DIR = PurePosixPath("/var/run/secrets/startupmonkey/ingest")
INGEST_TOKEN_KEY = "token"  # noqa: S105 - a Secret key and file name
INGEST_TOKEN_FILE = Path(INGEST_SECRET_DIR / INGEST_TOKEN_KEY)
USER_FILE = "username"
PASSWORD_FILE = "password"  # noqa: S105 - a file name
ANALYSER_PORT = 50051
#: Kept in the rendered config only: in a cluster the executor serves no API (issue 24.2).
EXECUTOR_PORT = 50052
OBSERVABILITY_PORT = 8080
NATS_PORT = 4222
NATS_MONITOR_PORT = 8222


def database_secret(spec: monitor_models.DatabaseMonitorSpec,
                    component: monitor.Component) -> monitor_models.SecretKeyRef:
    """The login a component uses: its own Secret when given, else the shared one."""
    db = spec.database
    own = {monitor.Component.COLLECTOR: db.collector_credentials_secret,
           monitor.Component.EXECUTOR: db.executor_credentials_secret}.get(component)
    return own or db.credentials_secret


def nats_url(view: monitor.View) -> str:
    """The external URL, or the managed server's Service."""
    assert view.spec is not None
    if view.spec.event_bus.url:
        return view.spec.event_bus.url
    return f"nats://{view.child_name(monitor.Component.NATS)}.{view.namespace}.svc:{NATS_PORT}"


def nats_has_credentials(view: monitor.View) -> bool:
    """Managed NATS always requires a login; an external one when a Secret is given."""
    assert view.spec is not None
    return view.managed_nats or view.spec.event_bus.credentials_secret is not None


def _login(view: monitor.View) -> settings.DatabaseLogin:
    assert view.spec is not None
    db = view.spec.database
    return settings.DatabaseLogin(
        host=db.host, port=db.port, dbname=db.dbname, ssl_mode=db.ssl_mode,
        user_file=str(DATABASE_SECRET_DIR / USER_FILE),
        password_file=str(DATABASE_SECRET_DIR / PASSWORD_FILE))


def _nats(view: monitor.View) -> settings.NatsSettings:
    assert view.spec is not None
    files: dict[str, Any] = {}
    if nats_has_credentials(view):
        files = {"user_file": str(NATS_SECRET_DIR / USER_FILE),
                 "password_file": str(NATS_SECRET_DIR / PASSWORD_FILE)}
    return settings.NatsSettings(url=nats_url(view), jetstream=view.spec.event_bus.jetstream,
                                 **files)


def component_config(view: monitor.View,
                     approver_verified: bool = False) -> settings.ComponentConfig:
    """The whole config file of one monitor's data plane. ``approver_verified``: the API server
    vouches for the approved-by annotation (the chart's policy)."""
    assert view.spec is not None
    analyser = f"{view.child_name(monitor.Component.ANALYSER)}.{view.namespace}.svc"
    watched = settings.watched_databases(view.spec.database)
    return settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace=view.namespace, name=view.name),
        spec=view.spec,
        collector=settings.CollectorSettings(
            database=_login(view), analyser_address=f"{analyser}:{ANALYSER_PORT}",
            ingest_token_file=INGEST_TOKEN_FILE, **watched),
        analyser=settings.AnalyserSettings(listen_address=f"0.0.0.0:{ANALYSER_PORT}",
                                           nats=_nats(view),
                                           ingest_token_file=INGEST_TOKEN_FILE, **watched),
        executor=settings.ExecutorSettings(
            database=_login(view), nats=_nats(view), listen_address=f"0.0.0.0:{EXECUTOR_PORT}",
            reporter="kubernetes", approver_verified=approver_verified, **watched),
    )


def config_text(view: monitor.View, approver_verified: bool = False) -> str:
    """The YAML the ConfigMap carries."""
    return settings.dump(component_config(view, approver_verified))


def restart_inputs(view: monitor.View, component: monitor.Component, image: str,
                   nats_secret_version: str | None) -> dict[str, Any]:
    """Everything whose change needs a new process of ``component`` (and nothing else)."""
    assert view.spec is not None
    spec = view.spec
    db = spec.database
    bus = {"url": nats_url(view), "jetstream": spec.event_bus.jetstream,
           "credentials": spec.event_bus.credentials_secret.dump()
           if spec.event_bus.credentials_secret else None,
           "generatedSecret": nats_secret_version if view.managed_nats else None}
    database = {"host": db.host, "port": db.port, "dbname": db.dbname, "sslMode": db.ssl_mode}
    inputs: dict[str, Any] = {"image": image}
    if component in (monitor.Component.COLLECTOR, monitor.Component.EXECUTOR):
        inputs["database"] = database
        inputs["credentials"] = database_secret(spec, component).dump()
    if component in (monitor.Component.ANALYSER, monitor.Component.EXECUTOR,
                     monitor.Component.NATS):
        inputs["eventBus"] = bus
    return inputs


def restart_hash(inputs: dict[str, Any]) -> str:
    """A short stable digest of :func:`restart_inputs`."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
