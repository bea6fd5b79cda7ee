"""The accuracy-matched protocol's arithmetic on hand-made points."""

from __future__ import annotations

import math

import pytest

from robustkit.protocol import ABOVE, BELOW, IN_RANGE, Point, curve, match, rank, read_at, summarize

# A defense swept over its knob: more robust, less accurate.
SWEEP = [Point(0.90, 0.20, knob=0.1), Point(0.80, 0.40, knob=0.2), Point(0.70, 0.55, knob=0.3)]


def test_curve_orders_by_clean_accuracy_and_merges_ties():
    ordered = curve([SWEEP[0], SWEEP[2], SWEEP[1], Point(0.80, 0.50, knob=0.25)])
    assert [p.clean for p in ordered] == [0.70, 0.80, 0.90]
    assert ordered[1].robust == pytest.approx(0.45)


def test_linear_interpolation_between_neighbours():
    reading = read_at(SWEEP, 0.85)
    assert reading.status == IN_RANGE
    assert reading.value == pytest.approx(0.30)
    assert (reading.lower.knob, reading.upper.knob) == (0.2, 0.1)
    assert read_at(SWEEP, 0.75).value == pytest.approx(0.475)


def test_exact_points_and_ends_are_in_range():
    assert read_at(SWEEP, 0.80).value == pytest.approx(0.40)
    assert read_at(SWEEP, 0.70).value == pytest.approx(0.55)
    assert read_at(SWEEP, 0.90).value == pytest.approx(0.20)


def test_out_of_range_is_reported_never_extrapolated():
    above = read_at(SWEEP, 0.95)
    below = read_at(SWEEP, 0.60)
    assert (above.status, above.value) == (ABOVE, None)
    assert (below.status, below.value) == (BELOW, None)
    assert read_at([Point(0.8, 0.3)], 0.81).value is None


def test_seed_summary_mean_and_95_percent_interval():
    seeds = {
        0: [Point(0.9, 0.20), Point(0.7, 0.60)],  # reads 0.40 at 0.8
        1: [Point(0.9, 0.30), Point(0.7, 0.70)],  # reads 0.50
        2: [Point(0.9, 0.25), Point(0.7, 0.65)],  # reads 0.45
    }
    s = match(seeds, 0.8)
    assert s.mean == pytest.approx(0.45) and s.n == 3 and s.n_out_of_range == 0
    # t(0.975, 2) = 4.302653; stdev = 0.05; half width = 4.302653 * 0.05 / sqrt(3)
    half = 4.302652729911275 * 0.05 / math.sqrt(3)
    assert (s.low, s.high) == (pytest.approx(0.45 - half), pytest.approx(0.45 + half))


def test_summary_with_out_of_range_seeds_and_single_seed():
    s = summarize([read_at(SWEEP, 0.85), read_at(SWEEP, 0.99)])
    assert s.n == 1 and s.n_out_of_range == 1 and s.low is None and s.mean == pytest.approx(0.30)
    none = summarize([read_at(SWEEP, 0.99)])
    assert none.mean is None and none.status == "out of range"


def test_ranking_puts_out_of_range_last():
    a = summarize([read_at(SWEEP, 0.85)])
    b = summarize([read_at([Point(0.9, 0.5), Point(0.8, 0.6)], 0.85)])
    c = summarize([read_at([Point(0.5, 0.9)], 0.85)])
    assert [name for name, _ in rank({"a": a, "b": b, "c": c})] == ["b", "a", "c"]


def test_non_finite_points_are_rejected():
    with pytest.raises(ValueError, match="finite"):
        curve([Point(float("nan"), 0.1)])
