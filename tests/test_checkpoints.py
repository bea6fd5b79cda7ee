"""Checkpoints: safetensors + JSON round trips, resume state, and one-line errors for damaged files."""

from __future__ import annotations

import json
import os
import platform
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import robustkit
from robustkit.files import atomic_write
from robustkit.checkpoints import (CheckpointPaths, dataset_info_from_dict, defer_interrupts,
                                   load_model, load_training_state, load_weights, read_metadata, save_checkpoint)
from robustkit.data import DatasetInfo
from robustkit.errors import RobustkitError
from robustkit.hookspecs import hookimpl
from robustkit.host import make_host
from robustkit.models import Classifier, build_model
from robustkit.essentials.defenses import PGDAT

INFO = DatasetInfo("toy", num_classes=3, channels=1, image_size=(8, 8), mean=(0.5,), std=(0.25,),
                   class_names=("a", "b", "c"), params={"n": 64})


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], hidden: int = 8):
        super().__init__()
        features = in_channels * image_size[0] * image_size[1]
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                    nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TiedNet(nn.Module):
    """Two names for one weight: safetensors refuses shared memory unless the saver copes."""

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int]):
        super().__init__()
        self.a = nn.Linear(in_channels * image_size[0] * image_size[1], num_classes)
        self.b = self.a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x.flatten(1))


def tiny(num_classes: int, in_channels: int, image_size: tuple[int, int], hidden: int = 8) -> nn.Module:
    """A tiny MLP for checkpoint tests."""
    return TinyNet(num_classes, in_channels, image_size, hidden)


def tied(num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    """A linear layer registered under two names."""
    return TiedNet(num_classes, in_channels, image_size)


@hookimpl
def register_models(register) -> None:
    register("tiny", tiny)
    register("tied", tied)


PLUGIN = SimpleNamespace(register_models=register_models)


@pytest.fixture
def host():
    return make_host(plugins=[("testplugin", PLUGIN)], entry_points=False)


@pytest.fixture
def model(host) -> Classifier:
    torch.manual_seed(0)
    built = build_model(host, "tiny", INFO, {"hidden": 6})
    built.train()
    built(torch.rand(4, 1, 8, 8))  # move the batch-norm running statistics off their defaults
    return built.eval()


def test_round_trip_rebuilds_the_same_model(tmp_path: Path, host, model: Classifier) -> None:
    paths = save_checkpoint(tmp_path / "ckpt", model, epoch=3, seed=7)
    assert paths == CheckpointPaths.of(tmp_path / "ckpt.safetensors") == CheckpointPaths.of(tmp_path / "ckpt.json")
    loaded = load_model(tmp_path / "ckpt.safetensors", host)
    assert isinstance(loaded, Classifier) and not loaded.training
    assert loaded.spec.name == "tiny" and dict(loaded.spec.params) == {"hidden": 6}
    assert loaded.spec.dataset == INFO
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_directory_means_its_last_checkpoint(tmp_path: Path, host, model: Classifier) -> None:
    save_checkpoint(tmp_path / "last", model)
    assert isinstance(load_model(tmp_path, host), Classifier)


def test_metadata_records_model_dataset_defense_metrics_and_versions(tmp_path: Path, model: Classifier) -> None:
    defense = PGDAT(eps=0.1, steps=3)
    save_checkpoint(tmp_path / "ckpt", model, defense=defense, epoch=2, seed=11,
                    metrics={"val_clean_acc": 0.5, "bad": float("nan")}, extra={"note": ("x", Path("p"))})
    meta = read_metadata(tmp_path / "ckpt")
    assert meta["format"] == "robustkit-checkpoint" and meta["format_version"] == 1
    assert meta["model"] == {"name": "tiny", "params": {"hidden": 6}}
    assert meta["dataset"]["name"] == "toy" and meta["dataset"]["image_size"] == [8, 8]
    assert dataset_info_from_dict(meta["dataset"]) == INFO
    assert meta["defense"] == {"name": "pgd-at", "knob": "eps", "params": dict(defense.config)}
    assert meta["epoch"] == 2 and meta["seed"] == 11
    assert meta["metrics"] == {"val_clean_acc": 0.5, "bad": None}  # strict JSON: NaN becomes null
    assert meta["versions"]["robustkit"] == robustkit.__version__
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["python"] == platform.python_version()
    assert meta["note"] == ["x", "p"]
    assert meta["files"]["weights"] == "ckpt.safetensors" and len(meta["files"]["weights_sha256"]) == 64
    assert meta["files"]["state"] is None


def test_extra_metadata_cannot_overwrite_reserved_keys(tmp_path: Path, model: Classifier) -> None:
    with pytest.raises(ValueError, match="epoch"):
        save_checkpoint(tmp_path / "ckpt", model, extra={"epoch": 1})


def test_tied_weights_are_saved_and_loaded(tmp_path: Path, host) -> None:
    model = build_model(host, "tied", INFO)
    save_checkpoint(tmp_path / "tied", model)
    loaded = load_model(tmp_path / "tied", host)
    assert loaded.net.a is loaded.net.b
    assert torch.equal(loaded.net.a.weight, model.net.a.weight)


def _adam_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.rand(8, 1, 8, 8, generator=g)).logsumexp(1).mean().backward()
        optimizer.step()


