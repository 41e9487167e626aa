"""The benchmark harness's pure helpers (``bench/common.py``): median and spread, gaps against
an aim, the result-file schema, and the committed result files following it. No timing is
asserted anywhere: benchmarks report figures, they do not pass or fail on them."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_common() -> ModuleType:
    # The scripts import it as a top-level `common` (their folder is sys.path[0]); here it is
    # loaded from its file under a private name, so nothing named `common` leaks into the run.
    spec = importlib.util.spec_from_file_location("startupmonkey_bench_common",
                                                  BENCH / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load_common()


def _document(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = common.report(
        "example", quick=True, started=0.0, command="python bench/example.py --quick",
        results=[{"figure": 1.0}], machine_info={k: None for k in common.MACHINE_KEYS})
    doc.update(overrides)
    return doc


def test_summary_is_median_and_spread() -> None:
    assert common.summary([3.0, 1.0, 2.0]) == {"n": 3, "median": 2.0, "min": 1.0, "max": 3.0,
                                               "spread": 2.0}
    assert common.summary([1, 2, 3, 10])["median"] == 2.5
    assert common.summary([0.123456], digits=3) == {"n": 1, "median": 0.123, "min": 0.123,
                                                    "max": 0.123, "spread": 0.0}


def test_summary_of_nothing_stays_visible() -> None:
    assert common.summary([]) == {"n": 0}
    assert common.summary(iter(())) == {"n": 0}


def test_gap_is_measured_minus_aim() -> None:
    assert common.gap(105.55, 20.0) == {"measured": 105.5, "aim": 20.0, "gap": 85.5,
                                        "within": False}
    assert common.gap(12.0, 20.0)["within"] is True
    assert common.gap(12.0, 20.0)["gap"] == -8.0
    assert common.gap(None, 60.0) == {"measured": None, "aim": 60.0, "gap": None,
                                      "within": None}


def test_a_report_follows_the_schema() -> None:
    doc = _document(not_measured=[{"what": "operator scale", "why": "no binaries"}])
    assert common.problems(doc) == []
    assert doc["schema"] == common.SCHEMA
    assert json.loads(json.dumps(doc)) == doc


@pytest.mark.parametrize(("change", "expected"), [
    ({"schema": "something/else"}, "schema is"),
    ({"quick": "yes"}, "quick has type str"),
    ({"seconds": True}, "seconds has type bool"),
    ({"results": "text"}, "results has type str"),
    ({"not_measured": [{"what": "x"}]}, "without what/why"),
    ({"machine": {}}, "machine lacks cpu_model"),
])
def test_schema_problems_are_named(change: dict[str, Any], expected: str) -> None:
    found = common.problems(_document(**change))
    assert any(expected in problem for problem in found), found


def test_missing_keys_are_named() -> None:
    doc = _document()
    del doc["command"], doc["results"]
    assert set(common.problems(doc)) >= {"missing command", "missing results"}
    assert common.problems([1, 2]) == ["not a JSON object"]


def test_write_refuses_a_broken_document(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing command"):
        common.write({k: v for k, v in _document().items() if k != "command"},
                     tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
    path = common.write(_document(), tmp_path / "sub" / "x.json")
    assert common.problems(json.loads(path.read_text())) == []
    assert path.read_text().endswith("}\n")


def test_quick_runs_never_overwrite_full_results() -> None:
    assert common.result_path("memory", quick=False).name == "memory.json"
    assert common.result_path("memory", quick=True).name == "memory.quick.json"
    assert common.result_path("memory", quick=True).parent == BENCH / "results"


def test_seeded_statements_are_distinct_and_name_existing_tables() -> None:
    texts = [common.statement_text(n, 1000) for n in range(5000)]
    assert len(set(texts)) == 5000
    assert all(t.startswith("SELECT count(*) FROM t_") for t in texts)
    assert {int(t.split("FROM t_")[1].split()[0]) for t in texts} == set(range(1000))
    assert common.statement_text(1000, 1000).count(" OR ") == 1


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_sampler_reports_every_figure_for_a_live_process() -> None:
    with common.Sampler({"me": os.getpid()}, period=0.01) as sampler:
        pass
    figures = sampler.figures()["me"]
    assert set(figures) == {"rss_mb", "rss_peak_mb", "rss_first_mb", "rss_last_mb",
                            "cpu_seconds", "cpu_percent", "samples"}
    assert figures["samples"] >= 1 and figures["rss_peak_mb"] >= figures["rss_mb"] > 0
    assert common.rss_bytes(2**22 + 12345) is None  # no such process
    assert common.cpu_seconds(os.getpid()) is not None


def test_machine_details_are_complete() -> None:
    details = common.machine(server_version="PostgreSQL 15")
    assert set(common.MACHINE_KEYS) <= set(details)
    assert details["postgresql"] == "PostgreSQL 15"
    assert details["python"] == ".".join(map(str, sys.version_info[:3]))


@pytest.mark.parametrize("path", sorted((BENCH / "results").glob("*.json")),
                         ids=lambda p: p.name)
def test_committed_results_follow_the_schema(path: Path) -> None:
    assert common.problems(json.loads(path.read_text())) == []


def test_a_memory_limit_needs_headroom_over_the_peak(capsys: pytest.CaptureFixture[str]) -> None:
    roomy = common.limit_check("analyser pod", "768Mi", 506.4)
    assert roomy == {"what": "analyser pod", "limit": "768Mi", "limit_mib": 768.0,
                     "peak_mib": 506.4, "needed_mib": 658.3, "within": True}
    short = common.limit_check("analyser pod", "512Mi", 506.4)
    assert short["within"] is False and short["needed_mib"] == 658.3
    assert common.limit_check("x", "1Gi", None)["within"] is None
    common.print_limit_checks([roomy, short])
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["limit check: analyser pod memory limit 512Mi (512.0 MiB) is below 1.3 x "
                       "its measured peak 506.4 MiB = 658.3 MiB: raise it, or bring the peak "
                       "down"]
    common.print_limit_checks([roomy])
    assert "every memory limit measured (analyser pod) is at least 1.3" in capsys.readouterr().out


def _bench_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"startupmonkey_bench_{name}",
                                                  BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("common", common)  # the scripts' own `import common`
    spec.loader.exec_module(module)
    return module


def test_the_pods_and_the_chart_leave_headroom_over_the_committed_peaks() -> None:
    # "Set from the measured peaks with headroom" (issue 19, item 2): the limits in
    # operator/pods.py and the chart against the last full `make bench` on this machine. When
    # a new measurement raises a peak past a limit, this says which limit to raise.
    memory = json.loads((BENCH / "results" / "memory.json").read_text())
    operator = json.loads((BENCH / "results" / "operator_scale.json").read_text())
    checks = (_bench_module("memory").limit_checks(memory["results"])
              + _bench_module("operator_scale").limit_checks(operator["results"]))
    assert len(checks) == 5 and all(c["peak_mib"] for c in checks), checks
    assert [c for c in checks if not c["within"]] == []
