"""Chunking of ``Snapshot`` messages, shared by both ends of ``MetricsIngest.Stream``.

The collector calls :func:`split` on every snapshot it sends; the analyser calls
:func:`merge` on the chunks of one sequence it received. Both are pure functions of proto
messages (no I/O), so each end's tests can use them with hand-built snapshots.

The rules are the ones ``snapshot.proto`` and ``docs/protocol.md`` state, with the numbers of
:mod:`startupmonkey.v1.limits`:

- ENVELOPE fields (monitor .. catalog_hash) are copied into every chunk; ``chunk_index`` and
  ``chunk_count`` number the chunks 0..n-1.
- FIRST-CHUNK fields (collector, database_stats, settings, statements_info) are in chunk 0
  only.
- Every repeated ITEM (tables .. index_builds and the four lists inside ``catalog``) is in
  exactly one chunk, in its original order, so protobuf ``MergeFrom`` of the chunks in index
  order rebuilds the snapshot; ``catalog.hash`` is repeated in every chunk carrying catalog
  items (and chunk 0 carries a catalog that has no items at all, so "catalog sent" survives).
- A chunk is closed before its serialized size would pass ``target_bytes``; an item larger
  than the target travels alone, so a chunk holds at most target + one item + envelope.
- An item over ``MAX_ITEM_BYTES`` is dropped, and so is everything that would need a chunk
  beyond ``MAX_CHUNKS_PER_SNAPSHOT``; the item's section is then reported TRUNCATED in
  ``collector.sections`` with the count, because absence of an item must not look like proof
  (a missing table is not a dropped table).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Final

from google.protobuf import message as pb_message

from startupmonkey.v1 import limits
from startupmonkey.v1 import snapshot_pb2 as pb

ENVELOPE_FIELDS: Final = ("monitor", "collector_id", "sequence", "collected_at", "database",
                          "catalog_hash")
"""Copied into every chunk (chunk_index and chunk_count are set per chunk)."""

FIRST_CHUNK_FIELDS: Final = ("collector", "database_stats", "settings", "statements_info")
"""Present in chunk 0 only."""

ITEM_SECTIONS: Final[dict[str, int]] = {
    "tables": pb.SECTION_TABLES,
    "indexes": pb.SECTION_INDEXES,
    "statements": pb.SECTION_STATEMENTS,
    "statement_texts": pb.SECTION_STATEMENT_TEXTS,
    "sessions": pb.SECTION_SESSIONS,
    "lock_waits": pb.SECTION_LOCK_WAITS,
    "replication_slots": pb.SECTION_REPLICATION_SLOTS,
    "prepared_xacts": pb.SECTION_PREPARED_XACTS,
    "vacuum_progress": pb.SECTION_VACUUM_PROGRESS,
    "index_builds": pb.SECTION_INDEX_BUILDS,
}
"""Repeated item fields of Snapshot, in wire order, and the section each belongs to."""

CATALOG_ITEM_FIELDS: Final = ("relations", "columns", "indexes", "constraints")
"""Repeated item fields inside Snapshot.catalog (section CATALOG)."""

# Room kept in chunk 0 for the truncation notes added to collector.sections after packing.
_STATUS_NOTE_RESERVE = 4 * limits.KIB
# chunk_index and chunk_count (tag + varint each, counts below 2**14).
_CHUNK_NUMBERS_BYTES = 6
# Snapshot.catalog tag (field 30: 2 bytes) + length varint (<= 5 bytes).
_CATALOG_WRAPPER_BYTES = 7


class ChunkError(ValueError):
    """The chunks of one sequence do not form a complete, consistent snapshot."""


@dataclasses.dataclass(frozen=True)
class _Item:
    """One repeated element to place: where it lives and how many bytes it adds."""

    field: str
    catalog: bool
    message: pb_message.Message
    size: int
    cost: int


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _field_cost(container: pb_message.Message, field: str, size: int) -> int:
    """Bytes one length-delimited element of ``field`` takes on the wire: tag, length, body."""
    number = container.DESCRIPTOR.fields_by_name[field].number
    return _varint_size(number << 3) + _varint_size(size) + size


def _items(snapshot: pb.Snapshot) -> list[_Item]:
    found: list[_Item] = []
    for field in ITEM_SECTIONS:
        for element in getattr(snapshot, field):
            size = element.ByteSize()
            found.append(_Item(field, False, element, size, _field_cost(snapshot, field, size)))
    if snapshot.HasField("catalog"):
        for field in CATALOG_ITEM_FIELDS:
            for element in getattr(snapshot.catalog, field):
                size = element.ByteSize()
                cost = _field_cost(snapshot.catalog, field, size)
                found.append(_Item(field, True, element, size, cost))
    return found


def _has_field(message: pb_message.Message, field: str) -> bool:
    """``HasField`` by a name computed at run time (the typed stubs want literals)."""
    return message.HasField(field)


def _envelope(snapshot: pb.Snapshot) -> pb.Snapshot:
    chunk = pb.Snapshot()
    for field in ENVELOPE_FIELDS:
        descriptor = snapshot.DESCRIPTOR.fields_by_name[field]
        if descriptor.message_type is not None:
            if _has_field(snapshot, field):
                getattr(chunk, field).CopyFrom(getattr(snapshot, field))
        else:
            setattr(chunk, field, getattr(snapshot, field))
    return chunk


def _first_chunk_part(snapshot: pb.Snapshot) -> pb.Snapshot:
    part = pb.Snapshot()
    for field in FIRST_CHUNK_FIELDS:
        descriptor = snapshot.DESCRIPTOR.fields_by_name[field]
        if descriptor.is_repeated:
            getattr(part, field).extend(getattr(snapshot, field))
        elif _has_field(snapshot, field):
            getattr(part, field).CopyFrom(getattr(snapshot, field))
    return part


def _section_of(item: _Item) -> int:
    return pb.SECTION_CATALOG if item.catalog else ITEM_SECTIONS[item.field]


def _pack(items: Sequence[_Item], envelope_bytes: int, first_bytes: int,
          target_bytes: int, catalog_hash_bytes: int) -> list[list[_Item]]:
    """Greedy packing in order: close a chunk before it would pass the target."""
    chunks: list[list[_Item]] = [[]]
    used = envelope_bytes + first_bytes + _STATUS_NOTE_RESERVE
    has_catalog = False
    for item in items:
        extra = item.cost
        if item.catalog and not has_catalog:
            extra += _CATALOG_WRAPPER_BYTES + catalog_hash_bytes
        if chunks[-1] and used + extra > target_bytes:
            chunks.append([])
            used, has_catalog = envelope_bytes, False
            extra = item.cost + (_CATALOG_WRAPPER_BYTES + catalog_hash_bytes
                                 if item.catalog else 0)
        chunks[-1].append(item)
        used += extra
        has_catalog = has_catalog or item.catalog
    return chunks


def _note_drops(status: pb.CollectorStatus, dropped: dict[int, int], why: str) -> None:
    """Mark each section that lost items TRUNCATED, with the count and the reason."""
    for section, count in dropped.items():
        entry = next((s for s in status.sections if s.section == section), None)
        if entry is None:
            entry = status.sections.add(section=section)
        if entry.state in (pb.SECTION_STATE_OK, pb.SECTION_STATE_UNSPECIFIED):
            entry.state = pb.SECTION_STATE_TRUNCATED
        entry.items = max(0, entry.items - count)
        note = f"{count} item(s) dropped: {why}"
        entry.message = f"{entry.message}; {note}" if entry.message else note


def _count_by_section(items: Iterable[_Item]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for item in items:
        section = _section_of(item)
        counts[section] = counts.get(section, 0) + 1
    return counts


def split(snapshot: pb.Snapshot,
          target_bytes: int = limits.CHUNK_TARGET_BYTES) -> list[pb.Snapshot]:
    """The chunks of ``snapshot`` (a single chunk when it fits), numbered 0..n-1.

    ``snapshot`` is not modified. Oversized items and items beyond
    ``MAX_CHUNKS_PER_SNAPSHOT`` chunks are left out and reported in chunk 0's
    ``collector.sections`` as TRUNCATED.
    """
    envelope = _envelope(snapshot)
    first = _first_chunk_part(snapshot)
    all_items = _items(snapshot)
    items = [i for i in all_items if i.size <= limits.MAX_ITEM_BYTES]
    oversized = _count_by_section(i for i in all_items if i.size > limits.MAX_ITEM_BYTES)
    hash_bytes = len(snapshot.catalog.hash.encode()) + 2
    packed = _pack(items, envelope.ByteSize() + _CHUNK_NUMBERS_BYTES, first.ByteSize(),
                   target_bytes, hash_bytes)
    overflow = _count_by_section(i for c in packed[limits.MAX_CHUNKS_PER_SNAPSHOT:] for i in c)
    packed = packed[:limits.MAX_CHUNKS_PER_SNAPSHOT]
    if oversized:
        _note_drops(first.collector, oversized,
                    f"larger than MAX_ITEM_BYTES ({limits.MAX_ITEM_BYTES})")
    if overflow:
        _note_drops(first.collector, overflow,
                    f"beyond MAX_CHUNKS_PER_SNAPSHOT ({limits.MAX_CHUNKS_PER_SNAPSHOT})")
    return [_build_chunk(snapshot, envelope, first if index == 0 else None, chunk_items,
                         index, len(packed))
            for index, chunk_items in enumerate(packed)]


def _build_chunk(snapshot: pb.Snapshot, envelope: pb.Snapshot, first: pb.Snapshot | None,
                 items: Sequence[_Item], index: int, count: int) -> pb.Snapshot:
    chunk = pb.Snapshot()
    chunk.CopyFrom(envelope)
    chunk.chunk_index, chunk.chunk_count = index, count
    if first is not None:
        chunk.MergeFrom(first)
        if snapshot.HasField("catalog"):
            chunk.catalog.hash = snapshot.catalog.hash  # "catalog sent", even when empty
    for item in items:
        if item.catalog:
            chunk.catalog.hash = snapshot.catalog.hash
            getattr(chunk.catalog, item.field).append(item.message)
        else:
            getattr(chunk, item.field).append(item.message)
    return chunk


def _check_chunk(chunk: pb.Snapshot, reference: pb.Snapshot, index: int) -> None:
    if chunk.chunk_index != index:
        raise ChunkError(f"sequence {reference.sequence}: chunk {index} missing "
                         f"(got chunk_index {chunk.chunk_index})")
    if chunk.chunk_count != reference.chunk_count:
        raise ChunkError(f"sequence {reference.sequence}: chunk {index} says chunk_count "
                         f"{chunk.chunk_count}, chunk 0 says {reference.chunk_count}")
    for field in ENVELOPE_FIELDS:
        if getattr(chunk, field) != getattr(reference, field):
            raise ChunkError(f"sequence {reference.sequence}: chunk {index} has a different "
                             f"envelope field {field}")
    if index > 0:
        present = [f for f in FIRST_CHUNK_FIELDS if _has(chunk, f)]
        if present:
            raise ChunkError(f"sequence {reference.sequence}: chunk {index} carries "
                             f"first-chunk field(s) {', '.join(present)}")


def _has(message: pb.Snapshot, field: str) -> bool:
    value: Any = getattr(message, field)
    if message.DESCRIPTOR.fields_by_name[field].is_repeated:
        return len(value) > 0
    return _has_field(message, field)


def merge(chunks: Sequence[pb.Snapshot]) -> pb.Snapshot:
    """The snapshot the chunks of one sequence describe (``chunk_index`` 0, ``chunk_count`` 1).

    ``chunks`` may arrive in any order but must be complete: exactly ``chunk_count`` chunks
    numbered 0..n-1 with identical envelopes, first-chunk fields only in chunk 0, and at most
    ``MAX_CHUNKS_PER_SNAPSHOT``. Raises :class:`ChunkError` otherwise.
    """
    if not chunks:
        raise ChunkError("no chunks")
    ordered = sorted(chunks, key=lambda c: c.chunk_index)
    reference = ordered[0]
    count = reference.chunk_count
    if count < 1 or count > limits.MAX_CHUNKS_PER_SNAPSHOT:
        raise ChunkError(f"sequence {reference.sequence}: chunk_count {count} outside "
                         f"1..{limits.MAX_CHUNKS_PER_SNAPSHOT}")
    if len(ordered) != count:
        raise ChunkError(f"sequence {reference.sequence}: {len(ordered)} chunk(s) of {count}")
    merged = pb.Snapshot()
    for index, chunk in enumerate(ordered):
        _check_chunk(chunk, reference, index)
        merged.MergeFrom(chunk)
    merged.chunk_index, merged.chunk_count = 0, 1
    return merged


def total_items(snapshot: pb.Snapshot) -> int:
    """Number of repeated items in a snapshot or chunk (for logs and tests)."""
    return len(_items(snapshot))
