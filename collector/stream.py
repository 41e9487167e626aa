"""The collector's end of ``MetricsIngest.Stream``: one long-lived bidirectional stream.

:class:`StreamClient` keeps one stream open to the analyser and sends every buffered snapshot
(:class:`state.SnapshotBuffer`) in sequence order, split into chunks under the size limit by
:func:`startupmonkey.snapshots.split`. A snapshot stays in the buffer until its Ack:

- ACCEPTED, DUPLICATE: done, removed;
- RETRY: re-sent after a growing delay, unless a newer snapshot is queued (cumulative counters
  make the newer one a complete replacement), in which case it is dropped as superseded (a
  newer one of another database too: the analyser keeps the highest sequence it applied per
  collector, so once that one is applied a re-send could only be a DUPLICATE);
- REJECTED: dropped, and the analyser's message logged.

When the stream breaks (error, end, or no ack within ``ack_timeout``) the client reconnects
with :class:`startupmonkey.db.Backoff` and re-sends everything still buffered under the
original sequence numbers; the analyser deduplicates by ``(collector_id, sequence)``.

Statement texts and the catalog are per stream, so they are attached *here*, when a snapshot
is written: the catalog named by ``catalog_hash`` when this stream has not carried it for the
snapshot's database (first snapshot of that database on a stream, a changed hash, or
``Ack.want_catalog`` on a snapshot of that database), and the texts of the snapshot's top
statements (and of ``Ack.want_statement_texts``) that this stream has not carried yet. If the
analyser does not apply the snapshot that carried them (any status but ACCEPTED), they are
marked unsent again and go with the next snapshot.

pg_stat_statements entries are per stream too, when the analyser's acks say it reads
changed-only reads (``Ack.understands_changed_only_statements``; an older analyser gets every
entry of every read): a statement read carries only the entries that are new or changed since
this stream last carried them for the database (:func:`changed_statements`;
``StatementsInfo.unchanged_omitted`` counts the others), and the whole set
(:class:`StatementsSent` says when) on the first read of a stream, after a failed read or a
reconnect, after a reset, when an entry disappeared, after a read the chunking left entries out
of (:meth:`_Session.split_into`), while an earlier read of the database is not acknowledged or
after one was not accepted, when an ack asks for it
(``Ack.want_full_statements``: the analyser lost the database's history), and every
:data:`STATEMENTS_FULL_EVERY` reads (docs/protocol.md, "Changed-only statements"). What the
stream carried of a database is forgotten when it is no longer watched
(:meth:`StreamClient.watch`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

# gRPC's fork handlers (on by default in grpcio 1.85) make every fork() of a process with live
# gRPC threads unsafe: children crash before exec and the parent's poller can abort. The
# collector never forks, but the process it lives in may spawn others (``startupmonkey run``,
# tests restarting PostgreSQL). The setting is read when grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
import grpc.aio
from google.protobuf import duration_pb2

from startupmonkey import aio, db, observability, snapshots
from startupmonkey.collector import metrics as metrics_mod
from startupmonkey.collector import state
from startupmonkey.v1 import ingest_pb2, ingest_pb2_grpc, limits
from startupmonkey.v1 import snapshot_pb2 as pb

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0
"""How long opening a stream may take before it counts as a failed attempt."""

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    *limits.GRPC_MESSAGE_SIZE_OPTIONS,
    # Our own Backoff paces reconnects; keep gRPC's channel-level backoff short under it.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

_STATUS_NAMES = {ingest_pb2.ACK_STATUS_ACCEPTED: "accepted",
                 ingest_pb2.ACK_STATUS_DUPLICATE: "duplicate",
                 ingest_pb2.ACK_STATUS_RETRY: "retry",
                 ingest_pb2.ACK_STATUS_REJECTED: "rejected"}


class StreamBroken(Exception):
    """The stream ended or stopped answering; reconnect."""


ENDED_WHILE_WRITING = (
    "the analyser ended the stream while a snapshot was being written, and its reason did "
    "not reach the collector (gRPC says only 'INTERNAL: Internal error from Core'); the "
    "analyser's log says why: usually a wrong ingest token or a snapshot over its size limit")
"""What a failed write is reported as when the analyser's own status is not known."""

REFUSAL_GRACE_SECONDS = 2.0
"""How long a failed write waits for the reader to learn why the analyser ended the stream."""


