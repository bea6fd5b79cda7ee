"""CW-linf (as evaluated by RLFAT and Madry et al.): linf PGD on the Carlini-Wagner margin loss."""

from __future__ import annotations

import torch
from torch import nn

from robustkit.adversarial import ascent_direction, input_gradient
from robustkit.attacks import Attack, AttackResult
from robustkit.params import Param
from robustkit.threat import ThreatModel


def cw_margin(logits: torch.Tensor, labels: torch.Tensor, legacy_mask: bool = False) -> torch.Tensor:
    """Per-image margin z_y - max_{j != y} z_j.

    ``legacy_mask=True`` computes the other-class maximum as RLFAT's reference does,
    ``max_j ((1 - onehot) * z)_j``: the true class's slot becomes 0 instead of being excluded, so the
    "other" term is at least 0 (wrong when every other logit is negative). Madry's MNIST challenge
    code excludes it (``z - 1e4 * onehot``), as the default here does.
    """
    onehot = torch.nn.functional.one_hot(labels, logits.shape[1]).to(torch.bool)
    correct = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    if legacy_mask:
        other = logits.masked_fill(onehot, 0.0).amax(dim=1)
    else:
        other = logits.masked_fill(onehot, float("-inf")).amax(dim=1)
    return correct - other


def cw_loss(kappa: float = 50.0, legacy_mask: bool = False):
    """Summed CW loss -relu(z_y - max_{j != y} z_j + kappa), to ascend (a ``loss_fn`` for ``pgd``)."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -torch.relu(cw_margin(logits, labels, legacy_mask) + kappa).sum()

    return loss


class CWLinf(Attack):
    """CW-linf: PGD ascending the Carlini-Wagner margin loss -relu(z_y - max_{j!=y} z_j + kappa) (linf).

    The "CW" attack of Madry et al.'s challenges and of RLFAT's Table 1: the same linf PGD as the
    cross-entropy attack (start x + U(-eps, eps), ``steps`` sign steps of ``step_size``, projection to
    the eps ball and [0, 1]) with the margin loss instead. Not the Carlini-Wagner optimization attack.
    Defaults are RLFAT's CIFAR-10 PGD settings (eps 0.03, step 0.0075, 10 steps).

    ``legacy_mask=True`` reproduces RLFAT's reference (``pgd_attack_test.py``), which takes the other
    class's logit as max((1 - onehot) * z): the true class's slot counts as 0, so when every other
    logit is negative the margin is measured against 0. Default False: the true max over j != y.
    ``clip_start=False`` reproduces the reference's random start, which is not clipped to [0, 1]
    before the first gradient (later iterates are).

    Arguments:
        eps (float): linf budget in pixel units. (Default: 0.03)
        steps (int): PGD steps. (Default: 10)
        step_size (float): size of each sign step. (Default: 0.0075)
        rand_init (bool): start from x + U(-eps, eps). (Default: True)
        kappa (float): confidence margin. (Default: 50.0)
        legacy_mask (bool): RLFAT's (1 - onehot) * z other-class maximum. (Default: False)
        clip_start (bool): clip the random start to [0, 1] before the first gradient. (Default: True)
        seed (int): seed of the random start. (Default: 0)

    Shape:
        images: (N, C, H, W) in [0, 1]; labels: (N,) class indices.
        output: adversarial images of the same shape.
    """

    name = "cw-linf"
    threat_models = ("linf",)
    knowledge = "white-box"
    goal = "fixed-budget"
    supports_targeted = False
    params = (
        Param("eps", float, 0.03, "linf budget in pixel units", low=0.0, high=1.0),
        Param("steps", int, 10, "PGD steps", low=1),
        Param("step_size", float, 0.0075, "size of each sign step", low=0.0),
        Param("rand_init", bool, True, "start from x + U(-eps, eps)"),
        Param("kappa", float, 50.0, "confidence margin of the loss", low=0.0),
        Param("legacy_mask", bool, False, "RLFAT reference: other-class max over (1 - onehot) * z"),
        Param("clip_start", bool, True, "clip the random start to [0, 1] (False: as the RLFAT reference)"),
        Param("seed", int, 0, "seed of the random start"),
    )

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor | None = None) -> AttackResult:
        cfg = self.config
        threat = ThreatModel("linf", cfg["eps"])
        loss_fn = cw_loss(cfg["kappa"], cfg["legacy_mask"])
        adv = images.clone()
        if cfg["rand_init"]:
            gen = torch.Generator(device=images.device).manual_seed(cfg["seed"])
            noise = torch.rand(images.shape, generator=gen, device=images.device, dtype=images.dtype) * 2 - 1
            adv = images + cfg["eps"] * noise
            if cfg["clip_start"]:
                adv = adv.clamp(0.0, 1.0)
        for _ in range(cfg["steps"]):
            grad = input_gradient(model, adv, labels, loss_fn)
            adv = threat.project(adv.detach() + cfg["step_size"] * ascent_direction(grad, "linf"), images)
        if cfg["steps"] == 0:
            adv = threat.project(adv, images)
        return AttackResult(adv.detach())
