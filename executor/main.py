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
            else None)

    async def reconfigure(self, config: settings.ComponentConfig) -> None:
        """Hot reload from the watched config file."""
        self.config = config
        if self.engine is not None:
            self.engine.reconfigure(config)
        log.info("configuration reloaded")

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
        ``executor.databases``, whether each other database answers (``status.databases``)."""
        assert self.config.executor is not None
        executor = self.config.executor
        try:
            conn = await self.connect_db()
        except (psycopg.Error, OSError) as exc:
            await self.store.report_database(dbcheck.unreachable(exc).dump())
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
        reached = None
        if others is not None and self.engine is not None:
            reached = [r.dump() for r in await dbcheck.reach(self.engine.context.connect,
                                                             others)]
        await self.store.report_database(status.dump(), reached)

    async def stop(self) -> None:
        """Stop the API, unsubscribe, cancel the actions in flight and close NATS."""
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
    await obs.start(port)
    executor = Executor(config, obs)
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
