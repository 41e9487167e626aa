"""``startupmonkey operator``: read the settings, then run kopf until SIGTERM.

Settings come from the environment (``startupmonkey.operator.config``), watched namespaces
from ``--namespace`` (repeatable) or ``STARTUPMONKEY_WATCHING_NAMESPACES``, all namespaces when
neither is given. kopf serves its liveness endpoint on ``--liveness-port`` (``/healthz``),
runs standalone (no peering objects: run one replica) and handles SIGTERM/SIGINT itself. The
operator's ``/metrics`` and readiness ``/readyz`` are on ``STARTUPMONKEY_OBSERVABILITY_PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys

import kopf

from startupmonkey import observability
from startupmonkey.operator import config as config_mod
from startupmonkey.operator import handlers, kube, reconcile
from startupmonkey.operator import metrics as op_metrics
from startupmonkey.operator import notify as notify_mod

log = logging.getLogger(__name__)
NOT_CONFIGURED = 2
#: Seconds given to closing connections after kopf returns.
SHUTDOWN_GRACE = 0.5


#: Successes of the frequent event and timer handlers: one line per event is noise.
QUIET = re.compile(r"^(Handler|Timer|Webhook) "
                   r"'(child-[a-z]+|status-events|status|resync|approved-by|notify)' "
                   r"succeeded\.$")


class KopfExtras(logging.Filter):
    """kopf attaches its settings and object reference to every record: keep only the
    object's name, so a JSON log line stays one short line; drop routine successes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and QUIET.match(record.getMessage()):
            return False
        ref = record.__dict__.pop("k8s_ref", None)
        for noise in ("settings", "k8s_skip"):
            record.__dict__.pop(noise, None)
        if isinstance(ref, dict):
            record.object = f"{ref.get('kind')} {ref.get('namespace')}/{ref.get('name')}"
        return True


def settings_from(args: argparse.Namespace) -> config_mod.OperatorSettings:
    """Environment settings, with the CLI's namespaces taking precedence."""
    settings = config_mod.from_env(os.environ)
    namespaces = list(getattr(args, "namespace", None) or [])
    if namespaces:
        watching = settings.watching.model_copy(update={"namespaces": namespaces})
        settings = settings.model_copy(update={"watching": watching})
    return settings


async def run(settings: config_mod.OperatorSettings, liveness_port: int,
              stop: asyncio.Event | None = None) -> None:
    """Run the operator until it is signalled (or ``stop`` is set).

    Besides kopf's liveness endpoint, the operator serves ``/metrics``, ``/healthz`` and
    ``/readyz`` on its observability port (``operator/metrics.py`` says what readiness means).
    """
    obs = observability.Observability("operator")
    obs.health.expect(op_metrics.API, op_metrics.KOPF)
    numbers = op_metrics.OperatorMetrics(obs.registry, obs.health)
    await obs.start(settings.observability.port, settings.observability.address)
    api = kube.Api(kube.load_client(), listener=numbers.api_answered)
    notifier = notify_mod.Notifier(api, settings.notifications.retry(),
                                   counted=numbers.notified,
                                   forgotten=numbers.notification_failing.remove)
    ctx = reconcile.Context(settings=settings, api=api, metrics=numbers, notifier=notifier)

    async def status_of(key: tuple[str, str]) -> None:
        await reconcile.converge(ctx, *key, repair=False, handler="notify")

    notifier.changed = status_of
    namespaces = settings.watching.namespaces
    ready = asyncio.Event()
    watchers = [asyncio.create_task(op_metrics.keep_checking_api(api, namespaces),
                                    name="api-check"),
                asyncio.create_task(op_metrics.follow_kopf(obs.health, ready, namespaces),
                                    name="kopf-ready")]
    try:
        await kopf.operator(
            registry=handlers.registry(settings),
            settings=handlers.kopf_settings(settings),
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz",
            memo=kopf.Memo(context=ctx),
            ready_flag=ready,
            stop_flag=stop,
        )
    finally:
        obs.health.set(op_metrics.KOPF, False, "stopping")
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await obs.stop()
        api.close()
        # kopf's cancelled watch streams are TLS connections whose close completes on the
        # next loop iterations (aiohttp's "graceful shutdown" advice); closing the loop at once
        # would leave their transports to the garbage collector, with ResourceWarnings.
        await asyncio.sleep(SHUTDOWN_GRACE)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``startupmonkey operator``."""
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"startupmonkey operator: {exc}", file=sys.stderr, flush=True)
        return NOT_CONFIGURED
    observability.setup_logging("operator", level=getattr(args, "log_level", "info"))
    for handler in logging.getLogger().handlers:
        handler.addFilter(KopfExtras())
    scope = ", ".join(settings.watching.namespaces) or "all namespaces"
    log.info("starting the operator", extra={"watching": scope,
                                             "image": settings.images.data_plane,
                                             "approval_webhook": settings.webhook.enabled,
                                             "observability_port":
                                                 settings.observability.port})
    asyncio.run(run(settings, args.liveness_port))
    return 0
