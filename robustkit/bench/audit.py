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
                surrogate: nn.Module | None = None, seed: int = 0) -> dict[str, Any]:
    """Run the checks on ``images`` (already on the model's device); return values, verdicts and flags.

    :param white_box_accuracy: the lowest accuracy of the suite's white-box fixed-budget attacks
        (``None`` if the suite has none; the audit's own many-step PGD is used then).
    :param black_box: an :class:`robustkit.attacks.Attack` (score-based), or ``None`` to skip that check.
    :param surrogate: a naturally trained model of the same architecture, or ``None`` to skip transfer.
    """
    was_training = model.training
    model.eval()
    tol = float(settings["tolerance"])
    checks: dict[str, dict[str, Any]] = {}
    try:
        at_eps = ThreatModel(threat["norm"], float(threat["eps"]))
        unbounded = ThreatModel("linf", float(settings["unbounded_eps"]))
        value = robust_accuracy(model, images, labels,
                                pgd_examples(model, images, labels, unbounded, settings["more_steps"], seed))
        limit = float(settings["unbounded_max_accuracy"])
        checks["unbounded"] = {"accuracy": value, "limit": limit, "passed": value <= limit,
                               "detail": f"linf PGD-{settings['more_steps']} at eps {unbounded.eps:g}"}

        few = robust_accuracy(model, images, labels, pgd_examples(model, images, labels, at_eps, settings["steps"], seed))
        many = robust_accuracy(model, images, labels,
                               pgd_examples(model, images, labels, at_eps, settings["more_steps"], seed))
        checks["more_steps"] = {"accuracy": many, "reference": few, "passed": many <= few + tol,
                                "detail": f"PGD-{settings['more_steps']} vs PGD-{settings['steps']}"}
        white = min(v for v in (white_box_accuracy, few, many) if v is not None)

        if black_box is not None:
            seed_everything(seed)
            adversarial = torch.cat([black_box(model, images[i:i + 256], labels[i:i + 256]).adversarial
                                     for i in range(0, len(labels), 256)])
            value = robust_accuracy(model, images, labels, adversarial)
            checks["black_box"] = {"accuracy": value, "reference": white, "passed": value >= white - tol,
                                   "detail": f"{black_box.describe().get('name', 'black-box')} vs the best white-box"}
        if surrogate is not None:
            surrogate.eval()
            adversarial = pgd_examples(surrogate, images, labels, at_eps, settings["more_steps"], seed)
            value = robust_accuracy(model, images, labels, adversarial)
            checks["transfer"] = {"accuracy": value, "reference": white, "passed": value >= white - tol,
                                  "detail": f"PGD-{settings['more_steps']} crafted on a naturally trained model"}
    finally:
        model.train(was_training)
    flags = [name for name, check in checks.items() if not check["passed"]]
    return {"checks": checks, "flags": flags, "tolerance": tol}
