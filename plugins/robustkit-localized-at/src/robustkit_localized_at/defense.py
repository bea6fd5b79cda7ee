"""Localized adversarial training (Rothberg, Chen, Ji): train on PGD examples whose changes a mask confines.

A plugin like any other (entry point ``localized-at``): the defense only supplies the loss of one
batch, and :mod:`robustkit.training` does the rest. The attack and the masks are the ones the
``localized-pgd`` attack uses (:func:`robustkit_localized_at.localized_pgd.localized_pgd`,
:func:`robustkit_localized_at.masks.make_mask`), so a model trained with one mask can be
evaluated with the very attack it was trained on.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.adversarial import crafting_mode, pgd_step_size
from robustkit.defenses import BatchLoss, Defense
from robustkit.errors import ParameterError
from robustkit.params import Param
from robustkit_localized_at.localized_pgd import localized_pgd
from robustkit_localized_at.masks import KINDS, make_mask

LOCALIZE = ("after", "each-step")


class LocalizedAT(Defense):
    """Localized adversarial training (Rothberg et al.): cross-entropy on masked (localized) PGD examples.

    Paper: E. Rothberg, T. Chen, H. Ji, "Towards Better Accuracy and Robustness with Localized
    Adversarial Training", AAAI 2019 student abstract (Algorithm 1; MNIST, Madry et al.'s challenge
    setup; no public code). The extended version is E. Rothberg, T. Chen, L. Jie, H. Ji, "Localized
    Adversarial Training for Increased Accuracy and Robustness in Image Classification", arXiv:1909.04779.

    Loss: mean CE(f(x'), y) over the whole batch, one step, no clean term. x' is linf PGD on the
    cross-entropy, localized by a mask M computed from each clean image (1 = the pixel may change):
    x0 = clip(x + U(-eps, eps), 0, 1), ``steps`` steps x_k = clip(clip(x_{k-1} + a sign(g), x - eps,
    x + eps), 0, 1), then x' = clip(x_K, x - eps M, x + eps M) (``localize=after``, the paper), so every
    pixel with M = 0 is exactly its clean value. ``mask=standard`` (M = 1) is plain PGD-AT (``pgd-at``
    with the same eps, steps and step size crafts the same examples).

    The examples are crafted with the model in ``attack_mode``, by default ``train``: the mode the
    training loop hands the model over in, as ``pgd-at`` does by default (Madry et al.'s reference code,
    whose challenge setup the paper follows, crafts on the training graph; its CNN has no batch norm, so
    for it the two modes agree). The model's mode is restored before the training forward pass.

    Params:

    - ``mask``: which pixels may change (:mod:`robustkit_localized_at.masks`):
      ``broad`` (default: the paper's headline model, the only one that beat standard adversarial
      training on natural inputs and on every attack) = all pixels except the digit pixels dilated by
      a 3x3 square; ``exact`` = all pixels except digit pixels {x > tau}; ``background`` = all but the
      central 6x6 block on 28x28 (scaled: 2x2 on 8x8); ``standard`` = all pixels (PGD-AT).
    - ``localize``: ``after`` (the paper: attack freely, then clip to x +- eps M) or ``each-step``
      (**choice**: M also limits the random start and every step; a much stronger attack: on an MNIST CNN
      the exact-mask attack left about twice the accuracy when localized only after). Say which a result
      uses.
    - ``eps``: linf budget of the pixels that may change, in pixel units of images in [0, 1]; the
      trade-off knob, in (0, 1]. Default 0.3, the paper's MNIST value. On the embedded 8x8 digits the
      strokes are a few pixels wide and the masks leave few pixels free (on average about 49% for
      ``exact`` and 13% for ``broad``, 20% with ``neighbourhood=4``), so smaller budgets (0.1, as the
      quickstart's pgd-at) are the usual choice there.
    - ``steps``: PGD iterations K; default 100, the paper's. CPU-scale runs (digits, the test suite,
      the benchmarks) use far fewer (5 to 10) with ``step_size=none``.
    - ``step_size``: step a; default 0.01, Madry's MNIST configuration (100 steps of 0.01 can cross the
      whole ball). ``none`` means 2.5 * eps / steps (pgd-at's rule), the sensible choice with few steps.
    - ``tau``: digit pixels are those > tau (``exact``, ``broad``), in [0, 1); default 0 (**choice**:
      the paper only says "pixels belonging to the digit").
    - ``neighbourhood``: dilation element of ``broad``: 8 (3x3 square, default) or 4 (cross) (**choice**).
    - ``rand_init``: start from a uniform random point of the eps ball (Madry; the paper).
    - ``attack_mode``: model mode while crafting: ``train`` (default) or ``eval``, as in ``pgd-at``.

    Cost: steps + 1 forward+backward passes per batch (101 with the paper's 100 steps).
    """

    name = "localized-at"
    reference = {"title": "Towards Better Accuracy and Robustness with Localized Adversarial Training",
                 "authors": "Eitan Rothberg, Tingting Chen, Hao Ji",
                 "venue": "AAAI 2019 (student abstract); extended: arXiv:1909.04779",
                 "link": "https://arxiv.org/abs/1909.04779"}
    knob = "eps"
    cheap_params = {"eps": 0.1, "steps": 1, "step_size": None}
    passes_per_batch = 101.0  # with the default steps; cost() reads the actual parameters
    params = (
        Param("mask", str, "broad", "which pixels may change: standard, background, exact or broad (paper's best)",
              choices=KINDS),
        Param("localize", str, "after", "apply the mask after the attack (paper) or inside every step",
              choices=LOCALIZE),
        Param("eps", float, 0.3, "linf budget of the pixels that may change (pixel units)", low=0.0,
              low_open=True, high=1.0),
        Param("steps", int, 100, "PGD iterations K (paper 100; fewer at CPU scale)", low=1, high=10_000),
        Param("step_size", float, 0.01, "step size a (Madry); none: 2.5 * eps / steps", low=0.0, low_open=True,
              optional=True),
        Param("tau", float, 0.0, "digit pixels are those > tau (exact, broad masks), in [0, 1)", low=0.0),
        Param("neighbourhood", int, 8, "dilation of the broad mask: 8 (3x3 square) or 4 (cross)", choices=(8, 4)),
        Param("rand_init", bool, True, "start from a uniform random point of the eps ball"),
        Param("attack_mode", str, "train", "model mode while crafting: train (Madry) or eval",
              choices=("train", "eval")),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        if self.config["tau"] >= 1.0:
            raise ParameterError(f"{self.display_name()}: parameter 'tau' must be < 1 (no pixel exceeds 1, so "
                                 f"the mask would be standard), got {self.config['tau']}")

    @property
    def step_size(self) -> float:
        """The per-step size actually used."""
        return pgd_step_size(self.config["step_size"], self.config["eps"], self.config["steps"])

    def cost(self) -> float:
        return float(self.config["steps"] + 1)

    def mask(self, images: torch.Tensor) -> torch.Tensor:
        """The mask of ``images`` (clean, N x C x H x W): 1 where a pixel may change."""
        cfg = self.config
        return make_mask(cfg["mask"], images, tau=cfg["tau"], neighbourhood=cfg["neighbourhood"])

    def adversarial_examples(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Localized PGD examples for this batch (detached), crafted in ``attack_mode``; the mode is restored.

        The random start draws from torch's global generator, which the training loop reseeds every epoch.
        """
        cfg = self.config
        if mask is None:
            mask = self.mask(images)
        with crafting_mode(model, cfg["attack_mode"]):
            return localized_pgd(model, images, labels, mask, eps=cfg["eps"], steps=cfg["steps"],
                                 step_size=self.step_size, localize=cfg["localize"], rand_init=cfg["rand_init"])

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        mask = self.mask(images)
        adversarial = self.adversarial_examples(model, images, labels, mask)
        logits = model(adversarial)
        return BatchLoss(F.cross_entropy(logits, labels), logits, {"mask_frac": float(mask.mean())})
