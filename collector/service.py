"""The collector process: a round every ``spec.interval``, streamed to the analyser.

:class:`Collector` wires the parts together: :class:`source.DatabaseSource` fills a snapshot
each round, the round goes into the bounded :class:`state.SnapshotBuffer`, and
:class:`stream.StreamClient` sends the buffer over ``MetricsIngest.Stream``. The collection
loop never waits for the analyser and the stream never waits for the database, so an
unreachable analyser costs buffer space (oldest dropped and counted), never a missed round.

Rounds start on a fixed grid of ``interval`` seconds; a round that overruns skips the ticks it
missed instead of running back to back. ``spec.interval``, ``collector.queryTimeout``,
``collector.topStatements`` and ``collector.bufferSnapshots`` are hot-reloaded from the
config file (:class:`startupmonkey.settings.ConfigWatcher`); a new database login or analyser
address makes the collector reconnect with it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import secrets
import socket
import time
from importlib import metadata
from pathlib import Path

from startupmonkey import aio, observability, settings
from startupmonkey.collector import metrics as metrics_mod
from startupmonkey.collector import source, state, stream
from startupmonkey.models import durations
from startupmonkey.v1 import snapshot_pb2 as pb

log = logging.getLogger(__name__)

MIN_ACK_TIMEOUT_SECONDS = 30.0
"""A stream with a snapshot unacknowledged for longer than max(this, 3 intervals) is
considered dead and reopened."""


def _version() -> str:
    try:
        return metadata.version("startupmonkey")
    except metadata.PackageNotFoundError:
        return "unknown"


def new_collector_id() -> str:
    """Unique per process start: host (pod) name plus a random suffix."""
    return f"{socket.gethostname()}-{secrets.token_hex(4)}"


class Collector:
    """One monitored database, one analyser stream, one round per interval."""

    def __init__(self, config: settings.ComponentConfig, obs: observability.Observability,
                 collector_id: str | None = None) -> None:
        if config.collector is None:
            raise ValueError("the config has no collector block")
        collector_settings = config.collector
        self.config = config
        self.collector_id = collector_id or new_collector_id()
        self.started_at = datetime.datetime.now(datetime.UTC)
        self.version = _version()
        self.metrics = metrics_mod.Metrics(obs.registry)
        self.health = obs.health
        self.health.expect("database", "analyser")
        self.texts = state.TextStore()
        self.catalogs = state.CatalogStore()
        self.buffer = state.SnapshotBuffer(collector_settings.buffer_snapshots, self._dropped)
        self.source = source.DatabaseSource(collector_settings.database.login(), self.metrics,
                                            self.health, self.texts, self.catalogs)
        self.stream = stream.StreamClient(collector_settings.analyser_address, self.buffer,
                                          self.texts, self.catalogs, self.metrics, self.health,
                                          token_file=collector_settings.ingest_token_file)
        self.sequence = 0
        self.interval = 10.0
        self.options = source.RoundOptions()
        self._reloaded = asyncio.Event()
        self._apply(config)

    def _apply(self, config: settings.ComponentConfig) -> None:
        assert config.collector is not None
        self.config = config
        self.interval = durations.parse_duration(config.spec.interval)
        timeout = durations.parse_duration(config.collector.query_timeout)
        self.options = source.RoundOptions(query_timeout_ms=max(1, round(timeout * 1000)),
                                           top_statements=config.collector.top_statements)
        self.texts.capacity = max(2000, 10 * config.collector.top_statements)
        self.buffer.resize(config.collector.buffer_snapshots)
        self.stream.ack_timeout = max(MIN_ACK_TIMEOUT_SECONDS, 3 * self.interval)

    async def reload(self, config: settings.ComponentConfig) -> None:
        """Take a new config into use (ConfigWatcher callback)."""
        if config.collector is None:
            log.error("config change ignored: it has no collector block")
            return
        if config.monitor != self.config.monitor:
            log.error("config change ignored: it names another monitor; restart to switch")
            return
        try:
            login = config.collector.database.login()
        except (OSError, ValueError) as exc:
            log.error("config change ignored: %s", exc)
            return
        self._apply(config)
        await self.source.set_login(login)
        self.stream.set_address(config.collector.analyser_address)
        self.stream.token_file = config.collector.ingest_token_file
        self._reloaded.set()
        log.info("config reloaded", extra={"interval_seconds": self.interval,
                                           "query_timeout_ms": self.options.query_timeout_ms})

    def _dropped(self, entry: state.Entry, reason: str) -> None:
        self.metrics.snapshots_dropped.labels(reason).inc()
        if self.buffer.dropped == 1 or self.buffer.dropped % 100 == 0:
            log.warning("snapshot buffer full: dropped the oldest snapshot", extra={
                "sequence": entry.sequence, "dropped_total": self.buffer.dropped,
                "buffer_snapshots": self.buffer.capacity, "buffer_bytes": self.buffer.bytes,
                "buffer_max_bytes": self.buffer.max_bytes})

    def _envelope(self) -> pb.Snapshot:
        self.sequence += 1
        snap = pb.Snapshot(collector_id=self.collector_id, sequence=self.sequence,
                           chunk_index=0, chunk_count=1)
        snap.monitor.namespace = self.config.monitor.namespace
        snap.monitor.name = self.config.monitor.name
        snap.collector.version = self.version
        snap.collector.started_at.FromDatetime(self.started_at)
        return snap

    async def collect_once(self) -> pb.Snapshot:
        """One round: collect, buffer (the stream sends it)."""
        started = time.monotonic()
        snap = self._envelope()
        top = await self.source.collect(snap, self.options)
        elapsed = time.monotonic() - started
        snap.collector.collection_duration.FromTimedelta(datetime.timedelta(seconds=elapsed))
        self.metrics.cycle_seconds.observe(elapsed)
        self.metrics.snapshots_collected.inc()
        self.buffer.add(state.Entry(snap, top))
        self.metrics.buffered.set(len(self.buffer))
        log.debug("round collected", extra={"sequence": snap.sequence, "seconds": elapsed})
        return snap

    async def _rounds(self, stop: asyncio.Event) -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            await self.collect_once()
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # overran: skip the missed ticks, keep the grid
                next_at += math.ceil((now - next_at) / self.interval) * self.interval
            self._reloaded.clear()
            waiters = [asyncio.create_task(stop.wait()),
                       asyncio.create_task(self._reloaded.wait())]
            try:
                await asyncio.wait(waiters, timeout=max(0.0, next_at - time.monotonic()),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                await aio.cancel_and_wait(*waiters)
            if self._reloaded.is_set():
                next_at = min(next_at, time.monotonic() + self.interval)

    async def run(self, stop: asyncio.Event, config_path: Path | None = None) -> None:
        """Rounds, stream and (with ``config_path``) hot reload, until ``stop`` is set."""
        log.info("collector starting", extra={
            "collector_id": self.collector_id, "database": self.source.login.describe(),
            "analyser": self.stream.address, "interval_seconds": self.interval})
        tasks = [asyncio.create_task(self._rounds(stop), name="collector-rounds"),
                 asyncio.create_task(self.stream.run(stop), name="collector-stream")]
        if config_path is not None:
            watcher = settings.ConfigWatcher(config_path, self.reload)
            tasks.append(asyncio.create_task(watcher.run(stop), name="collector-config"))
        stopped = asyncio.create_task(stop.wait())
        try:
            # Until stop, or a task dying of an unexpected error (re-raised below). A round in
            # progress is cancelled rather than awaited: its queries may take up to their
            # timeouts, and a SIGTERM should not.
            await asyncio.wait({stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                failure = None if not task.done() or task.cancelled() else task.exception()
                if failure is not None:
                    raise failure
        finally:
            stopped.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(stopped, *tasks, return_exceptions=True)
            await self.source.close()
            log.info("collector stopped", extra={"collector_id": self.collector_id,
                                                 "unacknowledged": len(self.buffer)})
