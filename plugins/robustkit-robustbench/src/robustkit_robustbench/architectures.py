"""The CIFAR architectures of RobustBench's model zoo, with the zoo's parameter names.

Each class reproduces one architecture of ``robustbench/model_zoo/architectures`` closely enough that the
zoo's checkpoints load with strict key matching and give the zoo's logits:

- :class:`TradesWideResNet`: ``wide_resnet.py`` (the TRADES / Carmon et al. WRN, the zoo's most common);
- :class:`DMWideResNet`: ``dm_wide_resnet.py`` ``DMWideResNet`` (DeepMind's WRN: Gowal et al., Rebuffi et al.);
- :class:`DMPreActResNet`: ``dm_wide_resnet.py`` ``DMPreActResNet`` (DeepMind's pre-activation ResNet-18/34);
- :class:`ZooResNet18` and :class:`ZooPreActResNet18`: ``resnet.py`` ``ResNet18`` and
  ``PreActResNet(PreActBlock, [2, 2, 2, 2])``, which are robustkit's own ``resnet18-cifar`` and
  ``preact-resnet18`` (same parameter names) with the zoo's input normalization added.

Every zoo model takes images in [0, 1]. Where the zoo normalizes inside the model (the DeepMind models with
the CIFAR-10 mean and std; some others with their own constants), so do these, with the constants as
non-persistent buffers: they are not in the state dict, as they are not in the zoo's checkpoints.

The zoo's forward passes end in a fixed average pool (8x8 for the WRNs, 4x4 for the ResNets), which at
32x32 inputs is the global average pool used here; other input sizes work where the strides allow.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from robustkit.errors import ParameterError
from robustkit.essentials.paper_models import CifarResNet18, PreActResNet18, he_init

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
"""The CIFAR-10 channel means of the DeepMind models (``dm_wide_resnet.py``) and several other zoo entries."""
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
"""The CIFAR-10 channel standard deviations that go with :data:`CIFAR10_MEAN`."""

ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU}
"""Activation names. The zoo's ``Swish`` (a custom autograd function) and ``nn.SiLU`` both compute
``x * sigmoid(x)`` with the same gradient; ``nn.SiLU`` stands for both."""


class InputNormalization(nn.Module):
    """``(x - mean) / std`` inside a zoo model, or nothing; the constants are not part of the state dict.

    :param mean: per-channel mean, or ``None`` for no normalization (the model takes [0, 1] as it is).
    :param std: per-channel standard deviation (with ``mean``).
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        if (mean is None) != (std is None):
            raise ParameterError("input normalization needs both mean and std, or neither")
        self.enabled = mean is not None
        if mean is not None and std is not None:
            self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, -1, 1, 1),
                                 persistent=False)
            self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32).view(1, -1, 1, 1),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.enabled else x

    def extra_repr(self) -> str:
        if not self.enabled:
            return "none"
        return f"mean={tuple(round(v, 4) for v in self.mean.flatten().tolist())}, " \
               f"std={tuple(round(v, 4) for v in self.std.flatten().tolist())}"


def _stage_units(depth: int, name: str) -> int:
    if depth < 10 or (depth - 4) % 6:
        raise ParameterError(f"{name} depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ..., 70), got {depth}")
    return (depth - 4) // 6


# --- wide_resnet.py: the TRADES WRN -----------------------------------------------------------------


class _TradesUnit(nn.Module):
    """Pre-activation unit: BN, ReLU, conv 3x3 (stride), BN, ReLU, conv 3x3, plus the shortcut.

    Where the width changes, the shortcut is a 1x1 strided conv (``convShortcut``) of the *activated*
    input; otherwise it is the input itself.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.convShortcut = (nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)
                             if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        if self.convShortcut is not None:
            shortcut = self.convShortcut(act)
        else:
            shortcut = x
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return shortcut + out


class _TradesGroup(nn.Module):
    """``units`` units, the first changing width and stride; parameters under ``layer.<i>``."""

    def __init__(self, units: int, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*(_TradesUnit(in_channels if i == 0 else out_channels, out_channels,
                                                 stride if i == 0 else 1) for i in range(units)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class TradesWideResNet(nn.Module):
    """The zoo's ``WideResNet`` (``wide_resnet.py``, from the TRADES code), WRN-depth-k.

    conv 3x3 to 16 channels (``conv1``); three groups ``block1..3`` of ``(depth - 4) / 6`` pre-activation
    units with ``16k, 32k, 64k`` channels and strides 1, 2, 2; BN + ReLU (``bn1``); global average pool;
    FC K with bias (``fc``). ReLU activations, no input normalization unless ``mean``/``std`` are given.

    :param num_classes: logits K.
    :param depth: 6n + 4 (28, 34, 70, ...).
    :param widen_factor: k.
    :param sub_block1: also hold ``sub_block1``, a second copy of the first group that the forward pass
        never uses: the zoo builds it for some entries (Carmon2019Unlabeled, Zhang2019Theoretically, ...)
        and their checkpoints carry its weights, so it must exist for a strict load.
    :param mean: per-channel mean subtracted inside (``None``: none).
    :param std: per-channel std divided inside (with ``mean``).
    :param in_channels: image channels (3 for every zoo model).
    """

    def __init__(self, num_classes: int = 10, depth: int = 28, widen_factor: int = 10, sub_block1: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, in_channels: int = 3):
        super().__init__()
        units = _stage_units(depth, "WideResNet")
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.input_normalization = InputNormalization(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = _TradesGroup(units, widths[0], widths[1], 1)
        self.sub_block1 = _TradesGroup(units, widths[0], widths[1], 1) if sub_block1 else None
        self.block2 = _TradesGroup(units, widths[1], widths[2], 2)
        self.block3 = _TradesGroup(units, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.input_normalization(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        return self.fc(out.mean(dim=(2, 3)))


# --- dm_wide_resnet.py: DeepMind's WRN and pre-activation ResNet ---------------------------------------


def _same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow's SAME padding for a 3x3 kernel: one pixel all round at stride 1, only right and bottom at 2."""
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


