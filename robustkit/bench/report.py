"""``bench report``: the matched comparison as a terminal table, a Markdown file and PNG plots.

Files written into the benchmark folder:

- ``report.md``: the spec in brief, the ranking, every matched value with its 95% interval, every raw
  point and the audit;
- ``robustness_curves.png``: per metric, each defense's curve (clean accuracy on x, robustness on y,
  points ordered by clean accuracy) with the target accuracies as vertical lines and the matched
  readings marked;
- ``accuracy_vs_eps.png``: accuracy against eps of the curve attack, one line per trained model
  (written when the spec asks for an eps curve).
"""

from __future__ import annotations

from pathlib import Path
from robustkit.bench.analysis import (BenchmarkRun, audit_flags, defenses, is_accuracy, load_run, matched, metrics,
                                      points_by_seed, ranking, resolve_targets)
from robustkit.files import atomic_write, atomic_write_text
from robustkit.protocol import Summary, curve

REPORT_FILE = "report.md"
CURVES_FILE = "robustness_curves.png"
EPS_FILE = "accuracy_vs_eps.png"


def fmt(summary: Summary | None, metric: str) -> str:
    """A matched value for tables: percent for accuracies, L2 for rho; interval when there are seeds."""
    if summary is None:
        return "n/a"
    if summary.mean is None:
        return "out of range"
    scale, digits = (100.0, 1) if is_accuracy(metric) else (1.0, 3)
    text = f"{scale * summary.mean:.{digits}f}"
    if summary.low is not None:
        text += f" [{scale * summary.low:.{digits}f}, {scale * summary.high:.{digits}f}]"
    return text


def terminal_table(run: BenchmarkRun) -> str:
    """The ranking at every target on the ranking metric, plus point counts and audit flags."""
    targets = resolve_targets(run.benchmark, run.records)
    metric = run.benchmark.get("rank_by", "worst-case")
    table = matched(run)
    order = [d for d, _ in ranking(run)]
    headers = ["rank", "defense", "points", "clean range %"] + [
        f"{metric} @ {name}" + (f" ({100 * value:.1f}%)" if value is not None else "") for name, value in targets
    ] + ["audit flags"]
    rows = []
    for i, defense in enumerate(order, start=1):
        own = [r for r in run.records if r["defense"] == defense]
        cleans = [100 * r["clean_accuracy"] for r in own]
        flags = audit_flags(run.records, defense)
        rows.append([str(i), defense, str(len(own)), f"{min(cleans):.1f}-{max(cleans):.1f}" if cleans else "-"]
                    + [fmt(table[defense][name][metric], metric) for name, _ in targets]
                    + [", ".join(f"{k} x{v}" for k, v in flags.items()) or "none"])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    head = (f"benchmark {run.benchmark['name']}: {len(run.records)} of {len(run.benchmark['cells'])} cells "
            f"recorded" + ("" if run.complete else " (incomplete: rerun `bench run` to finish)"))
    return "\n".join([head, ""] + lines)


