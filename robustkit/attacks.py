"""The one interface every attack implements, native or adapted.

An attack takes a model (images in [0, 1] -> logits), a batch of images ``N x C x H x W`` in
[0, 1] and their labels, and returns an :class:`AttackResult`. Subclasses implement
:meth:`Attack.perturb`; :meth:`Attack.__call__` checks inputs, puts the model in eval mode and
checks the output, so every attack gets the same guarantees.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from robustkit.data import check_images
from robustkit.errors import InputError, ParameterError
from robustkit.models import logits
from robustkit.params import Param, resolve_params

# Models already seen to return an N x K logits tensor (weak: forgotten with the model).
_MODELS_WITH_LOGITS: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()

KNOWLEDGE = ("white-box", "score-based", "decision-based", "transfer")
GOALS = ("fixed-budget", "minimal-distortion")


@dataclass
class AttackResult:
    """What an attack returns.

    :param adversarial: adversarial images, same shape as the input, in [0, 1].
    :param queries: model queries used per image, when the attack counts them.
    :param extra: attack-specific per-image tensors or facts (e.g. ``{"pass": tensor}``).
    """

    adversarial: torch.Tensor
    queries: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Base class of all attacks.

    Class attributes declare what the attack is, for listings and the benchmark protocol:

    - ``threat_models``: norms it bounds (``linf``, ``l2``, ``l1``, ``unbounded``).
    - ``knowledge``: ``white-box``, ``score-based``, ``decision-based`` or ``transfer``.
    - ``goal``: ``fixed-budget`` (stays within eps) or ``minimal-distortion`` (finds the smallest change).
    - ``supports_targeted``: whether ``targeted=True`` works.
    - ``params``: the declared :class:`~robustkit.params.Param` tuple.

    :param params: keyword parameters, validated against ``params``.
    """

    threat_models: ClassVar[tuple[str, ...]] = ("linf",)
    knowledge: ClassVar[str] = "white-box"
    goal: ClassVar[str] = "fixed-budget"
    supports_targeted: ClassVar[bool] = False
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, **params: Any):
        self.config = resolve_params(type(self).params, params, self.display_name())
        if self.config.get("targeted") and not self.supports_targeted:
            raise ParameterError(f"{self.display_name()} has no targeted mode; drop targeted=true")

    @classmethod
    def display_name(cls) -> str:
        return getattr(cls, "name", None) or cls.__name__

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for provenance."""
        return {"name": self.display_name(), "params": dict(self.config)}

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 target_labels: torch.Tensor | None = None) -> AttackResult:
        spec = getattr(model, "spec", None)
        expected = spec.dataset.input_shape if getattr(spec, "dataset", None) is not None else None
        check_images(images, labels, shape=expected)
        if target_labels is not None and not self.supports_targeted:
            raise ParameterError(f"{self.display_name()} has no targeted mode")
        was_training = model.training
        if was_training:  # train()/eval() walk every submodule: skip when there is nothing to switch
            model.eval()
        try:
            if model not in _MODELS_WITH_LOGITS:  # once per model: a model that returns no logits tensor
                with torch.no_grad():
                    logits(model, images[:1])
                _MODELS_WITH_LOGITS.add(model)
            result = self.perturb(model, images, labels, target_labels)
        finally:
            if was_training:
                model.train()
        if not isinstance(result, AttackResult):
            result = AttackResult(adversarial=result)
        adv = result.adversarial
        if adv.shape != images.shape:
            raise InputError(f"{self.display_name()} returned shape {tuple(adv.shape)} for input {tuple(images.shape)}")
        result.adversarial = adv.detach().to(images.device, images.dtype).clamp(0.0, 1.0)
        return result

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor | None = None) -> AttackResult:
        """Craft adversarial examples for one batch; the model is already in eval mode."""
        raise NotImplementedError
