"""The benchmark report's text: the terminal table, ``report.md`` and the pieces the HTML page reuses.

People read accuracies in percent everywhere here (differences in percentage points); fractions stay in JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


from robustkit.bench.analysis import (NOT_RUN, WORST_CASE, BenchmarkRun, Comparison, MatchedReading, audit_flags,
                                      defenses, is_accuracy, metrics)
from robustkit.bench.audit import FLAGS, completed
from robustkit.progress import percent
from robustkit.protocol import EXCEEDS
from robustkit.tables import text_table


RULE = ("Each defense is read on its frontier (the models no other model of it beats on both clean accuracy and "
        "robustness) at the target clean accuracy: linear interpolation between the two frontier models that "
        "straddle the target; a defense whose every model is more accurate than the target reads its best model "
        "(marked ^); one with no model reaching the target cannot be read (never extrapolated). Named targets "
        "are read per seed at that seed's own model. [95% interval]: paired bootstrap over evaluation examples "
        "(and seeds); rank: 1 + the number of defenses whose difference to it has an interval above 0, shared "
        "ranks marked =.")
AUDIT_RULE = ("Per trained model: unbounded PGD must bring accuracy to ~0%; more PGD steps must not raise accuracy; "
              "a black-box attack and PGD transferred from the naturally trained model must not beat the best "
              "white-box result (the suite's attacks or the audit's own PGD).")
AUDIT_HEADERS = ["defense", "knob", "seed", "check", "attack", "measured", "compared with", "from", "gap (points)",
                 "must be", "verdict"]


def scaled(value: float | None, metric: str) -> str:
    """A measured value as people read it: accuracies in percent (``84.5%``), rho as an L2 distance (``0.797``)."""
    if value is None:
        return "?"
    return str(percent(value)) if is_accuracy(metric) else f"{value:.3f}"


def signed(value: float | None, metric: str) -> str:
    """A difference: in percentage points for accuracies (``+4.5``), in L2 for rho (``+0.012``)."""
    if value is None:
        return "?"
    return f"{100 * value:+.1f}" if is_accuracy(metric) else f"{value:+.3f}"


def difference_unit(metric: str) -> str:
    return "percentage points" if is_accuracy(metric) else "L2"


def fmt(reading: MatchedReading | None, metric: str) -> str:
    """A matched value for tables: percent for accuracies, L2 for rho, its interval, ^ when it exceeds, and
    with several seeds how many reach the target."""
    if reading is None or reading.status == NOT_RUN:
        return "n/a"
    seeds = f" ({seeds_in_range(reading)} seeds)" if reading.n_seeds > 1 else ""
    if reading.value is None:
        return f"cannot reach (best clean {percent(reading.best_clean)}){seeds}"
    text = scaled(reading.value, metric)
    if reading.low is not None:
        text += f" [{scaled(reading.low, metric)}, {scaled(reading.high, metric)}]"
    return text + (" ^" if reading.status == EXCEEDS else "") + seeds


def value_text(value: Any) -> str:
    """A knob value: numbers shortest (``0.1``, ``2``), anything else (a spec may sweep strings) as it is."""
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def seeds_in_range(reading: MatchedReading) -> str:
    return f"{reading.n_in_range}/{reading.n_seeds}"


def sources(reading: MatchedReading) -> str:
    """The models a reading comes from: ``knob=value (clean%)``, per seed with several."""
    parts = []
    for source in reading.sources:
        ends = [e for e in (source["lower"], source["upper"]) if e is not None]
        if not ends:
            continue
        text = " .. ".join((f"{e['knob']}={value_text(e['value'])}" if e["knob"] else "model")
                           + f" ({percent(e['clean'])})" for e in ends)
        parts.append(text if len(reading.sources) == 1 else f"s{source['seed']}: {text}")
    return "; ".join(parts) or "-"


def target_title(comparison: Comparison) -> str:
    t = comparison.target
    value = f" ({100 * t.value:.2f}% clean" + (", per seed" if len(t.per_seed) > 1 else "") + ")" \
        if t.value is not None else " (its defense has no finished cell)"
    return f"target {t.name}{value}"


def tie_groups(comparison: Comparison) -> list[tuple[str, list[str]]]:
    """The ranked defenses grouped by shared rank, best first: ``(rank label, defenses)``; a defense no
    interval separates from another is in its group."""
    groups: dict[int, list[str]] = {}
    for place in comparison.ranking:
        if place.rank is not None:
            groups.setdefault(place.rank, []).append(place.name)
    labels = {p.rank: p.label for p in comparison.ranking if p.rank is not None}
    return [(labels[r], names) for r, names in sorted(groups.items())]


def flags_text(flags: Mapping[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in flags.items()) or "none"


def ranking_rows(run: BenchmarkRun, comparison: Comparison) -> list[list[str]]:
    rows = []
    for place in comparison.ranking:
        reading = comparison.readings[place.name]
        rows.append([place.label, place.name, fmt(reading, comparison.metric), seeds_in_range(reading),
                     sources(reading), flags_text(audit_flags(run.records, place.name))])
    return rows


def metric_title(metric: str) -> str:
    """``worst-case accuracy``, ``pgd accuracy``, ``deepfool:rho (L2)``: a metric with its unit."""
    return f"{metric} {'accuracy' if is_accuracy(metric) else '(L2)'}"


def terminal_table(run: BenchmarkRun) -> str:
    """The ranking at every target on the ranking metric, with intervals, seeds in range and audit flags."""
    analysis = run.analysis()
    metric = run.benchmark.get("rank_by", "worst-case")
    head = (f"benchmark {run.benchmark['name']}: {len(run.records)} of {len(run.benchmark['cells'])} cells "
            f"recorded" + ("" if run.complete else " (incomplete: rerun `bench run` to finish)"))
    lines = [head, f"{metric_title(metric)} read on each defense's frontier at each target; [95% paired bootstrap "
                   f"interval, {analysis.bootstrap['resamples']} draws]; ^ every model exceeds the target; "
                   "= shared rank (no clear difference)"]
    for target in analysis.targets:
        comparison = analysis.comparison(target.name, metric)
        lines += ["", target_title(comparison)]
        lines += text_table(["rank", "defense", metric_title(metric), "seeds", "from models (clean)", "audit flags"],
                            ranking_rows(run, comparison))
    return "\n".join(lines)


def difference_rows(comparison: Comparison) -> list[tuple[str, str, str, float, bool]]:
    """Every ranked pair's difference, upper defense minus lower: ``(a, b, text with interval, value, clear)``."""
    ranked = [p.name for p in comparison.ranking if p.rank is not None]
    rows = []
    for i, a in enumerate(ranked):
        for b in ranked[i + 1:]:
            diff, low, high = comparison.differences[(a, b)]
            bounds = "" if low is None else f" [{signed(low, comparison.metric)}, {signed(high, comparison.metric)}]"
            clear = low is not None and (low > 0 or high < 0)  # type: ignore[operator]
            rows.append((a, b, signed(diff, comparison.metric) + bounds, diff, clear))
    return rows


