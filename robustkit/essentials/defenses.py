"""Baseline defenses: natural training, PGD-AT (Madry et al.), FGSM-AT, FGM-AT and TRADES.

Part of the essential set (:mod:`robustkit.essentials`): the runner, the specs and the quickstart name
these, so no plugin can remove or replace them. Each defense only supplies the loss of one batch, and
:mod:`robustkit.training` does the rest; their building blocks (:func:`~robustkit.adversarial.crafting_mode`,
:func:`~robustkit.adversarial.trades_examples`, :func:`~robustkit.adversarial.kl_batchmean`) are public in
:mod:`robustkit.adversarial` for plugins that build on them.

- ``natural``: cross-entropy on clean images.
- ``pgd-at``: Madry et al.'s PGD adversarial training (RLFAT's "PGDAT", PGN's "PGD-AT").
- ``fgsm-at``: Goodfellow et al.'s one-step linf adversarial training, with Wong et al.'s random start as an option.
- ``fgm-at``: one-step l2 adversarial training (the PGN paper's "FGM-AT" baseline).
- ``trades``: Zhang et al.'s TRADES (RLFAT's second baseline); :func:`~robustkit.adversarial.trades_examples` is its inner attack.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.adversarial import (ascent_direction, crafting_mode, kl_batchmean, pgd, pgd_step_size,
                                   random_start, trades_examples)
from robustkit.defenses import BatchLoss, Defense
from robustkit.hookspecs import Register, hookimpl
from robustkit.params import Param
from robustkit.threat import threat_of


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
    cheap_params = {"eps": 0.1, "steps": 1}
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
        self.threat = threat_of(self.display_name(), self.config["norm"], self.config["eps"])

    @property
    def step_size(self) -> float:
        """The per-step size actually used."""
        return pgd_step_size(self.config["step_size"], self.config["eps"], self.config["steps"])

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


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.detach().argmax(1) == labels).float().mean())


class _FastGradientAT(Defense):
    """One-step adversarial training: shared by ``fgsm-at`` (linf) and ``fgm-at`` (l2, l1).

    The attack gradient is taken in the mode the training loop set (train). Without a random start it
    is the gradient of the clean forward pass that the loss's clean term also uses, so the mixed loss
    costs 2 passes.
    """

    default_norm: ClassVar[str] = "linf"

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.norm = str(self.config.get("norm", self.default_norm))
        self.threat = threat_of(self.display_name(), self.norm, self.config["eps"])

    @property
    def step_size(self) -> float:
        """The size of the one step: eps, or 1.25 * eps after a random start (Wong et al.), unless set."""
        size = self.config.get("step_size")
        if size is not None:
            return float(size)
        return 1.25 * self.config["eps"] if self.config.get("rand_init") else float(self.config["eps"])

    def cost(self) -> float:
        alpha = self.config["alpha"]
        if alpha == 1:
            return 1.0  # all weight on the clean term: natural training
        return 3.0 if self.config.get("rand_init") and alpha > 0 else 2.0

    def _step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              keep_graph: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(adversarial images, logits at the attack's start, mean CE there) with the graph kept if asked."""
        start = random_start(images, self.threat) if self.config.get("rand_init") else images
        start = start.detach().requires_grad_(True)
        logits = model(start)
        loss = F.cross_entropy(logits, labels)
        (grad,) = torch.autograd.grad(loss, start, retain_graph=keep_graph)
        adversarial = self.threat.project(start.detach() + self.step_size * ascent_direction(grad, self.norm), images)
        return adversarial.detach(), logits, loss

    def adversarial_examples(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The one-step examples for this batch (detached), crafted in the model's current mode."""
        return self._step(model, images, labels, keep_graph=False)[0]

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        alpha = self.config["alpha"]
        if alpha == 1:
            logits = model(images)
            return BatchLoss(F.cross_entropy(logits, labels), logits)
        reuse = alpha > 0 and not self.config.get("rand_init")
        adversarial, start_logits, start_loss = self._step(model, images, labels, keep_graph=reuse)
        logits = model(adversarial)
        loss = F.cross_entropy(logits, labels)
        if alpha == 0:
            return BatchLoss(loss, logits)
        if reuse:
            clean_logits, clean_loss = start_logits, start_loss
        else:
            clean_logits = model(images)
            clean_loss = F.cross_entropy(clean_logits, labels)
        return BatchLoss(alpha * clean_loss + (1 - alpha) * loss, logits,
                         {"clean_acc": _accuracy(clean_logits, labels)})


class FGSMAT(_FastGradientAT):
    """FGSM adversarial training (Goodfellow et al., 2015): clean and one-step linf examples, mixed.

    Paper: I. J. Goodfellow, J. Shlens, C. Szegedy, "Explaining and Harnessing Adversarial Examples",
    ICLR 2015 (the objective of its adversarial-training section); the random start is E. Wong, L. Rice, J. Z. Kolter,
    "Fast is better than free: Revisiting adversarial training", ICLR 2020.

    Loss: alpha * CE(f(x), y) + (1 - alpha) * CE(f(x'), y), batch means, where
    x' = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1). With ``rand_init`` (Wong et al.'s "fast AT"):
    x0 = x + U(-eps, eps) (clipped to [0, 1]), x' = proj_eps(x0 + step_size * sign(grad at x0)), clipped;
    Wong et al. train on x' only, which is ``alpha=0``. Gradients do not flow through x' (it is
    detached), as in the paper's implementation.

    Params:

    - ``eps``: linf budget in pixel units of images in [0, 1]; the trade-off knob (<= 1). Default 0.3,
      the MNIST budget of pgd-at (Goodfellow et al. used 0.25 on MNIST).
    - ``alpha``: weight of the clean term, in [0, 1]; 0.5 in the paper. 0 trains on x' only, 1 is
      natural training.
    - ``rand_init``: start from a uniform random point of the eps ball (Wong et al.); off by default.
    - ``step_size``: size of the one step; ``none`` means eps (no random start) or 1.25 * eps (with
      it, Wong et al.'s choice). The result is projected back to the eps ball either way.

    Cost: 2 forward+backward passes per batch (the clean pass gives the attack gradient); 3 with a
    random start and alpha > 0; 1 when alpha = 1.
    """

    name = "fgsm-at"
    reference = {"title": "Explaining and Harnessing Adversarial Examples",
                 "authors": "Ian J. Goodfellow, Jonathon Shlens, Christian Szegedy",
                 "venue": "ICLR 2015", "link": "https://arxiv.org/abs/1412.6572"}
    knob = "eps"
    cheap_params = {"eps": 0.1}
    passes_per_batch = 2.0
    default_norm = "linf"
    params = (
        Param("eps", float, 0.3, "linf perturbation budget (pixel units, images in [0, 1])", low=0.0, low_open=True),
        Param("alpha", float, 0.5, "weight of the clean cross-entropy (1 - alpha on the FGSM one)", low=0.0, high=1.0),
        Param("rand_init", bool, False, "start from a uniform random point of the eps ball (Wong et al.'s fast AT)"),
        Param("step_size", float, None, "step size; none: eps, or 1.25 * eps with rand_init", low=0.0,
              low_open=True, optional=True),
    )


class FGMAT(_FastGradientAT):
    """FGM adversarial training: cross-entropy on one-step l2 examples (the PGN paper's FGM-AT baseline).

    Paper: the "FGM-AT" control group of "Adversarial training with perturbation generator networks"
    (anonymous ICLR 2020 submission; reference code ATPGN/ATPGN, cleverhans's
    ``FastGradientMethod(ord=2)``): Goodfellow et al.'s fast gradient step taken in the l2 norm.

    Loss: alpha * CE(f(x), y) + (1 - alpha) * CE(f(x'), y), with x' = clip(x + eps * g / ||g||_2, 0, 1),
    g = grad_x CE(f(x), y) per image, x' detached. The default ``alpha=0`` trains on adversarial
    examples only, as the PGN paper's baselines do.

    Params:

    - ``norm``: ``l2`` (the paper's), or ``l1``: the whole step on the pixel of largest |g| (cleverhans's
      ``ord=1``, the l1 step of Shaham et al.); linf is ``fgsm-at``.
    - ``eps``: budget in pixel units of images in [0, 1]; the trade-off knob (PGN sweeps it). Default
      0.5, the l2 budget of the paper's white-box FGM evaluation.
    - ``alpha``: weight of the clean term, in [0, 1]; default 0 (adversarial examples only).

    Cost: 2 forward+backward passes per batch (1 when alpha = 1).
    """

    name = "fgm-at"
    reference = {"title": "Adversarial training with perturbation generator networks (FGM-AT baseline)",
                 "authors": "Anonymous", "venue": "ICLR 2020 submission", "link": ""}
    knob = "eps"
    cheap_params = {"eps": 0.5}
    passes_per_batch = 2.0
    default_norm = "l2"
    params = (
        Param("norm", str, "l2", "norm of the one step (linf is fgsm-at)", choices=("l2", "l1")),
        Param("eps", float, 0.5, "perturbation budget in that norm (pixel units, images in [0, 1])", low=0.0,
              low_open=True),
        Param("alpha", float, 0.0, "weight of the clean cross-entropy (0: adversarial examples only)",
              low=0.0, high=1.0),
    )


class TRADES(Defense):
    """TRADES (Zhang et al., 2019): clean cross-entropy plus beta times KL(p(x) || p(x')).

    Paper: H. Zhang, Y. Yu, J. Jiao, E. P. Xing, L. El Ghaoui, M. I. Jordan, "Theoretically Principled
    Trade-off between Robustness and Accuracy", ICML 2019 (reference code yaodongyu/TRADES; the
    "TRADES" baseline of RLFAT).

    Loss: mean CE(f(x), y) + beta * KL(p(x) || p(x')), the KL summed over classes and averaged over
    the batch, gradients through both p(x) and p(x'). x' = :func:`~robustkit.adversarial.trades_examples`: start at
    x + 0.001 * N(0, I), ``steps`` ascent steps of ``step_size`` on the KL with p(x) fixed, each
    projected onto the eps ball and clipped to [0, 1].

    Params:

    - ``norm``: ``linf`` (sign steps) or ``l2`` (normalized-gradient steps; Zhang et al.'s l2 variant
      runs an optimizer on the perturbation instead).
    - ``eps``: budget in pixel units of images in [0, 1]; default 0.031, Zhang et al.'s CIFAR-10 value.
    - ``steps``: inner iterations (10 on CIFAR-10).
    - ``step_size``: per-step size; ``none`` means 2.5 * eps / steps, as pgd-at (Zhang et al. use 0.007,
      about 2.26 * eps / steps).
    - ``beta``: weight of the KL term, the trade-off knob (the paper's 1/lambda, RLFAT's lambda, the
      ``--beta`` of Zhang et al.'s code and ART's trainer); default 6. Named ``beta`` because
      ``lambda`` is a Python keyword.
    - ``rand_init``: the Gaussian start (without it the first KL gradient is zero).
    - ``attack_mode``: model mode while crafting x'; default ``eval``, as Zhang et al.'s code does
      (``train`` matches RLFAT's TensorFlow TRADES baseline and rlfat's default).

    Cost: steps + 2 forward+backward passes per batch (plus one forward for p(x) in the attack).
    """

    name = "trades"
    reference = {"title": "Theoretically Principled Trade-off between Robustness and Accuracy",
                 "authors": "Hongyang Zhang, Yaodong Yu, Jiantao Jiao, Eric P. Xing, Laurent El Ghaoui, "
                            "Michael I. Jordan",
                 "venue": "ICML 2019", "link": "https://arxiv.org/abs/1901.08573"}
    knob = "beta"
    cheap_params = {"eps": 0.1, "steps": 1}
    passes_per_batch = 12.0  # with the default steps; cost() reads the actual parameters
    params = (
        Param("norm", str, "linf", "threat model of the inner attack", choices=("linf", "l2")),
        Param("eps", float, 0.031, "perturbation budget (pixel units, images in [0, 1])", low=0.0, low_open=True),
        Param("steps", int, 10, "inner attack iterations", low=1, high=10_000),
        Param("step_size", float, None, "step size; none: 2.5 * eps / steps", low=0.0, low_open=True,
              optional=True),
        Param("beta", float, 6.0, "weight of the KL term (the trade-off knob; lambda in RLFAT)", low=0.0),
        Param("rand_init", bool, True, "start from x + 0.001 * N(0, I)"),
        Param("attack_mode", str, "eval", "model mode while crafting: eval (Zhang et al.) or train",
              choices=("train", "eval")),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.threat = threat_of(self.display_name(), self.config["norm"], self.config["eps"])

    @property
    def step_size(self) -> float:
        """The per-step size actually used."""
        return pgd_step_size(self.config["step_size"], self.config["eps"], self.config["steps"])

    def cost(self) -> float:
        return float(self.config["steps"] + 2)

    def adversarial_examples(self, model: nn.Module, images: torch.Tensor,
                             labels: torch.Tensor | None = None) -> torch.Tensor:
        """The inner attack's x' (detached), crafted in ``attack_mode``; labels are not needed."""
        with crafting_mode(model, self.config["attack_mode"]):
            return trades_examples(model, images, self.threat, steps=self.config["steps"],
                                   step_size=self.step_size, rand_init=self.config["rand_init"])

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        adversarial = self.adversarial_examples(model, images)
        logits = model(images)
        adversarial_logits = model(adversarial)
        robust = kl_batchmean(logits, adversarial_logits)
        loss = F.cross_entropy(logits, labels) + self.config["beta"] * robust
        return BatchLoss(loss, logits, {"adv_acc": _accuracy(adversarial_logits, labels), "kl": float(robust.detach())})


@hookimpl
def register_defenses(register: Register) -> None:
    """Register ``natural``, ``pgd-at``, ``fgsm-at``, ``fgm-at`` and ``trades``."""
    register("natural", Natural)
    register("pgd-at", PGDAT, threat_models=("linf", "l2"))
    register("fgsm-at", FGSMAT, threat_models=("linf",))
    register("fgm-at", FGMAT, threat_models=("l2", "l1"))
    register("trades", TRADES, threat_models=("linf", "l2"))
