"""Rows of the collector's queries -> the typed messages of ``snapshot.proto``.

Pure functions, no I/O: :mod:`startupmonkey.collector.source` runs the queries of
:mod:`startupmonkey.collector.queries` (rows as dicts keyed by column name) and hands the rows
here. Column names equal proto field names except where a ``_RENAMES`` table says otherwise;
SQL NULL leaves a field unset (which is what explicit presence means in the proto: "never
vacuumed", "no xid", "not on this server version"). Long texts are cut here to the exact
UTF-8 byte limits of :mod:`startupmonkey.v1.limits`, at a character boundary.
"""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message

from startupmonkey.v1 import limits
from startupmonkey.v1 import snapshot_pb2 as pb

Row = Mapping[str, Any]

_MS_RENAMES = {f"{name}_ms": name for name in (
    "blk_read_time", "blk_write_time", "session_time", "active_time",
    "idle_in_transaction_time", "total_exec_time", "min_exec_time", "max_exec_time",
    "mean_exec_time", "stddev_exec_time", "total_plan_time", "temp_blk_read_time",
    "temp_blk_write_time")}
"""proto field -> column, for durations the proto spells with their unit."""

_INT32_MAX = 2**31 - 1
_INT_TYPES = frozenset({
    pb_descriptor.FieldDescriptor.TYPE_INT32, pb_descriptor.FieldDescriptor.TYPE_INT64,
    pb_descriptor.FieldDescriptor.TYPE_UINT32, pb_descriptor.FieldDescriptor.TYPE_UINT64,
})

M = TypeVar("M", bound=pb_message.Message)


@dataclasses.dataclass(frozen=True)
class _Field:
    """How one proto field is read from a row."""

    name: str
    column: str
    integer: bool
    age: bool


_PLANS: dict[tuple[type[pb_message.Message], tuple[str, ...]], tuple[_Field, ...]] = {}


def _plan(cls: type[pb_message.Message], skip: tuple[str, ...]) -> tuple[_Field, ...]:
    key = (cls, skip)
    plan = _PLANS.get(key)
    if plan is None:
        plan = tuple(
            _Field(f.name, _MS_RENAMES.get(f.name, f.name), f.type in _INT_TYPES,
                   f.name.endswith("_age"))
            for f in cls.DESCRIPTOR.fields
            if f.name not in skip and (f.message_type is None or f.message_type.full_name
                                       == "google.protobuf.Timestamp"))
        _PLANS[key] = plan
    return plan


def build(cls: type[M], row: Row, skip: tuple[str, ...] = ()) -> M:
    """A ``cls`` message from the same-named columns of ``row`` (the hot path of a round).

    NULL leaves a field unset; an aware datetime becomes the ``Timestamp``; ``numeric``
    columns (Decimal) are converted; ``*_age`` columns at INT32_MAX, which is what
    ``age()`` says of a frozen or invalid xid, are left unset. Maps, nested messages other
    than timestamps, and fields in ``skip`` are left to the caller.
    """
    values: dict[str, Any] = {}
    for field in _plan(cls, skip):
        value = row.get(field.column)
        if value is None:
            continue
        if isinstance(value, decimal.Decimal):
            value = int(value) if field.integer else float(value)
        if field.age and value >= _INT32_MAX:
            continue
        values[field.name] = value
    return cls(**values)


def cut_utf8(text: str, max_bytes: int) -> tuple[str, bool]:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes at a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode("utf-8", "ignore"), True


def database(row: Row) -> tuple[pb.DatabaseIdentity, pb.DatabaseStats, bool]:
    """SECTION_DATABASE: identity, counters, and whether other roles' details are visible."""
    return (build(pb.DatabaseIdentity, row), build(pb.DatabaseStats, row),
            bool(row.get("can_read_all_stats")))


def setting(row: Row) -> pb.Setting:
    """One pg_settings row."""
    return build(pb.Setting, row)


