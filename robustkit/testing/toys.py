"""Tiny models and data with known behaviour (8x8 one-channel images), for robustkit's tests and plugins' tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from robustkit.data import DatasetInfo
from robustkit.models import Classifier, ModelSpec, Normalize

INFO = DatasetInfo("toy", num_classes=2, channels=1, image_size=(8, 8), mean=(0.5,), std=(0.25,))


def toy_info(classes: int = 2) -> DatasetInfo:
    return INFO if classes == 2 else DatasetInfo(f"toy{classes}", classes, 1, (8, 8), (0.5,), (0.25,))


def linear_model(seed: int = 0, info: DatasetInfo = INFO) -> Classifier:
    torch.manual_seed(seed)
    inputs = info.channels * info.image_size[0] * info.image_size[1]
    net = nn.Sequential(nn.Flatten(), nn.Linear(inputs, info.num_classes))
    return Classifier(net, Normalize(info.mean, info.std), ModelSpec("toy-linear", {}, info))


def small_mlp(seed: int = 0, classes: int = 2) -> Classifier:
    """A nonlinear model, so the gradient differs between images (a linear one has the same sign everywhere)."""
    torch.manual_seed(seed)
    info = toy_info(classes)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, classes))
    return Classifier(net, Normalize(info.mean, info.std), ModelSpec("toy-mlp", {}, info))


class ModeRecorder(nn.Module):
    """A tiny net that remembers the train/eval mode of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.body(x)


def robust_vs_fragile(n: int, seed: int) -> TensorDataset:
    """Pixel 0 carries a strong label signal (+-0.4); 63 pixels carry a weak one (+-0.1) plus noise.

    Natural training leans on the many weak pixels, which an eps = 0.2 linf attack flips all at once;
    adversarial training has to use the robust pixel instead.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    sign = (2 * y - 1).float().view(n, 1)
    x = (0.5 + 0.1 * sign + 0.1 * torch.randn(n, 64, generator=g)).clamp(0, 1)
    x[:, 0] = (0.5 + 0.4 * sign[:, 0])
    return TensorDataset(x.view(n, 1, 8, 8), y)


def random_batch(n: int = 16, seed: int = 0, classes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


class InterruptAt:
    """Mixin for a defense class: a Ctrl-C at the ``interrupt_at``-th batch (an attribute, not a
    parameter, so the run stays the same run and a resume can finish it)."""

    def __init__(self, interrupt_at: int | None = None, **params: Any):
        super().__init__(**params)
        self.interrupt_at, self.calls = interrupt_at, 0

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return super().batch_loss(model, images, labels)


def small_cnn(size: int = 8, seed: int = 0) -> nn.Module:
    """A seeded conv net on ``size`` x ``size`` one-channel images, 10 classes, in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * size * size, 10),
    ).eval()


def digit_like(n: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Images with a zero background and a bright random blob, like MNIST digits."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    q = size // 4
    x[:, :, q:size - q, q + 1:size - q] = torch.rand(n, 1, size - 2 * q, size - 2 * q - 1, generator=gen)
    x[x < 0.3] = 0.0  # some exact zeros inside the blob too
    return x


def labelled(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` with the labels ``model`` predicts for it (so every image starts correctly classified)."""
    with torch.no_grad():
        return x, model(x).argmax(1)
