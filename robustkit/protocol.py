"""The accuracy-matched comparison's rules: frontier readings, bootstrap intervals and tie-aware ranks.

Defenses trade clean accuracy for robustness, so one hyperparameter each says little. Each defense is
trained over a sweep of its trade-off knob; every trained model is a point (clean accuracy, robustness).
The rules (SPECS section 7) follow; :mod:`robustkit.bench.analysis` applies them to benchmark records.

- **Frontier.** A defense's frontier is its non-dominated points: a point is dropped when another has
  clean >= and robustness >= with one strict. At equal clean accuracy the better point stays, never an
  average. A user deploys the best model they trained, so a dominated model says nothing about what
  the defense can do.
- **Reading at target T.** Between the frontier points that straddle T (the least accurate one with
  clean >= T and the most accurate one below T), linear interpolation. When every point is at least as
  accurate as T the defense meets the target and reads its best robustness (status ``exceeds target``):
  a more accurate model can be traded down to the target. When no point reaches T the defense "cannot
  reach the target": no reading, never an extrapolation.
- **Intervals.** Percentile intervals of bootstrap draws (:func:`bootstrap_weights` resamples the
  evaluation examples; every model is re-measured on the same draw, so differences are paired).
- **Ranks.** A defense's rank is 1 + the number of defenses whose difference to it has an interval
  entirely above 0; defenses that no interval separates share a rank ("2=").

Readings are vectorized over bootstrap draws (:func:`read_frontier`); :func:`read_at` is the same rule
on one set of points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

IN_RANGE = "ok"
EXCEEDS = "exceeds target"
UNREACHABLE = "cannot reach the target"
STATUSES = (IN_RANGE, EXCEEDS, UNREACHABLE)  # read_frontier's status codes index this


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
    """A defense's points read at a target clean accuracy.

    :param value: the reading; ``None`` when the defense cannot reach the target.
    :param status: ``ok``, ``exceeds target`` or ``cannot reach the target``.
    :param lower: the frontier point below the target that was interpolated from (None: none was).
    :param upper: the frontier point at or above the target (None when unreachable).
    :param best_clean: the defense's highest clean accuracy.
    """

    target: float
    value: float | None
    status: str
    lower: Point | None
    upper: Point | None
    best_clean: float


def _check(points: Sequence[Point]) -> None:
    if not points:
        raise ValueError("cannot read an empty set of points")
    for p in points:
        if not (math.isfinite(p.clean) and math.isfinite(p.robust)):
            raise ValueError(f"a point must be finite, got clean={p.clean} robust={p.robust}")


def frontier(points: Iterable[Point]) -> list[Point]:
    """The non-dominated points, by clean accuracy (robustness then strictly falls); of identical points
    the first is kept."""
    points = list(points)
    _check(points)
    clean = np.array([[p.clean for p in points]])
    robust = np.array([[p.robust for p in points]])
    keep = ~dominated(clean, robust)[0]
    return sorted((p for p, k in zip(points, keep) if k), key=lambda p: p.clean)


def dominated(clean: np.ndarray, robust: np.ndarray) -> np.ndarray:
    """``B x k`` mask of the points another point of the same row dominates (NaN points count as dominated,
    and of identical points all but the first)."""
    k = clean.shape[1]
    c_j, c_i = clean[:, :, None], clean[:, None, :]
    r_j, r_i = robust[:, :, None], robust[:, None, :]
    with np.errstate(invalid="ignore"):
        beats = (c_j >= c_i) & (r_j >= r_i) & ((c_j > c_i) | (r_j > r_i))
        same = (c_j == c_i) & (r_j == r_i) & np.tril(np.ones((k, k), dtype=bool), -1)[None]  # j before i
    missing = ~(np.isfinite(clean) & np.isfinite(robust))
    return (beats | same).any(axis=1) | missing


def read_frontier(clean: np.ndarray, robust: np.ndarray, target: np.ndarray,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rule of this module, for ``B`` sets of ``k`` points at once.

    :param clean: ``B x k`` clean accuracies (NaN: the point is missing in that row).
    :param robust: ``B x k`` robustness values (NaN: missing).
    :param target: ``B`` target clean accuracies.
    :returns: ``values`` (NaN where unreachable), ``status`` codes (index into :data:`STATUSES`), and the
        indices of the ``lower`` and ``upper`` frontier points (-1 where there is none).
    """
    clean, robust = np.atleast_2d(clean).astype(np.float64), np.atleast_2d(robust).astype(np.float64)
    target = np.broadcast_to(np.asarray(target, dtype=np.float64), clean.shape[:1])
    on = ~dominated(clean, robust)
    t = target[:, None]
    above = on & (clean >= t)
    below = on & (clean < t)
    has_upper, has_lower = above.any(axis=1), below.any(axis=1)
    upper = np.argmin(np.where(above, clean, np.inf), axis=1)
    lower = np.argmax(np.where(below, clean, -np.inf), axis=1)
    rows = np.arange(clean.shape[0])
    cu, ru = clean[rows, upper], robust[rows, upper]
    cl, rl = clean[rows, lower], robust[rows, lower]
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = (target - cl) / (cu - cl)
        between = rl + weight * (ru - rl)
    exact = cu == target  # a frontier point at the target reads its own value, to the bit
    values = np.where(has_upper & has_lower & ~exact, between, ru)
    values = np.where(has_upper, values, np.nan)
    status = np.where(has_upper, np.where(has_lower | exact, 0, 1), 2)
    interpolated = has_upper & has_lower & ~exact
    return values, status, np.where(interpolated, lower, -1), np.where(has_upper, upper, -1)


