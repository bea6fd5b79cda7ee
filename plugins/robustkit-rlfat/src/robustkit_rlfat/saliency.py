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
from robustkit.files import atomic_write


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
    """Write a PNG: the images on the first row, then one row of maps (``N x H x W`` in [0, 1]) per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = images.shape[0]
    rows = 1 + len(maps)
    fig = Figure(figsize=(1.3 * n + 1.2, 1.3 * rows + (0.4 if title else 0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, n, squeeze=False)
    shown = images.detach().cpu()
    for j in range(n):
        image = shown[j].permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
        axes[0][j].imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        if labels is not None:
            axes[0][j].set_title(f"y={int(labels[j])}", fontsize=8)
    for i, (name, heat) in enumerate(maps.items(), start=1):
        for j in range(n):
            axes[i][j].imshow(heat[j].detach().cpu().numpy(), cmap="inferno", vmin=0, vmax=1)
        axes[i][0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    return path
