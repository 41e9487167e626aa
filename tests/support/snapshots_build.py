"""Hand-built snapshots for the analyser's tests (checked by test_snapshots_build.py).

The builders make a ``Snapshot`` the way the collector would (every section listed OK unless
told otherwise, server-clock timestamps), so detector tests read like the situation they
describe: ``snapshot(at=60, tables=[table(1, "orders", n_dead_tup=50_000)])``, and
:func:`window` turns snapshots into the view a detector judges.
Imported as ``from tests.support import snapshots_build as build``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import timestamp_pb2

from startupmonkey.analyser import history
from startupmonkey.models import thresholds as thresholds_mod
from startupmonkey.v1 import snapshot_pb2 as pb

T0 = datetime.datetime(2025, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
NAMESPACE, MONITOR = "prod", "shop"
DBNAME, DATID, SYSID = "shop", 16384, 7_300_000_000_000_000_001
ALL_SECTIONS = tuple(s for s in pb.Section.values() if s != pb.SECTION_UNSPECIFIED)
SETTINGS = {"max_connections": "100", "superuser_reserved_connections": "3",
            "autovacuum": "on", "track_counts": "on", "autovacuum_vacuum_threshold": "50",
            "autovacuum_vacuum_scale_factor": "0.2", "autovacuum_freeze_max_age": "200000000",
            "block_size": "8192"}


def at(seconds: float) -> datetime.datetime:
    """T0 plus ``seconds``."""
    return T0 + datetime.timedelta(seconds=seconds)


def ts(value: datetime.datetime | float) -> timestamp_pb2.Timestamp:
    """A Timestamp from a datetime or from seconds after T0."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value if isinstance(value, datetime.datetime) else at(value))
    return stamp


def _set(message: Any, fields: Mapping[str, Any]) -> None:
    for name, value in fields.items():
        if value is None:
            continue
        target = getattr(message, name)
        if isinstance(target, timestamp_pb2.Timestamp):
            target.CopyFrom(ts(value))
        elif name == "reloptions":
            target.update(value)
        elif isinstance(value, list | tuple):
            target.extend(value)
        else:
            setattr(message, name, value)


def table(relid: int, name: str, **fields: Any) -> pb.TableStats:
    """A user table in schema public (relkind r) with the given columns."""
    message = pb.TableStats(relid=relid, schema="public", name=name, relkind="r")
    _set(message, {"reltuples": 100_000.0, "n_live_tup": 100_000, **fields})
    return message


def index(indexrelid: int, relid: int, name: str, table_name: str = "orders",
          **fields: Any) -> pb.IndexStats:
    """A valid, ready, live index of a public table."""
    message = pb.IndexStats(indexrelid=indexrelid, relid=relid, schema="public",
                            table=table_name, name=name)
    _set(message, {"valid": True, "ready": True, "live": True, **fields})
    return message


def session(pid: int, **fields: Any) -> pb.Session:
    """A client backend of the monitored database, started at T0 - 1h."""
    message = pb.Session(pid=pid)
    _set(message, {"datid": DATID, "datname": DBNAME, "usename": "app",
                   "application_name": "shop-web", "backend_type": "client backend",
                   "backend_start": at(-3600), **fields})
    return message


def snapshot(at_s: float, *, seq: int = 1, collector_id: str = "collector-a",
             sections: Iterable[int] = ALL_SECTIONS, truncated: Iterable[int] = (),
             settings: Mapping[str, str] | None = None, stats_reset: float | None = None,
             database: Mapping[str, Any] | None = None, identity: Mapping[str, Any] | None = None,
             catalog: pb.Catalog | None = None, **items: Any) -> pb.Snapshot:
    """A complete snapshot ``at_s`` seconds after T0; ``items`` are repeated fields
    (tables=[...], sessions=[...], ...)."""
    snap = pb.Snapshot(collector_id=collector_id, sequence=seq, chunk_index=0, chunk_count=1)
    snap.monitor.namespace, snap.monitor.name = NAMESPACE, MONITOR
    snap.collected_at.CopyFrom(ts(at_s))
    _set(snap.database, {"dbname": DBNAME, "datid": DATID, "system_identifier": SYSID,
                         "postmaster_start_time": at(-86_400), "server_version_num": 150004,
                         **(identity or {})})
    listed = set(sections)
    for section in sorted(listed | set(truncated)):
        state = pb.SECTION_STATE_TRUNCATED if section in set(truncated) else pb.SECTION_STATE_OK
        snap.collector.sections.add(section=section, state=state).collected_at.CopyFrom(
            ts(at_s))
    _set(snap.database_stats, {"datconnlimit": -1, "stats_reset": stats_reset,
                               **(database or {})})
    for name, value in (SETTINGS if settings is None else settings).items():
        snap.settings.add(name=name, setting=value)
    snap.statements_info.available = True
    for name, values in items.items():
        getattr(snap, name).extend(values)
    if catalog is not None:
        snap.catalog.CopyFrom(catalog)
        snap.catalog_hash = catalog.hash
    return snap


def index_def(indexrelid: int, relid: int, name: str, keys: Iterable[int], **fields: Any
              ) -> pb.IndexDef:
    """A valid btree index definition with int4_ops key columns."""
    key_list = list(keys)
    message = pb.IndexDef(indexrelid=indexrelid, relid=relid, schema="public", name=name)
    _set(message, {"method": "btree", "key_attnums": key_list,
                   "opclasses": ["int4_ops"] * len(key_list), "key_options": [0] * len(key_list),
                   "valid": True, "ready": True, "live": True,
                   "definition": f"CREATE INDEX {name} ON public.t USING btree (...)", **fields})
    return message


def catalog(indexes: Iterable[pb.IndexDef] = (), constraints: Iterable[pb.Constraint] = (),
            relations: Iterable[pb.Relation] = (), hash_: str = "catalog-1") -> pb.Catalog:
    """A catalog with the given lists (relation 1 "orders" by default)."""
    rels = list(relations) or [pb.Relation(relid=1, schema="public", name="orders",
                                           relkind="r", replica_identity="d")]
    return pb.Catalog(hash=hash_, relations=rels, indexes=list(indexes),
                      constraints=list(constraints))


def limits(**blocks: Mapping[str, Any]) -> thresholds_mod.Thresholds:
    """Thresholds as a user writes them: ``limits(dead_tuples={"autovacuumGrace": "0s"})``."""
    return thresholds_mod.Thresholds.model_validate(blocks)


def window(*snaps: pb.Snapshot, retention: float = history.MIN_RETENTION,
           texts: Mapping[int, pb.StatementText] | None = None) -> history.Window:
    """The detectors' view after ``snaps`` (oldest first) went into a fresh ``History``
    keeping ``retention`` seconds; ``texts`` are the statement texts the analyser holds."""
    hist = history.History(retention=retention)
    for snap in snaps:
        hist.add(history.Sample(snap))
    return hist.window(texts)