def _options(options: Sequence[str] | None, prefix: str = "") -> dict[str, str]:
    found: dict[str, str] = {}
    for option in options or ():
        key, _, value = option.partition("=")
        found[prefix + key] = value
    return found


def table(row: Row) -> pb.TableStats:
    """One user table: counters, storage facts and reloptions (TOAST's with "toast.")."""
    message = build(pb.TableStats, row, skip=("total_bytes", "partitioned"))
    message.partitioned = row["relkind"] == "p"
    message.total_bytes = int(row["table_bytes"] or 0) + int(row["indexes_bytes"] or 0)
    message.reloptions.update(_options(row.get("reloptions")))
    message.reloptions.update(_options(row.get("toast_reloptions"), "toast."))
    return message


def index(row: Row) -> pb.IndexStats:
    """One index of a user table."""
    return build(pb.IndexStats, row)


def statement(row: Row) -> pb.StatementStats:
    """One pg_stat_statements entry (no text)."""
    return build(pb.StatementStats, row)


def statement_text(row: Row) -> pb.StatementText:
    """A normalized statement text, cut to MAX_STATEMENT_TEXT_BYTES."""
    text, cut = cut_utf8(row["query"] or "", limits.MAX_STATEMENT_TEXT_BYTES)
    truncated = cut or int(row.get("query_bytes") or 0) > len(text.encode("utf-8"))
    return pb.StatementText(queryid=int(row["queryid"]), text=text, truncated=truncated)


def session(row: Row, track_activity_query_size: int | None) -> pb.Session:
    """One backend; ``query`` cut to MAX_SESSION_QUERY_BYTES.

    ``query_truncated`` is also set when PostgreSQL itself cut the text, which it does at
    ``track_activity_query_size - 1`` bytes.
    """
    message = build(pb.Session, row, skip=("query", "query_truncated", "query_id"))
    text, cut = cut_utf8(row.get("query") or "", limits.MAX_SESSION_QUERY_BYTES)
    full_bytes = int(row.get("query_bytes") or 0)
    by_server = (track_activity_query_size is not None
                 and full_bytes >= track_activity_query_size - 1)
    message.query = text
    message.query_truncated = cut or by_server or full_bytes > len(text.encode("utf-8"))
    if row.get("query_id"):
        message.query_id = int(row["query_id"])
    return message


def lock_wait(row: Row) -> pb.LockWait:
    """One ungranted lock request."""
    return build(pb.LockWait, row)


def replication_slot(row: Row) -> pb.ReplicationSlot:
    """One replication slot."""
    return build(pb.ReplicationSlot, row)


def prepared_xact(row: Row) -> pb.PreparedXact:
    """One prepared transaction."""
    return build(pb.PreparedXact, row)


def vacuum(row: Row) -> pb.VacuumProgress:
    """One running VACUUM."""
    return build(pb.VacuumProgress, row)


def index_build(row: Row) -> pb.IndexBuild:
    """One running CREATE INDEX or REINDEX."""
    return build(pb.IndexBuild, row)


def statements_info(extension: Row | None, info: Row | None,
                    unavailable_reason: str = "") -> pb.StatementsInfo:
    """pg_stat_statements availability and pg_stat_statements_info."""
    message = build(pb.StatementsInfo, info or {},
                    skip=("available", "unavailable_reason", "extension_version"))
    message.available = not unavailable_reason
    message.unavailable_reason = unavailable_reason
    if extension is not None:
        message.extension_version = str(extension["extversion"])
    return message


# -- catalog ----------------------------------------------------------------------------------

_CONSTRAINT_TYPES = {
    "p": pb.CONSTRAINT_TYPE_PRIMARY_KEY,
    "u": pb.CONSTRAINT_TYPE_UNIQUE,
    "f": pb.CONSTRAINT_TYPE_FOREIGN_KEY,
    "x": pb.CONSTRAINT_TYPE_EXCLUSION,
}


