"""PGD (Madry et al.): projected gradient ascent on the cross-entropy within an linf or l2 ball."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.adversarial import pgd, pgd_step_size
from robustkit.attacks import Attack, AttackResult
from robustkit.params import Param
from robustkit.threat import threat_of


def _toward_target(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Ascending this descends the cross-entropy of the target class."""
    return -F.cross_entropy(logits, targets, reduction="sum")


class PGD(Attack):
    """PGD: ``steps`` steepest-ascent steps on the cross-entropy, each projected to the eps ball and [0, 1].

    Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018. The start is a uniform point of the linf box (or a random point of the l2 ball)
    when ``random_start``; each step is ``step_size`` times the sign of the gradient (linf) or the
    normalized gradient (l2). Targeted: descends the cross-entropy of the target class. The same
    iteration the ``pgd-at`` defense trains with (:func:`robustkit.adversarial.pgd`), so an attack and
    a defense of one preset agree on what PGD means without any plugin installed.

    Arguments:
        norm (str): linf or l2. (Default: 'linf')
        eps (float): budget in pixel units of images in [0, 1]. (Default: 0.3)
        steps (int): ascent steps. (Default: 40)
        step_size (float): size of each step; none: 2.5 * eps / steps. (Default: None)
        random_start (bool): start from a random point of the ball. (Default: True)
        seed (int): seed of the random start. (Default: 0)

    Shape:
        images: (N, C, H, W) in [0, 1]; labels: (N,) class indices.
        output: adversarial images of the same shape.
    """

    name = "pgd"
    threat_models = ("linf", "l2")
    knowledge = "white-box"
    goal = "fixed-budget"
    supports_targeted = True
    params = (
        Param("norm", str, "linf", "norm of the ball", choices=("linf", "l2")),
        Param("eps", float, 0.3, "budget in pixel units (images in [0, 1])", low=0.0),
        Param("steps", int, 40, "ascent steps", low=1, high=100_000),
        Param("step_size", float, None, "size of each step; none: 2.5 * eps / steps", low=0.0, low_open=True,
              optional=True),
        Param("random_start", bool, True, "start from a random point of the ball"),
        Param("seed", int, 0, "seed of the random start"),
    )

    def __init__(self, **params):
        super().__init__(**params)
        self.threat = threat_of(self.display_name(), self.config["norm"], self.config["eps"])

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor | None = None) -> AttackResult:
        cfg = self.config
        generator = torch.Generator(device=images.device).manual_seed(cfg["seed"])
        adversarial = pgd(model, images, labels if target_labels is None else target_labels, self.threat,
                          steps=cfg["steps"], step_size=pgd_step_size(cfg["step_size"], cfg["eps"], cfg["steps"]),
                          rand_init=cfg["random_start"], generator=generator,
                          loss_fn=None if target_labels is None else _toward_target)
        return AttackResult(adversarial)
