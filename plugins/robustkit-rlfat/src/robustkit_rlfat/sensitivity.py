"""Loss sensitivity under photometric shifts (RLFAT, SPECS section 2).

The loss sensitivity of a model on a set of images is the mean over the images of the L2 norm of
the input gradient of the cross-entropy, ``mean_i ||grad_x CE(f(x_i), y_i)||_2``. RLFAT reports it on
test images shifted in brightness (``alpha`` added to the HSV value channel) and in gamma
(``x ** gamma``): a model that learnt robust local features stays flat under such shifts.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from robustkit.adversarial import input_gradient
from robustkit.data import check_images

Shift = Callable[[torch.Tensor], torch.Tensor]


def brightness_shift(images: torch.Tensor, alpha: float) -> torch.Tensor:
    """Add ``alpha`` to the HSV value channel and clip, keeping hue and saturation.

    V = max over channels; hue and saturation fix each channel as a fraction of V, so the shifted
    image is ``x * V' / V``. Black pixels (V = 0) have no hue: they become grey at V'. For one
    channel this is ``clip(x + alpha, 0, 1)``.
    """
    value = images.amax(dim=1, keepdim=True)
    shifted = (value + alpha).clamp(0.0, 1.0)
    scaled = images * (shifted / value.clamp_min(1e-12))
    return torch.where(value > 0, scaled, shifted.expand_as(images)).clamp(0.0, 1.0)


def gamma_shift(images: torch.Tensor, gamma: float) -> torch.Tensor:
    """The gamma mapping ``x ** gamma`` (stays in [0, 1])."""
    return images.clamp(0.0, 1.0) ** gamma


def rlfat_shifts() -> dict[str, Shift]:
    """RLFAT's shifts: none, brightness -0.15 / +0.15 (its Table 2), gamma 0.8 / 1.2."""
    return {
        "none": lambda x: x,
        "brightness-0.15": lambda x: brightness_shift(x, -0.15),
        "brightness+0.15": lambda x: brightness_shift(x, 0.15),
        "gamma0.8": lambda x: gamma_shift(x, 0.8),
        "gamma1.2": lambda x: gamma_shift(x, 1.2),
    }


def loss_sensitivity(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                     batch_size: int = 256) -> float:
    """``mean_i ||grad_x CE(f(x_i), y_i)||_2`` over ``images`` (the model is used as it is, e.g. eval mode)."""
    check_images(images, labels)
    total = 0.0
    for start in range(0, images.shape[0], batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        grad = input_gradient(model, x, y)  # summed loss: each row is that image's own gradient
        total += float(grad.flatten(1).norm(dim=1).sum())
    return total / images.shape[0]


def sensitivity_table(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      shifts: Mapping[str, Shift] | None = None, *, batch_size: int = 256) -> dict[str, float]:
    """:func:`loss_sensitivity` on ``images`` under each shift (default :func:`rlfat_shifts`)."""
    shifts = rlfat_shifts() if shifts is None else shifts
    return {name: loss_sensitivity(model, shift(images), labels, batch_size=batch_size)
            for name, shift in shifts.items()}
