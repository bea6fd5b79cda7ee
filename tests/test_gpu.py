"""On a CUDA GPU: every defense trains, every native attack runs, evaluation and the CLI work, at every precision.

Skipped without a GPU (CI has none); run on a GPU machine with ``python -m pytest tests/test_gpu.py``.
What a CPU-only suite cannot catch: a tensor created on the CPU inside a GPU computation (a device mismatch
error, or a silent copy every step), a checkpoint that does not load back on the CPU, and mixed precision
on the hardware it is meant for (fp16 with loss scaling, channels-last convolutions).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import Subset

from robustkit.checkpoints import load_model
from robustkit.cli import cli
from robustkit.data import ImageDataset, stack, take
from robustkit.devices import seed_everything
from robustkit.evaluation import evaluate
from robustkit.host import make_host
from robustkit.models import build_model
from robustkit.testing.contracts import cheap_params
from robustkit.training import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
HOST = make_host()
CUDA = torch.device("cuda")

#: Every native attack with a small budget; autoattack with a reduced custom suite.
NATIVE_ATTACKS: dict[str, dict] = {
    "pgd": {"eps": 0.1, "steps": 5},
    "deepfool": {"max_iter": 20},
    "square": {"eps": 0.1, "n_queries": 200},
    "cw-linf": {"eps": 0.1, "steps": 5, "step_size": 0.03},
    "fgs": {"report_pass": False},
    "fgv": {"report_pass": False},
    "hotcold": {"all_ranks": True, "report_pass": False},
    "localized-pgd": {"eps": 0.3, "steps": 5, "step_size": 0.1, "mask": "broad"},
    "nattack": {"eps": 0.2, "iterations": 20, "population": 50},
    "one-step": {"norm": "l2", "eps": 1.0},
    "autoattack": {"eps": 0.1, "version": "custom", "attacks": "apgd-ce,square", "steps": 5, "n_queries": 20},
}


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    full = HOST.datasets.create("digits", {}, root=None)
    return ImageDataset(full.info, Subset(full.train, range(256)), Subset(full.test, range(64)))


@pytest.fixture(scope="module")
def trained(digits: ImageDataset) -> torch.nn.Module:
    """A LeNet trained naturally on the GPU for a few epochs, so attacks have something to flip."""
    seed_everything(0)
    model = build_model(HOST, "lenet", digits.info)
    config = TrainConfig(epochs=5, batch_size=64, device="cuda", val_examples=0, out_dir=None)
    return train(model, digits, HOST.defenses.create("natural", {}), config).model


def test_every_native_attack_is_listed() -> None:
    natives = {e.name for e in HOST.attacks if e.plugin not in ("torchattacks", "art") and ":" not in e.name}
    assert natives - {"pgn"} <= set(NATIVE_ATTACKS), "add the new native attack to NATIVE_ATTACKS"


@pytest.mark.parametrize("defense", HOST.defenses.names())
def test_every_defense_trains_on_the_gpu_and_loads_on_the_cpu(defense: str, digits: ImageDataset,
                                                              tmp_path: Path) -> None:
    seed_everything(0)
    model = build_model(HOST, "lenet", digits.info)
    config = TrainConfig(epochs=1, batch_size=64, seed=0, device="cuda", val_examples=16, val_eps=0.1, val_steps=1,
                         out_dir=tmp_path)
    defense_params = cheap_params(HOST.defenses.get(defense).factory)
    result = train(model, digits, HOST.defenses.create(defense, defense_params), config, host=HOST)
    assert next(result.model.parameters()).device.type == "cuda"
    assert torch.isfinite(torch.tensor(result.metrics["train_loss"]))
    x, _ = stack(take(digits.test, 8))
    on_cpu = load_model(tmp_path, host=HOST, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(on_cpu(x), result.model(x.to(CUDA)).cpu(), atol=1e-4, rtol=1e-4)


def test_a_seeded_gpu_run_repeats_bit_for_bit(digits: ImageDataset) -> None:
    """cuDNN's default convolution backward sums in a varying order; robustkit picks deterministic kernels."""
    def run() -> dict[str, torch.Tensor]:
        seed_everything(0)
        model = build_model(HOST, "madry-cnn", digits.info)
        config = TrainConfig(epochs=1, batch_size=64, seed=0, device="cuda", val_examples=0, out_dir=None)
        return train(model, digits, HOST.defenses.create("pgd-at", {"eps": 0.1, "steps": 2}), config).model.state_dict()

    first, second = run(), run()
    assert torch.backends.cudnn.deterministic
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("name", sorted(NATIVE_ATTACKS))
def test_every_native_attack_runs_on_the_gpu(name: str, trained: torch.nn.Module, digits: ImageDataset) -> None:
    x, y = stack(take(digits.test, 32))
    x, y = x.to(CUDA), y.to(CUDA)
    result = HOST.attacks.create(name, NATIVE_ATTACKS[name])(trained, x, y)
    adv = result.adversarial
    assert adv.device.type == "cuda" and adv.shape == x.shape and adv.dtype == x.dtype
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        fooled = (trained(adv).argmax(1) != y).float().mean()
    assert fooled > 0.2, f"{name} fooled only {float(fooled):.2f} of a naturally trained LeNet"


