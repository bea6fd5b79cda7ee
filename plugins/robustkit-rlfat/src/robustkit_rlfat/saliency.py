"""SmoothGrad saliency maps (Smilkov et al. 2017), as RLFAT shows them, and a PNG grid of them.

SmoothGrad averages the input gradient of the true class's logit over noisy copies of the image,
``mean_k grad_x z_y(x + N(0, sigma^2))``, which removes most of the speckle of a single gradient.
The map shown is its absolute value, the largest over channels, scaled to [0, 1] per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from robustkit.data import check_images
from robustkit.plots import save_heatmap_grid


def smoothgrad(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, samples: int = 50,
               noise: float = 0.15, generator: torch.Generator | None = None) -> torch.Tensor:
    """The SmoothGrad gradient, ``N x C x H x W`` (signed; see :func:`saliency_map` for display).

    :param samples: noisy copies per image (Smilkov et al.: 50).
    :param noise: the noise's standard deviation as a fraction of the [0, 1] data range (0.1-0.2 works best).
    """
    check_images(images, labels)
    if samples < 1 or noise < 0:
        raise ValueError(f"samples must be >= 1 and noise >= 0, got {samples} and {noise}")
    total = torch.zeros_like(images)
    for _ in range(samples):
        noisy = images + noise * torch.randn(images.shape, generator=generator, device=images.device,
                                             dtype=images.dtype)
        noisy.requires_grad_(True)
        scores = model(noisy).gather(1, labels[:, None]).sum()  # summed: each image gets its own gradient
        (grad,) = torch.autograd.grad(scores, noisy)
        total += grad
    return total / samples


def saliency_map(gradient: torch.Tensor) -> torch.Tensor:
    """``N x H x W`` maps in [0, 1]: |gradient|, the largest over channels, divided by each image's maximum."""
    heat = gradient.abs().amax(dim=1)
    return heat / heat.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]


def save_saliency_grid(path: str | Path, images: torch.Tensor, maps: Mapping[str, torch.Tensor], *,
                       labels: Sequence[int] | torch.Tensor | None = None, title: str | None = None) -> Path:
    """Write a PNG: the images on the first row (``y=<label>`` over each), then one row of maps
    (``N x H x W`` in [0, 1], :func:`saliency_map`) per model (:func:`robustkit.plots.save_heatmap_grid`)."""
    titles = None if labels is None else [f"y={int(label)}" for label in labels]
    return save_heatmap_grid(path, images, maps, column_titles=titles, title=title, cmap="inferno")
