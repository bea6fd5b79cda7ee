"""The built-in datasets plugin: embedded digits, and MNIST / CIFAR / STL-10 read from tiny files
written here in each dataset's real on-disk format."""

from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from robustkit.data import ImageDataset, check_images, stack
from robustkit.errors import ParameterError, RobustkitError
from robustkit.host import make_host
from robustkit.essentials import datasets as plugin

# --- writers for the official file formats -------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST idx file: big-endian magic (0, 0, type 0x08 = uint8, ndim), big-endian dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 5, n_test: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    raw = root / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", arrays["train_x"])
    write_idx(raw / "train-labels-idx1-ubyte", arrays["train_y"])
    write_idx(raw / "t10k-images-idx3-ubyte", arrays["test_x"])
    write_idx(raw / "t10k-labels-idx1-ubyte", arrays["test_y"])
    return arrays


class Py2Str(bytes):
    """A Python 2 ``str``: the official CIFAR pickles were written by Python 2, whose keys load as
    ``str`` under ``encoding='latin1'`` (torchvision) and as ``bytes`` under ``encoding='bytes'``."""


class Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table can be extended
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2str(self, obj: Py2Str) -> None:
        data = bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[Py2Str] = save_py2str


def write_py2_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """N x 3 x 32 x 32 -> the official N x 3072 rows: the red plane row by row, then green, then blue."""
    return images.reshape(len(images), 3072)