@pytest.mark.parametrize("name", ["fgs", "fgv", "hotcold"])
def test_line_search_attacks_agree_between_cpu_and_gpu(name: str, trained: torch.nn.Module,
                                                       digits: ImageDataset) -> None:
    """Deterministic searches: the same model on either device finds the same scale for nearly every image
    (float32 sums in a different order can move a pixel across a rounding boundary, so not bit-equal)."""
    x, y = stack(take(digits.test, 32))
    attack = HOST.attacks.create(name, {"report_pass": False})
    on_gpu = attack(trained, x.to(CUDA), y.to(CUDA)).adversarial.cpu()
    cpu_model = load_cpu_copy(trained)
    on_cpu = attack(cpu_model, x, y).adversarial
    same = ((on_gpu - on_cpu).flatten(1).abs().amax(1) <= 1 / 255 + 1e-6).float().mean()
    assert same >= 0.9


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_evaluation_at_every_precision_matches_fp32(precision: str, channels_last: bool,
                                                    trained: torch.nn.Module, digits: ImageDataset) -> None:
    pgd = HOST.attacks.create("torchattacks:PGD", {"eps": 0.1, "steps": 5})
    reference = evaluate(load_cpu_copy(trained).to(CUDA), digits, {"pgd": pgd}, device="cuda")
    mixed = evaluate(load_cpu_copy(trained).to(CUDA), digits, {"pgd": pgd}, device="cuda", precision=precision,
                     channels_last=channels_last)
    assert abs(mixed.clean_accuracy - reference.clean_accuracy) <= 2 / 64
    assert abs(mixed.robust_accuracy["pgd"] - reference.robust_accuracy["pgd"]) <= 6 / 64
    assert mixed.device.startswith("cuda")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_the_gpu_learns(precision: str, tmp_path: Path) -> None:
    data = HOST.datasets.create("digits", {}, root=None)
    seed_everything(0)
    model = build_model(HOST, "madry-cnn", data.info)
    config = TrainConfig(epochs=2, batch_size=128, device="cuda", val_examples=128, val_eps=0.1, val_steps=2,
                         precision=precision, channels_last=True, out_dir=tmp_path)
    result = train(model, data, HOST.defenses.create("pgd-at", {"eps": 0.1, "steps": 3}), config)
    assert result.metrics["val_clean_acc"] > 0.6


def test_cli_trains_attacks_and_benchmarks_on_the_gpu(tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    done = runner.invoke(cli, ["train", "--model", "lenet", "--defense", "pgd-at", "--param", "eps=0.1",
                               "--param", "steps=2", "--epochs", "2", "--device", "cuda", "--precision", "bf16",
                               "--channels-last", "--val-examples", "64", "--out", str(run)])
    assert done.exit_code == 0, done.output
    done = runner.invoke(cli, ["attack", str(run / "last.json"), "--attack", "torchattacks:PGD eps=0.1 steps=5",
                               "--attack", "nattack eps=0.1 iterations=20 population=50", "--n-examples", "64",
                               "--device", "cuda", "--out", str(tmp_path / "eval")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "eval").exists()


def load_cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of ``model`` (the fixture's model stays on the GPU for the other tests)."""
    import copy

    return copy.deepcopy(model).cpu().eval()
