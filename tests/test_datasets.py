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


# --- "use its parent": a --data-root inside a dataset's own folder ---------------------------


@pytest.mark.parametrize("name,deeper,levels", [
    ("mnist", "MNIST/raw", "two levels too deep; use its parent's parent"),
    ("mnist", "MNIST", "one level too deep; use its parent"),
    ("cifar10", "cifar-10-batches-py", "one level too deep; use its parent"),
    ("cifar10", "cifar-10-batches-py/data_batch_1", "two levels too deep; use its parent's parent"),
    ("cifar100", "cifar-100-python", "one level too deep; use its parent"),
    ("stl10", "stl10_binary", "one level too deep; use its parent"),
])
def test_root_one_level_too_deep_names_its_parent(name, deeper, levels, tmp_path):
    WRITERS[name](tmp_path)
    with pytest.raises(RobustkitError) as excinfo:
        LOADERS[name](tmp_path / deeper)
    message = one_line_error(excinfo)
    assert f"--data-root {tmp_path / deeper} is {levels} ({tmp_path})" in message


# --- imagefolder: class folders of image files -----------------------------------------------


def write_imagefolder(root: Path, classes=("dog", "cat", "frog"), n: int = 5, size=(12, 10), mode: str = "RGB",
                      ext: str = "png", seed: int = 0) -> dict[Path, np.ndarray]:
    """One sub-folder of ``n`` images per class; ``size`` is (width, height). Returns each file's pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    written = {}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
            path = root / c / f"img{i}.{ext}"
            Image.fromarray(pixels, mode=None).convert(mode).save(path)
            written[path] = pixels
    return written


def chw(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(pixels.astype(np.float32) / 255)
    return x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)


def test_imagefolder_round_trip_sorted_classes_and_stratified_split(tmp_path):
    written = write_imagefolder(tmp_path)
    ds = plugin.load_imagefolder(tmp_path)
    assert ds.info.class_names == ("cat", "dog", "frog") and ds.info.num_classes == 3  # sorted, as torchvision
    assert ds.info.input_shape == (3, 10, 12)  # height 10, width 12
    assert len(ds.test) == 3 and len(ds.train) == 12  # round(0.2 x 5) = 1 test image per class
    assert sorted(ds.test[i][1] for i in range(3)) == [0, 1, 2]
    seen = []
    for split in (ds.train, ds.test):
        for i in range(len(split)):
            x, y = split[i]
            path = split.paths[i]
            assert ds.info.class_names[y] == path.parent.name and torch.equal(x, chw(written[path]))
            seen.append(path)
    assert sorted(seen) == sorted(written)  # every image once
    # mean/std: of the training images, per channel.
    train = np.stack([written[p] for p in ds.train.paths]).astype(np.float64) / 255
    assert np.allclose(ds.info.mean, train.mean(axis=(0, 1, 2)), atol=1e-6)
    assert np.allclose(ds.info.std, train.std(axis=(0, 1, 2)), atol=1e-6)
    assert ds.info.params == {"resize": None, "channels": 3, "test_fraction": 0.2, "split_seed": 0}
    # The split is fixed by split_seed.
    assert plugin.load_imagefolder(tmp_path).test.paths == ds.test.paths
    others = [plugin.load_imagefolder(tmp_path, split_seed=s).test.paths for s in range(1, 6)]
    assert any(sorted(o) != sorted(ds.test.paths) for o in others)
    assert len(plugin.load_imagefolder(tmp_path, test_fraction=0.6).test) == 9


def test_imagefolder_presplit_jpeg_with_val_folder(tmp_path):
    write_imagefolder(tmp_path / "train", classes=("a", "b"), n=3, ext="jpg")
    write_imagefolder(tmp_path / "val", classes=("b",), n=2, ext="JPEG", seed=1)  # a test tree may lack a class
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")  # other files are ignored
    ds = plugin.load_imagefolder(tmp_path)
    assert len(ds.train) == 6 and len(ds.test) == 2 and ds.info.class_names == ("a", "b")
    assert [ds.test[i][1] for i in range(2)] == [1, 1]
    x, _ = ds.test[0]
    check_images(x.unsqueeze(0), shape=(3, 10, 12))
    # test/ wins over val/ when both exist.
    write_imagefolder(tmp_path / "test", classes=("a", "b"), n=1, ext="bmp", seed=2)
    assert len(plugin.load_imagefolder(tmp_path).test) == 2
    assert all(p.suffix == ".bmp" for p in plugin.load_imagefolder(tmp_path).test.paths)


def test_imagefolder_channels_rule(tmp_path):
    written = write_imagefolder(tmp_path / "grey", mode="L")
    ds = plugin.load_imagefolder(tmp_path / "grey")
    assert ds.info.channels == 1 and ds.info.params["channels"] == 1
    assert torch.equal(ds.test[0][0], chw(written[ds.test.paths[0]]))
    forced = plugin.load_imagefolder(tmp_path / "grey", channels=3)
    x = forced.test[0][0]
    assert x.shape[0] == 3 and torch.equal(x[0], x[2]) and len(forced.info.mean) == 3
    # One colour image makes the whole dataset RGB; channels=1 converts it to grey.
    write_imagefolder(tmp_path / "grey", classes=("cat",), n=1, mode="RGB", seed=5)
    (tmp_path / "grey" / "cat" / "img0.png").rename(tmp_path / "grey" / "cat" / "zz-colour.png")
    assert plugin.load_imagefolder(tmp_path / "grey").info.channels == 3
    assert plugin.load_imagefolder(tmp_path / "grey", channels=1).info.input_shape == (1, 10, 12)


def test_imagefolder_sizes_must_agree_unless_resized(tmp_path):
    write_imagefolder(tmp_path, classes=("a", "b"), n=3)
    write_imagefolder(tmp_path, classes=("b",), n=1, size=(9, 7), seed=3)  # overwrites b/img0.png
    with pytest.raises(RobustkitError) as excinfo:
        plugin.load_imagefolder(tmp_path)
    message = one_line_error(excinfo)
    assert str(tmp_path / "a" / "img0.png") in message and str(tmp_path / "b" / "img0.png") in message
    assert "12x10" in message and "9x7" in message and "resize=" in message
    ds = plugin.load_imagefolder(tmp_path, resize=16)
    assert ds.info.image_size == (16, 16)
    x, y = stack(ds.train)
    check_images(x, y, shape=(3, 16, 16))


def test_imagefolder_through_the_host(host, tmp_path):
    write_imagefolder(tmp_path, mode="L")
    entry = host.datasets.get("imagefolder")
    assert [p.name for p in entry.declared_params(("root",))] == ["resize", "channels", "test_fraction", "split_seed"]
    ds = host.datasets.create("imagefolder", {"resize": "8", "channels": "3", "test_fraction": "0.4"}, root=tmp_path)
    assert ds.info.input_shape == (3, 8, 8) and len(ds.test) == 6
    with pytest.raises(ParameterError, match="channels' must be one of 1, 3"):
        host.datasets.create("imagefolder", {"channels": "2"}, root=tmp_path)


@pytest.mark.parametrize("deeper,levels", [("train/cat", "two levels too deep; use its parent's parent"),
                                           ("train/cat/img0.png", "three levels too deep; use the folder 3 levels up")])
def test_imagefolder_class_folder_of_a_presplit_tree(deeper, levels, tmp_path):
    write_imagefolder(tmp_path / "train", classes=("cat", "dog"), n=2)
    write_imagefolder(tmp_path / "test", classes=("cat", "dog"), n=1)
    with pytest.raises(RobustkitError) as excinfo:
        plugin.load_imagefolder(tmp_path / deeper)
    assert f"is {levels} ({tmp_path})" in one_line_error(excinfo)


def test_imagefolder_bad_roots(tmp_path):
    write_imagefolder(tmp_path / "data", classes=("cat", "dog"), n=2)
    cases = {
        None: "pass --data-root DIR",
        tmp_path / "nowhere": "does not exist; expected ROOT/<class>/<image>",
        tmp_path / "data" / "cat": f"is one level too deep; use its parent ({tmp_path / 'data'})",
        tmp_path / "data" / "cat" / "img0.png": f"use its parent's parent ({tmp_path / 'data'})",
        tmp_path: "holds one class folder (data); a classifier needs at least two",  # one level too high
    }
    for root, expected in cases.items():
        with pytest.raises(RobustkitError) as excinfo:
            plugin.load_imagefolder(root)
        assert expected in one_line_error(excinfo), root
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobustkitError, match="holds no class folders; expected ROOT/<class>/<image>"):
        plugin.load_imagefolder(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(RobustkitError, match="is a file; give the folder of ROOT/<class>/<image>"):
        plugin.load_imagefolder(tmp_path / "notes.txt")


def test_imagefolder_bad_trees(tmp_path):
    write_imagefolder(tmp_path / "only" / "train", classes=("a", "b"), n=2)
    with pytest.raises(RobustkitError) as excinfo:
        plugin.load_imagefolder(tmp_path / "only")
    message = one_line_error(excinfo)
    assert "holds train/ but no test/ or val/ beside it" in message and str(tmp_path / "only" / "train") in message
    (tmp_path / "only" / "train").rename(tmp_path / "only" / "val")
    with pytest.raises(RobustkitError, match="holds val/ but no train/ beside it"):
        plugin.load_imagefolder(tmp_path / "only")
    write_imagefolder(tmp_path / "empty", classes=("a", "b"), n=2)
    (tmp_path / "empty" / "c").mkdir()
    with pytest.raises(RobustkitError, match="class folder .*empty/c holds no images"):
        plugin.load_imagefolder(tmp_path / "empty")
    write_imagefolder(tmp_path / "extra" / "train", classes=("a", "b"), n=2)
    write_imagefolder(tmp_path / "extra" / "test", classes=("a", "z"), n=1)
    with pytest.raises(RobustkitError, match="extra/test/z is a class the training folder lacks"):
        plugin.load_imagefolder(tmp_path / "extra")
    (tmp_path / "hollow" / "train").mkdir(parents=True)
    (tmp_path / "hollow" / "test").mkdir()
    with pytest.raises(RobustkitError, match="hollow/train holds no class folders; expected .*train/<class>/<image>"):
        plugin.load_imagefolder(tmp_path / "hollow")
    write_imagefolder(tmp_path / "tiny", classes=("a", "b"), n=1)
    with pytest.raises(RobustkitError, match="leaves no test images"):
        plugin.load_imagefolder(tmp_path / "tiny")


def test_imagefolder_unreadable_image_is_named(tmp_path):
    write_imagefolder(tmp_path, classes=("a", "b"), n=2)
    bad = tmp_path / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(RobustkitError) as excinfo:
        plugin.load_imagefolder(tmp_path)
    message = one_line_error(excinfo)
    assert f"{bad} is not an image PIL can read" in message and "remove or replace it" in message


# --- tensors: arrays in .npz / .safetensors files ------------------------------------------


def save_safetensors(path: Path, **arrays: np.ndarray) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def test_tensors_uint8_nhwc_npz_with_test_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    xt = rng.integers(0, 256, (4, 5, 7, 3), dtype=np.uint8)
    y, yt = np.array([0, 1, 2, 0, 1, 2]), np.array([2, 2, 1, 0], dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", x=x, y=y, x_test=xt, y_test=yt, notes=np.zeros(3))
    ds = plugin.load_tensors(tmp_path / "mine.npz")
    assert ds.info.input_shape == (3, 5, 7) and ds.info.num_classes == 3 and ds.info.class_names == ()
    assert_split(ds.train, x.transpose(0, 3, 1, 2), y)
    assert_split(ds.test, xt.transpose(0, 3, 1, 2), yt)
    assert np.allclose(ds.info.mean, (x / 255).mean(axis=(0, 1, 2)), atol=1e-6)
    assert np.allclose(ds.info.std, (x / 255).std(axis=(0, 1, 2)), atol=1e-6)
    # x_train / y_train are accepted for x / y; N x H x W is one grey channel.
    np.savez(tmp_path / "grey.npz", x_train=x[..., 0], y_train=y, x_test=xt[..., 0], y_test=yt)
    grey = plugin.load_tensors(tmp_path / "grey.npz")
    assert grey.info.input_shape == (1, 5, 7)
    assert_split(grey.test, xt[..., 0], yt)


def test_tensors_float_nchw_safetensors_split_by_fraction(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((20, 1, 6, 6), dtype=np.float32)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0  # the ends of [0, 1] are allowed
    y = np.repeat(np.arange(4), 5).astype(np.int32)
    save_safetensors(tmp_path / "mine.safetensors", x=x, y=y)
    ds = plugin.load_tensors(tmp_path / "mine.safetensors", split_seed=3)
    assert ds.info.input_shape == (1, 6, 6) and ds.info.num_classes == 4
    assert len(ds.test) == 4 and sorted(ds.test.labels.tolist()) == [0, 1, 2, 3]  # one per class
    xs, ys = stack(ds.train)
    xt, yt = stack(ds.test)
    all_x = torch.cat([xs, xt]).flatten(1)
    assert sorted(map(tuple, all_x.numpy().tolist())) == sorted(map(tuple, x.reshape(20, -1).tolist()))
    item = ds.test[0][0]
    assert item.dtype == torch.float32
    item.zero_()  # items are copies: the held images stay as they were
    assert torch.equal(ds.test[0][0], xt[0])
    again = plugin.load_tensors(tmp_path / "mine.safetensors", split_seed=3)
    assert torch.equal(stack(again.test)[0], xt)
    # float64 NHWC with an explicit layout, and resize.
    x64 = rng.random((10, 3, 3, 3))
    np.savez(tmp_path / "cube.npz", x=x64, y=np.arange(10) % 2)
    with pytest.raises(RobustkitError, match="pass layout=nhwc or layout=nchw"):
        plugin.load_tensors(tmp_path / "cube.npz")
    ds = plugin.load_tensors(tmp_path / "cube.npz", layout="nhwc", resize=4)
    assert ds.info.input_shape == (3, 4, 4)
    check_images(*stack(ds.train), shape=(3, 4, 4))


def test_tensors_folder_layout(tmp_path):
    rng = np.random.default_rng(2)
    x, xt = rng.integers(0, 256, (4, 2, 2), dtype=np.uint8), rng.integers(0, 256, (3, 2, 2), dtype=np.uint8)
    save_safetensors(tmp_path / "train.safetensors", x=x, y=np.array([0, 1, 0, 1]))
    save_safetensors(tmp_path / "test.safetensors", x=xt, y=np.array([1, 1, 0]))
    ds = plugin.load_tensors(tmp_path)
    assert_split(ds.train, x, [0, 1, 0, 1])
    assert_split(ds.test, xt, [1, 1, 0])
    np.savez(tmp_path / "test.npz", x=xt, y=np.array([1, 1, 0]))
    with pytest.raises(RobustkitError, match="holds both test.npz and test.safetensors; keep one"):
        plugin.load_tensors(tmp_path)


def write_npz(path: Path, **arrays) -> Path:
    base = {"x": np.zeros((4, 8, 8), np.uint8), "y": np.array([0, 1, 0, 1])}
    np.savez(path, **{**base, **arrays})
    return path


@pytest.mark.parametrize("arrays,expected", [
    (dict(x=np.full((4, 8, 8), 1.5, np.float32)),
     "array 'x' holds values in [1.5, 1.5]; float images must lie in [0, 1]"),
    (dict(x=np.full((4, 8, 8), np.nan)), "array 'x' holds NaN or infinite values"),
    (dict(x=np.zeros((4, 8, 8), np.int64)), "array 'x' holds int64 values; store uint8 pixels 0..255 or float"),
    (dict(x=np.zeros((4, 8, 8, 5), np.uint8)), "has shape (4, 8, 8, 5): expected N x H x W, N x H x W x C"),
    (dict(x=np.zeros((4, 8), np.uint8)), "has shape (4, 8): expected"),
    (dict(x=np.zeros((4, 0, 8), np.uint8)), "has shape (4, 0, 8): it holds no images, or images without pixels"),
    (dict(y=np.array([0, 1, 0])), "array 'y' holds 3 labels but 'x' holds 4 images"),
    (dict(y=np.array([0.0, 1.0, 0.0, 1.0])), "array 'y' holds float64 values; labels must be integer class indices"),
    (dict(y=np.array([0, 1, -1, 1])), "array 'y' holds label -1"),
    (dict(y=np.zeros((4, 1), np.int64)), "array 'y' has shape (4, 1); labels must be 1-D"),
    (dict(y=np.zeros(4, np.int64)), "every label in"),
    (dict(x_test=np.zeros((2, 8, 8), np.uint8)), "has no array 'y_test'"),
    (dict(x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.array([0, 1])), "holds C x H x W = (1, 4, 4) images"),
    (dict(x_train=np.zeros((4, 8, 8), np.uint8)), "holds both 'x' and 'x_train'; keep one"),
    (dict(x=np.array([None, 1, 2, 3], dtype=object)), "array 'x' is an object array (pickled Python objects)"),
])
def test_tensors_bad_arrays_are_one_line(arrays, expected, tmp_path):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(RobustkitError) as excinfo:
        plugin.load_tensors(path)
    message = one_line_error(excinfo)
    assert str(path) in message and expected in message


def test_tensors_missing_arrays_and_bad_files(tmp_path):
    np.savez(tmp_path / "named.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(RobustkitError, match=r"has no array 'x' \(or 'x_train'\); it holds 'images', 'labels'"):
        plugin.load_tensors(tmp_path / "named.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(RobustkitError, match="is a single .npy array, not named arrays; save them with numpy.savez"):
        plugin.load_tensors(tmp_path / "single.npz")
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"x": np.zeros(3)}, protocol=2))
    with pytest.raises(RobustkitError, match="is a pickle, which is never loaded"):
        plugin.load_tensors(tmp_path / "pickle.npz")
    good = write_npz(tmp_path / "cut.npz")
    truncate(good)
    with pytest.raises(RobustkitError, match="cut.npz is corrupt or not a .npz file"):
        plugin.load_tensors(good)
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(RobustkitError, match="broken.safetensors is corrupt or not a .safetensors file"):
        plugin.load_tensors(tmp_path / "broken.safetensors")
    (tmp_path / "data.pt").write_bytes(b"")
    with pytest.raises(RobustkitError, match="data.pt is not a .npz or .safetensors file"):
        plugin.load_tensors(tmp_path / "data.pt")


def test_tensors_bad_roots(tmp_path):
    cases = {None: "pass --data-root FILE.npz",
             tmp_path / "nowhere.npz": "nowhere.npz does not exist; expected a .npz or .safetensors"}
    for root, expected in cases.items():
        with pytest.raises(RobustkitError) as excinfo:
            plugin.load_tensors(root)
        assert expected in one_line_error(excinfo)
    write_npz(tmp_path / "train.npz")
    (tmp_path / "inner").mkdir()
    with pytest.raises(RobustkitError) as excinfo:
        plugin.load_tensors(tmp_path / "inner")
    assert f"is one level too deep; use its parent ({tmp_path})" in one_line_error(excinfo)
    (tmp_path / "other").mkdir()
    write_npz(tmp_path / "other" / "digits.npz")
    with pytest.raises(RobustkitError, match=r"holds no train.npz or train.safetensors \(it holds digits.npz: pass"):
        plugin.load_tensors(tmp_path / "other")
    write_npz(tmp_path / "x_test_too.npz", x_test=np.zeros((1, 8, 8), np.uint8), y_test=np.array([0]))
    (tmp_path / "both").mkdir()
    (tmp_path / "x_test_too.npz").rename(tmp_path / "both" / "train.npz")
    write_npz(tmp_path / "both" / "test.npz")
    with pytest.raises(RobustkitError, match="keep the test split in one place"):
        plugin.load_tensors(tmp_path / "both")


# --- CIFAR-10-C --------------------------------------------------------------------------------


def write_cifar10c(root: Path, per: int = 4, corruptions=("fog", "snow"), seed: int = 0) -> dict[str, np.ndarray]:
    """The real layout with ``per`` images per severity: labels.npy and <corruption>.npy, severity 1 first."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = np.tile(rng.integers(0, 10, per).astype(np.uint8), 5)  # the same test labels for every severity
    np.save(root / "labels.npy", labels)
    out = {"labels": labels}
    for c in corruptions:
        out[c] = rng.integers(0, 256, (5 * per, 32, 32, 3), dtype=np.uint8)
        np.save(root / f"{c}.npy", out[c])
    return out


