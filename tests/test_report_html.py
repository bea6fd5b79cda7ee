"""``report.html``: the benchmark report as one self-contained page, read back with the standard library's
HTML parser.

One tiny benchmark (three cells: natural and FGSM-AT at two eps; native attacks only; a few seconds once
torch is warm) runs through ``bench run`` for the whole module. A copy of it gains a defense whose label,
knob and knob value are HTML (and whose record repeats the natural model's outcomes, so it ties with it):
every text must come out escaped, and the tie must show.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

import robustkit.host as host_module
from robustkit.bench.analysis import load_run
from robustkit.bench.audit import BOUNDS
from robustkit.bench.report import HTML_FILE, write_report
from robustkit.bench.report_text import audit_cells, difference_rows, fmt, tie_groups
from robustkit.cli import cli
from robustkit.host import make_host, reset_host
from robustkit.progress import percent
from robustkit.store import ResultStore, cell_key

TINY = """\
name = "tiny-html"
description = "natural and FGSM-AT on digits, for the HTML report"
seeds = [0]
dataset = {name = "digits"}
model = {name = "lenet", params = {width = 0.25}}
training = {epochs = 1, batch_size = 64, lr = 5e-3, val_examples = 0}
threat = {norm = "linf", eps = 0.1}
evaluation = {n_examples = 40, eps_curve = [0.05, 0.2]}
protocol = {targets = ["natural", 0.3], rank_by = "worst-case"}
audit = {steps = 2, more_steps = 4, black_box = {name = "square", label = "square", params = {n_queries = 20}}}

[[attacks]]
name = "pgd"
label = "pgd"
params = {step_size = 0.04, steps = 3}

[[attacks]]
name = "deepfool"
label = "deepfool"
params = {max_iter = 10}

[[defenses]]
name = "natural"

