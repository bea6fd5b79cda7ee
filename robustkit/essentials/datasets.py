"""Built-in datasets: scikit-learn's digits (embedded, no download); torchvision's MNIST, CIFAR-10,
CIFAR-100 and STL-10, and CIFAR-10-C, read from a local folder (never downloaded); and the user's own data:
``imagefolder`` (one sub-folder of images per class) and ``tensors`` (arrays in a ``.npz`` or
``.safetensors`` file).

Every dataset returns a :class:`robustkit.data.ImageDataset` whose items are
``(float32 C x H x W tensor in [0, 1], label)``. The torchvision datasets keep their uint8 pixels
in memory and convert one item at a time (a full float copy of STL-10 would take 1.4 GB); ``imagefolder``
decodes each file when its item is read.

Normalization constants (``DatasetInfo.mean`` / ``std``) of the published datasets are fixed, never computed
from the chosen split, so a model's normalization does not change with ``split_seed`` or ``resize``: the usual
published train-set statistics for the torchvision datasets (CIFAR-10's for CIFAR-10-C), and the statistics
of all 1,797 digits images (scaled to [0, 1]) for ``digits``. The user's own datasets have no published
statistics: theirs are computed from the training split as served (:func:`channel_stats`), and recorded
with every model trained on them.

torchvision verifies MD5 checksums of the CIFAR and STL-10 files; here only their presence is
checked (subclasses override ``_check_integrity``), so files in the official format load whatever
their size. CIFAR's files are pickles: they are read by :func:`robustkit.safe_unpickle.load_data_pickle`,
never by ``pickle.load`` (torchvision's loader would run any code a crafted file names); ``.npy`` and
``.npz`` files are read with ``allow_pickle=False``. Anything wrong with a folder or a file is a one-line
:class:`RobustkitError` that names the files expected and how to get them; a ``--data-root`` that points
inside a dataset's own folder (``cifar-10-batches-py/``, ``MNIST/raw``, a class folder) is told
"use its parent (PATH)".

torchvision is imported only inside the MNIST / CIFAR / STL-10 loaders (:func:`_tvd`): importing it
takes seconds (it pulls in ``torch._dynamo``) and registration runs whenever the CLI starts. PIL and
safetensors are imported only by the loaders that need them.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from robustkit.hookspecs import hookimpl
from robustkit.data import DatasetInfo, ImageDataset
from robustkit.errors import RobustkitError, one_line
from robustkit.params import Param
from robustkit.safe_unpickle import load_data_pickle

# Published per-channel statistics of each training set, in [0, 1] units.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
STL10_MEAN, STL10_STD = (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)
# All 1,797 digits images divided by 16 (computed once; independent of the split).
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3760,)

DIGIT_NAMES = tuple(str(i) for i in range(10))
STL10_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")

RESIZE = Param("resize", int, None, "resize images to RESIZE x RESIZE (bilinear, antialiased); none keeps them",
               low=1, high=1024, optional=True)


# --- shared helpers ------------------------------------------------------------------------


def _tvd() -> ModuleType:
    """``torchvision.datasets``, imported on first use (seconds), never at registration."""
    from torchvision import datasets

    return datasets


def resize_images(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear, antialiased resize of an N x C x H x W batch in [0, 1] to ``size x size``.

    Interpolation weights are non-negative and sum to one, so values stay in [0, 1]; the clamp
    only removes rounding noise.
    """
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)


class UInt8Images(Dataset):
    """Images held as uint8 ``N x C x H x W`` (any strides), converted to float in [0, 1] per item.

    :param images: uint8 tensor ``N x C x H x W`` (a permuted view of HWC data is fine).
    :param labels: integer tensor ``N``.
    :param resize: optional side length each item is resized to.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, resize: int | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError("UInt8Images needs uint8 N x C x H x W images and one label per image")
        self.images = images
        self.labels = labels.long()
        self.resize = resize

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255.0)
        if self.resize is not None:
            image = resize_images(image.unsqueeze(0), self.resize).squeeze(0)
        return image, int(self.labels[index])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``C x H x W`` of the items (after resizing)."""
        c, h, w = self.images.shape[1:]
        return (c, self.resize, self.resize) if self.resize is not None else (c, h, w)


class FloatImages(UInt8Images):
    """Images held as float ``N x C x H x W`` already in [0, 1], copied to float32 per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, resize: int | None = None):
        if not images.is_floating_point() or images.dim() != 4 or len(images) != len(labels):
            raise ValueError("FloatImages needs float N x C x H x W images and one label per image")
        self.images = images
        self.labels = labels.long()
        self.resize = resize

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].to(torch.float32, copy=True)  # never a view the caller could modify
        if self.resize is not None:
            image = resize_images(image.unsqueeze(0), self.resize).squeeze(0)
        return image, int(self.labels[index])


def _held_images(images: torch.Tensor, labels: torch.Tensor, resize: int | None) -> UInt8Images:
    return (UInt8Images if images.dtype == torch.uint8 else FloatImages)(images, labels, resize)


#: At most this many training images (evenly spaced through the split) give a dataset's computed mean/std.
STATS_IMAGES = 10_000


def channel_stats(batches: Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of N x C x H x W batches in [0, 1] (float64 sums, rounded to
    6 decimals so the same images always give the same numbers). A channel without variation gets std 1,
    so normalization never divides by zero."""
    total = squares = None
    count = 0
    for batch in batches:
        b = batch.double()
        s, q = b.sum(dim=(0, 2, 3)), (b * b).sum(dim=(0, 2, 3))
        total, squares = (s, q) if total is None else (total + s, squares + q)
        count += b.shape[0] * b.shape[2] * b.shape[3]
    if total is None or count == 0:
        raise ValueError("channel_stats needs at least one image")
    mean = total / count
    std = (squares / count - mean * mean).clamp_(min=0.0).sqrt_()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def _stats_indices(n: int) -> np.ndarray:
    """Which of ``n`` training images give the mean/std: all, or :data:`STATS_IMAGES` evenly spaced ones."""
    return np.arange(n) if n <= STATS_IMAGES else np.linspace(0, n - 1, STATS_IMAGES).round().astype(np.int64)


def _item_batches(dataset: Dataset, indices: np.ndarray, size: int = 256) -> Iterator[torch.Tensor]:
    for start in range(0, len(indices), size):
        yield torch.stack([dataset[int(i)][0] for i in indices[start:start + size]])