def test_cifar10c_reads_one_severity_memory_mapped(tmp_path, monkeypatch):
    arrays = write_cifar10c(tmp_path / "CIFAR-10-C")
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(plugin.np, "load", spy)
    ds = plugin.load_cifar10c(tmp_path / "CIFAR-10-C", corruption="snow", severity=3)
    assert calls and all(c.get("mmap_mode") == "r" and c.get("allow_pickle") is False for c in calls)
    assert ds.info.input_shape == (3, 32, 32) and ds.info.mean == plugin.CIFAR10_MEAN
    assert ds.info.class_names[1] == "automobile" and ds.info.params["severity"] == 3
    assert_split(ds.test, arrays["snow"][8:12].transpose(0, 3, 1, 2), arrays["labels"][8:12])
    with pytest.raises(RobustkitError) as excinfo:
        len(ds.train)
    assert "is test-only" in one_line_error(excinfo) and "clean_root=" in str(excinfo.value)


def test_cifar10c_clean_root_gives_the_cifar10_training_set(tmp_path):
    write_cifar10c(tmp_path / "CIFAR-10-C")
    clean = write_cifar(tmp_path / "clean", hundred=False)
    ds = plugin.load_cifar10c(tmp_path / "CIFAR-10-C", corruption="fog", severity=1, clean_root=tmp_path / "clean",
                              resize=16)
    assert len(ds.train) == len(clean["train_y"]) and ds.info.image_size == (16, 16)
    assert ds.train[0][0].shape == (3, 16, 16) and ds.test[0][0].shape == (3, 16, 16)
    with pytest.raises(RobustkitError) as excinfo:
        plugin.load_cifar10c(tmp_path / "CIFAR-10-C", corruption="fog", severity=1, clean_root=tmp_path / "nope")
    message = one_line_error(excinfo)
    assert "dataset 'cifar10-c' expects the files" in message and "cifar-10-batches-py/data_batch_1" in message
    with pytest.raises(RobustkitError, match=r"clean_root .*cifar-10-batches-py is one level too deep"):
        plugin.load_cifar10c(tmp_path / "CIFAR-10-C", corruption="fog", severity=1,
                             clean_root=tmp_path / "clean" / "cifar-10-batches-py")


