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
from robustkit.training import TrainConfig, _warn_if_at_chance, epoch_seed, train, warmed_up

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
    assert [row.pop("chosen") for row in rows] == [False, True]  # the run keeps its last epoch
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
        self.knob = inner.knob  # an adversarial defense's: the run selects its epoch like inner's

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


# --- augmentation, weight averaging, the kept epoch --------------------------------------------------


class Recording(Defense):
    """Natural training that checks what reaches the defense: images whose every pixel is label / 10 stay so
    under reflect crops and flips, so each batch proves the labels still belong to their (augmented) images."""

    name = "recording"

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.batches: list[torch.Tensor] = []

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        assert torch.equal(images, (labels.float() / 10).view(-1, 1, 1, 1).expand_as(images))
        self.batches.append(images)
        logits = model(images)
        return BatchLoss(F.cross_entropy(logits, labels), logits)


def test_augmentation_reaches_the_defense_with_each_image_keeping_its_label(tmp_path: Path) -> None:
    labels = torch.arange(48) % 2
    flat = (labels.float() / 10).view(-1, 1, 1, 1).expand(48, 1, 8, 8).clone()
    data = ImageDataset(INFO, TensorDataset(flat, labels), TensorDataset(flat[:8], labels[:8]))
    recording = Recording()
    train(make_model(), data, recording, config(None, epochs=1, augment="crop:3:reflect,flip", val_examples=0))
    assert sum(len(b) for b in recording.batches) == 48

    # On images with structure the same setting really changes what the defense sees, and its draws repeat.
    seen = []
    for _ in range(2):
        looking = _Looking()
        train(make_model(), make_data(), looking, config(None, epochs=1, augment="crop:2:zero,flip", val_examples=0))
        seen.append(torch.cat(looking.images))
    plain = _Looking()
    train(make_model(), make_data(), plain, config(None, epochs=1, augment="none", val_examples=0))
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], torch.cat(plain.images))
    assert seen[0].shape == torch.cat(plain.images).shape


class _Looking(Natural):
    def __init__(self, **params: Any):
        super().__init__(**params)
        self.images: list[torch.Tensor] = []

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        self.images.append(images.clone())
        return super().batch_loss(model, images, labels)


class _Steps(Natural):
    """Natural training that records the model's state after every optimizer step."""

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.states: list[dict[str, torch.Tensor]] = []

    def after_step(self, model: nn.Module) -> None:
        self.states.append(weights(model))


def test_the_ema_is_the_hand_computed_average_and_is_saved_beside_the_raw_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    start = weights(make_model())
    steps = _Steps()
    result = train(make_model(), make_data(), steps, config(tmp_path, epochs=2, ema_decay=0.75, val_examples=0))
    assert len(steps.states) == 8  # 64 images / 16, two epochs
    expected = {k: v.clone() for k, v in start.items()}
    for state in steps.states:
        for key, value in state.items():  # float entries (weights and batch-norm statistics) average, ints copy
            expected[key] = 0.75 * expected[key] + 0.25 * value if value.is_floating_point() else value.clone()
    from robustkit.checkpoints import read_weights

    saved_ema, meta, _ = read_weights(tmp_path, "ema")
    saved_raw, _, _ = read_weights(tmp_path, "raw")
    for key in expected:
        torch.testing.assert_close(saved_ema[key], expected[key], rtol=1e-5, atol=1e-6)
        assert torch.equal(saved_raw[key], steps.states[-1][key])  # the raw weights are the last step's
    assert meta["weights"] == {"raw": "last.safetensors", "ema": "last.ema.safetensors", "ema_decay": 0.75,
                               "default": "ema", "loaded": "ema"}
    assert result.weights == "ema"
    assert_same_weights(weights(result.model), {k: saved_ema[k] for k in saved_ema})
    assert_same_weights(weights(load_model(tmp_path, HOST)), saved_ema)  # loading serves the EMA by default
    assert_same_weights(weights(load_model(tmp_path, HOST, kind="raw")), saved_raw)


def test_the_ema_can_be_kept_but_the_raw_weights_served(tmp_path: Path) -> None:
    result = train(make_model(), make_data(), Natural(), config(tmp_path, epochs=1, ema_decay=0.9, weights_kind="raw"))
    meta = read_metadata(tmp_path)
    assert meta["weights"]["default"] == "raw" and meta["files"]["ema"] == "last.ema.safetensors"
    assert result.weights == "raw"
    assert_same_weights(weights(result.model), weights(load_model(tmp_path, HOST)))


class _Unlearning(Natural):
    """Natural training for ``good`` batches, then gradient ascent: later epochs get worse."""

    def __init__(self, good: int, **params: Any):
        super().__init__(**params)
        self.good, self.calls = good, 0

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        self.calls += 1
        out = super().batch_loss(model, images, labels)
        return out if self.calls <= self.good else BatchLoss(-3 * out.loss, out.logits)


