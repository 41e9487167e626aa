"""A short history of one database's snapshots, and deltas and rates from cumulative counters.

Where it sits: the ingest server (``server.py``) hands every complete snapshot to the engine
(``engine.py``), which adds it to the :class:`History` of its database and gives the detectors
a :class:`Window` over it.

Rules (docs/protocol.md, "Cumulative counters"):

- A rate is the difference of a counter between two snapshots divided by the difference of
  *their own* sample times (the section's ``collected_at``, else the snapshot's), so a dropped
  or late snapshot only widens the window; it never corrupts a rate.
- Counters belong to a *series*. A new series starts, and no delta crosses it, when the
  server incarnation changes (``system_identifier``, ``datid`` or ``postmaster_start_time``:
  the whole history is dropped), when ``pg_stat_database.stats_reset`` changes (database,
  table and index counters), when ``pg_stat_statements_info.stats_reset`` or ``dealloc``
  changes (statement counters), when an entry may have been evicted and re-created in
  between (``dealloc`` grew and the entry was missing from a sample in between; PG17: its
  ``stats_since`` is newer than the base), and when any counter of an item goes down.
- A section that is missing from a snapshot (not listed, or not OK/TRUNCATED) is unknown, not
  empty: its items are absent from that sample and the sample is never used as a base for it.
- An item's delta over at least ``over`` seconds is from the newest sample that old that has
  it; none when no sample that old has it or that delta breaks a rule above. With
  ``longest`` (statements, tables), an item left without one so, when a sample that old
  exists, takes the first valid delta from the younger samples that have it, oldest first.

Memory is bounded: at most :data:`MAX_SAMPLES` samples, thinned evenly over the retention
period the thresholds need (longest window), and at most :data:`MAX_BYTES` per database. Only
the newest sample is a whole snapshot. An older sample keeps, of its tables, indexes and
statements, only the counters and gauges in :data:`KEPT` (what deltas and "how long has this
held" scans read), one compact array per field (:class:`Columns`): a few dozen bytes per item
instead of a protobuf message; of the rest, the envelope, collector status, database counters,
settings and pg_stat_statements_info. The keys of those items are held once per history
(:class:`KeyTable`); a sample holds the row of each key's id (:class:`KeyIndex`), shared with
the sample before when the keys are the same, and :attr:`History.sample_bytes` counts each of
those once. Reading any other field of an older sample raises AttributeError, so a detector
that starts to need one fails its tests until it is added here. When the collector sends
changed-only statement reads, the history also keeps the newest values of every entry (the
view: :attr:`History.view_bytes`), bounded on its own by :data:`MAX_CHANGED_ONLY_RUN`.
"""

from __future__ import annotations

import array
import dataclasses
import datetime
import functools
import heapq
import operator
import sys
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar

from google.protobuf import descriptor

from startupmonkey.analyser import findings
from startupmonkey.v1 import snapshot_pb2

S = snapshot_pb2.Section
OK = snapshot_pb2.SectionState.SECTION_STATE_OK
TRUNCATED = snapshot_pb2.SectionState.SECTION_STATE_TRUNCATED
# Plain ints: an attribute of the protobuf enum wrapper costs a Python call every time, and
# the delta helpers look these up once per item and sample.
_DATABASE: Final = int(S.SECTION_DATABASE)
_TABLES: Final = int(S.SECTION_TABLES)
_INDEXES: Final = int(S.SECTION_INDEXES)
_STATEMENTS: Final = int(S.SECTION_STATEMENTS)

MAX_SAMPLES: Final = 60
"""Samples kept per database; older ones are thinned so the rest stay evenly spread."""
KEEP_NEWEST: Final = 4
"""The newest samples are never thinned (short deltas use them)."""
MAX_BYTES: Final = 64 * 1024 * 1024
"""Bytes of samples kept per database (:attr:`History.sample_bytes`: what dropping samples can
free); the oldest go first beyond this. The statements view is bounded on its own
(:data:`MAX_CHANGED_ONLY_RUN`)."""
MAX_CHANGED_ONLY_RUN: Final = 20
"""Changed-only statement samples (:attr:`Sample.changed_only`) a history reads in a row after
its last full statement sample; the next one is not read (its statements forgotten, the full
set asked for: :attr:`History.unreadable_statements` ``run_too_long``). It bounds the view of
the newest statement values (:attr:`History.view_bytes`): one full set and at most this many
copies of changed entries, whatever a collector sends. Twice the collector's
``STATEMENTS_FULL_EVERY`` (10, collector/stream.py; not imported: the components are
independent), so an honest collector, which sends the full set every 10 reads, never meets it.
"""
MIN_RETENTION: Final = 300.0
"""Seconds of history kept at least, whatever the thresholds say."""

#: Sections whose items only the newest sample keeps.
_NEWEST_ONLY: Final = (
    (S.SECTION_SESSIONS, "sessions"),
    (S.SECTION_LOCK_WAITS, "lock_waits"),
    (S.SECTION_REPLICATION_SLOTS, "replication_slots"),
    (S.SECTION_PREPARED_XACTS, "prepared_xacts"),
    (S.SECTION_VACUUM_PROGRESS, "vacuum_progress"),
    (S.SECTION_INDEX_BUILDS, "index_builds"),
    (S.SECTION_STATEMENT_TEXTS, "statement_texts"),
    (S.SECTION_CATALOG, "catalog"),
)

KEPT: Final[Mapping[str, tuple[str, ...]]] = {
    "tables": (
        # deltas: statements.TABLE_FIELDS and the cache-hit ratio (database.py)
        "seq_scan", "seq_tup_read", "n_tup_ins", "n_tup_upd", "n_tup_del",
        "heap_blks_hit", "heap_blks_read", "idx_blks_hit", "idx_blks_read",
        # "since when": dead rows over the autovacuum trigger, rows the statistics missed
        "n_dead_tup", "n_live_tup", "reltuples", "reloptions",
        "vacuum_count", "autovacuum_count", "analyze_count", "autoanalyze_count",
    ),
    "indexes": ("idx_scan", "idx_tup_read", "idx_tup_fetch"),
    "statements": ("calls", "total_exec_time_ms", "rows", "shared_blks_hit",
                   "shared_blks_read", "temp_blks_written"),
}
"""The fields of each item section that older (slim) samples keep."""


