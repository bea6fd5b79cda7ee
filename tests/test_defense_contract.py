"""Contract: `robustkit train` works for every registered defense, on the registered models and datasets.

Parametrized over everything registered (timm style), so a new defense plugin is covered the moment it
registers. Budgets are tiny (a few dozen 8x8 images, one epoch, one attack step): these tests check that
the pieces fit (training, validation, checkpoint, resume, reload), not what the defenses achieve; the
per-defense test files check that.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import Subset

from robustkit.checkpoints import load_model, read_metadata
from robustkit.cli import cli
from robustkit.data import ImageDataset
from robustkit.devices import seed_everything
from robustkit.host import make_host
from robustkit.models import build_model
from robustkit.training import TrainConfig, train
from test_datasets import write_cifar, write_mnist, write_stl10

#: Parameters that make each built-in defense cheap; a defense not listed trains with its defaults.
CHEAP: dict[str, dict[str, Any]] = {
    "pgd-at": {"eps": 0.1, "steps": 1},
    "fgsm-at": {"eps": 0.1},
    "fgm-at": {"eps": 0.5},
    "trades": {"eps": 0.1, "steps": 1},
    "rlfat": {"eps": 0.1, "steps": 1},
    "robust-opt": {},
    "localized-at": {"eps": 0.1, "steps": 1, "step_size": "none"},
    "pgn": {"gen_width": 4},
    "hard-positives": {"types": "fgv", "correct_only": False, "cache_dir": "off"},
}
SMALL_MODELS = ("lenet", "madry-cnn", "shaham-cnn", "convpool-cnn")
OTHER_MODELS = ("vgg", "wrn-40-2", "timm:resnet18")  # wrn-32-10 / wide-resnet: wrn-40-2 with more width
HOST = make_host()
DEFENSES = HOST.defenses.names()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_digits() -> ImageDataset:
    full = HOST.datasets.create("digits", {}, root=None)
    return ImageDataset(full.info, Subset(full.train, range(32)), Subset(full.test, range(16)))


def cli_args(defense: str) -> list[str]:
    return [arg for k, v in CHEAP.get(defense, {}).items() for arg in ("--param", f"{k}={v}")]


def train_one_epoch(defense: str, model: str, data: ImageDataset, out_dir: Path) -> Any:
    """One epoch of ``defense`` on ``model`` (cheap settings), validated with one-step PGD, saved to ``out_dir``."""
    seed_everything(0)
    net = build_model(HOST, model, data.info)
    config = TrainConfig(epochs=1, batch_size=16, seed=0, device="cpu", val_examples=8, val_eps=0.1, val_steps=1,
                         out_dir=out_dir)
    return train(net, data, HOST.defenses.create(defense, CHEAP.get(defense, {})), config, host=HOST)


def test_every_builtin_defense_has_cheap_settings() -> None:
    builtin = {e.name for e in HOST.defenses if e.distribution == "robustkit"}
    assert builtin <= set(CHEAP) | {"natural"}, "add cheap settings for the new defense to CHEAP"


@pytest.mark.parametrize("model", SMALL_MODELS)
@pytest.mark.parametrize("defense", DEFENSES)
def test_every_defense_trains_every_small_model(defense: str, model: str, tiny_digits: ImageDataset,
                                                tmp_path: Path) -> None:
    result = train_one_epoch(defense, model, tiny_digits, tmp_path)
    row = result.metrics
    assert row["epoch"] == 1 and torch.isfinite(torch.tensor(row["train_loss"]))
    assert 0 <= row["val_clean_acc"] <= 1 and 0 <= row["val_pgd_acc"] <= row["val_clean_acc"]
    reloaded = load_model(tmp_path, host=HOST)
    x = torch.stack([tiny_digits.test[i][0] for i in range(4)])
    with torch.no_grad():
        assert torch.equal(reloaded(x), result.model(x))  # the checkpoint holds what training returned
    assert read_metadata(tmp_path)["defense"]["name"] == defense


@pytest.mark.parametrize("model", OTHER_MODELS)
@pytest.mark.parametrize("defense", ["natural", "pgd-at"])
def test_larger_models_train_naturally_and_adversarially(defense: str, model: str, tiny_digits: ImageDataset,
                                                         tmp_path: Path) -> None:
    result = train_one_epoch(defense, model, tiny_digits, tmp_path)
    assert result.metrics["epoch"] == 1 and (tmp_path / "last.json").exists()


@pytest.mark.parametrize("defense", DEFENSES)
def test_robustkit_train_command_for_every_defense(defense: str, tmp_path: Path) -> None:
    """As a user runs it: one epoch on digits, then the same command again resumes (nothing to do)."""
    args = ["train", "--model", "lenet", "--defense", defense, *cli_args(defense), "--epochs", "1",
            "--batch-size", "256", "--val-examples", "16", "--out", str(tmp_path / "run")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["val_clean_acc"] is not None
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "already trained" in again.output


@pytest.mark.parametrize("defense", DEFENSES)
def test_a_bad_parameter_fails_before_training(defense: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--model", "lenet", "--defense", defense, "--param", "no_such=1",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "no_such" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dataset,writer", [
    ("mnist", lambda root: write_mnist(root, n_train=20, n_test=8)),
    ("cifar10", lambda root: write_cifar(root, hundred=False)),
    ("cifar100", lambda root: write_cifar(root, hundred=True)),
    ("stl10", lambda root: write_stl10(root, n_train=6, n_test=4)),
])
def test_every_dataset_trains_with_a_defense(dataset: str, writer: Any, tmp_path: Path) -> None:
    writer(tmp_path / "data")
    result = CliRunner().invoke(cli, ["train", "--model", "lenet", "--dataset", dataset, "--data-root",
                                      str(tmp_path / "data"), "--defense", "pgd-at", "--param", "eps=8/255",
                                      "--param", "steps=1", "--epochs", "1", "--batch-size", "8",
                                      "--val-examples", "4", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "run")["dataset"]["name"] == dataset