def test_the_best_checkpoint_is_the_epoch_with_the_highest_validation_robust_accuracy(tmp_path: Path) -> None:
    from robustkit.checkpoints import chosen_checkpoint
    from robustkit.training import _validate, resolved, validation_split

    data = make_data(256)
    settings = config(tmp_path, epochs=5, lr=0.05, val_examples=64, val_eps=0.02, select="best")
    result = train(make_model(), data, _Unlearning(good=3 * 12), settings)  # 192 training images: 12 batches/epoch
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scores = [(row["val_pgd_acc"], row["val_clean_acc"]) for row in rows]
    best = rows[scores.index(max(scores))]["epoch"]  # index() finds the earliest of equals
    assert best < 5 and scores[best - 1] > scores[-1]  # ascent made the last epochs worse
    assert [row["chosen"] for row in rows] == [row["epoch"] == best for row in rows]
    assert result.selected_epoch == best and result.checkpoint == tmp_path / "best.json"
    meta = read_metadata(tmp_path)
    assert meta["epoch"] == 5 and meta["selection"] == {"select": "best", "checkpoint": "best", "epoch": best,
                                                        "by": "val_pgd_acc"}
    assert read_metadata(tmp_path / "best.json")["epoch"] == best
    assert chosen_checkpoint(tmp_path) == tmp_path / "best.json"
    assert chosen_checkpoint(tmp_path / "last.json") == tmp_path / "last.json"
    assert chosen_checkpoint(tmp_path / "last.json", "best") == tmp_path / "best.json"
    kept = load_model(tmp_path, HOST)  # the run's folder: the epoch it kept
    assert_same_weights(weights(kept), weights(result.model))
    assert not all(torch.equal(a, b) for a, b in zip(weights(kept).values(),
                                                     weights(load_model(tmp_path / "last.json", HOST)).values()))
    # The saved best weights measure what the history says they measured.
    run = resolved(settings, Natural(), data)
    _, val_set = validation_split(data.train, run.val_examples, bool(run.val_holdout))
    again = _validate(kept, val_set, run, best, torch.device("cpu"))
    assert (again["val_pgd_acc"], again["val_clean_acc"]) == scores[best - 1]


def test_the_chosen_epoch_rule() -> None:
    from robustkit.training import chosen_epoch

    rows = [{"epoch": 1, "val_pgd_acc": 0.2, "val_clean_acc": 0.9}, {"epoch": 2, "val_pgd_acc": 0.5, "val_clean_acc": 0.7},
            {"epoch": 3, "val_pgd_acc": 0.5, "val_clean_acc": 0.8}, {"epoch": 4, "val_pgd_acc": 0.5, "val_clean_acc": 0.8}]
    assert chosen_epoch(rows, "best") == 3  # robust first, then clean; of equals the earliest
    assert chosen_epoch(rows, "last") == 4
    clean_only = [{"epoch": 1, "val_pgd_acc": None, "val_clean_acc": 0.6}, {"epoch": 2, "val_pgd_acc": None,
                                                                          "val_clean_acc": 0.7}]
    assert chosen_epoch(clean_only, "best") == 2 and chosen_epoch([], "best") is None


def test_auto_selects_the_best_epoch_for_adversarial_defenses_only() -> None:
    from robustkit.training import resolve_select

    checked = config(None, val_eps=0.05, select="auto")
    assert resolve_select(PGDAT(eps=0.05), checked) == "best"
    assert resolve_select(Natural(), checked) == "last"
    assert resolve_select(PGDAT(eps=0.05), config(None, val_eps=None, select="auto")) == "last"  # nothing robust
    assert resolve_select(PGDAT(eps=0.05), config(None, val_eps=0.05, val_examples=0, select="auto")) == "last"
    assert resolve_select(Natural(), config(None, select="best")) == "best"


class _Forbidden(torch.utils.data.Dataset):
    """A test split training must never read."""

    def __len__(self) -> int:
        raise AssertionError("training read the test split")

    def __getitem__(self, index: int) -> Any:
        raise AssertionError("training read the test split")


