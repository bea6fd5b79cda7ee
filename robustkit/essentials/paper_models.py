"""The architectures the reproduced papers train, adapted to any input shape and class count.

Registered names:

- ``madry-cnn``: MNIST CNN of Madry et al.'s challenge, used by localized adversarial training.
- ``shaham-cnn``: the convnet of Shaham et al.'s robust optimization paper.
- ``lenet``: Caffe's LeNet, used by the hard-positives (hot/cold) paper.
- ``convpool-cnn``: the ConvPool-CNN classifier of the perturbation generator network (PGN) paper.
- ``wide-resnet``: configurable wide residual network in the form of Madry et al.'s CIFAR-10 model,
  with the aliases ``wrn-32-10`` and ``wrn-40-2`` that RLFAT trains.
- ``vgg``: the BN VGG commonly used on CIFAR.
- ``resnet18-cifar``: ResNet-18 in its CIFAR form (3x3 stride-1 stem, no max-pool), the baseline of many
  adversarial training papers.
- ``preact-resnet18``: the pre-activation ResNet-18 of fast adversarial training and many RobustBench entries.

Every factory follows the model contract: ``factory(num_classes, in_channels, image_size, **params)``
returns a module mapping normalized ``N x C x H x W`` images to ``N x num_classes`` logits. The
layers are the papers' at the papers' input sizes; on other sizes (down to the 8x8 digits) each
docstring says what changes so no feature map ever becomes empty.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from robustkit.hookspecs import hookimpl
from robustkit.errors import ParameterError
from robustkit.hookspecs import Register
from robustkit.params import Param

WIDTH = Param("width", float, 1.0, "multiplier on every layer's channel and unit count (e.g. 0.25 for a fast test model)",
              low=0.0, low_open=True, high=16.0)
LEAK = Param("leak", float, 0.1, "negative slope of the leaky ReLUs (0 gives plain ReLU)", low=0.0, high=1.0)


def _check_context(num_classes: int, in_channels: int, image_size: Sequence[int]) -> tuple[int, int]:
    """Validate the host-supplied shape facts; returns ``(H, W)``."""
    if num_classes < 1 or in_channels < 1:
        raise ParameterError(f"need num_classes >= 1 and in_channels >= 1, got {num_classes} and {in_channels}")
    if len(image_size) != 2 or min(image_size) < 1:
        raise ParameterError(f"image_size must be (height, width) with positive sides, got {tuple(image_size)}")
    return int(image_size[0]), int(image_size[1])


def _scaled(units: int, width: float) -> int:
    """``units * width``, rounded, never below one."""
    return max(1, round(units * width))


class _Stack:
    """Builds a conv/pool stack layer by layer, pushing a dummy image through so each layer fits its input.

    Adaptation rules shared by the small CNNs (nothing changes when the map is at least as large as
    the window, i.e. at the papers' input sizes):

    - an unpadded ("valid") convolution whose kernel is larger than the map on an axis gets SAME
      padding on that axis instead of producing an empty map;
    - a pooling window (and stride) larger than the map on an axis shrinks to the map's size there,
      so a 1-pixel map passes through unchanged.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int]):
        self.layers: list[nn.Module] = []
        self._probe = torch.zeros(1, in_channels, *image_size)

    @property
    def channels(self) -> int:
        return int(self._probe.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        return int(self._probe.shape[2]), int(self._probe.shape[3])

    @property
    def flat_features(self) -> int:
        return int(self._probe[0].numel())

    def add(self, layer: nn.Module) -> None:
        self.layers.append(layer)
        training = layer.training
        layer.eval()  # the probe is a single image: batch norm must not compute batch statistics
        with torch.no_grad():
            self._probe = layer(self._probe)
        layer.train(training)

    def conv(self, out_channels: int, kernel: int, same: bool, act: nn.Module | None = None) -> None:
        pad = tuple(kernel // 2 if same or side < kernel else 0 for side in self.size)
        self.add(nn.Conv2d(self.channels, out_channels, kernel, padding=pad))
        if act is not None:
            self.add(act)

    def pool(self, kernel: int, stride: int | None = None, *, average: bool = False, ceil_mode: bool = False) -> None:
        stride = stride or kernel
        k = tuple(min(kernel, side) for side in self.size)
        s = tuple(min(stride, side) for side in self.size)
        self.add(nn.AvgPool2d(k, s, ceil_mode=ceil_mode) if average else nn.MaxPool2d(k, s, ceil_mode=ceil_mode))

    def sequential(self) -> nn.Sequential:
        return nn.Sequential(*self.layers)


class MadryCNN(nn.Module):
    """MNIST CNN of Madry et al. (2018), the model of localized adversarial training.

    Layers: conv 32 5x5 SAME + ReLU, maxpool 2; conv 64 5x5 SAME + ReLU, maxpool 2; FC 1024 + ReLU; FC K.

    Adaptation: pooling rounds up like TensorFlow's SAME pooling (28 -> 14 -> 7), the first FC layer
    takes whatever the conv stack outputs for ``image_size`` (64 x 7 x 7 on MNIST, 64 x 2 x 2 on 8x8
    digits), and a pooling window wider than a map shrinks to it.

    :param num_classes: logits K (host-supplied).
    :param in_channels: image channels (host-supplied).
    :param image_size: ``(H, W)`` (host-supplied).
    :param width: multiplier on the 32/64 channels and the 1024 hidden units.
    """

    params = (WIDTH,)

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], width: float = 1.0):
        super().__init__()
        size = _check_context(num_classes, in_channels, image_size)
        stack = _Stack(in_channels, size)
        stack.conv(_scaled(32, width), 5, same=True, act=nn.ReLU())
        stack.pool(2, ceil_mode=True)
        stack.conv(_scaled(64, width), 5, same=True, act=nn.ReLU())
        stack.pool(2, ceil_mode=True)
        self.features = stack.sequential()
        hidden = _scaled(1024, width)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(stack.flat_features, hidden), nn.ReLU(),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ShahamCNN(nn.Module):
    """Convnet of Shaham et al. (2018), robust optimization via local stability (Lua Torch reference).

    Layers: conv 32 5x5 (unpadded) + ReLU, maxpool 3 stride 3; conv 64 5x5 (unpadded) + ReLU,
    maxpool 2; FC 200 + ReLU; FC K.

    Adaptation: pooling rounds down like Torch's; the FC layer takes whatever the conv stack outputs
    (64 x 2 x 2 on the reference's 32x32 padded MNIST and on 28x28); when a map is smaller than a
    kernel (the second conv on 8x8 digits sees 1x1) that conv is SAME-padded, and a pooling window
    wider than a map shrinks to it.

    :param num_classes: logits K (host-supplied).
    :param in_channels: image channels (host-supplied).
    :param image_size: ``(H, W)`` (host-supplied).
    :param width: multiplier on the 32/64 channels and the 200 hidden units.
    """

    params = (WIDTH,)

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], width: float = 1.0):
        super().__init__()
        size = _check_context(num_classes, in_channels, image_size)
        stack = _Stack(in_channels, size)
        stack.conv(_scaled(32, width), 5, same=False, act=nn.ReLU())
        stack.pool(3)
        stack.conv(_scaled(64, width), 5, same=False, act=nn.ReLU())
        stack.pool(2)
        self.features = stack.sequential()
        hidden = _scaled(200, width)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(stack.flat_features, hidden), nn.ReLU(),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet(nn.Module):
    """Caffe's LeNet, the MNIST model of the hard-positives (hot/cold, PASS) paper.

    Layers: conv 20 5x5 (unpadded), maxpool 2; conv 50 5x5 (unpadded), maxpool 2; FC 500 + ReLU; FC K.
    As in Caffe, the convolutions have no nonlinearity.

    Adaptation: pooling rounds up like Caffe's; the FC layer takes whatever the conv stack outputs
    (50 x 4 x 4 on 28x28, 50 x 5 x 5 on 32x32); when a map is smaller than a kernel (the second
    conv on 8x8 digits sees 2x2) that conv is SAME-padded, and a pooling window wider than a map
    shrinks to it.

    :param num_classes: logits K (host-supplied).
    :param in_channels: image channels (host-supplied).
    :param image_size: ``(H, W)`` (host-supplied).
    :param width: multiplier on the 20/50 channels and the 500 hidden units.
    """

    params = (WIDTH,)

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], width: float = 1.0):
        super().__init__()
        size = _check_context(num_classes, in_channels, image_size)
        stack = _Stack(in_channels, size)
        stack.conv(_scaled(20, width), 5, same=False)
        stack.pool(2, ceil_mode=True)
        stack.conv(_scaled(50, width), 5, same=False)
        stack.pool(2, ceil_mode=True)
        self.features = stack.sequential()
        hidden = _scaled(500, width)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(stack.flat_features, hidden), nn.ReLU(),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ConvPoolCNN(nn.Module):
    """ConvPool-CNN, the classifier of the perturbation generator network (PGN) paper (ATPGN reference).

    Layers (all 3x3 SAME convs followed by leaky ReLU 0.2, no batch norm):
    [conv 64, conv 128, avgpool 2], [conv 128, conv 256, avgpool 2], [conv 256, conv 512, avgpool 2],
    conv K (also followed by the leaky ReLU, as in the reference); logits = spatial mean of the K maps.

    Adaptation: convolutions keep the map size and the global mean takes any size, so only the
    pools matter: they round down, and a window wider than the map shrinks to it (8x8 -> 4 -> 2 -> 1).

    :param num_classes: logits K (host-supplied).
    :param in_channels: image channels (host-supplied).
    :param image_size: ``(H, W)`` (host-supplied).
    :param width: multiplier on the 64..512 channels (the last conv always has K).
    """

    params = (WIDTH,)

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], width: float = 1.0):
        super().__init__()
        size = _check_context(num_classes, in_channels, image_size)
        stack = _Stack(in_channels, size)
        for first, second in ((64, 128), (128, 256), (256, 512)):
            stack.conv(_scaled(first, width), 3, same=True, act=nn.LeakyReLU(0.2))
            stack.conv(_scaled(second, width), 3, same=True, act=nn.LeakyReLU(0.2))
            stack.pool(2, average=True)
        stack.conv(num_classes, 3, same=True, act=nn.LeakyReLU(0.2))
        self.features = stack.sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class _WideUnit(nn.Module):
    """One residual unit of Madry's CIFAR WRN: BN, leaky ReLU, conv 3x3 (stride), BN, leaky ReLU, conv 3x3.

    The shortcut is parameter-free like the reference: average-pooled by the stride (rounding up,
    so it matches the strided conv on odd sizes) and zero-padded on channels when the width grows.
    With ``activate_before_residual`` the shortcut starts after the first BN and activation.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, activate_before_residual: bool, leak: float):
        super().__init__()
        self.stride = stride
        self.activate_before_residual = activate_before_residual
        self.leak = leak
        self.extra_channels = out_channels - in_channels
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.leaky_relu(self.bn1(x), self.leak)
        shortcut = act if self.activate_before_residual else x
        out = self.conv2(F.leaky_relu(self.bn2(self.conv1(act)), self.leak))
        if self.stride > 1:
            shortcut = F.avg_pool2d(shortcut, self.stride, self.stride, ceil_mode=True)
        if self.extra_channels:
            low = self.extra_channels // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, low, self.extra_channels - low))
        return out + shortcut


def he_init(module: nn.Module) -> None:
    """Wide ResNets' initialization: He-normal convs (fan out, the reference's stddev sqrt(2 / (k * k * out))),
    unit batch norm, zero linear biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


