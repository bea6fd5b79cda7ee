"""The benchmark's metrics, computed from per-example outcomes under example weights.

Every metric is a robustness number per trained model, higher is better:

- ``worst-case``: robust accuracy under the whole suite (correct, and no attack broke it within the threat);
- ``<label>``: one fixed-budget attack's robust accuracy within the threat;
- ``<label>:rho`` / ``<label>:rho-median``: mean / median L2 distortion of a minimal-distortion attack over
  every example, the ones misclassified before the attack counting 0 and the ones it failed on left out
  (SPECS section 7);
- ``<label>:rho-success``: mean L2 over the attack's successes on correctly classified examples only.

A metric is evaluated under a weight matrix ``W`` (``B x n``: how often each example is drawn in each of
B bootstrap resamples; one row of ones for the measured value), so point estimates and bootstrap draws
are the same code. Values are ``NaN`` where a metric has no examples to average (rho when nothing
counts).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from robustkit.outcomes import Outcomes

WORST_CASE = "worst-case"
RHO_KINDS = ("rho", "rho-median", "rho-success")  # metric = "<label>:<kind>"


def split(metric: str) -> tuple[str, str]:
    """``(attack label, kind)``: kind is ``accuracy`` or one of :data:`RHO_KINDS` (labels may hold colons)."""
    for kind in RHO_KINDS:
        if metric.endswith(f":{kind}"):
            return metric[:-len(kind) - 1], kind
    return metric, "accuracy"


def is_accuracy(metric: str) -> bool:
    return split(metric)[1] == "accuracy"


def suite_metrics(attacks: list[Mapping[str, Any]], rank_by: str = WORST_CASE) -> list[str]:
    """Every metric an attack suite yields (``attacks``: label and goal of each), ``rank_by`` first."""
    names = [WORST_CASE]
    for attack in attacks:
        if attack["goal"] == "minimal-distortion":
            names += [f"{attack['label']}:{kind}" for kind in RHO_KINDS]
        else:
            names.append(attack["label"])
    return [rank_by] + [n for n in names if n != rank_by]


def ones(n: int) -> np.ndarray:
    """The weights of the measured values: every example once."""
    return np.ones((1, n), dtype=np.float64)


def clean_accuracy(outcomes: Outcomes, weights: np.ndarray) -> np.ndarray:
    return _mean(weights, *mean_terms(outcomes, CLEAN))


CLEAN = "clean"  # not a robustness metric; named so mean_terms serves clean accuracy too


def mean_terms(outcomes: Outcomes, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(values, counted)`` per example when ``metric`` is a weighted mean ``sum(w v c) / sum(w c)``
    (None for the medians, and for an attack the outcomes lack: then the metric is NaN)."""
    if metric == CLEAN:
        return outcomes.clean_correct.astype(np.float64), np.ones(outcomes.n)
    if metric == WORST_CASE:
        return outcomes.robust().astype(np.float64), np.ones(outcomes.n)
    label, kind = split(metric)
    if label not in outcomes.attacks or kind == "rho-median":
        return None
    if kind == "accuracy":
        return outcomes.robust([label]).astype(np.float64), np.ones(outcomes.n)
    distance, counted = _rho_terms(outcomes, label, kind)
    return np.where(counted, distance, 0.0), counted.astype(np.float64)


def _rho_terms(outcomes: Outcomes, label: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    attack = outcomes.attacks[label]
    if kind == "rho-success":
        return attack.l2, outcomes.clean_correct & attack.success
    # Misclassified before the attack count 0; failures are left out.
    return np.where(outcomes.clean_correct, attack.l2, 0.0), ~outcomes.clean_correct | attack.success


def value(outcomes: Outcomes, metric: str, weights: np.ndarray) -> np.ndarray:
    """``metric`` of one model under each row of ``weights`` (``B``-vector; NaN where undefined)."""
    terms = mean_terms(outcomes, metric)
    if terms is not None:
        return _mean(weights, *terms)
    label, kind = split(metric)
    if label not in outcomes.attacks:
        return np.full(weights.shape[0], np.nan)
    distance, counted = _rho_terms(outcomes, label, "rho")
    return _weighted_median(weights[:, counted], distance[counted])


def failed_share(outcomes: Outcomes, label: str) -> float:
    """Share of the examples a minimal-distortion attack failed on (left out of rho)."""
    attack = outcomes.attacks[label]
    return float(np.mean(outcomes.clean_correct & ~attack.success)) if outcomes.n else 0.0


def _mean(weights: np.ndarray, values: np.ndarray, counted: np.ndarray) -> np.ndarray:
    return ratio(weights @ values, weights @ counted)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, NaN where nothing was counted."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def _weighted_median(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row, the median of ``values`` repeated by the row's weights (the mean of the middle two for an
    even count, like :func:`statistics.median`)."""
    if values.size == 0:
        return np.full(weights.shape[0], np.nan)
    order = np.argsort(values, kind="stable")
    ordered, w = values[order], weights[:, order]
    cumulative = np.cumsum(w, axis=1)
    total = cumulative[:, -1]
    # 1-based positions of the middle elements, (total + 1) / 2 rounded down and up; the element at
    # position p is the first whose cumulative weight reaches p.
    low = (cumulative < np.floor((total + 1) / 2)[:, None]).sum(axis=1)
    high = (cumulative < np.ceil((total + 1) / 2)[:, None]).sum(axis=1)
    out = (ordered[np.minimum(low, values.size - 1)] + ordered[np.minimum(high, values.size - 1)]) / 2
    return np.where(total > 0, out, np.nan)
