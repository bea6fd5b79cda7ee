"""The protocol's rules (robustkit.protocol): frontier readings, bootstrap intervals and shared ranks.

Properties are checked over random point sets (hypothesis); the cases from the issue that found the
old rule wrong are checked by value.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustkit.protocol import (EXCEEDS, IN_RANGE, UNREACHABLE, Point, bootstrap_weights, frontier, interval, rank,
                                read_at, read_frontier)

accuracy = st.integers(0, 200).map(lambda k: k / 200)  # the grid of a 200-example evaluation
points = st.lists(st.builds(Point, accuracy, accuracy), min_size=1, max_size=8)
target = st.integers(0, 200).map(lambda k: k / 200)


def reading(ps, t):
    return read_at(ps, t).value


# --- by value -------------------------------------------------------------------------------------


def test_interpolation_between_the_straddling_frontier_points():
    ps = [Point(0.90, 0.80), Point(1.00, 0.20)]
    assert read_at(ps, 0.95).value == pytest.approx(0.50)
    assert read_at(ps, 0.95).status == IN_RANGE
    assert read_at(ps, 0.95).lower == ps[0] and read_at(ps, 0.95).upper == ps[1]


def test_a_dominated_point_does_not_drag_the_reading_down():
    """localized_at: a model at 99.5% clean with 85.5 beats one at 98.5% with 64; the reading at 98.5 is not 74.5."""
    ps = [Point(0.985, 0.64), Point(0.995, 0.855), Point(0.97, 0.90)]
    assert read_at(ps, 0.985).value == pytest.approx(0.90 + (0.985 - 0.97) / (0.995 - 0.97) * (0.855 - 0.90))
    assert Point(0.985, 0.64) not in frontier(ps)


def test_equal_clean_accuracy_keeps_the_better_point_never_an_average():
    """rlfat: pgd-at had 66.0 and 84.5 at 98.5%; it reads 84.5 there, not 75.25."""
    ps = [Point(0.985, 0.66, knob=0.05), Point(0.985, 0.845, knob=0.1), Point(0.95, 0.9)]
    r = read_at(ps, 0.985)
    assert r.value == 0.845 and r.upper.knob == 0.1 and r.lower is None and r.status == IN_RANGE


def test_a_defense_more_accurate_than_the_target_reads_its_best_model():
    """robust_opt / hard_positives: every model above the target is in range, not last."""
    ps = [Point(0.975, 0.365), Point(0.975, 0.685), Point(0.99, 0.5)]
    r = read_at(ps, 0.96)
    assert (r.value, r.status) == (0.685, EXCEEDS)


def test_no_model_reaching_the_target_cannot_be_read_and_says_its_best():
    r = read_at([Point(0.9, 0.5), Point(0.95, 0.3)], 0.96)
    assert (r.value, r.status, r.best_clean) == (None, UNREACHABLE, 0.95)


def test_non_finite_points_are_rejected():
    with pytest.raises(ValueError, match="finite"):
        read_at([Point(math.nan, 0.5)], 0.5)
    with pytest.raises(ValueError, match="empty"):
        read_at([], 0.5)


# --- properties -------------------------------------------------------------------------------------


@given(points)
def test_frontier_is_exactly_the_non_dominated_points(ps):
    front = frontier(ps)

    def beats(a, b):
        return a.clean >= b.clean and a.robust >= b.robust and (a.clean > b.clean or a.robust > b.robust)

    assert all(not beats(p, f) for f in front for p in ps)
    assert all(p in front or any(beats(f, p) or (f.clean, f.robust) == (p.clean, p.robust) for f in front)
               for p in ps)
    assert [f.clean for f in front] == sorted(f.clean for f in front)
    assert all(a.robust > b.robust for a, b in zip(front, front[1:]))


@given(points, st.builds(Point, accuracy, accuracy), target)
def test_adding_a_dominated_point_never_changes_a_reading(ps, extra, t):
    best = max(ps, key=lambda p: (p.clean, p.robust))
    dominated = Point(min(extra.clean, best.clean), min(extra.robust, best.robust))
    assert reading(ps + [dominated], t) == reading(ps, t)


@given(points, target, target)
def test_readings_do_not_increase_with_the_target(ps, t1, t2):
    low, high = sorted((t1, t2))
    a, b = reading(ps, low), reading(ps, high)
    if b is not None:
        assert a is not None and a >= b - 1e-12


@given(points, target, st.randoms(use_true_random=False))
def test_the_order_of_points_does_not_matter(ps, t, rnd):
    shuffled = list(ps)
    rnd.shuffle(shuffled)
    assert reading(shuffled, t) == reading(ps, t)


@given(points, st.floats(0, 1))
def test_interpolation_between_frontier_points_is_exact(ps, share):
    front = frontier(ps)
    for f in front:
        assert reading(ps, f.clean) == f.robust  # at a frontier point: its own value, to the bit
    for a, b in zip(front, front[1:]):
        t = a.clean + share * (b.clean - a.clean)
        if a.clean < t <= b.clean:
            expected = a.robust + (t - a.clean) / (b.clean - a.clean) * (b.robust - a.robust)
            assert reading(ps, t) == pytest.approx(expected, abs=1e-12)


@given(points, points, target)
def test_a_defense_whose_points_dominate_anothers_reads_at_least_as_high(a, b, t):
    """Every point of A at least as accurate and as robust as every point of B."""
    floor_clean, floor_robust = max(p.clean for p in b), max(p.robust for p in b)
    a = [Point(max(p.clean, floor_clean), max(p.robust, floor_robust)) for p in a]
    rb = reading(b, t)
    if rb is not None:
        assert reading(a, t) is not None and reading(a, t) >= rb


@given(points, target, st.integers(0, 20), st.integers(0, 20))
def test_a_defense_shifted_up_and_right_reads_at_least_as_high(ps, t, dc, dr):
    shifted = [Point(min(1.0, p.clean + dc / 200), min(1.0, p.robust + dr / 200)) for p in ps]
    if reading(ps, t) is not None:
        assert reading(shifted, t) >= reading(ps, t) - 1e-12


@settings(max_examples=50)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(0, 10**6))
def test_vectorized_reading_equals_one_at_a_time(rows, k, seed):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 11, size=(rows, k)) / 10
    robust = rng.integers(0, 11, size=(rows, k)) / 10
    clean[rng.random((rows, k)) < 0.2] = np.nan  # missing points
    targets = rng.integers(0, 11, size=rows) / 10
    values, status, _, _ = read_frontier(clean, robust, targets)
    for i in range(rows):
        present = [Point(c, r) for c, r in zip(clean[i], robust[i]) if np.isfinite(c)]
        if not present:
            assert np.isnan(values[i]) and status[i] == 2
            continue
        expected = read_at(present, targets[i])
        assert (np.nan if expected.value is None else expected.value) == pytest.approx(values[i], nan_ok=True)


# --- ranks ------------------------------------------------------------------------------------------


def _better_from_draws(draws):
    def better(a, b):
        bounds = interval(draws[a] - draws[b])
        return bounds is not None and bounds[0] > 0
    return better


def test_ranks_share_a_place_when_no_interval_separates_them():
    rng = np.random.default_rng(0)
    draws = {"a": 0.80 + 0.01 * rng.standard_normal(500), "b": 0.795 + 0.01 * rng.standard_normal(500),
             "c": 0.60 + 0.01 * rng.standard_normal(500)}
    ranked = rank({"a": 0.80, "b": 0.795, "c": 0.60, "d": None}, _better_from_draws(draws))
    assert [(r.name, r.label) for r in ranked] == [("a", "1="), ("b", "1="), ("c", "3"), ("d", "-")]


@given(st.lists(st.floats(0, 1), min_size=2, max_size=6), st.randoms(use_true_random=False))
def test_rank_ignores_the_order_of_defenses_and_a_clearly_better_one_is_above(values, rnd):
    names = [f"d{i}" for i in range(len(values))]
    estimates = dict(zip(names, values))
    better = lambda a, b: estimates[a] > estimates[b] + 0.1  # noqa: E731
    shuffled = list(estimates.items())
    rnd.shuffle(shuffled)
    first, second = rank(estimates, better), rank(dict(shuffled), better)
    assert first == second
    position = {r.name: i for i, r in enumerate(first)}
    for a in names:
        for b in names:
            if better(a, b):
                assert position[a] < position[b]


@given(points, points, st.lists(target, min_size=1, max_size=3))
def test_a_dominating_defense_never_ranks_below_the_dominated(a, b, targets):
    floor_clean, floor_robust = max(p.clean for p in b), max(p.robust for p in b)
    a = [Point(max(p.clean, floor_clean), max(p.robust, floor_robust)) for p in a]
    for t in targets:
        ra, rb = reading(a, t), reading(b, t)
        if rb is None:
            continue
        ranked = rank({"A": ra, "B": rb}, lambda x, y: {"A": ra, "B": rb}[x] > {"A": ra, "B": rb}[y])
        assert [r.name for r in ranked].index("A") == 0


# --- bootstrap --------------------------------------------------------------------------------------


def test_bootstrap_weights_draw_every_example_n_times_in_all():
    w = bootstrap_weights(50, 200, np.random.default_rng(1))
    assert w.shape == (200, 50)
    assert np.all(w.sum(axis=1) == 50)
    assert abs(w.mean() - 1) < 0.05


def test_the_95_percent_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    """Synthetic evaluations: 200 examples, each correct with probability 0.7. Seeded, so it cannot flake;
    the band allows the percentile bootstrap's known slight under-coverage at this size."""
    rng = np.random.default_rng(2026)
    covered = 0
    trials = 400
    for _ in range(trials):
        correct = (rng.random(200) < 0.7).astype(float)
        w = bootstrap_weights(200, 500, rng)
        low, high = interval(w @ correct / 200)
        covered += low <= 0.7 <= high
    assert 0.91 <= covered / trials <= 0.98


def test_interval_needs_most_draws_finite():
    assert interval(np.array([np.nan] * 6 + [1.0] * 4)) is None
    assert interval(np.array([np.nan] * 4 + [1.0] * 6)) == (1.0, 1.0)


def test_ranking_is_reproducible_with_a_seeded_bootstrap():
    draws = [bootstrap_weights(30, 100, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(*draws)
    random.seed(0)  # the global RNGs play no part
    assert np.array_equal(bootstrap_weights(30, 100, np.random.default_rng(7)), draws[0])
