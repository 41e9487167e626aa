"""Size limits of the gRPC contracts, agreed by both ends of every stream.

The collector splits a snapshot into chunks so that no message comes near gRPC's message-size
limit; the analyser refuses what is larger than these limits promise; the executor pages its
listings. ``proto/startupmonkey/v1/snapshot.proto`` states the same numbers in its header
comment, and ``tests/unit/test_proto_stubs.py`` keeps the two in step.

Invariant: ``CHUNK_TARGET_BYTES + MAX_ITEM_BYTES + ENVELOPE_RESERVE_BYTES <= MAX_MESSAGE_BYTES``.
A chunk is closed before it would pass ``CHUNK_TARGET_BYTES``, so it holds at most the target
plus one item plus the envelope (identity, sequence, chunk numbers).
"""

from __future__ import annotations

from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB

GRPC_DEFAULT_MAX_RECEIVE_BYTES: Final = 4 * MIB
"""gRPC's default limit on a received message (``grpc.max_receive_message_length``)."""

MAX_MESSAGE_BYTES: Final = GRPC_DEFAULT_MAX_RECEIVE_BYTES
"""Largest message either end sends or accepts; set explicitly on both ends (see
``GRPC_MESSAGE_SIZE_OPTIONS``) so a changed gRPC default cannot break the stream."""

CHUNK_TARGET_BYTES: Final = 1 * MIB
"""The collector starts a new chunk before a chunk's serialized size would pass this."""

MAX_ITEM_BYTES: Final = 256 * KIB
"""Largest serialized single repeated element (a table, a session, a statement text...) after
its text fields are cut to the limits below; a larger item is dropped and its section is
reported as truncated."""

ENVELOPE_RESERVE_BYTES: Final = 64 * KIB
"""Room kept for the envelope fields repeated in every chunk and for first-chunk fields."""

MAX_CHUNKS_PER_SNAPSHOT: Final = 64
"""The analyser rejects a snapshot announcing more chunks (bounds its memory per snapshot to
about ``MAX_CHUNKS_PER_SNAPSHOT * MAX_MESSAGE_BYTES``)."""

MAX_STATEMENT_TEXT_BYTES: Final = 64 * KIB
"""``StatementText.text`` is cut to this many UTF-8 bytes (``truncated`` set)."""

MAX_SESSION_QUERY_BYTES: Final = 4 * KIB
"""``Session.query`` is cut to this many UTF-8 bytes (``query_truncated`` set)."""

MAX_DEFINITION_BYTES: Final = 16 * KIB
"""Catalog definition, expression and predicate texts are cut to this many UTF-8 bytes."""

LIST_PAGE_SIZE_DEFAULT: Final = 50
"""``Executor.ListRemediations`` page size when the request asks for 0."""

LIST_PAGE_SIZE_MAX: Final = 200
"""Largest ``Executor.ListRemediations`` page; larger requests are capped. A Remediation is a
few KiB to a few tens of KiB (its evidence, with statement texts of up to
``MAX_STATEMENT_TEXT_BYTES``, comes twice: in ``evidence_json`` and in ``object_json``), so a
page of this many can pass ``MAX_MESSAGE_BYTES``: the executor ends a page earlier, before its
serialized size would pass about 3 MiB (``executor/api.py`` ``PAGE_TARGET_BYTES``), and a
reader that still gets RESOURCE_EXHAUSTED (an older executor) asks again for fewer."""

GRPC_MESSAGE_SIZE_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
"""Channel and server options every StartupMonkey gRPC client and server passes."""