@pytest.mark.parametrize("select", ["best", "last"])
def test_the_validation_slice_comes_from_the_training_split_never_the_test_split(tmp_path: Path,
                                                                                  select: str) -> None:
    from robustkit.training import validation_split

    full = make_data(64)
    data = ImageDataset(INFO, full.train, _Forbidden())
    result = train(make_model(), data, PGDAT(eps=0.05, steps=1),
                   config(tmp_path, epochs=1, val_examples=16, val_eps=0.05, select=select))
    assert result.metrics["val_clean_acc"] is not None
    held_out = select == "best"
    assert read_metadata(tmp_path)["validation"]["held_out"] is held_out
    trained_on, val = validation_split(full.train, 16, held_out)
    assert len(val) == 16 and set(val.indices) <= set(range(64))
    if held_out:
        assert len(trained_on) == 48 and not set(trained_on.indices) & set(val.indices)
    else:
        assert trained_on is full.train
    # The slice is a fact of the training split: the same for every seed and run.
    assert validation_split(full.train, 16, True)[1].indices == val.indices
    with pytest.raises(RobustkitError, match="would hold out the whole training split"):
        validation_split(full.train, 64, True)


@pytest.mark.parametrize("stop_at", [4, 5])  # the second epoch's first and middle batch (48 images / 16)
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_run_with_augmentation_ema_and_best(
        tmp_path: Path, stop_at: int) -> None:
    def defense() -> PGDAT:
        return PGDAT(eps=0.05, steps=1)  # random starts: the defense's stream must be reproduced too

    settings = dict(epochs=3, val_eps=0.05, select="auto", augment="crop:2:reflect,flip", ema_decay=0.8)
    straight = train(make_model(), make_data(), defense(), config(tmp_path / "straight", **settings), host=HOST)

    stopped = _Delegating(defense(), Sabotaged(interrupt_at=stop_at))
    with pytest.raises(RobustkitError, match="interrupted at epoch 2"):
        train(make_model(), make_data(), stopped, config(tmp_path / "split", **settings), host=HOST)
    torch.manual_seed(999)  # another initial model and global RNG state must not matter
    resumed = train(make_model(seed=42), make_data(), defense(), config(tmp_path / "split", **settings), host=HOST)
    assert resumed.resumed_from == 1 and resumed.selected_epoch == straight.selected_epoch
    assert_same_weights(weights(resumed.model), weights(straight.model))
    strip = [{k: v for k, v in row.items() if "time" not in k} for row in resumed.history]
    assert strip == [{k: v for k, v in row.items() if "time" not in k} for row in straight.history]
    names = sorted(p.name for p in (tmp_path / "straight").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "split").iterdir())
    assert {"best.json", "best.safetensors", "best.ema.safetensors", "last.ema.safetensors"} <= set(names)
    for name in ("last.safetensors", "last.ema.safetensors", "best.safetensors", "best.ema.safetensors"):
        assert (tmp_path / "split" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_a_stop_between_last_and_best_is_repaired_on_resume(tmp_path: Path) -> None:
    # Killed after last.* of a new best epoch was saved, before best.*: best.* is rebuilt from last.*.
    settings = dict(epochs=1, val_eps=0.05, select="best")
    done = train(make_model(), make_data(), PGDAT(eps=0.05, steps=1), config(tmp_path / "a", **settings))
    for suffix in (".json", ".safetensors"):
        (tmp_path / "a" / f"best{suffix}").unlink()
    again = train(make_model(), make_data(), PGDAT(eps=0.05, steps=1), config(tmp_path / "a", **settings))
    assert read_metadata(tmp_path / "a" / "best.json")["epoch"] == 1 and again.selected_epoch == 1
    assert_same_weights(weights(again.model), weights(done.model))

    # An older best epoch cannot be rebuilt: said in one line, never replaced by another epoch's weights.
    data = make_data(256)
    settings = dict(epochs=3, lr=0.05, val_examples=64, val_eps=0.02, select="best")
    result = train(make_model(), data, _Unlearning(good=12), config(tmp_path / "b", **settings))
    assert result.selected_epoch < 3
    (tmp_path / "b" / "best.json").unlink()
    with pytest.raises(RobustkitError, match="its weights are lost: rerun with --no-resume") as err:
        train(make_model(), data, _Unlearning(good=12), config(tmp_path / "b", **settings))
    assert "\n" not in str(err.value)


def test_a_fresh_run_removes_an_earlier_runs_best_checkpoint(tmp_path: Path) -> None:
    train(make_model(), make_data(), PGDAT(eps=0.05, steps=1), config(tmp_path, epochs=1, val_eps=0.05, select="best"))
    assert (tmp_path / "best.json").exists()
    train(make_model(), make_data(), Natural(), config(tmp_path, epochs=1), resume=False)
    assert not (tmp_path / "best.json").exists() and not (tmp_path / "best.safetensors").exists()


def test_the_new_settings_are_part_of_the_run(tmp_path: Path) -> None:
    train(make_model(), make_data(), Natural(), config(tmp_path, epochs=1))
    for change, fragment in (({"augment": "flip"}, "config.augment"), ({"ema_decay": 0.9}, "config.ema_decay"),
                             ({"select": "best"}, "config.select")):
        with pytest.raises(RobustkitError, match=fragment):
            train(make_model(), make_data(), Natural(), config(tmp_path, epochs=1, **change))
    identity = TrainConfig().identity()
    assert "ema_decay" not in identity and identity["val_split"] == "train"


@pytest.mark.parametrize("overrides, fragment", [
    ({"augment": "rotate"}, "'rotate' is not an operation"), ({"ema_decay": 1.0}, "ema_decay must be in"),
    ({"select": "first"}, "select must be one of auto, best, last"),
    ({"select": "best", "val_examples": 0}, "select best needs validation"),
    ({"weights_kind": "mean"}, "weights_kind must be one of ema, raw"),
])
def test_bad_new_settings_fail_before_training(overrides: dict, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment):
        train(make_model(), make_data(), Natural(), config(None, **overrides))


def test_a_defense_with_its_own_moving_average_refuses_another() -> None:
    class Publishing(Natural):
        def published_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
            return model.state_dict()

    with pytest.raises(RobustkitError, match="keeps a moving average of its own weights"):
        train(make_model(), make_data(), Publishing(), config(None, ema_decay=0.9))


def test_the_curves_name_the_run_and_mark_the_kept_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import robustkit.training as training

    drawn: dict[str, Any] = {}
    monkeypatch.setattr(training, "save_training_curves", lambda path, history, **kw: drawn.update(kw, path=path))
    result = train(make_model(), make_data(), PGDAT(eps=8 / 255, steps=1),
                   config(tmp_path, epochs=2, val_eps=8 / 255, val_steps=3, select="best"))
    assert drawn["path"] == tmp_path / "curves.png"
    assert drawn["title"].startswith("pgd-at \u00b7 small \u00b7 toy")
    assert drawn["val_pgd_label"] == "val PGD (linf eps 8/255, 3 steps)"
    assert drawn["chosen_epoch"] == result.selected_epoch and drawn["chosen_label"] == "best epoch (val PGD)"


def test_the_curves_png_shows_the_title_the_attack_and_the_kept_epoch(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from robustkit import plots

    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.1 * e, "val_clean_acc": 0.2 * e,
                "val_pgd_acc": [0.1, 0.3, 0.2][e - 1]} for e in (1, 2, 3)]
    figures: list[Any] = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    plots.save_training_curves(tmp_path / "c.png", history, title="pgd-at \u00b7 small \u00b7 toy",
                               val_pgd_label="val PGD (linf eps 8/255, 10 steps)", chosen_epoch=2,
                               chosen_label="best epoch (val PGD)")
    fig = figures[0]
    assert fig._suptitle.get_text() == "pgd-at \u00b7 small \u00b7 toy"
    loss_ax, acc_ax = fig.axes
    legend = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert "val PGD (linf eps 8/255, 10 steps)" in legend and "best epoch (val PGD): 2" in legend
    assert acc_ax.get_ylabel() == "accuracy %"
    for ax in (loss_ax, acc_ax):  # a dashed line at the kept epoch on both panels
        assert any(list(line.get_xdata()) == [2, 2] and line.get_linestyle() == "--" for line in ax.get_lines())
    rings = [line for line in acc_ax.get_lines() if line.get_markerfacecolor() == "none"]
    assert sorted(float(line.get_ydata()[0]) for line in rings) == pytest.approx([30.0, 40.0])  # its val points, %
    # Without a kept epoch nothing is marked, and the real writer produces a PNG.
    figures.clear()
    monkeypatch.undo()
    out = plots.save_training_curves(tmp_path / "plain.png", history)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("epoch, epochs, accuracy, classes, warned", [
    (1, 40, 0.09, 10, False),  # a slow start is not yet a run that does not learn
    (3, 40, 0.09, 10, True),
    (2, 2, 0.12, 10, True),  # the last epoch of a short run
    (5, 40, 0.16, 10, False),
    (5, 40, 0.54, 2, True),
    (5, 40, 0.70, 2, False),  # learning, for two classes
])
def test_a_run_at_chance_level_is_warned_about_once_it_had_time_to_learn(epoch, epochs, accuracy, classes, warned,
                                                                         capsys):
    row = {"epoch": epoch, "train_acc": 0.5, "val_clean_acc": accuracy}
    assert _warn_if_at_chance(row, classes, PGDAT(eps=0.1), epochs) is warned
    said = capsys.readouterr().err
    assert (said == f"robustkit: warning: epoch {epoch} ended at chance level ({100 * accuracy:.1f}% validation "
                    f"accuracy, {classes} classes): the model is not learning; lower its eps or the learning rate, "
                    "or warm eps up over the first epochs (eps_warmup)\n") if warned else said == ""