class _DMUnit(nn.Module):
    """DeepMind WRN unit: as the TRADES unit (shortcut conv of the activated input where the width
    changes) with the activation chosen and the strided conv padded like TensorFlow's SAME."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: type[nn.Module]):
        super().__init__()
        if stride not in (1, 2):
            raise ParameterError(f"DMWideResNet units take stride 1 or 2, got {stride}")
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_channels)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_channels, out_channels, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_channels)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)
                         if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        shortcut = self.shortcut(act) if self.shortcut is not None else x
        out = self.conv_0(_same_pad(act, self.stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return shortcut + out


class _DMGroup(nn.Module):
    def __init__(self, units: int, in_channels: int, out_channels: int, stride: int, activation: type[nn.Module]):
        super().__init__()
        self.block = nn.Sequential(*(_DMUnit(in_channels if i == 0 else out_channels, out_channels,
                                             stride if i == 0 else 1, activation) for i in range(units)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _check_even(image_size: Sequence[int] | None, halvings: int, name: str) -> None:
    """SAME-padded stride-2 convs need an even map before each of the ``halvings``."""
    if image_size is None:
        return
    for side in image_size:
        size = int(side)
        for _ in range(halvings):
            if size < 2 or size % 2:
                raise ParameterError(f"{name} needs image sides that halve evenly {halvings} times (its stride-2 "
                                     f"convs pad like TensorFlow's SAME), got {tuple(image_size)}; CIFAR's 32x32 works")
            size //= 2


class DMWideResNet(nn.Module):
    """DeepMind's ``DMWideResNet`` (``dm_wide_resnet.py``), WRN-depth-width.

    Inputs are normalized inside (CIFAR-10 mean/std for every zoo entry); conv 3x3 to 16 channels
    (``init_conv``); three groups ``layer.0..2`` of ``(depth - 4) / 6`` pre-activation units with ``16w,
    32w, 64w`` channels and strides 1, 2, 2 (TensorFlow SAME padding at stride 2); BN + activation
    (``batchnorm``); global average pool; FC K (``logits``). The zoo's entries use swish (= SiLU).

    :param num_classes: logits K.
    :param depth: 6n + 4 (28, 34, 70, 106, ...).
    :param width: the width multiplier.
    :param activation: ``swish`` or ``relu``.
    :param mean: per-channel mean subtracted inside (``None``: none).
    :param std: per-channel std divided inside.
    :param image_size: checked to halve evenly twice when given.
    :param in_channels: image channels (3 for every zoo model).
    """

    def __init__(self, num_classes: int = 10, depth: int = 28, width: int = 10, activation: str = "swish",
                 mean: Sequence[float] | None = CIFAR10_MEAN, std: Sequence[float] | None = CIFAR10_STD,
                 image_size: Sequence[int] | None = None, in_channels: int = 3):
        super().__init__()
        units = _stage_units(depth, "DMWideResNet")
        _check_even(image_size, 2, "DMWideResNet")
        act = ACTIVATIONS[activation]
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.input_normalization = InputNormalization(mean, std)
        self.init_conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(*(_DMGroup(units, widths[i], widths[i + 1], 1 if i == 0 else 2, act)
                                     for i in range(3)))
        self.batchnorm = nn.BatchNorm2d(widths[3])
        self.relu = act()
        self.logits = nn.Linear(widths[3], num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.init_conv(self.input_normalization(x)))
        out = self.relu(self.batchnorm(out))
        return self.logits(out.mean(dim=(2, 3)))


class _DMPreActUnit(nn.Module):
    """DeepMind pre-activation unit: the shortcut, where the shape changes, is a 3x3 SAME-padded strided
    conv of the *un-activated* input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: type[nn.Module]):
        super().__init__()
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_channels)
        self.relu_0 = activation()
        self.conv_2d_1 = nn.Conv2d(in_channels, out_channels, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_channels)
        self.relu_1 = activation()
        self.conv_2d_2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 3, stride, 0, bias=False)
                         if stride != 1 or in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        shortcut = self.shortcut(_same_pad(x, self.stride)) if self.shortcut is not None else x
        out = self.conv_2d_1(_same_pad(act, self.stride))
        out = self.conv_2d_2(self.relu_1(self.batchnorm_1(out)))
        return out + shortcut


