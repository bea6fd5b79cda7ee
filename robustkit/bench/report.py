"""``bench report``: the matched comparison as a terminal table, a Markdown file and PNG plots.

Files written into the benchmark folder:

- ``report.md``: the spec in brief, at every target the ranking with each reading's 95% interval, the
  seeds in range and the models it comes from, the paired differences, every raw point and the audit;
- ``robustness_curves.png``: per metric, each defense's points (clean accuracy on x, robustness on y),
  its frontier as a line and dominated models hollow, the targets as vertical lines and the readings
  as stars with their intervals;
- ``accuracy_vs_eps.png``: accuracy against eps of the curve attack, one line per trained model
  (written when the spec asks for an eps curve).
"""

from __future__ import annotations

from pathlib import Path

from robustkit.bench.analysis import (NOT_RUN, BenchmarkRun, Comparison, MatchedReading, audit_flags, defenses,
                                      is_accuracy, load_run, metrics, points_by_seed)
from robustkit.files import atomic_write_text
from robustkit.plots import (Frontier, Line, Reading, TradeoffFamily, TradeoffPanel, save_line_plot,
                             save_tradeoff_panels)
from robustkit.protocol import EXCEEDS, frontier
from robustkit.tables import text_table

REPORT_FILE = "report.md"
CURVES_FILE = "robustness_curves.png"
EPS_FILE = "accuracy_vs_eps.png"

RULE = ("Each defense is read on its frontier (the models no other model of it beats on both clean accuracy and "
        "robustness) at the target clean accuracy: linear interpolation between the two frontier models that "
        "straddle the target; a defense whose every model is more accurate than the target reads its best model "
        "(marked ^); one with no model reaching the target cannot be read (never extrapolated). Named targets "
        "are read per seed at that seed's own model. [95% interval]: paired bootstrap over evaluation examples "
        "(and seeds); rank: 1 + the number of defenses whose difference to it has an interval above 0, shared "
        "ranks marked =.")


def scaled(value: float | None, metric: str) -> str:
    if value is None:
        return "?"
    scale, digits = (100.0, 1) if is_accuracy(metric) else (1.0, 3)
    return f"{scale * value:.{digits}f}"


def fmt(reading: MatchedReading | None, metric: str) -> str:
    """A matched value for tables: percent for accuracies, L2 for rho, its interval, ^ when it exceeds, and
    with several seeds how many reach the target."""
    if reading is None or reading.status == NOT_RUN:
        return "n/a"
    seeds = f" ({seeds_in_range(reading)} seeds)" if reading.n_seeds > 1 else ""
    if reading.value is None:
        return f"cannot reach (best clean {100 * reading.best_clean:.1f}%){seeds}"
    text = scaled(reading.value, metric)
    if reading.low is not None:
        text += f" [{scaled(reading.low, metric)}, {scaled(reading.high, metric)}]"
    return text + (" ^" if reading.status == EXCEEDS else "") + seeds


def seeds_in_range(reading: MatchedReading) -> str:
    return f"{reading.n_in_range}/{reading.n_seeds}"


def sources(reading: MatchedReading) -> str:
    """The models a reading comes from: ``knob=value (clean%)``, per seed with several."""
    parts = []
    for source in reading.sources:
        ends = [e for e in (source["lower"], source["upper"]) if e is not None]
        if not ends:
            continue
        text = " .. ".join((f"{e['knob']}={e['value']:g}" if e["knob"] else "model") + f" ({100 * e['clean']:.1f}%)"
                           for e in ends)
        parts.append(text if len(reading.sources) == 1 else f"s{source['seed']}: {text}")
    return "; ".join(parts) or "-"


def target_title(comparison: Comparison) -> str:
    t = comparison.target
    value = f" ({100 * t.value:.2f}% clean" + (", per seed" if len(t.per_seed) > 1 else "") + ")" \
        if t.value is not None else " (its defense has no finished cell)"
    return f"target {t.name}{value}"


def ranking_rows(run: BenchmarkRun, comparison: Comparison) -> list[list[str]]:
    rows = []
    for place in comparison.ranking:
        reading = comparison.readings[place.name]
        flags = audit_flags(run.records, place.name)
        rows.append([place.label, place.name, fmt(reading, comparison.metric), seeds_in_range(reading),
                     sources(reading), ", ".join(f"{k} x{v}" for k, v in flags.items()) or "none"])
    return rows


def terminal_table(run: BenchmarkRun) -> str:
    """The ranking at every target on the ranking metric, with intervals, seeds in range and audit flags."""
    analysis = run.analysis()
    metric = run.benchmark.get("rank_by", "worst-case")
    unit = "%" if is_accuracy(metric) else "(L2)"
    head = (f"benchmark {run.benchmark['name']}: {len(run.records)} of {len(run.benchmark['cells'])} cells "
            f"recorded" + ("" if run.complete else " (incomplete: rerun `bench run` to finish)"))
    lines = [head, f"{metric} {unit} read on each defense's frontier at each target; [95% paired bootstrap "
                   f"interval, {analysis.bootstrap['resamples']} draws]; ^ every model exceeds the target; "
                   "= shared rank (no clear difference)"]
    for target in analysis.targets:
        comparison = analysis.comparison(target.name, metric)
        lines += ["", target_title(comparison)]
        lines += text_table(["rank", "defense", f"{metric} {unit}", "seeds", "from models (clean %)", "audit flags"],
                        ranking_rows(run, comparison))
    return "\n".join(lines)


