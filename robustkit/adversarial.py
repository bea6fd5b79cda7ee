"""Gradient-attack building blocks shared by native attacks and adversarial-training defenses."""

from __future__ import annotations

from typing import Callable

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