[[defenses]]
name = "fgsm-at"
sweep = [0.05, 0.1]
"""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
EVIL_KNOB = "<b>k</b>"
EVIL_VALUE = '"><img src=x onerror=alert(2)>'
EVIL_DESCRIPTION = "<img src=y onerror=alert(3)> & friends"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Page(HTMLParser):
    """The parts of a page the tests read: tables by id (headers, and per row each cell's text and attributes),
    every start tag with its attributes, the tie-group lists, and the text of script and style elements."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, dict[str, list]] = {}
        self.lists: dict[str, list[str]] = {}
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._table: dict[str, list] | None = None
        self._cell: list[str] | None = None
        self._cell_attrs: dict[str, str | None] = {}
        self._row: list[tuple[str, dict[str, str | None]]] | None = None
        self._list: list[str] | None = None
        self._item: list[str] | None = None
        self._raw: list[str] | None = None
        self._in_head = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "table":
            self._table = {"headers": [], "rows": []}
            self.tables[attributes.get("id") or f"table-{len(self.tables)}"] = self._table
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._table is not None:
            self._cell, self._cell_attrs = [], attributes
        elif tag == "ul" and attributes.get("id"):
            self._list = self.lists.setdefault(attributes["id"], [])
        elif tag == "li" and self._list is not None:
            self._item = []
        elif tag in ("script", "style"):
            self._raw = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append((" ".join("".join(self._cell).split()), self._cell_attrs))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            if self._in_head:
                self._table["headers"] = [cell for cell, _ in self._row]
            else:
                self._table["rows"].append(self._row)
            self._row = None
        elif tag == "thead":
            self._in_head = False
        elif tag == "table":
            self._table = None
        elif tag == "li" and self._item is not None and self._list is not None:
            self._list.append(" ".join("".join(self._item).split()))
            self._item = None
        elif tag == "ul":
            self._list = None
        elif tag in ("script", "style") and self._raw is not None:
            (self.scripts if tag == "script" else self.styles).append("".join(self._raw))
            self._raw = None

    def handle_data(self, data: str) -> None:
        for sink in (self._cell, self._item, self._raw):
            if sink is not None:
                sink.append(data)

    def rows(self, table_id: str) -> list[dict[str, str]]:
        """A table's body rows as ``{header: cell text}``."""
        table = self.tables[table_id]
        return [{h: cell for h, (cell, _) in zip(table["headers"], row)} for row in table["rows"]]

    def sort_keys(self, table_id: str, header: str) -> list[str | None]:
        table = self.tables[table_id]
        column = table["headers"].index(header)
        return [row[column][1].get("data-sort") for row in table["rows"]]


@pytest.fixture(scope="module")
def host():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_BLOCK_PLUGINS", "timm-models")  # listing timm's models imports timm (seconds)
        return make_host()


@pytest.fixture(scope="module")
def bench(tmp_path_factory, host, one_torch_thread):
    """``bench run`` of TINY through the CLI: (out folder, CLI output)."""
    folder = tmp_path_factory.mktemp("bench-html")
    (folder / "spec.toml").write_text(TINY, encoding="utf-8")
    out = folder / "out"
    host_module._HOST = host
    try:
        result = CliRunner().invoke(cli, ["bench", "run", str(folder / "spec.toml"), "--out", str(out),
                                          "--threads", "1"])
    finally:
        reset_host()
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def page(bench) -> Page:
    out, _ = bench
    return Page((out / HTML_FILE).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hostile(bench, tmp_path_factory) -> Path:
    """A copy of the run with one more defense, named in HTML, whose one model is the natural model again."""
    out, _ = bench
    copy = tmp_path_factory.mktemp("hostile") / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("train"))
    benchmark = json.loads((copy / "benchmark.json").read_text())
    store = ResultStore(copy)
    natural = next(store.get(key) for key in benchmark["cells"] if store.get(key)["result"]["defense"] == "natural")
    settings = json.loads(json.dumps(natural["settings"]))
    settings["defense"].update(label=EVIL, knob=EVIL_KNOB, value=EVIL_VALUE)
    result = {**natural["result"], "defense": EVIL, "knob": EVIL_KNOB, "knob_value": EVIL_VALUE}
    key = cell_key(settings)
    store.put(key, settings, result)
    benchmark["cells"].append(key)
    benchmark["description"] = EVIL_DESCRIPTION
    benchmark["defenses"].append({"label": EVIL, "name": "natural", "knob": EVIL_KNOB, "sweep": [EVIL_VALUE],
                                  "params": {}, "reference": {"title": EVIL}, "cost": 1.0})
    (copy / "benchmark.json").write_text(json.dumps(benchmark), encoding="utf-8")
    write_report(copy)
    return copy


def test_bench_run_and_report_write_the_page(bench, host):
    out, output = bench
    assert (out / HTML_FILE).is_file() and f"wrote {out / HTML_FILE}" in output
    host_module._HOST = host
    try:
        result = CliRunner().invoke(cli, ["bench", "report", str(out)])
    finally:
        reset_host()
    assert result.exit_code == 0, result.output
    assert f"wrote {out / HTML_FILE}" in result.output
    text = (out / HTML_FILE).read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")


def test_the_page_references_nothing_outside_itself(page):
    for tag, attrs in page.tags:
        assert tag not in ("link", "iframe", "object", "embed", "base"), tag
        if "src" in attrs:
            assert tag == "img" and attrs["src"].startswith("data:image/png;base64,"), (tag, attrs["src"][:40])
        if "href" in attrs:
            assert attrs["href"].startswith("#"), attrs["href"]  # in-page links only
    assert [attrs for tag, attrs in page.tags if tag == "script"] == [{}]  # one inline script, no src
    assert "sort" in page.scripts[0] and "addEventListener" in page.scripts[0]
    for code in page.scripts + page.styles:
        assert "url(" not in code and "@import" not in code and "http" not in code and "fetch(" not in code


def test_the_plots_are_embedded_pngs(bench, page):
    out, _ = bench
    images = {attrs["alt"]: base64.b64decode(attrs["src"].split(",", 1)[1], validate=True)
              for tag, attrs in page.tags if tag == "img"}
    assert set(images) == {"robustness_curves", "accuracy_vs_eps"}
    for name, data in images.items():
        assert data[:8] == PNG_MAGIC
        assert data == (out / f"{name}.png").read_bytes()


def test_every_table_sorts_and_numbers_carry_their_sort_keys(page):
    tables = [attrs for tag, attrs in page.tags if tag == "table"]
    assert tables and all(attrs.get("class") == "sortable" for attrs in tables)
    assert all(t["headers"] for t in page.tables.values())
    for table_id, table in page.tables.items():
        for row in table["rows"]:
            assert len(row) == len(table["headers"]), table_id
            for _, attrs in row:
                key = attrs.get("data-sort")
                if key:  # what the script compares: numbers, or "" for no value (sorted last)
                    float(key)
    # The points sort by clean accuracy through the exact fractions, not the rounded text.
    run_clean = page.sort_keys("points", "clean")
    assert all(k is not None and 0 <= float(k) <= 1 for k in run_clean)


def test_the_comparison_shows_every_reading_its_interval_and_the_tie_groups(bench, page):
    out, _ = bench
    analysis = load_run(out).analysis()
    assert [t.name for t in analysis.targets] == ["natural", "0.3"]
    for target in analysis.targets:
        comparison = analysis.comparison(target.name)
        rows = page.rows(f"ranking-{target.name}")
        assert [r["defense"] for r in rows] == [p.name for p in comparison.ranking]
        assert [r["rank"] for r in rows] == [p.label for p in comparison.ranking]
        for row in rows:
            reading = comparison.readings[row["defense"]]
            assert row["worst-case accuracy"] == fmt(reading, "worst-case")
            if reading.low is not None:
                assert f"[{percent(reading.low)}, {percent(reading.high)}]" in row["worst-case accuracy"]
            members = dict(tie_groups(comparison)).get(row["rank"], [])  # none for a defense not ranked
            assert row["tied with"] == (", ".join(m for m in members if m != row["defense"]) or "-")
        groups = page.lists[f"ties-{target.name}"]
        assert len(groups) == len(tie_groups(comparison))
        for item, (label, names) in zip(groups, tie_groups(comparison)):
            assert item.startswith(f"{label}{', '.join(names)}")
        expected = [(f"{a} - {b}", text, "yes" if clear else "no")
                    for a, b, text, _, clear in difference_rows(comparison)]
        if expected:
            differences = page.rows(f"differences-{target.name}")
            assert [(d["pair"], d["difference [95%]"], d["clear"]) for d in differences] == expected
        else:  # fewer than two defenses reach the target: no pair to compare
            assert f"differences-{target.name}" not in page.tables


def test_every_defense_and_every_recorded_cell_appears(bench, page):
    out, _ = bench
    run = load_run(out)
    assert len(run.records) == 3
    rows = page.rows("points")
    assert len(rows) == len(run.records)
    shown = {(r["defense"], r["knob"], r["value"], r["seed"]) : r for r in rows}
    for record in run.records:
        row = shown[(record["defense"], record["knob"] or "-",
                     "-" if record["knob_value"] is None else str(record["knob_value"]), str(record["seed"]))]
        assert row["clean"] == percent(record["clean_accuracy"])
        assert row["worst case"] == percent(record["worst_case_accuracy"])
        for label, facts in record["attacks"].items():
            assert row[label] == percent(facts["robust_accuracy"])
        assert row["deepfool:rho"] == f"{record['attacks']['deepfool']['rho']:.3f}"
    assert {d["label"] for d in run.benchmark["defenses"]} == {r["defense"] for r in page.rows("defenses")}
    assert {r["defense"] for r in page.rows("models")} == {"natural", "fgsm-at"}


def test_new_records_hold_the_audit_numbers_and_the_page_shows_them(bench, page):
    out, _ = bench
    run = load_run(out)
    rows = page.rows("audit")
    expected = 0
    for record in run.records:
        suite = record["attacks"]["pgd"]["robust_accuracy"]  # the suite's only white-box fixed-budget attack
        for name, check in record["audit"]["checks"].items():
            expected += 1
            assert check["bound"] == BOUNDS[name] and check["limit"] is not None
            assert check["passed"] == (check["accuracy"] <= check["limit"] if check["bound"] == "at most"
                                       else check["accuracy"] >= check["limit"])
            if name == "unbounded":
                assert check["limit"] == 0.05 and "reference" not in check
                continue
            assert check["gap"] == pytest.approx(check["accuracy"] - check["reference"])
            if name in ("black_box", "transfer"):
                # The reference is the best white-box result: the suite's pgd, unless the audit's PGD did better.
                assert check["reference"] <= suite
                if check["reference"] == suite:  # on a tie the suite's own attack is named
                    assert check["reference_detail"] == "the suite's pgd"
                else:
                    assert check["reference_detail"] in ("PGD-2", "PGD-4")
            else:
                assert check["reference_detail"] == "PGD-2" and check["detail"] == "PGD-4"
            row = next(r for r in rows if r["defense"] == record["defense"] and r["check"] == name
                       and r["knob"] == (f"{record['knob']}={record['knob_value']}" if record["knob"] else "-"))
            assert [row[h] for h in ("attack", "measured", "compared with", "from", "gap (points)", "must be",
                                     "verdict")] == audit_cells(name, check)
            assert row["measured"] == percent(check["accuracy"])
            assert row["compared with"] == percent(check["reference"])
            assert row["must be"] == f"{check['bound']} {percent(check['limit'])}"
    assert len(rows) == expected


def test_user_text_is_escaped(hostile):
    text = (hostile / HTML_FILE).read_text(encoding="utf-8")
    for raw in (EVIL, EVIL_KNOB, EVIL_VALUE, EVIL_DESCRIPTION):
        assert raw not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    assert [tag for tag, _ in page.tags].count("script") == 1
    assert all(attrs["src"].startswith("data:image/png;base64,") for tag, attrs in page.tags if tag == "img")
    assert not any(name.startswith("on") for _, attrs in page.tags for name in attrs)
    # ... and the texts read back as they were written.
    points = page.rows("points")
    evil = next(r for r in points if r["defense"] == EVIL)
    assert (evil["knob"], evil["value"]) == (EVIL_KNOB, EVIL_VALUE)
    assert any(r["knob"] == f"{EVIL_KNOB}={EVIL_VALUE}" for r in page.rows("audit") if r["defense"] == EVIL)


def test_a_defense_no_interval_separates_shares_a_tie_group(hostile):
    """The added defense's model is the natural model again: their difference is 0 on every draw, so they tie."""
    page = Page((hostile / HTML_FILE).read_text(encoding="utf-8"))
    comparison = load_run(hostile).analysis().comparison("0.3")
    groups = dict(tie_groups(comparison))
    label = next(p.label for p in comparison.ranking if p.name == EVIL)
    assert label.endswith("=") and {"natural", EVIL} <= set(groups[label])
    rows = {r["defense"]: r for r in page.rows("ranking-0.3")}
    assert rows[EVIL]["rank"] == rows["natural"]["rank"] == label
    assert "natural" in rows[EVIL]["tied with"] and EVIL in rows["natural"]["tied with"]
    item = next(i for i in page.lists["ties-0.3"] if i.startswith(label))
    assert EVIL in item and "natural" in item and "tied" in item
    pair = next(d for d in page.rows("differences-0.3") if set(d["pair"].split(" - ")) == {"natural", EVIL})
    assert pair["difference [95%]"] == "+0.0 [+0.0, +0.0]" and pair["clear"] == "no"


def test_percent_in_the_terminal_table_and_report_md(bench, host):
    out, _ = bench
    run = load_run(out)
    text, _ = write_report(out)
    natural = next(r for r in run.records if r["defense"] == "natural")
    block = text.split("target natural")[1].split("target 0.3")[0]
    row = next(line for line in block.splitlines() if line.split()[1:2] == ["natural"])
    assert row.split()[2] == percent(natural["worst_case_accuracy"])
    assert "worst-case accuracy" in block
    md = (out / "report.md").read_text(encoding="utf-8")
    points = md.split("## Points")[1].split("## Gradient-masking audit")[0]
    line = next(line for line in points.splitlines() if line.startswith("| natural |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:6] == [percent(natural["clean_accuracy"]), percent(natural["worst_case_accuracy"]),
                          percent(natural["attacks"]["pgd"]["robust_accuracy"])]
    audit = md.split("## Gradient-masking audit")[1]
    unbounded = natural["audit"]["checks"]["unbounded"]
    assert f"| natural | - | 0 | unbounded | linf PGD-4 at eps 1 | {percent(unbounded['accuracy'])} |" in audit
    comparison = md.split("## Matched comparison")[1].split("## Points")[0]
    ranking = next(line for line in comparison.splitlines() if line.startswith("| ") and "| natural |" in line)
    worst, pgd = [c.strip() for c in ranking.strip("|").split("|")][2:4]
    assert re.fullmatch(r"\d+\.\d% \[\d+\.\d%, \d+\.\d%\]( \^)?", worst) and pgd == worst