def differences(comparison: Comparison) -> list[str]:
    """Markdown rows of every ranked pair's difference, upper defense minus lower."""
    ranked = [p.name for p in comparison.ranking if p.rank is not None]
    rows = []
    for i, a in enumerate(ranked):
        for b in ranked[i + 1:]:
            diff, low, high = comparison.differences[(a, b)]
            bounds = "" if low is None else f" [{scaled(low, comparison.metric)}, {scaled(high, comparison.metric)}]"
            clear = "yes" if low is not None and (low > 0 or high < 0) else "no"  # type: ignore[operator]
            rows.append(f"| {a} - {b} | {scaled(diff, comparison.metric)}{bounds} | {clear} |")
    return rows


def markdown(run: BenchmarkRun, images: list[str]) -> str:
    b = run.benchmark
    analysis = run.analysis()
    rank_by = b.get("rank_by", "worst-case")
    out = [f"# Benchmark `{b['name']}`", ""]
    if b.get("description"):
        out += [b["description"], ""]
    environment = b.get("environment") or {}
    out += [f"- dataset `{b['dataset']['name']}`, model `{b['model']['name']}`, threat {b['threat']['norm']} "
            f"eps {b['threat']['eps']:g}, seeds {b['seeds']}, {b['evaluation']['n_examples']} evaluation examples",
            "- attacks: " + ", ".join(f"`{a['label']}` ({a['name']} {a['params']})" for a in b["attacks"]),
            "- targets: " + ", ".join(f"{t.name} (not run)" if t.value is None else
                                       f"{t.name} = {100 * t.value:.2f}%" for t in analysis.targets),
            f"- protocol fingerprint `{b['fingerprint']}`, spec hash `{b['spec_hash']}`",
            "- numeric environment: " + (", ".join(f"{k} {v}" for k, v in environment.items()) or "not recorded"),
            f"- bootstrap: {analysis.bootstrap['resamples']} paired draws over {analysis.bootstrap['over']}, "
            f"seed {analysis.bootstrap['seed']}, {100 * analysis.bootstrap['level']:.0f}% percentile intervals",
            f"- cells recorded: {len(run.records)} of {len(b['cells'])}", ""]
    out += ["## Matched comparison", "", RULE + " Accuracies in %, rho in L2.", ""]
    cols = metrics(b)
    for target in analysis.targets:
        comparison = analysis.comparison(target.name, rank_by)
        out += [f"### {target_title(comparison)[0].upper()}{target_title(comparison)[1:]}", "",
                f"Ranked by `{rank_by}`.", "",
                "| rank | defense | " + " | ".join(cols) + f" | seeds in range | {rank_by} read from (clean %) |",
                "|---" * (len(cols) + 4) + "|"]
        for place in comparison.ranking:
            cells = [fmt(analysis.comparison(target.name, m).readings[place.name], m) for m in cols]
            reading = comparison.readings[place.name]
            out.append(f"| {place.label} | {place.name} | " + " | ".join(cells)
                       + f" | {seeds_in_range(reading)} | {sources(reading)} |")
        rows = differences(comparison)
        if rows:
            out += ["", f"Paired differences in `{rank_by}` (clear: the interval excludes 0):", "",
                    "| pair | difference [95%] | clear |", "|---|---|---|"] + rows
        out.append("")
    out += ["## Points", "", "Every trained model as measured; rho over every example (misclassified count 0, "
            "failures left out), rho-success over successes only.", "",
            "| defense | knob | seed | clean % | worst case % | "
            + " | ".join(a["label"] for a in b["attacks"]) + " | train s/epoch | flags |",
            "|---" * (6 + len(b["attacks"]) + 1) + "|"]
    for r in sorted(run.records, key=lambda r: (r["defense"], r["seed"], r["clean_accuracy"])):
        cells = []
        for a in b["attacks"]:
            v = r["attacks"][a["label"]]
            if a["goal"] == "minimal-distortion":
                cells.append(f"{100 * v['robust_accuracy']:.1f}; rho {scaled(v.get('rho'), 'x:rho')}, "
                             f"rho-success {scaled(v.get('rho_success'), 'x:rho')}")
            else:
                cells.append(f"{100 * v['robust_accuracy']:.1f}")
        flags = (list(r["audit"]["flags"]) if r.get("audit") else ["not audited"]) + list(r.get("threat_flags", []))
        knob = f"{r['knob']}={r['knob_value']}" if r["knob"] else "-"
        out.append(f"| {r['defense']} | {knob} | {r['seed']} | {100 * r['clean_accuracy']:.1f} | "
                   f"{100 * r['worst_case_accuracy']:.1f} | " + " | ".join(cells)
                   + f" | {r['training']['seconds_per_epoch']} | {'; '.join(flags) or 'none'} |")
    out += ["", "## Gradient-masking audit", "",
            "Per trained model: unbounded PGD must reach ~0% accuracy; more PGD steps must not raise accuracy; "
            "a black-box attack and transfer from a natural model must not beat the white-box attacks.", ""]
    ran = sorted({check for r in run.records if r.get("audit") for check in r["audit"]["checks"]})
    out += [f"Checks run: {', '.join(ran) or 'none (audit disabled)'}"
            + ("" if "black_box" in ran or not ran else " (no black-box check: the spec sets no audit.black_box)"), ""]
    for defense in defenses(run):
        flags = audit_flags(run.records, defense)
        out.append(f"- {defense}: " + (", ".join(f"{k} on {v} model(s)" for k, v in flags.items()) or "no flags"))
    out.append("")
    out += [f"![{Path(i).stem}]({Path(i).name})" for i in images]
    return "\n".join(out) + "\n"