class _Unknown:
    """The epoch of a sample whose statistics section is missing."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
StatementKey = tuple[int, int, int, bool | None]


@dataclasses.dataclass(frozen=True)
class Identity:
    """Which server incarnation and database the counters belong to."""

    system_identifier: int
    datid: int
    postmaster_start_time: datetime.datetime | None

    @classmethod
    def of(cls, snapshot: snapshot_pb2.Snapshot) -> Identity | None:
        """None when the snapshot names no database (the collector could not connect)."""
        db = snapshot.database
        if db.system_identifier == 0 and db.datid == 0:
            return None
        start = (findings.when(db.postmaster_start_time)
                 if db.HasField("postmaster_start_time") else None)
        return cls(db.system_identifier, db.datid, start)


class Sample:
    """One complete (merged) snapshot with the per-section facts history needs."""

    def __init__(self, snapshot: snapshot_pb2.Snapshot) -> None:
        self.snapshot = snapshot
        self.collected_at = findings.when(snapshot.collected_at)
        self.identity = Identity.of(snapshot)
        complete: set[int] = set()
        partial: set[int] = set()
        self.section_at: dict[int, datetime.datetime] = {}
        if not snapshot.collector.connection_error:
            for status in snapshot.collector.sections:
                if status.state not in (OK, TRUNCATED):
                    continue
                (complete if status.state == OK else partial).add(status.section)
                self.section_at[status.section] = (
                    findings.when(status.collected_at) if status.HasField("collected_at")
                    else self.collected_at)
        self.complete = frozenset(complete)
        self.partial = frozenset(partial)
        self.db_epoch: object = (
            _stamp(snapshot.database_stats, "stats_reset")
            if self.present(S.SECTION_DATABASE) else UNKNOWN)
        info = snapshot.statements_info
        statements = self.present(S.SECTION_STATEMENTS) and info.available
        self.stmt_epoch: object = _stamp(info, "stats_reset") if statements else UNKNOWN
        self.dealloc = info.dealloc if statements and info.HasField("dealloc") else None
        self.changed_only = statements and info.unchanged_omitted > 0
        """The statements are only the entries that changed since the collector's stream last
        carried them (``StatementsInfo.unchanged_omitted``): an absent entry is unchanged
        since the newest earlier sample that has it, back to the last full statement sample
        (no entry disappears in a changed-only read: the collector sends the full set then)."""
        self.moved: frozenset[StatementKey] | None = None
        """The statement entries that changed since the statement sample before (set by
        :meth:`History.add`); None: unknown, any may have."""
        self.view: Mapping[StatementKey, snapshot_pb2.StatementStats] | None = None
        """Every entry with its newest values (:attr:`Window.statements`), held by the
        newest statement sample only."""
        self._absorbed: Columns[StatementKey] | None = None
        self.slim = False
        self._maps: dict[str, Mapping[Any, Any]] = {}
        self.size = snapshot.ByteSize()
        """What the sample costs in bytes: the serialized snapshot while whole; once slim, the
        compact values (and the rest of the snapshot), not the key indexes, which samples
        share: :attr:`History.sample_bytes` counts each of those, and the key tables, once."""

    def present(self, section: int) -> bool:
        """True when the section was collected (completely or truncated) in this sample."""
        return section in self.complete or section in self.partial

    def time_of(self, section: int) -> datetime.datetime:
        """The sample time of a section's counters (its own ``collected_at``)."""
        return self.section_at.get(section, self.collected_at)

    def forget_statements(self) -> None:
        """Make this sample one of a round that did not read pg_stat_statements (the
        section not listed, no entries, no ``statements_info``): what :meth:`History.add`
        does with a changed-only sample it cannot read (see
        :attr:`History.unreadable_statements`). Before the sample is added."""
        snapshot = self.snapshot
        kept = [s for s in snapshot.collector.sections if s.section != S.SECTION_STATEMENTS]
        del snapshot.collector.sections[:]
        snapshot.collector.sections.extend(kept)
        snapshot.ClearField("statements")
        snapshot.ClearField("statements_info")
        self.complete -= {S.SECTION_STATEMENTS}
        self.partial -= {S.SECTION_STATEMENTS}
        self.section_at.pop(S.SECTION_STATEMENTS, None)
        self.stmt_epoch, self.dealloc, self.changed_only = UNKNOWN, None, False
        self._maps.pop("statements", None)
        self.size = snapshot.ByteSize()

    def make_slim(self, previous: Sample | None = None,
                  keys: Mapping[str, KeyTable[Any]] | None = None) -> None:
        """Drop what only the newest sample needs and keep of the items only :data:`KEPT`, in
        :class:`Columns` (bounded memory). ``previous``: the slim sample before this one, whose
        key index is shared when the keys are the same (they usually are); ``keys``: the
        history's :class:`KeyTable` of each item section (default: ``previous``'s)."""
        if self.slim:
            return
        for newest_only, _ in _NEWEST_ONLY:
            self.complete -= {newest_only}
            self.partial -= {newest_only}
        size = 0
        self.view = None
        for name, section in _ITEM_SECTIONS:
            if self.present(section):
                before = previous._maps.get(name) if previous is not None else None
                columns = Columns.of(
                    getattr(self.snapshot, name), _KEYS[name], KEPT[name],
                    before if isinstance(before, Columns) else None,
                    keys[name] if keys is not None else None)
                if name == "statements" and self._absorbed is not None:
                    columns = Columns.merged(self._absorbed, columns)
                    self._absorbed = None
                self._maps[name] = columns
                size += columns.nbytes
            else:
                self._maps.pop(name, None)
        self.snapshot = _without_items(self.snapshot)
        self.slim = True
        self.size = size + self.snapshot.ByteSize() + self._own_bytes()

    def _own_bytes(self) -> int:
        """Bytes of the sample's own Python objects (itself, its attributes, the sets and times
        of its sections): a few kilobytes, which a slim sample of a small database is mostly."""
        identity = self.identity
        objects = [self, self.__dict__, self.complete, self.partial, self.section_at,
                   *self.section_at.values(), self._maps, self.collected_at, self.db_epoch,
                   self.stmt_epoch, self.dealloc, identity, getattr(identity, "__dict__", None),
                   self.snapshot]
        if identity is not None:
            objects += [identity.system_identifier, identity.datid,
                        identity.postmaster_start_time]
        return sum(_allocated(sys.getsizeof(o)) for o in objects
                   if o is not None and o is not UNKNOWN)

    def key_indexes(self) -> list[KeyIndex[Any]]:
        """The key indexes of the slim sample's columns (shared with other samples or not)."""
        return [m.index for m in self._maps.values() if isinstance(m, Columns)]

    def _map(self, name: str, section: int, build: Callable[[], Mapping[Any, Any]]
             ) -> Mapping[Any, Any]:
        if not self.present(section):
            return {}
        if name not in self._maps:
            self._maps[name] = build()
        return self._maps[name]

    @property
    def tables(self) -> Mapping[int, snapshot_pb2.TableStats]:
        """Tables by relid (empty when the section is missing)."""
        return self._map("tables", S.SECTION_TABLES,
                         lambda: {t.relid: t for t in self.snapshot.tables})

    @property
    def indexes(self) -> Mapping[int, snapshot_pb2.IndexStats]:
        """Indexes by indexrelid (empty when the section is missing)."""
        return self._map("indexes", S.SECTION_INDEXES,
                         lambda: {i.indexrelid: i for i in self.snapshot.indexes})

    @property
    def statements(self) -> Mapping[StatementKey, snapshot_pb2.StatementStats]:
        """pg_stat_statements entries by (queryid, userid, dbid, toplevel): the ones this
        sample carries (only the changed ones when :attr:`changed_only`; every entry with its
        newest values: :attr:`Window.statements`)."""
        return self._map("statements", S.SECTION_STATEMENTS, self._own_statements)

    def _own_statements(self) -> Mapping[StatementKey, Any]:
        own: dict[StatementKey, Any] = {statement_key(s): s for s in self.snapshot.statements}
        if self._absorbed is None:
            return own
        return {**{k: self._absorbed[k] for k in self._absorbed if k not in own}, **own}

    def absorb(self, older: Sample) -> bool:
        """``older``, the statement sample before this one, is being dropped: this one now
        follows the one before ``older``, so what moved since then is what moved in either;
        when this one is changed-only it also takes over the entries of ``older`` that it
        does not carry (an absent entry here means "unchanged since ``older``"), and its
        being full or not. False when there is nothing to take (a different series)."""
        if (older.stmt_epoch != self.stmt_epoch or not older.present(_STATEMENTS)
                or older.stmt_epoch is UNKNOWN):
            return False
        self.moved = (None if self.moved is None or older.moved is None
                      else self.moved | older.moved)
        if not self.changed_only:
            return True
        theirs = older.statements
        if not isinstance(theirs, Columns):
            return False  # only the newest sample is whole, and it is newer than this one
        if self.slim:
            ours = self._maps.get("statements")
            if isinstance(ours, Columns):
                self._maps["statements"] = merged = Columns.merged(theirs, ours)
                self.size += merged.nbytes - ours.nbytes
        else:
            self._absorbed = (theirs if self._absorbed is None
                              else Columns.merged(theirs, self._absorbed))
            self._maps.pop("statements", None)
            self.size += theirs.nbytes
        self.changed_only = older.changed_only
        return True


def statement_key(s: snapshot_pb2.StatementStats) -> StatementKey:
    """The identity of a pg_stat_statements entry."""
    return (s.queryid, s.userid, s.dbid, s.toplevel if s.HasField("toplevel") else None)


_ITEM_SECTIONS: Final = (("tables", _TABLES), ("indexes", _INDEXES),
                         ("statements", _STATEMENTS))
_KEYS: Final[Mapping[str, Callable[[Any], Hashable]]] = {
    "tables": operator.attrgetter("relid"),
    "indexes": operator.attrgetter("indexrelid"),
    "statements": statement_key,
}
_TYPECODES: Final = {
    descriptor.FieldDescriptor.CPPTYPE_INT32: "q", descriptor.FieldDescriptor.CPPTYPE_INT64: "q",
    descriptor.FieldDescriptor.CPPTYPE_UINT32: "Q",
    descriptor.FieldDescriptor.CPPTYPE_UINT64: "Q",
    descriptor.FieldDescriptor.CPPTYPE_DOUBLE: "d", descriptor.FieldDescriptor.CPPTYPE_FLOAT: "d",
    descriptor.FieldDescriptor.CPPTYPE_BOOL: "b",
}
_NO_OPTIONS: Final[Mapping[str, str]] = {}
_WIDTHS: Final = (("b", -(2**7), 2**7 - 1), ("h", -(2**15), 2**15 - 1),
                  ("i", -(2**31), 2**31 - 1))