def knob_text(record: Mapping[str, Any]) -> str:
    return f"{record['knob']}={record['knob_value']}" if record["knob"] else "-"


def point_flags(record: Mapping[str, Any]) -> list[str]:
    """A record's audit flags (or ``not audited``) and threat flags."""
    return (list(record["audit"]["flags"]) if record.get("audit") else ["not audited"]) \
        + list(record.get("threat_flags", []))


def attack_cell(record: Mapping[str, Any], attack: Mapping[str, Any]) -> str:
    """One attack's result on one model: its robust accuracy, and rho for a minimal-distortion attack."""
    v = record["attacks"][attack["label"]]
    text = str(percent(v["robust_accuracy"]))
    if attack["goal"] == "minimal-distortion":
        text += f"; rho {scaled(v.get('rho'), 'x:rho')}, rho-success {scaled(v.get('rho_success'), 'x:rho')}"
    return text


def sorted_records(run: BenchmarkRun) -> list[dict[str, Any]]:
    """The records in the spec's order: by defense as listed, seed, then knob value as swept."""
    order = {d["label"]: (i, [json.dumps(v) for v in d.get("sweep") or []])
             for i, d in enumerate(run.benchmark["defenses"])}

    def key(r: Mapping[str, Any]) -> tuple[int, int, int, float]:
        place, sweep = order.get(r["defense"], (len(order), []))
        value = json.dumps(r["knob_value"])
        return place, int(r["seed"]), sweep.index(value) if value in sweep else len(sweep), r["clean_accuracy"]

    return sorted(run.records, key=key)


def audit_checks(run: BenchmarkRun) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
    """Every audited model's checks, ``(record, check name, check)``, the check's numbers completed
    (:func:`robustkit.bench.audit.completed`) for records written before they were recorded."""
    out = []
    for r in sorted_records(run):
        audit = r.get("audit")
        if audit:
            # In the order the audit runs them (records store their keys sorted).
            for name in sorted(audit["checks"], key=lambda n: (list(FLAGS).index(n) if n in FLAGS else len(FLAGS), n)):
                out.append((r, name, completed(name, audit["checks"][name], audit.get("tolerance"))))
    return out


