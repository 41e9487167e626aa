"""A small, real ``MetricsIngest`` server for the collector's tests, and the tests of it.

:class:`IngestRecorder` is a grpc.aio server on 127.0.0.1 that reassembles chunks with
:func:`startupmonkey.snapshots.merge`, records every snapshot with the number of the stream
it arrived on, and answers each with an Ack (ACCEPTED unless a test says otherwise, with
``want_catalog``/``want_statement_texts`` when a test queues them). It can be stopped and
started again on the same port, which is how tests restart "the analyser".

:func:`collector_config` builds the rendered config a collector reads, and
:func:`running_collector` runs a real :class:`startupmonkey.collector.service.Collector` in
the test's event loop until the block exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# Before grpc is first imported: its fork handlers make PostgreSQL restarts (a fork of this
# process while gRPC threads run) crash the child. See collector/stream.py.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
import grpc.aio
import pytest

from startupmonkey import observability, settings, snapshots
from startupmonkey.collector import service
from startupmonkey.localserv import postgres
from startupmonkey.models import monitor
from startupmonkey.v1 import ingest_pb2, ingest_pb2_grpc, limits
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Received:
    """One reassembled snapshot and the stream (1, 2, ...) it came on."""

    stream: int
    snapshot: pb.Snapshot
    chunks: int
    largest_chunk: int


class IngestRecorder(ingest_pb2_grpc.MetricsIngestServicer):
    """Records snapshots; acks them in order."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.streams = 0
        self.status: Any = ingest_pb2.ACK_STATUS_ACCEPTED
        self.want_catalog = False
        self.want_texts: list[int] = []
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self, port: int = 0) -> None:
        """Serve on 127.0.0.1 (a given port: the same one again after a stop)."""
        server = grpc.aio.server(options=limits.GRPC_MESSAGE_SIZE_OPTIONS)
        ingest_pb2_grpc.add_MetricsIngestServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{port or self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        """Stop serving (open streams are cut)."""
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def Stream(self, request_iterator: AsyncIterator[pb.Snapshot],
                     context: grpc.aio.ServicerContext[Any, Any],
                     ) -> AsyncIterator[ingest_pb2.Ack]:
        self.streams += 1
        stream = self.streams
        parts: list[pb.Snapshot] = []
        async for chunk in request_iterator:
            parts.append(chunk)
            if len(parts) < chunk.chunk_count:
                continue
            merged = snapshots.merge(parts)
            largest = max(p.ByteSize() for p in parts)
            self.received.append(Received(stream, merged, len(parts), largest))
            parts = []
            ack = ingest_pb2.Ack(sequence=merged.sequence, status=self.status)
            if self.want_catalog:
                ack.want_catalog, self.want_catalog = True, False
            if self.want_texts:
                ack.want_statement_texts.extend(self.want_texts)
                self.want_texts = []
            yield ack

    # -- views for assertions -----------------------------------------------------------------

    def snapshots(self, *, connected: bool = True) -> list[pb.Snapshot]:
        """Received snapshots, by default only those that reached the database."""
        return [r.snapshot for r in self.received
                if not connected or not r.snapshot.collector.connection_error]

    def latest(self) -> pb.Snapshot:
        """The newest snapshot that reached the database (AssertionError when none yet)."""
        found = self.snapshots()
        assert found, "no snapshot with data received yet"
        return found[-1]

    def with_catalog(self) -> list[Received]:
        return [r for r in self.received if r.snapshot.HasField("catalog")]


@contextlib.asynccontextmanager
async def ingest_server() -> AsyncIterator[IngestRecorder]:
    """A started recorder, stopped at the end."""
    recorder = IngestRecorder()
    await recorder.start()
    try:
        yield recorder
    finally:
        await recorder.stop()


def collector_config(database: postgres.PostgresDatabase, analyser_address: str, *,
                     user: str | None = None, password_file: Path | None = None,
                     interval: str = "1s", buffer_snapshots: int = 30,
                     top_statements: int = 50, name: str = "shop",
                     query_timeout: str = "5s") -> settings.ComponentConfig:
    """The rendered config of a collector watching ``database`` (superuser by default)."""
    cluster = database.cluster
    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": cluster.host, "port": cluster.port, "dbname": database.dbname,
                     "credentialsSecret": {"name": "db-credentials"}},
        "interval": interval})
    login = settings.DatabaseLogin(host=cluster.host, port=cluster.port, dbname=database.dbname,
                                   user=user or cluster.superuser, password_file=password_file,
                                   ssl_mode="disable")
    return settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace="tests", name=name), spec=spec,
        collector=settings.CollectorSettings(database=login, analyser_address=analyser_address,
                                             buffer_snapshots=buffer_snapshots,
                                             top_statements=top_statements,
                                             query_timeout=query_timeout))


@contextlib.asynccontextmanager
async def running_collector(config: settings.ComponentConfig, config_path: Path | None = None,
                            ) -> AsyncIterator[tuple[service.Collector,
                                                     observability.Observability]]:
    """A real Collector running in this event loop until the block exits.

    With ``config_path`` it also watches that file for changes (hot reload).
    """
    obs = observability.Observability("collector")
    collector = service.Collector(config, obs)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop, config_path=config_path))
    try:
        yield collector, obs
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def metric(obs: observability.Observability, name: str, **labels: str) -> float:
    """Current value of one sample of the collector's registry (0 when absent)."""
    value = obs.registry.get_sample_value(name, labels)
    return float(value) if value is not None else 0.0


async def test_recorder_reassembles_and_acks_chunked_snapshots() -> None:
    async with ingest_server() as recorder:
        snap = pb.Snapshot(collector_id="c", sequence=1, chunk_count=1)
        for n in range(3000):
            snap.statement_texts.add(queryid=n, text="x" * 1000)
        chunks = snapshots.split(snap)
        assert len(chunks) > 1
        async with grpc.aio.insecure_channel(
                recorder.address, options=limits.GRPC_MESSAGE_SIZE_OPTIONS) as channel:
            call = ingest_pb2_grpc.MetricsIngestStub(channel).Stream(None)
            for chunk in chunks:
                await call.write(chunk)
            ack = await call.read()
            await call.done_writing()
        assert isinstance(ack, ingest_pb2.Ack)
        assert (ack.sequence, ack.status) == (1, ingest_pb2.ACK_STATUS_ACCEPTED)
        await eventually(lambda: len(recorder.received) == 1, timeout=5)
        assert recorder.received[0].snapshot == snap
        assert recorder.received[0].chunks == len(chunks)