def split_by_class(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified train/test split of ``labels``: each class gives ``round(test_fraction * its count)``
    of its items (chosen by ``seed``) to the test split, but always keeps one for training.

    :returns: the training indices in their original order, and the test indices in a seeded random
        order (so that the first N test items, as ``--n-examples N`` takes them, mix the classes).
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        k = min(int(test_fraction * len(members) + 0.5), len(members) - 1)
        test.append(members[:k])
        train.append(members[k:])
    train_idx = np.sort(np.concatenate(train)) if train else np.zeros(0, np.int64)
    test_idx = rng.permutation(np.concatenate(test)) if test else np.zeros(0, np.int64)
    return train_idx, test_idx


def _require_root(name: str, root: str | os.PathLike[str] | None, folder: str, option: str = "--data-root") -> Path:
    """``root`` as a Path, or a one-line error telling the user to pass ``--data-root``."""
    if root is None:
        raise RobustkitError(
            f"dataset '{name}' reads local files: pass {option} DIR (root= in Python), the folder that holds "
            f"{folder}; it is never downloaded"
        )
    return Path(root).expanduser()


_LEVELS = {1: "one level", 2: "two levels", 3: "three levels"}


def _up(levels: int) -> str:
    return "its parent" if levels == 1 else "its parent's parent" if levels == 2 else f"the folder {levels} levels up"


def _refuse_too_deep(name: str, root: Path, holds: Callable[[Path], bool], levels: int, layout: str,
                     option: str = "--data-root") -> None:
    """If one of ``root``'s first ``levels`` ancestors ``holds`` the dataset, raise the one-line
    "``root`` is one level too deep; use its parent (PATH)" error (the same wording for every dataset).
    A ``root`` that does not exist is not "too deep" (a typo beside the dataset is told what is missing)."""
    if not root.exists():
        return
    for up, ancestor in enumerate(list(root.absolute().parents)[:levels], start=1):
        if holds(ancestor):
            raise RobustkitError(
                f"dataset '{name}': {option} {root} is {_LEVELS.get(up, f'{up} levels')} too deep; use {_up(up)} "
                f"({ancestor}), the folder that holds {layout}")


def _not_a_folder(root: Path) -> str:
    return f"{root} is a file, not a folder" if root.is_file() else f"folder {root} does not exist"


def _require_files(name: str, root: Path, files: Sequence[str], howto: str, option: str = "--data-root") -> None:
    """One-line error listing the expected files unless all of them exist (or saying "use its parent (PATH)"
    when ``root`` points inside the dataset's own folder)."""
    missing = [f for f in files if not (root / f).is_file()]
    if not missing:
        return
    home = os.path.commonpath([str(Path(f).parent) for f in files])  # MNIST/raw, cifar-10-batches-py, ...
    layout = f"{home}/" if home not in ("", ".") else ", ".join(files)
    _refuse_too_deep(name, root, lambda folder: any((folder / f).is_file() for f in files),
                     max(len(Path(f).parts) for f in files), layout, option)
    expected = ", ".join(str(root / f) for f in files)
    where = _not_a_folder(root) if not root.is_dir() else f"missing {', '.join(missing)}"
    raise RobustkitError(f"dataset '{name}' expects the files {expected} ({where}); {howto}")


def _blame(name: str, root: Path, files: Sequence[str], howto: str, probe: Callable[[Path], None]) -> None:
    """Raise a one-line error naming the first of ``files`` that ``probe`` rejects, if any."""
    for f in files:
        try:
            probe(root / f)
        except RobustkitError:
            raise  # already one line naming the file (a refused pickle)
        except Exception as bad:
            raise RobustkitError(
                f"dataset '{name}': file {root / f} is corrupt or not in the expected format "
                f"({one_line(bad, typed=True)}); to replace it, {howto}"
            ) from bad


def _load(name: str, root: Path, files: Sequence[str], howto: str, build: Callable[[], Any],
          probe: Callable[[Path], None]) -> Any:
    """Run torchvision's loader ``build``; if it fails, name the file ``probe`` rejects."""
    try:
        return build()
    except Exception as err:  # torchvision raises anything from AssertionError to UnpicklingError
        _blame(name, root, files, howto, probe)
        raise RobustkitError(f"dataset '{name}': could not read the files under {root} "
                             f"({one_line(err, typed=True)}); {howto}") from err


def _check_split(name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int, files: str) -> None:
    """Counts and label range of one split; a mismatch means truncated or mixed-up files."""
    if images.dtype != torch.uint8:
        raise RobustkitError(f"dataset '{name}': {files} hold {images.dtype} pixels, expected uint8 (0..255)")
    if len(images) != len(labels):
        raise RobustkitError(f"dataset '{name}': {files} hold {len(images)} images but {len(labels)} labels; "
                             "the files are truncated or from different downloads")
    if len(labels) == 0:
        raise RobustkitError(f"dataset '{name}': {files} hold no images")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise RobustkitError(f"dataset '{name}': {files} hold labels in [{lo}, {hi}], expected 0..{num_classes - 1}")


def _info(name: str, num_classes: int, train: Any, mean: tuple[float, ...],
          std: tuple[float, ...], class_names: Sequence[str], params: dict[str, Any]) -> DatasetInfo:
    """``train``: a dataset with an ``image_shape`` (C x H x W), or an N x C x H x W tensor."""
    c, h, w = train.image_shape if hasattr(train, "image_shape") else tuple(train.shape[1:])
    names = tuple(str(n) for n in class_names)
    return DatasetInfo(name=name, num_classes=num_classes, channels=int(c), image_size=(int(h), int(w)),
                       mean=mean, std=std, class_names=names if len(names) == num_classes else (),
                       params=params)


# --- digits (embedded) ---------------------------------------------------------------------


def load_digits_dataset(root: str | os.PathLike[str] | None = None, test_fraction: float = 0.25, split_seed: int = 0,
                        resize: int | None = None) -> ImageDataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits (embedded, no download), 10 classes.

    The split is stratified by class and fixed by ``split_seed``; ``root`` is ignored.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are integers 0..16, so /16 maps them exactly onto [0, 1].
    images = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                           stratify=digits.target, random_state=split_seed)
    images = resize_images(images, resize)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    info = _info("digits", 10, images, DIGITS_MEAN, DIGITS_STD, DIGIT_NAMES,
                 {"test_fraction": test_fraction, "split_seed": split_seed, "resize": resize})
    return ImageDataset(info, TensorDataset(images[train_idx], labels[train_idx]),
                        TensorDataset(images[test_idx], labels[test_idx]))


DIGITS_PARAMS = (
    Param("test_fraction", float, 0.25, "fraction of the 1,797 images held out for testing", low=0.0, high=0.9,
          low_open=True),
    Param("split_seed", int, 0, "seed of the stratified train/test split"),
    RESIZE,
)


# --- MNIST ---------------------------------------------------------------------------------

MNIST_FILES = tuple(f"MNIST/raw/{split}-{kind}" for split in ("train", "t10k")
                    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))


def _mnist_howto(root: Path) -> str:
    return (f"get them with `python -c \"import torchvision; torchvision.datasets.MNIST('{root}', download=True)\"` "
            f"on a machine with internet and copy {root / 'MNIST'} here, or gunzip the files from "
            f"{_tvd().MNIST.mirrors[0]}")


def _probe_idx(path: Path) -> None:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    (read_image_file if "images" in path.name else read_label_file)(str(path))


def load_mnist(root: str | os.PathLike[str] | None = None, resize: int | None = None) -> ImageDataset:
    """MNIST from ``ROOT/MNIST/raw`` (28x28 grayscale handwritten digits, 10 classes)."""
    path = _require_root("mnist", root, "MNIST/raw/")
    howto = _mnist_howto(path)
    _require_files("mnist", path, MNIST_FILES, howto)
    splits = {}
    for train in (True, False):
        ds = _load("mnist", path, MNIST_FILES, howto, lambda: _tvd().MNIST(str(path), train=train), _probe_idx)
        images, labels = ds.data.unsqueeze(1), ds.targets
        files = f"{path}/MNIST/raw/{'train' if train else 't10k'}-*-ubyte"
        _check_split("mnist", images, labels, 10, files)
        splits[train] = UInt8Images(images, labels, resize)
    info = _info("mnist", 10, splits[True], MNIST_MEAN, MNIST_STD, DIGIT_NAMES, {"resize": resize})
    return ImageDataset(info, splits[True], splits[False])


