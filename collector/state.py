"""What the collector keeps between rounds: the snapshot buffer, statement texts, catalogs.

The collection loop (:mod:`source`, :mod:`service`) produces snapshots *without* statement
texts and catalog; the stream (:mod:`stream`) attaches those when it sends a snapshot, because
both travel "once per stream" and only the sender knows what the current stream has carried.
These three stores sit between the two:

- :class:`SnapshotBuffer`: unacknowledged snapshots, oldest first, bounded; overflow drops the
  oldest and counts it (``CollectorStatus.dropped_snapshots``).
- :class:`TextStore`: normalized texts by queryid (bounded, least recently used out), plus the
  queryids the analyser asked for in ``Ack.want_statement_texts``.
- :class:`CatalogStore`: the last catalogs of one database by hash, so a buffered snapshot
  re-sent after a reconnect can still carry the catalog its ``catalog_hash`` names;
  :class:`Catalogs` holds one per watched database and finds a catalog by hash among them.

With several databases the texts are shared (a queryid names the same normalized statement
whichever database ran it, and the analyser keeps texts per stream), but a queryid the
analyser asks for is read only in the database whose snapshot's Ack asked for it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol

from startupmonkey.v1 import snapshot_pb2 as pb


@dataclasses.dataclass
class Entry:
    """One buffered snapshot and what the sender needs to complete it."""

    snapshot: pb.Snapshot
    """The round's snapshot, without statement texts and catalog."""
    top_queryids: tuple[int, ...] = ()
    """Statements that matter this round: their texts go out once per stream."""
    not_before: float = 0.0
    """Loop time before which it is not (re-)sent (after a RETRY ack)."""
    size: int = dataclasses.field(default=-1, compare=False)
    """Serialized bytes of :attr:`snapshot` (computed when buffered)."""
    database: str = ""
    """The watched database it is of (the login's dbname): per-database stream state (the
    catalog carried, texts asked for) is kept under this name."""

    @property
    def sequence(self) -> int:
        """Snapshot.sequence."""
        return self.snapshot.sequence


BUFFER_BYTES: Final = 32 * 1024 * 1024
"""Serialized bytes of unacknowledged snapshots kept at most (with ``bufferSnapshots``): at
5,000 tables and 5,000 statements a snapshot is about 4.5 MB, so 30 of them would hold 135 MB
(several times that as objects) while the analyser is away. The newest is always kept."""