def _narrowest(code: str, column: Sequence[Any]) -> str:
    """The smallest array type code that holds every integer of ``column`` (counters of a
    small database fit in 1, 2 or 4 bytes); doubles stay doubles."""
    if code not in ("q", "Q") or not column:
        return code
    low, high = min(column), max(column)
    for narrow, smallest, largest in _WIDTHS:
        if smallest <= low and high <= largest:
            return narrow
    return code


class KeyTable(Generic[K]):
    """The keys of one item section in the slim samples of a history, each held once: a key
    gets a small id the first time a sample has it, keeps it while any :class:`KeyIndex` has
    it, and loses it (the id is reused) when the last index that had it is gone. So a new
    sample whose keys differ from the one before (the top statements come and go) costs
    an array of ids, not a dict of new key objects, and the table holds no more keys than
    the samples still alive. Released when the index is garbage (``KeyIndex.__del__``), never
    earlier, so an index a detector still holds (an older window) reads right; the release
    itself waits for the next :meth:`collect`."""

    __slots__ = ("_free", "_released", "holders", "ids", "key_bytes", "keys")

    def __init__(self) -> None:
        self.ids: dict[K, int] = {}
        """The id of each key held."""
        self.keys: list[K | None] = []
        """The key of each id (None: free)."""
        self.holders: list[int] = []
        """How many live indexes have each id."""
        self.key_bytes = 0
        """Bytes of the key objects and their ids (:func:`_deep_size`)."""
        self._free: list[int] = []  # a heap: the lowest ids first, so arrays by id stay short
        self._released: list[array.array[int]] = []

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, keys: Sequence[K]) -> tuple[KeyIndex[K], list[int]]:
        """A new index of ``keys`` (in this order; a repeated key, never sent, gets the row of
        its first place and its last values) and the row of each of ``keys``."""
        self.collect()
        ids, holders = self.ids, self.holders
        rows: dict[int, int] = {}
        order = []
        for k in keys:
            i = ids.get(k)
            if i is None:
                i = self._add(k)
            row = rows.get(i)
            if row is None:
                row = rows[i] = len(rows)
                holders[i] += 1
            order.append(row)
        return KeyIndex(self, list(rows)), order

    def _add(self, key: K) -> int:
        if self._free:
            i = heapq.heappop(self._free)
            self.keys[i] = key
        else:
            i = len(self.keys)
            self.keys.append(key)
            self.holders.append(0)
        self.ids[key] = i
        self.key_bytes += _deep_size(key) + _deep_size(i)
        return i

    def collect(self) -> None:
        """Forget the keys that no live index has any more."""
        while self._released:
            for i in self._released.pop():
                left = self.holders[i] - 1
                self.holders[i] = left
                if not left:
                    key = self.keys[i]
                    del self.ids[key]  # type: ignore[arg-type]
                    self.keys[i] = None
                    self.key_bytes -= _deep_size(key) + _deep_size(i)
                    heapq.heappush(self._free, i)
        if not self.ids and self.keys:  # nothing held (a new server incarnation): start over
            self.keys, self.holders, self._free = [], [], []

    @property
    def nbytes(self) -> int:
        """Bytes of the table: the dict, the keys and ids, the lists by id."""
        self.collect()
        return (_allocated(sys.getsizeof(self.ids)) + self.key_bytes
                + _allocated(sys.getsizeof(self.keys))
                + _allocated(sys.getsizeof(self.holders))
                + _allocated(sys.getsizeof(self._free)))


class KeyIndex(Generic[K]):
    """Which row of a slim sample's :class:`Columns` holds each key: the row of each key's id
    in :attr:`rows` (ids of a :class:`KeyTable`), in the narrowest unsigned type. Shared by
    consecutive samples with the same keys. A few bytes per key: the keys are in the table."""

    __slots__ = ("absent", "ids", "rows", "table")

    def __init__(self, table: KeyTable[K], ids: Sequence[int]) -> None:
        self.table = table
        top = max(ids) + 1 if ids else 0
        code = "H" if max(top, len(ids)) < 0xFFFF else "I"
        self.ids = array.array(code, ids)
        """The id of each row."""
        self.absent = 2 ** (8 * self.ids.itemsize) - 1
        """The row of an id this index does not have (beyond every row: reading it fails)."""
        rows = array.array(code, [self.absent]) * top
        for row, i in enumerate(ids):
            rows[i] = row
        self.rows = rows
        """The row of each id (:attr:`absent`: not here); ids beyond its end are not here."""

    def __del__(self) -> None:
        self.table._released.append(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def order(self, keys: Sequence[object]) -> list[int] | None:
        """The rows of ``keys`` when they are exactly this index's keys (any order), else
        None: the sample can share the index."""
        if len(keys) != len(self.ids):
            return None
        ids, rows = self.table.ids, self.rows
        try:
            order = [rows[ids[k]] for k in keys]  # type: ignore[index]
        except (KeyError, IndexError):
            return None
        if self.absent in order or len(set(order)) != len(order):
            return None
        return order

    @property
    def nbytes(self) -> int:
        """Bytes of the index (its two arrays and itself)."""
        return (_allocated(sys.getsizeof(self.ids))
                + _allocated(sys.getsizeof(self.rows))
                + _allocated(sys.getsizeof(self)))


class Columns(Mapping[K, "Row"], Generic[K]):
    """The :data:`KEPT` fields of one item section of a slim sample: one array per number
    field, the row of each key in :attr:`index`, and map fields (``reloptions``) only for the
    items where they are not empty. Read like the mapping of messages it replaces: ``key in
    columns``, ``columns[key].field``; :meth:`reader` reads several fields of many keys fast."""

    __slots__ = ("_absent", "_ids", "_rows", "arrays", "index", "maps", "nbytes")

    def __init__(self, index: KeyIndex[K], arrays: Mapping[str, array.array[Any]],
                 maps: Mapping[str, Mapping[int, Mapping[str, str]]], nbytes: int) -> None:
        self.index = index
        self._ids: dict[Any, int] = index.table.ids
        self._rows, self._absent = index.rows, index.absent
        self.arrays = arrays
        self.maps = maps
        self.nbytes = nbytes
        """Bytes of the kept values (arrays and maps, and the objects holding them); the key
        index and the key table are counted once per history (:attr:`History.sample_bytes`)."""

    @classmethod
    def of(cls, items: Sequence[Any], key: Callable[[Any], K], fields: Sequence[str],
           previous: Columns[K] | None = None, table: KeyTable[K] | None = None
           ) -> Columns[K]:
        """The columns of ``items`` (protobuf messages, all of one type). ``previous``: the
        columns of the sample before; its key index is shared when the keys are the same.
        ``table``: the history's keys of this section (default: those of ``previous``)."""
        keys = [key(item) for item in items]
        if table is None:
            table = previous.index.table if previous is not None else KeyTable()
        shared = (previous.index.order(keys) if previous is not None
                  and previous.index.table is table else None)
        if previous is not None and shared is not None:
            index, order = previous.index, shared
        else:
            index, order = table.index(keys)
        if not items:
            return cls(index, {}, {}, 0).counted()
        message = items[0].DESCRIPTOR
        numbers = [f for f in fields
                   if message.fields_by_name[f].cpp_type in _TYPECODES
                   and not _is_map(message.fields_by_name[f])]
        maps = [f for f in fields if f not in numbers]
        rows = len(index)
        arrays: dict[str, array.array[Any]] = {}
        if numbers:
            read = _reader(numbers)
            values = list(zip(*(read(item) for item in items), strict=True))
            in_order = rows == len(order) and order == list(range(rows))
            for name, column in zip(numbers, values, strict=True):
                code = _narrowest(_TYPECODES[message.fields_by_name[name].cpp_type], column)
                if in_order:  # the usual case: one C call per field
                    arrays[name] = array.array(code, column)
                    continue
                kept = array.array(code, bytes(array.array(code).itemsize * rows))
                for row, value in zip(order, column, strict=True):
                    kept[row] = value
                arrays[name] = kept
        kept_maps: dict[str, Mapping[int, Mapping[str, str]]] = {}
        for name in maps:
            per_row: dict[int, Mapping[str, str]] = {}
            for row, item in zip(order, items, strict=True):  # the last of a key wins
                value = getattr(item, name)
                if len(value):
                    per_row[row] = dict(value)
                else:
                    per_row.pop(row, None)
            kept_maps[name] = per_row
        nbytes = sum(_allocated(sys.getsizeof(a)) for a in arrays.values())
        nbytes += sum(_allocated(sys.getsizeof(m)) + sum(
            _allocated(sys.getsizeof(v)) + sum(
                _allocated(sys.getsizeof(x)) for kv in v.items() for x in kv)
            for v in m.values()) for m in kept_maps.values())
        return cls(index, arrays, kept_maps, nbytes).counted()

    @classmethod
    def merged(cls, older: Columns[K], newer: Columns[K]) -> Columns[K]:
        """The entries of both, ``newer``'s values where both have a key (number fields
        only: what statements keep). In ``newer``'s key table."""
        table = newer.index.table
        only_old = [k for k in older if k not in newer]
        if not only_old:
            return newer
        keys = [*only_old, *newer]
        index, order = table.index(keys)
        names = list(newer.arrays) if newer.index else list(older.arrays)
        arrays: dict[str, array.array[Any]] = {}
        for name in names:
            old_read, new_read = older.reader([name]), newer.reader([name])
            column = [old_read(k)[0] for k in only_old] + [new_read(k)[0] for k in newer]
            wide = "d" if "d" in (older.arrays.get(name, array.array("q")).typecode,
                                  newer.arrays.get(name, array.array("q")).typecode) else "q"
            code = _narrowest(wide, column)
            kept = array.array(code, bytes(array.array(code).itemsize * len(index)))
            for row, value in zip(order, column, strict=True):
                kept[row] = value
            arrays[name] = kept
        nbytes = sum(_allocated(sys.getsizeof(a)) for a in arrays.values())
        return cls(index, arrays, {}, nbytes).counted()

    def counted(self) -> Columns[K]:
        """Add to :attr:`nbytes` the objects holding the values (this one, its dicts)."""
        self.nbytes += sum(_allocated(sys.getsizeof(o)) for o in (self, self.arrays, self.maps))
        return self

    def _row(self, key: object) -> int:
        """The row of ``key``, -1 when not here."""
        i = self._ids.get(key)
        if i is None:
            return -1
        try:
            row: int = self._rows[i]
        except IndexError:  # an id given after this index was made
            return -1
        return -1 if row == self._absent else row

    def __getitem__(self, key: K) -> Row:
        row = self._row(key)
        if row < 0:
            raise KeyError(key)
        return Row(self, row)

    def get(self, key: K, default: Any = None) -> Any:
        i = self._ids.get(key)  # _row, inlined: the most frequent lookup
        if i is None:
            return default
        try:
            row = self._rows[i]
        except IndexError:
            return default
        return default if row == self._absent else Row(self, row)

    def __contains__(self, key: object) -> bool:
        return self._row(key) >= 0

    def __iter__(self) -> Iterator[K]:
        keys = self.index.table.keys
        return (keys[i] for i in self.index.ids)  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.index)

    def having(self, keys: Iterable[K]) -> list[K]:
        """Those of ``keys`` that are here (``[k for k in keys if k in self]``, faster)."""
        get, rows, absent = self.index.table.ids.get, self.index.rows, self.index.absent
        top = len(rows)
        return [k for k in keys
                if (i := get(k)) is not None and i < top and rows[i] != absent]

    def reader(self, fields: Sequence[str]) -> Callable[[K], tuple[Any, ...]]:
        """A function reading ``fields`` of a key as one tuple (the order of ``fields``)."""
        missing = [f for f in fields if f not in self.arrays]
        if missing and self.index:
            raise AttributeError(f"older samples keep no {', '.join(missing)} (history.KEPT)")
        ids, rows = self.index.table.ids, self.index.rows
        arrays = [self.arrays[f] for f in fields] if self.index else []
        if len(arrays) == 1:
            only = arrays[0]
            return lambda key: (only[rows[ids[key]]],)

        def read(key: K) -> tuple[Any, ...]:  # a key not here: KeyError or IndexError
            row = rows[ids[key]]
            return tuple([a[row] for a in arrays])
        return read


