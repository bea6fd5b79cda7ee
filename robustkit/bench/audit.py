"""Gradient-masking audit: four checks that a trained model's robustness is not an artefact of the attack.

A defense that only hides its gradients looks robust to gradient attacks yet is not. The checks
(Athalye et al. 2018; Carlini et al. 2019, "On evaluating adversarial robustness") run on the
evaluation subset of every trained model:

- ``unbounded``: PGD with a budget covering the whole data range must bring accuracy to about 0.
- ``more_steps``: PGD with many more steps must not leave the model *more* accurate.
- ``black_box``: a score-based attack (Square or NATTACK) must not beat the white-box attacks.
- ``transfer``: PGD crafted on a naturally trained surrogate must not beat the white-box attacks.

A check that fails sets a flag; flags travel with the results into reports and the leaderboard.
Differences below ``tolerance`` are treated as noise (small evaluation subsets move by a few points).

Every check records what it measured, so a report can show why it passed or failed: ``accuracy`` (the
robust accuracy under the check's attack), ``limit`` and ``bound`` (the accuracy had to be at most, or
at least, ``limit``) and, for the three comparisons, the ``reference`` it was compared to with
``reference_detail`` (which attack gave it) and the ``gap`` (accuracy minus reference).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

import robustkit.evaluation as evaluation
from robustkit.adversarial import pgd, pgd_step_size
from robustkit.devices import seed_everything
from robustkit.threat import ThreatModel

FLAGS = {
    "unbounded": "accuracy does not fall to ~0 under an unbounded attack",
    "more_steps": "more PGD steps raise accuracy",
    "black_box": "a black-box attack beats the white-box attacks",
    "transfer": "transfer from a natural model beats the white-box attacks",
}

AT_MOST, AT_LEAST = "at most", "at least"
#: Which way each check bounds the accuracy it measures: an unbounded attack and a longer PGD must leave the
#: model no more accurate than the limit; a black box or a transfer must not break it more than the white box.
BOUNDS = {"unbounded": AT_MOST, "more_steps": AT_MOST, "black_box": AT_LEAST, "transfer": AT_LEAST}


def comparison_limit(name: str, reference: float, tolerance: float) -> float:
    """The accuracy bound of the comparison ``name``: its reference plus the tolerance for an upper bound,
    minus it for a lower one."""
    return reference + tolerance if BOUNDS[name] == AT_MOST else reference - tolerance


def judged(name: str, accuracy: float, detail: str, *, limit: float | None = None, reference: float | None = None,
           reference_detail: str | None = None, tolerance: float = 0.0) -> dict[str, Any]:
    """The record of check ``name``: what it measured, the bound it had to respect (``limit``, or the
    reference shifted by the tolerance), the gap to its reference, and whether it passed."""
    if limit is None:
        if reference is None:
            raise ValueError(f"the audit check {name} needs a limit or a reference")
        limit = comparison_limit(name, reference, tolerance)
    check: dict[str, Any] = {"accuracy": accuracy, "limit": limit, "bound": BOUNDS[name],
                             "passed": accuracy <= limit if BOUNDS[name] == AT_MOST else accuracy >= limit,
                             "detail": detail}
    if reference is not None:
        check.update(reference=reference, reference_detail=reference_detail, gap=accuracy - reference)
    return check


def completed(name: str, check: Mapping[str, Any], tolerance: float | None) -> dict[str, Any]:
    """A recorded check with ``bound``, ``limit`` and ``gap`` filled in where a record written before they were
    recorded lacks them (derived from its accuracy, reference and the audit's tolerance, as the check did)."""
    out = dict(check)
    out.setdefault("bound", BOUNDS.get(name))
    reference = out.get("reference")
    if reference is not None:
        out.setdefault("gap", out["accuracy"] - reference)
        if "limit" not in out and tolerance is not None and name in BOUNDS:
            out["limit"] = comparison_limit(name, reference, tolerance)
    return out


def robust_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, adversarial: torch.Tensor,
                    batch_size: int = 256) -> float:
    """:func:`robustkit.evaluation.robust_accuracy` of ``model`` on ``images`` and their ``adversarial``
    (predicted in batches): right on the clean image and on its adversarial (a lucky adversarial must not count)."""
    clean, adv = [], []
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            clean.append(model(images[i:i + batch_size]).argmax(1))
            adv.append(model(adversarial[i:i + batch_size]).argmax(1))
    return evaluation.robust_accuracy(labels, torch.cat(clean) if clean else labels[:0],
                                      torch.cat(adv) if adv else labels[:0])


