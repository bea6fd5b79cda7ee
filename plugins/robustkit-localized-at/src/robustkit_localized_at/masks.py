"""Localization masks (Localized adversarial training, SPECS section 1): 1 where a pixel may change.

``make_mask(kind, images)`` is shared by the ``localized-pgd`` attack and any localized
adversarial-training defense. Masks are computed from the clean images, per image, and have the
images' shape ``N x C x H x W`` (the same spatial mask for every channel), dtype of the images.

Kinds:

- ``standard``: every pixel may change (plain PGD).
- ``background``: every pixel except a central square block, 6 x 6 on 28 x 28 (rows and columns
  11..16, 0-based), scaled to other sizes: side round(6 H / 28) (at least 1), starting at (H - side) // 2
  (likewise for the width); 2 x 2 at rows/cols 3..4 on 8 x 8 digits.
- ``exact``: every pixel except the digit pixels D = {x > tau} (for several channels: any channel > tau).
- ``broad``: every pixel except dilate(D): a 3 x 3 square (8-neighbour, default) or a cross (4-neighbour).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustkit.errors import ParameterError

KINDS = ("standard", "background", "exact", "broad")

#: The background block on 28 x 28 MNIST: rows/cols 11..16 (6 pixels).
_BLOCK, _BLOCK_OF = 6, 28


def make_mask(kind: str, images: torch.Tensor, tau: float = 0.0, neighbourhood: int = 8) -> torch.Tensor:
    """The mask of ``kind`` for each of ``images`` (N x C x H x W in [0, 1]): 1 = may change, 0 = fixed.

    :param kind: ``standard``, ``background``, ``exact`` or ``broad``.
    :param tau: digit-pixel threshold of ``exact`` and ``broad`` (D = pixels with a value > tau).
    :param neighbourhood: 8 (3 x 3 square) or 4 (cross): the dilation element of ``broad``.
    """
    if images.dim() != 4:
        raise ParameterError(f"make_mask needs N x C x H x W images, got shape {tuple(images.shape)}")
    if neighbourhood not in (4, 8):
        raise ParameterError(f"neighbourhood must be 4 or 8, got {neighbourhood}")
    n, c, h, w = images.shape
    if kind == "standard":
        return torch.ones_like(images)
    if kind == "background":
        keep = torch.ones(h, w, dtype=images.dtype, device=images.device)
        (r0, r1), (c0, c1) = central_block(h), central_block(w)
        keep[r0:r1, c0:c1] = 0
        return keep.expand(n, c, h, w).clone()
    if kind in ("exact", "broad"):
        digit = (images > tau).any(dim=1, keepdim=True)
        if kind == "broad":
            digit = dilate(digit, neighbourhood)
        return (~digit).to(images.dtype).expand(n, c, h, w).clone()
    raise ParameterError(f"unknown mask '{kind}'; use one of {', '.join(KINDS)}")


def central_block(size: int) -> tuple[int, int]:
    """``(start, stop)`` of the central block along one side of ``size`` pixels (11, 17 for 28)."""
    side = max(1, round(_BLOCK * size / _BLOCK_OF))
    start = (size - side) // 2
    return start, start + side


def dilate(region: torch.Tensor, neighbourhood: int = 8) -> torch.Tensor:
    """Binary dilation of a boolean ``N x 1 x H x W`` region by a 3 x 3 square (8) or cross (4)."""
    if neighbourhood == 8:
        return F.max_pool2d(region.float(), kernel_size=3, stride=1, padding=1) > 0
    padded = F.pad(region.float(), (1, 1, 1, 1))
    cross = (padded[..., 1:-1, 1:-1] + padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1]
             + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:])
    return cross > 0
