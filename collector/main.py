"""``startupmonkey collector --config FILE --observability-port N``.

Reads the rendered component config (:func:`startupmonkey.settings.load`; it must have a
``collector`` block), logs JSON lines tagged with the monitor's namespace and name, serves
``/metrics``, ``/healthz`` and ``/readyz``, and runs :class:`service.Collector` until SIGTERM
or SIGINT, then closes the stream and the database connection and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from startupmonkey import observability, settings
from startupmonkey.collector import service

log = logging.getLogger(__name__)

CONFIG_ERROR = 2


def _load(path: Path | None) -> settings.ComponentConfig | str:
    if path is None:
        return "--config is required (the rendered component config file)"
    try:
        config = settings.load(path)
    except ValueError as exc:
        return str(exc)
    if config.collector is None:
        return f"{path}: no collector block (collector.database, collector.analyserAddress)"
    return config


async def _serve(config: settings.ComponentConfig, config_path: Path, port: int) -> int:
    obs = observability.Observability("collector")
    try:
        collector = service.Collector(config, obs)
    except (OSError, ValueError) as exc:
        log.error("cannot start the collector: %s", exc)
        return CONFIG_ERROR
    await obs.start(port)
    try:
        await observability.run_until_signalled(
            lambda stop: collector.run(stop, config_path=config_path))
    finally:
        await obs.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    """Entry point of the ``collector`` subcommand."""
    loaded = _load(args.config)
    if isinstance(loaded, str):
        print(f"startupmonkey collector: {loaded}", file=sys.stderr)
        return CONFIG_ERROR
    observability.setup_logging("collector", loaded.monitor.namespace, loaded.monitor.name,
                                args.log_level)
    return asyncio.run(_serve(loaded, args.config, args.observability_port))
