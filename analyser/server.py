"""The ingest server: ``MetricsIngest.Stream`` over grpc.aio, with ``grpc.health.v1``.

Where it sits: collectors stream Snapshot chunks here; :class:`Assembler` puts the chunks of
one sequence back together (``startupmonkey.snapshots.merge``), :class:`IngestServicer`
hands the snapshot to the engine, publishes what is due and answers one ``Ack`` per
sequence, in order (docs/protocol.md, "Acks, buffering, reconnects").

Defensive by design, because the stream is the analyser's only input:

- Messages are limited to ``MAX_MESSAGE_BYTES`` (``GRPC_MESSAGE_SIZE_OPTIONS``). A larger
  request ends the stream with RESOURCE_EXHAUSTED and is counted (``oversized``); gRPC lets
  up to :data:`RECEIVE_LIMIT` through to the handler so it can count, and refuses anything
  larger itself.
- Requests are taken as raw bytes and decoded here, so bytes that are not a Snapshot end the
  stream with INVALID_ARGUMENT and are counted (``undecodable``) instead of failing inside
  gRPC.
- A snapshot that can never apply (wrong monitor, more than ``MAX_CHUNKS_PER_SNAPSHOT``
  chunks, inconsistent chunks) is answered REJECTED; one with chunks missing or out of order
  RETRY. Nothing else of the stream is affected.
- Memory per stream is bounded: at most one sequence's chunks are buffered, and statement
  texts (kept for the life of the stream) are capped by count and bytes, oldest first out.
  The number of streams is bounded too: at most :data:`MAX_CONCURRENT_RPCS` RPCs run at once
  (gRPC refuses more with RESOURCE_EXHAUSTED), and keepalive pings reap the streams of
  collectors that vanished without closing them (:data:`KEEPALIVE_OPTIONS`), so such
  streams cannot hold the slots.
- A collector that vanishes mid-stream cancels the handler (counted as ``cancelled`` also
  when the request stream ends first, or with a sequence incomplete); its partial chunks and
  texts are dropped with it and the next stream starts clean.
- With a token (``ingest_token_file``, a mounted Secret) every stream must present it as
  ``authorization: Bearer <token>`` metadata, compared in constant time; anything else ends
  with UNAUTHENTICATED before a byte is read (counted ``unauthenticated``), so a pod past the
  NetworkPolicy can neither forge snapshots nor hold the stream slots. An unreadable token
  file refuses every stream (fail closed).
- A stream that sends nothing for :attr:`IngestServicer.idle_timeout` seconds (five intervals,
  at least a minute) ends with DEADLINE_EXCEEDED (counted ``idle``): an open, silent stream
  cannot hold one of the few slots for ever.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Final

import grpc
import grpc.aio
from google.protobuf import message as protobuf_message

from startupmonkey import aio, grpcserve, observability, settings, snapshots
from startupmonkey.analyser import engine, metrics
from startupmonkey.models import messages
from startupmonkey.v1 import ingest_pb2, limits, snapshot_pb2

log = logging.getLogger(__name__)
Status = ingest_pb2.AckStatus
SERVICE: Final = ingest_pb2.DESCRIPTOR.services_by_name["MetricsIngest"].full_name
MAX_TEXTS: Final = 10_000
"""Statement texts kept per stream."""
MAX_TEXT_BYTES: Final = 32 * limits.MIB
"""Bytes of statement text kept per stream."""
RECEIVE_LIMIT: Final = 2 * limits.MAX_MESSAGE_BYTES
"""What gRPC itself lets through, so that a message over ``MAX_MESSAGE_BYTES`` reaches the
handler, which refuses it with RESOURCE_EXHAUSTED and counts it (gRPC refusing it silently
would end the stream in a way the handler cannot tell from a normal close). Anything over
this is refused by gRPC with the same status, uncounted."""
STOP_GRACE: Final = 5.0
"""Seconds open streams get to finish on shutdown."""
ANSWERED_MEMORY: Final = 16
"""Sequences given up on per stream whose stray later chunks are still recognised."""
MIN_IDLE_TIMEOUT: Final = 60.0
"""A stream silent this long (or five intervals, when longer) is ended."""
MAX_CONCURRENT_RPCS: Final = 4
"""RPCs served at once (collector streams and grpc.health.v1 calls); gRPC refuses more with
RESOURCE_EXHAUSTED before any handler runs. One monitor has one collector: one stream, two
while a rollout overlaps, and room for a health check and for a stream whose collector
vanished until keepalive reaps it. Total stream memory is thus at most this many times one
stream's bound (one sequence's chunks, at most ``MAX_CHUNKS_PER_SNAPSHOT`` x
``MAX_MESSAGE_BYTES``, plus :data:`MAX_TEXT_BYTES` of texts)."""
KEEPALIVE_OPTIONS: Final = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)
"""The server pings an idle connection every 30 s and drops it when a ping is not answered
within 10 s: a collector that vanished without closing its stream (node lost, network cut)
frees its slot of :data:`MAX_CONCURRENT_RPCS` in well under a minute instead of when TCP
gives up (hours)."""

Context = grpc.aio.ServicerContext[Any, Any]
Publish = Callable[[messages.Detection], Awaitable[bool]]


class TextStore:
    """Statement texts of one stream by queryid, bounded (oldest out first)."""

    def __init__(self, max_items: int = MAX_TEXTS, max_bytes: int = MAX_TEXT_BYTES) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.texts: collections.OrderedDict[int, snapshot_pb2.StatementText] = (
            collections.OrderedDict())
        self.bytes = 0

    def add(self, items: Iterable[snapshot_pb2.StatementText]) -> None:
        """Keep new texts (a re-sent queryid replaces the old text)."""
        for item in items:
            old = self.texts.pop(item.queryid, None)
            if old is not None:
                self.bytes -= _size(old)
            kept = snapshot_pb2.StatementText()
            kept.CopyFrom(item)  # the snapshot it came in is trimmed once it is history
            self.texts[item.queryid] = kept
            self.bytes += _size(kept)
        while self.texts and (len(self.texts) > self.max_items or self.bytes > self.max_bytes):
            _, dropped = self.texts.popitem(last=False)
            self.bytes -= _size(dropped)

    def __len__(self) -> int:
        return len(self.texts)


def _size(text: snapshot_pb2.StatementText) -> int:
    return len(text.text.encode())


@dataclasses.dataclass(frozen=True)
class Answer:
    """An Ack to send without applying anything, and the refusal reason to count."""

    ack: ingest_pb2.Ack
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Complete:
    """All chunks of one sequence, merged."""

    snapshot: snapshot_pb2.Snapshot


class Assembler:
    """Chunk reassembly for one stream: at most one sequence is buffered at a time."""

    def __init__(self, monitor: settings.MonitorRef,
                 is_duplicate: Callable[[str, int], bool]) -> None:
        self.monitor = monitor
        self.is_duplicate = is_duplicate
        self.pending: list[snapshot_pb2.Snapshot] = []
        #: Recently answered sequences whose later chunks are ignored (a re-send starts at 0).
        self.answered: collections.deque[int] = collections.deque(maxlen=ANSWERED_MEMORY)

    def push(self, chunk: snapshot_pb2.Snapshot) -> list[Answer | Complete]:
        """Take one chunk; returns what to answer or apply, in order."""
        seq = chunk.sequence
        if seq in self.answered:
            if chunk.chunk_index > 0:
                return []  # the rest of a sequence already answered
            self.answered.remove(seq)  # a re-send starts at chunk 0
        out: list[Answer | Complete] = []
        if self.pending and self.pending[0].sequence != seq:
            first = self.pending[0]
            out.append(self._give_up(first.sequence, Status.ACK_STATUS_RETRY,
                                     f"incomplete: {len(self.pending)} of {first.chunk_count} "
                                     "chunks arrived", "incomplete"))
        problem = self._invalid(chunk)
        if problem is not None:
            out.append(self._give_up(seq, Status.ACK_STATUS_REJECTED, problem[1], problem[0]))
            return out
        if self.is_duplicate(chunk.collector_id, seq):
            if chunk.chunk_index == chunk.chunk_count - 1:
                out.append(_answer(seq, Status.ACK_STATUS_DUPLICATE, "already applied"))
            return out
        return out + self._collect(chunk)

    def _collect(self, chunk: snapshot_pb2.Snapshot) -> list[Answer | Complete]:
        seq = chunk.sequence
        if chunk.chunk_index != len(self.pending):
            expected = len(self.pending)
            return [self._give_up(seq, Status.ACK_STATUS_RETRY,
                                  f"chunk {chunk.chunk_index} arrived, chunk {expected} "
                                  "expected", "out_of_order")]
        self.pending.append(chunk)
        if len(self.pending) < chunk.chunk_count:
            return []
        chunks, self.pending = self.pending, []
        try:
            return [Complete(snapshots.merge(chunks))]
        except snapshots.ChunkError as exc:
            return [_answer(seq, Status.ACK_STATUS_REJECTED, str(exc), "bad_chunks")]

    def _give_up(self, sequence: int, status: ingest_pb2.AckStatus.ValueType, message: str,
                 reason: str) -> Answer:
        """Answer a sequence now: drop its buffered chunks and ignore the rest of them."""
        self.pending = []
        self.answered.append(sequence)
        return _answer(sequence, status, message, reason)

    def _invalid(self, chunk: snapshot_pb2.Snapshot) -> tuple[str, str] | None:
        """(reason, message) when the chunk can never apply."""
        ref = chunk.monitor
        if (ref.namespace, ref.name) != (self.monitor.namespace, self.monitor.name):
            return ("wrong_monitor", f"snapshot for monitor {ref.namespace}/{ref.name}; this "
                    f"analyser serves {self.monitor.namespace}/{self.monitor.name}")
        if not 1 <= chunk.chunk_count <= limits.MAX_CHUNKS_PER_SNAPSHOT:
            return ("chunk_count", f"chunk_count {chunk.chunk_count} outside "
                    f"1..{limits.MAX_CHUNKS_PER_SNAPSHOT}")
        if chunk.chunk_index >= chunk.chunk_count:
            return ("chunk_index", f"chunk_index {chunk.chunk_index} >= chunk_count "
                    f"{chunk.chunk_count}")
        if not chunk.collector_id or chunk.sequence < 1:
            return ("envelope", "collector_id and a sequence >= 1 are required")
        return None


def _answer(sequence: int, status: ingest_pb2.AckStatus.ValueType, message: str,
            reason: str = "") -> Answer:
    return Answer(ingest_pb2.Ack(sequence=sequence, status=status, message=message,
                                 understands_changed_only_statements=True), reason)


_STATUS_NAMES: Final = {
    Status.ACK_STATUS_ACCEPTED: "accepted", Status.ACK_STATUS_DUPLICATE: "duplicate",
    Status.ACK_STATUS_RETRY: "retry", Status.ACK_STATUS_REJECTED: "rejected"}


class IngestServicer:
    """``MetricsIngest.Stream``: chunks in, one Ack per sequence out."""

    def __init__(self, core: engine.Engine, publish: Publish, meters: metrics.Metrics,
                 monitor: settings.MonitorRef, *, token_file: Path | None = None,
                 idle_timeout: float = MIN_IDLE_TIMEOUT) -> None:
        self.engine = core
        self.publish = publish
        self.meters = meters
        self.monitor = monitor
        self.token_file = token_file
        self.idle_timeout = idle_timeout
        self._texts_held: dict[int, int] = {}
        self._refusal_log = observability.RateLimitedLog(log)

    def handler(self) -> grpc.GenericRpcHandler[bytes, ingest_pb2.Ack]:
        """The generic handler serving the Stream method on raw request bytes."""
        method = grpc.stream_stream_rpc_method_handler(
            self.stream, request_deserializer=None,
            response_serializer=ingest_pb2.Ack.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE, {"Stream": method})

    async def stream(self, requests: AsyncIterator[bytes], context: Context
                     ) -> AsyncIterator[ingest_pb2.Ack]:
        """One collector stream."""
        await self._authenticate(context)
        assembler = Assembler(self.monitor, self.engine.is_duplicate)
        texts = TextStore()
        how = "closed"
        self.meters.streams.inc()
        try:
            incoming = aiter(requests)
            while (raw := await self._next(incoming, context)) is not None:
                for item in assembler.push(await self._decode(raw, context)):
                    yield await self._handle(item, texts)
                self._hold(texts)
            # A client that goes away mid-stream may end the request iterator before the
            # cancellation reaches this handler: still a vanished collector, not a close.
            if context.cancelled() or assembler.pending:
                how = "cancelled"
        except asyncio.CancelledError:
            how = "cancelled"  # the collector went away (or we are stopping)
            raise
        except grpc.aio.AbortError:
            how = "refused"
            raise
        except Exception:
            how = "failed"
            log.exception("ingest stream failed")
            raise
        finally:
            self._texts_held.pop(id(texts), None)
            self._hold(None)
            self.meters.streams.dec()
            self.meters.stream_ends.labels(how).inc()

    async def _authenticate(self, context: Context) -> None:
        """Refuse the stream unless it presents the token (when there is one)."""
        if self.token_file is None:
            return
        try:
            expected = self.token_file.read_text().strip()
        except OSError as exc:
            expected = ""
            log.error("cannot read the ingest token file %s (%s): refusing every stream",
                      self.token_file, exc.strerror)
        presented = dict(context.invocation_metadata() or ()).get("authorization", "")
        wanted = f"Bearer {expected}"
        if not expected or not hmac.compare_digest(str(presented).encode(), wanted.encode()):
            self._refused("unauthenticated", "a stream without the ingest token")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "this analyser takes streams from its own collector only")

    async def _next(self, incoming: AsyncIterator[bytes], context: Context) -> bytes | None:
        """The next request, None at the end; a stream silent for too long is ended."""
        try:
            return await aio.within(anext(incoming), self.idle_timeout)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            self._refused("idle", f"a stream silent for {self.idle_timeout:.0f} s")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"nothing received for {self.idle_timeout:.0f} s")
            raise  # abort() raises; this line is for the type checker

    async def _decode(self, raw: bytes, context: Context) -> snapshot_pb2.Snapshot:
        if len(raw) > limits.MAX_MESSAGE_BYTES:
            self._refused("oversized", f"message of {len(raw)} bytes over MAX_MESSAGE_BYTES "
                          f"({limits.MAX_MESSAGE_BYTES})")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"message larger than {limits.MAX_MESSAGE_BYTES} bytes")
        try:
            return snapshot_pb2.Snapshot.FromString(raw)
        except protobuf_message.DecodeError as exc:
            self._refused("undecodable", f"{len(raw)} bytes that are not a Snapshot: {exc}")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "message is not a startupmonkey.v1.Snapshot")
            raise  # abort() raises; this line is for the type checker

    async def _handle(self, item: Answer | Complete, texts: TextStore) -> ingest_pb2.Ack:
        if isinstance(item, Answer):
            if item.reason:
                self._refused(item.reason, item.ack.message)
            self.meters.snapshots.labels(_STATUS_NAMES[item.ack.status]).inc()
            return item.ack
        snapshot = item.snapshot
        texts.add(snapshot.statement_texts)
        try:
            applied = self.engine.apply(snapshot, texts.texts)
        except Exception as exc:  # a bug must cost one snapshot, not the stream
            log.exception("could not apply snapshot %d", snapshot.sequence)
            applied = engine.Applied(Status.ACK_STATUS_REJECTED, f"analyser error: {exc}")
        for occurrence, detection in applied.due:
            if await self.publish(detection):
                self.engine.published(occurrence)
        self.meters.snapshots.labels(_STATUS_NAMES[applied.status]).inc()
        if applied.status == Status.ACK_STATUS_REJECTED:
            self._refused("rejected", applied.message)
        return applied.ack(snapshot.sequence)

    def _refused(self, reason: str, message: str) -> None:
        self.meters.refused.labels(reason).inc()
        self._refusal_log.warning(reason, "refused an ingest message (%s): %s", reason, message)

    def _hold(self, texts: TextStore | None) -> None:
        if texts is not None:
            self._texts_held[id(texts)] = len(texts)
        self.meters.statement_texts.set(sum(self._texts_held.values()))


def server_options() -> list[tuple[str, int]]:
    """GRPC_MESSAGE_SIZE_OPTIONS with the receive limit raised to :data:`RECEIVE_LIMIT`,
    plus :data:`KEEPALIVE_OPTIONS`."""
    receive = "grpc.max_receive_message_length"
    options = [(k, v) for k, v in limits.GRPC_MESSAGE_SIZE_OPTIONS if k != receive]
    return [*options, (receive, RECEIVE_LIMIT), *KEEPALIVE_OPTIONS]


class IngestServer(grpcserve.Server):
    """The grpc.aio server (:mod:`startupmonkey.grpcserve`): MetricsIngest plus
    grpc.health.v1, at most :data:`MAX_CONCURRENT_RPCS` RPCs at once, :data:`STOP_GRACE`
    seconds for open streams on stop. ``start(address)`` listens on host:port (port 0 picks
    one) or unix:///path and returns the bound port."""

    def __init__(self, servicer: IngestServicer,
                 max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS) -> None:
        super().__init__(lambda s: s.add_generic_rpc_handlers((servicer.handler(),)),
                         (SERVICE,), options=server_options(),
                         maximum_concurrent_rpcs=max_concurrent_rpcs, stop_grace=STOP_GRACE)
        self.servicer = servicer
