"""Mixed precision and channels-last: the Autocast wrapper, training and evaluation at bf16/fp16 on the CPU."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robustkit.checkpoints import read_metadata
from robustkit.cli import cli
from robustkit.devices import seed_everything
from robustkit.evaluation import evaluate
from robustkit.errors import InputError, ParameterError
from robustkit.host import make_host
from robustkit.models import build_model
from robustkit.precision import Autocast, wrap
from robustkit.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HOST = make_host()


def test_autocast_runs_reduced_precision_and_returns_float32_logits() -> None:
    seen: list[torch.dtype] = []
    linear = nn.Linear(4, 3)
    linear.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    wrapped = wrap(linear, "bf16")
    out = wrapped(torch.rand(2, 4))
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    x = torch.rand(2, 4, requires_grad=True)
    wrapped(x).sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32  # attacks get float32 input gradients


def test_fp32_without_channels_last_is_the_model_itself_and_modes_follow_the_wrapper() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    assert wrap(model) is model
    model.eval()
    wrapped = wrap(model, "bf16", channels_last=True)
    assert isinstance(wrapped, Autocast) and not wrapped.training
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    wrapped.train()
    assert model.training and model[1].training


def test_precision_is_checked_before_work() -> None:
    with pytest.raises(ParameterError, match="precision"):
        TrainConfig(precision="fp8").check()
    data = (torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(InputError, match="precision"):
        evaluate(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), data, {}, precision="half")


@pytest.mark.parametrize("precision,channels_last", [("bf16", False), ("fp16", False), ("bf16", True)])
def test_training_and_evaluation_in_mixed_precision(precision: str, channels_last: bool, tmp_path) -> None:
    data = HOST.datasets.create("digits", {}, root=None)
    seed_everything(0)
    model = build_model(HOST, "lenet", data.info)
    config = TrainConfig(epochs=1, batch_size=128, device="cpu", val_examples=32, val_eps=0.1, val_steps=2,
                         precision=precision, channels_last=channels_last, out_dir=tmp_path)
    result = train(model, data, HOST.defenses.create("pgd-at", {"eps": 0.1, "steps": 1}), config)
    assert result.metrics["val_clean_acc"] > 0.3  # it learned, in reduced precision
    meta = read_metadata(tmp_path)
    assert meta["run"]["config"]["precision"] == precision  # part of the run's identity
    assert (meta["grad_scaler"] is not None) == (precision == "fp16")
    pgd = HOST.attacks.create("torchattacks:PGD", {"eps": 0.1, "steps": 3})
    mixed = evaluate(result.model, data, {"pgd": pgd}, n_examples=64, precision=precision, channels_last=channels_last)
    full = evaluate(result.model, data, {"pgd": pgd}, n_examples=64)
    assert abs(mixed.clean_accuracy - full.clean_accuracy) <= 0.05


def test_default_precision_keeps_old_run_identities(tmp_path) -> None:
    assert "precision" not in TrainConfig().identity() and "channels_last" not in TrainConfig().identity()
    assert TrainConfig(precision="bf16").identity()["precision"] == "bf16"


def test_cli_flags(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["train", "--model", "lenet", "--epochs", "1", "--batch-size", "256",
                                      "--val-examples", "16", "--precision", "bf16", "--channels-last",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["attack", str(tmp_path / "run" / "last.json"), "--attack",
                                      "torchattacks:FGSM eps=0.1", "--n-examples", "32", "--precision", "bf16"])
    assert result.exit_code == 0, result.output