DM_PREACT_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class DMPreActResNet(nn.Module):
    """DeepMind's ``DMPreActResNet`` (``dm_wide_resnet.py``), pre-activation ResNet-18 or -34.

    Inputs normalized inside; conv 3x3 to 64 channels (``conv_2d``); four stages ``layer_0..3`` with 64,
    128, 256, 512 channels and strides 1, 2, 2, 2; BN + activation (``batchnorm``); global average pool;
    FC K (``logits``).

    :param num_classes: logits K.
    :param depth: 18 or 34.
    :param activation: ``swish`` or ``relu``.
    :param mean: per-channel mean subtracted inside (``None``: none).
    :param std: per-channel std divided inside.
    :param channels_scale: multiplier on the 64..512 channels (1 in the zoo; smaller for fast tests).
    :param image_size: checked to halve evenly three times when given.
    :param in_channels: image channels (3 for every zoo model).
    """

    def __init__(self, num_classes: int = 10, depth: int = 18, activation: str = "swish",
                 mean: Sequence[float] | None = CIFAR10_MEAN, std: Sequence[float] | None = CIFAR10_STD,
                 channels_scale: float = 1.0, image_size: Sequence[int] | None = None, in_channels: int = 3):
        super().__init__()
        if depth not in DM_PREACT_UNITS:
            raise ParameterError(f"DMPreActResNet depth must be 18 or 34, got {depth}")
        _check_even(image_size, 3, "DMPreActResNet")
        act = ACTIVATIONS[activation]
        widths = [max(1, round(c * channels_scale)) for c in (64, 128, 256, 512)]
        self.input_normalization = InputNormalization(mean, std)
        self.conv_2d = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        channels = widths[0]
        for index, (units, out) in enumerate(zip(DM_PREACT_UNITS[depth], widths)):
            stride = 1 if index == 0 else 2
            stage = [_DMPreActUnit(channels if i == 0 else out, out, stride if i == 0 else 1, act)
                     for i in range(units)]
            self.add_module(f"layer_{index}", nn.Sequential(*stage))
            channels = out
        self.batchnorm = nn.BatchNorm2d(channels)
        self.relu = act()
        self.logits = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_2d(self.input_normalization(x))
        for index in range(4):
            out = getattr(self, f"layer_{index}")(out)
        out = self.relu(self.batchnorm(out))
        return self.logits(out.mean(dim=(2, 3)))


# --- resnet.py: ResNet-18 and PreActResNet-18 (robustkit's own, plus the zoo's normalization) -----------


class _InsideNormalization(nn.Module):
    """Mixin for robustkit's own CIFAR ResNets: the zoo's constructor, and its optional normalization applied
    inside, before the architecture's forward (parameters documented on each subclass)."""

    def __init__(self, num_classes: int = 10, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, width: float = 1.0, image_size: Sequence[int] = (32, 32),
                 in_channels: int = 3):
        super().__init__(num_classes, in_channels, tuple(image_size), width=width)  # type: ignore[arg-type]
        self.input_normalization = InputNormalization(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.input_normalization(x))


class ZooResNet18(_InsideNormalization, CifarResNet18):
    """The zoo's ``ResNet18`` (``resnet.py``): robustkit's ``resnet18-cifar`` (same parameter names), with
    optional normalization inside.

    :param num_classes: logits K.
    :param mean: per-channel mean subtracted inside (``None``: none, as for every ResNet-18 entry here).
    :param std: per-channel std divided inside.
    :param width: multiplier on the 64..512 channels (1 in the zoo).
    :param image_size: the input size (any works).
    :param in_channels: image channels (3 for every zoo model).
    """


class ZooPreActResNet18(_InsideNormalization, PreActResNet18):
    """The zoo's ``PreActResNet(PreActBlock, [2, 2, 2, 2])`` (``resnet.py``): robustkit's ``preact-resnet18``
    (same parameter names; no BN after the last block), with optional normalization inside.

    :param num_classes: logits K.
    :param mean: per-channel mean subtracted inside (``None``: none).
    :param std: per-channel std divided inside.
    :param width: multiplier on the 64..512 channels (1 in the zoo).
    :param image_size: the input size (any works).
    :param in_channels: image channels (3 for every zoo model).
    """


__all__ = ["ACTIVATIONS", "CIFAR10_MEAN", "CIFAR10_STD", "DMPreActResNet", "DMWideResNet", "InputNormalization",
           "TradesWideResNet", "ZooPreActResNet18", "ZooResNet18"]
