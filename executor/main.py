"""``startupmonkey executor``: wires config, database, NATS, the store and the engine.

Reads the rendered config (``executor`` block), connects to NATS (queue group or JetStream),
picks the store (Kubernetes Remediation objects, or the JSONL journal standalone), rebuilds its
pending work from the store, takes its lease (``executor/lease.py``), then handles detections
and ticks every interval until SIGTERM.
Readiness follows the database and NATS, and with JetStream whether there is a consumer to
pull from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

from startupmonkey import db, observability, settings
from startupmonkey.executor import api, context, dbcheck, engine, intake, journal, lease, records
from startupmonkey.models import durations

log = logging.getLogger(__name__)
APPLICATION_NAME = context.APPLICATION_NAME
#: Seconds between two reachability checks of the other databases (``status.databases``):
#: each check opens one connection per database, so not at every tick.
REACH_INTERVAL = 60.0


def identity() -> str:
    """This replica's name: the pod name in a cluster, host:pid elsewhere."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}:{os.getpid()}"


def make_store(config: settings.ComponentConfig) -> records.Store:
    """The store the config asks for. Only the Kubernetes store loads the Kubernetes client
    (about 16 MB resident, issue 19): a standalone executor never imports it."""
    assert config.executor is not None
    ref = config.monitor
    if config.executor.reporter == "jsonl":
        path = config.executor.audit_log or Path("startupmonkey-audit.jsonl")
        return journal.JournalStore(path, ref.namespace, ref.name)
    from startupmonkey.executor import kube

    return kube.KubernetesStore(ref.namespace, ref.name)


def _kube() -> ModuleType | None:
    """``executor.kube`` when this process loaded it (it has a Kubernetes store), else None."""
    return sys.modules.get("startupmonkey.executor.kube")


