"""Per-example image metrics: how alike an adversarial image and its original look, beyond Lp distances.

Plugins register them through the ``register_metrics`` hook (the ``hotcold`` plugin registers PASS and
SSIM); :func:`robustkit.evaluation.evaluate` (``metrics=``) and ``robustkit attack --metric NAME`` apply
each to every successful adversarial and report its mean and median per attack.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from robustkit.errors import PluginError
from robustkit.params import Param, resolve_params


class ImageMetric:
    """Base class of per-example metrics: subclasses set ``name`` and ``params`` and implement :meth:`score`.

    :param params: keyword parameters, validated against ``params``.
    """

    name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, **params: Any):
        self.config = resolve_params(type(self).params, params, self.display_name())

    @classmethod
    def display_name(cls) -> str:
        return cls.name or cls.__name__

    def score(self, adversarial: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """One value per image of two batches ``N x C x H x W`` in [0, 1]."""
        raise NotImplementedError

    def __call__(self, adversarial: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """:meth:`score`, checked to give one finite-or-NaN number per image; float64 on the CPU."""
        values = torch.as_tensor(self.score(adversarial, clean)).detach().flatten()
        if values.numel() != adversarial.shape[0]:
            raise PluginError(f"metric '{self.display_name()}' gave {values.numel()} values for "
                              f"{adversarial.shape[0]} images; it must give one per image")
        return values.to("cpu", torch.float64)
