"""The collector process: a round every ``spec.interval``, streamed to the analyser.

:class:`Collector` wires the parts together: one :class:`source.DatabaseSource` per watched
database fills one snapshot each round (the home database ``database.dbname`` first, then
``collector.databases``: a list, or ``all`` found on the server every DISCOVERY_SECONDS), each
snapshot goes into the bounded :class:`state.SnapshotBuffer`, and
:class:`stream.StreamClient` sends the buffer over ``MetricsIngest.Stream``. The collection
loop never waits for the analyser and the stream never waits for the database, so an
unreachable analyser costs buffer space (oldest dropped and counted), never a missed round; an
unreachable database costs its own snapshot (``connection_error``), never the others'.

Rounds start on a fixed grid of ``interval`` seconds; a round that overruns skips the ticks it
missed instead of running back to back. ``spec.interval``, ``collector.queryTimeout``,
``collector.topStatements`` and ``collector.bufferSnapshots`` are hot-reloaded from the
config file (:class:`startupmonkey.settings.ConfigWatcher`); a new database login or analyser
address makes the collector reconnect with it, and a changed list of databases opens and
closes their sources.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import math
import secrets
import socket
import time
from importlib import metadata
from pathlib import Path

from startupmonkey import aio, observability, settings, snapshots
from startupmonkey.collector import metrics as metrics_mod
from startupmonkey.collector import snapshot as snapshot_mod
from startupmonkey.collector import source, state, stream
from startupmonkey.models import durations
from startupmonkey.v1 import snapshot_pb2 as pb

log = logging.getLogger(__name__)

DISCOVERY_SECONDS = 60.0
"""With ``databases: all`` the server's databases are listed again at least this often (and
at the next round after a watched one could not be reached: dropped, perhaps)."""

MIN_ACK_TIMEOUT_SECONDS = 30.0
"""A stream with a snapshot unacknowledged for longer than max(this, 3 intervals) is
considered dead and reopened."""


def _version() -> str:
    try:
        return metadata.version("startupmonkey")
    except metadata.PackageNotFoundError:
        return "unknown"


def _same_database(home: pb.Snapshot, other: pb.Snapshot) -> bool:
    """Whether ``other`` was read from the very database of ``home`` (same server, same oid)."""
    a, b = home.database, other.database
    return (not home.collector.connection_error and not other.collector.connection_error
            and a.system_identifier == b.system_identifier and a.datid == b.datid)


def new_collector_id() -> str:
    """Unique per process start: host (pod) name plus a random suffix."""
    return f"{socket.gethostname()}-{secrets.token_hex(4)}"


class Collector:
    """Watched databases of one server (the home one first), one analyser stream, one round
    per interval."""

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
        self.catalogs = state.Catalogs()
        self.buffer = state.SnapshotBuffer(collector_settings.buffer_snapshots, self._dropped)
        self.login = collector_settings.database.login()
        """The home database's login; every watched database is read with it."""
        self.sources: dict[str, source.DatabaseSource] = {}
        """One source per watched database, by name, the home one first."""
        self._discovered: list[str] | None = None
        self._discovered_at: float | None = None
        self._rediscover = False
        self._left_out: tuple[str, ...] = ()
        #: Listed databases found to be templates (not watched), as last read.
        self._templates: frozenset[str] = frozenset()
        self._templates_logged: frozenset[str] = frozenset()
        self._aliases_logged: set[str] = set()
        self._round_lock = asyncio.Lock()
        self.stream = stream.StreamClient(collector_settings.analyser_address, self.buffer,
                                          self.texts, self.catalogs, self.metrics, self.health,
                                          token_file=collector_settings.ingest_token_file)
        self.sequence = 0
        self.interval = 10.0
        self.options = source.RoundOptions()
        self._reloaded = asyncio.Event()
        self._apply(config)
        self._arrange(self._wanted())

    @property
    def home(self) -> source.DatabaseSource:
        """The home database's source."""
        return next(iter(self.sources.values()))

    def _apply(self, config: settings.ComponentConfig) -> None:
        assert config.collector is not None
        self.config = config
        self.interval = durations.parse_duration(config.spec.interval)
        timeout = durations.parse_duration(config.collector.query_timeout)
        self.options = source.RoundOptions(query_timeout_ms=max(1, round(timeout * 1000)),
                                           top_statements=config.collector.top_statements)
        self.stream.ack_timeout = max(MIN_ACK_TIMEOUT_SECONDS, 3 * self.interval)
        self._size_stores()

    def _size_stores(self) -> None:
        """Buffer and text store for the databases watched: ``bufferSnapshots`` rounds, and
        room for every database's top statements."""
        assert self.config.collector is not None
        watched = max(1, len(self.sources))
        top = self.config.collector.top_statements
        self.texts.capacity = max(2000, 10 * top, 2 * top * watched)
        self.buffer.resize(self.config.collector.buffer_snapshots * watched)

    # -- which databases ----------------------------------------------------------------------

    def _wanted(self) -> list[str]:
        """The databases to watch now, the home one first (at most MAX_DATABASES)."""
        collector_settings = self.config.collector
        assert collector_settings is not None
        home = collector_settings.database.dbname
        if collector_settings.databases == "all":
            excluded = {home, *collector_settings.exclude_databases}
            others = [name for name in self._discovered or () if name not in excluded]
        else:
            others = collector_settings.other_databases()
        templates = tuple(name for name in others if name in self._templates)
        if templates and frozenset(templates) != self._templates_logged:
            log.warning("listed databases that are templates are not watched", extra={
                "templates": list(templates)})
        self._templates_logged = frozenset(templates)
        others = [name for name in others if name not in self._templates]
        most = settings.MAX_DATABASES - 1
        left_out = tuple(others[most:])
        if left_out != self._left_out and left_out:
            log.warning("more databases than one collector watches: some are left out", extra={
                "max_databases": settings.MAX_DATABASES, "left_out": list(left_out)})
        self._left_out = left_out
        self.metrics.databases.labels("left_out").set(len(left_out) + len(templates))
        return [home, *others[:most]]

    def _arrange(self, names: list[str]) -> list[source.DatabaseSource]:
        """One source per name (``names[0]`` is the home database), each with its role; a
        new one gets the home login with its dbname. Returns the sources no longer wanted,
        for the caller to close."""
        alone = len(names) == 1
        old, self.sources = self.sources, {}
        for index, name in enumerate(names):
            role = source.Role(home=index == 0, alone=alone)
            kept = old.pop(name, None)
            if kept is None:
                kept = source.DatabaseSource(
                    dataclasses.replace(self.login, dbname=name), self.metrics, self.health,
                    self.texts, self.catalogs.store(name), role)
                if index:
                    log.info("watching a database", extra={"database": name})
            kept.role = role
            self.sources[name] = kept
        self.stream.watch(self.sources)
        for name in old:
            log.info("no longer watching a database", extra={"database": name})
            self.catalogs.drop(name)
            self.texts.forget_database(name)
            with contextlib.suppress(KeyError):
                self.metrics.database_reachable.remove(name)
        self.metrics.databases.labels("watched").set(len(self.sources))
        self._size_stores()
        return list(old.values())

    async def _rearrange(self) -> None:
        """Watch what :meth:`_wanted` says now: close the sources no longer wanted, give the
        others the current login."""
        for gone in self._arrange(self._wanted()):
            await gone.close()
        for name, kept in self.sources.items():
            await kept.set_login(dataclasses.replace(self.login, dbname=name))

    async def _discover(self) -> None:
        """With ``databases: all``: re-read the server's databases when due (every
        DISCOVERY_SECONDS, and after a round in which a watched one was unreachable); with a
        list, read which of them are templates as often (a template is never watched: its
        contents are copied into every database created from it)."""
        assert self.config.collector is not None
        listed = self.config.collector.databases != "all"
        if listed and not self.config.collector.other_databases():
            return
        now = time.monotonic()
        if (self._discovered_at is not None and not self._rediscover
                and now - self._discovered_at < DISCOVERY_SECONDS):
            return
        if listed:  # which listed databases are templates (never watched)
            templates = await self.home.template_names()
            if templates is None:
                return
            self._templates, self._discovered_at = frozenset(templates), now
            self._rediscover = False
            await self._rearrange()
            return
        found = await self.home.database_names()
        if found is None:  # home unreachable: keep watching what we watch, try next round
            return
        self._discovered, self._discovered_at, self._rediscover = found, now, False
        await self._rearrange()

    # -- hot reload ---------------------------------------------------------------------------

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
        async with self._round_lock:  # never change the sources under a round
            self._apply(config)
            self.login = login
            if config.collector.databases == "all":
                if self._discovered is None:  # until the next discovery: those watched now
                    self._discovered = list(self.sources)
                self._rediscover = True  # a new exclude list, say: look again at once
            else:
                # The listed ones are checked for templates again at once.
                self._discovered, self._discovered_at = None, None
                self._rediscover = True
            await self._rearrange()
        self.stream.set_address(config.collector.analyser_address)
        self.stream.token_file = config.collector.ingest_token_file
        self._reloaded.set()
        log.info("config reloaded", extra={"interval_seconds": self.interval,
                                           "query_timeout_ms": self.options.query_timeout_ms,
                                           "databases": list(self.sources)})

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

    async def collect_once(self) -> list[pb.Snapshot]:
        """One round: every watched database, the home one first, each into its own snapshot
        in the buffer (the stream sends them); the round's snapshots."""
        async with self._round_lock:
            started = time.monotonic()
            await self._discover()
            snaps: list[pb.Snapshot] = []
            for name, database in list(self.sources.items()):
                snaps.append(await self._collect(name, database, snaps[0] if snaps else None))
            elapsed = time.monotonic() - started
            self.metrics.cycle_seconds.observe(elapsed)
            log.debug("round collected", extra={"sequence": snaps[-1].sequence,
                                                "databases": len(snaps), "seconds": elapsed})
            return snaps

    async def _collect(self, name: str, database: source.DatabaseSource,
                       home: pb.Snapshot | None = None) -> pb.Snapshot:
        """One database's snapshot of this round, buffered. ``home``: the home database's
        snapshot of the round, whose cluster-wide sections a reachable other database's
        snapshot carries too (read once, judged per database)."""
        started = time.monotonic()
        snap = self._envelope()
        top = await database.collect(snap, self.options)
        if not database.role.home:
            snap.database.also_watched = True  # the analyser's word for "not the home one"
            if home is not None and _same_database(home, snap):
                self._home_again(name, snap)
            elif home is not None and not snap.collector.connection_error:
                snapshot_mod.copy_cluster_sections(home, snap)
        elapsed = time.monotonic() - started
        snap.collector.collection_duration.FromTimedelta(datetime.timedelta(seconds=elapsed))
        self.metrics.snapshots_collected.inc()
        reached = not snap.collector.connection_error
        self.metrics.database_reachable.labels(name).set(1 if reached else 0)
        if not reached and not database.role.home:
            self._rediscover = True  # dropped, perhaps: with all, look at the list again
        self.buffer.add(state.Entry(snap, top, database=name))
        self.metrics.buffered.set(len(self.buffer))
        return snap

    def _home_again(self, name: str, snap: pb.Snapshot) -> None:
        """``name`` is the home database under another name (a pooler's alias listed, say):
        its snapshot says so and carries nothing, so no problem is reported twice."""
        reason = (f"database {name!r} is the home database under another name "
                  f"(datid {snap.database.datid}): not watched twice")
        if name not in self._aliases_logged:
            self._aliases_logged.add(name)
            log.warning("a listed database is the home database under another name; "
                        "not watched twice", extra={"database": name})
        kept = {*snapshots.ENVELOPE_FIELDS, "chunk_index", "chunk_count"}
        for field in [f.name for f, _ in snap.ListFields()]:
            if field not in kept:
                snap.ClearField(field)  # type: ignore[arg-type]
        snap.collector.connection_error = reason

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
            "collector_id": self.collector_id, "database": self.home.login.describe(),
            "databases": list(self.sources), "analyser": self.stream.address,
            "interval_seconds": self.interval})
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
            for database in self.sources.values():
                await database.close()
            log.info("collector stopped", extra={"collector_id": self.collector_id,
                                                 "unacknowledged": len(self.buffer)})
