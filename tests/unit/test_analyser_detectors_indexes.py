"""invalid_index, unused_index, duplicate_index on hand-built snapshots and catalogs."""

from __future__ import annotations

import pytest

from startupmonkey.analyser import findings
from startupmonkey.analyser.detectors import indexes
from startupmonkey.models.enums import ActionId
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build
from tests.support.snapshots_build import window

FK = pb.ConstraintType.CONSTRAINT_TYPE_FOREIGN_KEY


# ---- invalid_index


def test_invalid_index_fires_after_min_age_and_proposes_the_right_action() -> None:
    broken = build.index(10, 1, "orders_email_key", valid=False, size_bytes=8192)
    constraint = build.index(11, 1, "orders_code_key", valid=False, constraint_oid=99,
                             constraint_name="orders_code_key")
    good = build.index(12, 1, "orders_pkey", primary=True, unique=True)
    limits = build.limits(invalid_index={"minAge": "60s"})
    snaps = [build.snapshot(t, indexes=[broken, constraint, good]) for t in (0, 30, 60)]
    assert indexes.invalid_index(window(*snaps[:2]), limits) == []  # may still be building
    found = {f.target.index: f for f in indexes.invalid_index(window(*snaps), limits)}
    assert set(found) == {"orders_email_key", "orders_code_key"}
    assert found["orders_email_key"].action is ActionId.DROP_INVALID_INDEX
    assert found["orders_code_key"].action is ActionId.REINDEX
    assert found["orders_email_key"].target.table == "orders"


# ---- unused_index

UNUSED = build.limits(unused_index={"minAge": "60s", "minSize": "1Mi"})
BIG = 50 * 1024 * 1024


def _unused_snaps(ix: list[pb.IndexStats], defs: list[pb.IndexDef],
                  constraints: list[pb.Constraint] = ()) -> list[pb.Snapshot]:  # type: ignore[assignment]
    cat = build.catalog(defs, constraints)
    return [build.snapshot(t, indexes=ix, stats_reset=-86_400, catalog=cat) for t in (0, 61)]


def test_unused_index_fires_for_a_big_never_scanned_index() -> None:
    ix = [build.index(10, 1, "orders_note_idx", size_bytes=BIG),
          build.index(11, 1, "orders_day_idx", size_bytes=BIG, idx_scan=5)]
    defs = [build.index_def(10, 1, "orders_note_idx", [4]),
            build.index_def(11, 1, "orders_day_idx", [5])]
    found = indexes.unused_index(window(*_unused_snaps(ix, defs)), UNUSED)
    assert [f.target.index for f in found] == ["orders_note_idx"]
    assert found[0].action is ActionId.DROP_INDEX
    assert found[0].evidence["watched_s"] == 61


def test_unused_index_never_touches_what_enforces_something_or_backs_a_foreign_key() -> None:
    protected = [build.index(20, 1, "pk", size_bytes=BIG, primary=True, unique=True),
                 build.index(21, 1, "uq", size_bytes=BIG, unique=True),
                 build.index(22, 1, "ex", size_bytes=BIG, exclusion=True, constraint_oid=5),
                 build.index(23, 1, "ri", size_bytes=BIG, replica_identity=True),
                 build.index(24, 1, "fk_customer", size_bytes=BIG),
                 build.index(25, 1, "small", size_bytes=8192)]
    defs = [build.index_def(20 + n, 1, i.name, [n + 1]) for n, i in enumerate(protected)]
    defs[4] = build.index_def(24, 1, "fk_customer", [7, 8, 9])
    fk = pb.Constraint(oid=77, name="orders_customer_fk", type=FK, relid=1, attnums=[8, 7])
    assert indexes.unused_index(window(*_unused_snaps(protected, defs, [fk])), UNUSED) == []


def test_unused_index_needs_old_statistics_and_its_own_observation() -> None:
    ix = [build.index(10, 1, "orders_note_idx", size_bytes=BIG)]
    defs = [build.index_def(10, 1, "orders_note_idx", [4])]
    cat = build.catalog(defs)
    fresh_stats = [build.snapshot(t, indexes=ix, stats_reset=50, catalog=cat) for t in (0, 61)]
    assert indexes.unused_index(window(*fresh_stats), UNUSED) == []
    just_seen = [build.snapshot(61, indexes=ix, stats_reset=-86_400, catalog=cat)]
    assert indexes.unused_index(window(*just_seen), UNUSED) == []
    no_catalog = [build.snapshot(t, indexes=ix, stats_reset=-86_400) for t in (0, 61)]
    with pytest.raises(findings.NoData):
        indexes.unused_index(window(*no_catalog), UNUSED)


# ---- duplicate_index


def test_exact_duplicates_keep_the_constraint_index() -> None:
    defs = [build.index_def(30, 1, "orders_pkey", [1], primary=True, unique=True,
                            constraint_oid=300),
            build.index_def(31, 1, "orders_id_idx", [1]),
            build.index_def(32, 1, "orders_id_idx2", [1])]
    found = indexes.duplicate_index(window(build.snapshot(0, catalog=build.catalog(defs))),
                                    build.limits())
    assert sorted(f.target.index for f in found) == ["orders_id_idx", "orders_id_idx2"]
    assert all(f.evidence["duplicate_of"] == "public.orders_pkey" for f in found)
    assert found[0].target.table == "orders" and found[0].action is ActionId.DROP_INDEX


def test_prefix_is_redundant_but_not_when_it_differs() -> None:
    defs = [build.index_def(40, 1, "a_b", [1, 2]),
            build.index_def(41, 1, "a", [1]),
            build.index_def(42, 1, "a_desc", [1], key_options=[1]),
            build.index_def(43, 1, "a_partial", [1], has_predicate=True, predicate="(x > 0)"),
            build.index_def(44, 1, "a_hash", [1], method="hash", opclasses=["int4_ops"]),
            build.index_def(45, 1, "b_unique", [2], unique=True),
            build.index_def(46, 1, "b_a", [2, 1]),
            build.index_def(47, 1, "a_text", [1], opclasses=["text_pattern_ops"])]
    found = indexes.duplicate_index(window(build.snapshot(0, catalog=build.catalog(defs))),
                                    build.limits())
    assert [(f.target.index, f.evidence["duplicate_of"]) for f in found] == [("a", "public.a_b")]


def test_duplicate_twins_flag_only_one() -> None:
    defs = [build.index_def(50, 1, "twin_old", [3]), build.index_def(51, 1, "twin_new", [3])]
    ix = [build.index(50, 1, "twin_old", idx_scan=10), build.index(51, 1, "twin_new", idx_scan=900)]
    found = indexes.duplicate_index(
        window(build.snapshot(0, indexes=ix, catalog=build.catalog(defs))), build.limits())
    assert [f.target.index for f in found] == ["twin_old"]  # the one serving fewer scans
