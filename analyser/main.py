"""``startupmonkey analyser --config FILE --observability-port N``: the analyser process.

Wires the pieces: the observability endpoint (``/metrics``, ``/healthz``, ``/readyz``; ready
when NATS is connected and the gRPC server is serving), the NATS publisher, the engine and the
ingest server, plus a :class:`~startupmonkey.settings.ConfigWatcher` that hot-reloads the
thresholds. JSON logs on stderr; SIGTERM/SIGINT stop it cleanly (health NOT_SERVING, open
streams get a grace period, NATS drained). :class:`Analyser` is the same thing as an object,
so tests can run it in-process on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from startupmonkey import observability, settings
from startupmonkey.analyser import engine, metrics, publisher, server
from startupmonkey.models import durations, messages

log = logging.getLogger(__name__)
COMPONENT = "analyser"
GRPC_DEPENDENCY = "grpc"


class Analyser:
    """One analyser: endpoint, publisher, engine and ingest server of one monitor."""

    def __init__(self, config: settings.ComponentConfig) -> None:
        self.config = config
        self.settings = config.analyser or settings.AnalyserSettings()
        self.obs = observability.Observability(COMPONENT)
        self.obs.health.expect(publisher.DEPENDENCY, GRPC_DEPENDENCY)
        self.meters = metrics.Metrics(self.obs.registry)
        self.engine = engine.Engine(config, self.meters)
        self.publisher = publisher.Publisher(self.settings.nats, config.monitor,
                                             self.obs.health, self.meters, self._event)
        self.server = server.IngestServer(server.IngestServicer(
            self.engine, self.publisher.publish, self.meters, config.monitor,
            token_file=self.settings.ingest_token_file, idle_timeout=_idle_timeout(config)))
        self.grpc_port = 0

    async def _event(self, event: messages.RemediationEvent) -> None:
        self.engine.remediation_event(event)

    async def reconfigure(self, config: settings.ComponentConfig) -> None:
        """Hot reload (ConfigWatcher callback)."""
        self.engine.configure(config)
        self.server.servicer.idle_timeout = _idle_timeout(config)

    async def start(self, observability_port: int = 0, observability_host: str = "0.0.0.0"  # noqa: S104
                    ) -> None:
        """Serve the endpoint, connect to NATS in the background, start the gRPC server."""
        await self.obs.start(observability_port, observability_host)
        self.publisher.start()
        address = self.settings.listen_address
        self.grpc_port = await self.server.start(address)
        self.obs.health.set(GRPC_DEPENDENCY, True, f"serving on {address}")
        log.info("analyser serving", extra={"listen_address": address,
                                            "grpc_port": self.grpc_port,
                                            "observability_port": self.obs.port})

    async def stop(self) -> None:
        """Stop in the reverse order; safe to call after a partial start."""
        self.obs.health.set(GRPC_DEPENDENCY, False, "stopping")
        await self.server.stop()
        await self.publisher.close()
        await self.obs.stop()
        log.info("analyser stopped")


async def serve(config: settings.ComponentConfig, path: Path, observability_port: int,
                stop: asyncio.Event) -> None:
    """Run until ``stop`` is set, re-reading ``path`` when it changes."""
    analyser = Analyser(config)
    try:
        await analyser.start(observability_port)
        await settings.ConfigWatcher(path, analyser.reconfigure).run(stop)
    finally:
        await analyser.stop()


def main(args: argparse.Namespace) -> int:
    """Entry point of ``startupmonkey analyser``."""
    path: Path = args.config or settings.DEFAULT_PATH
    try:
        config = settings.load(path)
    except ValueError as exc:
        observability.setup_logging(COMPONENT, level=args.log_level)
        log.error("cannot start: %s", exc)
        return 2
    observability.setup_logging(COMPONENT, config.monitor.namespace, config.monitor.name,
                                args.log_level)
    try:
        asyncio.run(observability.run_until_signalled(
            lambda stop: serve(config, path, args.observability_port, stop)))
    except (OSError, RuntimeError) as exc:
        log.error("analyser failed: %s", exc)
        return 1
    return 0


def _idle_timeout(config: settings.ComponentConfig) -> float:
    """How long a collector stream may stay silent: five intervals, at least a minute."""
    return max(server.MIN_IDLE_TIMEOUT, 5 * durations.parse_duration(config.spec.interval))