def test_optimizer_scheduler_and_defense_state_resume_exactly(tmp_path: Path, host, model: Classifier) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 ** e)
    _adam_steps(model, optimizer, 3, seed=0)
    scheduler.step()
    save_checkpoint(tmp_path / "ckpt", model, optimizer=optimizer, scheduler=scheduler,
                    defense_state={"generator": {"w": torch.arange(3.0)}, "count": 4})

    twin = load_model(tmp_path / "ckpt", host)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2, betas=(0.8, 0.99))
    twin_sched = torch.optim.lr_scheduler.LambdaLR(twin_opt, lambda e: 0.5 ** e)
    state = load_training_state(tmp_path / "ckpt", twin_opt, twin_sched)
    assert state is not None and state["count"] == 4 and torch.equal(state["generator"]["w"], torch.arange(3.0))
    assert twin_opt.param_groups[0]["betas"] == (0.8, 0.99)
    assert twin_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 5e-3
    assert twin_sched.state_dict() == scheduler.state_dict()

    _adam_steps(model, optimizer, 2, seed=1)
    _adam_steps(twin, twin_opt, 2, seed=1)
    for key, value in model.state_dict().items():
        assert torch.equal(twin.state_dict()[key], value), key


def test_resume_state_needs_to_have_been_saved(tmp_path: Path, model: Classifier) -> None:
    save_checkpoint(tmp_path / "ckpt", model)
    with pytest.raises(RobustkitError, match="without optimizer state"):
        load_training_state(tmp_path / "ckpt", torch.optim.SGD(model.parameters(), lr=0.1))


def test_saving_without_state_removes_a_stale_state_file(tmp_path: Path, model: Classifier) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    paths = save_checkpoint(tmp_path / "ckpt", model, optimizer=optimizer)
    assert paths.state.is_file()
    save_checkpoint(tmp_path / "ckpt", model)
    assert not paths.state.exists()


def test_optimizer_state_of_another_model_is_refused(tmp_path: Path, host, model: Classifier) -> None:
    optimizer = torch.optim.Adam(model.parameters())
    _adam_steps(model, optimizer, 1, seed=0)
    save_checkpoint(tmp_path / "ckpt", model, optimizer=optimizer)
    other = nn.Linear(3, 3)
    with pytest.raises(RobustkitError, match="does not fit this optimizer"):
        load_training_state(tmp_path / "ckpt", torch.optim.Adam(other.parameters()))


# --- damaged checkpoints -----------------------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_checkpoint(tmp_path: Path, host) -> None:
    with pytest.raises(RobustkitError) as err:
        load_model(tmp_path / "nope.safetensors", host)
    assert "nope.json" in _one_line(err) and "not found" in str(err.value)