def read_at(points: Sequence[Point], target: float) -> Reading:
    """The reading of ``points`` at clean accuracy ``target`` (see the module notes)."""
    points = list(points)
    _check(points)
    values, status, lower, upper = read_frontier(np.array([[p.clean for p in points]]),
                                                 np.array([[p.robust for p in points]]), np.array([target]))
    value = None if math.isnan(values[0]) else float(values[0])
    return Reading(target, value, STATUSES[int(status[0])], points[lower[0]] if lower[0] >= 0 else None,
                   points[upper[0]] if upper[0] >= 0 else None, max(p.clean for p in points))


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples x n`` counts: how often each of ``n`` examples is drawn (with replacement, n draws) in
    each resample. Every model is measured under the same rows, which pairs the comparison."""
    draws = rng.integers(0, n, size=(resamples, n))
    offsets = (np.arange(resamples) * n)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=resamples * n)
    return counts.reshape(resamples, n).astype(np.float32)


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """The percentile interval of the finite ``samples`` (None when fewer than half are finite: the reading
    then rests on too few draws to bound it)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0 or finite.size < samples.size / 2:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Ranked:
    """One defense's place: ``rank`` None when it cannot reach the target; ``shared`` when another defense
    has the same rank."""

    name: str
    rank: int | None
    shared: bool = False

    @property
    def label(self) -> str:
        if self.rank is None:
            return "-"
        return f"{self.rank}=" if self.shared else str(self.rank)


def rank(estimates: Mapping[str, float | None], better: Callable[[str, str], bool]) -> list[Ranked]:
    """Defenses best first: rank = 1 + the number that are clearly better (``better(a, b)``: a's difference
    to b has an interval entirely above 0); equal ranks are shared. Within a rank, by estimate; those
    without a reading (cannot reach the target) last, by name."""
    reached = [n for n, v in estimates.items() if v is not None]
    ranks = {n: 1 + sum(better(other, n) for other in reached if other != n) for n in reached}
    counts: dict[int, int] = {}
    for r in ranks.values():
        counts[r] = counts.get(r, 0) + 1
    ordered = sorted(reached, key=lambda n: (ranks[n], -float(estimates[n]), n))  # type: ignore[arg-type]
    out = [Ranked(n, ranks[n], counts[ranks[n]] > 1) for n in ordered]
    return out + [Ranked(n, None) for n in sorted(n for n, v in estimates.items() if v is None)]