def test_cifar10c_params_through_the_host(host, tmp_path):
    write_cifar10c(tmp_path)
    entry = host.datasets.get("cifar10-c")
    assert entry.info["num_classes"] == 10
    ds = host.datasets.create("cifar10-c", {"corruption": "fog", "severity": "5"}, root=tmp_path)
    assert len(ds.test) == 4
    with pytest.raises(ParameterError, match="severity' must be <= 5"):
        host.datasets.create("cifar10-c", {"corruption": "fog", "severity": "6"}, root=tmp_path)
    with pytest.raises(ParameterError, match="corruption' must be one of gaussian_noise"):
        host.datasets.create("cifar10-c", {"corruption": "rain", "severity": "1"}, root=tmp_path)
    assert len(plugin.CIFAR10C_CORRUPTIONS) == 19


def test_cifar10c_bad_inputs(tmp_path):
    write_cifar10c(tmp_path / "CIFAR-10-C")
    root = tmp_path / "CIFAR-10-C"
    cases = [
        (dict(root=root, severity=1), "needs a corruption: pass --dataset-param corruption=NAME"),
        (dict(root=root, corruption="fog"), "needs a severity from 1 to 5"),
        (dict(root=None, corruption="fog", severity=1), "pass --data-root DIR"),
        (dict(root=root, corruption="frost", severity=1), "(missing frost.npy); get CIFAR-10-C"),
        (dict(root=root / "fog.npy", corruption="fog", severity=1), f"is one level too deep; use its parent ({root})"),
        (dict(root=tmp_path, corruption="fog", severity=1), f"holds CIFAR-10-C/ but not its files; use {root}"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(RobustkitError) as excinfo:
            plugin.load_cifar10c(**kwargs)
        assert expected in one_line_error(excinfo), kwargs
    np.save(root / "fog.npy", np.zeros((19, 32, 32, 3), np.uint8))
    with pytest.raises(RobustkitError, match=r"fog.npy holds uint8 of shape \(19, 32, 32, 3\); expected uint8 N x 32"):
        plugin.load_cifar10c(root, corruption="fog", severity=1)
    np.save(root / "fog.npy", np.zeros((15, 32, 32, 3), np.uint8))
    with pytest.raises(RobustkitError, match="labels.npy holds 20 labels but .*fog.npy holds 15 images"):
        plugin.load_cifar10c(root, corruption="fog", severity=1)
    np.save(root / "labels.npy", np.array([None] * 20, dtype=object), allow_pickle=True)
    with pytest.raises(RobustkitError, match="labels.npy holds pickled Python objects, which are never loaded"):
        plugin.load_cifar10c(root, corruption="snow", severity=1)
    np.save(root / "labels.npy", np.full(20, 10, np.uint8))
    with pytest.raises(RobustkitError, match=r"expected 0..9"):
        plugin.load_cifar10c(root, corruption="snow", severity=1)
    (root / "snow.npy").write_bytes((root / "snow.npy").read_bytes()[:200])
    with pytest.raises(RobustkitError, match="snow.npy is corrupt or not a .npy file"):
        plugin.load_cifar10c(root, corruption="snow", severity=1)


# --- through the CLI ---------------------------------------------------------------------------


def test_cli_lists_and_attacks_your_own_data(tmp_path):
    from click.testing import CliRunner

    from robustkit.cli import cli

    runner = CliRunner()
    listed = runner.invoke(cli, ["datasets", "list"])
    assert listed.exit_code == 0, listed.output
    for name in ("imagefolder", "tensors", "cifar10-c"):
        assert name in listed.output
    write_imagefolder(tmp_path / "imgs", classes=("a", "b", "c"), n=5, size=(16, 16))
    attack = ["attack", "--model", "lenet", "--dataset", "imagefolder", "--attack", "pgd eps=0.1 steps=2",
              "--n-examples", "8"]
    result = runner.invoke(cli, [*attack, "--data-root", str(tmp_path / "imgs"), "--dataset-param", "resize=16"])
    assert result.exit_code == 0, result.output
    assert "pgd" in result.output
    result = runner.invoke(cli, [*attack, "--data-root", str(tmp_path / "imgs")])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(cli, [*attack, "--data-root", str(tmp_path / "imgs" / "a")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert f"use its parent ({tmp_path / 'imgs'})" in bad.stderr
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mine.npz", x=rng.random((12, 1, 12, 12), dtype=np.float32), y=np.arange(12) % 3)
    result = runner.invoke(cli, ["attack", "--model", "lenet", "--dataset", "tensors", "--data-root",
                                 str(tmp_path / "mine.npz"), "--attack", "pgd eps=0.1 steps=2"])
    assert result.exit_code == 0, result.output


def test_cli_training_on_cifar10c_without_clean_root_is_refused(tmp_path):
    from click.testing import CliRunner

    from robustkit.cli import cli

    write_cifar10c(tmp_path / "c")
    result = CliRunner().invoke(cli, ["train", "--model", "lenet", "--model-param", "width=0.25", "--epochs", "1",
                                      "--val-examples", "0", "--dataset", "cifar10-c",
                                      "--data-root", str(tmp_path / "c"), "--dataset-param", "corruption=fog",
                                      "--dataset-param", "severity=2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "dataset 'cifar10-c' is test-only" in result.stderr.strip().splitlines()[-1]


def test_a_missing_root_beside_a_dataset_is_not_called_too_deep(tmp_path):
    write_cifar(tmp_path, hundred=False)
    with pytest.raises(RobustkitError) as excinfo:
        plugin.load_cifar10(tmp_path / "cifar-10-batches-pyy")
    message = one_line_error(excinfo)
    assert "too deep" not in message and "does not exist" in message


def test_imagefolder_16_bit_grey_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    write_imagefolder(tmp_path, classes=("a", "b"), n=3, mode="L")
    deep = np.array([[0, 1000, 65535] * 4] * 10, dtype=np.uint16)  # 12 wide, 10 high like the others
    Image.fromarray(deep).save(tmp_path / "a" / "deep.png")
    ds = plugin.load_imagefolder(tmp_path, test_fraction=0.5)
    split = ds.train if tmp_path / "a" / "deep.png" in ds.train.paths else ds.test
    x, _ = split[split.paths.index(tmp_path / "a" / "deep.png")]
    assert ds.info.channels == 1 and torch.allclose(x[0, 0, :3], torch.tensor([0.0, 1000 / 65535, 1.0]))
    rgb = plugin.load_imagefolder(tmp_path, test_fraction=0.5, channels=3)
    split = rgb.train if tmp_path / "a" / "deep.png" in rgb.train.paths else rgb.test
    x, _ = split[split.paths.index(tmp_path / "a" / "deep.png")]
    assert x.shape == (3, 10, 12) and torch.equal(x[0], x[2]) and float(x[1, 0, 1]) == pytest.approx(1000 / 65535)
    Image.fromarray(deep.astype(np.float32)).save(tmp_path / "b" / "float.tiff")
    with pytest.raises(RobustkitError, match="float.tiff holds 32-bit float pixels, whose range is unknown"):
        plugin.load_imagefolder(tmp_path)
