"""Training-time data augmentation: random crops and flips of a batch, on its own device, from a seeded generator.

An augmentation is written as text, the same on the command line (``--augment``), in benchmark specs
(``training.augment``) and in checkpoints:

- ``none``: the images as they are.
- ``default``: what the dataset's registration states (its ``augment`` fact, e.g. CIFAR-10's
  ``crop:4:zero,flip``); a dataset that states nothing gets ``none``. :func:`resolve_augment` turns it into
  the explicit list before a run starts, so a run records what it did, not a name for it.
- a comma-separated list of operations, applied in order:

  - ``crop[:PADDING[:MODE]]``: pad every side by PADDING pixels (default 4) and cut a window of the
    original size at a random offset, per image. MODE ``zero`` (the default, torchvision's
    ``RandomCrop(size, padding=4)``) pads with black; ``reflect`` mirrors the border (the cifar10-fast code
    Rice et al. 2020 trained with).
  - ``flip``: mirror each image left-right with probability 1/2.

The operations work on a whole ``N x C x H x W`` batch with plain tensor indexing, so they run where the
batch is (the GPU during GPU training) and every image gets its own offset and coin. Every random draw
comes from the ``generator`` passed in, never from torch's global RNG: the training loop seeds one per
epoch (``epoch_seed(seed, epoch, "augment")``), so a run repeats bit for bit and a resumed run equals an
uninterrupted one. Labels are never touched: crops and flips keep the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from robustkit.errors import ParameterError

NONE = "none"
DEFAULT = "default"
CROP_MODES = ("zero", "reflect")
#: The registration fact (``register(..., augment=TEXT)``) a dataset states its default in.
DATASET_FACT = "augment"


@dataclass(frozen=True)
class Crop:
    """Pad by ``padding`` pixels (``zero`` or ``reflect``) and cut a random window of the original size."""

    padding: int = 4
    mode: str = "zero"

    def text(self) -> str:
        return f"crop:{self.padding}:{self.mode}"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, height, width = images.shape
        p = self.padding
        if self.mode == "reflect" and p >= min(height, width):
            raise ParameterError(f"augment {self.text()}: reflect padding must be smaller than the image "
                                 f"({height}x{width}); use a smaller padding or crop:{p}:zero")
        padded = F.pad(images, (p, p, p, p), mode="reflect" if self.mode == "reflect" else "constant")
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=images.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=images.device)
        rows = dy[:, None] + torch.arange(height, device=images.device)  # N x H: the window's rows per image
        cols = dx[:, None] + torch.arange(width, device=images.device)  # N x W
        batch = torch.arange(n, device=images.device)[:, None, None]
        # Advanced indexing over (image, row, column) picks each image's own window: N x H x W x C.
        window = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return window.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class Flip:
    """Mirror each image left-right with probability 1/2."""

    def text(self) -> str:
        return "flip"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        heads = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
        return torch.where(heads[:, None, None, None], images.flip(-1), images)


Operation = Crop | Flip


@dataclass(frozen=True)
class Augmentation:
    """Operations applied in order to a training batch; empty means none."""

    ops: tuple[Operation, ...] = ()

    def text(self) -> str:
        """The canonical text (``none`` or e.g. ``crop:4:zero,flip``), as checkpoints and specs record it."""
        return ",".join(op.text() for op in self.ops) or NONE

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for op in self.ops:
            images = op(images, generator)
        return images


def parse_augment(text: str) -> Augmentation:
    """An explicit augmentation (``none`` or a list of operations); ``default`` must be resolved first.

    :raises ParameterError: one line naming what is wrong and the accepted forms.
    """
    if not isinstance(text, str) or not text.strip():
        raise ParameterError(f"augment must be text such as none, default or crop:4:zero,flip; got {text!r}")
    if text.strip().lower() == NONE:
        return Augmentation()
    if text.strip().lower() == DEFAULT:
        raise ParameterError("augment 'default' names the dataset's own augmentation: resolve it with the dataset "
                             "(robustkit.augmentation.resolve_augment) before parsing")
    ops: list[Operation] = []
    for item in (part.strip() for part in text.split(",")):
        name, *args = [a.strip().lower() for a in item.split(":")]
        if name == "flip" and not args:
            ops.append(Flip())
        elif name == "crop" and len(args) <= 2:
            padding = args[0] if args else "4"
            mode = args[1] if len(args) > 1 else "zero"
            if not padding.isdigit() or not 1 <= int(padding) <= 64:
                raise ParameterError(f"augment {item!r}: the crop padding must be a whole number of pixels from 1 to "
                                     f"64, e.g. crop:4")
            if mode not in CROP_MODES:
                raise ParameterError(f"augment {item!r}: the crop padding mode must be one of "
                                     f"{', '.join(CROP_MODES)}, e.g. crop:4:reflect")
            ops.append(Crop(int(padding), mode))
        else:
            raise ParameterError(f"augment {item!r} is not an operation; use none, default, or a comma-separated list "
                                 "of crop[:PADDING[:zero|reflect]] and flip, e.g. crop:4:zero,flip")
    return Augmentation(tuple(ops))


def dataset_default(host: Any, dataset_name: str) -> str:
    """The augmentation the registered dataset ``dataset_name`` states as its default (``none`` if it states none
    or is not registered, e.g. a dataset built in Python)."""
    registry = getattr(host, "datasets", None)
    if registry is None or dataset_name not in registry:
        return NONE
    stated = dict(registry.get(dataset_name).info).get(DATASET_FACT, NONE)
    return parse_augment(stated).text()  # a plugin's typo fails here, naming the text


def resolve_augment(text: str, dataset_name: str, host: Any) -> str:
    """``text`` as the canonical explicit list: ``default`` becomes the dataset's own; anything else is checked."""
    if isinstance(text, str) and text.strip().lower() == DEFAULT:
        return dataset_default(host, dataset_name)
    return parse_augment(text).text()
