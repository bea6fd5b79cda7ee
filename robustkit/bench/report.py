"""``bench report``: the matched comparison as a terminal table, a Markdown file, an HTML page and PNG plots.

Files written into the benchmark folder:

- ``report.md``: the spec in brief, at every target the ranking with each reading's 95% interval, the
  seeds in range and the models it comes from, the paired differences, every raw point and the audit
  with what each check measured;
- ``report.html``: the same in one self-contained page (:mod:`robustkit.bench.html_report`): sortable
  tables, tie groups, provenance and the plots embedded;
- ``robustness_curves.png``: per metric, each defense's points (clean accuracy on x, robustness on y),
  its frontier as a line and dominated models hollow, the targets as vertical lines and the readings
  as stars with their intervals;
- ``accuracy_vs_eps.png``: accuracy against eps of the curve attack, one line per trained model
  (written when the spec asks for an eps curve).

People read accuracies in percent everywhere here (differences in percentage points); fractions stay in JSON.
"""

from __future__ import annotations

from pathlib import Path

from robustkit.bench.analysis import load_run
from robustkit.bench.html_report import html_page
from robustkit.bench.report_plots import plot_curves, plot_eps
from robustkit.bench.report_text import markdown, terminal_table
from robustkit.files import atomic_write_text

REPORT_FILE = "report.md"
HTML_FILE = "report.html"
CURVES_FILE = "robustness_curves.png"
EPS_FILE = "accuracy_vs_eps.png"


def write_report(root: str | Path) -> tuple[str, list[Path]]:
    """Write report.md, report.html and the PNGs into ``root``; return the terminal table and the files written."""
    run = load_run(root)
    files: list[Path] = []
    if run.records:
        plot_curves(run, run.root / CURVES_FILE)
        files.append(run.root / CURVES_FILE)
        if plot_eps(run, run.root / EPS_FILE):
            files.append(run.root / EPS_FILE)
    atomic_write_text(run.root / REPORT_FILE, markdown(run, [str(f) for f in files]))
    atomic_write_text(run.root / HTML_FILE, html_page(run, files))
    return terminal_table(run), [run.root / REPORT_FILE, run.root / HTML_FILE] + files