def plot_curves(run: BenchmarkRun, path: Path) -> None:
    """``robustness_curves.png``: per metric, each defense's frontier per seed, its dominated models hollow,
    the targets as dashed lines and the readings at them as stars with their intervals."""
    analysis = run.analysis()
    targets = [t for t in analysis.targets if t.value is not None]
    panels = []
    for metric in metrics(run.benchmark):
        scale = 100.0 if is_accuracy(metric) else 1.0
        labels = defenses(run)
        families = []
        for i, defense in enumerate(labels):
            family = TradeoffFamily(color=f"C{i % 10}")
            nudge = 0.06 * (i - (len(labels) - 1) / 2)  # readings at one target side by side, not on top
            for seed, points in sorted(points_by_seed(run.records, defense, metric).items()):
                front = frontier(points)
                off = [p for p in points if p not in front]
                family.frontiers.append(Frontier(
                    x=[100 * p.clean for p in front], y=[scale * p.robust for p in front],
                    dominated_x=[100 * p.clean for p in off], dominated_y=[scale * p.robust for p in off],
                    label=defense if seed == min(run.benchmark["seeds"]) else None))
            for target in targets:
                reading = analysis.comparison(target.name, metric).readings[defense]
                if reading.value is not None:
                    below = above = None
                    if reading.low is not None:
                        below, above = scale * (reading.value - reading.low), scale * (reading.high - reading.value)
                    family.readings.append(Reading(100 * target.value + nudge, scale * reading.value, below, above))
            families.append(family)
        panels.append(TradeoffPanel(
            title=metric, xlabel="clean accuracy %",
            ylabel=f"{metric} {'accuracy %' if is_accuracy(metric) else '(L2)'}", families=families,
            vlines=[100 * target.value for target in targets]))
    save_tradeoff_panels(path, panels, title=f"{run.benchmark['name']}: frontiers (lines; hollow: dominated models) "
                         "and readings at the dashed targets (stars, 95% intervals)")


def plot_eps(run: BenchmarkRun, path: Path) -> bool:
    """``accuracy_vs_eps.png``: accuracy against eps of the curve attack, one line per trained model
    (False, and nothing written, when no record has an eps curve)."""
    records = [r for r in run.records if r.get("eps_curve")]
    if not records:
        return False
    labels = defenses(run)
    lines = []
    for r in sorted(records, key=lambda r: (labels.index(r["defense"]) if r["defense"] in labels else 0,
                                            str(r["knob_value"]))):
        i = labels.index(r["defense"]) if r["defense"] in labels else 0
        eps = [0.0] + [p["eps"] for p in r["eps_curve"]]
        acc = [100 * r["clean_accuracy"]] + [100 * p["accuracy"] for p in r["eps_curve"]]
        knob = f" {r['knob']}={r['knob_value']}" if r["knob"] else ""
        lines.append(Line(eps, acc, label=f"{r['defense']}{knob} s{r['seed']}", color=f"C{i % 10}"))
    save_line_plot(path, lines, xlabel="eps", ylabel="accuracy %", ylim=(-2, 102),
                   title=f"{run.benchmark['name']}: accuracy under {run.benchmark['evaluation']['curve_attack']} "
                         "versus eps")
    return True


def write_report(root: str | Path) -> tuple[str, list[Path]]:
    """Write report.md and the PNGs into ``root``; return the terminal table and the files written."""
    run = load_run(root)
    files: list[Path] = []
    if run.records:
        plot_curves(run, run.root / CURVES_FILE)
        files.append(run.root / CURVES_FILE)
        if plot_eps(run, run.root / EPS_FILE):
            files.append(run.root / EPS_FILE)
    atomic_write_text(run.root / REPORT_FILE, markdown(run, [str(f) for f in files]))
    return terminal_table(run), [run.root / REPORT_FILE] + files

