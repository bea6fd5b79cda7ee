"""The shared training loop: learning, determinism across resume, refusals, NaN stops, interrupts, outputs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import robustkit
from robustkit.checkpoints import load_model, read_metadata
from robustkit.data import DatasetInfo, ImageDataset
from robustkit.defenses import BatchLoss, Defense
from robustkit.errors import ParameterError, RobustkitError
from robustkit.hookspecs import hookimpl
from robustkit.host import make_host
from robustkit.models import Classifier, build_model
from robustkit.params import Param
from robustkit.essentials.defenses import PGDAT, Natural
from robustkit.training import TrainConfig, epoch_seed, train, warmed_up

pytestmark = pytest.mark.usefixtures("one_torch_thread")


INFO = DatasetInfo("toy", num_classes=2, channels=1, image_size=(8, 8), mean=(0.5,), std=(0.25,))


class SmallNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], hidden: int = 16):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size[0] * image_size[1], hidden),
                                    nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def small(num_classes: int, in_channels: int, image_size: tuple[int, int], hidden: int = 16) -> nn.Module:
    """A small MLP with batch norm."""
    return SmallNet(num_classes, in_channels, image_size, hidden)


@hookimpl
def register_models(register) -> None:
    register("small", small)


HOST = make_host(plugins=[("testplugin", SimpleNamespace(register_models=register_models))], entry_points=False)


def make_model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return build_model(HOST, "small", INFO)


def make_data(n: int = 64) -> ImageDataset:
    """Random 8x8 images; the label says whether the left half is brighter than the right."""
    g = torch.Generator().manual_seed(123)
    x = torch.rand(2 * n, 1, 8, 8, generator=g)
    y = (x[..., :4].mean((1, 2, 3)) > x[..., 4:].mean((1, 2, 3))).long()
    return ImageDataset(INFO, TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:]))


def config(tmp_path: Path | None, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(epochs=2, batch_size=16, lr=0.01, seed=3, device="cpu", val_examples=16,
                                    val_eps=None, val_steps=2, out_dir=tmp_path)
    settings.update(overrides)
    return TrainConfig(**settings)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class Sabotaged(Defense):
    """Natural training whose loss turns NaN, or which gets a Ctrl-C, at a chosen batch (counted from 1).

    The trigger is an instance attribute rather than a parameter, so a sabotaged run and a healthy rerun
    count as the same run for resuming.
    """

    name = "sabotaged"
    params = (Param("scale", float, 1.0),)

    def __init__(self, nan_at: int | None = None, interrupt_at: int | None = None, **params: Any):
        super().__init__(**params)
        self.nan_at, self.interrupt_at, self.calls = nan_at, interrupt_at, 0

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        logits = model(images)
        loss = F.cross_entropy(logits, labels) * self.config["scale"]
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return BatchLoss(loss, logits, {"calls": float(self.calls)})


# --- learning ---------------------------------------------------------------------------------------


def test_natural_training_lowers_the_loss(tmp_path: Path) -> None:
    result = train(make_model(), make_data(), Natural(), config(tmp_path, epochs=5, lr=0.03))
    losses = [row["train_loss"] for row in result.history]
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5]
    assert losses[-1] < 0.7 * losses[0]
    assert result.metrics["train_acc"] > 0.8
    assert not result.model.training
    assert result.resumed_from == 0 and result.epochs_run == 5


def test_without_out_dir_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = train(make_model(), make_data(), Natural(), config(None, epochs=1))
    assert result.checkpoint is None and len(result.history) == 1
    assert list(tmp_path.iterdir()) == []


def test_validation_metrics_and_outputs(tmp_path: Path) -> None:
    result = train(make_model(), make_data(), PGDAT(eps=0.05, steps=2), config(tmp_path, val_eps=0.05), host=HOST)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "curves.png", "last.json", "last.optim.safetensors", "last.safetensors", "metrics.jsonl"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(result.history))
    for row in rows:
        assert {"epoch", "train_loss", "train_acc", "val_clean_acc", "val_pgd_acc", "lr", "epoch_time",
                "val_time"} <= row.keys()
        assert 0 <= row["val_pgd_acc"] <= row["val_clean_acc"] <= 1
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    meta = read_metadata(tmp_path)
    assert meta["epoch"] == 2 and meta["seed"] == 3 and meta["finished"] is True
    assert meta["defense"]["name"] == "pgd-at" and meta["defense_cost"] == 3.0
    assert meta["model"] == {"name": "small", "params": {"hidden": 16}}
    assert meta["training"]["lr"] == 0.01 and meta["training"]["out_dir"] == str(tmp_path)
    assert meta["metrics"] == rows[-1] and meta["history"] == rows
    assert meta["plugins"]["testplugin"] is None and meta["plugins"]["baseline-defenses"] == robustkit.__version__
    loaded = load_model(tmp_path, HOST)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded(x), result.model(x))


def test_validation_can_be_switched_off(tmp_path: Path) -> None:
    no_pgd = train(make_model(), make_data(), Natural(), config(tmp_path / "a", epochs=1))
    assert no_pgd.metrics["val_pgd_acc"] is None and no_pgd.metrics["val_clean_acc"] is not None
    nothing = train(make_model(), make_data(), Natural(), config(tmp_path / "b", epochs=1, val_examples=0))
    assert nothing.metrics["val_clean_acc"] is None and nothing.metrics["val_pgd_acc"] is None


def test_schedules_change_the_rate_between_epochs() -> None:
    cosine = train(make_model(), make_data(), Natural(), config(None, epochs=4, schedule="cosine", val_examples=0))
    assert [round(r["lr"], 6) for r in cosine.history] == [0.01, 0.008536, 0.005, 0.001464]
    step = train(make_model(), make_data(), Natural(), config(None, epochs=4, schedule="step", val_examples=0))
    assert [round(r["lr"], 6) for r in step.history] == [0.01, 0.01, 0.001, 0.0001]


def test_defense_metrics_are_averaged_per_epoch() -> None:
    result = train(make_model(), make_data(), Sabotaged(), config(None, epochs=2, val_examples=0))
    assert [row["calls"] for row in result.history] == [2.5, 6.5]  # mean of 1..4, then of 5..8


@pytest.mark.parametrize("overrides, fragment", [
    ({"epochs": 0}, "epochs"), ({"optimizer": "rmsprop"}, "optimizer"), ({"lr": 0.0}, "lr"),
    ({"schedule": "linear"}, "schedule"), ({"val_eps": 2.0}, "val_eps"), ({"batch_size": 0}, "batch_size"),
])
def test_bad_settings_fail_before_training(overrides: dict, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment):
        train(make_model(), make_data(), Natural(), config(None, **overrides))


def test_epoch_seeds_are_stable_and_distinct() -> None:
    assert epoch_seed(0, 1, "data") == epoch_seed(0, 1, "data")
    assert len({epoch_seed(0, 1, "data"), epoch_seed(0, 2, "data"), epoch_seed(1, 1, "data"),
                epoch_seed(0, 1, "defense")}) == 4
    assert 0 <= epoch_seed(2**40, 7, "x") < 2**63


# --- resume ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer, schedule", [("adam", "cosine"), ("sgd", "step")])
def test_resume_gives_exactly_the_straight_run(tmp_path: Path, optimizer: str, schedule: str) -> None:
    def defense() -> PGDAT:
        return PGDAT(eps=0.05, steps=1)  # random starts: the defense's RNG must be reproduced too

    settings = dict(epochs=3, optimizer=optimizer, schedule=schedule, milestones=(2,), val_eps=0.05)
    straight = train(make_model(), make_data(), defense(), config(tmp_path / "straight", **settings))

    # Stop after epoch 1: Ctrl-C at the first batch of epoch 2 (64 images / 16 = 4 batches per epoch).
    stopped = _Delegating(defense(), Sabotaged(interrupt_at=5))
    with pytest.raises(RobustkitError):
        train(make_model(), make_data(), stopped, config(tmp_path / "split", **settings))
    assert read_metadata(tmp_path / "split")["epoch"] == 1

    torch.manual_seed(999)  # a different model init and global RNG state must not matter
    resumed = train(make_model(seed=42), make_data(), defense(), config(tmp_path / "split", **settings))
    assert resumed.resumed_from == 1 and resumed.epochs_run == 2
    assert_same_weights(weights(resumed.model), weights(straight.model))
    strip = [{k: v for k, v in row.items() if "time" not in k} for row in resumed.history]
    assert strip == [{k: v for k, v in row.items() if "time" not in k} for row in straight.history]


class _Delegating(Defense):
    """Behaves (and describes itself) exactly like ``inner``, but lets ``trigger`` raise Ctrl-C first."""

    def __init__(self, inner: Defense, trigger: Sabotaged):
        self.inner, self.trigger = inner, trigger
        self.config = inner.config

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def cost(self) -> float:
        return self.inner.cost()

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        self.trigger.calls += 1
        if self.trigger.calls == self.trigger.interrupt_at:
            raise KeyboardInterrupt
        return self.inner.batch_loss(model, images, labels)


def test_a_finished_run_returns_at_once_with_its_metrics(tmp_path: Path) -> None:
    done = train(make_model(), make_data(), Sabotaged(), config(tmp_path))
    stamp = (tmp_path / "last.safetensors").stat().st_mtime_ns
    counting = Sabotaged()
    again = train(make_model(seed=5), make_data(), counting, config(tmp_path))
    assert counting.calls == 0 and again.epochs_run == 0 and again.resumed_from == 2
    assert again.history == json.loads(json.dumps(done.history))
    assert_same_weights(weights(again.model), weights(done.model))
    assert (tmp_path / "last.safetensors").stat().st_mtime_ns == stamp


def test_different_settings_are_refused(tmp_path: Path) -> None:
    train(make_model(), make_data(), Natural(), config(tmp_path, epochs=1))
    with pytest.raises(RobustkitError) as err:
        train(make_model(), make_data(), Natural(), config(tmp_path, epochs=1, lr=0.5))
    message = str(err.value)
    assert "\n" not in message and "holds a different run" in message
    assert "config.lr: 0.01 there, 0.5 now" in message and "--no-resume" in message and "--out" in message
    with pytest.raises(RobustkitError, match="defense.name"):
        train(make_model(), make_data(), PGDAT(eps=0.05, steps=1), config(tmp_path, epochs=1))
    # --no-resume starts over and overwrites.
    fresh = train(make_model(), make_data(), Natural(), config(tmp_path, epochs=1, lr=0.5), resume=False)
    assert fresh.resumed_from == 0 and read_metadata(tmp_path)["training"]["lr"] == 0.5


def test_device_and_out_dir_do_not_identify_the_run(tmp_path: Path) -> None:
    train(make_model(), make_data(), Natural(), config(tmp_path / "run", epochs=1))
    (tmp_path / "run").rename(tmp_path / "moved")
    again = train(make_model(), make_data(), Natural(), config(tmp_path / "moved", epochs=1, device="auto"))
    assert again.epochs_run == 0


# --- failures ---------------------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    one_epoch = train(make_model(), make_data(), Sabotaged(), config(tmp_path / "ref", epochs=1))
    before = {p.name: p.read_bytes() for p in (tmp_path / "ref").iterdir() if p.suffix == ".safetensors"}

    with pytest.raises(RobustkitError) as err:
        train(make_model(), make_data(), Sabotaged(nan_at=6), config(tmp_path / "run", epochs=3))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("loss became nan at epoch 2 batch 2; last good checkpoint (epoch 1) kept at ")
    assert str(tmp_path / "run" / "last.json") in message and "lower the learning rate" in message
    meta = read_metadata(tmp_path / "run")
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.suffix == ".safetensors"}
    assert after["last.safetensors"] == before["last.safetensors"]  # the epoch-1 weights, untouched
    assert_same_weights(weights(load_model(tmp_path / "run", HOST)), weights(one_epoch.model))
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_nan_in_the_first_epoch_says_nothing_was_saved(tmp_path: Path) -> None:
    with pytest.raises(RobustkitError, match="at epoch 1 batch 1; no checkpoint was written yet"):
        train(make_model(), make_data(), Sabotaged(nan_at=1), config(tmp_path))
    assert not (tmp_path / "last.json").exists()


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    straight = train(make_model(), make_data(), Sabotaged(), config(tmp_path / "straight", epochs=3))
    with pytest.raises(RobustkitError) as err:
        train(make_model(), make_data(), Sabotaged(interrupt_at=7), config(tmp_path / "run", epochs=3))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("training interrupted at epoch 2; the checkpoint of epoch 1 is kept at ")
    assert "rerunning the same command resumes from it" in message
    assert read_metadata(tmp_path / "run")["epoch"] == 1

    resumed = train(make_model(), make_data(), Sabotaged(), config(tmp_path / "run", epochs=3))
    assert resumed.resumed_from == 1 and [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert_same_weights(weights(resumed.model), weights(straight.model))
    assert read_metadata(tmp_path / "run")["finished"] is True


def test_interrupt_before_any_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(RobustkitError, match="no epoch had finished, so nothing was saved"):
        train(make_model(), make_data(), Sabotaged(interrupt_at=2), config(tmp_path))


def test_a_damaged_checkpoint_is_reported_not_overwritten(tmp_path: Path) -> None:
    train(make_model(), make_data(), Natural(), config(tmp_path, epochs=1))
    weights_file = tmp_path / "last.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:40])
    with pytest.raises(RobustkitError, match="truncated, corrupt"):
        train(make_model(), make_data(), Natural(), config(tmp_path, epochs=1))
    assert len(weights_file.read_bytes()) == 40


@pytest.mark.parametrize("setting, expected", [(None, True), ("0", False)])
def test_cuda_runs_use_deterministic_cudnn_unless_asked_not_to(setting: str | None, expected: bool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from robustkit import devices

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    if setting is None:
        monkeypatch.delenv("ROBUSTKIT_DETERMINISTIC", raising=False)
    else:
        monkeypatch.setenv("ROBUSTKIT_DETERMINISTIC", setting)
    monkeypatch.setattr(devices, "_resolve", lambda spec: torch.device("cuda"))  # no GPU needed to check the switch
    assert devices.resolve_device("cuda").type == "cuda"
    assert torch.backends.cudnn.deterministic is expected and torch.backends.cudnn.benchmark is not expected


def test_eps_warm_up_raises_eps_linearly_then_trains_at_the_full_eps():
    pgd_at = PGDAT(eps=0.3, steps=2)
    assert [warmed_up(pgd_at, e, 2).config["eps"] for e in (1, 2)] == pytest.approx([0.1, 0.2])
    assert warmed_up(pgd_at, 1, 2).config["steps"] == 2  # every other setting is kept
    assert warmed_up(pgd_at, 3, 2) is pgd_at and warmed_up(pgd_at, 1, 0) is pgd_at
    with pytest.raises(RobustkitError, match="has no eps to warm up"):
        warmed_up(Natural(), 1, 2)
    with pytest.raises(ParameterError, match="eps_warmup must be a whole number of epochs from 0 to epochs - 1"):
        TrainConfig(epochs=2, eps_warmup=2).check()
    # Off by default and then not part of a run's identity: runs saved before it existed still resume.
    assert "eps_warmup" not in TrainConfig().identity() and TrainConfig(eps_warmup=1).identity()["eps_warmup"] == 1


def test_the_cli_and_specs_take_their_training_defaults_from_train_config():
    from robustkit.bench.spec import TRAINING_DEFAULTS
    from robustkit.cli import cli
    from robustkit.training import OPTIMIZERS, SCHEDULES

    defaults = TrainConfig()
    options = {p.name: p for p in cli.commands["train"].params}
    for name in ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "val_examples"):
        assert options[name].default == getattr(defaults, name), name
        assert TRAINING_DEFAULTS[name] == getattr(defaults, name), name
    assert tuple(options["optimizer"].type.choices) == OPTIMIZERS
    assert tuple(options["schedule"].type.choices) == SCHEDULES
