"""The benchmark report's PNGs: ``robustness_curves.png`` and ``accuracy_vs_eps.png`` (drawn by
:mod:`robustkit.plots`), built from a finished or partial run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from robustkit.bench.analysis import WORST_CASE, BenchmarkRun, defenses, is_accuracy, metrics, points_by_seed
from robustkit.bench.metrics import mean_terms, split as split_metric
from robustkit.bench.report_text import knob_text
from robustkit.plots import (Frontier, Line, Reading, RefLine, TradeoffFamily, TradeoffPanel, line_figure, norm_name,
                             save_figure, threat_label, tradeoff_figure)
from robustkit.progress import percent
from robustkit.protocol import frontier
def plot_curves(run: BenchmarkRun, path: Path) -> Any:
    """``robustness_curves.png``: one panel per distinct metric, each defense in its own colour: its frontier
    per seed with the knob value at every model, its dominated models hollow, the targets as labelled dashed
    lines and the readings at them as stars with their 95% intervals. Metrics equal on every example of every
    model (the worst case of a suite with one bounded attack, and that attack) share one panel.

    :returns: the Figure written.
    """
    analysis = run.analysis()
    labels = defenses(run)
    knobs = {d["label"]: d.get("knob") for d in run.benchmark["defenses"]}
    several = len(analysis.seeds) > 1
    measured = {t.name: t.value for t in analysis.targets if t.value is not None}  # a target with no model: none
    refs = [RefLine(100 * value, _target_label(name, value, name in labels, several))
            for name, value in measured.items()]
    panels = []
    for group in _distinct_metrics(metrics(run.benchmark), analysis.outcomes):
        metric = group[0]
        scale = 100.0 if is_accuracy(metric) else 1.0
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
                    label=None if family.frontiers else defense,
                    notes=[_knob_note(knobs.get(defense), p.knob, seed if several else None) for p in front],
                    dominated_notes=[_knob_note(knobs.get(defense), p.knob, seed if several else None) for p in off]))
            for ref, target in zip(refs, measured):
                reading = analysis.comparison(target, metric).readings[defense]
                if reading.value is not None:
                    below = above = None
                    if reading.low is not None and reading.high is not None:
                        below, above = scale * (reading.value - reading.low), scale * (reading.high - reading.value)
                    family.readings.append(Reading(ref.x + nudge, scale * reading.value, below, above))
            families.append(family)
        panels.append(TradeoffPanel(title=" = ".join(_metric_name(m, run.benchmark) for m in group),
                                    xlabel="clean accuracy (%)", ylabel=_metric_axis(metric), families=families,
                                    vlines=refs))
    figure = tradeoff_figure(panels, title=_run_title(run))
    save_figure(figure, path)
    return figure


def plot_eps(run: BenchmarkRun, path: Path) -> Any | None:
    """``accuracy_vs_eps.png``: robust accuracy against eps of the curve attack, one line per trained model
    (a colour per defense, a line style per knob value), the threat model's eps marked.

    :returns: the Figure written; None, and nothing written, when no record has an eps curve.
    """
    records = [r for r in run.records if r.get("eps_curve")]
    if not records:
        return None
    labels = defenses(run)
    sweeps = {d["label"]: list(d.get("sweep") or [None]) for d in run.benchmark["defenses"]}
    several = len({r["seed"] for r in records}) > 1

    def place(r: Mapping[str, Any]) -> tuple[int, int]:
        """(the defense's colour, the knob value's style), as the spec orders them."""
        sweep = sweeps.get(r["defense"], [])
        return (labels.index(r["defense"]) if r["defense"] in labels else 0,
                sweep.index(r["knob_value"]) if r["knob_value"] in sweep else 0)

    lines = []
    for r in sorted(records, key=lambda r: (*place(r), r["seed"])):
        i, k = place(r)
        style, marker = _KNOB_STYLES[k % len(_KNOB_STYLES)]
        name = r["defense"] + (f" {knob_text(r)}" if r["knob"] else "") + (f" seed {r['seed']}" if several else "")
        lines.append(Line([0.0] + [p["eps"] for p in r["eps_curve"]],
                          [100 * r["clean_accuracy"]] + [100 * p["accuracy"] for p in r["eps_curve"]],
                          label=name, color=f"C{i % 10}", linestyle=style, marker=marker))
    b = run.benchmark
    norm, eps, attack = b["threat"]["norm"], b["threat"]["eps"], b["evaluation"]["curve_attack"]
    figure = line_figure(lines, title=f"{b['name']}: {b['dataset']['name']}, accuracy under {attack} as eps grows",
                         xlabel=f"{norm_name(norm)} eps", ylabel=f"robust accuracy under {attack} (%)",
                         ylim=(-2, 102), vlines=[RefLine(eps, f"threat {threat_label(norm, eps)}")],
                         legend_title="trained model (defense, knob)")
    save_figure(figure, path)
    return figure


_KNOB_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"))


def _distinct_metrics(names: list[str], outcomes: list[Any]) -> list[list[str]]:
    """``names`` grouped so that a group's metrics have the same per-example terms on every model, so the same
    values and intervals (e.g. the worst case of a suite with one bounded attack, and that attack)."""
    groups: list[tuple[list[str], list[Any]]] = []
    for name in names:
        terms = [mean_terms(o, name) for o in outcomes]
        for group, known in groups:
            if outcomes and all(a is not None and b is not None and all(np.array_equal(x, y) for x, y in zip(a, b))
                                for a, b in zip(terms, known)):
                group.append(name)
                break
        else:
            groups.append(([name], terms))
    return [group for group, _ in groups]


def _metric_name(metric: str, benchmark: Mapping[str, Any]) -> str:
    """A panel's name for a metric: ``worst case``, ``pgd (Linf eps=0.1)``, ``deepfool: mean L2 to fool``."""
    if metric == WORST_CASE:
        return "worst case of the attacks"
    label, kind = split_metric(metric)
    if kind == "accuracy":
        return f"{label} ({threat_label(benchmark['threat']['norm'], benchmark['threat']['eps'])})"
    return {"rho": f"{label}: mean L2 to fool (rho)", "rho-median": f"{label}: median L2 to fool",
            "rho-success": f"{label}: mean L2 of its successes"}[kind]


def _metric_axis(metric: str) -> str:
    return "robust accuracy (%)" if is_accuracy(metric) else "L2 distance"


def _target_label(name: str, value: float, named: bool, several_seeds: bool) -> str:
    """``target natural 98.5%`` (a named target: its defense's clean accuracy), ``target 97.0%``."""
    text = f"target {name} {percent(value)}" if named else f"target {percent(value)}"
    return text + (" (mean over seeds)" if named and several_seeds else "")


def _knob_note(knob: str | None, value: Any, seed: int | None) -> str:
    """The note beside a model's point: its knob value (``eps=0.1``), and its seed when there are several."""
    text = knob_text({"knob": knob, "knob_value": value}) if knob else ""
    return text + (f" s{seed}" if seed is not None else "")


def _run_title(run: BenchmarkRun) -> str:
    """``quick: digits, Linf eps=0.1`` over a line with the model, the evaluation examples and the seeds."""
    b = run.benchmark
    seeds = f"seed {b['seeds'][0]}" if len(b["seeds"]) == 1 else f"seeds {', '.join(map(str, b['seeds']))}"
    return (f"{b['name']}: {b['dataset']['name']}, {threat_label(b['threat']['norm'], b['threat']['eps'])}\n"
            f"{b['model']['name']}, {b['evaluation']['n_examples']} evaluation examples, {seeds}")