def audit_cells(name: str, check: Mapping[str, Any]) -> list[str]:
    """What one check measured, as text (the last seven :data:`AUDIT_HEADERS`): its attack, the robust accuracy
    under it, the reference and where that comes from, the gap, the bound it had to respect, the verdict."""
    compared = source = gap = must = "-"
    if check.get("reference") is not None:
        compared, gap = str(percent(check["reference"])), signed(check["gap"], WORST_CASE)
        source = check.get("reference_detail") or "-"
    if check.get("limit") is not None and check.get("bound"):
        must = f"{check['bound']} {percent(check['limit'])}"
    verdict = "passed" if check["passed"] else f"flagged: {FLAGS.get(name, name)}"
    return [check.get("detail") or name, str(percent(check["accuracy"])), compared, source, gap, must, verdict]


def older_audit_note(run: BenchmarkRun) -> str | None:
    """What the audit table cannot show for records written before the checks named their reference."""
    unnamed = sum(1 for _, _, check in audit_checks(run)
                  if check.get("reference") is not None and not check.get("reference_detail"))
    if not unnamed:
        return None
    return (f"from -: {unnamed} comparison(s) recorded by an older robustkit, which did not record which attack gave "
            "the reference (rerun the benchmark in a new folder to record it); their gap and bound are derived from "
            "the recorded accuracies and tolerance.")


def audit_summary(run: BenchmarkRun) -> tuple[list[str], str]:
    """The checks that ran, and a note on the tolerance (one value per run; ``?`` where not recorded)."""
    ran = sorted({check for r in run.records if r.get("audit") for check in r["audit"]["checks"]})
    tolerances = {r["audit"].get("tolerance") for r in run.records if r.get("audit")}
    note = ", ".join(f"{100 * t:.1f} points" for t in sorted(t for t in tolerances if t is not None)) or "?"
    return ran, note


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
                "| rank | defense | " + " | ".join(cols) + f" | seeds in range | {rank_by} read from (clean) |",
                "|---" * (len(cols) + 4) + "|"]
        for place in comparison.ranking:
            cells = [fmt(analysis.comparison(target.name, m).readings[place.name], m) for m in cols]
            reading = comparison.readings[place.name]
            out.append(f"| {place.label} | {place.name} | " + " | ".join(cells)
                       + f" | {seeds_in_range(reading)} | {sources(reading)} |")
        rows = difference_rows(comparison)
        if rows:
            out += ["", f"Paired differences in `{rank_by}`, in {difference_unit(rank_by)} (clear: the interval "
                        "excludes 0):", "", "| pair | difference [95%] | clear |", "|---|---|---|"]
            out += [f"| {a} - {b_} | {text} | {'yes' if clear else 'no'} |" for a, b_, text, _, clear in rows]
        out.append("")
    out += ["## Points", "", "Every trained model as measured; rho over every example (misclassified count 0, "
            "failures left out), rho-success over successes only.", "",
            "| defense | knob | seed | clean | worst case | "
            + " | ".join(a["label"] for a in b["attacks"]) + " | train s/epoch | flags |",
            "|---" * (6 + len(b["attacks"]) + 1) + "|"]
    for r in sorted_records(run):
        cells = [attack_cell(r, a) for a in b["attacks"]]
        out.append(f"| {r['defense']} | {knob_text(r)} | {r['seed']} | {percent(r['clean_accuracy'])} | "
                   f"{percent(r['worst_case_accuracy'])} | " + " | ".join(cells)
                   + f" | {r['training']['seconds_per_epoch']} | {'; '.join(point_flags(r)) or 'none'} |")
    ran, tolerance = audit_summary(run)
    out += ["", "## Gradient-masking audit", "", AUDIT_RULE + f" Differences within the tolerance ({tolerance}) "
            "count as noise." if ran else AUDIT_RULE, ""]
    out += [f"Checks run: {', '.join(ran) or 'none (audit disabled)'}"
            + ("" if "black_box" in ran or not ran else " (no black-box check: the spec sets no audit.black_box)"), ""]
    for defense in defenses(run):
        flags = audit_flags(run.records, defense)
        out.append(f"- {defense}: " + (", ".join(f"{k} on {v} model(s)" for k, v in flags.items()) or "no flags"))
    checks = audit_checks(run)
    if checks:
        out += ["", "What each check measured (robust accuracy under the check's attack):", "",
                "| " + " | ".join(AUDIT_HEADERS) + " |", "|---" * len(AUDIT_HEADERS) + "|"]
        out += ["| " + " | ".join([r["defense"], knob_text(r), str(r["seed"]), name] + audit_cells(name, check)) + " |"
                for r, name, check in checks]
        older = older_audit_note(run)
        out += ["", older] if older else []
    out.append("")
    out += [f"![{Path(i).stem}]({Path(i).name})" for i in images]
    return "\n".join(out) + "\n"