def pgd_examples(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel, steps: int,
                 seed: int, batch_size: int = 256) -> torch.Tensor:
    """PGD with the usual step size 2.5 eps / steps and a seeded random start, in batches."""
    generator = torch.Generator(device=images.device)
    generator.manual_seed(seed)
    out = []
    for i in range(0, len(labels), batch_size):
        out.append(pgd(model, images[i:i + batch_size], labels[i:i + batch_size], threat, steps=steps,
                       step_size=pgd_step_size(None, threat.eps, steps), generator=generator))
    return torch.cat(out)


def audit_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, threat: Mapping[str, Any],
                settings: Mapping[str, Any], white_box_accuracy: float | None, black_box: Any = None,
                surrogate: nn.Module | None = None, seed: int = 0, white_box_label: str | None = None,
                ) -> dict[str, Any]:
    """Run the checks on ``images`` (already on the model's device); return what each measured, its verdict,
    and the flags.

    :param white_box_accuracy: the lowest accuracy of the suite's white-box fixed-budget attacks
        (``None`` if the suite has none; the audit's own PGD is used then).
    :param white_box_label: the suite's attack that gave ``white_box_accuracy``, named in the record.
    :param black_box: an :class:`robustkit.attacks.Attack` (score-based), or ``None`` to skip that check.
    :param surrogate: a naturally trained model of the same architecture, or ``None`` to skip transfer.
    """
    was_training = model.training
    model.eval()
    tol = float(settings["tolerance"])
    steps, more = settings["steps"], settings["more_steps"]
    checks: dict[str, dict[str, Any]] = {}
    try:
        at_eps = ThreatModel(threat["norm"], float(threat["eps"]))
        unbounded = ThreatModel("linf", float(settings["unbounded_eps"]))
        value = robust_accuracy(model, images, labels, pgd_examples(model, images, labels, unbounded, more, seed))
        checks["unbounded"] = judged("unbounded", value, f"linf PGD-{more} at eps {unbounded.eps:g}",
                                     limit=float(settings["unbounded_max_accuracy"]))

        few = robust_accuracy(model, images, labels, pgd_examples(model, images, labels, at_eps, steps, seed))
        many = robust_accuracy(model, images, labels, pgd_examples(model, images, labels, at_eps, more, seed))
        checks["more_steps"] = judged("more_steps", many, f"PGD-{more}", reference=few,
                                      reference_detail=f"PGD-{steps}", tolerance=tol)
        # The best white-box result: the suite's own (named first, so it is the one named on a tie) or the audit's PGD.
        suite = f"the suite's {white_box_label}" if white_box_label else "the suite's white-box attacks"
        white, white_detail = min(((v, d) for v, d in ((white_box_accuracy, suite), (few, f"PGD-{steps}"),
                                                        (many, f"PGD-{more}")) if v is not None),
                                  key=lambda candidate: candidate[0])

        if black_box is not None:
            seed_everything(seed)
            adversarial = torch.cat([black_box(model, images[i:i + 256], labels[i:i + 256]).adversarial
                                     for i in range(0, len(labels), 256)])
            value = robust_accuracy(model, images, labels, adversarial)
            checks["black_box"] = judged("black_box", value, str(black_box.describe().get("name", "black-box")),
                                         reference=white, reference_detail=white_detail, tolerance=tol)
        if surrogate is not None:
            surrogate.eval()
            adversarial = pgd_examples(surrogate, images, labels, at_eps, more, seed)
            value = robust_accuracy(model, images, labels, adversarial)
            checks["transfer"] = judged("transfer", value, f"PGD-{more} crafted on a naturally trained model",
                                        reference=white, reference_detail=white_detail, tolerance=tol)
    finally:
        model.train(was_training)
    flags = [name for name, check in checks.items() if not check["passed"]]
    return {"checks": checks, "flags": flags, "tolerance": tol}