async def _refusal(reader: asyncio.Task[None]) -> grpc.aio.AioRpcError | None:
    """The status the analyser ended the stream with, as the reader got it (None when the
    reader ends otherwise or not within :data:`REFUSAL_GRACE_SECONDS`)."""
    await asyncio.wait({reader}, timeout=REFUSAL_GRACE_SECONDS)
    if not reader.done() or reader.cancelled():
        return None
    error = reader.exception()
    return error if isinstance(error, grpc.aio.AioRpcError) else None


STATEMENTS_FULL_EVERY = 10
"""Every this many statement reads of a database on one stream, the snapshot carries every
entry even when few changed: a backstop (an analyser that lost the database's history asks
for the full set at once, ``Ack.want_full_statements``), within this many reads (at most 10
rounds at 1,000 entries or fewer, 50 at the longest statement skip)."""

StatementKey = tuple[int, int, int, bool | None]
"""(queryid, userid, dbid, toplevel): the identity of a pg_stat_statements entry."""


def changed_statements(entries: Sequence[pb.StatementStats],
                       last_sent: Mapping[StatementKey, int] | None
                       ) -> tuple[list[pb.StatementStats] | None, dict[StatementKey, int]]:
    """Which entries of a read to send, given what the stream last carried of the database.

    ``last_sent``: the fingerprint of each entry as last carried (None: send everything).
    Returns the entries to send, None meaning all of them (a FULL sample: no memory, or an
    entry carried before is not in this read: evicted, reset, or out of the top entries, so
    "absent means unchanged" would be wrong), and the fingerprints to remember. An entry is
    unchanged when its whole message is identical (``calls`` is what moves; ``plans`` can
    move alone, and a re-created entry has a new ``stats_since``). Pure."""
    # Inline, as it runs in the event loop once per entry: the key (as the analyser keys an
    # entry) and the fingerprint, a hash of the serialized entry: every field and its presence.
    # StatementStats has no map field, so equal entries serialize to equal bytes without
    # deterministic=True (which costs about half again). One C call is cheaper than reading
    # the fields: a tuple of every field costs about 3 times as much with upb, and one of only
    # the fields that move with calls would miss pg_stat_statements_reset(minmax_only) and a
    # re-created entry (bench/statements_changed.py).
    keyed = [((e.queryid, e.userid, e.dbid, e.toplevel if e.HasField("toplevel") else None),
              hash(e.SerializeToString()), e) for e in entries]
    fingerprints = {key: fingerprint for key, fingerprint, _ in keyed}
    if last_sent is None or any(key not in fingerprints for key in last_sent):
        return None, fingerprints
    changed = [e for key, fingerprint, e in keyed if last_sent.get(key) != fingerprint]
    return changed, fingerprints


@dataclasses.dataclass
class StatementsSent:
    """What one stream carried of one database's pg_stat_statements, for the next read."""

    fingerprints: dict[StatementKey, int]
    """Each entry as last carried (:func:`changed_statements`)."""
    series: bytes
    """The server incarnation and ``stats_reset`` of that read: a change means a full set."""
    reads: int = 1
    """Statement reads carried since (and with) the last full one."""
    first: int = 0
    """The sequence of that full one."""
    unacked: set[int] = dataclasses.field(default_factory=set)
    """Sequences of this database carrying statements not acknowledged yet."""

    def partial_ok(self, series: bytes) -> bool:
        """Whether the next read may carry only the changed entries."""
        return (series == self.series and not self.unacked
                and self.reads < STATEMENTS_FULL_EVERY)


def _statement_series(snap: pb.Snapshot) -> bytes:
    """The server incarnation and pg_stat_statements reset of a snapshot, as bytes."""
    key = pb.Snapshot()
    key.database.system_identifier = snap.database.system_identifier
    key.database.datid = snap.database.datid
    if snap.database.HasField("postmaster_start_time"):
        key.database.postmaster_start_time.CopyFrom(snap.database.postmaster_start_time)
    if snap.statements_info.HasField("stats_reset"):
        key.statements_info.stats_reset.CopyFrom(snap.statements_info.stats_reset)
    return key.SerializeToString(deterministic=True)


@dataclasses.dataclass
class _InFlight:
    """A snapshot written on this stream and not acked yet, with what it carried."""

    sent_at: float
    texts: tuple[int, ...]
    catalog_hash: str | None
    database: str = ""
    statements: bool = False
    """It carried a statements read (full or changed-only)."""


