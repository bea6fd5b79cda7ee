"""``report.html``: a benchmark's report as one self-contained page.

What ``report.md`` says, in a page that opens anywhere without its folder: the matched comparison with
intervals and tie groups, every point, what each audit check measured, the provenance the records keep,
and the plots embedded as base64 PNGs. Every table sorts by a click on a column header (a few lines of
inline JavaScript); the page loads nothing else, so it can be mailed or archived as one file. Every text
from the spec or the records is HTML-escaped, since labels, knob values and descriptions are user input.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

from robustkit.bench import report_text
from robustkit.bench.analysis import WORST_CASE, BenchmarkRun, Comparison, audit_flags, defenses, metrics
from robustkit.progress import percent

#: A table cell: its text, or ``(text, sort key)`` where the key (a number, or None for "no value", sorted
#: last) orders the column instead of the text.
Cell = Any

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2329; margin: 0;
       background: #f6f7f9; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; } h1 code { font-size: inherit; }
h2 { font-size: 20px; margin: 36px 0 8px; border-bottom: 2px solid #dde1e6; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 24px 0 6px; }
nav a { margin-right: 14px; } p.note, .muted { color: #5b6570; font-size: 13.5px; }
code, pre { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f3f4f6; padding: 10px; overflow-x: auto; max-height: 420px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13.5px; }
th, td { border: 1px solid #d5d9de; padding: 4px 7px; text-align: left; vertical-align: top; }
thead th { background: #eef1f4; position: sticky; top: 0; }
table.sortable thead th { cursor: pointer; user-select: none; }
td:first-child { white-space: nowrap; }
table.sortable thead th::after { content: "\\00a0\\2195"; color: #9aa3ad; font-size: 11px; }
table.sortable thead th[aria-sort=ascending]::after { content: "\\00a0\\25B2"; color: #1d2329; }
table.sortable thead th[aria-sort=descending]::after { content: "\\00a0\\25BC"; color: #1d2329; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.flagged td { background: #fdecea; } td.flag { color: #a4161a; font-weight: 600; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dl.facts dt { color: #5b6570; } dl.facts dd { margin: 0; }
.warn { background: #fff4d6; border: 1px solid #e8c766; padding: 6px 10px; }
.ties { margin: 4px 0 10px; padding: 0; list-style: none; } .ties li { margin: 2px 0; }
.tie { display: inline-block; border-radius: 3px; padding: 0 6px; margin-right: 4px; font-weight: 600; }
.bar { position: relative; display: inline-block; width: 120px; height: 12px; background: #eef1f4;
       vertical-align: middle; border-radius: 2px; }
.bar .ci { position: absolute; top: 3px; height: 6px; background: #7aa6d8; border-radius: 2px; }
.bar .pt { position: absolute; top: 0; width: 2px; height: 12px; background: #123f73; }
figure { margin: 12px 0 24px; overflow-x: auto; } figure img { max-width: 100%; border: 1px solid #dde1e6;
       cursor: zoom-in; } figure img.full { max-width: none; cursor: zoom-out; }
.scroll { overflow-x: auto; } small { color: #5b6570; }
figcaption { color: #5b6570; font-size: 13.5px; }
"""

# Click a header: sort the body rows by that column (data-sort keys when given, else the text; empty keys
# last either way), ascending first, again to reverse.
SCRIPT = """
document.querySelectorAll("table.sortable thead th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    function key(row) {
      var cell = row.cells[col], k = cell ? cell.getAttribute("data-sort") : "";
      return k === null ? cell.textContent.trim() : k;
    }
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var nx = Number(x), ny = Number(y);
      return dir * (!isNaN(nx) && !isNaN(ny) ? nx - ny : x.localeCompare(y, undefined, {numeric: true}));
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
// Click a plot: its natural size (scroll sideways), again to fit the page.
document.querySelectorAll("figure img").forEach(function (img) {
  img.addEventListener("click", function () { img.classList.toggle("full"); });
});
"""

TIE_COLORS = ("#d8e8f7", "#dff3e3", "#fbe7cf", "#eadff5", "#f8dbe4", "#e3eef0")