def test_missing_weights_file(tmp_path: Path, host, model: Classifier) -> None:
    paths = save_checkpoint(tmp_path / "ckpt", model)
    paths.weights.unlink()
    with pytest.raises(RobustkitError) as err:
        load_model(paths.meta, host)
    assert "ckpt.safetensors not found" in _one_line(err)


def test_truncated_weights(tmp_path: Path, host, model: Classifier) -> None:
    paths = save_checkpoint(tmp_path / "ckpt", model)
    paths.weights.write_bytes(paths.weights.read_bytes()[:-10])
    with pytest.raises(RobustkitError) as err:
        load_model(paths.weights, host)
    assert str(paths.weights) in _one_line(err) and "truncated" in str(err.value)


def test_corrupt_weights_without_a_checksum(tmp_path: Path, host, model: Classifier) -> None:
    paths = save_checkpoint(tmp_path / "ckpt", model)
    meta = json.loads(paths.meta.read_text())
    meta["files"]["weights_sha256"] = None  # e.g. a hand-written metadata file
    paths.meta.write_text(json.dumps(meta))
    paths.weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(RobustkitError) as err:
        load_model(paths.weights, host)
    assert "not a readable safetensors file" in _one_line(err)


def test_flipped_byte_is_caught_by_the_checksum(tmp_path: Path, host, model: Classifier) -> None:
    paths = save_checkpoint(tmp_path / "ckpt", model)
    data = bytearray(paths.weights.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data: safetensors alone would not notice
    paths.weights.write_bytes(bytes(data))
    with pytest.raises(RobustkitError) as err:
        load_model(paths.weights, host)
    assert "does not match the checksum" in _one_line(err)


def test_metadata_that_does_not_parse(tmp_path: Path, host, model: Classifier) -> None:
    paths = save_checkpoint(tmp_path / "ckpt", model)
    paths.meta.write_text('{"format": "robustkit-checkpoint", ')
    with pytest.raises(RobustkitError) as err:
        load_model(paths.weights, host)
    assert "is not valid JSON" in _one_line(err) and "ckpt.json" in str(err.value)


def test_json_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(RobustkitError, match="is not a robustkit checkpoint"):
        read_metadata(tmp_path / "x.json")


def test_weights_that_do_not_fit_the_architecture(tmp_path: Path, host, model: Classifier) -> None:
    paths = save_checkpoint(tmp_path / "ckpt", model)
    meta = json.loads(paths.meta.read_text())
    meta["model"]["params"]["hidden"] = 5  # metadata now describes another architecture
    paths.meta.write_text(json.dumps(meta))
    with pytest.raises(RobustkitError) as err:
        load_model(paths.meta, host)
    assert "do not fit this model" in _one_line(err) and "size mismatch" in str(err.value)


def test_weights_with_other_names_are_refused(tmp_path: Path, model: Classifier) -> None:
    save_checkpoint(tmp_path / "ckpt", model)
    with pytest.raises(RobustkitError) as err:
        load_weights(nn.Sequential(nn.Linear(64, 3)), tmp_path / "ckpt")
    assert "missing 0.weight" in _one_line(err) and "unexpected" in str(err.value)


def test_unknown_model_name_says_which_checkpoint(tmp_path: Path, model: Classifier) -> None:
    save_checkpoint(tmp_path / "ckpt", model)
    empty = make_host(entry_points=False)
    with pytest.raises(RobustkitError) as err:
        load_model(tmp_path / "ckpt", empty)
    assert "cannot rebuild the model of" in _one_line(err) and "unknown model 'tiny'" in str(err.value)


# --- atomic writes ----------------------------------------------------------------------------------


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")

    def half_write(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_write)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_ctrl_c_during_a_save_waits_until_the_checkpoint_is_complete(tmp_path: Path, host, model: Classifier) -> None:
    # Python's own Ctrl-C handler, whatever the runner inherited (a background job starts with SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with defer_interrupts():
                os.kill(os.getpid(), signal.SIGINT)
                save_checkpoint(tmp_path / "ckpt", model, epoch=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert read_metadata(tmp_path / "ckpt")["epoch"] == 1
    assert isinstance(load_model(tmp_path / "ckpt", host), Classifier)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.json", "ckpt.safetensors"]