# --- CIFAR-10 / CIFAR-100 ------------------------------------------------------------------


CIFAR_FOLDERS = {"CIFAR10": "cifar-10-batches-py", "CIFAR100": "cifar-100-python"}
"""torchvision's ``base_folder`` of each CIFAR class, known without importing torchvision."""


class _CIFARFilesOnly:
    """Mixin for torchvision's CIFAR classes: their integrity check without the MD5 part."""

    root: str
    base_folder: str
    train_list: list[list[str]]
    test_list: list[list[str]]

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f))
                   for f, _ in self.train_list + self.test_list)


@functools.cache
def _cifar_class(library_name: str) -> type:
    """torchvision's ``CIFAR10`` / ``CIFAR100`` with the MD5 checks replaced by existence checks."""
    base = getattr(_tvd(), library_name)
    return type(f"_{library_name}", (_CIFARFilesOnly, base), {
        "__module__": __name__,
        "__doc__": f"torchvision's {library_name} with the MD5 checks replaced by existence checks.",
        "meta": {**base.meta, "md5": None},  # check_integrity(path, None) only tests existence
    })


def _cifar_files(cls: type) -> tuple[str, ...]:
    names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return tuple(f"{cls.base_folder}/{f}" for f in names)


def _probe_cifar(path: Path) -> None:
    """Read one CIFAR file as :func:`_read_cifar` does and check the entries it uses."""
    entry = load_data_pickle(path)
    if not isinstance(entry, dict):
        raise ValueError(f"expected a pickled dict, got {type(entry).__name__}")
    if path.name in ("batches.meta", "meta"):
        if not any(k in entry for k in ("label_names", "fine_label_names")):
            raise ValueError(f"no label names (keys: {', '.join(map(str, entry))})")
        return
    if "data" not in entry or not ({"labels", "fine_labels"} & set(entry)):
        raise ValueError(f"expected keys 'data' and 'labels' or 'fine_labels', found {', '.join(map(str, entry))}")
    data = np.asarray(entry["data"])
    if data.dtype != np.uint8 or data.size % 3072:
        raise ValueError(f"'data' must be uint8 rows of 3072 values, got {data.dtype} of shape {data.shape}")


@dataclass
class _CIFARSplit:
    """What the loaders use of a torchvision CIFAR dataset: ``data`` N x H x W x C, ``targets``, ``classes``."""

    data: np.ndarray
    targets: list[int]
    classes: list[str]


def _read_cifar(path: Path, cls: type, train: bool) -> _CIFARSplit:
    """One CIFAR split, read as torchvision reads it but through :func:`load_data_pickle`: the files are
    pickles, and torchvision would run any code a crafted one names."""
    folder = path / cls.base_folder
    data, targets = [], []
    for file_name, _ in (cls.train_list if train else cls.test_list):
        entry = load_data_pickle(folder / file_name)
        data.append(entry["data"])
        targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    classes = load_data_pickle(folder / cls.meta["filename"])[cls.meta["key"]]
    return _CIFARSplit(np.vstack(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), targets, list(classes))


def _load_cifar(name: str, library_name: str, num_classes: int, mean: tuple[float, ...],
                std: tuple[float, ...], root: str | os.PathLike[str] | None, resize: int | None,
                option: str = "--data-root") -> ImageDataset:
    """``option``: how the user gave ``root``, for messages (``clean_root`` when cifar10-c reads CIFAR-10)."""
    path = _require_root(name, root, CIFAR_FOLDERS[library_name] + "/", option)  # a missing root needs no torchvision
    cls = _cifar_class(library_name)
    base = getattr(_tvd(), library_name)  # the torchvision class, for its download URL and name
    files = _cifar_files(cls)
    howto = (f"get them with `python -c \"import torchvision; torchvision.datasets.{base.__name__}('{path}', "
             f"download=True)\"` on a machine with internet, or extract {base.url} into {path}")
    _require_files(name, path, files, howto, option)
    splits = {}
    classes: Sequence[str] = ()
    for train in (True, False):
        ds = _load(name, path, files, howto, lambda: _read_cifar(path, cls, train), _probe_cifar)
        # torchvision keeps an N x H x W x C view of N x C x H x W uint8 data; permuting back copies nothing.
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
        labels = torch.as_tensor(ds.targets, dtype=torch.long)
        listed = [f for f, _ in (cls.train_list if train else cls.test_list)]
        _check_split(name, images, labels, num_classes, f"{path / cls.base_folder}/{{{','.join(listed)}}}")
        splits[train] = UInt8Images(images, labels, resize)
        classes = ds.classes
    info = _info(name, num_classes, splits[True], mean, std, classes, {"resize": resize})
    return ImageDataset(info, splits[True], splits[False])


def load_cifar10(root: str | os.PathLike[str] | None = None, resize: int | None = None) -> ImageDataset:
    """CIFAR-10 from ``ROOT/cifar-10-batches-py`` (32x32 colour images, 10 classes)."""
    return _load_cifar("cifar10", "CIFAR10", 10, CIFAR10_MEAN, CIFAR10_STD, root, resize)


def load_cifar100(root: str | os.PathLike[str] | None = None, resize: int | None = None) -> ImageDataset:
    """CIFAR-100 from ``ROOT/cifar-100-python`` (32x32 colour images, 100 fine classes)."""
    return _load_cifar("cifar100", "CIFAR100", 100, CIFAR100_MEAN, CIFAR100_STD, root, resize)


# --- STL-10 --------------------------------------------------------------------------------

STL10_SPLIT_FILES = {True: ("train_X.bin", "train_y.bin"), False: ("test_X.bin", "test_y.bin")}
STL10_FILES = tuple(f"stl10_binary/{f}" for pair in STL10_SPLIT_FILES.values() for f in pair)
_STL10_IMAGE_BYTES = 3 * 96 * 96


class _STL10LabelledOnly:
    """Mixin for torchvision's STL10: needs only the labelled files, present in any size (no MD5 check).

    torchvision would also demand the 2.6 GB ``unlabeled_X.bin``, which the labelled splits never read.
    """

    root: str
    base_folder: str

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in STL10_SPLIT_FILES[True]
                   + STL10_SPLIT_FILES[False])


@functools.cache
def _stl10_class() -> type:
    """torchvision's STL10 with :class:`_STL10LabelledOnly`'s integrity check."""
    return type("_STL10", (_STL10LabelledOnly, _tvd().STL10),
                {"__module__": __name__, "__doc__": _STL10LabelledOnly.__doc__})


def _probe_stl10(path: Path) -> None:
    size = path.stat().st_size
    if path.name.endswith("_X.bin") and (size == 0 or size % _STL10_IMAGE_BYTES):
        raise ValueError(f"{size} bytes is not a whole number of 3x96x96 images ({_STL10_IMAGE_BYTES} bytes each)")
    if path.name.endswith("_y.bin") and size == 0:
        raise ValueError("empty label file")


