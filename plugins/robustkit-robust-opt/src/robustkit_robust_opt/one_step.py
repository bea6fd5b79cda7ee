"""Shaham et al.'s one-step ascent (robust optimization, SPECS section 4): l1, l2 or linf."""

from __future__ import annotations

import torch
from torch import nn

from robustkit.adversarial import ascent_direction, input_gradient
from robustkit.attacks import Attack, AttackResult
from robustkit.params import Param


def one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
             clip: bool = True) -> torch.Tensor:
    """x + eps * the steepest-ascent unit step of the cross-entropy for ``norm`` (one gradient).

    linf: eps * sign(g); l2: eps * g / ||g||_2 (whole image); l1: eps * sign(g_k) at k = argmax |g|
    (one coordinate). ``clip`` clips the result to [0, 1]. The model's mode is left as is.
    """
    grad = input_gradient(model, x, y)
    adv = x.detach() + eps * ascent_direction(grad, norm)
    return adv.clamp(0.0, 1.0) if clip else adv


class OneStep(Attack):
    """Shaham's one-step ascent: one gradient step of radius eps for the l1, l2 or linf norm.

    The perturbation that maximizes the linearized cross-entropy within the norm ball of radius
    eps (Shaham, Yamada, Negahban, "Understanding adversarial training: increasing local stability
    of supervised models through robust optimization", Neurocomputing 2018; the paper's r):

    - ``linf``: eps * sign(g) (FGSM);
    - ``l2``: eps * g / ||g||_2 over the whole image;
    - ``l1``: eps * sign(g_k) on the single coordinate k = argmax |g| (first one on ties).

    g = grad_x CE(f(x), y); a zero gradient gives no change. The result is clipped to [0, 1] (every
    attack returns valid images), so a step past the range is cut; the function
    :func:`one_step` has ``clip=False`` for training without clipping (Shaham's reference did not
    clip MNIST). The reference's radii are
    in standardized units (linf 0.2, l2 2, l1 2 on MNIST): multiply by the dataset's std (0.3081) for
    pixel units.

    Arguments:
        norm (str): linf, l2 or l1. (Default: 'linf')
        eps (float): radius r of the step in pixel units. (Default: 0.1)

    Shape:
        images: (N, C, H, W) in [0, 1]; labels: (N,) class indices.
        output: adversarial images of the same shape.
    """

    name = "one-step"
    threat_models = ("linf", "l2", "l1")
    knowledge = "white-box"
    goal = "fixed-budget"
    supports_targeted = False
    params = (
        Param("norm", str, "linf", "norm of the ball the step maximizes over", choices=("linf", "l2", "l1")),
        Param("eps", float, 0.1, "radius r of the step in pixel units", low=0.0),
    )

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor | None = None) -> AttackResult:
        cfg = self.config
        return AttackResult(one_step(model, images, labels, norm=cfg["norm"], eps=cfg["eps"]))