def esc(value: Any) -> str:
    """Any value as HTML text (quotes escaped too, so it is safe in attributes)."""
    return escape(str(value), quote=True)


def sort_key(value: float | int | None) -> str:
    return "" if value is None else repr(float(value))


def num(text: str, value: float | int | None) -> tuple[str, float | int | None]:
    """A numeric cell: ``text`` shown, ordered by ``value``."""
    return text, value


def table(headers: Sequence[str], rows: Iterable[Sequence[Cell]], *, table_id: str | None = None,
          row_classes: Sequence[str] | None = None, raw: Iterable[int] = ()) -> str:
    """A sortable table. Cells are escaped, except in the columns numbered in ``raw`` (markup built here)."""
    raw = set(raw)
    head = "".join(f'<th scope="col" title="click to sort">{esc(h)}</th>' for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            text, key = cell if isinstance(cell, tuple) else (cell, None)
            shown = str(text) if j in raw else esc(text)
            if isinstance(cell, tuple):
                cells.append(f'<td class="num" data-sort="{esc(sort_key(key))}">{shown}</td>')
            else:
                cells.append(f"<td>{shown}</td>")
        css = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return (f'<div class="scroll"><table class="sortable"{ident}><thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody></table></div>")


def facts(items: Iterable[tuple[str, Any]]) -> str:
    """A definition list of ``(name, value)`` pairs, both escaped."""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def interval_bar(value: float | None, low: float | None, high: float | None, lo: float, hi: float) -> str:
    """The reading and its interval drawn on the scale ``lo .. hi`` (a forest plot in one cell)."""
    if value is None:
        return ""

    def at(x: float) -> float:
        return 100.0 * (x - lo) / (hi - lo) if hi > lo else 50.0

    ci = "" if low is None or high is None else \
        f'<span class="ci" style="left:{at(low):.1f}%;width:{max(at(high) - at(low), 0.5):.1f}%"></span>'
    return f'<span class="bar">{ci}<span class="pt" style="left:{at(value):.1f}%"></span></span>'


def reading_cell(comparison: Comparison, defense: str) -> Cell:
    """A reading as :func:`robustkit.bench.report_text.fmt` writes it, its interval on a second line (narrow columns)."""
    reading = comparison.readings[defense]
    text = report_text.fmt(reading, comparison.metric)
    value, _, rest = text.partition(" [")
    html = f"{esc(value)} <br><small>[{esc(rest)}</small>" if rest else esc(text)
    return num(html, reading.value)


def ranking_section(run: BenchmarkRun, target_name: str) -> str:
    """One target: the ranking with every metric, the interval bars, the tie groups and the differences."""
    analysis = run.analysis()
    rank_by = run.benchmark.get("rank_by", WORST_CASE)
    comparison = analysis.comparison(target_name, rank_by)
    others = [m for m in metrics(run.benchmark) if m != rank_by]
    groups = report_text.tie_groups(comparison)
    colour = {label: TIE_COLORS[i % len(TIE_COLORS)] for i, (label, names) in enumerate(groups) if len(names) > 1}
    group_of = {name: label for label, names in groups for name in names}
    readings = [comparison.readings[p.name] for p in comparison.ranking]
    ends = [v for r in readings for v in (r.low, r.high, r.value) if v is not None]
    lo, hi = (min(ends), max(ends)) if ends else (0.0, 1.0)
    pad = 0.05 * (hi - lo) or 0.01
    rows = []
    for place in comparison.ranking:
        reading = comparison.readings[place.name]
        label = place.label
        rank = (f'<span class="tie" style="background:{colour[label]}">{esc(label)}</span>' if label in colour
                else esc(label))
        ties = [n for n in dict(groups).get(group_of.get(place.name, ""), []) if n != place.name]
        # The ranking metric first, with its interval drawn, then the other metrics.
        rows.append([num(rank, place.rank), place.name, reading_cell(comparison, place.name),
                     interval_bar(reading.value, reading.low, reading.high, lo - pad, hi + pad)]
                    + [reading_cell(analysis.comparison(target_name, m), place.name) for m in others]
                    + [", ".join(ties) or "-", report_text.seeds_in_range(reading), report_text.sources(reading),
                       report_text.flags_text(audit_flags(run.records, place.name))])
    headers = (["rank", "defense", report_text.metric_title(rank_by), "95% interval"]
               + [report_text.metric_title(m) for m in others]
               + ["tied with", "seeds in range", f"{rank_by} read from (clean)", "audit flags"])
    out = [f"<h3>{esc(report_text.target_title(comparison)[0].upper() + report_text.target_title(comparison)[1:])}</h3>",
           f"<p class=\"note\">Ranked by <code>{esc(rank_by)}</code>; [95% interval]; ^ every model of the defense "
           "exceeds the target (its best model is read).</p>",
           # Markup built here in the rank, reading and bar columns; the defense's name (column 1) stays text.
           table(headers, rows, table_id=f"ranking-{target_name}", raw=[0, *range(2, 4 + len(others))])]
    if groups:
        items = []
        for label, names in groups:
            style = f' style="background:{colour[label]}"' if label in colour else ""
            what = "tied: no 95% interval separates them" if len(names) > 1 else "alone"
            items.append(f'<li><span class="tie"{style}>{esc(label)}</span>{esc(", ".join(names))} '
                         f'<span class="muted">({what})</span></li>')
        out.append(f'<p>Tie groups at this target:</p><ul class="ties" id="ties-{esc(target_name)}">'
                   + "".join(items) + "</ul>")
    unreached = [p.name for p in comparison.ranking if p.rank is None]
    if unreached:
        out.append(f"<p class=\"note\">Not ranked (no reading at this target): {esc(', '.join(unreached))}.</p>")
    diffs = report_text.difference_rows(comparison)
    if diffs:
        out.append(f"<p>Paired differences in <code>{esc(rank_by)}</code>, in {esc(report_text.difference_unit(rank_by))}"
                   " (clear: the 95% interval excludes 0):</p>")
        out.append(table(["pair", "difference [95%]", "clear"],
                         [[f"{a} - {b}", num(text, value), "yes" if clear else "no"]
                          for a, b, text, value, clear in diffs], table_id=f"differences-{target_name}"))
    return "\n".join(out)


def points_section(run: BenchmarkRun) -> str:
    b = run.benchmark
    headers = ["defense", "knob", "value", "seed", "clean", "worst case"]
    for a in b["attacks"]:
        headers.append(f"{a['label']}")
        if a["goal"] == "minimal-distortion":
            headers += [f"{a['label']}:rho", f"{a['label']}:rho-success"]
    headers += ["train s/epoch", "flags"]
    rows, classes = [], []
    for r in report_text.sorted_records(run):
        value = r["knob_value"]
        row: list[Cell] = [r["defense"], r["knob"] or "-",
                           num("-" if value is None else str(value),
                               value if isinstance(value, (int, float)) else None),
                           num(str(r["seed"]), r["seed"]),
                           num(str(percent(r["clean_accuracy"])), r["clean_accuracy"]),
                           num(str(percent(r["worst_case_accuracy"])), r["worst_case_accuracy"])]
        for a in b["attacks"]:
            facts_ = r["attacks"][a["label"]]
            row.append(num(str(percent(facts_["robust_accuracy"])), facts_["robust_accuracy"]))
            if a["goal"] == "minimal-distortion":
                for kind in ("rho", "rho_success"):
                    row.append(num(report_text.scaled(facts_.get(kind), "x:rho"), facts_.get(kind)))
        seconds = r["training"].get("seconds_per_epoch")
        flags = report_text.point_flags(r)
        row += [num("-" if seconds is None else f"{seconds:g}", seconds), "; ".join(flags) or "none"]
        rows.append(row)
        classes.append("flagged" if r.get("audit") and r["audit"]["flags"] or r.get("threat_flags") else "")
    return ("<p class=\"note\">Every trained model as measured on the evaluation examples; rho over every example "
            "(misclassified count 0, failures left out), rho-success over successes only (L2).</p>"
            + table(headers, rows, table_id="points", row_classes=classes))


def audit_section(run: BenchmarkRun) -> str:
    ran, tolerance = report_text.audit_summary(run)
    if not ran:
        return "<p>No model was audited (the spec disables the audit).</p>"
    out = [f"<p>{esc(report_text.AUDIT_RULE)} Differences within the tolerance ({esc(tolerance)}) count as noise.</p>",
           f"<p>Checks run: {esc(', '.join(ran))}"
           + ("" if "black_box" in ran else " (no black-box check: the spec sets no audit.black_box)") + "</p>",
           "<ul>"]
    for defense in defenses(run):
        flags = audit_flags(run.records, defense)
        text = ", ".join(f"{k} on {v} model(s)" for k, v in flags.items()) or "no flags"
        out.append(f"<li>{esc(defense)}: " + (f'<span class="flag">{esc(text)}</span>' if flags else esc(text))
                   + "</li>")
    out.append("</ul>")
    rows, classes = [], []
    for r, name, check in report_text.audit_checks(run):
        attack, measured, compared, source, gap, must, verdict = report_text.audit_cells(name, check)
        rows.append([r["defense"], report_text.knob_text(r), num(str(r["seed"]), r["seed"]), name, attack,
                     num(measured, check["accuracy"]), num(compared, check.get("reference")), source,
                     num(gap, check.get("gap")), num(must, check.get("limit")), verdict])
        classes.append("" if check["passed"] else "flagged")
    unaudited = sum(1 for r in run.records if not r.get("audit"))
    out.append("<p>What each check measured (robust accuracy under the check's attack), per trained model:</p>")
    out.append(table(report_text.AUDIT_HEADERS, rows, table_id="audit", row_classes=classes))
    older = report_text.older_audit_note(run)
    if older:
        out.append(f"<p class=\"note\">{esc(older)}</p>")
    if unaudited:
        out.append(f"<p class=\"note\">{unaudited} model(s) not audited.</p>")
    return "\n".join(out)


def distinct(values: Iterable[Any]) -> str:
    """The values the records hold, each once, with how many records hold it when they differ."""
    counts = Counter(json.dumps(v, sort_keys=True) if not isinstance(v, str) else v for v in values)
    if len(counts) <= 1:
        return next(iter(counts), "not recorded")
    return "; ".join(f"{v} ({n} records)" for v, n in counts.most_common())


def provenance_section(run: BenchmarkRun) -> str:
    b, records = run.benchmark, run.records
    analysis = run.analysis()
    versions = [r.get("versions") or {} for r in records]
    plugins = sorted({name for v in versions for name in (v.get("plugins") or {})})
    environment = b.get("environment") or {}
    items = [
        ("robustkit", distinct(v.get("robustkit") for v in versions)),
        ("torch", distinct(v.get("torch") for v in versions)),
        ("python", distinct(v.get("python") for v in versions)),
        ("device", distinct(f"{r.get('device')} ({r.get('device_name')})" for r in records)),
        ("numeric environment", ", ".join(f"{k} {v}" for k, v in environment.items()) or "not recorded"),
        ("protocol fingerprint", b["fingerprint"]), ("spec hash", b["spec_hash"]),
        ("spec", f"{b['name']}" + (f" (from {b['source']})" if b.get("source") else "")),
        ("seeds", ", ".join(str(s) for s in b["seeds"])),
        ("evaluation", ", ".join(f"{k} {v}" for k, v in b["evaluation"].items())),
        ("bootstrap", f"{analysis.bootstrap['resamples']} paired draws over {analysis.bootstrap['over']}, seed "
                      f"{analysis.bootstrap['seed']}, {100 * analysis.bootstrap['level']:.0f}% percentile intervals"),
        ("cells recorded", f"{len(records)} of {len(b['cells'])}"),
    ]
    if b.get("paper"):
        items.append(("paper", b["paper"]))
    if plugins:
        items.append(("plugins", ", ".join(f"{name} {distinct((v.get('plugins') or {}).get(name) for v in versions)}"
                                           for name in plugins)))
    out = [facts(items)]
    out.append("<h3>Defenses</h3>")
    rows = []
    for d in b["defenses"]:
        ref = d.get("reference") or {}
        cite = ", ".join(x for x in (ref.get("authors"), ref.get("title"), ref.get("venue"), ref.get("link")) if x)
        rows.append([d["label"], d["name"], d.get("knob") or "-",
                     ", ".join("-" if v is None else str(v) for v in d.get("sweep", [])),
                     json.dumps(d.get("params") or {}, sort_keys=True), num(f"{d.get('cost', 1.0):g}", d.get("cost")),
                     cite or "-"])
    out.append(table(["label", "defense", "knob", "sweep", "params", "passes per batch", "reference"], rows,
                     table_id="defenses"))
    out.append("<h3>Trained models</h3>")
    rows = []
    for r in report_text.sorted_records(run):
        t = r.get("training") or {}
        env = r.get("environment") or {}
        rows.append([r["defense"], report_text.knob_text(r), num(str(r["seed"]), r["seed"]), t.get("train_key", "-"),
                     num(str(t.get("epochs", "-")), t.get("epochs")),
                     num(f"{r.get('seconds', 0):g}", r.get("seconds")),
                     ", ".join(f"{k} {v}" for k, v in env.items()) or "-"])
    out.append(table(["defense", "knob", "seed", "train key", "epochs", "cell seconds", "numeric environment"],
                     rows, table_id="models"))
    out.append("<details><summary>The spec as validated</summary><pre>"
               + esc(json.dumps(b.get("document", {}), indent=2, sort_keys=True)) + "</pre></details>")
    return "\n".join(out)


def plots_section(images: Sequence[Path]) -> str:
    """Every PNG embedded as a base64 data URI (the page needs no other file)."""
    out = []
    for path in images:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        out.append(f'<figure><img alt="{esc(Path(path).stem)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{esc(Path(path).name)} (click to enlarge)</figcaption></figure>")
    return "\n".join(out) or "<p>No plots (no cell recorded yet).</p>"


def html_page(run: BenchmarkRun, images: Sequence[Path]) -> str:
    """The whole page; ``images`` are the PNGs :func:`robustkit.bench.report.write_report` wrote."""
    b = run.benchmark
    analysis = run.analysis()
    summary = [
        ("dataset", b["dataset"]["name"]), ("model", b["model"]["name"]),
        ("threat", f"{b['threat']['norm']} eps {b['threat']['eps']:g}"),
        ("attacks", "; ".join(f"{a['label']} ({a['name']} {json.dumps(a['params'], sort_keys=True)})"
                              for a in b["attacks"])),
        ("targets", ", ".join(f"{t.name} (not run)" if t.value is None else f"{t.name} = {100 * t.value:.2f}% clean"
                              for t in analysis.targets)),
        ("ranked by", b.get("rank_by", WORST_CASE)),
        ("evaluation", f"{b['evaluation']['n_examples']} examples, seeds {', '.join(str(s) for s in b['seeds'])}"),
    ]
    status = "" if run.complete else (f'<p class="warn">Incomplete: {len(run.records)} of {len(b["cells"])} cells '
                                      "recorded; rerun <code>robustkit bench run</code> to finish.</p>")
    comparison = "\n".join(ranking_section(run, t.name) for t in analysis.targets)
    sections = [
        ("comparison", "Matched comparison",
         f"<p class=\"note\">{esc(report_text.RULE)} Accuracies in %, differences in percentage points, rho in L2.</p>\n"
         + comparison),
        ("plots", "Plots", plots_section(images)),
        ("points", "Points", points_section(run)),
        ("audit", "Gradient-masking audit", audit_section(run)),
        ("provenance", "Provenance", provenance_section(run)),
    ]
    nav = " ".join(f'<a href="#{ident}">{esc(title)}</a>' for ident, title, _ in sections)
    body = "\n".join(f'<section id="{ident}"><h2>{esc(title)}</h2>\n{html}\n</section>'
                     for ident, title, html in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Benchmark {esc(b['name'])}: robustkit report</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<h1>Benchmark <code>{esc(b['name'])}</code></h1>
<p>{esc(b.get('description') or '')}</p>
{status}
{facts(summary)}
<nav>{nav}</nav>
{body}
</main>
<script>{SCRIPT}</script>
</body>
</html>
"""