def load_stl10(root: str | os.PathLike[str] | None = None, resize: int | None = None) -> ImageDataset:
    """STL-10's labelled splits from ``ROOT/stl10_binary`` (96x96 colour images, 10 classes)."""
    path = _require_root("stl10", root, "stl10_binary/")
    howto = (f"get them with `python -c \"import torchvision; torchvision.datasets.STL10('{path}', split='train', "
             f"download=True)\"` on a machine with internet, or extract {_tvd().STL10.url} into {path}")
    _require_files("stl10", path, STL10_FILES, howto)
    splits = {}
    classes: Sequence[str] = STL10_NAMES
    for train in (True, False):
        split_files = tuple(f"stl10_binary/{f}" for f in STL10_SPLIT_FILES[train])
        # Check sizes first: torchvision's reshape would fail without naming the file.
        _blame("stl10", path, split_files, howto, _probe_stl10)
        split = "train" if train else "test"
        ds = _load("stl10", path, split_files, howto, lambda: _stl10_class()(str(path), split=split), _probe_stl10)
        # torchvision already turned the column-major files into N x C x H x W and labels 1..10 into 0..9
        # (as uint8, so a stray 0 wraps to 255 and fails the range check below).
        images = torch.from_numpy(ds.data)  # a transposed view; items are copied one at a time
        labels = torch.from_numpy(ds.labels.astype(np.int64))
        _check_split("stl10", images, labels, 10, f"{path}/stl10_binary/{{{','.join(STL10_SPLIT_FILES[train])}}}")
        splits[train] = UInt8Images(images, labels, resize)
        classes = getattr(ds, "classes", None) or STL10_NAMES  # class_names.txt is optional
    info = _info("stl10", 10, splits[True], STL10_MEAN, STL10_STD, classes, {"resize": resize})
    return ImageDataset(info, splits[True], splits[False])


ROOT_PARAMS = (RESIZE,)


# --- imagefolder: your own images, one sub-folder per class ---------------------------------

#: The file endings torchvision's ImageFolder reads (case-insensitive); other files are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Names of the split folders of a pre-split tree (test/ is used when both test/ and val/ exist).
SPLIT_FOLDERS = ("train", "test", "val")
IMAGEFOLDER_LAYOUT = ("ROOT/<class>/<image> (one sub-folder per class; .png, .jpg, .bmp, ... images), or "
                      "ROOT/train/<class>/<image> with ROOT/test/<class>/<image> (or ROOT/val/...)")


