"""Mixed precision and channels-last memory format, for training and evaluation on GPUs (and CPUs).

:class:`Autocast` wraps a model so its forward pass runs under :func:`torch.autocast` and returns
float32 logits. Handing attacks and defenses the wrapper rather than setting autocast around them keeps
every library working unchanged: torchattacks, ART (which converts logits to NumPy, and NumPy has no
bfloat16) and the native attacks all see float32 logits and input gradients, while the network's
convolutions and matrix products run in reduced precision.

- ``bf16``: bfloat16, the range of float32; no loss scaling needed. The choice on recent GPUs and CPUs.
- ``fp16``: float16; the training loop scales its loss with :class:`torch.amp.GradScaler`. Input
  gradients that attacks compute can underflow in float16, which weakens gradient attacks: evaluate
  robustness in ``fp32`` or ``bf16``.
"""

from __future__ import annotations

import torch
from torch import nn

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


class Autocast(nn.Module):
    """``model`` run under autocast at ``precision``; float32 logits out.

    :param channels_last: also feed the model its inputs in channels-last memory format (convert the
        model itself with :func:`to_channels_last`).
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", channels_last: bool = False):
        super().__init__()
        check_precision(precision)
        self.model = model
        self.precision = precision
        self.channels_last = channels_last
        self.spec = getattr(model, "spec", None)  # defenses and checkpoints read the model's spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return self.model(x)
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = self.model(x)
        return out.float()


def wrap(model: nn.Module, precision: str = "fp32", channels_last: bool = False) -> nn.Module:
    """``model`` itself for fp32 without channels-last, else an :class:`Autocast` wrapper around it."""
    if precision == "fp32" and not channels_last:
        return model
    if channels_last:
        to_channels_last(model)
    wrapped = Autocast(model, precision, channels_last)
    wrapped.train(model.training)  # switch modes through the wrapper from now on: it keeps both in step
    return wrapped


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert ``model``'s 4-d parameters and buffers to channels-last, in place (a no-op for others)."""
    return model.to(memory_format=torch.channels_last)