class _Session:
    """What one stream has carried; discarded with the stream."""

    def __init__(self, changed_only: bool = False) -> None:
        self.in_flight: dict[int, _InFlight] = {}
        self.sent_texts: set[int] = set()
        self.catalogs: dict[str, str] = {}
        """The catalog hash this stream carried last, by database."""
        self.statements: dict[str, StatementsSent] = {}
        """The pg_stat_statements entries this stream carried last, by database."""
        self.changed_only = changed_only
        """The analyser reads changed-only statement reads: its last ack said so
        (``Ack.understands_changed_only_statements``; an older analyser never does). Until
        then every read carries every entry."""
        self.retry_backoff = db.Backoff(base=1.0, cap=30.0)

    def forget(self, database: str) -> None:
        """What this stream carried of ``database`` (its catalog, its statements): it is no
        longer watched, or the analyser lost it; should it come again, it all goes again."""
        self.catalogs.pop(database, None)
        self.statements.pop(database, None)

    def want_full_statements(self, sequence: int, database: str) -> None:
        """The analyser could not read snapshot ``sequence`` of ``database``'s changed-only
        statements (``Ack.want_full_statements``): the next read carries every entry, unless
        one after ``sequence`` already started a full set."""
        sent = self.statements.get(database)
        if sent is not None and sent.first <= sequence:
            del self.statements[database]

    def unmark(self, flight: _InFlight) -> None:
        """What ``flight`` carried was not applied: carry it again."""
        self.sent_texts.difference_update(flight.texts)
        if (flight.catalog_hash is not None
                and self.catalogs.get(flight.database) == flight.catalog_hash):
            del self.catalogs[flight.database]
        if flight.statements:  # the analyser may lack entries it was told are unchanged
            self.statements.pop(flight.database, None)

    def split_into(self, flight: _InFlight, first_chunk: pb.Snapshot) -> None:
        """``flight``'s snapshot as :func:`snapshots.split` cut it (``first_chunk``: chunk 0,
        which lists the sections): when the split left statement entries out (the section no
        longer OK: beyond ``MAX_CHUNKS_PER_SNAPSHOT``, or an entry over ``MAX_ITEM_BYTES``),
        the stream did not carry what :meth:`trim_statements` recorded, so it forgets the
        database's entries and the next read carries every one (the analyser cannot read a
        changed-only read that is not whole either, and asks for the full set)."""
        if not flight.statements:
            return
        state_ = next((s.state for s in first_chunk.collector.sections
                       if s.section == pb.SECTION_STATEMENTS), None)
        if state_ != pb.SECTION_STATE_OK:
            self.statements.pop(flight.database, None)

    def acked(self, sequence: int, flight: _InFlight) -> None:
        """``flight`` (``sequence``) was applied: later reads may build on it."""
        sent = self.statements.get(flight.database)
        if flight.statements and sent is not None:
            sent.unacked.discard(sequence)

    def trim_statements(self, snap: pb.Snapshot, database: str) -> bool:
        """Leave out of ``snap`` the statement entries unchanged since this stream carried
        them (``statements_info.unchanged_omitted``), or keep them all (a full set) and start
        over; forget the database's entries when the round did not read them well. True when
        ``snap`` carries a statements read."""
        states = {s.section: s.state for s in snap.collector.sections}
        state_ = states.get(pb.SECTION_STATEMENTS)
        if snap.collector.connection_error or (
                state_ is not None and (state_ != pb.SECTION_STATE_OK
                                        or not snap.statements_info.available)):
            self.statements.pop(database, None)  # failed, unavailable, reconnecting
            return False
        if state_ is None:
            return False  # not read this round (every few rounds): nothing changes
        series = _statement_series(snap)
        sent = self.statements.get(database)
        last = (sent.fingerprints if sent is not None and self.changed_only
                and sent.partial_ok(series) else None)
        changed, fingerprints = changed_statements(snap.statements, last)
        if changed is None or sent is None:
            sent = self.statements[database] = StatementsSent(fingerprints, series,
                                                              first=snap.sequence)
        else:
            omitted = len(snap.statements) - len(changed)
            kept = [pb.StatementStats() for _ in changed]
            for copy, entry in zip(kept, changed, strict=True):
                copy.CopyFrom(entry)
            del snap.statements[:]
            snap.statements.extend(kept)
            snap.statements_info.unchanged_omitted = omitted
            sent.fingerprints, sent.reads = fingerprints, sent.reads + 1
        sent.unacked.add(snap.sequence)
        return True