def write_cifar(root: Path, hundred: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Tiny CIFAR-10 (5 train batches of 2 + a test batch of 3) or CIFAR-100 (train 6, test 3) files."""
    rng = np.random.default_rng(seed)
    k = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    batches = {"train": ["train"], "test": ["test"]} if hundred else \
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    out: dict[str, np.ndarray] = {}
    for split, names in batches.items():
        xs, ys = [], []
        for name in names:
            n = 6 if hundred and split == "train" else (3 if split == "test" else 2)
            x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            y = rng.integers(0, k, n).tolist()
            entry = {Py2Str(b"batch_label"): Py2Str(name.encode()), Py2Str(b"data"): cifar_rows(x),
                     Py2Str(b"filenames"): [Py2Str(b"img_%d.png" % i) for i in range(n)]}
            if hundred:
                entry[Py2Str(b"fine_labels")] = y
                entry[Py2Str(b"coarse_labels")] = [v // 5 for v in y]
            else:
                entry[Py2Str(b"labels")] = y
            write_py2_pickle(folder / name, entry)
            xs.append(x)
            ys.extend(y)
        out[f"{split}_x"], out[f"{split}_y"] = np.concatenate(xs), np.asarray(ys)
    if hundred:
        meta = {Py2Str(b"fine_label_names"): [Py2Str(b"class%d" % i) for i in range(100)],
                Py2Str(b"coarse_label_names"): [Py2Str(b"super%d" % i) for i in range(20)]}
        write_py2_pickle(folder / "meta", meta)
    else:
        meta = {Py2Str(b"label_names"): [Py2Str(n.encode()) for n in plugin.STL10_NAMES],
                Py2Str(b"num_cases_per_batch"): 10000, Py2Str(b"num_vis"): 3072}
        write_py2_pickle(folder / "batches.meta", meta)
    return out


def write_stl10(root: Path, n_train: int = 3, n_test: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """STL-10 binaries: each channel stored column-major (column by column), labels 1..10 as uint8."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    (folder / "class_names.txt").write_text("\n".join(plugin.STL10_NAMES) + "\n")
    return out


WRITERS = {
    "mnist": write_mnist,
    "cifar10": lambda root: write_cifar(root, hundred=False),
    "cifar100": lambda root: write_cifar(root, hundred=True),
    "stl10": write_stl10,
}
LOADERS = {"mnist": plugin.load_mnist, "cifar10": plugin.load_cifar10, "cifar100": plugin.load_cifar100,
           "stl10": plugin.load_stl10}


def assert_split(split, images: np.ndarray, labels: np.ndarray) -> None:
    """Every item comes back as float v/255 in the file's orientation, with an int label."""
    assert len(split) == len(labels)
    for i in range(len(labels)):
        x, y = split[i]
        assert x.dtype == torch.float32 and isinstance(y, int)
        expected = torch.from_numpy(images[i].astype(np.float32) / 255.0)
        if expected.dim() == 2:  # MNIST files hold H x W; items carry a channel axis
            expected = expected.unsqueeze(0)
        assert x.shape == expected.shape and torch.equal(x, expected)
        assert y == int(labels[i])


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- digits --------------------------------------------------------------------------------


def test_digits_shapes_range_and_labels():
    ds = plugin.load_digits_dataset()
    assert isinstance(ds, ImageDataset)
    assert ds.info.input_shape == (1, 8, 8) and ds.info.num_classes == 10
    assert len(ds.test) == math.ceil(0.25 * 1797) and len(ds.train) + len(ds.test) == 1797
    for split in (ds.train, ds.test):
        x, y = stack(split)
        check_images(x, y, shape=(1, 8, 8))
        assert x.dtype == torch.float32 and y.dtype == torch.long
        assert set(y.tolist()) == set(range(10))
        assert torch.equal(x * 16, (x * 16).round())  # pixel values stay k/16
    # The two splits hold exactly the 1,797 images of scikit-learn, each once.
    digits = load_digits()
    x_all = torch.cat([ds.train.tensors[0], ds.test.tensors[0]])
    y_all = torch.cat([ds.train.tensors[1], ds.test.tensors[1]])
    assert torch.equal(torch.bincount(y_all), torch.from_numpy(np.bincount(digits.target)))
    assert math.isclose(float(x_all.double().sum()), digits.images.sum() / 16, rel_tol=1e-9)
    assert len({tuple(v) for v in (x_all.flatten(1) * 16).round().int().tolist()}) == \
        len({tuple(v) for v in digits.images.reshape(1797, 64).astype(int).tolist()})


def test_digits_split_is_deterministic_and_stratified():
    a, b = plugin.load_digits_dataset(), plugin.load_digits_dataset()
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(a.test.tensors[1], b.test.tensors[1])
    c = plugin.load_digits_dataset(split_seed=1)
    assert not torch.equal(a.test.tensors[1], c.test.tensors[1])
    counts = np.bincount(load_digits().target)
    for frac in (0.25, 0.5):
        test_counts = np.bincount(plugin.load_digits_dataset(test_fraction=frac).test.tensors[1].numpy())
        assert np.all(np.abs(test_counts - counts * frac) <= 1)  # each class in proportion


def test_digits_resize_keeps_range():
    ds = plugin.load_digits_dataset(resize=28)
    assert ds.info.image_size == (28, 28) and ds.info.params["resize"] == 28
    x, y = stack(ds.test)
    check_images(x, y, shape=(1, 28, 28))
    assert x.max() > 0.9  # bright strokes survive the antialiased upscale


# --- through the plugin host ---------------------------------------------------------------


@pytest.fixture
def host(monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "datasets")  # isolate from other plugins
    h = make_host()
    assert not h.failures
    return h


def test_registered_through_entry_point(host, tmp_path):
    assert {"digits", "mnist", "cifar10", "cifar100", "stl10"} <= set(host.datasets.names())
    entry = host.datasets.get("cifar100")
    assert entry.plugin == "datasets" and entry.description and entry.info["num_classes"] == 100
    assert [p.name for p in entry.declared_params(("root",))] == ["resize"]
    # CLI-style string values are converted before the factory runs.
    ds = host.datasets.create("digits", {"resize": "16", "split_seed": "3"}, root=None)
    assert ds.info.input_shape == (1, 16, 16) and ds.info.params["split_seed"] == 3
    arrays = write_mnist(tmp_path)
    ds = host.datasets.create("mnist", {}, root=tmp_path)
    assert_split(ds.test, arrays["test_x"], arrays["test_y"])
    with pytest.raises(ParameterError, match="unknown parameter 'size'"):
        host.datasets.create("digits", {"size": 3})
    with pytest.raises(ParameterError, match="test_fraction"):
        host.datasets.create("digits", {"test_fraction": 0})


# --- torchvision datasets from real-format files --------------------------------------------


def test_mnist_round_trip(tmp_path):
    arrays = write_mnist(tmp_path)
    ds = plugin.load_mnist(tmp_path)
    assert ds.info.input_shape == (1, 28, 28) and ds.info.mean == plugin.MNIST_MEAN
    assert_split(ds.train, arrays["train_x"], arrays["train_y"])
    assert_split(ds.test, arrays["test_x"], arrays["test_y"])


def test_cifar10_round_trip(tmp_path):
    arrays = write_cifar(tmp_path, hundred=False)
    ds = plugin.load_cifar10(str(tmp_path))
    assert ds.info.input_shape == (3, 32, 32) and ds.info.class_names == plugin.STL10_NAMES
    assert_split(ds.train, arrays["train_x"], arrays["train_y"])
    assert_split(ds.test, arrays["test_x"], arrays["test_y"])
    # Orientation: the first 32 values of a row are the top row of the red channel.
    row = cifar_rows(arrays["test_x"])[0]
    assert torch.equal(ds.test[0][0][0, 0], torch.from_numpy(row[:32].astype(np.float32) / 255))


def test_cifar100_round_trip(tmp_path):
    arrays = write_cifar(tmp_path, hundred=True)
    ds = plugin.load_cifar100(tmp_path)
    assert ds.info.num_classes == 100 and ds.info.class_names[7] == "class7"
    assert_split(ds.train, arrays["train_x"], arrays["train_y"])
    assert_split(ds.test, arrays["test_x"], arrays["test_y"])


def test_stl10_round_trip_column_major_and_one_based(tmp_path):
    arrays = write_stl10(tmp_path)
    ds = plugin.load_stl10(tmp_path)
    assert ds.info.input_shape == (3, 96, 96) and ds.info.class_names[2] == "car"
    assert_split(ds.train, arrays["train_x"], arrays["train_y"])
    assert_split(ds.test, arrays["test_x"], arrays["test_y"])
    # Column-major: the file's second byte is pixel (row 1, column 0) of the red channel.
    raw = (tmp_path / "stl10_binary" / "train_X.bin").read_bytes()
    assert ds.train[0][0][0, 1, 0] == raw[1] / 255


def test_torchvision_subclasses_are_built_once_and_skip_md5():
    from torchvision import datasets as tvd  # the plugin imports torchvision only when a loader needs it

    for library_name in ("CIFAR10", "CIFAR100"):
        cls = plugin._cifar_class(library_name)
        assert cls is plugin._cifar_class(library_name) and issubclass(cls, getattr(tvd, library_name))
        assert cls.meta["md5"] is None and plugin.CIFAR_FOLDERS[library_name] == cls.base_folder
    assert plugin._stl10_class() is plugin._stl10_class() and issubclass(plugin._stl10_class(), tvd.STL10)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "stl10"])
