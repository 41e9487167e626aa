"""SizeRotation (pure logic): which tables get their sizes measured each round, and that every
table is measured again within a bounded number of rounds (issue 19: slow-changing columns
read every N rounds)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey.collector import source


def _round(sizes: source.SizeRotation, relids: list[int]) -> set[int]:
    """One round as the source runs it: plan, rows (measured or estimated), seen."""
    plan = sizes.plan()
    chosen = {int(r) for r in plan["measure"].strip("{}").split(",") if r}
    measured: set[int] = set()
    for relid in relids:
        mine = plan["measure_all"] or relid in chosen
        row: dict[str, Any] = {"relid": relid, "table_bytes": 8192 * relid if mine else None,
                               "indexes_bytes": 16384 if mine else None,
                               "table_bytes_estimate": 1, "indexes_bytes_estimate": 1}
        out = sizes.table(row)
        if mine:
            measured.add(relid)
            assert out["table_bytes"] == 8192 * relid
    sizes.seen(relids, None)
    return measured


@given(tables=st.integers(0, 7000), batch=st.integers(1, 600), rounds=st.integers(1, 20),
       min_batch=st.integers(1, 200))
def test_batch_size_is_bounded_and_covers_every_table_within_the_rounds(
        tables: int, batch: int, rounds: int, min_batch: int) -> None:
    sizes = source.SizeRotation(batch, rounds, min_batch)
    size = sizes.batch_size(tables)
    assert 1 <= size <= batch
    if tables <= sizes.min_batch:
        assert size >= tables  # small databases: everything, every round
    elif tables <= batch * rounds:
        assert -(-tables // size) <= rounds  # each table within `rounds` rounds
    else:
        assert size == batch  # the per-round bound wins: as fast as it allows


@settings(max_examples=40, deadline=None)
@given(tables=st.integers(1, 1500), rounds=st.integers(1, 12),
       new_at=st.integers(1, 15))
def test_every_table_is_measured_within_the_window_and_a_new_one_next_round(
        tables: int, rounds: int, new_at: int) -> None:
    sizes = source.SizeRotation(batch=150, rounds=rounds, min_batch=20)
    relids = list(range(1000, 1000 + tables))
    last: dict[int, int] = {}
    # The rotation's window with and without the new table (adding it can change the batch).
    window = max(-(-n // sizes.batch_size(n)) for n in (tables, tables + 1))
    for number in range(1, 31):
        if number == new_at:
            relids = [*relids, 99_999]
        measured = _round(sizes, relids)
        if number == 1:
            assert measured == set(relids)  # the first round measures everything
        if number == new_at + 1 and new_at > 1:
            # Measured the round it appeared (when that round measured everything), else
            # first in line the round after, as it was never measured.
            assert last.get(99_999) == new_at or 99_999 in measured
        for relid in measured:
            last[relid] = number
        for relid in relids:
            if relid != 99_999 or number > new_at + 1:
                assert number - last[relid] < window + 1, (relid, number, last[relid])


def test_carried_sizes_are_the_last_measurement_until_the_next() -> None:
    sizes = source.SizeRotation(batch=2, rounds=2, min_batch=1)
    relids = [1, 2, 3, 4]
    _round(sizes, relids)
    plan = sizes.plan()
    assert not plan["measure_all"]
    carried = sizes.table({"relid": 4, "table_bytes": None, "indexes_bytes": None,
                           "table_bytes_estimate": 1, "indexes_bytes_estimate": 1})
    assert carried["table_bytes"] == 8192 * 4 and carried["indexes_bytes"] == 16384