class Row:
    """One item of :class:`Columns`, read like the message it came from (kept fields only)."""

    __slots__ = ("_columns", "_row")

    def __init__(self, columns: Columns[Any], row: int) -> None:
        self._columns = columns
        self._row = row

    def __getattr__(self, name: str) -> Any:
        columns = self._columns
        kept = columns.arrays.get(name)
        if kept is not None:
            return kept[self._row]
        if name in columns.maps:
            return columns.maps[name].get(self._row, _NO_OPTIONS)
        raise AttributeError(f"older samples keep no {name} (history.KEPT)")


_DROPPED_WHEN_SLIM: Final = frozenset(
    [field for _, field in _NEWEST_ONLY] + [name for name, _ in _ITEM_SECTIONS])


def _without_items(snapshot: snapshot_pb2.Snapshot) -> snapshot_pb2.Snapshot:
    """A copy of ``snapshot`` without the items and newest-only sections (the original, which
    the caller may still hold, is left as it is)."""
    slim = snapshot_pb2.Snapshot()
    for field, value in snapshot.ListFields():
        if field.name in _DROPPED_WHEN_SLIM:
            continue
        if field.is_repeated:
            getattr(slim, field.name).extend(value)
        elif field.message_type is not None:
            getattr(slim, field.name).CopyFrom(value)
        else:
            setattr(slim, field.name, value)
    return slim