def _visible_folders(folder: Path) -> list[str]:
    """Sub-folder names, sorted as torchvision sorts classes; hidden ones (.ipynb_checkpoints, ...) skipped."""
    return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir())


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` (as torchvision walks it), in sorted order; hidden ones skipped."""
    found: list[Path] = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(here) / f for f in sorted(files) if _is_image_name(f)]
    return found


def _presplit(root: Path) -> tuple[Path, Path] | None:
    """``(ROOT/train, ROOT/test or ROOT/val)`` when ``root`` is a pre-split tree."""
    if not (root / "train").is_dir():
        return None
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / "train", root / name
    return None


def _holds_class_folders(folder: Path) -> bool:
    """Whether ``folder`` is an imagefolder root (what a class folder or image inside it should be told to use)."""
    if not folder.is_dir():
        return False
    if _presplit(folder) is not None:
        return True
    # ROOT/train/ of a pre-split tree holds class folders too, but ROOT is the answer.
    return bool(_visible_folders(folder)) and not (folder.name in SPLIT_FOLDERS and _presplit(folder.parent))


def _imagefolder_root(root: str | os.PathLike[str] | None) -> Path:
    """``root`` as the folder of a class-folder tree, or a one-line error naming the layout expected."""
    path = _require_root("imagefolder", root, "one sub-folder per class")
    if path.is_file():
        if _is_image_name(path.name):  # an image inside a class folder
            _refuse_too_deep("imagefolder", path, _holds_class_folders, 3, "one sub-folder per class")
        raise RobustkitError(f"dataset 'imagefolder': --data-root {path} is a file; give the folder of "
                             f"{IMAGEFOLDER_LAYOUT}")
    if not path.is_dir():
        raise RobustkitError(f"dataset 'imagefolder': folder {path} does not exist; expected {IMAGEFOLDER_LAYOUT}")
    if not _visible_folders(path):
        if any(e.is_file() and _is_image_name(e.name) for e in os.scandir(path)):  # a class folder
            _refuse_too_deep("imagefolder", path, _holds_class_folders, 2, "one sub-folder per class")
            raise RobustkitError(f"dataset 'imagefolder': {path} holds images but no class folders; put them in "
                                 f"one sub-folder per class: {IMAGEFOLDER_LAYOUT}")
        raise RobustkitError(f"dataset 'imagefolder': {path} holds no class folders; expected {IMAGEFOLDER_LAYOUT}")
    return path


def _scan_classes(tree: Path, classes: Sequence[str] | None) -> tuple[list[str], list[Path], list[int]]:
    """Class names, image paths and labels of one class-folder tree. ``classes``: the training split's classes,
    which a test tree's folders must be among (a test tree may lack some, or leave some empty)."""
    found = _visible_folders(tree)
    training = classes is None
    if classes is None:
        classes = found
        if not classes:
            raise RobustkitError(f"dataset 'imagefolder': {tree} holds no class folders; expected "
                                 f"{tree}/<class>/<image>")
        if len(classes) < 2:
            only = tree / classes[0]
            raise RobustkitError(
                f"dataset 'imagefolder': {tree} holds one class folder ({classes[0]}); a classifier needs at least "
                f"two: point --data-root at the folder with one sub-folder per class (if {only} is it, use it)")
    else:
        for extra in (c for c in found if c not in classes):
            if _images_under(tree / extra):
                raise RobustkitError(
                    f"dataset 'imagefolder': {tree / extra} is a class the training folder lacks; every test class "
                    f"must also have a training folder ({', '.join(classes)})")
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        files = _images_under(tree / name) if (tree / name).is_dir() else []
        if not files and training:
            raise RobustkitError(
                f"dataset 'imagefolder': class folder {tree / name} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add some or remove the folder")
        paths += files
        labels += [index] * len(files)
    return list(classes), paths, labels


def _is_grey(image: Any) -> bool:
    """A PIL image stored greyscale: 1-bit, 8-bit, 16/32-bit integer or float, with or without alpha."""
    return image.getbands()[0] in ("1", "L", "I", "F")


def _image_headers(paths: Sequence[Path]) -> list[tuple[tuple[int, int], bool]]:
    """``((width, height), greyscale)`` of every file, from its header only; unreadable files named in one line."""
    from PIL import Image

    out = []
    for path in paths:
        try:
            with Image.open(path) as image:
                size, grey, mode = image.size, _is_grey(image), image.mode
        except Exception as err:
            raise RobustkitError(f"dataset 'imagefolder': {path} is not an image PIL can read "
                                 f"({one_line(err, typed=True)}); remove or replace it") from None
        if mode in ("I", "F"):  # PIL would clip them to 0..255; their range is unknown
            raise RobustkitError(f"dataset 'imagefolder': {path} holds 32-bit {'float' if mode == 'F' else 'integer'} "
                                 "pixels, whose range is unknown; save it with 8- or 16-bit pixels")
        out.append((size, grey))
    return out


class ImageFiles(Dataset):
    """Image files decoded one item at a time with PIL (``convert('L')`` or ``convert('RGB')``, as torchvision's
    loader does), scaled to [0, 1] and resized like the other datasets.

    :param paths: image files.
    :param labels: one class index per file.
    :param channels: 1 or 3.
    :param resize: optional side length each item is resized to.
    :param size: ``(H, W)`` every file has when ``resize`` is None.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], channels: int, resize: int | None,
                 size: tuple[int, int]):
        self.paths = list(paths)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.channels = channels
        self.resize = resize
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as image:
                if image.mode.startswith("I;16"):  # 16-bit grey: scaled, where PIL's convert would clip at 255
                    pixels, top = np.array(image).astype(np.float32), 65535.0
                else:
                    pixels, top = np.array(image.convert("L" if self.channels == 1 else "RGB")), 255.0
        except Exception as err:
            raise RobustkitError(f"dataset 'imagefolder': {path} could not be decoded ({one_line(err, typed=True)}); "
                                 "remove or replace it") from None
        tensor = torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1).float().div_(top)
        if tensor.shape[0] != self.channels:  # 16-bit grey in an RGB dataset
            tensor = tensor.expand(self.channels, -1, -1).contiguous()
        if self.resize is not None:
            tensor = resize_images(tensor.unsqueeze(0), self.resize).squeeze(0)
        elif tuple(tensor.shape[1:]) != self.size:
            raise RobustkitError(f"dataset 'imagefolder': {path} is now {tensor.shape[2]}x{tensor.shape[1]}, not "
                                 f"{self.size[1]}x{self.size[0]} like the others (width x height); pass resize=N")
        return tensor, int(self.labels[index])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w = (self.resize, self.resize) if self.resize is not None else self.size
        return self.channels, h, w


def load_imagefolder(root: str | os.PathLike[str] | None = None, resize: int | None = None,
                     channels: int | None = None, test_fraction: float = 0.2, split_seed: int = 0) -> ImageDataset:
    """Your own images from a class-folder tree (as torchvision's ImageFolder reads it).

    Layouts: ``ROOT/<class>/<image>``, split per class by ``test_fraction`` (see :func:`split_by_class`), or
    ``ROOT/train/<class>/...`` with ``ROOT/test/<class>/...`` (or ``ROOT/val/...``; test/ wins when both
    exist). Classes are the sorted sub-folder names (of train/ in a pre-split tree; a test tree may lack
    some), so label indices match torchvision's; images may sit at any depth below their class folder, and
    hidden files and folders are skipped.

    :param resize: resize every image to ``resize x resize`` (aspect ratio not kept); without it every
        image must have the same size.
    :param channels: 1 or 3; None: 1 when every file is stored greyscale (PIL modes 1, L, LA, I;16), else 3
        (palette images count as colour). Recorded resolved, so a checkpoint reloads the same way. Pixels
        are converted by PIL as torchvision does, except 16-bit grey (scaled by 65535, not clipped at 255);
        32-bit integer or float images are refused (their range is unknown).
    :param test_fraction: share of each class held out when ROOT is not pre-split.
    :param split_seed: seed of that split and of the test images' order (shuffled in both layouts, so that
        ``--n-examples N`` takes images of every class).

    Mean/std are computed from the training images as served (after ``channels`` and ``resize``): all of
    them, or :data:`STATS_IMAGES` evenly spaced ones when there are more.
    """
    path = _imagefolder_root(root)
    trees = _presplit(path)
    if trees is None:
        found = _visible_folders(path)
        if set(found) <= set(SPLIT_FOLDERS):  # split folders without their partner, not classes
            problem = (f"train/ but no test/ or val/ beside it; add {path / 'test'}/<class>/..., or use "
                       f"{path / 'train'} to split it by test_fraction" if "train" in found else
                       f"{' and '.join(f + '/' for f in found)} but no train/ beside it; add "
                       f"{path / 'train'}/<class>/...")
            raise RobustkitError(f"dataset 'imagefolder': {path} holds {problem}")
        classes, paths, labels = _scan_classes(path, None)
        train_idx, test_idx = split_by_class(np.asarray(labels), test_fraction, split_seed)
        if not len(test_idx):
            raise RobustkitError(
                f"dataset 'imagefolder': test_fraction={test_fraction} of the {len(paths)} images under {path} leaves "
                "no test images (each class gives round(fraction x its count), keeping one for training); add "
                "images, raise test_fraction, or give train/ and test/ folders")
        train_paths, train_labels = [paths[i] for i in train_idx], [labels[i] for i in train_idx]
        test_paths, test_labels = [paths[i] for i in test_idx], [labels[i] for i in test_idx]
    else:
        classes, train_paths, train_labels = _scan_classes(trees[0], None)
        _, test_paths, test_labels = _scan_classes(trees[1], classes)
        if not test_paths:
            raise RobustkitError(f"dataset 'imagefolder': {trees[1]} holds no images; expected "
                                 f"{trees[1]}/<class>/<image>")
        order = np.random.default_rng(split_seed).permutation(len(test_paths))
        test_paths, test_labels = [test_paths[i] for i in order], [test_labels[i] for i in order]
    headers = _image_headers(train_paths + test_paths)
    (w, h), _ = headers[0]
    if resize is None:
        for other, ((ow, oh), _) in zip(train_paths + test_paths, headers):
            if (ow, oh) != (w, h):
                raise RobustkitError(
                    f"dataset 'imagefolder': images differ in size: {(train_paths + test_paths)[0]} is {w}x{h} but "
                    f"{other} is {ow}x{oh} (width x height); pass resize=N (--dataset-param resize=N) to resize "
                    "every image to N x N")
    channels = channels or (1 if all(grey for _, grey in headers) else 3)
    train = ImageFiles(train_paths, train_labels, channels, resize, (h, w))
    test = ImageFiles(test_paths, test_labels, channels, resize, (h, w))
    mean, std = channel_stats(_item_batches(train, _stats_indices(len(train))))
    info = _info("imagefolder", len(classes), train, mean, std, classes,
                 {"resize": resize, "channels": channels, "test_fraction": test_fraction, "split_seed": split_seed})
    return ImageDataset(info, train, test)


TEST_FRACTION = Param("test_fraction", float, 0.2, "share of each class held out for testing when the data has no "
                      "test split", low=0.0, high=0.9, low_open=True)
IMAGEFOLDER_PARAMS = (
    RESIZE,
    Param("channels", int, None, "1 (grey) or 3 (RGB); none: 1 when every image file is greyscale, else 3",
          choices=(1, 3), optional=True),
    TEST_FRACTION,
    Param("split_seed", int, 0, "seed of the train/test split and of the test images' order"),
)


# --- tensors: your own arrays in a .npz or .safetensors file --------------------------------

TENSOR_SUFFIXES = (".npz", ".safetensors")
TENSORS_LAYOUT = ("a .npz or .safetensors file with arrays x (images) and y (labels), optionally x_test and y_test, "
                  "or a folder holding train.npz (or train.safetensors) and optionally test.npz (or "
                  "test.safetensors), each with x and y")
_SAVE_HINT = "save them with numpy.savez(FILE.npz, x=images, y=labels)"


def _tensor_files(root: str | os.PathLike[str] | None) -> tuple[Path, Path | None]:
    """The training file and the optional test file that ``root`` names."""
    if root is None:
        raise RobustkitError("dataset 'tensors' reads local arrays: pass --data-root FILE.npz (root= in Python): "
                             f"{TENSORS_LAYOUT}")
    path = Path(root).expanduser()
    if path.is_file():
        if path.suffix.lower() not in TENSOR_SUFFIXES:
            raise RobustkitError(f"dataset 'tensors': {path} is not a .npz or .safetensors file; expected "
                                 f"{TENSORS_LAYOUT} ({_SAVE_HINT})")
        return path, None
    if not path.is_dir():
        raise RobustkitError(f"dataset 'tensors': {path} does not exist; expected {TENSORS_LAYOUT}")
    found = {split: [path / f"{split}{s}" for s in TENSOR_SUFFIXES if (path / f"{split}{s}").is_file()]
             for split in ("train", "test")}
    for split, files in found.items():
        if len(files) > 1:
            raise RobustkitError(f"dataset 'tensors': {path} holds both {files[0].name} and {files[1].name}; "
                                 "keep one")
    if not found["train"]:
        others = sorted(p.name for p in path.iterdir() if p.suffix.lower() in TENSOR_SUFFIXES)
        if not others:
            _refuse_too_deep("tensors", path, lambda f: any((f / f"train{s}").is_file() for s in TENSOR_SUFFIXES),
                             1, "train.npz")
        seen = f" (it holds {', '.join(others)}: pass the file itself)" if others else ""
        raise RobustkitError(f"dataset 'tensors': folder {path} holds no train.npz or train.safetensors{seen}; "
                             f"expected {TENSORS_LAYOUT}")
    return found["train"][0], (found["test"] or [None])[0]


def _read_arrays(path: Path, keys: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays of ``path`` named in ``keys`` (no others are read), and the names of all its arrays."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                names = list(f.keys())
                return {k: f.get_tensor(k) for k in keys if k in names}, names
        except Exception as err:
            raise RobustkitError(f"dataset 'tensors': {path} is corrupt or not a .safetensors file of NumPy-readable "
                                 f"arrays ({one_line(err, typed=True)}); {_SAVE_HINT}") from None
    with open(path, "rb") as handle:
        head = handle.read(6)
    if head[:2] != b"PK":  # a .npz is a zip archive of .npy files
        kind = ("a single .npy array, not named arrays" if head == b"\x93NUMPY" else
                "a pickle, which is never loaded" if head[:1] == b"\x80" else "not a .npz (zip) file")
        raise RobustkitError(f"dataset 'tensors': {path} is {kind}; {_SAVE_HINT}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            arrays = {}
            for key in (k for k in keys if k in names):
                try:
                    arrays[key] = npz[key]
                except ValueError as err:
                    if "allow_pickle" not in str(err):
                        raise
                    raise RobustkitError(
                        f"dataset 'tensors': {path}: array '{key}' is an object array (pickled Python objects), "
                        "which is never loaded (allow_pickle=False); save numeric arrays, e.g. "
                        f"numpy.savez(FILE.npz, x=x.astype(numpy.uint8), y=y.astype(numpy.int64))") from None
            return arrays, names
    except RobustkitError:
        raise
    except Exception as err:
        raise RobustkitError(f"dataset 'tensors': {path} is corrupt or not a .npz file ({one_line(err, typed=True)}); "
                             f"{_SAVE_HINT}") from None


def _pick(path: Path, arrays: dict[str, np.ndarray], names: Sequence[str], options: Sequence[str]) -> str:
    """The one name of ``options`` that ``path`` holds."""
    present = [k for k in options if k in arrays]
    if len(present) > 1:
        raise RobustkitError(f"dataset 'tensors': {path} holds both '{present[0]}' and '{present[1]}'; keep one")
    if not present:
        alias = f" (or '{options[1]}')" if len(options) > 1 else ""
        raise RobustkitError(f"dataset 'tensors': {path} has no array '{options[0]}'{alias}; it holds "
                             f"{', '.join(repr(n) for n in names) or 'no arrays'}; expected {TENSORS_LAYOUT}")
    return present[0]


def _native(array: np.ndarray) -> np.ndarray:
    """``array`` in native byte order and writable, as torch.from_numpy needs."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array if array.flags.writeable else array.copy()


def _images_from_array(path: Path, key: str, x: np.ndarray, layout: str) -> torch.Tensor:
    """``x`` as an N x C x H x W tensor (uint8, or float32 in [0, 1]); see :func:`load_tensors` for the rules."""
    where = f"dataset 'tensors': {path}: array '{key}'"
    shapes = "N x H x W, N x H x W x C or N x C x H x W with C = 1 or 3"
    channels_last, shape = False, x.shape
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        last, first = x.shape[3] in (1, 3), x.shape[1] in (1, 3)
        if layout == "auto" and last and first:
            raise RobustkitError(f"{where} has shape {x.shape}, which could be N x H x W x C or N x C x H x W; pass "
                                 "layout=nhwc or layout=nchw")
        channels_last = layout == "nhwc" or (layout == "auto" and last)
        if x.shape[3 if channels_last else 1] not in (1, 3):
            chosen = "" if layout == "auto" else f" (layout={layout})"
            raise RobustkitError(f"{where} has shape {x.shape}{chosen}: expected {shapes}")
    else:
        raise RobustkitError(f"{where} has shape {x.shape}: expected {shapes}")
    if x.shape[0] == 0 or min(x.shape[1:]) == 0:
        raise RobustkitError(f"{where} has shape {shape}: it holds no images, or images without pixels")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise RobustkitError(f"{where} holds NaN or infinite values; replace them (float images must lie in "
                                 "[0, 1])")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise RobustkitError(f"{where} holds values in [{lo:.4g}, {hi:.4g}]; float images must lie in [0, 1]: "
                                 "scale them (pixels 0..255: divide by 255, or store them as uint8)")
        x = x.astype(np.float32, copy=False)
    elif x.dtype != np.uint8:
        raise RobustkitError(f"{where} holds {x.dtype} values; store uint8 pixels 0..255 or float in [0, 1] (e.g. "
                             "x.astype(numpy.uint8) for whole numbers 0..255)")
    images = torch.from_numpy(_native(x))
    return images.permute(0, 3, 1, 2) if channels_last else images


def _labels_from_array(path: Path, key: str, y: np.ndarray, n: int, images_key: str) -> torch.Tensor:
    where = f"dataset 'tensors': {path}: array '{key}'"
    if not np.issubdtype(y.dtype, np.integer):
        raise RobustkitError(f"{where} holds {y.dtype} values; labels must be integer class indices 0..K-1 "
                             "(y.astype(numpy.int64) if they are whole numbers)")
    if y.ndim != 1:
        raise RobustkitError(f"{where} has shape {y.shape}; labels must be 1-D, one per image (y.reshape(-1))")
    if len(y) != n:
        raise RobustkitError(f"{where} holds {len(y)} labels but '{images_key}' holds {n} images; give one label "
                             "per image")
    if int(y.min()) < 0:
        raise RobustkitError(f"{where} holds label {int(y.min())}; labels must be class indices 0..K-1")
    return torch.from_numpy(_native(y).astype(np.int64))


def _split_arrays(path: Path, arrays: dict[str, np.ndarray], names: Sequence[str], images_keys: Sequence[str],
                  labels_keys: Sequence[str], layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    xk, yk = _pick(path, arrays, names, images_keys), _pick(path, arrays, names, labels_keys)
    images = _images_from_array(path, xk, arrays[xk], layout)
    return images, _labels_from_array(path, yk, arrays[yk], len(images), xk)


def load_tensors(root: str | os.PathLike[str] | None = None, layout: str = "auto", test_fraction: float = 0.2,
                 split_seed: int = 0, resize: int | None = None) -> ImageDataset:
    """Your own arrays: ``root`` is a ``.npz`` / ``.safetensors`` file, or a folder with ``train.npz`` and
    optionally ``test.npz`` (or the ``.safetensors`` equivalents; one format per split).

    Arrays: ``x`` (also accepted as ``x_train``) and ``y`` (or ``y_train``); the test split is ``x_test`` /
    ``y_test`` of the same file, or ``x`` / ``y`` of the folder's test file, or else a stratified split by
    ``test_fraction`` and ``split_seed`` (:func:`split_by_class`). Other arrays are ignored and never read.

    * ``x``: uint8 0..255, or float (16/32/64-bit) in [0, 1] without NaN; ``N x H x W`` (grey),
      ``N x H x W x C`` or ``N x C x H x W`` with C 1 or 3. With ``layout=auto`` a 4-D array whose last axis
      is 1 or 3 is channels-last, else one whose axis 1 is 1 or 3 is channels-first; when both are
      (e.g. 3 x 3 images) give ``layout=nhwc`` or ``nchw``.
    * ``y``: 1-D integer class indices, one per image; ``num_classes`` is the largest label + 1.

    ``.npz`` files are read with ``allow_pickle=False`` (object arrays refused); mean/std are computed
    from the training images as served, as for ``imagefolder``. Class names are not stored.
    """
    train_file, test_file = _tensor_files(root)
    arrays, names = _read_arrays(train_file, ("x", "x_train", "y", "y_train", "x_test", "y_test"))
    x, y = _split_arrays(train_file, arrays, names, ("x", "x_train"), ("y", "y_train"), layout)
    has_test = [k for k in ("x_test", "y_test") if k in arrays]
    if test_file is not None:
        if has_test:
            raise RobustkitError(f"dataset 'tensors': {train_file} holds '{has_test[0]}' and {test_file} exists; "
                                 "keep the test split in one place")
        t_arrays, t_names = _read_arrays(test_file, ("x", "x_test", "y", "y_test"))
        x_test, y_test = _split_arrays(test_file, t_arrays, t_names, ("x", "x_test"), ("y", "y_test"), layout)
        test_source = str(test_file)
    elif has_test:
        x_test, y_test = _split_arrays(train_file, arrays, names, ("x_test",), ("y_test",), layout)
        test_source = f"{train_file}: array 'x_test'"
    else:
        train_idx, test_idx = split_by_class(y.numpy(), test_fraction, split_seed)
        if not len(test_idx):
            raise RobustkitError(
                f"dataset 'tensors': test_fraction={test_fraction} of the {len(y)} images of {train_file} leaves no "
                "test images (each class gives round(fraction x its count), keeping one for training); add images, "
                "raise test_fraction, or give x_test and y_test")
        x_test, y_test = x[torch.from_numpy(test_idx)], y[torch.from_numpy(test_idx)]
        x, y = x[torch.from_numpy(train_idx)], y[torch.from_numpy(train_idx)]
        test_source = ""
    if test_source and tuple(x_test.shape[1:]) != tuple(x.shape[1:]):
        raise RobustkitError(f"dataset 'tensors': {test_source} holds C x H x W = {tuple(x_test.shape[1:])} images "
                             f"but the training images of {train_file} are {tuple(x.shape[1:])}; give both splits "
                             "the same shape")
    num_classes = int(max(int(y.max()), int(y_test.max()))) + 1
    if num_classes < 2:
        raise RobustkitError(f"dataset 'tensors': every label in {train_file} is 0; a classifier needs at least two "
                             "classes")
    train, test = _held_images(x, y, resize), _held_images(x_test, y_test, resize)
    mean, std = channel_stats(_item_batches(train, _stats_indices(len(train))))
    info = _info("tensors", num_classes, train, mean, std, (),
                 {"layout": layout, "test_fraction": test_fraction, "split_seed": split_seed, "resize": resize})
    return ImageDataset(info, train, test)


TENSORS_PARAMS = (
    Param("layout", str, "auto", "axis order of 4-D x: auto (channels-last when the last axis is 1 or 3), nhwc "
          "or nchw", choices=("auto", "nhwc", "nchw")),
    TEST_FRACTION,
    Param("split_seed", int, 0, "seed of the train/test split when the file has no test arrays"),
    RESIZE,
)


# --- CIFAR-10-C: corrupted CIFAR-10 test images ---------------------------------------------

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10C_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "gaussian_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression", "spatter", "saturate",
)
CIFAR10C_SEVERITIES = 5
CIFAR10C_FOLDER = "CIFAR-10-C"
CIFAR10C_HOWTO = ("get CIFAR-10-C (Hendrycks & Dietterich; CIFAR-10-C.tar from zenodo.org/records/2535967) on a "
                  "machine with internet and extract it: ROOT is the extracted CIFAR-10-C folder")


class TestOnlySplit(Dataset):
    """The training split of a test-only dataset: any use (its length included) raises ``message``."""

    def __init__(self, message: str):
        self.message = message

    def __len__(self) -> int:
        raise RobustkitError(self.message)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise RobustkitError(self.message)


def _load_npy(path: Path) -> np.ndarray:
    """A memory-mapped ``.npy`` (nothing read yet), never unpickled."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
        text = str(err)
        if "pickle" in text or "Python objects" in text:
            raise RobustkitError(f"dataset 'cifar10-c': {path} holds pickled Python objects, which are never loaded "
                                 f"(allow_pickle=False); replace it with the original file; {CIFAR10C_HOWTO}") from None
        raise RobustkitError(f"dataset 'cifar10-c': {path} is corrupt or not a .npy file "
                             f"({one_line(err, typed=True)}); {CIFAR10C_HOWTO}") from None
    if not isinstance(array, np.ndarray):
        raise RobustkitError(f"dataset 'cifar10-c': {path} is a .npz archive, not a .npy array; {CIFAR10C_HOWTO}")
    return array


def load_cifar10c(root: str | os.PathLike[str] | None = None, corruption: str | None = None,
                  severity: int | None = None, clean_root: str | os.PathLike[str] | None = None,
                  resize: int | None = None) -> ImageDataset:
    """CIFAR-10-C (test-only): the 10,000 CIFAR-10 test images with one corruption at one severity.

    ``ROOT`` is the extracted ``CIFAR-10-C`` folder: ``labels.npy`` and one ``<corruption>.npy`` per
    corruption, each holding the 5 severities one after another (severity 1 first), so any N divisible by 5
    works (50,000 in the original files). Both are memory-mapped with ``allow_pickle=False``: only the
    chosen severity's slice is read.

    :param corruption: one of :data:`CIFAR10C_CORRUPTIONS` (required).
    :param severity: 1..5 (required).
    :param clean_root: a folder holding ``cifar-10-batches-py/``: its clean CIFAR-10 training set becomes the
        train split. Without it the train split raises a one-line error on any use (training included).

    CIFAR-10's published mean/std and class names are used, so models trained on cifar10 fit unchanged.
    """
    if corruption is None:
        raise RobustkitError("dataset 'cifar10-c' needs a corruption: pass --dataset-param corruption=NAME "
                             f"(corruption= in Python), one of {', '.join(CIFAR10C_CORRUPTIONS)}")
    if corruption not in CIFAR10C_CORRUPTIONS:
        raise RobustkitError(f"dataset 'cifar10-c': unknown corruption {corruption!r}; use one of "
                             f"{', '.join(CIFAR10C_CORRUPTIONS)}")
    if severity is None or not 1 <= severity <= CIFAR10C_SEVERITIES:
        raise RobustkitError("dataset 'cifar10-c' needs a severity from 1 to 5: pass --dataset-param severity=N "
                             "(severity= in Python)")
    path = _require_root("cifar10-c", root, f"labels.npy and <corruption>.npy (the extracted {CIFAR10C_FOLDER}/)")
    files = ("labels.npy", f"{corruption}.npy")
    if not (path / "labels.npy").is_file() and (path / CIFAR10C_FOLDER / "labels.npy").is_file():
        raise RobustkitError(f"dataset 'cifar10-c': --data-root {path} holds {CIFAR10C_FOLDER}/ but not its files; "
                             f"use {path / CIFAR10C_FOLDER}")
    _require_files("cifar10-c", path, files, CIFAR10C_HOWTO)
    images, labels = _load_npy(path / files[1]), _load_npy(path / files[0])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) == 0 \
            or len(images) % CIFAR10C_SEVERITIES:
        raise RobustkitError(f"dataset 'cifar10-c': {path / files[1]} holds {images.dtype} of shape {images.shape}; "
                             f"expected uint8 N x 32 x 32 x 3 with N = 5 severities x the images of each (50000 in "
                             f"the original); {CIFAR10C_HOWTO}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise RobustkitError(f"dataset 'cifar10-c': {path / files[0]} holds {labels.dtype} of shape {labels.shape}; "
                             f"expected one integer label per image; {CIFAR10C_HOWTO}")
    per = len(images) // CIFAR10C_SEVERITIES
    if len(labels) != len(images):
        raise RobustkitError(f"dataset 'cifar10-c': {path / files[0]} holds {len(labels)} labels but "
                             f"{path / files[1]} holds {len(images)} images; the files are truncated or from "
                             "different downloads")
    chosen = slice((severity - 1) * per, severity * per)
    x = torch.from_numpy(np.array(images[chosen])).permute(0, 3, 1, 2)  # reads this severity's slice only
    y = torch.from_numpy(np.array(labels[chosen]).astype(np.int64))
    _check_split("cifar10-c", x, y, 10, f"{path}/{{{','.join(files)}}} (severity {severity})")
    test = UInt8Images(x, y, resize)
    if clean_root is not None:
        train: Dataset = _load_cifar("cifar10-c", "CIFAR10", 10, CIFAR10_MEAN, CIFAR10_STD, clean_root, resize,
                                     option="clean_root").train
    else:
        train = TestOnlySplit(
            "dataset 'cifar10-c' is test-only: it has no training split; pass --dataset-param clean_root=DIR (the "
            "folder that holds cifar-10-batches-py/) to train on clean CIFAR-10, or train on dataset cifar10 and "
            "attack the checkpoint with --dataset cifar10-c")
    info = _info("cifar10-c", 10, test, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_NAMES,
                 {"corruption": corruption, "severity": severity,
                  "clean_root": None if clean_root is None else str(clean_root), "resize": resize})
    return ImageDataset(info, train, test)


CIFAR10C_PARAMS = (
    Param("corruption", str, None, "one of the 19 CIFAR-10-C corruptions, e.g. gaussian_noise (required)",
          choices=CIFAR10C_CORRUPTIONS, optional=True),
    Param("severity", int, None, "corruption severity 1..5 (required)", low=1, high=CIFAR10C_SEVERITIES,
          optional=True),
    Param("clean_root", str, None, "folder holding cifar-10-batches-py/, whose clean training set becomes the "
          "train split; none: test-only", optional=True),
    RESIZE,
)


# --- registration --------------------------------------------------------------------------

#: Default training augmentations (robustkit.augmentation's text), stated per dataset at registration.
NO_AUGMENTATION = "none"
CROP_AND_FLIP = "crop:4:zero,flip"


@hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    """Register digits (embedded), the torchvision datasets and CIFAR-10-C read from ``--data-root``, and the
    user's own data (imagefolder, tensors).

    ``augment`` states each dataset's default training augmentation (:mod:`robustkit.augmentation`): random
    crops with 4 pixels of zero padding and horizontal flips for the natural-image datasets, as every published
    CIFAR adversarial-training recipe uses; none for handwritten digits, where a flip changes the digit.
    Datasets that state nothing (the user's own) get none."""
    register("digits", load_digits_dataset, params=DIGITS_PARAMS,
             description="scikit-learn's 1,797 real 8x8 handwritten digits, embedded (no download)",
             num_classes=10, channels=1, image_size=(8, 8), needs_root=False, source="scikit-learn",
             augment=NO_AUGMENTATION)
    register("mnist", load_mnist, params=ROOT_PARAMS,
             description="MNIST handwritten digits from --data-root (ROOT/MNIST/raw/*-ubyte)",
             num_classes=10, channels=1, image_size=(28, 28), needs_root=True, source="torchvision",
             augment=NO_AUGMENTATION)
    register("cifar10", load_cifar10, params=ROOT_PARAMS,
             description="CIFAR-10 from --data-root (ROOT/cifar-10-batches-py)",
             num_classes=10, channels=3, image_size=(32, 32), needs_root=True, source="torchvision",
             augment=CROP_AND_FLIP)
    register("cifar100", load_cifar100, params=ROOT_PARAMS,
             description="CIFAR-100 (fine labels) from --data-root (ROOT/cifar-100-python)",
             num_classes=100, channels=3, image_size=(32, 32), needs_root=True, source="torchvision",
             augment=CROP_AND_FLIP)
    register("stl10", load_stl10, params=ROOT_PARAMS,
             description="STL-10 labelled train/test splits from --data-root (ROOT/stl10_binary)",
             num_classes=10, channels=3, image_size=(96, 96), needs_root=True, source="torchvision",
             augment=CROP_AND_FLIP)
    register("imagefolder", load_imagefolder, params=IMAGEFOLDER_PARAMS,
             description="your own images from --data-root: one sub-folder per class (or train/ and test/ of them)",
             needs_root=True, source="local files")
    register("tensors", load_tensors, params=TENSORS_PARAMS,
             description="your own arrays from --data-root: a .npz or .safetensors file with x and y",
             needs_root=True, source="local files")
    register("cifar10-c", load_cifar10c, params=CIFAR10C_PARAMS,
             description="CIFAR-10-C corrupted test images from --data-root (ROOT/labels.npy, ROOT/<corruption>.npy)",
             num_classes=10, channels=3, image_size=(32, 32), needs_root=True, source="CIFAR-10-C",
             augment=CROP_AND_FLIP)  # its training split is clean CIFAR-10
