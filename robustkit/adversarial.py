"""Gradient-attack building blocks shared by native attacks and adversarial-training defenses."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.threat import ThreatModel

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None = None) -> torch.Tensor:
    """Gradient of the summed loss w.r.t. the input (summed, so each image gets its own gradient)."""
    x = x.detach().requires_grad_(True)
    loss = (loss_fn or _ce_sum)(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def _ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def pgd_step_size(step_size: float | None, eps: float, steps: int) -> float:
    """``step_size``, or Madry et al.'s rule 2.5 * eps / steps when it is ``None`` (the iterates can cross
    the whole ball and back, so the projection, not the step count, bounds the attack)."""
    return float(step_size) if step_size is not None else 2.5 * eps / steps


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent unit step for ``norm``: sign (linf), normalized gradient (l2), top coordinate (l1)."""
    if norm == "linf":
        return grad.sign()
    flat = grad.flatten(1)
    if norm == "l2":
        return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(grad)
    if norm == "l1":
        idx = flat.abs().argmax(dim=1)
        step = torch.zeros_like(flat)
        step[torch.arange(flat.shape[0]), idx] = flat[torch.arange(flat.shape[0]), idx].sign()
        return step.view_as(grad)
    raise ValueError(f"no ascent direction for norm {norm!r}")


def random_start(x: torch.Tensor, threat: ThreatModel, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform point in the linf box, or a random direction scaled into the l2 ball."""
    if threat.norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        return threat.project(x + threat.eps * noise, x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    flat = noise.flatten(1)
    radius = torch.rand(x.shape[0], 1, generator=generator, device=x.device, dtype=x.dtype)
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius * threat.eps
    return threat.project(x + flat.view_as(x), x)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, steps: int,
        step_size: float, rand_init: bool = True, loss_fn: LossFn | None = None,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn`` (cross-entropy by default) within ``threat``.

    Works for linf and l2 (Madry et al.); the model's train/eval mode is left as the caller set it,
    so adversarial training can craft examples in whichever mode its paper uses.
    """
    adv = random_start(x, threat, generator) if rand_init else x.clone()
    for _ in range(steps):
        grad = input_gradient(model, adv, y, loss_fn)
        adv = threat.project(adv.detach() + step_size * ascent_direction(grad, threat.norm), x)
    return adv.detach()


@contextmanager
def crafting_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Put ``model`` in ``mode`` (``train`` or ``eval``) while crafting examples; restore its mode after."""
    was_training = model.training
    model.train(mode == "train")
    try:
        yield
    finally:
        model.train(was_training)


TRADES_START_NOISE = 0.001
"""Standard deviation of the Gaussian start of TRADES's inner attack (Zhang et al.'s code)."""


def kl_batchmean(clean_logits: torch.Tensor, adversarial_logits: torch.Tensor) -> torch.Tensor:
    """KL(p(x) || p(x')) summed over classes and averaged over the batch; gradients reach both sides."""
    return F.kl_div(F.log_softmax(adversarial_logits, dim=1), F.log_softmax(clean_logits, dim=1),
                    reduction="batchmean", log_target=True)


def trades_examples(model: nn.Module, images: torch.Tensor, threat: ThreatModel, *, steps: int, step_size: float,
                    rand_init: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """TRADES's inner attack: ascend sum KL(p(x) || p(x')) over the batch, with p(x) fixed.

    Start at x + 0.001 * N(0, I) (not clipped before the first gradient, as in Zhang et al.'s and
    RLFAT's code; without ``rand_init`` the start is x, where the KL gradient is zero), then ``steps``
    steepest-ascent steps of ``step_size`` (sign steps for linf, normalized gradient for l2), each
    projected onto the ``threat`` ball around x and clipped to [0, 1]. Labels are not used. The
    model's mode is left as the caller set it. Returns detached images.
    """
    with torch.no_grad():
        target = F.log_softmax(model(images), dim=1)

    def kl_sum(logits: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="sum", log_target=True)

    if rand_init:
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        adversarial = images + TRADES_START_NOISE * noise
    else:
        adversarial = images.clone()
    for _ in range(steps):
        grad = input_gradient(model, adversarial, target, kl_sum)
        adversarial = threat.project(adversarial.detach() + step_size * ascent_direction(grad, threat.norm), images)
    return adversarial.detach()