def _allocated(size: int) -> int:
    """What an object of ``size`` bytes (``sys.getsizeof``, which counts the garbage
    collector's header) takes from the allocator: rounded up to its 16-byte blocks."""
    return -(-size // 16) * 16


def _deep_size(key: object) -> int:
    """Bytes of a key or id: an int, or a tuple of ints, bools and None (a statement's
    identity); None, bools and the small ints are shared by the interpreter: nothing."""
    if key is None or isinstance(key, bool) or (isinstance(key, int) and -5 <= key <= 256):
        return 0
    if isinstance(key, tuple):
        return _allocated(sys.getsizeof(key)) + sum(_deep_size(part) for part in key)
    return _allocated(sys.getsizeof(key))


def _entry_bytes(key: StatementKey, message: snapshot_pb2.StatementStats) -> int:
    """Python bytes of one entry of the statements view: its key and its message object
    (the message's values are counted serialized, with the copies holding them)."""
    return _deep_size(key) + _allocated(sys.getsizeof(message))


def _is_map(field: descriptor.FieldDescriptor) -> bool:
    kind = field.message_type
    return kind is not None and kind.GetOptions().map_entry


def _stamp(msg: Any, field: str) -> datetime.datetime | None:
    return findings.when(getattr(msg, field)) if msg.HasField(field) else None


@dataclasses.dataclass(frozen=True)
class Delta:
    """Counter differences between two samples and the real time between them."""

    values: Mapping[str, float]
    seconds: float
    since: datetime.datetime

    def __getitem__(self, field: str) -> float:
        return self.values[field]

    def rate(self, field: str) -> float:
        """Per second over the real elapsed time."""
        return self.values[field] / self.seconds


def _reader(fields: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A function reading ``fields`` of a message as one tuple (one C call per item)."""
    if not fields:
        raise ValueError("a delta needs at least one counter")
    if len(fields) == 1:
        one = operator.attrgetter(fields[0])
        return lambda message: (one(message),)
    return operator.attrgetter(*fields)


def _difference(old: Any, new: Any, fields: Sequence[str], old_at: datetime.datetime,
                new_at: datetime.datetime) -> Delta | None:
    seconds = (new_at - old_at).total_seconds()
    if seconds <= 0:
        return None
    values: dict[str, float] = {}
    for field in fields:
        value = float(getattr(new, field)) - float(getattr(old, field))
        if value < 0:  # the counter went down: a new series, no delta across it
            return None
        values[field] = value
    return Delta(values, seconds, old_at)


@dataclasses.dataclass
class Markers:
    """"Seen since" times of facts that do not depend on thresholds, kept across samples
    (first seen of an index, since when it is INVALID, since when a slot or a walsender
    holds the same xmin). Entries vanish with their object, so the map stays bounded."""

    since: dict[tuple[Hashable, ...], datetime.datetime] = dataclasses.field(default_factory=dict)

    def refresh(self, family: str, seen: Iterable[tuple[Hashable, ...]],
                at: datetime.datetime, complete: bool) -> None:
        """Record ``seen`` facts of a family; a complete section also forgets the others."""
        current = {(family, *fact) for fact in seen}
        for key in current:
            self.since.setdefault(key, at)
        if complete:
            for key in [k for k in self.since if k[0] == family and k not in current]:
                del self.since[key]

    def get(self, family: str, *fact: Hashable) -> datetime.datetime | None:
        """Since when a fact holds, or None if it is not known to hold."""
        return self.since.get((family, *fact))


class Window:
    """What a detector sees: the newest sample of one database, the samples behind it (same
    server incarnation), the catalog matching it, and delta helpers."""

    def __init__(self, samples: Sequence[Sample], markers: Markers,
                 catalog: snapshot_pb2.Catalog | None, catalog_complete: bool,
                 texts: Mapping[int, snapshot_pb2.StatementText] | None = None,
                 catalog_memo: dict[str, Any] | None = None) -> None:
        if not samples:
            raise ValueError("a window needs at least one sample")
        self.samples = tuple(samples)
        self.latest = samples[-1]
        self.markers = markers
        self.catalog = catalog
        self.catalog_complete = catalog_complete
        self.texts: Mapping[int, snapshot_pb2.StatementText] = texts or {}
        self.catalog_memo: dict[str, Any] = catalog_memo if catalog_memo is not None else {}
        """What detectors computed from :attr:`catalog` alone, kept while it stays the same
        catalog (see :meth:`from_catalog`)."""
        self._statement_maps: dict[datetime.datetime,
                                   tuple[Mapping[StatementKey, Any], ...] | None] = {}
        self._view = self.latest.view
        self._newest_since: object = UNKNOWN
        self._changed_only = any(s.changed_only for s in self.samples)
        self.home = True
        """The monitor's home database (the collector's login database; False: one it also
        watches, ``DatabaseIdentity.also_watched``). Cluster-wide facts
        (connections of the whole server, the oldest database's transaction age) are judged
        in its windows only, so a monitor of several databases reports them once."""

    # ---- the newest snapshot

    @property
    def snapshot(self) -> snapshot_pb2.Snapshot:
        """The newest snapshot."""
        return self.latest.snapshot

    @property
    def now(self) -> datetime.datetime:
        """Server time of the newest snapshot."""
        return self.latest.collected_at

    @property
    def dbname(self) -> str:
        """The monitored database."""
        return self.snapshot.database.dbname

    def present(self, section: int) -> bool:
        """The newest snapshot has this section (complete or truncated)."""
        return self.latest.present(section)

    def require(self, *sections: int) -> None:
        """Raise NoData unless every section is present in the newest snapshot:
        :class:`findings.NotCollected` when none of the absent ones is even listed in
        ``collector.sections`` (the collector chose not to read them this round)."""
        absent = [s for s in sections if not self.present(s)]
        if not absent:
            return
        missing = ", ".join(snapshot_pb2.Section.Name(snapshot_pb2.Section.ValueType(s))
                            for s in absent)
        listed = {status.section for status in self.snapshot.collector.sections}
        if not any(s in listed for s in absent):
            raise findings.NotCollected(f"section(s) {missing} not collected this round")
        raise findings.NoData(f"missing section(s) {missing}")

    def time_of(self, section: int) -> datetime.datetime:
        """Sample time of a section in the newest snapshot."""
        return self.latest.time_of(section)

    def from_catalog(self, name: str, compute: Callable[[snapshot_pb2.Catalog], T]) -> T:
        """``compute(catalog)``, computed once per catalog: the history keeps the result until
        a new catalog replaces this one (a catalog changes far less often than a round).
        ``compute`` must read nothing but the catalog. Needs :attr:`catalog`."""
        if self.catalog is None:
            raise ValueError("the window has no catalog")
        memo = self.catalog_memo
        if memo.get("hash") != self.catalog.hash:
            memo.clear()
            memo["hash"] = self.catalog.hash
        if name not in memo:
            memo[name] = compute(self.catalog)
        result: T = memo[name]
        return result

    @functools.cached_property
    def settings(self) -> Mapping[str, snapshot_pb2.Setting]:
        """Server settings by name from the newest sample that has them (settings change
        rarely, so a round without them keeps the previous view)."""
        for sample in reversed(self.samples):
            if sample.present(S.SECTION_SETTINGS):
                return {s.name: s for s in sample.snapshot.settings}
        return {}

    def setting_float(self, name: str, default: float) -> float:
        """A numeric setting, or ``default`` when absent or not a number."""
        setting = self.settings.get(name)
        try:
            return float(setting.setting) if setting is not None else default
        except ValueError:
            return default

    def setting_on(self, name: str, default: bool = True) -> bool:
        """A boolean setting."""
        setting = self.settings.get(name)
        return default if setting is None else setting.setting.lower() in ("on", "true", "1")

    # ---- history

    def behind(self) -> Iterator[Sample]:
        """Samples older than the newest one, newest first."""
        return reversed(self.samples[:-1])

    def database_delta(self, fields: Sequence[str], over: float | None = None) -> Delta | None:
        """pg_stat_database counter deltas: over the previous sample (``over`` None) or over
        at least ``over`` seconds; None when no sample of the same series is far enough back."""
        section = _DATABASE
        for sample in self._bases(section, "db_epoch", over):
            return _difference(sample.snapshot.database_stats, self.snapshot.database_stats,
                               fields, sample.time_of(section), self.time_of(section))
        return None

    def table_deltas(self, fields: Sequence[str], over: float | None = None,
                     only: Collection[int] | None = None, *, longest: bool = False
                     ) -> dict[int, Delta]:
        """Per-table counter deltas by relid (tables in a new series are left out); of the
        tables ``only`` names when given (the others are not computed). ``longest``: a table
        that has no delta over ``over`` (created since) gets one from the oldest younger
        sample that gives one (:meth:`_younger_bases`)."""
        out = self._item_deltas(_TABLES, "db_epoch", _tables_of, fields, over, only)
        if not longest or over is None:
            return out
        latest = self.latest.tables
        missing = {k for k in (latest if only is None else only)
                   if k in latest and k not in out}
        for base in self._younger_bases(_TABLES, "db_epoch", over):
            if not missing:
                break
            found = self._item_deltas(_TABLES, "db_epoch", _tables_of, fields, None, missing,
                                      bases=(base,))
            out.update(found)
            missing.difference_update(found)
        return out

    def index_deltas(self, fields: Sequence[str], over: float | None = None
                     ) -> dict[int, Delta]:
        """Per-index counter deltas by indexrelid."""
        return self._item_deltas(_INDEXES, "db_epoch", lambda s: s.indexes, fields, over)

    @property
    def statements(self) -> Mapping[StatementKey, snapshot_pb2.StatementStats]:
        """Every pg_stat_statements entry with its newest values, by (queryid, userid, dbid,
        toplevel), when the newest snapshot has the statements (else empty): what a full
        read would have carried, also when the collector sent only the changed entries
        (``latest.statements`` holds only those then)."""
        if self._view is None:
            return self.latest.statements
        return self._view

    def statement_deltas(self, fields: Sequence[str], over: float | None = None, *,
                         longest: bool = False) -> dict[StatementKey, Delta]:
        """Per-entry pg_stat_statements deltas of every entry of :attr:`statements` (an entry
        missing from a sample was not sent: its base is the newest earlier sample that has
        it; in a changed-only sample, it is there unchanged: see :attr:`Sample.changed_only`).
        The same answers whether the collector sent every entry or only the changed ones;
        with changed-only samples, only the entries that moved since the base are diffed.

        ``longest``: an entry that has no delta over ``over`` (none of the samples that old
        has it: first run, or evicted and run again, since then; or its delta from there is
        not valid) gets one from the oldest younger sample that gives a valid one
        (:meth:`_younger_bases`), not none: the statement detectors' recent window then
        judges a statement over all it knows of it, not over the last interval only."""
        out = (self._changed_deltas(fields, over) if self._changed_only
               else self._full_deltas(fields, over))
        if longest and over is not None:
            self._complete_from_younger(out, fields, over)
        return out

    def _complete_from_younger(self, out: dict[StatementKey, Delta], fields: Sequence[str],
                               over: float) -> None:
        """The ``longest`` part of :meth:`statement_deltas`: each entry of :attr:`statements`
        without a delta in ``out`` takes the first valid one from the younger samples, oldest
        first. The bases that would reject an entry as maybe evicted (:meth:`_maybe_evicted`:
        ``dealloc`` grew since, and a later full read lacks it) are known from one pass over
        the reads (:meth:`_lacking_since`) and skipped, as are those before a PG17 entry's
        ``stats_since`` once seen: not diffed and rejected one by one, which cost entries x
        samples x samples after a read the transport cut. The same bases as trying each
        while the statement reads' times follow the samples' order (always, but for a clock
        that went back: then ``_statements_since`` may judge ``dealloc`` from a sample other
        than the base, and this skip, which reads the base's, rejects where it accepted)."""
        missing = {k for k in self.statements if k not in out}
        younger = self._younger_bases(_STATEMENTS, "stmt_epoch", over) if missing else []
        if not younger:
            return
        view = self.statements
        dealloc = self.latest.dealloc
        lacking = (self._lacking_since(missing, younger[0].time_of(_STATEMENTS))
                   if any(b.dealloc != dealloc for b in younger) else {})
        created: dict[StatementKey, datetime.datetime] = {}
        for base in younger:
            if not missing:
                break
            at = base.time_of(_STATEMENTS)
            grown = base.dealloc != dealloc
            keys = {k for k in missing
                    if not (grown and k in lacking and at < lacking[k])
                    and not (k in created and at < created[k])}
            found = self._view_values(self.samples.index(base), keys, fields)
            valid = self._diffed(found, fields, at)
            out.update(valid)
            missing.difference_update(valid)
            for key in found.keys() - valid.keys():
                entry = view[key]
                if entry.HasField("stats_since"):
                    created[key] = findings.when(entry.stats_since)

    def _lacking_since(self, keys: Collection[StatementKey], since: datetime.datetime
                       ) -> dict[StatementKey, datetime.datetime]:
        """For each of ``keys`` that a full statement read at or after ``since`` lacks (the
        reads :meth:`_statements_since` looks at), the time of the newest such read. One
        pass, newest first; a read with the key index of the one checked before has the same
        keys and is not checked again."""
        out: dict[StatementKey, datetime.datetime] = {}
        remaining = set(keys)
        checked: object = None
        for sample in self.behind():
            if not remaining:
                break
            if not sample.present(_STATEMENTS) or sample.changed_only:
                continue
            at = sample.time_of(_STATEMENTS)
            if at < since:
                continue
            items = sample.statements
            if isinstance(items, Columns):
                if items.index is checked:
                    continue
                checked = items.index
                here = set(items.having(remaining))
            else:
                checked = None
                here = {k for k in remaining if k in items}
            for key in remaining - here:
                out[key] = at
            remaining = here
        return out

    def _full_deltas(self, fields: Sequence[str], over: float | None
                     ) -> dict[StatementKey, Delta]:
        """:meth:`statement_deltas` over samples that all carry every entry."""
        deltas = self._item_deltas(_STATEMENTS, "stmt_epoch",
                                   lambda s: s.statements, fields, over)
        latest = self.latest.statements
        return {k: d for k, d in deltas.items() if not self._maybe_evicted(k, latest[k], d)}

    def _diffed(self, olds: Mapping[StatementKey, tuple[Any, ...]], fields: Sequence[str],
                since: datetime.datetime) -> dict[StatementKey, Delta]:
        """The deltas from ``olds`` (``fields`` of entries at ``since``) to :attr:`statements`:
        none for an entry whose counter went down or that may have been evicted since."""
        seconds = (self.time_of(_STATEMENTS) - since).total_seconds()
        out: dict[StatementKey, Delta] = {}
        if seconds <= 0:
            return out
        view = self.statements
        read = _reader(fields)
        for key, old in olds.items():
            entry = view[key]
            values = [float(n) - float(o) for n, o in zip(read(entry), old, strict=True)]
            if any(v < 0 for v in values):  # a counter went down: no delta
                continue
            delta = Delta(dict(zip(fields, values, strict=True)), seconds, since)
            if not self._maybe_evicted(key, entry, delta):
                out[key] = delta
        return out

    def _changed_deltas(self, fields: Sequence[str], over: float | None
                        ) -> dict[StatementKey, Delta]:
        """:meth:`statement_deltas` over samples some of which carry only the changed entries.

        Each sample stands for every entry of its *view* (its own entries, then those of the
        statement samples before it back to the last full one). An entry that no statement
        sample after the newest base moved (:attr:`Sample.moved`) was in that base's view
        and is the same now: its delta is zero over that base, as a full read would give.
        The others are diffed as :meth:`_item_deltas` does, each base read through its view.
        """
        view = self.statements
        bases = list(self._bases(_STATEMENTS, "stmt_epoch", over))
        if not bases or not view:
            return {}
        position = {id(s): i for i, s in enumerate(self.samples)}
        first = position[id(bases[0])]
        moved: set[StatementKey] | None = set()
        for sample in self.samples[first + 1:]:
            if not sample.present(_STATEMENTS) or moved is None:
                continue
            if sample.moved is None:
                moved = None
            else:
                moved |= sample.moved
        at = self.time_of(_STATEMENTS)
        out: dict[StatementKey, Delta] = {}
        base_at = bases[0].time_of(_STATEMENTS)
        seconds = (at - base_at).total_seconds()
        if moved is not None and seconds > 0:
            zero = Delta(dict.fromkeys(fields, 0.0), seconds, base_at)
            for key in view:
                if key not in moved:
                    out[key] = zero
            self._recreated_after(out, base_at)
        todo = set(view) if moved is None else {k for k in moved if k in view}
        for base in bases:
            if not todo:
                break
            found = self._view_values(position[id(base)], todo, fields)
            todo.difference_update(found)
            out.update(self._diffed(found, fields, base.time_of(_STATEMENTS)))
        return out

    def _recreated_after(self, deltas: dict[StatementKey, Delta],
                         since: datetime.datetime) -> None:
        """Drop from ``deltas`` the entries PG17 says were created after ``since``."""
        view = self.statements
        if self._newest_since is UNKNOWN:
            stamps = [e.stats_since for e in view.values() if e.HasField("stats_since")]
            self._newest_since = (findings.when(max(stamps, key=lambda t: (t.seconds, t.nanos)))
                                  if stamps else None)
        newest = self._newest_since
        if not isinstance(newest, datetime.datetime) or newest <= since:
            return
        for key in [k for k in deltas if view[k].HasField("stats_since")
                    and findings.when(view[k].stats_since) > since]:
            del deltas[key]

    def _view_values(self, index: int, keys: Iterable[StatementKey], fields: Sequence[str]
                     ) -> dict[StatementKey, tuple[Any, ...]]:
        """``fields`` of those of ``keys`` in the view of sample ``index``: from the newest
        statement sample at or before it that has each, back to the last full one."""
        epoch = self.samples[index].stmt_epoch
        left = set(keys)
        out: dict[StatementKey, tuple[Any, ...]] = {}
        for sample in reversed(self.samples[:index + 1]):
            if not left:
                break
            if not sample.present(_STATEMENTS) or sample.stmt_epoch is UNKNOWN:
                continue
            if sample.stmt_epoch != epoch:
                break
            items = sample.statements
            if isinstance(items, Columns):
                found = items.having(left)
                read = items.reader(fields)
                for key in found:
                    out[key] = read(key)
            else:
                message_read = _reader(fields)
                found = [k for k in left if k in items]
                for key in found:
                    out[key] = message_read(items[key])
            left.difference_update(found)
            if not sample.changed_only:
                break
        return out

    def _maybe_evicted(self, key: StatementKey, entry: snapshot_pb2.StatementStats,
                       delta: Delta) -> bool:
        if entry.HasField("stats_since") and findings.when(entry.stats_since) > delta.since:
            return True  # PG17 says the entry was re-created after the base
        between = self._statements_since(delta.since)
        return between is not None and any(key not in m for m in between)

    def _statements_since(self, since: datetime.datetime
                          ) -> tuple[Mapping[StatementKey, Any], ...] | None:
        """The statement maps of the older full samples taken at or after ``since`` (newest
        first), or None when no entry can have been evicted since then (``dealloc`` did not
        grow, or no such sample): once per window and base time, not once per entry. A
        changed-only sample is not among them: an entry absent from it is unchanged, and
        the collector sends the full set when one disappeared."""
        if since not in self._statement_maps:
            between = [s for s in self.behind() if s.present(_STATEMENTS)
                       and s.time_of(_STATEMENTS) >= since]
            evicted = bool(between) and between[-1].dealloc != self.latest.dealloc
            self._statement_maps[since] = (
                tuple(s.statements for s in between if not s.changed_only) if evicted
                else None)
        return self._statement_maps[since]

    def _bases(self, section: int, epoch: str, over: float | None) -> Iterator[Sample]:
        """Candidate base samples, newest first: same series, section present, old enough."""
        current = getattr(self.latest, epoch)
        if current is UNKNOWN or not self.present(section):
            return
        now = self.time_of(section)
        for sample in self.behind():
            if getattr(sample, epoch) is UNKNOWN or not sample.present(section):
                continue
            if getattr(sample, epoch) != current:
                return  # a reset lies between: nothing older belongs to this series
            if over is None or (now - sample.time_of(section)).total_seconds() >= over:
                yield sample

    def _younger_bases(self, section: int, epoch: str, over: float) -> list[Sample]:
        """The samples of the current series younger than ``over`` seconds, oldest first
        (none when no sample is that old: there is no ``over`` window to complete): where an
        item that no sample that old gives a delta for is looked for by ``longest``."""
        now = self.time_of(section)
        younger: list[Sample] = []
        for sample in self._bases(section, epoch, None):
            if (now - sample.time_of(section)).total_seconds() >= over:
                return younger[::-1]
            younger.append(sample)
        return []

    def _item_deltas(self, section: int, epoch: str,
                     items: Callable[[Sample], Mapping[K, Any]], fields: Sequence[str],
                     over: float | None, only: Collection[K] | None = None,
                     bases: Iterable[Sample] | None = None) -> dict[K, Delta]:
        """Deltas of the newest sample's items (those of ``only``), each from the newest of
        the bases (:meth:`_bases` of ``over``, or ``bases``) that has it."""
        latest = items(self.latest)
        todo = set(latest) if only is None else {key for key in only if key in latest}
        out: dict[K, Delta] = {}
        at = self.time_of(section)
        read = _reader(fields)
        zero = tuple(0.0 for _ in fields)
        for sample in self._bases(section, epoch, over) if bases is None else bases:
            old_items = items(sample)
            old_at = sample.time_of(section)
            found = (old_items.having(todo) if isinstance(old_items, Columns)
                     else [k for k in todo if k in old_items])
            todo.difference_update(found)
            seconds = (at - old_at).total_seconds()
            old_read: Callable[[K], tuple[Any, ...]]
            if isinstance(old_items, Columns):
                old_read = old_items.reader(fields)
            else:
                old_read = functools.partial(_read_item, read, old_items)
            if seconds > 0:
                # _difference, inlined: this runs for every statement, table and index.
                for key in found:
                    new, old = read(latest[key]), old_read(key)
                    if new == old:  # most items between two rounds: nothing moved
                        out[key] = Delta(dict(zip(fields, zero, strict=True)), seconds, old_at)
                        continue
                    values = [float(n) - float(o) for n, o in zip(new, old, strict=True)]
                    if not any(v < 0 for v in values):  # else a counter went down: no delta
                        out[key] = Delta(dict(zip(fields, values, strict=True)), seconds, old_at)
            if not todo:
                break
        return out


def _read_item(read: Callable[[Any], tuple[Any, ...]], items: Mapping[K, Any], key: K
               ) -> tuple[Any, ...]:
    return read(items[key])


def _tables_of(sample: Sample) -> Mapping[int, snapshot_pb2.TableStats]:
    return sample.tables


class History:
    """Recent samples of one database, oldest first, all of one server incarnation."""

    def __init__(self, retention: float = MIN_RETENTION, max_samples: int = MAX_SAMPLES,
                 max_bytes: int = MAX_BYTES) -> None:
        self.retention = max(retention, MIN_RETENTION)
        self.max_samples = max(max_samples, KEEP_NEWEST + 2)
        self.max_bytes = max_bytes
        self.samples: list[Sample] = []
        self.markers = Markers()
        self.catalog: snapshot_pb2.Catalog | None = None
        self.catalog_complete = False
        self.catalog_memo: dict[str, Any] = {}
        """Results computed from :attr:`catalog` alone (``Window.from_catalog``)."""
        self.keys: dict[str, KeyTable[Any]] = {name: KeyTable() for name, _ in _ITEM_SECTIONS}
        """The keys of each item section in the slim samples, each held once."""
        self._view: dict[StatementKey, snapshot_pb2.StatementStats] = {}
        self._view_epoch: object = UNKNOWN
        """The statement series of :attr:`_view` (UNKNOWN: no view)."""
        self._view_holders: list[snapshot_pb2.Snapshot] = []
        """The copies of the statements the view holds (one message per statement sample
        since the last full one: at most 1 + :data:`MAX_CHANGED_ONLY_RUN`): the view never
        holds a part of a sample's snapshot, which would keep the whole of it."""
        self.view_bytes = 0
        """Bytes of the view of the newest statement values (:attr:`Window.statements` when
        the collector sends changed-only reads), not bounded by :data:`MAX_BYTES` (dropping
        samples does not shrink it) but by :data:`MAX_CHANGED_ONLY_RUN`; :attr:`nbytes`
        counts them. An estimate: the dict and its keys and message objects, and the
        *serialized* size of the copies (protobuf messages take about 2.5 times as much in
        memory). 0 while the history has seen no changed-only sample (full reads only)."""
        self._changed_only_seen = False
        """A changed-only sample came (readable or not): from the next full statement
        sample on, the history keeps the view; before, full reads cost no second copy."""
        self._view_entries = 0
        self.unreadable_statements = ""
        """Why the newest sample added, a changed-only one, could not be read ("" when it
        could, or was not changed-only): ``no_base`` (no view of its series here to read it
        against: the history is new, the database's was retired or evicted, the server or
        its statistics changed, or it is the first changed-only sample of this history, which
        keeps no view until it sees one), ``truncated`` (its statements section is not
        complete: entries the collector believes carried did not come), ``run_too_long``
        (more than :data:`MAX_CHANGED_ONLY_RUN` in a row). Its entries cannot be read (an
        absent one is "unchanged since" a sample this history does not have, or one that
        lost it), so :meth:`add` made it a round without statements (the statement
        detectors: not collected), forgot the view (the next changed-only sample cannot be
        read either: the collector sends the full set next), and the engine asks for the full
        set (``Ack.want_full_statements``) and counts it."""

    @property
    def wants_full_statements(self) -> bool:
        """The newest sample's changed-only statements could not be read
        (:attr:`unreadable_statements`): the collector should send the full set."""
        return bool(self.unreadable_statements)

    @property
    def identity(self) -> Identity | None:
        """The server incarnation of the samples held."""
        return self.samples[-1].identity if self.samples else None

    @property
    def newest(self) -> Sample | None:
        """The newest sample, if any."""
        return self.samples[-1] if self.samples else None

    def add(self, sample: Sample) -> list[str]:
        """Append a sample (newer than the newest held); returns the resets it revealed:
        ``identity``, ``database_stats``, ``statements``. A sample with no database identity
        (collector not connected) or not newer than the newest is refused with ValueError."""
        if sample.identity is None:
            raise ValueError("snapshot names no database (collector not connected)")
        newest = self.newest
        if newest is not None and sample.collected_at <= newest.collected_at:
            raise ValueError("snapshot is not newer than the newest one held")
        self.unreadable_statements = self._unreadable(sample)
        if self.unreadable_statements:
            sample.forget_statements()
            self._changed_only_seen = True
            self._forget_view()
        resets = self._resets(sample)
        if "identity" in resets:
            self.samples.clear()
            self.markers = Markers()
            self._forget_view()
        if newest is not None and "identity" not in resets:
            newest.make_slim(self.samples[-2] if len(self.samples) > 1 else None, self.keys)
        self._update_view(sample)
        self.samples.append(sample)
        self._remember_catalog(sample)
        self._refresh_markers(sample)
        self._trim()
        return resets

    def _unreadable(self, sample: Sample) -> str:
        """Why ``sample``'s changed-only statements cannot be read (see
        :attr:`unreadable_statements`), "" when they can or it is not changed-only."""
        if not sample.changed_only:
            return ""
        if _STATEMENTS not in sample.complete:
            return "truncated"
        newest = self.newest
        if (self._view_epoch is UNKNOWN or self._view_epoch != sample.stmt_epoch
                or (newest is not None and newest.identity != sample.identity)):
            return "no_base"
        if len(self._view_holders) > MAX_CHANGED_ONLY_RUN:  # the full one and the run
            return "run_too_long"
        return ""

    def _forget_view(self) -> None:
        """No view: the next changed-only sample has no base (the next full one builds it)."""
        self._view, self._view_epoch, self._view_holders = {}, UNKNOWN, []
        self._view_entries = self.view_bytes = 0
        for older in self.samples:
            older.view = None

    def _update_view(self, sample: Sample) -> None:
        """Every statement entry with its newest values as of ``sample`` (when it has the
        statements), and which entries moved since the statement sample before. Only once
        the history has seen a changed-only sample: with full reads only, the newest sample's
        own statements are the newest values, and a second copy would only cost memory. A
        full sample whose statements section is not complete (TRUNCATED) is no base for the
        changed-only samples after it (entries are missing): it leaves no view."""
        if not sample.present(_STATEMENTS) or sample.stmt_epoch is UNKNOWN:
            return
        if not self._changed_only_seen:
            return
        if not sample.changed_only and _STATEMENTS not in sample.complete:
            self._forget_view()
            return
        holder = snapshot_pb2.Snapshot()
        holder.statements.extend(sample.snapshot.statements)  # a copy: see _view_holders
        own = {statement_key(m): m for m in holder.statements}
        sample._maps["statements"] = own  # the same entries: built once
        same = self._view_epoch is not UNKNOWN and self._view_epoch == sample.stmt_epoch
        before = self._view if same else {}
        if sample.changed_only:
            sample.moved = frozenset(own)
            view = {**before, **own}  # a key already there keeps its object
            self._view_holders.append(holder)
            entries = (self._view_entries if same else 0) + sum(
                _entry_bytes(k, m) for k, m in own.items() if k not in before)
        else:
            if same:
                sample.moved = frozenset(k for k, m in own.items() if before.get(k) != m)
            view = own
            self._view_holders = [holder]
            entries = sum(_entry_bytes(k, m) for k, m in own.items())
        for older in self.samples:
            older.view = None
        self._view, self._view_epoch, self._view_entries = view, sample.stmt_epoch, entries
        sample.view = view
        self.view_bytes = _allocated(sys.getsizeof(view)) + entries + sum(
            _allocated(h.ByteSize()) for h in self._view_holders)

    def window(self, texts: Mapping[int, snapshot_pb2.StatementText] | None = None) -> Window:
        """The detectors' view of this database right now."""
        latest = self.samples[-1]
        catalog = self.catalog
        if catalog is not None and catalog.hash != latest.snapshot.catalog_hash:
            catalog = None
        return Window(self.samples, self.markers, catalog,
                      self.catalog_complete and catalog is not None, texts, self.catalog_memo)

    @property
    def wants_catalog(self) -> bool:
        """True when the held catalog is not the one the newest snapshot names."""
        latest = self.newest
        if latest is None or not latest.snapshot.catalog_hash:
            return False
        return self.catalog is None or self.catalog.hash != latest.snapshot.catalog_hash

    def _resets(self, sample: Sample) -> list[str]:
        newest = self.newest
        if newest is None:
            return []
        if sample.identity != newest.identity:
            return ["identity"]
        resets = []
        for epoch, name in (("db_epoch", "database_stats"), ("stmt_epoch", "statements")):
            new = getattr(sample, epoch)
            if new is UNKNOWN:
                continue
            old = next((getattr(s, epoch) for s in reversed(self.samples)
                        if getattr(s, epoch) is not UNKNOWN), UNKNOWN)
            if old is not UNKNOWN and old != new:
                resets.append(name)
        return resets

    def _remember_catalog(self, sample: Sample) -> None:
        snapshot = sample.snapshot
        if not snapshot.HasField("catalog") or not snapshot.catalog.hash:
            return
        catalog = snapshot_pb2.Catalog()
        catalog.CopyFrom(snapshot.catalog)
        self.catalog = catalog
        self.catalog_complete = S.SECTION_CATALOG not in sample.partial
        # What was computed from the catalog before is of that one: a catalog the transport
        # cut keeps its hash (snapshots.split), so the hash alone cannot tell them apart.
        self.catalog_memo.clear()

    def _refresh_markers(self, sample: Sample) -> None:
        at = sample.collected_at
        snapshot = sample.snapshot
        if sample.present(S.SECTION_INDEXES):
            complete = S.SECTION_INDEXES in sample.complete
            self.markers.refresh("index", [(i.indexrelid,) for i in snapshot.indexes], at,
                                 complete)
            self.markers.refresh("invalid", [(i.indexrelid,) for i in snapshot.indexes
                                             if not i.valid], at, complete)
        if sample.present(S.SECTION_REPLICATION_SLOTS):
            self.markers.refresh(
                "slot", [(s.slot_name, s.xmin) for s in snapshot.replication_slots
                         if s.HasField("xmin")], at,
                S.SECTION_REPLICATION_SLOTS in sample.complete)
        if sample.present(S.SECTION_SESSIONS):
            self.markers.refresh(
                "xmin", [(s.pid, s.backend_xmin) for s in snapshot.sessions
                         if s.HasField("backend_xmin")], at,
                S.SECTION_SESSIONS in sample.complete)

    def _trim(self) -> None:
        cutoff = self.samples[-1].collected_at - datetime.timedelta(seconds=self.retention)
        # Keep one sample at or before the cutoff: it is the base of the longest window.
        while len(self.samples) > 2 and self.samples[1].collected_at <= cutoff:
            self._drop(0)
        while len(self.samples) > self.max_samples:
            self._drop(_thinnest(self.samples))
        while len(self.samples) > 2 and self.sample_bytes > self.max_bytes:
            self._drop(0)

    def _drop(self, i: int) -> None:
        """Drop sample ``i``; the next statement sample, when changed-only, takes over its
        statement entries (:meth:`Sample.absorb`): its absent entries mean "as there"."""
        dropped = self.samples.pop(i)
        if dropped.present(_STATEMENTS):
            after = next((s for s in self.samples[i:] if s.present(_STATEMENTS)), None)
            if after is not None:
                after.absorb(dropped)

    @property
    def sample_bytes(self) -> int:
        """Bytes of the samples (what :data:`MAX_BYTES` bounds, what dropping samples can
        free): every sample's :attr:`Sample.size`, and each key index and key table once,
        however many samples share it."""
        indexes = {id(index): index for sample in self.samples
                   for index in sample.key_indexes()}
        return (sum(s.size for s in self.samples) + sum(i.nbytes for i in indexes.values())
                + sum(table.nbytes for table in self.keys.values()))

    @property
    def nbytes(self) -> int:
        """Bytes held in all: :attr:`sample_bytes` and the statements view
        (:attr:`view_bytes`, bounded on its own by :data:`MAX_CHANGED_ONLY_RUN`)."""
        return self.sample_bytes + self.view_bytes


def _thinnest(samples: Sequence[Sample]) -> int:
    """Index of the sample whose removal leaves the smallest gap (never the oldest or the
    newest few), so the kept samples stay evenly spread over the retention period.

    A sample with the statements section (read only every few rounds when pg_stat_statements
    holds thousands of entries) counts the gap its removal leaves between the samples that
    have statements, so the sparser statement samples stay evenly spread too."""
    candidates = range(1, len(samples) - KEEP_NEWEST)
    with_statements = [i for i, s in enumerate(samples) if s.present(_STATEMENTS)]
    order = {index: n for n, index in enumerate(with_statements)}
    forever = datetime.timedelta.max

    def gap(i: int) -> datetime.timedelta:
        around = samples[i + 1].collected_at - samples[i - 1].collected_at
        n = order.get(i)
        if n is None or len(with_statements) == len(samples):
            return around
        if n == 0 or n == len(with_statements) - 1:
            return forever  # the oldest or newest statement sample: a base or the latest
        return max(around, samples[with_statements[n + 1]].collected_at
                   - samples[with_statements[n - 1]].collected_at)

    return min(candidates, key=gap)