def test_resize_torchvision_datasets(name, tmp_path):
    WRITERS[name](tmp_path)
    ds = LOADERS[name](tmp_path, resize=24)
    assert ds.info.image_size == (24, 24)
    x, y = stack(ds.test)
    check_images(x, y, shape=(ds.info.channels, 24, 24))


# --- errors --------------------------------------------------------------------------------

EXPECTED_FILE = {
    "mnist": "MNIST/raw/train-images-idx3-ubyte",
    "cifar10": "cifar-10-batches-py/data_batch_1",
    "cifar100": "cifar-100-python/train",
    "stl10": "stl10_binary/train_X.bin",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FILE))
def test_root_none_asks_for_data_root(name):
    with pytest.raises(RobustkitError) as excinfo:
        LOADERS[name](None)
    assert "--data-root" in one_line_error(excinfo)


@pytest.mark.parametrize("name", sorted(EXPECTED_FILE))
def test_missing_root_names_expected_files(name, tmp_path):
    with pytest.raises(RobustkitError) as excinfo:
        LOADERS[name](tmp_path / "nowhere")
    message = one_line_error(excinfo)
    assert str(tmp_path / "nowhere" / EXPECTED_FILE[name]) in message
    assert "does not exist" in message and "download=True" in message


@pytest.mark.parametrize("name,drop", [("mnist", "MNIST/raw/t10k-labels-idx1-ubyte"),
                                       ("cifar10", "cifar-10-batches-py/batches.meta"),
                                       ("cifar100", "cifar-100-python/test"),
                                       ("stl10", "stl10_binary/test_y.bin")])
def test_incomplete_root_names_missing_file(name, drop, tmp_path):
    WRITERS[name](tmp_path)
    (tmp_path / drop).unlink()
    with pytest.raises(RobustkitError) as excinfo:
        LOADERS[name](tmp_path)
    assert f"missing {drop}" in one_line_error(excinfo)


def test_stl10_does_not_need_unlabeled_or_class_names(tmp_path):
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "class_names.txt").unlink()
    assert plugin.load_stl10(tmp_path).info.class_names == plugin.STL10_NAMES


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2 + 1])


@pytest.mark.parametrize("name,bad", [("mnist", "MNIST/raw/train-images-idx3-ubyte"),
                                      ("mnist", "MNIST/raw/t10k-labels-idx1-ubyte"),
                                      ("cifar10", "cifar-10-batches-py/data_batch_3"),
                                      ("cifar10", "cifar-10-batches-py/batches.meta"),
                                      ("cifar100", "cifar-100-python/test"),
                                      ("stl10", "stl10_binary/test_X.bin")])
def test_corrupt_file_is_named(name, bad, tmp_path):
    WRITERS[name](tmp_path)
    truncate(tmp_path / bad)
    with pytest.raises(RobustkitError) as excinfo:
        LOADERS[name](tmp_path)
    message = one_line_error(excinfo)
    assert str(tmp_path / bad) in message


def test_cifar_pickle_with_python3_bytes_keys_is_rejected_clearly(tmp_path):
    write_cifar(tmp_path, hundred=False)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, f)
    with pytest.raises(RobustkitError) as excinfo:
        plugin.load_cifar10(tmp_path)
    message = one_line_error(excinfo)
    assert str(path) in message and "b'data'" in message


def test_label_count_and_range_are_checked(tmp_path):
    write_stl10(tmp_path)
    labels = tmp_path / "stl10_binary" / "train_y.bin"
    labels.write_bytes(bytes([0, 1, 2]))  # 0 is not a valid 1-based label
    with pytest.raises(RobustkitError) as excinfo:
        plugin.load_stl10(tmp_path)
    assert "expected 0..9" in one_line_error(excinfo)
    labels.write_bytes(bytes([1, 2]))  # one label short of the 3 images
    with pytest.raises(RobustkitError) as excinfo:
        plugin.load_stl10(tmp_path)
    assert "3 images but 2 labels" in one_line_error(excinfo)
