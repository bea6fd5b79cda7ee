"""From a benchmark's records to robustness curves and the accuracy-matched comparison.

Works on plain JSON (``OUT/benchmark.json`` and the cell records), so reports and leaderboards can be
rebuilt anywhere without the plugins that produced them.

Metrics, each a robustness number per trained model (higher is better):

- ``worst-case``: the pointwise worst case over the attack suite (robust accuracy);
- ``<label>``: one fixed-budget attack's robust accuracy;
- ``<label>:rho`` / ``<label>:rho-median``: mean / median L2 of a minimal-distortion attack's
  successful adversarials (rho in the PGN paper).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from robustkit.bench.runner import BENCHMARK_FILE
from robustkit.errors import RobustkitError
from robustkit.protocol import Point, Summary, match, rank
from robustkit.store import ResultStore

WORST_CASE = "worst-case"
RHO_SUFFIXES = ("rho-median", "rho")  # metric = "<label>:<suffix>"


@dataclass
class BenchmarkRun:
    """A benchmark folder: its spec description and the records of the spec's finished cells."""

    root: Path
    benchmark: dict[str, Any]
    records: list[dict[str, Any]]
    missing: int

    @property
    def complete(self) -> bool:
        return self.missing == 0


def load_run(root: str | Path) -> BenchmarkRun:
    """Read ``root/benchmark.json`` and the records of its cells (those not run yet count as missing)."""
    root = Path(root)
    path = root / BENCHMARK_FILE
    if not path.exists():
        raise RobustkitError(f"{root} holds no benchmark ({BENCHMARK_FILE} is missing); run "
                             f"`robustkit bench run SPEC --out {root}` first")
    try:
        benchmark = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RobustkitError(f"{path} is damaged ({err.msg}); rerun `robustkit bench run` to rewrite it") from None
    store = ResultStore(root)
    records = [store.get(key)["result"] for key in benchmark["cells"] if store.has(key)]
    return BenchmarkRun(root, benchmark, records, len(benchmark["cells"]) - len(records))


def metrics(benchmark: Mapping[str, Any]) -> list[str]:
    """Every metric the spec's attack suite yields, the ranking metric first."""
    names = [WORST_CASE]
    for attack in benchmark["attacks"]:
        if attack["goal"] == "minimal-distortion":
            names += [f"{attack['label']}:rho", f"{attack['label']}:rho-median"]
        else:
            names.append(attack["label"])
    rank_by = benchmark.get("rank_by", WORST_CASE)
    return [rank_by] + [n for n in names if n != rank_by]


def metric_value(record: Mapping[str, Any], metric: str) -> float | None:
    """One record's value of ``metric`` (``None`` when it has none, e.g. rho without any success)."""
    if metric == WORST_CASE:
        return record["worst_case_accuracy"]
    # Labels may hold colons themselves (an unlabelled attack is labelled by its name, torchattacks:PGD).
    label, kind = metric, ""
    for suffix in RHO_SUFFIXES:
        if metric.endswith(f":{suffix}"):
            label, kind = metric[:-len(suffix) - 1], suffix
            break
    attack = record["attacks"].get(label)
    if attack is None:
        return None
    if kind == "rho":
        return attack["mean_l2"]
    if kind == "rho-median":
        return attack["median_l2"]
    return attack["robust_accuracy"]


def is_accuracy(metric: str) -> bool:
    return not metric.endswith(tuple(f":{suffix}" for suffix in RHO_SUFFIXES))


def points_by_seed(records: Sequence[Mapping[str, Any]], defense: str, metric: str) -> dict[int, list[Point]]:
    """One defense's curve points per seed (records without a value of ``metric`` are left out)."""
    out: dict[int, list[Point]] = {}
    for r in records:
        if r["defense"] != defense:
            continue
        value = metric_value(r, metric)
        if value is not None:
            out.setdefault(int(r["seed"]), []).append(Point(r["clean_accuracy"], value, r["knob_value"], r["seed"]))
    return out


def resolve_targets(benchmark: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[tuple[str, float | None]]:
    """``(name, clean accuracy)`` per target; a defense label becomes its mean clean accuracy (None if unrun)."""
    out = []
    for target in benchmark["targets"]:
        if isinstance(target, str):
            cleans = [r["clean_accuracy"] for r in records if r["defense"] == target]
            out.append((target, statistics.fmean(cleans) if cleans else None))
        else:
            out.append((f"{target:g}", float(target)))
    return out


def defenses(run: BenchmarkRun) -> list[str]:
    return [d["label"] for d in run.benchmark["defenses"]]


def matched(run: BenchmarkRun) -> dict[str, dict[str, dict[str, Summary | None]]]:
    """``[defense][target name][metric]``: each curve read at each target (``None``: no points or no target)."""
    targets = resolve_targets(run.benchmark, run.records)
    table: dict[str, dict[str, dict[str, Summary | None]]] = {}
    for defense in defenses(run):
        table[defense] = {}
        for name, value in targets:
            row: dict[str, Summary | None] = {}
            for metric in metrics(run.benchmark):
                by_seed = points_by_seed(run.records, defense, metric)
                row[metric] = match(by_seed, value) if by_seed and value is not None else None
            table[defense][name] = row
    return table


def ranking(run: BenchmarkRun, target: str | None = None, metric: str | None = None) -> list[tuple[str, Summary | None]]:
    """Defenses by matched robustness at ``target`` (default: the first) on ``metric`` (default: rank_by)."""
    table = matched(run)
    target = target or resolve_targets(run.benchmark, run.records)[0][0]
    metric = metric or run.benchmark.get("rank_by", WORST_CASE)
    summaries = {d: table[d][target][metric] for d in table if table[d][target][metric] is not None}
    ranked: list[tuple[str, Summary | None]] = list(rank(summaries))  # type: ignore[arg-type]
    return ranked + [(d, None) for d in table if d not in summaries]


def audit_flags(records: Sequence[Mapping[str, Any]], defense: str) -> dict[str, int]:
    """How many of a defense's trained models raised each audit flag."""
    counts: dict[str, int] = {}
    for r in records:
        if r["defense"] == defense and r.get("audit"):
            for flag in r["audit"]["flags"]:
                counts[flag] = counts.get(flag, 0) + 1
    return counts
