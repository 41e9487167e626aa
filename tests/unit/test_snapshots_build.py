"""The hand-built snapshots of ``tests/support/snapshots_build.py`` are well formed."""

from __future__ import annotations

from startupmonkey import snapshots
from tests.support.snapshots_build import ALL_SECTIONS, limits, session, snapshot, table


def test_snapshot_lists_every_section_and_survives_chunking() -> None:
    snap = snapshot(10, tables=[table(1, "orders")], sessions=[session(42)])
    assert {s.section for s in snap.collector.sections} == set(ALL_SECTIONS)
    chunks = snapshots.split(snap, target_bytes=200)
    assert len(chunks) > 1
    assert snapshots.merge(chunks) == snap


def test_limits_take_the_users_spelling() -> None:
    assert limits(dead_tuples={"minDeadRatio": 0.5}).dead_tuples.min_dead_ratio == 0.5
