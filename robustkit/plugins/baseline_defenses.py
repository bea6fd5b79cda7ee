"""Baseline defenses: natural training and PGD adversarial training (Madry et al.).

A plugin like any other (entry point ``baseline-defenses``): each defense only supplies the loss of
one batch, and :mod:`robustkit.training` does the rest.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.adversarial import pgd
from robustkit.defenses import BatchLoss, Defense
from robustkit.errors import ParameterError
from robustkit.hookspecs import Register, hookimpl
from robustkit.params import Param
from robustkit.threat import ThreatModel


class Natural(Defense):
    """Natural training: cross-entropy on clean images, no defense.

    Paper: none; the undefended baseline every defense is compared against (and whose clean
    accuracy is the default target of the accuracy-matched protocol).

    Loss: mean CE(f(x), y) over the batch.

    Params: none. Knob: none. Cost: 1 forward+backward pass per batch.
    """

    name = "natural"
    reference = {"title": "Natural (standard) training", "authors": "", "venue": "", "link": ""}
    knob = None
    passes_per_batch = 1.0
    params = ()

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        logits = model(images)
        return BatchLoss(F.cross_entropy(logits, labels), logits)


class PGDAT(Defense):
    """PGD adversarial training (Madry et al., 2018): cross-entropy on PGD examples only.

    Paper: A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, "Towards Deep Learning Models
    Resistant to Adversarial Attacks", ICLR 2018 (the "PGDAT" baseline of RLFAT and the "PGD-AT"
    baseline of PGN).

    Loss: mean CE(f(x'), y), where x' = PGD(x): ``steps`` steps of size ``step_size`` ascending the
    cross-entropy within the ``norm`` ball of radius ``eps`` (and [0, 1]), from a uniform random
    start when ``rand_init``. There is no clean term.

    Params:

    - ``norm``: ``linf`` (sign steps) or ``l2`` (normalized-gradient steps).
    - ``eps``: the budget in pixel units of images in [0, 1]; the trade-off knob. linf eps <= 1.
    - ``steps``: PGD iterations (>= 1).
    - ``step_size``: per-step size; ``none`` means 2.5 * eps / steps (Madry et al.'s rule, which keeps
      the step sensible as eps is swept).
    - ``rand_init``: start from a random point of the ball (Madry) rather than x.
    - ``attack_mode``: ``train`` (default) crafts x' with the model in training mode, as Madry et al.'s
      reference code does (the attack runs on the training graph: batch norm uses batch statistics, and
      in PyTorch each attack forward also updates the running statistics); ``eval`` crafts with
      running statistics and leaves them untouched, as many PyTorch re-implementations do.

    Cost: steps + 1 forward+backward passes per batch.
    """

    name = "pgd-at"
    reference = {"title": "Towards Deep Learning Models Resistant to Adversarial Attacks",
                 "authors": "Aleksander Madry, Aleksandar Makelov, Ludwig Schmidt, Dimitris Tsipras, Adrian Vladu",
                 "venue": "ICLR 2018", "link": "https://arxiv.org/abs/1706.06083"}
    knob = "eps"
    passes_per_batch = 11.0  # with the default steps; cost() reads the actual parameters
    params = (
        Param("norm", str, "linf", "threat model of the inner attack", choices=("linf", "l2")),
        Param("eps", float, 0.3, "perturbation budget (pixel units, images in [0, 1])", low=0.0, low_open=True),
        Param("steps", int, 10, "PGD iterations", low=1, high=10_000),
        Param("step_size", float, None, "step size; none: 2.5 * eps / steps", low=0.0, low_open=True,
              optional=True),
        Param("rand_init", bool, True, "start from a uniform random point of the eps ball"),
        Param("attack_mode", str, "train", "model mode while crafting: train (Madry) or eval",
              choices=("train", "eval")),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        try:
            self.threat = ThreatModel(self.config["norm"], self.config["eps"])
        except ParameterError as err:
            raise ParameterError(f"{self.display_name()}: {err}") from None

    @property
    def step_size(self) -> float:
        """The per-step size actually used."""
        size = self.config["step_size"]
        return float(size) if size is not None else 2.5 * self.config["eps"] / self.config["steps"]

    def cost(self) -> float:
        return float(self.config["steps"] + 1)

    def adversarial_examples(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """PGD examples for this batch (detached), crafted in ``attack_mode``; the model's mode is restored."""
        was_training = model.training
        model.train(self.config["attack_mode"] == "train")
        try:
            return pgd(model, images, labels, self.threat, steps=self.config["steps"], step_size=self.step_size,
                       rand_init=self.config["rand_init"])
        finally:
            model.train(was_training)

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        adversarial = self.adversarial_examples(model, images, labels)
        logits = model(adversarial)
        return BatchLoss(F.cross_entropy(logits, labels), logits)


@hookimpl
def register_defenses(register: Register) -> None:
    """Register ``natural`` and ``pgd-at``."""
    register("natural", Natural)
    register("pgd-at", PGDAT, threat_models=("linf", "l2"))