class WideResNet(nn.Module):
    """Wide residual network (Zagoruyko & Komodakis 2016) in the form of Madry et al.'s CIFAR-10 model.

    This is the network RLFAT's reference code trains (JHL-HUST/RLFAT ``model_bn.py``): conv 3x3 to
    the stem width; stages of pre-activation residual units (BN, leaky ReLU 0.1, conv 3x3, BN, leaky
    ReLU, conv 3x3) with strides 1, 2, 2, ...; parameter-free shortcuts (average pool + zero channel
    padding); the first unit shares its activation with the shortcut; final BN, leaky ReLU, global
    average pool, FC K.

    Sizes: ``units = (depth - 4) / 6`` per stage and widths ``16, 16k, 32k, 64k`` for WRN-depth-k,
    unless ``units`` / ``widths`` give them explicitly. RLFAT's "WRN-32-10" has 5 units per stage
    (depth 34 by this formula; registered as ``wrn-32-10``).

    Adaptation: the global average pool takes any map, and a strided conv on a 1-pixel map keeps
    1 pixel, so any input size works (8x8 digits: 8 -> 8 -> 4 -> 2).

    :param num_classes: logits K (host-supplied).
    :param in_channels: image channels (host-supplied).
    :param image_size: ``(H, W)`` (host-supplied).
    :param depth: total depth; ``depth - 4`` must be divisible by 6.
    :param widen_factor: k, the width multiplier of the stages.
    :param units: residual units per stage (overrides ``depth``).
    :param widths: comma-separated stem width then one width per stage, e.g. ``16,160,320,640``
        (overrides ``widen_factor``; widths must not decrease).
    :param leak: negative slope of the leaky ReLUs (0.1 in the reference).
    """

    params = (
        Param("depth", int, 28, "total depth; depth - 4 must be divisible by 6", low=10),
        Param("widen_factor", int, 10, "width multiplier k of the stages (16k, 32k, 64k)", low=1),
        Param("units", int, None, "residual units per stage (overrides depth)", low=1, optional=True),
        Param("widths", str, None, "stem width then one width per stage, e.g. 16,160,320,640 (overrides widen_factor)",
              optional=True),
        LEAK,
    )

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], depth: int = 28,
                 widen_factor: int = 10, units: int | None = None, widths: str | None = None, leak: float = 0.1):
        super().__init__()
        _check_context(num_classes, in_channels, image_size)
        if units is None:
            if (depth - 4) % 6 or depth < 10:
                raise ParameterError(f"wide-resnet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), "
                                     f"got {depth}")
            units = (depth - 4) // 6
        sizes = _parse_widths(widths) if widths else [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, sizes[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        for stage, (cin, cout) in enumerate(zip(sizes[:-1], sizes[1:])):
            stride = 1 if stage == 0 else 2
            blocks.append(_WideUnit(cin, cout, stride, activate_before_residual=stage == 0, leak=leak))
            blocks.extend(_WideUnit(cout, cout, 1, False, leak) for _ in range(units - 1))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(sizes[-1])
        self.leak = leak
        self.fc = nn.Linear(sizes[-1], num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.bn(self.blocks(self.stem(x))), self.leak)
        return self.fc(x.mean(dim=(2, 3)))


def _parse_widths(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ParameterError(f"widths must be comma-separated integers like 16,160,320,640, got {text!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise ParameterError(f"widths needs a stem width and at least one positive stage width, got {text!r}")
    if any(b < a for a, b in zip(sizes[1:], sizes[2:])) or sizes[1] < sizes[0]:
        raise ParameterError(f"widths must not decrease (shortcuts are zero-padded, not projected), got {text!r}")
    return sizes


def wrn_32_10(num_classes: int, in_channels: int, image_size: tuple[int, int], leak: float = 0.1) -> WideResNet:
    """RLFAT's CIFAR "WRN-32-10": 5 units per stage, widths 16/160/320/640 (Madry's CIFAR-10 model).

    Layers and adaptation: :class:`WideResNet` with ``units=5, widths="16,160,320,640"``.

    :param leak: negative slope of the leaky ReLUs (0.1 in the reference).
    """
    return WideResNet(num_classes, in_channels, image_size, units=5, widths="16,160,320,640", leak=leak)


def wrn_40_2(num_classes: int, in_channels: int, image_size: tuple[int, int], leak: float = 0.1) -> WideResNet:
    """RLFAT's STL-10 WRN-40-2: 6 units per stage, widths 16/32/64/128.

    Layers and adaptation: :class:`WideResNet` with ``units=6, widths="16,32,64,128"``.

    :param leak: negative slope of the leaky ReLUs (0.1 in the reference).
    """
    return WideResNet(num_classes, in_channels, image_size, units=6, widths="16,32,64,128", leak=leak)


VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
"""Channel counts per conv ("M" = maxpool 2) of the VGG variants (Simonyan & Zisserman 2015, table 1)."""


class VGG(nn.Module):
    """VGG for small images (Simonyan & Zisserman 2015), the batch-norm CIFAR variant common in robustness work.

    Layers: the chosen configuration's 3x3 SAME convs (each + BN + ReLU) with maxpool 2 between
    blocks; global average pool; FC K (the CIFAR variant's single classifier layer).

    Adaptation: five pools take 32x32 to 1x1; on smaller inputs a pool window wider than the map
    shrinks to it (8x8 -> 4 -> 2 -> 1 -> 1 -> 1), and on larger ones (STL-10's 96x96) the global
    average pool reduces what remains.

    :param num_classes: logits K (host-supplied).
    :param in_channels: image channels (host-supplied).
    :param image_size: ``(H, W)`` (host-supplied).
    :param config: ``vgg11``, ``vgg13``, ``vgg16`` or ``vgg19``.
    :param batch_norm: batch norm after every conv.
    :param width: multiplier on every conv's channels.
    """

    params = (
        Param("config", str, "vgg16", "layer configuration", choices=tuple(VGG_CONFIGS)),
        Param("batch_norm", bool, True, "batch norm after every conv"),
        WIDTH,
    )

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], config: str = "vgg16",
                 batch_norm: bool = True, width: float = 1.0):
        super().__init__()
        size = _check_context(num_classes, in_channels, image_size)
        if config not in VGG_CONFIGS:
            raise ParameterError(f"unknown VGG config {config!r}; use one of {', '.join(VGG_CONFIGS)}")
        stack = _Stack(in_channels, size)
        for item in VGG_CONFIGS[config]:
            if item == "M":
                stack.pool(2)
                continue
            stack.conv(_scaled(int(item), width), 3, same=True)
            if batch_norm:
                stack.add(nn.BatchNorm2d(stack.channels))
            stack.add(nn.ReLU())
        self.features = stack.sequential()
        self.fc = nn.Linear(stack.channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class _BasicBlock(nn.Module):
    """ResNet v1 basic block: conv 3x3 (stride), BN, ReLU, conv 3x3, BN, plus the shortcut, then ReLU.

    The shortcut is the identity, or a 1x1 strided conv + BN where the stride or the width changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class _PreActBlock(nn.Module):
    """Pre-activation basic block: BN, ReLU, conv 3x3 (stride), BN, ReLU, conv 3x3, plus the shortcut.

    The shortcut is the identity, or a 1x1 strided conv (no BN) of the block's un-activated input where
    the stride or the width changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


_RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
"""(channels, stride of the first block) of ResNet-18's four stages of two blocks."""


def _stages(block: type[nn.Module], stem: int, width: float) -> tuple[list[nn.Sequential], int]:
    """ResNet-18's four stages ``layer1`` .. ``layer4`` of ``block``; returns them and the last width."""
    stages, channels = [], stem
    for units, stride in _RESNET18_STAGES:
        out = _scaled(units, width)
        stages.append(nn.Sequential(block(channels, out, stride), block(out, out, 1)))
        channels = out
    return stages, channels


class CifarResNet18(nn.Module):
    """ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition") in its CIFAR form.

    The CIFAR form used throughout the adversarial robustness literature (e.g. the ResNet-18 of
    RobustBench's model zoo, ``robustbench/model_zoo/architectures/resnet.py``): the ImageNet stem
    (7x7 stride-2 conv and a max-pool, which would leave 8x8 of a 32x32 image) is replaced by conv
    3x3 stride 1 to 64 channels + BN + ReLU. Then four stages of two basic blocks (conv 3x3, BN,
    ReLU, conv 3x3, BN, shortcut add, ReLU) with 64, 128, 256, 512 channels and strides 1, 2, 2, 2
    (a 1x1 conv + BN projects the shortcut where the shape changes); global average pool; FC K.
    11,173,962 parameters for 10 classes.

    Parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.shortcut.0``, ``linear``) are
    those of that common implementation, so its CIFAR-10 checkpoints load as they are.

    Adaptation: the stem keeps the map size, a strided conv on a 1-pixel map keeps 1 pixel and the
    global average pool takes any map (the reference's 4x4 average pool at 32x32), so any input size
    works (8x8 digits: 8 -> 8 -> 4 -> 2 -> 1).

    :param num_classes: logits K (host-supplied).
    :param in_channels: image channels (host-supplied).
    :param image_size: ``(H, W)`` (host-supplied).
    :param width: multiplier on the 64/128/256/512 channels.
    """

    params = (WIDTH,)

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], width: float = 1.0):
        super().__init__()
        _check_context(num_classes, in_channels, image_size)
        stem = _scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        stages, channels = _stages(_BasicBlock, stem, width)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(out.mean(dim=(2, 3)))


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks"), CIFAR form.

    The network of fast adversarial training (Wong et al. 2020) and of several RobustBench entries
    (``PreActResNet`` with ``PreActBlock`` in ``robustbench/model_zoo/architectures/resnet.py``): conv
    3x3 stride 1 to 64 channels (no BN, no max-pool); four stages of two pre-activation blocks (BN,
    ReLU, conv 3x3, BN, ReLU, conv 3x3, shortcut add) with 64, 128, 256, 512 channels and strides 1,
    2, 2, 2, the shortcut a 1x1 conv of the block input where the shape changes; global average pool;
    FC K. 11,171,146 parameters for 10 classes.

    As in that code the last block feeds the pool directly; ``final_bn`` adds the final BN + ReLU of
    He et al.'s full pre-activation design (named ``bn``, as in the robust-overfitting code; +1,024
    parameters). Parameter names (``conv1``, ``layer1.0.bn1``, ``layer2.0.shortcut.0``, ``bn``,
    ``linear``) are those of that code, so its checkpoints load as they are.

    Adaptation: as :class:`CifarResNet18`, any input size works (8x8 digits: 8 -> 8 -> 4 -> 2 -> 1).

    :param num_classes: logits K (host-supplied).
    :param in_channels: image channels (host-supplied).
    :param image_size: ``(H, W)`` (host-supplied).
    :param width: multiplier on the 64/128/256/512 channels.
    :param final_bn: BN + ReLU after the last block.
    """

    params = (WIDTH, Param("final_bn", bool, False, "BN + ReLU after the last block (He et al.'s full pre-activation)"))

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], width: float = 1.0,
                 final_bn: bool = False):
        super().__init__()
        _check_context(num_classes, in_channels, image_size)
        stem = _scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        stages, channels = _stages(_PreActBlock, stem, width)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(channels) if final_bn else None
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        return self.linear(out.mean(dim=(2, 3)))


_WRN_ALIAS_PARAMS = (LEAK,)  # the aliases fix depth and widths; only the activation stays settable


@hookimpl
def register_models(register: Register) -> None:
    register("madry-cnn", MadryCNN, paper="localized adversarial training (Madry MNIST CNN)")
    register("shaham-cnn", ShahamCNN, paper="robust optimization via local stability (Shaham et al.)")
    register("lenet", LeNet, paper="hard positives / hot-cold (Caffe LeNet)")
    register("convpool-cnn", ConvPoolCNN, paper="perturbation generator networks (PGN)")
    register("wide-resnet", WideResNet, paper="RLFAT (Madry CIFAR WRN)")
    register("wrn-32-10", wrn_32_10, params=_WRN_ALIAS_PARAMS, paper="RLFAT (CIFAR-10/100)")
    register("wrn-40-2", wrn_40_2, params=_WRN_ALIAS_PARAMS, paper="RLFAT (STL-10)")
    register("vgg", VGG, paper="CIFAR VGG baseline")
    register("resnet18-cifar", CifarResNet18, paper="CIFAR ResNet-18 baseline (He et al. 2016)")
    register("preact-resnet18", PreActResNet18, paper="fast adversarial training, RobustBench (He et al. 2016)")


__all__ = ["MadryCNN", "ShahamCNN", "LeNet", "ConvPoolCNN", "WideResNet", "VGG", "VGG_CONFIGS", "CifarResNet18",
           "PreActResNet18", "wrn_32_10", "wrn_40_2", "register_models"]