def _definition(text: str | None) -> str:
    return cut_utf8(text or "", limits.MAX_DEFINITION_BYTES)[0]


def _names(columns: Mapping[tuple[int, int], str], relid: int,
           attnums: Sequence[int]) -> list[str]:
    return [columns.get((relid, attnum), "") for attnum in attnums]


def _index_def(row: Row, columns: Mapping[tuple[int, int], str]) -> pb.IndexDef:
    message = build(pb.IndexDef, row, skip=(
        "expressions", "predicate", "definition", "opclasses", "key_attnums", "key_columns",
        "include_attnums", "include_columns", "key_options"))
    keys = int(row["indnkeyatts"])
    indkey = [int(a) for a in row["indkey"] or ()]
    relid = int(row["relid"])
    message.key_attnums.extend(indkey[:keys])
    message.key_columns.extend(_names(columns, relid, indkey[:keys]))
    message.include_attnums.extend(indkey[keys:])
    message.include_columns.extend(_names(columns, relid, indkey[keys:]))
    message.opclasses.extend(row["opclasses"] or ())
    message.key_options.extend(int(o) for o in (row["indoption"] or ())[:keys])
    message.expressions = _definition(row["expressions"])
    message.predicate = _definition(row["predicate"])
    message.definition = _definition(row["definition"])
    return message


def _constraint(row: Row, columns: Mapping[tuple[int, int], str]) -> pb.Constraint:
    message = build(pb.Constraint, row, skip=("type", "columns", "ref_columns", "definition"))
    message.type = _CONSTRAINT_TYPES[row["contype"]]
    relid = int(row["relid"])
    message.columns.extend(_names(columns, relid, message.attnums))
    if row.get("ref_relid") is not None:
        message.ref_columns.extend(_names(columns, int(row["ref_relid"]), message.ref_attnums))
    message.definition = _definition(row["definition"])
    return message


def catalog(relations: Iterable[Row], columns: Iterable[Row], indexes: Iterable[Row],
            constraints: Iterable[Row]) -> pb.Catalog:
    """The Catalog message, with ``hash`` over its canonical (deterministic) encoding."""
    message = pb.Catalog()
    message.relations.extend(build(pb.Relation, row) for row in relations)
    names: dict[tuple[int, int], str] = {}
    for row in columns:
        names[(int(row["relid"]), int(row["attnum"]))] = str(row["name"])
        message.columns.append(build(pb.Column, row))
    message.indexes.extend(_index_def(row, names) for row in indexes)
    message.constraints.extend(_constraint(row, names) for row in constraints)
    message.hash = catalog_hash(message)
    return message


def catalog_hash(message: pb.Catalog) -> str:
    """sha256 over the catalog's lists (the ``hash`` field itself excluded)."""
    content = pb.Catalog()
    content.CopyFrom(message)
    content.hash = ""
    return hashlib.sha256(content.SerializeToString(deterministic=True)).hexdigest()[:32]


#: Sections of the whole cluster that only the home database's source reads, with their
#: repeated field: a snapshot of another database of the same round carries a copy.
CLUSTER_SECTIONS: Final = ((pb.SECTION_SESSIONS, "sessions"),
                           (pb.SECTION_REPLICATION_SLOTS, "replication_slots"),
                           (pb.SECTION_PREPARED_XACTS, "prepared_xacts"))


def copy_cluster_sections(home: pb.Snapshot, other: pb.Snapshot) -> None:
    """Give ``other`` (another database's snapshot of the same round) the home snapshot's
    cluster-wide sections: their items and their status (state, sample time), so the other
    database's sessions and xmin holders are judged in its own window. A section the home
    database did not collect this round stays unlisted in ``other`` too."""
    statuses = {status.section: status for status in home.collector.sections}
    for section, field in CLUSTER_SECTIONS:
        status = statuses.get(section)
        if status is None:
            continue
        other.collector.sections.add().CopyFrom(status)
        getattr(other, field).extend(getattr(home, field))