def _set_section(snap: pb.Snapshot, section: int, items: int,
                 collected_at: datetime.datetime | None = None,
                 duration: float | None = None) -> None:
    """Replace the status of ``section`` by OK with ``items``."""
    kept = [s for s in snap.collector.sections if s.section != section]
    del snap.collector.sections[:]
    snap.collector.sections.extend(kept)
    entry = snap.collector.sections.add(section=section, state=pb.SECTION_STATE_OK,
                                        items=items)
    if collected_at is not None:
        entry.collected_at.FromDatetime(collected_at)
    if duration is not None:
        value = duration_pb2.Duration()
        value.FromTimedelta(datetime.timedelta(seconds=duration))
        entry.duration.CopyFrom(value)


class StreamClient:
    """Sends the buffer to the analyser over one stream at a time, for ever."""

    def __init__(self, address: str, buffer: state.SnapshotBuffer, texts: state.TextStore,
                 catalogs: state.CatalogLookup, metrics: metrics_mod.Metrics,
                 health: observability.Health, ack_timeout: float = 30.0,
                 token_file: Path | None = None) -> None:
        self.address = address
        self.token_file = token_file
        self.buffer = buffer
        self.texts = texts
        self.catalogs = catalogs
        self.metrics = metrics
        self.health = health
        self.ack_timeout = ack_timeout
        self.streams_opened = 0
        self._backoff = db.Backoff()
        self._logged_error: str | None = None
        self._restart = asyncio.Event()
        self._session: _Session | None = None
        self._watched: frozenset[str] | None = None

    def watch(self, databases: Iterable[str]) -> None:
        """The databases watched now: the stream forgets what it carried of the others
        (their statements and catalog), so its memory is bounded by the watched ones and a
        database watched again starts with full reads (the analyser may have retired its
        history meanwhile)."""
        self._watched = frozenset(databases)
        if self._session is not None:
            for name in [*self._session.statements, *self._session.catalogs]:
                if name not in self._watched:
                    self._session.forget(name)

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The ingest token as ``authorization`` metadata, read anew for every stream (a
        rotated Secret is picked up at the next reconnect)."""
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise StreamBroken(f"cannot read the ingest token file {self.token_file}: "
                               f"{exc.strerror}") from None
        return (("authorization", f"Bearer {token}"),)

    def set_address(self, address: str) -> None:
        """A new analyser address (hot reload): reconnect to it."""
        if address != self.address:
            self.address = address
            self._backoff.reset()  # a new analyser owes nothing to the old one's failures
            self._restart.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a stream open until ``stop`` is set."""
        attempts = 0
        while not stop.is_set():
            if attempts:
                self.metrics.reconnects.labels("analyser").inc()
            attempts += 1
            self._restart.clear()
            failure = await self._until_stopped(stop)
            if stop.is_set():
                break
            if failure is not None:
                self._failed(failure)
                await self._back_off(stop)

    async def _back_off(self, stop: asyncio.Event) -> None:
        """Wait the backoff delay, cut short by ``stop`` or a new address (hot reload)."""
        waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(self._restart.wait())}
        try:
            await asyncio.wait(waiters, timeout=self._backoff.next_delay(),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _until_stopped(self, stop: asyncio.Event) -> str | None:
        """One stream, until it fails (returns why), a restart or ``stop`` (returns None)."""
        stream = asyncio.create_task(self._one_stream())
        waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(self._restart.wait())}
        try:
            done, _ = await asyncio.wait({stream, *waiters}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, *waiters):
                task.cancel()
            # Collects every outcome (the stream's error included) without raising it here.
            await asyncio.gather(stream, *waiters, return_exceptions=True)
        if stream not in done or stream.cancelled():
            return None
        exc = stream.exception()
        if isinstance(exc, grpc.aio.AioRpcError):
            return f"{exc.code().name}: {exc.details()}"
        if exc is None:
            return "the stream ended"
        return str(exc) or type(exc).__name__

    def _failed(self, message: str) -> None:
        detail = f"stream to {self.address} failed: {message}"
        self.health.set("analyser", False, detail)
        if detail != self._logged_error:
            log.warning("analyser unavailable: %s", detail)
            self._logged_error = detail

    async def _one_stream(self) -> None:
        async with grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            stub = ingest_pb2_grpc.MetricsIngestStub(channel)
            call = stub.Stream(None, metadata=self._metadata())  # None: written by call.write()
            try:
                await aio.within(call.wait_for_connection(), CONNECT_TIMEOUT_SECONDS)
            except TimeoutError:
                raise StreamBroken(f"no connection within {CONNECT_TIMEOUT_SECONDS:.0f}s") from None
            self.streams_opened += 1
            self._backoff.reset()
            self._logged_error = None
            self.health.set("analyser", True, f"streaming to {self.address}")
            log.info("stream to the analyser open", extra={"analyser": self.address,
                                                           "buffered": len(self.buffer)})
            session = self._session = _Session()
            reader = asyncio.create_task(self._read_acks(call, session))
            try:
                await self._send_loop(call, session, reader)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                # A write failed. When the analyser ended the stream (a wrong token, an
                # oversized message) the writer only sees INTERNAL; the reader may have its
                # reason: say that one, or at least what INTERNAL means here.
                refusal = await _refusal(reader)
                if refusal is not None and refusal.code() != grpc.StatusCode.INTERNAL:
                    raise refusal from exc
                if isinstance(exc, grpc.aio.AioRpcError) and exc.code() != grpc.StatusCode.INTERNAL:
                    raise
                raise StreamBroken(ENDED_WHILE_WRITING) from exc
            finally:
                await aio.cancel_and_wait(reader)
                call.cancel()

    async def _send_loop(self, call: grpc.aio.StreamStreamCall[pb.Snapshot, ingest_pb2.Ack],
                         session: _Session, reader: asyncio.Task[None]) -> None:
        while True:
            self.buffer.changed.clear()
            now = time.monotonic()
            wake = now + 1.0
            for entry in self.buffer:
                if entry.sequence in session.in_flight:
                    continue
                if entry.not_before > now:
                    wake = min(wake, entry.not_before)
                    continue
                await self._send(call, session, entry)
            self._check_acks(session)
            changed = asyncio.create_task(self.buffer.changed.wait())
            try:
                await asyncio.wait({changed, reader}, timeout=max(0.0, wake - time.monotonic()),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                await aio.cancel_and_wait(changed)
            if reader.done():
                reader.result()  # raises the reader's error
                raise StreamBroken("the analyser ended the stream")

    def _check_acks(self, session: _Session) -> None:
        if not session.in_flight:
            return
        oldest = min(f.sent_at for f in session.in_flight.values())
        waited = time.monotonic() - oldest
        if waited > self.ack_timeout:
            raise StreamBroken(f"no ack for {waited:.0f}s (ack timeout {self.ack_timeout:.0f}s)")

    def complete(self, entry: state.Entry, session: _Session) -> tuple[pb.Snapshot, _InFlight]:
        """The snapshot as written on this stream: catalog and texts this stream lacks."""
        snap = pb.Snapshot()
        snap.CopyFrom(entry.snapshot)
        snap.collector.dropped_snapshots = self.buffer.dropped
        flight = _InFlight(time.monotonic(), (), None, entry.database)
        stored = self.catalogs.get(snap.catalog_hash) if snap.catalog_hash else None
        if stored is not None and session.catalogs.get(entry.database) != snap.catalog_hash:
            snap.catalog.CopyFrom(stored.catalog)
            catalog = stored.catalog
            items = (len(catalog.relations) + len(catalog.columns) + len(catalog.indexes)
                     + len(catalog.constraints))
            _set_section(snap, pb.SECTION_CATALOG, items, stored.collected_at, stored.duration)
            session.catalogs[entry.database] = flight.catalog_hash = snap.catalog_hash
        flight.texts = self._attach_texts(snap, entry.top_queryids, session)
        flight.statements = session.trim_statements(snap, entry.database)
        if self._watched is not None and entry.database not in self._watched:
            session.forget(entry.database)  # a buffered snapshot of one no longer watched
        return snap, flight

    def _attach_texts(self, snap: pb.Snapshot, top: Sequence[int],
                      session: _Session) -> tuple[int, ...]:
        attached: list[int] = []
        for queryid in dict.fromkeys([*top, *sorted(self.texts.wanted)]):
            wanted = queryid in self.texts.wanted
            if queryid in session.sent_texts and not wanted:
                continue
            text = self.texts.get(queryid)
            if text is None:
                continue
            snap.statement_texts.append(text)
            attached.append(queryid)
            self.texts.unwant(queryid)
        session.sent_texts.update(attached)
        if attached:
            _set_section(snap, pb.SECTION_STATEMENT_TEXTS, len(attached))
        return tuple(attached)

    async def _send(self, call: grpc.aio.StreamStreamCall[pb.Snapshot, ingest_pb2.Ack],
                    session: _Session, entry: state.Entry) -> None:
        snap, flight = self.complete(entry, session)
        chunks = snapshots.split(snap)
        session.split_into(flight, chunks[0])
        session.in_flight[entry.sequence] = flight
        for chunk in chunks:
            await call.write(chunk)
            self.metrics.chunks_sent.inc()
            self.metrics.bytes_sent.inc(chunk.ByteSize())
        self.metrics.snapshots_sent.inc()
        if flight.catalog_hash is not None:
            self.metrics.catalogs_sent.inc()
        self.metrics.statement_texts_sent.inc(len(flight.texts))
        log.debug("snapshot sent", extra={"sequence": entry.sequence, "chunks": len(chunks)})

    async def _read_acks(self, call: grpc.aio.StreamStreamCall[pb.Snapshot, ingest_pb2.Ack],
                         session: _Session) -> None:
        while True:
            ack = await call.read()
            if not isinstance(ack, ingest_pb2.Ack):  # grpc.aio.EOF: the analyser closed
                return
            self.handle_ack(ack, session)

    def handle_ack(self, ack: ingest_pb2.Ack, session: _Session) -> None:
        """Apply one Ack to the buffer and to what this stream has carried."""
        status = _STATUS_NAMES.get(ack.status, "unknown")
        self.metrics.acks.labels(status).inc()
        session.changed_only = ack.understands_changed_only_statements
        flight = session.in_flight.pop(ack.sequence, None)
        if flight is not None and ack.status != ingest_pb2.ACK_STATUS_ACCEPTED:
            session.unmark(flight)
        elif flight is not None:
            session.acked(ack.sequence, flight)
        database = self._database_of(ack.sequence, flight)
        if ack.want_full_statements:
            if database is None:
                session.statements.clear()
            else:
                session.want_full_statements(ack.sequence, database)
        for queryid in ack.want_statement_texts:
            self.texts.want(queryid, database or "")
            session.sent_texts.discard(queryid)
        if ack.want_catalog:
            # The analyser keeps a catalog per database: send again that snapshot's one.
            if database is None:
                session.catalogs.clear()
            else:
                session.catalogs.pop(database, None)
        if ack.status in (ingest_pb2.ACK_STATUS_ACCEPTED, ingest_pb2.ACK_STATUS_DUPLICATE):
            session.retry_backoff.reset()
            self.buffer.remove(ack.sequence)
        elif ack.status == ingest_pb2.ACK_STATUS_RETRY:
            self._retry(ack, session)
        elif ack.status == ingest_pb2.ACK_STATUS_REJECTED:
            if self.buffer.remove(ack.sequence) is not None:
                self.metrics.snapshots_dropped.labels("rejected").inc()
            log.warning("analyser rejected a snapshot", extra={"sequence": ack.sequence,
                                                               "reason": ack.message})
        self.metrics.buffered.set(len(self.buffer))
        self.buffer.changed.set()

    def _database_of(self, sequence: int, flight: _InFlight | None) -> str | None:
        """The database of an acked sequence (None when neither this stream nor the buffer
        knows it any more)."""
        if flight is not None:
            return flight.database
        entry = self.buffer.get(sequence)
        return entry.database if entry is not None else None

    def _retry(self, ack: ingest_pb2.Ack, session: _Session) -> None:
        entry = self.buffer.get(ack.sequence)
        if entry is None:
            return
        if self.buffer.newest_sequence() > ack.sequence:
            self.buffer.remove(ack.sequence)
            self.metrics.snapshots_dropped.labels("superseded").inc()
            return
        entry.not_before = time.monotonic() + session.retry_backoff.next_delay()
        log.info("analyser asked to retry a snapshot", extra={"sequence": ack.sequence,
                                                              "reason": ack.message})
