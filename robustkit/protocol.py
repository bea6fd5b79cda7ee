"""The accuracy-matched comparison: read every defense's robustness curve at the same clean accuracy.

Defenses trade clean accuracy for robustness, so one hyperparameter each says little. Each defense is
trained over a sweep of its trade-off knob; every trained model is a point (clean accuracy, robustness).
A defense's robustness curve is its points ordered by clean accuracy. The comparison reads each curve at
a target clean accuracy by linear interpolation between the two neighbouring points. A target outside a
curve's range is reported as out of range, never extrapolated. With several seeds, each seed's curve is
read separately and the readings are summarized by their mean and a 95% Student-t interval.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

IN_RANGE = "ok"
BELOW = "below range"  # the target is less accurate than every point of the curve
ABOVE = "above range"  # the target is more accurate than every point of the curve


@dataclass(frozen=True)
class Point:
    """One trained model: its clean accuracy and a robustness metric (robust accuracy, or rho).

    :param knob: the value of the defense's trade-off knob that produced it.
    :param seed: the training seed.
    """

    clean: float
    robust: float
    knob: Any = None
    seed: int = 0


@dataclass(frozen=True)
class Reading:
    """A curve read at a target clean accuracy.

    :param value: the interpolated robustness, ``None`` when out of range.
    :param status: ``ok``, ``below range`` or ``above range``.
    :param lower: the neighbouring point below the target (or at it).
    :param upper: the neighbouring point above the target (or at it).
    """

    target: float
    value: float | None
    status: str
    lower: Point | None = None
    upper: Point | None = None


@dataclass(frozen=True)
class Summary:
    """Readings of several seeds' curves at one target: mean and 95% interval of the in-range ones."""

    target: float
    mean: float | None
    low: float | None
    high: float | None
    n: int
    n_out_of_range: int
    values: tuple[float, ...]

    @property
    def status(self) -> str:
        return IN_RANGE if self.n else "out of range"


def curve(points: Iterable[Point]) -> list[Point]:
    """Points ordered by clean accuracy; points with equal clean accuracy are merged (robustness averaged)."""
    by_clean: dict[float, list[Point]] = {}
    for p in points:
        if not (math.isfinite(p.clean) and math.isfinite(p.robust)):
            raise ValueError(f"a curve point must be finite, got clean={p.clean} robust={p.robust}")
        by_clean.setdefault(p.clean, []).append(p)
    merged = []
    for clean in sorted(by_clean):
        group = by_clean[clean]
        if len(group) == 1:
            merged.append(group[0])
        else:
            merged.append(Point(clean, statistics.fmean(p.robust for p in group),
                                tuple(p.knob for p in group), group[0].seed))
    return merged


def read_at(points: Sequence[Point], target: float) -> Reading:
    """Linear interpolation of robustness at clean accuracy ``target``; never extrapolates."""
    ordered = curve(points)
    if not ordered:
        raise ValueError("cannot read an empty curve")
    if target < ordered[0].clean:
        return Reading(target, None, BELOW, None, ordered[0])
    if target > ordered[-1].clean:
        return Reading(target, None, ABOVE, ordered[-1], None)
    for lower, upper in zip(ordered, ordered[1:] + ordered[-1:]):
        if lower.clean == target:
            return Reading(target, lower.robust, IN_RANGE, lower, lower)
        if lower.clean < target < upper.clean:
            t = (target - lower.clean) / (upper.clean - lower.clean)
            return Reading(target, lower.robust + t * (upper.robust - lower.robust), IN_RANGE, lower, upper)
    raise AssertionError("unreachable: target inside the range but between no two points")


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (for 95% two-sided intervals)."""
    from scipy.stats import t  # scipy comes with scikit-learn; imported only when intervals are needed

    return float(t.ppf(0.975, dof))


def summarize(readings: Sequence[Reading]) -> Summary:
    """Mean and 95% Student-t interval over seeds of the in-range readings at one target."""
    if not readings:
        raise ValueError("no readings to summarize")
    target = readings[0].target
    values = tuple(r.value for r in readings if r.value is not None)
    out = len(readings) - len(values)
    if not values:
        return Summary(target, None, None, None, 0, out, ())
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Summary(target, mean, None, None, 1, out, values)
    half = t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Summary(target, mean, mean - half, mean + half, len(values), out, values)


def match(points_by_seed: Mapping[int, Sequence[Point]], target: float) -> Summary:
    """Read each seed's curve at ``target`` and summarize across seeds."""
    return summarize([read_at(points, target) for _, points in sorted(points_by_seed.items())])


def rank(summaries: Mapping[str, Summary]) -> list[tuple[str, Summary]]:
    """Defenses by matched robustness, best first; out-of-range defenses last, in name order."""
    in_range = sorted(((n, s) for n, s in summaries.items() if s.mean is not None), key=lambda item: -item[1].mean)
    out = sorted((n, s) for n, s in summaries.items() if s.mean is None)
    return in_range + out
