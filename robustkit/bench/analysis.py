"""From a benchmark's records to the accuracy-matched comparison, with paired bootstrap intervals.

Works on plain JSON (``OUT/benchmark.json`` and the cell records), so reports and leaderboards can be
rebuilt anywhere without the plugins that produced them. The rules are :mod:`robustkit.protocol`'s;
the metrics :mod:`robustkit.bench.metrics`'. Everything is computed from each record's per-example
outcomes:

- one draw of the bootstrap resamples the evaluation examples (every model is evaluated on the same
  examples, so every model, every named target and every reading is recomputed on the same draw, and
  differences between defenses are paired); with several seeds it also resamples the seeds;
- a named target (``"natural"``) is read per seed, at that seed's own model of the named defense, so
  that defense is always in range;
- with several seeds a reading is the mean over the seeds whose curve reaches the target, and says how
  many did (n/N).

The draws are seeded (:data:`BOOTSTRAP_SEED`), so a report is reproducible to the digit.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from robustkit.bench import metrics as bench_metrics
from robustkit.bench.metrics import WORST_CASE, is_accuracy  # noqa: F401  (re-exported for reports)
from robustkit.bench.runner import BENCHMARK_FILE
from robustkit.errors import RobustkitError
from robustkit.outcomes import Outcomes
from robustkit.protocol import EXCEEDS, IN_RANGE, STATUSES, UNREACHABLE, Point, Ranked, interval, rank, read_frontier
from robustkit.protocol import bootstrap_weights
from robustkit.store import ResultStore

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
NOT_RUN = "no points"


@dataclass
class BenchmarkRun:
    """A benchmark folder: its spec description and the records of the spec's finished cells."""

    root: Path
    benchmark: dict[str, Any]
    records: list[dict[str, Any]]
    missing: int
    _analysis: Any = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        return self.missing == 0

    def analysis(self) -> "Analysis":
        """The comparison of this run (computed once)."""
        if self._analysis is None:
            self._analysis = Analysis(self)
        return self._analysis


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
    return bench_metrics.suite_metrics(benchmark["attacks"], benchmark.get("rank_by", WORST_CASE))


def defenses(run: BenchmarkRun) -> list[str]:
    return [d["label"] for d in run.benchmark["defenses"]]


def outcomes_of(record: Mapping[str, Any], where: str) -> Outcomes:
    """A record's per-example outcomes; one line naming the record when they are missing or damaged."""
    if "outcomes" not in record:
        raise RobustkitError(f"{where} was recorded by an older robustkit without per-example outcomes; rerun "
                             "`robustkit bench run` on the same spec to re-evaluate it (training is reused)")
    try:
        return Outcomes.from_json(record["outcomes"])
    except ValueError as err:
        raise RobustkitError(f"{where}: {err}; delete that record and rerun `robustkit bench run`") from None


