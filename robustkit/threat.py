"""Threat models: a norm, a budget, and projection onto the allowed set."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustkit.errors import ParameterError

NORMS = ("linf", "l2", "l1", "unbounded")
#: An adversarial counts as within a budget ``eps`` when its distance is at most ``eps + TOLERANCE``:
#: attacks compute in float32, where ``x + eps`` rounds by up to about 6e-8 in [0, 1].
TOLERANCE = 1e-6


@dataclass(frozen=True)
class ThreatModel:
    """Where an adversarial image may lie: ``||x' - x||_norm <= eps`` and ``x'`` in [0, 1].

    :param norm: ``linf``, ``l2``, ``l1`` or ``unbounded``.
    :param eps: budget in pixel units of images in [0, 1].
    :param targeted: whether the adversary aims at a chosen class.
    """

    norm: str = "linf"
    eps: float = 0.3
    targeted: bool = False

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ParameterError(f"unknown norm '{self.norm}'; use one of {', '.join(NORMS)}")
        if not self.eps >= 0:
            raise ParameterError(f"eps must be >= 0, got {self.eps}")
        if self.norm == "linf" and self.eps > 1:
            raise ParameterError(f"linf eps {self.eps} exceeds the data range [0, 1]; eps=8/255 is written 8/255")

    def project(self, adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project ``adv`` onto the ball around ``x`` and into [0, 1]."""
        delta = adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        elif self.norm in ("l2", "l1"):
            p = 2 if self.norm == "l2" else 1
            norms = delta.flatten(1).norm(p=p, dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            # Rescaling is the exact l2 projection; for l1 it is a feasible (not nearest) point.
            delta = delta * (self.eps / norms).clamp(max=1.0)
        return (x + delta).clamp(0.0, 1.0)


def threat_of(owner: str, norm: str, eps: float) -> ThreatModel:
    """``ThreatModel(norm, eps)`` for a component, its errors prefixed with the component's name."""
    try:
        return ThreatModel(norm, float(eps))
    except ParameterError as err:
        raise ParameterError(f"{owner}: {err}") from None


def distances(adv: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image L2 and Linf distances (and L1, L0) between two batches."""
    delta = (adv - x).flatten(1)
    return {
        "l2": delta.norm(p=2, dim=1),
        "linf": delta.abs().amax(dim=1),
        "l1": delta.abs().sum(dim=1),
        "l0": (delta.abs() > 1e-8).sum(dim=1).float(),
    }


def within_budget(distance: torch.Tensor | float, eps: float) -> torch.Tensor | bool:
    """Whether ``distance`` lies within the budget ``eps`` (with :data:`TOLERANCE`)."""
    return distance <= eps + TOLERANCE
