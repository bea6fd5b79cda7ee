"""The comparison of a benchmark's records (robustkit.bench.analysis) on synthetic per-example outcomes:
named targets per seed, n/N seeds in range, paired differences and ranks that respect dominance."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustkit.bench.analysis import Analysis, BenchmarkRun
from robustkit.outcomes import AttackOutcomes, Outcomes

N = 200
ATTACKS = [{"label": "pgd", "goal": "fixed-budget"}]


def record(defense: str, seed: int, clean: np.ndarray, fooled: np.ndarray, knob_value=None) -> dict:
    outcomes = Outcomes(clean.astype(bool), {"pgd": AttackOutcomes(fooled & clean, fooled & clean,
                                                                   np.where(fooled, 0.1, 0.0))})
    return {"defense": defense, "seed": seed, "knob": "eps" if knob_value is not None else None,
            "knob_value": knob_value, "clean_accuracy": float(clean.mean()), "outcomes": outcomes.to_json()}


def first(k: int) -> np.ndarray:
    """The first k of N examples."""
    return np.arange(N) < k


def run_of(records: list[dict], targets: list, labels: list[str]) -> BenchmarkRun:
    benchmark = {"targets": targets, "defenses": [{"label": d} for d in labels], "attacks": ATTACKS,
                 "rank_by": "worst-case"}
    return BenchmarkRun(None, benchmark, records, 0)  # type: ignore[arg-type]


def test_a_named_target_is_read_per_seed_so_the_baseline_is_always_in_range():
    """Two natural models at 98% and 99%: each seed's natural is read at its own accuracy (the old mean target
    put both out of range)."""
    records = [record("natural", 0, first(196), first(120)), record("natural", 1, first(198), first(130)),
               record("pgd-at", 0, first(200), first(20), 0.1), record("pgd-at", 0, first(190), first(10), 0.2),
               record("pgd-at", 1, first(192), first(10), 0.1)]
    analysis = Analysis(run_of(records, ["natural"], ["natural", "pgd-at"]), resamples=300)
    assert analysis.targets[0].value == pytest.approx((0.98 + 0.99) / 2)
    comparison = analysis.comparison()
    natural = comparison.readings["natural"]
    assert (natural.n_in_range, natural.n_seeds, natural.status) == (2, 2, "ok")
    assert natural.value == pytest.approx(((196 - 120) + (198 - 130)) / 2 / N)
    pgd = comparison.readings["pgd-at"]
    # Seed 0 reaches 98% (its eps=0.1 model is 100% clean); seed 1's only model is 96% clean: 1 of 2 seeds.
    assert (pgd.n_in_range, pgd.n_seeds) == (1, 2)
    assert pgd.value == pytest.approx(180 / N)  # seed 0: every frontier model above 98% -> its best, 90%
    assert [s["seed"] for s in pgd.sources] == [0, 1] and pgd.sources[1]["upper"] is None
    assert comparison.place("pgd-at").rank == 1 and comparison.place("natural").rank == 2
    assert pgd.low <= pgd.value <= pgd.high


def test_identical_defenses_share_a_rank_and_differ_by_exactly_zero():
    clean, fooled = first(180), first(60)
    records = [record("a", 0, clean, fooled), record("b", 0, clean, fooled), record("c", 0, clean, first(170))]
    comparison = Analysis(run_of(records, [0.8], ["a", "b", "c"]), resamples=300).comparison()
    assert comparison.differences[("a", "b")] == (0.0, 0.0, 0.0)
    assert [(p.name, p.label) for p in comparison.ranking] == [("a", "1="), ("b", "1="), ("c", "3")]


def test_a_small_paired_difference_is_clear_when_the_same_examples_decide_it():
    """b is a broken on exactly 4 more of the same examples: the paired interval is tight and above 0 for a,
    although the unpaired intervals overlap."""
    clean = first(200)
    a, b = record("a", 0, clean, first(100)), record("b", 0, clean, first(104))
    comparison = Analysis(run_of([a, b], [0.9], ["a", "b"]), resamples=500).comparison()
    diff, low, high = comparison.differences[("a", "b")]
    assert diff == pytest.approx(0.02) and low > 0
    assert comparison.readings["a"].low < comparison.readings["b"].high  # the intervals overlap
    assert [p.label for p in comparison.ranking] == ["1", "2"]


def test_the_bootstrap_is_seeded():
    records = [record("a", 0, first(180), first(60)), record("b", 0, first(170), first(40))]
    one = Analysis(run_of(records, [0.85], ["a", "b"]), resamples=200).comparison()
    two = Analysis(run_of(records, [0.85], ["a", "b"]), resamples=200).comparison()
    assert one.differences == two.differences
    assert (one.readings["a"].low, one.readings["a"].high) == (two.readings["a"].low, two.readings["a"].high)


def test_a_defense_that_cannot_reach_a_target_is_listed_last_with_its_best_accuracy():
    records = [record("a", 0, first(150), first(60)), record("b", 0, first(190), first(10))]
    comparison = Analysis(run_of(records, [0.9], ["a", "b"]), resamples=100).comparison()
    a = comparison.readings["a"]
    assert (a.value, a.status, a.best_clean, a.n_in_range, a.n_seeds) == (None, "cannot reach the target", 0.75, 0, 1)
    assert [p.name for p in comparison.ranking] == ["b", "a"] and comparison.place("a").label == "-"


masks = st.lists(st.booleans(), min_size=N, max_size=N).map(lambda bits: np.array(bits, dtype=bool))


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(masks, masks), min_size=1, max_size=3), st.lists(st.tuples(masks, masks), min_size=1,
                                                                          max_size=3),
       st.integers(0, 200).map(lambda k: k / 200))
def test_a_defense_whose_models_dominate_example_by_example_never_ranks_below(b_models, a_models, target):
    """Every model of A gets right every example any model of B gets right (clean and under attack), so A
    dominates B in every bootstrap draw as in the measurement."""
    clean_b = [c for c, _ in b_models]
    robust_b = [c & ~f for c, f in b_models]
    any_clean, any_robust = np.any(clean_b, axis=0), np.any(robust_b, axis=0)
    records = [record("base", 0, c, f) for c, f in b_models]
    for c, f in a_models:
        clean = c | any_clean
        robust = (clean & ~f) | any_robust
        records.append(record("dominant", 0, clean, clean & ~robust))
    comparison = Analysis(run_of(records, [target], ["base", "dominant"]), resamples=100).comparison()
    a, b = comparison.readings["dominant"], comparison.readings["base"]
    if b.value is not None:
        assert a.value is not None and a.value >= b.value
        assert comparison.place("dominant").rank <= comparison.place("base").rank
        if a.value > b.value:
            order = [p.name for p in comparison.ranking]
            assert order.index("dominant") < order.index("base")
