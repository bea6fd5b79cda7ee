"""Dataset handles and input checks shared by every component.

A dataset plugin returns an :class:`ImageDataset`: train and test splits whose items are
``(image, label)`` with ``image`` a float tensor ``C x H x W`` in [0, 1] and ``label`` an int.
Normalization is not the dataset's job: the model carries it (see :mod:`robustkit.models`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset, Subset

from robustkit.errors import InputError


@dataclass(frozen=True)
class DatasetInfo:
    """Facts models and attacks need about a dataset.

    :param name: registry name.
    :param num_classes: number of classes.
    :param channels: image channels (1 or 3).
    :param image_size: ``(height, width)``.
    :param mean: per-channel mean used by the model's normalization layer.
    :param std: per-channel standard deviation used by the model's normalization layer.
    :param class_names: optional readable names.
    """

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    params: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.image_size)


@dataclass
class ImageDataset:
    """Train and test splits of one dataset."""

    info: DatasetInfo
    train: Dataset
    test: Dataset

    def split(self, name: str) -> Dataset:
        if name not in ("train", "test"):
            raise InputError(f"unknown split '{name}'; use train or test")
        return self.train if name == "train" else self.test


def take(dataset: Dataset, n: int | None) -> Dataset:
    """The first ``n`` items (all if ``n`` is None or larger): evaluation subsets are fixed, not random."""
    if n is None or n >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return Subset(dataset, range(n))


def stack(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of a (small) dataset as two tensors."""
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))  # type: ignore[arg-type]
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)


def check_images(images: torch.Tensor, labels: torch.Tensor | None = None, *, what: str = "images",
                 shape: tuple[int, ...] | None = None) -> None:
    """Raise :class:`InputError` unless ``images`` is a finite float NCHW batch in [0, 1].

    :param shape: the expected ``C x H x W``, if known.
    """
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise InputError(f"{what} must be a batch N x C x H x W, got shape {tuple(images.shape)}")
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise InputError(f"{what} have shape C x H x W = {tuple(images.shape[1:])}, the model expects {tuple(shape)}")
    if not images.is_floating_point():
        raise InputError(f"{what} must be floating point in [0, 1], got dtype {images.dtype}; divide by 255")
    if not torch.isfinite(images).all():
        raise InputError(f"{what} contain NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"{what} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; scale them (e.g. /255)")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise InputError(f"labels must be a 1-D tensor with one label per image ({images.shape[0]}), got {got}")
        if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise InputError(f"labels must be integer class indices, got dtype {labels.dtype}")


def check_labels(labels: torch.Tensor, info: "DatasetInfo") -> None:
    """Raise :class:`InputError` unless every label is a class of ``info`` (0 .. num_classes - 1)."""
    outside = labels[(labels < 0) | (labels >= info.num_classes)]
    if outside.numel():
        raise InputError(f"dataset '{info.name}' has label {int(outside[0])}, outside its {info.num_classes} classes "
                         f"(0..{info.num_classes - 1}): its labels and its class count disagree; fix the dataset "
                         "or its plugin")
