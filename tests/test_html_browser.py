"""The HTML leaderboard as a reader gets it: contents with anchors, the best cell of each column marked,
sortable columns and nothing fetched from the network; then the same page in headless Chromium
(Debian's), clicked and photographed."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import struct
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from bench.report import build_leaderboard, compute_leaderboard, render_html
from bench.report.model import Leaderboard, frame_table, values_table
from test_report import PNG_MAGIC, _frame, _row

ROOT = Path(__file__).resolve().parents[1]
MAIN = "toy-l-inf-white-box"  # the anchor of the page's L∞ table
HEADLINE = "Headline: worst case ε=0.3"


def _browser():
    """scripts/html_screenshot.py, the one place that knows how to run Chromium."""
    spec = importlib.util.spec_from_file_location("html_screenshot", ROOT / "scripts" / "html_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


needs_chromium = pytest.mark.skipif(not _browser().CHROMIUM.exists(),
                                    reason="Debian's chromium is not installed (apt-get install chromium): "
                                           "the page is not checked in a browser")


class _Page(HTMLParser):
    """What the tests read from a page: ids, links, scripts, and each section's table as (text, class) cells."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value) of every href/src
        self.scripts: list[tuple[dict, str]] = []
        self.toc: list[str] = []  # the fragments the table of contents links to
        self.tables: dict[str, dict] = {}  # innermost section id -> {"columns": [...], "rows": [[(text, css)]]}
        self._sections: list[str] = []
        self._in_nav = False
        self._script: dict | None = None
        self._cell: list | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        for name in ("href", "src"):
            if name in attrs:
                self.links.append((tag, name, attrs[name]))
        if tag == "section":
            self._sections.append(attrs["id"])
        elif tag == "nav":
            self._in_nav = True
        elif tag == "a" and self._in_nav:
            self.toc.append(attrs["href"])
        elif tag == "script":
            self._script, self._text = attrs, []
        elif tag == "table":
            self.tables[self._sections[-1]] = {"columns": [], "rows": []}
        elif tag == "tr" and self._sections and self._sections[-1] in self.tables:
            self.tables[self._sections[-1]]["rows"].append([])
        elif tag in ("th", "td"):
            self._cell = [tag, attrs.get("class", ""), ""]

    def handle_endtag(self, tag):
        if tag == "section":
            self._sections.pop()
        elif tag == "nav":
            self._in_nav = False
        elif tag == "script":
            self.scripts.append((self._script, "".join(self._text)))
            self._script = None
        elif tag in ("th", "td") and self._cell:
            kind, css, text = self._cell
            table = self.tables[self._sections[-1]]
            if kind == "th":
                table["columns"].append(text.strip())
            else:
                table["rows"][-1].append((text.strip(), css))
            self._cell = None

    def handle_data(self, data):
        if self._script is not None:
            self._text.append(data)
        if self._cell is not None:
            self._cell[2] += data

    def rows(self, section: str) -> list[list[tuple[str, str]]]:
        return [r for r in self.tables[section]["rows"] if r]


def _board_frame() -> pd.DataFrame:
    """test_report's two defenses plus Beta: best under pgd ε=0.1 only, "—" in every other column."""
    return pd.concat([_frame(), pd.DataFrame([_row("Beta", "pgd", 0.1, [1] * 9 + [0])])], ignore_index=True)


@pytest.fixture
def page_path(tmp_path) -> Path:
    build_leaderboard(_board_frame(), tmp_path / "leaderboard")
    return tmp_path / "leaderboard" / "index.html"


# --------------------------------------------------------------------------- the page's source


def test_contents_link_every_section_and_table_by_a_stable_id(page_path):
    page = _Page(page_path.read_text(encoding="utf-8"))
    assert page.toc == ["#summary-best-known-robust-accuracy", "#summary-toy-l-inf-eps-0-3", "#toy",
                        "#toy-best-known-robust-accuracy-l-inf", f"#{MAIN}",
                        "#toy-rows-each-label-s-registry-entry-its-non-default", "#toy-details", "#toy-plots"]
    assert len(page.ids) == len(set(page.ids))
    assert {link[1:] for link in page.toc} <= set(page.ids)
    # the anchor wraps its table, so a link lands on the heading above it
    assert page.tables[MAIN]["columns"][:3] == ["Defense", "Clean", HEADLINE]


def test_repeated_headings_get_distinct_anchors():
    section = compute_leaderboard(_frame()).datasets[0]
    board = Leaderboard(title="t", produced="p", legend="l", datasets=[section, section])
    page = _Page(render_html(board))
    assert page.toc[0] == "#toy" and f"#{MAIN}" in page.toc and "#toy-2" in page.toc and f"#{MAIN}-2" in page.toc
    assert len(page.ids) == len(set(page.ids)) and {link[1:] for link in page.toc} <= set(page.ids)