class Evidence:
    """Every model's measured metrics, and the same metrics under shared bootstrap draws.

    :param outcomes: per-example outcomes of every model (equal example counts).
    :param n_seeds: how many seeds the draws resample (1: examples only).
    """

    def __init__(self, outcomes: Sequence[Outcomes], n_seeds: int, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED):
        sizes = {o.n for o in outcomes}
        if len(sizes) > 1:
            raise RobustkitError(f"the models were evaluated on different numbers of examples ({sorted(sizes)}); "
                                 "a paired comparison needs the same evaluation examples for every model")
        self.outcomes = list(outcomes)
        self.n = sizes.pop() if sizes else 0
        self.resamples = resamples
        rng = np.random.default_rng(seed)
        self.weights = bootstrap_weights(self.n, resamples, rng) if self.n else np.zeros((resamples, 0), np.float32)
        self.seed_draws = rng.integers(0, max(n_seeds, 1), size=(resamples, max(n_seeds, 1)))
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def metric(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """``(measured, drawn)``: ``M`` values and ``M x B`` draws of ``metric`` (or ``clean``) per model."""
        if metric not in self._cache:
            self._cache[metric] = self._compute(metric)
        return self._cache[metric]

    def _compute(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        m, ones = len(self.outcomes), bench_metrics.ones(self.n)
        measured, drawn = np.full(m, np.nan), np.full((m, self.resamples), np.nan)
        terms = [bench_metrics.mean_terms(o, metric) for o in self.outcomes]
        means = [i for i, t in enumerate(terms) if t is not None]
        if means:  # one float32 matrix product for every model's weighted sums
            columns = np.stack([t for i in means for t in terms[i]], axis=1).astype(np.float32)  # type: ignore[misc]
            sums = (self.weights @ columns).astype(np.float64).T
            exact = (ones @ columns.astype(np.float64))[0]
            for j, i in enumerate(means):
                drawn[i] = bench_metrics.ratio(sums[2 * j], sums[2 * j + 1])
                measured[i] = bench_metrics.ratio(exact[2 * j], exact[2 * j + 1])
        for i, t in enumerate(terms):
            if t is None:
                measured[i] = bench_metrics.value(self.outcomes[i], metric, ones)[0]
                drawn[i] = bench_metrics.value(self.outcomes[i], metric, self.weights.astype(np.float64))
        return measured, drawn


@dataclass
class Target:
    """A target clean accuracy: ``value`` as measured (the mean over seeds for a named one; None when its
    defense has no finished cell), and per seed the measured value and its draws."""

    name: str
    value: float | None
    per_seed: dict[int, tuple[float, np.ndarray]]


@dataclass
class MatchedReading:
    """One defense read at one target on one metric.

    :param value: the reading (mean over the seeds in range); None when no seed reaches the target.
    :param low: lower end of the 95% bootstrap interval (None without one); likewise ``high``.
    :param status: ``ok``, ``exceeds target`` (every model at least as accurate as the target),
        ``cannot reach the target`` or ``no points``.
    :param n_in_range: seeds whose frontier reaches the target; ``n_seeds``: seeds read.
    :param best_clean: the defense's highest measured clean accuracy.
    :param sources: per seed, the measured points the reading comes from (``lower``/``upper``: knob,
        seed, clean, robust; ``lower`` None when no interpolation was needed).
    :param draws: the bootstrap draws of the reading (NaN where it could not be read).
    """

    defense: str
    target: str
    metric: str
    value: float | None
    low: float | None
    high: float | None
    status: str
    n_in_range: int
    n_seeds: int
    best_clean: float | None
    sources: list[dict[str, Any]]
    draws: np.ndarray = field(repr=False)


@dataclass
class Comparison:
    """Every defense at one target on one metric, ranked with ties.

    :param differences: ``(a, b)`` -> ``(a - b, low, high)`` for every ordered pair with readings
        (low/high None when the draws cannot bound it).
    """

    target: Target
    metric: str
    readings: dict[str, MatchedReading]
    ranking: list[Ranked]
    differences: dict[tuple[str, str], tuple[float, float | None, float | None]]

    def place(self, defense: str) -> Ranked:
        return next(r for r in self.ranking if r.name == defense)


class Analysis:
    """The accuracy-matched comparison of a benchmark run, at every target on every metric."""

    def __init__(self, run: BenchmarkRun, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED):
        self.run = run
        self.records = list(run.records)
        self.outcomes = [outcomes_of(r, f"the record of {r['defense']} {r['knob'] or ''}={r['knob_value']} "
                                        f"seed {r['seed']}") for r in self.records]
        self.seeds = sorted({int(r["seed"]) for r in self.records})
        self.evidence = Evidence(self.outcomes, len(self.seeds), resamples, seed)
        self.bootstrap = {"resamples": resamples, "seed": seed, "level": LEVEL,
                          "over": "examples and seeds" if len(self.seeds) > 1 else "examples"}
        self.targets = [self._target(t) for t in run.benchmark["targets"]]
        self._comparisons: dict[tuple[str, str], Comparison] = {}

    def _models(self, defense: str, seed: int | None = None) -> list[int]:
        return [i for i, r in enumerate(self.records)
                if r["defense"] == defense and (seed is None or int(r["seed"]) == seed)]

    def _target(self, target: float | str) -> Target:
        if not isinstance(target, str):
            value = float(target)
            draws = np.full(self.evidence.resamples, value)
            return Target(f"{target:g}", value, {s: (value, draws) for s in self.seeds})
        measured, drawn = self.evidence.metric(bench_metrics.CLEAN)
        per_seed = {}
        for seed in self.seeds:
            own = self._models(target, seed)
            if own:
                per_seed[seed] = (float(np.mean(measured[own])), drawn[own].mean(axis=0))
        value = statistics.fmean(v for v, _ in per_seed.values()) if per_seed else None
        return Target(target, value, per_seed)

    def target(self, name: str | None = None) -> Target:
        if name is None:
            return self.targets[0]
        for t in self.targets:
            if t.name == name:
                return t
        raise RobustkitError(f"no target {name!r}; targets: {', '.join(t.name for t in self.targets)}")

    def table(self) -> dict[str, dict[str, dict[str, MatchedReading]]]:
        """``[defense][target name][metric]``: every reading of the run."""
        names = metrics(self.run.benchmark)
        return {d: {t.name: {m: self.comparison(t.name, m).readings[d] for m in names} for t in self.targets}
                for d in defenses(self.run)}

    def comparison(self, target: str | None = None, metric: str | None = None) -> Comparison:
        """The comparison at ``target`` (default: the first) on ``metric`` (default: the ranking metric)."""
        chosen = self.target(target)
        metric = metric or self.run.benchmark.get("rank_by", WORST_CASE)
        key = (chosen.name, metric)
        if key not in self._comparisons:
            self._comparisons[key] = self._compare(chosen, metric)
        return self._comparisons[key]

    def _compare(self, target: Target, metric: str) -> Comparison:
        readings = {d: self._read(d, target, metric) for d in defenses(self.run)}
        reached = [d for d, r in readings.items() if r.value is not None]
        differences: dict[tuple[str, str], tuple[float, float | None, float | None]] = {}
        for a in reached:
            for b in reached:
                if a != b:
                    bounds = interval(readings[a].draws - readings[b].draws, LEVEL)
                    differences[(a, b)] = (readings[a].value - readings[b].value,  # type: ignore[operator]
                                           *(bounds if bounds else (None, None)))

        def better(a: str, b: str) -> bool:
            low = differences[(a, b)][1]
            return low is not None and low > 0

        ranking = rank({d: r.value for d, r in readings.items()}, better)
        return Comparison(target, metric, readings, ranking, differences)

    def _read(self, defense: str, target: Target, metric: str) -> MatchedReading:
        clean_measured, clean_drawn = self.evidence.metric(bench_metrics.CLEAN)
        value_measured, value_drawn = self.evidence.metric(metric)
        own = self._models(defense)
        best = float(np.max(clean_measured[own])) if own else None
        per_seed_value = np.full(len(self.seeds), np.nan)
        per_seed_draws = np.full((len(self.seeds), self.evidence.resamples), np.nan)
        statuses, sources, n_seeds = [], [], 0
        for j, seed in enumerate(self.seeds):
            models = self._models(defense, seed)
            if not models or seed not in target.per_seed:
                continue
            n_seeds += 1
            t_measured, t_drawn = target.per_seed[seed]
            values, status, lower, upper = read_frontier(clean_measured[models][None], value_measured[models][None],
                                                         np.array([t_measured]))
            statuses.append(STATUSES[int(status[0])])
            per_seed_value[j] = values[0]
            per_seed_draws[j] = read_frontier(clean_drawn[models].T, value_drawn[models].T, t_drawn)[0]
            sources.append({"seed": seed, "lower": self._source(models, lower[0], metric),
                            "upper": self._source(models, upper[0], metric)})
        if not own:
            return MatchedReading(defense, target.name, metric, None, None, None, NOT_RUN, 0, 0, None, [],
                                  np.full(self.evidence.resamples, np.nan))
        in_range = np.isfinite(per_seed_value)
        n_in = int(in_range.sum())
        value = float(per_seed_value[in_range].mean()) if n_in else None
        status = UNREACHABLE if not n_in else (EXCEEDS if all(s == EXCEEDS for s in statuses if s != UNREACHABLE)
                                               else IN_RANGE)
        draws = self._over_seeds(per_seed_draws)
        bounds = interval(draws, LEVEL) if n_in else None
        return MatchedReading(defense, target.name, metric, value, *(bounds if bounds else (None, None)), status,
                              n_in, n_seeds, best, sources, draws)

    def _over_seeds(self, per_seed_draws: np.ndarray) -> np.ndarray:
        """Per draw, the mean over that draw's resampled seeds of the readings in range."""
        if len(self.seeds) == 1:
            return per_seed_draws[0]
        picked = per_seed_draws[self.evidence.seed_draws.T, np.arange(self.evidence.resamples)]  # seeds x B
        counted = np.isfinite(picked)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counted.any(axis=0), np.where(counted, picked, 0).sum(axis=0) / counted.sum(axis=0),
                            np.nan)

    def _source(self, models: list[int], index: int, metric: str) -> dict[str, Any] | None:
        if index < 0:
            return None
        record = self.records[models[index]]
        clean, value = self.evidence.metric(bench_metrics.CLEAN)[0], self.evidence.metric(metric)[0]
        return {"knob": record["knob"], "value": record["knob_value"], "seed": int(record["seed"]),
                "clean": float(clean[models[index]]), "robust": float(value[models[index]])}


def points_by_seed(records: Sequence[Mapping[str, Any]], defense: str, metric: str) -> dict[int, list[Point]]:
    """One defense's measured points per seed (records without a value of ``metric`` are left out)."""
    out: dict[int, list[Point]] = {}
    ones = None
    for r in records:
        if r["defense"] != defense:
            continue
        outcomes = outcomes_of(r, f"the record of {r['defense']} seed {r['seed']}")
        ones = bench_metrics.ones(outcomes.n)
        value = float(bench_metrics.value(outcomes, metric, ones)[0])
        if np.isfinite(value):
            clean = float(bench_metrics.clean_accuracy(outcomes, ones)[0])
            out.setdefault(int(r["seed"]), []).append(Point(clean, value, r["knob_value"], int(r["seed"])))
    return out


def audit_flags(records: Sequence[Mapping[str, Any]], defense: str) -> dict[str, int]:
    """How many of a defense's trained models raised each audit flag."""
    counts: dict[str, int] = {}
    for r in records:
        if r["defense"] == defense and r.get("audit"):
            for flag in r["audit"]["flags"]:
                counts[flag] = counts.get(flag, 0) + 1
    return counts
