"""Every page the web dashboard serves is valid HTML (issue 25), as the Nu Html Checker (vnu,
the W3C's validator) judges it: the pages are rendered through the real templates with the
builders of ``test_web_dashboard_views``, written to files and checked in one JVM run
(``hack/install-vnu.sh`` fetches vnu into the cache). Errors fail, with file, line and
message; info messages (warnings) are printed only. Pages whose database-controlled text
carries markup characters must validate too: autoescaping keeps them valid."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import hypothesis
import hypothesis.strategies
import pytest

from startupmonkey.dashboard import server, views
from tests.support.components import require
from tests.unit.test_web_dashboard_views import (
    ENV,
    SETTINGS,
    _kept_index,
    _monitor,
    _pages,
    _remediation,
)

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "hack" / "install-vnu.sh"
VNU_VERSION = "26.1.11"
MAIN_CLASS = "nu.validator.client.SimpleCommandLineValidator"

#: What a database, a person or a manifest controls, with every markup character.
MARKUP = {
    "script": "<script>alert(1)</script>",
    "attribute": '"><img src=x onerror=alert(1)>',
    "quotes": "it's \"quoted\" ' onmouseover='alert(1)",
    "ampersand": "a && b &amp; &lt;c&gt; &#0; &nosuch;",
    "comment": "</textarea><b>&amp;<!-- -->]]><![CDATA[",
}
#: Characters HTML forbids (C0 controls but whitespace, DEL, noncharacters): autoescaping
#: passes them through, so such text from the database made pages invalid (vnu: "Forbidden
#: code point") until the templates' finalize (server.printable) replaced them.
FORBIDDEN = "a\x01b\x7fc\ufffed"


def _kept() -> dict[str, Any]:
    """A built index, kept (the views test's), with its after figures and executed SQL."""
    obj = _kept_index()
    obj["status"]["after"] = {"mean_ms": 0.07}
    obj["status"]["executedSql"] = [obj["spec"]["sql"]]
    return obj


def _remediation_pages(obj: dict[str, Any], *, error: str = "", done: str = ""
                       ) -> dict[str, str]:
    detail = views.detail(views.parse_remediation(obj))
    out = {"remediation": server.page(ENV, "remediation.html", SETTINGS,
                                      title=detail.item.name, d=detail, error=error, done=done)}
    for action in ("approve", "reject", "rollback"):
        out[f"confirm-{action}"] = server.page(
            ENV, "confirm.html", SETTINGS, title=f"{action.capitalize()} {detail.item.name}",
            d=detail, action=action)
    return out


def _listing(objs: list[dict[str, Any]], query: dict[str, str], note: str = "") -> str:
    items, unreadable = views.parse_all(objs)
    filters = views.Filters.parse(query)
    shown = views.list_page(items, filters)
    return server.page(ENV, "remediations.html", SETTINGS, title="Remediations",
                       filters=shown.filters, shown=shown, choices=views.choices(items),
                       note=note, unreadable=unreadable)


def _overview(monitors: list[dict[str, Any]], note: str = "",
              unreadable: list[str] | None = None,
              remediations: list[dict[str, Any]] | None = None, latest_note: str = "") -> str:
    items, skipped = views.parse_all(remediations or [])
    return server.page(ENV, "overview.html", SETTINGS, title="Monitors",
                       cards=[views.monitor_card(m) for m in monitors], note=note,
                       unreadable=unreadable or [], latest=views.latest_by_monitor(items),
                       latest_note=latest_note, unreadable_remediations=len(skipped))


def _every_page() -> dict[str, str]:
    """Each page the dashboard serves, in the states that change what it shows."""
    pending = _remediation()
    kept = _kept()
    failed = _remediation("shop-failed", state="Failed", message="the build failed: lock timeout",
                          history_message="lock timeout")
    reverted = _remediation("shop-reverted", state="RolledBack", action="drop_index",
                            detector="unused_index",
                            decision={"keep": False, "reason": "reverted: slower",
                                      "beforeMeanMs": 2.0, "afterMeanMs": 4.0})
    broken = _remediation("shop-broken")
    broken["spec"] = {"monitor": "shop"}  # does not read as a Remediation
    everything = [pending, kept, failed, reverted, broken]
    healthy = _monitor(last_error="", pending=0)
    healthy["metadata"]["name"] = "billing"  # two cards: ids must differ
    pages: dict[str, str] = {
        "overview": _overview([_monitor(), healthy]),
        "overview-latest-remediations": _overview([_monitor(), healthy],
                                                  remediations=everything),
        "overview-latest-refused": _overview(
            [_monitor(), healthy],
            latest_note='The latest remediations could not be read: Kubernetes API: 403 '
                        'Forbidden: User "viewer" cannot list resource "remediations"'),
        "overview-empty": _overview([], note="listed 0 of many: forbidden in other namespaces",
                                    unreadable=["odd: not a DatabaseMonitor"]),
        "remediations": _listing(everything, {}),
        "remediations-filtered": _listing(everything, {"monitor": "shop",
                                                       "state": "PendingApproval",
                                                       "detector": "missing_index",
                                                       "since": "7d"}),
        "remediations-ignored-filters": _listing(everything, {"detector": "<b>nope</b>",
                                                              "state": "Sleeping",
                                                              "since": "forever"}),
        "remediations-page-2-of-3": _listing(
            [_remediation(f"shop-{n:04d}", created=f"2026-12-06T19:{n // 60:02d}:{n % 60:02d}Z")
             for n in range(250)] + [broken], {"monitor": "shop", "page": "2"}),
        "remediations-page-past-the-last": _listing(everything, {"page": "7"}),
        "remediations-none": _listing([], {"state": "Failed"}, note="truncated"),
        "login": server.page(ENV, "login.html", SETTINGS, wrong=False,
                             again="/ns/shop-ns/remediations/shop-0123456789", port=8765),
        "login-wrong": server.page(ENV, "login.html", SETTINGS, wrong=True, again="",
                                   port=8765),
        "token-login": server.page(ENV, "token_login.html", SETTINGS, reason="",
                                   again="/ns/shop-ns/remediations/shop-0123456789"),
        "token-login-refused": server.page(
            ENV, "token_login.html", SETTINGS, again="",
            reason='system:serviceaccount:shop:nobody may not list remediations.startupmonkey.dev '
                   'in every namespace (no RBAC policy matched): <give "list">'),
        "error-in-cluster-session": server.page(ENV, "error.html", SETTINGS, csrf="session-token",
                                                user="system:serviceaccount:shop:<viewer>",
                                                reason="Approve refused: 403"),
        "error-in-cluster-no-session": server.page(ENV, "error.html", SETTINGS, user="",
                                                   reason="Refused: another site."),
        "error": server.page(ENV, "error.html", SETTINGS,
                             reason='Kubernetes API: 403 Forbidden: User "viewer" cannot '
                                    'patch resource "remediations"'),
    }
    # Each mode's words for who acts (the header's rights, the confirmation's record).
    detail = views.detail(views.parse_remediation(pending))
    standalone = {"mode": "standalone",
                  "rights": "the executor API of `startupmonkey run` at unix:///tmp/<x>/"
                            "executor.sock, with the rights of whoever may open its socket"}
    in_cluster = {"mode": "in-cluster", "user": "system:serviceaccount:shop:<viewer>",
                  "csrf": "session-token", "scope": "shop"}
    for label, mode in (("standalone", standalone), ("in-cluster", in_cluster),
                        ("local", {"mode": "local", "rights": "your kubeconfig, your rights"})):
        for action in ("approve", "reject"):
            pages[f"confirm-{action}-{label}-mode"] = server.page(
                ENV, "confirm.html", SETTINGS, title=f"{action} {detail.item.name}", d=detail,
                action=action, **mode)
    pages["error-standalone-mode"] = server.page(ENV, "error.html", SETTINGS, reason="x",
                                                 **standalone)
    for label, obj, extra in (
            ("pending", pending, {}),
            ("kept-with-chart", kept, {"done": server.DONE["rollback"]}),
            ("failed", failed, {"error": "409: x is Failed, not PendingApproval"}),
            ("rolled-back", reverted, {})):
        for name, page in _remediation_pages(obj, **extra).items():
            pages[f"{name}-{label}"] = page
    assert "<svg" in pages["remediation-kept-with-chart"], "the chart case draws no chart"
    assert 'rel="next"' in pages["remediations-page-2-of-3"] \
        and "Rows 101-200 of 250 shown" in pages["remediations-page-2-of-3"], "not page 2 of 3"
    assert "/ns/shop-ns/remediations/shop-failed" in pages["overview-latest-remediations"]
    return pages


def _markup_pages(label: str, text: str) -> dict[str, str]:
    """The same pages with ``text`` in every database- or person-controlled field."""
    obj = _remediation(table=text[:63], sql=f"CREATE INDEX {text}", evidence={text: text},
                       message=text, summary=text, history_message=text,
                       approved_by=text, before={text: 1.0},
                       annotations={"startupmonkey.dev/approved-by": text})
    monitor = _monitor(last_error=text, last_action=text, version=text[:30])
    remediation, confirm, listing, overview = _pages(obj, monitor)
    return {f"markup-{label}-remediation": remediation,
            f"markup-{label}-confirm": confirm,
            f"markup-{label}-remediations": listing,
            f"markup-{label}-overview": overview,
            f"markup-{label}-error": server.page(ENV, "error.html", SETTINGS, reason=text)}


def _vnu_classpath() -> str:
    java = shutil.which("java")
    if java is None:
        require("java", "the Nu Html Checker needs a Java runtime >= 11 "
                "(apt-get install openjdk-17-jre-headless)")
    where = Path(subprocess.run(["bash", str(INSTALL), "--print-path"], capture_output=True,
                                text=True, check=True).stdout.strip())
    if not (where / f"validator-{VNU_VERSION}.jar").is_file() \
            or not (where / ".vnu.stamp").is_file():
        require("vnu (the Nu Html Checker)", f"{where} is not installed: run "
                "`bash hack/install-vnu.sh` (make test does; about 40 s cold, cached by "
                "version)")
    return f"{where}/*"


Checked = dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Checked:
    """Every page written to a file and checked in one vnu run: messages by page name."""
    classpath = _vnu_classpath()
    pages = _every_page()
    for label, text in [*MARKUP.items(), ("forbidden", FORBIDDEN)]:
        pages.update(_markup_pages(label, text))
    folder = tmp_path_factory.mktemp("pages")
    files = []
    for name, page in pages.items():
        path = folder / f"{name}.html"
        path.write_text(page, encoding="utf-8")
        files.append(str(path))
    start = time.monotonic()
    run = subprocess.run(["java", "-cp", classpath, MAIN_CLASS, "--format", "json", "--stdout",
                          "--exit-zero-always", *files],
                         capture_output=True, text=True, timeout=110)
    took = time.monotonic() - start
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"vnu did not answer in JSON (exit {run.returncode}):\n"
                    f"{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    print(f"vnu {report.get('version')}: {len(files)} pages in {took:.1f}s")
    found: Checked = {name: [] for name in pages}
    for message in report["messages"]:
        name = Path(unquote(urlparse(message.get("url", "")).path)).stem
        found.setdefault(name, []).append(message)
    return found


def _describe(name: str, message: dict[str, Any]) -> str:
    sub = f" ({message['subType']})" if message.get("subType") else ""
    return (f"{name}.html:{message.get('lastLine', '?')}:{message.get('firstColumn', '?')}: "
            f"{message['type']}{sub}: {message.get('message', '')}\n"
            f"    {message.get('extract', '').strip()!r}")


def _check(checked: Checked, keep: Callable[[str], bool]) -> None:
    names = [name for name in checked if keep(name)]
    assert names, "no page chosen"
    errors: list[str] = []
    notes: list[str] = []
    for name in names:
        for message in checked[name]:
            (notes if message["type"] == "info" else errors).append(_describe(name, message))
    for note in notes:
        print(note)
    assert not errors, f"{len(errors)} HTML errors:\n" + "\n".join(errors)


def test_the_validator_reads_every_page(checked: Checked) -> None:
    # A message without a page (a file vnu could not read, an I/O error) fails here.
    expected = set(_every_page())
    assert expected <= set(checked)
    strays = {name: msgs for name, msgs in checked.items()
              if not name.startswith("markup-") and name not in expected}
    assert not strays, strays


@pytest.mark.parametrize("page", sorted(_every_page()))
def test_every_page_is_valid_html(checked: Checked, page: str) -> None:
    _check(checked, lambda name: name == page)


@pytest.mark.parametrize("label", sorted(MARKUP))
def test_markup_in_what_the_database_controls_keeps_every_page_valid(
        checked: Checked, label: str) -> None:
    _check(checked, lambda name: name.startswith(f"markup-{label}-"))


def test_forbidden_code_points_in_what_the_database_controls_keep_pages_valid(
        checked: Checked) -> None:
    _check(checked, lambda name: name.startswith("markup-forbidden-"))


@hypothesis.given(text=hypothesis.strategies.text(
    hypothesis.strategies.characters(exclude_categories=())))  # lone surrogates too
@hypothesis.example(text="\ud800 \udfff \ud7ff \ue000")  # each side of the surrogates
@hypothesis.example(text="\x00\x08\t\n\x0b\x0c\r\x0e\x1f \x7f\x9f\xa0")
@hypothesis.example(text="\ufdcf\ufdd0\ufdef\ufdf0\ufffd\ufffe\uffff\U0010fffe\U0010ffff")
def test_printable_replaces_exactly_the_code_points_html_forbids(text: str) -> None:
    def forbidden(char: str) -> bool:
        point = ord(char)
        return ((point < 0x20 and char not in "\t\n\x0c\r") or 0x7F <= point <= 0x9F
                or 0xD800 <= point <= 0xDFFF or 0xFDD0 <= point <= 0xFDEF
                or point & 0xFFFE == 0xFFFE)

    shown = server.printable(text)
    assert len(shown) == len(text)
    for before, after in zip(text, shown, strict=True):
        assert after == ("\ufffd" if forbidden(before) else before)
