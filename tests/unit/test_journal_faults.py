"""The JSONL journal survives what crashes and full disks leave behind (issue 23.3).

Real files in a temporary folder; the disk-full case runs the journal in a child process under
a file-size limit (RLIMIT_FSIZE), so nothing else in this process is limited.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from startupmonkey import auditlog
from startupmonkey.executor import journal, records
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass

NS, MONITOR = "ns", "mon"


def _record(n: int) -> records.Record:
    spec = remediation.RemediationSpec(
        monitor=MONITOR, detection_key=f"{NS}/{MONITOR}/stale_statistics/public.t{n}",
        detection_id=f"{n:016d}", detector=DetectorId.STALE_STATISTICS,
        action=ActionId.ANALYZE, risk_class=RiskClass.MAINTENANCE,
        target=remediation.Target(schema="public", table=f"t{n}"),
        sql_hash=remediation.sql_hash("", None), summary="stale")
    return records.Record(name=f"{MONITOR}-{n:010d}", namespace=NS, spec=spec,
                          status=remediation.RemediationStatus(executor="test"),
                          created=records.utcnow())


def _store(path: Path) -> journal.JournalStore:
    return journal.JournalStore(path, NS, MONITOR)


async def _fill(path: Path, count: int) -> None:
    store = _store(path)
    for n in range(count):
        assert await store.create(_record(n))


def test_a_torn_last_line_is_skipped_quarantined_and_the_next_append_is_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.jsonl"
    asyncio.run(_fill(path, 2))
    whole = path.read_bytes()
    path.write_bytes(whole + whole.splitlines()[-1][:37])  # a crash mid-write

    store = _store(path)
    assert {r.name for r in asyncio.run(store.list())} == {_record(0).name, _record(1).name}
    assert store.quarantined == 1
    assert "skipped 1 bad line(s)" in caplog.text
    quarantine = (tmp_path / "audit.jsonl.quarantine").read_text().splitlines()
    assert len(quarantine) == 1 and len(quarantine[0]) == 37

    assert asyncio.run(store.create(_record(2)))
    again = _store(path)
    assert len(asyncio.run(again.list())) == 3
    assert again.quarantined == 0  # quarantined once: the rewritten file has no bad line


def test_an_append_after_a_torn_fragment_starts_on_a_fresh_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"kind": "Remediation", "obj')  # torn, and nothing reads it first
    auditlog.Appender(path).append({"kind": "Database", "status": {}})

    contents = auditlog.read(path)
    assert contents.entries == [{"kind": "Database", "status": {}}]
    assert len(contents.bad_lines) == 1


def test_unparsable_records_and_non_utf8_lines_do_not_stop_the_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    asyncio.run(_fill(path, 1))
    with path.open("ab") as raw:
        raw.write(b'{"kind": "Remediation", "object": {"spec": 42}}\n')
        raw.write(b"\xff\xfe not utf-8\n")
        raw.write(b"[1, 2]\n")

    store = _store(path)
    assert [r.name for r in asyncio.run(store.list())] == [_record(0).name]
    assert store.quarantined == 3


def test_the_journal_is_private_even_when_an_older_file_was_not(tmp_path: Path) -> None:
    fresh = tmp_path / "new" / "audit.jsonl"
    asyncio.run(_fill(fresh, 1))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600

    old = tmp_path / "old.jsonl"
    old.write_text("")
    old.chmod(0o644)
    asyncio.run(_fill(old, 1))
    assert stat.S_IMODE(old.stat().st_mode) == 0o600


def test_a_long_history_is_compacted_at_start_and_the_previous_file_kept(
        tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def churn() -> None:
        store = _store(path)
        for n in range(10):
            record = _record(n)
            assert await store.create(record)
        for _ in range(120):
            for n in range(10):
                current = await store.get(_record(n).name)
                assert current is not None
                current.status.message = f"tick {_}"
                await store.update(current, current.state)
    asyncio.run(churn())
    lines_before = len(path.read_text().splitlines())
    before = {r.name: r.body() for r in asyncio.run(_store(path).list())}

    after = {r.name: r.body() for r in asyncio.run(_store(path).list())}
    assert lines_before > 1000
    assert len(path.read_text().splitlines()) == 10
    assert len((tmp_path / "audit.jsonl.1").read_text().splitlines()) == lines_before
    assert after == before


CHILD = textwrap.dedent("""
    import asyncio, resource, signal, sys
    sys.path.append(sys.argv[2])
    from tests.unit.test_journal_faults import _record, _store
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails: EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))
    async def main():
        store = _store(__import__("pathlib").Path(sys.argv[1]))
        acknowledged = []
        for n in range(100):
            try:
                ok = await store.create(_record(n))
            except OSError as exc:
                print("refused", n, exc.errno, flush=True)
                assert _record(n).name not in {r.name for r in await store.list()}
                continue
            if ok:
                acknowledged.append(_record(n).name)
        print("acknowledged", " ".join(acknowledged), flush=True)
    asyncio.run(main())
""")


def test_a_full_disk_refuses_writes_without_losing_or_inventing_records(
        tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), root], capture_output=True,
                          text=True, timeout=120, check=False, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    acknowledged = lines[-1].split()[1:]
    assert any(line.startswith("refused") for line in lines), "the limit was never reached"
    assert acknowledged, "nothing fitted under the limit"

    store = _store(path)  # the start reads what the full disk left, whatever it is
    assert sorted(r.name for r in asyncio.run(store.list())) == sorted(acknowledged)


def test_records_are_listed_by_key_and_by_activity_without_the_rest(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], list[str], list[str], list[str]]:
        store = _store(tmp_path / "audit.jsonl")
        for n in range(4):
            assert await store.create(_record(n))
        done = await store.get(_record(1).name)
        assert done is not None
        done.move(RemediationState.REJECTED, "not needed")
        await store.update(done, RemediationState.PROPOSED)
        by_key = [r.name for r in await store.list(key=_record(2).spec.detection_key)]
        active = [r.name for r in await store.list(active=True)]
        reloaded = _store(tmp_path / "audit.jsonl")
        return (by_key, active, [r.name for r in await reloaded.list(active=True)],
                [r.name for r in await reloaded.list(key="no/such/key")])

    by_key, active, active_after_restart, none = asyncio.run(scenario())
    assert by_key == [_record(2).name]
    assert active == active_after_restart == [_record(n).name for n in (0, 2, 3)]
    assert none == []
