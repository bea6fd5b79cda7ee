"""Built-in datasets: scikit-learn's digits (embedded, no download) and torchvision's MNIST,
CIFAR-10, CIFAR-100 and STL-10 read from a local folder (never downloaded).

Every dataset returns a :class:`robustkit.data.ImageDataset` whose items are
``(float32 C x H x W tensor in [0, 1], label)``. The torchvision datasets keep their uint8 pixels
in memory and convert one item at a time (a full float copy of STL-10 would take 1.4 GB).

Normalization constants (``DatasetInfo.mean`` / ``std``) are fixed per dataset, never computed
from the chosen split, so a model's normalization does not change with ``split_seed`` or
``resize``: the usual published train-set statistics for the torchvision datasets, and the
statistics of all 1,797 digits images (scaled to [0, 1]) for ``digits``.

torchvision verifies MD5 checksums of the CIFAR and STL-10 files; here only their presence is
checked (subclasses override ``_check_integrity``), so files in the official format load whatever
their size. CIFAR's files are pickles: they are read by :func:`robustkit.safe_unpickle.load_data_pickle`,
never by ``pickle.load`` (torchvision's loader would run any code a crafted file names). Anything wrong
with a folder or a file is a one-line :class:`RobustkitError` that names the files expected and how to
get them.

torchvision is imported only inside the MNIST / CIFAR / STL-10 loaders (:func:`_tvd`): importing it
takes seconds (it pulls in ``torch._dynamo``) and registration runs whenever the CLI starts.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from robustkit import hookimpl
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


def _require_root(name: str, root: str | os.PathLike[str] | None, folder: str) -> Path:
    """``root`` as a Path, or a one-line error telling the user to pass ``--data-root``."""
    if root is None:
        raise RobustkitError(
            f"dataset '{name}' reads local files: pass --data-root DIR (root= in Python), the folder that holds "
            f"{folder}/; it is never downloaded"
        )
    return Path(root).expanduser()


def _require_files(name: str, root: Path, files: Sequence[str], howto: str) -> None:
    """One-line error listing the expected files unless all of them exist."""
    missing = [f for f in files if not (root / f).is_file()]
    if not missing:
        return
    expected = ", ".join(str(root / f) for f in files)
    where = f"folder {root} does not exist" if not root.is_dir() else f"missing {', '.join(missing)}"
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


def _info(name: str, num_classes: int, train: UInt8Images | torch.Tensor, mean: tuple[float, ...],
          std: tuple[float, ...], class_names: Sequence[str], params: dict[str, Any]) -> DatasetInfo:
    c, h, w = train.image_shape if isinstance(train, UInt8Images) else tuple(train.shape[1:])
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
    path = _require_root("mnist", root, "MNIST/raw")
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
                std: tuple[float, ...], root: str | os.PathLike[str] | None, resize: int | None) -> ImageDataset:
    path = _require_root(name, root, CIFAR_FOLDERS[library_name])  # a missing --data-root needs no torchvision
    cls = _cifar_class(library_name)
    base = getattr(_tvd(), library_name)  # the torchvision class, for its download URL and name
    files = _cifar_files(cls)
    howto = (f"get them with `python -c \"import torchvision; torchvision.datasets.{base.__name__}('{path}', "
             f"download=True)\"` on a machine with internet, or extract {base.url} into {path}")
    _require_files(name, path, files, howto)
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
    path = _require_root("stl10", root, "stl10_binary")
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


# --- registration --------------------------------------------------------------------------


@hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    """Register digits (embedded) and the torchvision datasets read from ``--data-root``."""
    register("digits", load_digits_dataset, params=DIGITS_PARAMS,
             description="scikit-learn's 1,797 real 8x8 handwritten digits, embedded (no download)",
             num_classes=10, channels=1, image_size=(8, 8), needs_root=False, source="scikit-learn")
    register("mnist", load_mnist, params=ROOT_PARAMS,
             description="MNIST handwritten digits from --data-root (ROOT/MNIST/raw/*-ubyte)",
             num_classes=10, channels=1, image_size=(28, 28), needs_root=True, source="torchvision")
    register("cifar10", load_cifar10, params=ROOT_PARAMS,
             description="CIFAR-10 from --data-root (ROOT/cifar-10-batches-py)",
             num_classes=10, channels=3, image_size=(32, 32), needs_root=True, source="torchvision")
    register("cifar100", load_cifar100, params=ROOT_PARAMS,
             description="CIFAR-100 (fine labels) from --data-root (ROOT/cifar-100-python)",
             num_classes=100, channels=3, image_size=(32, 32), needs_root=True, source="torchvision")
    register("stl10", load_stl10, params=ROOT_PARAMS,
             description="STL-10 labelled train/test splits from --data-root (ROOT/stl10_binary)",
             num_classes=10, channels=3, image_size=(96, 96), needs_root=True, source="torchvision")