class Executor:
    """One executor process."""

    def __init__(self, config: settings.ComponentConfig, obs: observability.Observability,
                 store: records.Store | None = None) -> None:
        if config.executor is None:
            raise ValueError("the config has no executor block")
        self.config = config
        self.obs = obs
        self.login = config.executor.database.login()
        self.store = store or make_store(config)
        self.nats: Any = None
        self.engine: engine.Engine | None = None
        self.intake: intake.CoreIntake | intake.JetStreamIntake | None = None
        self.api: Any = None
        self.lease: lease.Lease | None = None
        #: The last reachability check of the other databases, and for which names.
        self._reached: list[dict[str, Any]] | None = None
        self._reach_names: tuple[str, ...] = ()
        self._reach_due = 0.0  # event loop time of the next check
        self._reach_task: asyncio.Task[None] | None = None
        self._last_status: dict[str, Any] | None = None

    async def connect_db(self) -> db.Conn:
        """A new autocommit connection (health follows the outcome)."""
        try:
            conn = await db.connect(self.login, APPLICATION_NAME)
        except (psycopg.Error, OSError) as exc:
            self.obs.health.set("database", False, db.safe_error(exc))
            raise
        self.obs.health.set("database", True, self.login.describe())
        return conn

    async def start(self) -> None:
        """Connect to NATS, build the engine, subscribe."""
        assert self.config.executor is not None
        jetstream = (self.config.spec.event_bus.jetstream
                     or self.config.executor.nats.jetstream)
        # With JetStream, "jetstream" is ready only while there is a consumer to pull from.
        self.obs.health.expect("database", "nats", *(["jetstream"] if jetstream else []))
        self.nats = await intake.connect(
            self.config.executor.nats, APPLICATION_NAME,
            lambda up, detail: self.obs.health.set("nats", up, detail))
        self.obs.health.set("nats", True, self.config.executor.nats.url)
        self.engine = engine.Engine(self.config, self.store, intake.NatsEvents(self.nats),
                                    self.connect_db, identity(), self.obs.registry)
        # Held for the executor's life; taken before any work arrives (claims need it).
        self.lease = lease.Lease(self.engine.identity,
                                 lambda name: db.connect(self.login, name))
        self.engine.context.lease = self.lease
        await self.lease.start()
        ref = self.config.monitor
        if jetstream:
            ack_wait = durations.parse_duration(self.config.executor.nats.ack_wait)
            self.intake = intake.JetStreamIntake(
                self.nats, ref.namespace, ref.name, self.engine.handle, ack_wait=ack_wait,
                on_state=lambda up, detail: self.obs.health.set("jetstream", up, detail))
        else:
            self.intake = intake.CoreIntake(self.nats, ref.namespace, ref.name,
                                            self.engine.handle)
        await self.intake.start()
        kube = _kube()
        if kube is not None and isinstance(self.store, kube.KubernetesStore):
            # In a cluster people act through the API server with their own credentials
            # (startupmonkey approve --kube, kubectl): nothing here takes a token (issue 24.2).
            log.info("the executor API is not served in a cluster: approve, reject and roll "
                     "back with `startupmonkey <command> --kube` or kubectl")
            return
        self.api = await api.serve(self.config.executor.listen_address, self._api_service())

    def _api_service(self) -> api.ExecutorService:
        """The standalone API: a private Unix socket, or TCP with a private token file."""
        assert self.config.executor is not None
        ref, settings_ = self.config.monitor, self.config.executor
        unix = settings_.listen_address.startswith("unix:")
        if not unix and settings_.token_file is None:
            raise ValueError("a standalone executor API on TCP needs executor.tokenFile; "
                             "or listen on unix:///path")
        store = self.store
        return api.ExecutorService(
            ref.namespace, ref.name, api.LocalAccess(store, settings_.token_file),
            spec=lambda: self.config.spec,  # as reloaded
            database=lambda: store.database if isinstance(store, journal.JournalStore)
            else None,
            databases=lambda: store.databases if isinstance(store, journal.JournalStore)
            else None)

    async def reconfigure(self, config: settings.ComponentConfig) -> None:
        """Hot reload from the watched config file. A changed login (host, port, home
        database, user, SSL mode, password file) moves every connection together: the home
        ones (and the lease) and those to the other databases are all opened with the new
        one from now on, the lease is taken anew there, and what was learnt of the old
        server (refusals, reachability) is forgotten and checked again at once."""
        assert config.executor is not None
        login = config.executor.database.login()
        moved = login != self.login
        # No await before all three are replaced: no connection is opened with a mix.
        self.config, self.login = config, login
        if self.engine is not None:
            self.engine.reconfigure(config)
        if moved:
            log.warning("database login changed to %s: every connection (home, lease and "
                        "other databases) now goes there", login.describe())
            await self._forget_server()
        log.info("configuration reloaded")

    async def _forget_server(self) -> None:
        """After a login change: the lease on the new server, refusals and reachability of
        the old one forgotten, the reachability check due now."""
        if self.engine is not None:
            self.engine.context.forget_refusals()
        task, self._reach_task = self._reach_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._reached, self._reach_names, self._reach_due = None, (), 0.0
        if self.lease is not None:
            await self.lease.stop()
            await self.lease.start()

    async def tick_forever(self, stop: asyncio.Event) -> None:
        """Tick every interval until stopped; a failing tick is logged and retried."""
        backoff = db.Backoff()
        api_errors = records.api_errors()
        while not stop.is_set():
            delay = durations.parse_duration(self.config.spec.interval)
            try:
                assert self.engine is not None
                await self.report_database()
                await self.engine.tick()
                backoff.reset()
            except (psycopg.Error, OSError) as exc:
                self.obs.health.set("database", False, db.safe_error(exc))
                delay = backoff.next_delay()
                log.warning("tick failed, retrying in %.1fs: %s", delay, db.safe_error(exc))
            except api_errors as exc:
                delay = backoff.next_delay()
                log.warning("tick failed (Kubernetes API), retrying in %.1fs: %s", delay,
                            db.safe_error(exc))
            except Exception:  # a bug or an API error must not stop the executor
                delay = backoff.next_delay()
                log.exception("tick failed, retrying in %.1fs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def report_database(self) -> None:
        """Check the database from our own connection and record ``status.database``; with
        ``executor.databases``, the last reachability of each other database
        (``status.databases``), checked in the background every :data:`REACH_INTERVAL` (or
        at once when the list changes), never holding up the tick."""
        assert self.config.executor is not None
        executor = self.config.executor
        try:
            conn = await self.connect_db()
        except (psycopg.Error, OSError) as exc:
            # The others as last checked go along: "N/M" counts the home one unreachable.
            if not executor.databases:
                self._reached, self._reach_names = None, ()
            self._last_status = dbcheck.unreachable(exc).dump()
            await self.store.report_database(self._last_status, self._reach_report())
            raise
        others: list[str] | None = None
        try:
            status = await dbcheck.check(conn)
            if executor.databases:
                cursor = await conn.execute(b"SELECT pg_catalog.current_database()")
                row = await cursor.fetchone()
                assert row is not None
                others = await dbcheck.other_databases(conn, executor, str(row[0]))
        finally:
            await conn.close()
        self._last_status = status.dump()
        if others is None:
            self._reached, self._reach_names = None, ()
        else:
            self._schedule_reach(tuple(others))
        await self.store.report_database(self._last_status, self._reach_report())

    def _reach_report(self) -> list[dict[str, Any]] | None:
        """``status.databases`` as last checked, for the names listed now; a database not
        checked yet is left out until its check (due at once) reports it. Empty when only the
        home database is acted in (the store then clears ``status.databases`` and
        ``status.databasesReachable``, which a list emptied since left behind); None while
        databases are listed but none is checked yet (what is stored is left alone)."""
        if not self._reach_names:
            return []
        known = {entry["name"]: entry for entry in self._reached or ()}
        found = [known[name] for name in self._reach_names if name in known]
        return found or None

    def _schedule_reach(self, names: tuple[str, ...]) -> None:
        """Start a reachability check in the background when one is due (or the names
        changed) and none runs."""
        loop = asyncio.get_running_loop()
        changed = names != self._reach_names
        self._reach_names = names
        if self.engine is None or (self._reach_task is not None
                                   and not self._reach_task.done()):
            return
        if not changed and loop.time() < self._reach_due:
            return
        self._reach_due = loop.time() + REACH_INTERVAL
        self._reach_task = asyncio.create_task(self._reach(names), name="reachability")

    async def _reach(self, names: tuple[str, ...]) -> None:
        """One reachability check of ``names``; its report is written at once."""
        assert self.engine is not None
        ctx = self.engine.context
        try:
            reached = await dbcheck.reach(
                lambda name: ctx.connect(name, remembered=False), names,
                answered=ctx.forget_refusal)
            self._reached = [r.dump() for r in reached]
            if self._last_status is not None and names == self._reach_names:
                await self.store.report_database(self._last_status, self._reach_report())
        except Exception as exc:  # the next tick's report and the next check carry on
            log.warning("reachability check of the other databases failed: %s",
                        db.safe_error(exc))

    async def stop(self) -> None:
        """Stop the API, unsubscribe, cancel the actions in flight and close NATS."""
        if self._reach_task is not None:
            self._reach_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reach_task
        if self.api is not None:
            await self.api.stop(grace=2)
        if self.intake is not None:
            await self.intake.stop()
        if self.engine is not None:
            await self.engine.close()  # before NATS goes: "interrupted" is announced on it
        if self.lease is not None:
            await self.lease.stop()  # after the actions: nobody takes over what still runs
        if self.nats is not None:
            try:
                await self.nats.drain()
            except Exception as exc:  # what was not yet flushed is lost
                log.warning("could not drain NATS at stop: %s", exc)


async def serve(config_path: Path, port: int, stop: asyncio.Event) -> None:
    """Run one executor until ``stop`` is set."""
    config = settings.load(config_path)
    obs = observability.Observability("executor")
    # The store first (in a cluster the Kubernetes client: the heaviest import, run on the
    # event loop), then the port: once /healthz answers, no start-up work holds the loop up.
    executor = Executor(config, obs)
    await obs.start(port)
    try:
        await executor.start()
        watcher = settings.ConfigWatcher(config_path, executor.reconfigure)
        await asyncio.gather(executor.tick_forever(stop), watcher.run(stop))
    finally:
        await executor.stop()
        await obs.stop()


def main(args: argparse.Namespace) -> int:
    """Entry point of ``startupmonkey executor``."""
    path = args.config or settings.DEFAULT_PATH
    try:
        config = settings.load(path)
    except ValueError as exc:
        print(f"startupmonkey executor: {exc}", flush=True)
        return 2
    observability.setup_logging("executor", config.monitor.namespace, config.monitor.name,
                                args.log_level)

    async def run(stop: asyncio.Event) -> None:
        await serve(path, args.observability_port, stop)

    try:
        asyncio.run(observability.run_until_signalled(run))
    except api.UnsafeTokenFile as exc:  # refused at start: a message, not a traceback
        print(f"startupmonkey executor: {exc}", flush=True)
        return 2
    return 0
