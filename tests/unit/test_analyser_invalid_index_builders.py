"""invalid_index and live index builds (issue 23.1): an INVALID index that a backend other than
the executor's own is still building is never flagged; the executor's own build is. The
IndexBuild section comes from the collector: any values in it leave the detector working."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey.analyser import findings
from startupmonkey.analyser.detectors import indexes
from startupmonkey.executor import main as executor_main
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build
from tests.support.snapshots_build import window

LIMITS = build.limits(invalid_index={"minAge": "60s"})
BROKEN = build.index(10, 1, "orders_email_idx", valid=False, size_bytes=8192)
OTHER_TABLE = build.index(20, 2, "items_sku_idx", table_name="items", valid=False)


def _flagged(*builds: pb.IndexBuild, sections: tuple[int, ...] = build.ALL_SECTIONS,
             truncated: tuple[int, ...] = ()) -> dict[str, findings.Finding]:
    snaps = [build.snapshot(t, indexes=[BROKEN, OTHER_TABLE], index_builds=list(builds),
                            sections=sections, truncated=truncated) for t in (0, 30, 61)]
    return {f.target.index or "": f for f in indexes.invalid_index(window(*snaps), LIMITS)}


def _build(pid: int, **fields: object) -> pb.IndexBuild:
    message = pb.IndexBuild(pid=pid, command="CREATE INDEX CONCURRENTLY",
                            phase="waiting for old snapshots", application_name="migrate",
                            usename="deploy")
    message.backend_start.CopyFrom(build.ts(-600))
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def test_the_analyser_knows_the_executors_application_name() -> None:
    assert indexes.EXECUTOR_APPLICATION == executor_main.APPLICATION_NAME


def test_without_builders_both_are_flagged_and_the_evidence_says_so() -> None:
    found = _flagged()
    assert set(found) == {"orders_email_idx", "items_sku_idx"}
    assert found["orders_email_idx"].evidence["builder"] == "no live backend is building it"
    assert found["orders_email_idx"].evidence["builder_pids"] is None


def test_a_live_build_of_someone_else_holds_its_index_back_only() -> None:
    found = _flagged(_build(77, relid=1, index_relid=10))
    assert set(found) == {"items_sku_idx"}


def test_the_executors_own_build_does_not_hold_it_back_and_is_named() -> None:
    found = _flagged(_build(78, relid=1, index_relid=10,
                            application_name=indexes.EXECUTOR_APPLICATION))
    assert set(found) == {"orders_email_idx", "items_sku_idx"}
    evidence = found["orders_email_idx"].evidence
    assert evidence["builder_pids"] == "78"
    assert "executor's own build" in str(evidence["builder"])
    assert "executor's own build" in found["orders_email_idx"].summary


def test_a_reindex_concurrently_holds_back_every_invalid_index_of_its_table() -> None:
    # It reports the index it rebuilds, not the _ccnew copy it builds.
    found = _flagged(_build(79, relid=1, index_relid=99, command="REINDEX CONCURRENTLY"))
    assert set(found) == {"items_sku_idx"}


def test_a_build_whose_target_is_hidden_holds_back_every_invalid_index() -> None:
    hidden = pb.IndexBuild(pid=80, application_name="migrate", usename="deploy")
    assert _flagged(hidden) == {}


def test_without_a_complete_builds_section_nothing_is_flagged() -> None:
    others = tuple(s for s in build.ALL_SECTIONS if s != pb.SECTION_INDEX_BUILDS)
    for kwargs in ({"sections": others}, {"truncated": (pb.SECTION_INDEX_BUILDS,)}):
        snaps = [build.snapshot(t, indexes=[BROKEN], **kwargs)  # type: ignore[arg-type]
                 for t in (0, 61)]
        try:
            indexes.invalid_index(window(*snaps), LIMITS)
        except findings.NoData:
            continue
        raise AssertionError(f"flagged without knowing the builders ({kwargs})")


_U32 = st.integers(0, 2**32 - 1)
_TEXT = st.text(max_size=80)
_BUILDS = st.builds(
    lambda pid, relid, index_relid, command, phase, app, user, locker: pb.IndexBuild(
        pid=pid, relid=relid, index_relid=index_relid, command=command, phase=phase,
        application_name=app, usename=user, current_locker_pid=locker),
    st.integers(-(2**31), 2**31 - 1), st.none() | _U32,
    st.none() | st.sampled_from([0, 1, 10, 20]) | _U32,
    st.sampled_from(["", "CREATE INDEX", "REINDEX CONCURRENTLY"]) | _TEXT, _TEXT,
    st.sampled_from(["", indexes.EXECUTOR_APPLICATION]) | _TEXT, _TEXT,
    st.none() | st.integers(-(2**31), 2**31 - 1))


@settings(max_examples=200, deadline=None)
@given(builds=st.lists(_BUILDS, max_size=6))
def test_any_index_builds_leave_the_detector_working_and_never_flag_a_foreign_build(
        builds: list[pb.IndexBuild]) -> None:
    found = _flagged(*builds)
    for name, finding in found.items():
        index = BROKEN if name == BROKEN.name else OTHER_TABLE
        for b in builds:
            touches = (b.HasField("index_relid") and b.index_relid == index.indexrelid) or (
                not b.HasField("relid") and not b.HasField("index_relid"))
            if touches:
                assert b.application_name == indexes.EXECUTOR_APPLICATION, (name, b)
        assert isinstance(finding.evidence["builder"], str)