def test_best_cell_of_each_column_is_marked_from_the_numbers(page_path):
    page = _Page(page_path.read_text(encoding="utf-8"))
    columns = page.tables[MAIN]["columns"]
    best = {(row[0][0], column) for row in page.rows(MAIN)
            for column, (_, css) in zip(columns, row) if "best" in css.split()}
    # Zeta leads every column but pgd ε=0.1, where Beta (90.0) beats it; labels are never marked
    assert best == {("Zeta", c) for c in columns[1:] if c != "pgd ε=0.1"} | {("Beta", "pgd ε=0.1")}
    for section, table in page.tables.items():  # legend and details have no "best"
        if section != MAIN and not section.startswith("summary-") and "best-known" not in section:
            assert not any("best" in css for row in table["rows"] for _, css in row), section


def test_ties_are_all_marked_and_a_lone_number_is_not():
    values = pd.DataFrame({"A": [0.5, 0.2, 0.5], "B": [0.1, math.nan, math.nan], "C": [0.3, 0.3, 0.3]},
                          index=pd.Index(["x", "y", "z"], name="Defense"))
    best = values_table("h", "s", values).best()
    assert best["A"].tolist() == [True, False, True]
    assert not best["B"].any() and best["C"].all() and not best["Defense"].any()
    # a table of text (legend, details, detection) has no direction: nothing is marked
    assert not frame_table("h", "s", values.reset_index()).best().to_numpy().any()


def test_inline_sort_script_and_no_external_resources(page_path):
    html = page_path.read_text(encoding="utf-8")
    page = _Page(html)
    assert [attrs.get("id") for attrs, _ in page.scripts] == ["sortable-tables"]
    attrs, code = page.scripts[0]
    assert "src" not in attrs and "addEventListener" in code
    assert 'class="sortable"' in html
    # Offline: every link is a fragment of this page or a relative file (the plots); no CSS import or url().
    external = [link for link in page.links if re.match(r"(?i)^\s*([a-z][a-z0-9+.-]*:|//)", link[2])]
    assert external == []
    assert {v for tag, _, v in page.links if tag == "img"} == {"plots/toy__linf__fgsm.png", "plots/toy__linf__pgd.png"}
    assert "@import" not in html and "url(" not in html


# --------------------------------------------------------------------------- in the browser


# Appended after the page's own script: clicks headings in turn and records the row order after each.
HARNESS = """<script>
(function () {
  var table = document.querySelector("#%(table)s table");
  function labels() {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[0].textContent.trim(); });
  }
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var seen = [["loaded", labels(), ""]];
  %(clicks)s.forEach(function (name) {
    var th = heads.filter(function (h) { return h.textContent.trim() === name; })[0];
    th.click();
    seen.push([name, labels(), th.getAttribute("aria-sort")]);
  });
  var out = document.createElement("pre");
  out.id = "sort-result";
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
})();
</script>
"""


@needs_chromium
def test_clicking_a_heading_sorts_the_table_in_chromium(page_path):
    clicks = ["pgd ε=0.1", "pgd ε=0.1", HEADLINE, HEADLINE, "Defense", "Defense"]
    html = page_path.read_text(encoding="utf-8")
    assert html.count("</body>") == 1
    harness = page_path.with_name("harness.html")  # beside the page: same relative plot paths
    harness.write_text(html.replace("</body>", HARNESS % {"table": MAIN, "clicks": json.dumps(clicks)}
                                    + "</body>"), encoding="utf-8")
    dom = _browser().dump_dom(harness)
    found = re.search(r'<pre id="sort-result">(.*?)</pre>', dom, re.S)
    assert found, "the page's script failed in the browser (no result recorded):\n" + dom[-2000:]
    seen = [tuple(step) for step in json.loads(unescape(found.group(1)))]
    assert seen == [
        ("loaded", ["Zeta", "Alpha", "Beta"], ""),  # ranked by the headline; Beta has none
        ("pgd ε=0.1", ["Beta", "Zeta", "Alpha"], "descending"),  # an accuracy: best first
        ("pgd ε=0.1", ["Alpha", "Zeta", "Beta"], "ascending"),
        (HEADLINE, ["Zeta", "Alpha", "Beta"], "descending"),  # by "20.0" of "20.0 [5.7, 51.0]"; "—" last
        (HEADLINE, ["Alpha", "Zeta", "Beta"], "ascending"),  # ... last both ways
        ("Defense", ["Alpha", "Beta", "Zeta"], "ascending"),  # text: alphabetical first
        ("Defense", ["Zeta", "Beta", "Alpha"], "descending"),
    ]


@needs_chromium
def test_screenshot_shows_the_page(page_path, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "shots" / "leaderboard.png"
    assert _browser().main([str(page_path), "-o", str(out), "--width", "1024", "--height", "900"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    assert struct.unpack(">II", data[16:24]) == (1024, 900)  # IHDR: the window asked for
    with Image.open(out) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colors) > 50  # text and tables, not a blank or error page
    assert any(rgb == (0xDA, 0xFB, 0xE1) for _, rgb in colors)  # td.best's background: the marking shows