class SnapshotBuffer:
    """Unacknowledged snapshots in sequence order, at most ``capacity`` of them and at most
    ``max_bytes`` serialized (the oldest go first; the newest always stays)."""

    def __init__(self, capacity: int, on_drop: Callable[[Entry, str], None],
                 max_bytes: int = BUFFER_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.dropped = 0
        self.bytes = 0
        self._entries: collections.OrderedDict[int, Entry] = collections.OrderedDict()
        self._on_drop = on_drop
        self.changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def add(self, entry: Entry) -> None:
        """Append, dropping the oldest while over capacity or over ``max_bytes``."""
        if entry.size < 0:
            entry.size = entry.snapshot.ByteSize()
        replaced = self._entries.get(entry.sequence)
        if replaced is not None:  # the same sequence again: it keeps its place
            self.bytes -= replaced.size
        self._entries[entry.sequence] = entry
        self.bytes += entry.size
        self._trim()
        self.changed.set()

    def resize(self, capacity: int) -> None:
        """A new capacity (hot reload); drops the oldest when it shrank."""
        self.capacity = capacity
        self._trim()

    def _trim(self) -> None:
        while len(self._entries) > self.capacity or (
                len(self._entries) > 1 and self.bytes > self.max_bytes):
            _, oldest = self._entries.popitem(last=False)
            self.bytes -= oldest.size
            self.dropped += 1
            self._on_drop(oldest, "buffer_full")

    def get(self, sequence: int) -> Entry | None:
        """The entry of a sequence, if still buffered."""
        return self._entries.get(sequence)

    def remove(self, sequence: int) -> Entry | None:
        """Forget a sequence (acked, rejected or superseded)."""
        entry = self._entries.pop(sequence, None)
        if entry is not None:
            self.bytes -= entry.size
        return entry

    def newest_sequence(self) -> int:
        """Largest buffered sequence, 0 when empty."""
        return next(reversed(self._entries), 0)

    def sequences(self) -> list[int]:
        """Buffered sequences, oldest first."""
        return list(self._entries)


@dataclasses.dataclass(frozen=True)
class StoredCatalog:
    """A catalog as read, with the server time of the read and the section's wall time."""

    catalog: pb.Catalog
    collected_at: datetime.datetime
    duration: float


class CatalogLookup(Protocol):
    """What the stream needs of the catalogs: one by hash."""

    def get(self, catalog_hash: str) -> StoredCatalog | None:
        """The catalog with this hash, if still kept."""


class CatalogStore:
    """The most recent catalogs of one database by hash (a few: buffered snapshots may name
    an older one)."""

    def __init__(self, keep: int = 3) -> None:
        self._by_hash: collections.OrderedDict[str, StoredCatalog] = collections.OrderedDict()
        self._keep = keep
        self.activity: str | None = None
        """Catalog row-change counters when last checked (queries.CATALOG_ACTIVITY)."""
        self.fingerprint: str | None = None
        """Server-side digest the latest catalog was read at (queries.CATALOG_FINGERPRINT)."""
        self.read_at: float | None = None
        """Loop time of the latest full read (a full read is forced every few minutes)."""

    def put(self, stored: StoredCatalog) -> None:
        """Remember a catalog (the newest becomes :attr:`latest`)."""
        self._by_hash.pop(stored.catalog.hash, None)
        self._by_hash[stored.catalog.hash] = stored
        while len(self._by_hash) > self._keep:
            self._by_hash.popitem(last=False)

    def get(self, catalog_hash: str) -> StoredCatalog | None:
        """The catalog with this hash, if still kept."""
        return self._by_hash.get(catalog_hash)

    @property
    def latest(self) -> StoredCatalog | None:
        """The most recently read catalog."""
        return next(reversed(self._by_hash.values()), None)

    def forget(self) -> None:
        """After a reconnect to a possibly different server: read everything again."""
        self.activity = None
        self.fingerprint = None
        self.read_at = None


class Catalogs:
    """One :class:`CatalogStore` per watched database; a catalog found by hash in any of them
    (the stream's :class:`CatalogLookup`). Each database keeps its own few, so every buffered
    snapshot of every database can still carry the catalog it names."""

    def __init__(self) -> None:
        self._stores: dict[str, CatalogStore] = {}

    def store(self, database: str) -> CatalogStore:
        """The store of ``database`` (created empty the first time)."""
        return self._stores.setdefault(database, CatalogStore())

    def drop(self, database: str) -> None:
        """Forget a database no longer watched."""
        self._stores.pop(database, None)

    def get(self, catalog_hash: str) -> StoredCatalog | None:
        """The catalog with this hash in any database's store."""
        for store in self._stores.values():
            found = store.get(catalog_hash)
            if found is not None:
                return found
        return None


class TextStore:
    """Statement texts by queryid, and the queryids the analyser asked for."""

    def __init__(self, capacity: int = 2000) -> None:
        self.capacity = capacity
        self._texts: collections.OrderedDict[int, pb.StatementText] = collections.OrderedDict()
        self.wanted: set[int] = set()
        """Queryids named in Ack.want_statement_texts and not attached to a snapshot yet."""
        self._wanted_in: dict[int, str] = {}
        """The database whose snapshot's Ack asked for a wanted queryid (none, or "": any)."""

    def __contains__(self, queryid: int) -> bool:
        return queryid in self._texts

    def get(self, queryid: int) -> pb.StatementText | None:
        """The text of a queryid (marks it recently used)."""
        text = self._texts.get(queryid)
        if text is not None:
            self._texts.move_to_end(queryid)
        return text

    def put(self, text: pb.StatementText) -> None:
        """Remember a text, evicting the least recently used beyond capacity."""
        self._texts[text.queryid] = text
        self._texts.move_to_end(text.queryid)
        while len(self._texts) > self.capacity:
            self._texts.popitem(last=False)

    def want(self, queryid: int, database: str = "") -> None:
        """The analyser asked for this text on a snapshot of ``database``."""
        self.wanted.add(queryid)
        self._wanted_in[queryid] = database

    def unwant(self, queryid: int) -> None:
        """A wanted text went out on the stream."""
        self.wanted.discard(queryid)
        self._wanted_in.pop(queryid, None)

    def missing(self, queryids: Iterable[int], database: str | None = None) -> list[int]:
        """Which of ``queryids`` (and of the wanted ones of ``database``; every wanted one
        when None) have no text here yet."""
        wanted = sorted(q for q in self.wanted
                        if database is None or self._wanted_in.get(q, "") in ("", database))
        needed = dict.fromkeys([*queryids, *wanted])
        return [q for q in needed if q not in self._texts]

    def give_up(self, queryids: Iterable[int]) -> None:
        """Wanted queryids pg_stat_statements no longer has: stop asking the database."""
        for queryid in queryids:
            self.unwant(queryid)

    def forget_database(self, database: str) -> None:
        """A database is no longer watched: stop wanting what only it could give."""
        for queryid in [q for q, name in self._wanted_in.items() if name == database]:
            self.unwant(queryid)
