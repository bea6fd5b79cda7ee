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
from click.testing import CliRunner

from robustkit.checkpoints import read_metadata
from robustkit.cli import cli
from robustkit.host import make_host
from robustkit.testing.contracts import check_defense, cheap_params, cli_params
from test_datasets import write_cifar, write_mnist, write_stl10

SMALL_MODELS = ("lenet", "madry-cnn", "shaham-cnn", "convpool-cnn")
OTHER_MODELS = ("vgg", "wrn-40-2", "timm:resnet18")  # wrn-32-10 / wide-resnet: wrn-40-2 with more width
HOST = make_host()
DEFENSES = HOST.defenses.names()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli_args(defense: str) -> list[str]:
    return cli_params(cheap_params(HOST.defenses.get(defense).factory))


@pytest.mark.parametrize("defense", DEFENSES)
def test_cheap_settings_are_valid_parameters(defense: str) -> None:
    """What makes a defense cheap is stated on its class (``cheap_params``); it must name real parameters."""
    entry = HOST.defenses.get(defense)
    assert set(entry.resolve(cheap_params(entry.factory))) >= set(cheap_params(entry.factory))


@pytest.mark.parametrize("model", SMALL_MODELS)
@pytest.mark.parametrize("defense", DEFENSES)
def test_every_defense_trains_every_small_model(defense: str, model: str, tmp_path: Path) -> None:
    check_defense(defense, tmp_path, host=HOST, model=model)


@pytest.mark.parametrize("model", OTHER_MODELS)
@pytest.mark.parametrize("defense", ["natural", "pgd-at"])
def test_larger_models_train_naturally_and_adversarially(defense: str, model: str, tmp_path: Path) -> None:
    result = check_defense(defense, tmp_path, host=HOST, model=model)
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