def markdown(run: BenchmarkRun, images: list[str]) -> str:
    b = run.benchmark
    targets = resolve_targets(b, run.records)
    table = matched(run)
    out = [f"# Benchmark `{b['name']}`", ""]
    if b.get("description"):
        out += [b["description"], ""]
    out += [f"- dataset `{b['dataset']['name']}`, model `{b['model']['name']}`, threat {b['threat']['norm']} "
            f"eps {b['threat']['eps']:g}, seeds {b['seeds']}, {b['evaluation']['n_examples']} evaluation examples",
            "- attacks: " + ", ".join(f"`{a['label']}` ({a['name']} {a['params']})" for a in b["attacks"]),
            "- targets: " + ", ".join(f"{n} = {100 * v:.2f}%" if v is not None else f"{n} (not run)"
                                       for n, v in targets),
            f"- protocol fingerprint `{b['fingerprint']}`, spec hash `{b['spec_hash']}`",
            f"- cells recorded: {len(run.records)} of {len(b['cells'])}", ""]
    out += ["## Matched comparison", "",
            "Each defense's curve read at the target clean accuracy by linear interpolation between its two "
            "neighbouring points; out of range means the curve does not reach the target (never extrapolated). "
            "Accuracies in %, rho in L2; [95% interval] over seeds.", ""]
    for name, value in targets:
        out += [f"### Target {name}" + (f" ({100 * value:.2f}%)" if value is not None else ""), ""]
        cols = metrics(b)
        out += ["| defense | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for defense, _ in ranking(run, target=name):
            out.append(f"| {defense} | " + " | ".join(fmt(table[defense][name][m], m) for m in cols) + " |")
        out.append("")
    out += ["## Points", "", "| defense | knob | seed | clean % | worst case % | "
            + " | ".join(a["label"] for a in b["attacks"]) + " | train s/epoch | audit flags |",
            "|---" * (6 + len(b["attacks"]) + 1) + "|"]
    for r in sorted(run.records, key=lambda r: (r["defense"], r["seed"], r["clean_accuracy"])):
        cells = []
        for a in b["attacks"]:
            v = r["attacks"][a["label"]]
            cells.append(f"rho {v['mean_l2']:.3f}" if a["goal"] == "minimal-distortion" and v["mean_l2"] is not None
                         else f"{100 * v['robust_accuracy']:.1f}")
        flags = ", ".join(r["audit"]["flags"]) if r.get("audit") else "not audited"
        knob = f"{r['knob']}={r['knob_value']}" if r["knob"] else "-"
        out.append(f"| {r['defense']} | {knob} | {r['seed']} | {100 * r['clean_accuracy']:.1f} | "
                   f"{100 * r['worst_case_accuracy']:.1f} | " + " | ".join(cells)
                   + f" | {r['training']['seconds_per_epoch']} | {flags or 'none'} |")
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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = metrics(run.benchmark)
    targets = [(n, v) for n, v in resolve_targets(run.benchmark, run.records) if v is not None]
    table = matched(run)
    fig = Figure(figsize=(5.2 * len(names), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, metric in zip(axes, names):
        scale = 100.0 if is_accuracy(metric) else 1.0
        for i, defense in enumerate(defenses(run)):
            color = f"C{i % 10}"
            for seed, points in sorted(points_by_seed(run.records, defense, metric).items()):
                ordered = curve(points)
                ax.plot([100 * p.clean for p in ordered], [scale * p.robust for p in ordered], marker="o",
                        color=color, alpha=0.9, label=defense if seed == min(run.benchmark["seeds"]) else None)
            for name, value in targets:
                summary = table[defense][name][metric]
                if summary is not None and summary.mean is not None:
                    ax.plot([100 * value], [scale * summary.mean], marker="*", markersize=14, color=color,
                            markeredgecolor="black")
        for name, value in targets:
            ax.axvline(100 * value, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel="clean accuracy %", ylabel=f"{metric} {'accuracy %' if is_accuracy(metric) else '(L2)'}",
               title=metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{run.benchmark['name']}: robustness curves (stars: matched at the dashed targets)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_eps(run: BenchmarkRun, path: Path) -> bool:
    records = [r for r in run.records if r.get("eps_curve")]
    if not records:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    labels = defenses(run)
    for r in sorted(records, key=lambda r: (labels.index(r["defense"]) if r["defense"] in labels else 0,
                                            str(r["knob_value"]))):
        i = labels.index(r["defense"]) if r["defense"] in labels else 0
        eps = [0.0] + [p["eps"] for p in r["eps_curve"]]
        acc = [100 * r["clean_accuracy"]] + [100 * p["accuracy"] for p in r["eps_curve"]]
        knob = f" {r['knob']}={r['knob_value']}" if r["knob"] else ""
        ax.plot(eps, acc, marker=".", color=f"C{i % 10}", alpha=0.8, label=f"{r['defense']}{knob} s{r['seed']}")
    ax.set(xlabel="eps", ylabel="accuracy %", title=f"{run.benchmark['name']}: accuracy under "
           f"{run.benchmark['evaluation']['curve_attack']} versus eps", ylim=(-2, 102))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
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

