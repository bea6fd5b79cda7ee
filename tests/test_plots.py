"""Example grids: the PNG itself, the examples evaluation keeps for it, and ``robustkit attack`` writing it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robustkit.attacks import Attack, AttackResult
from robustkit.cli import cli
from robustkit.errors import InputError
from robustkit.evaluation import evaluate
from robustkit.models import Classifier, ModelSpec, Normalize
from robustkit.plots import amplified_perturbation, save_example_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def images(n: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels, height, width", [(1, 8, 8), (3, 32, 32), (3, 20, 12)])
def test_grid_is_a_png_of_sensible_size(tmp_path, channels, height, width):
    clean = images(5, channels, height, width)
    adv = (clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    path = save_example_grid(tmp_path / "sub" / "grid.png", clean, adv, labels=[0, 1, 2, 3, 4],
                             clean_pred=torch.tensor([0, 1, 2, 3, 0]), adv_pred=torch.tensor([1, 1, 0, 3, 2]))
    w, h = png_size(path)
    assert 400 <= w <= 3000 and 300 <= h <= 2000, (w, h)
    assert path.stat().st_size > 2000


def test_blocks_per_attack_and_max_images(tmp_path):
    clean = images(12, 1, 8, 8)
    one = png_size(save_example_grid(tmp_path / "one.png", clean, clean.flip(0), max_images=8))
    two = png_size(save_example_grid(tmp_path / "two.png", clean, {"PGD": clean.flip(0), "FGSM": 1 - clean},
                                     adv_pred={"PGD": torch.zeros(12), "FGSM": torch.ones(12)}, max_images=8))
    few = png_size(save_example_grid(tmp_path / "few.png", clean, clean.flip(0), max_images=3))
    assert two[1] > one[1] * 1.4  # two more rows
    assert few[0] < one[0]  # fewer columns


def test_perturbation_is_amplified_around_grey():
    delta = torch.tensor([0.0, 0.01, -0.02, 0.005])
    shown, scale = amplified_perturbation(delta)
    assert scale == pytest.approx(25.0)
    assert shown.tolist() == pytest.approx([0.5, 0.75, 0.0, 0.625])
    zero, scale = amplified_perturbation(torch.zeros(3))
    assert zero.tolist() == [0.5, 0.5, 0.5] and scale == 1.0
    fixed, scale = amplified_perturbation(delta, amplify=10)
    assert scale == 10 and fixed.tolist() == pytest.approx([0.5, 0.6, 0.3, 0.55])


def test_bad_inputs(tmp_path):
    clean = images(4, 1, 8, 8)
    with pytest.raises(InputError, match="shape"):
        save_example_grid(tmp_path / "x.png", clean, images(4, 1, 9, 8))
    with pytest.raises(InputError, match="C = 1 or 3"):
        save_example_grid(tmp_path / "x.png", images(4, 2, 8, 8), images(4, 2, 8, 8))
    with pytest.raises(InputError, match="labels"):
        save_example_grid(tmp_path / "x.png", clean, clean, labels=[1, 2])


def tiny_model() -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return Classifier(net, Normalize((0.5,), (0.25,)), ModelSpec("tiny-linear")).eval()


class Shift(Attack):
    """A stand-in attack: adds a fixed value (enough to flip some predictions)."""

    name = "shift"

    def perturb(self, model, images, labels, target_labels=None):
        return AttackResult(adversarial=(images + 0.3).clamp(0, 1))


def test_evaluation_keeps_the_first_clean_correct_examples():
    model = tiny_model()
    x = images(20, 1, 8, 8, seed=3)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[[0, 3, 4]] = (y[[0, 3, 4]] + 1) % 10  # wrong before any attack
    result = evaluate(model, (x, y), {"shift": Shift()}, batch_size=4, device="cpu", keep_examples=6)
    ex = result.examples
    assert ex.indices.tolist() == [1, 2, 5, 6, 7, 8]  # clean-correct ones, across batches
    assert torch.equal(ex.images, x[ex.indices]) and torch.equal(ex.labels, y[ex.indices])
    assert torch.equal(ex.adversarial["shift"], (x[ex.indices] + 0.3).clamp(0, 1))
    assert ex.adv_pred["shift"].tolist() == [result.records[i].attacks["shift"].adv_pred for i in ex.indices]
    assert "examples" not in result.summary() and len(json.dumps(result.summary())) < 2000
    assert evaluate(model, (x, y), {"shift": Shift()}, device="cpu").examples is None
    # Fewer correct than asked: misclassified ones (not attacked, adversarial = clean) fill in.
    few = evaluate(model, (x[:5], y[:5]), {"shift": Shift()}, batch_size=2, device="cpu", keep_examples=4).examples
    assert few.indices.tolist() == [1, 2, 0, 3]
    assert torch.equal(few.adversarial["shift"][2:], x[[0, 3]])


def test_attack_command_writes_the_grid(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--attack", "torchattacks:FGSM eps=0.1",
                                      "--n-examples", "10", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"wrote example grid {out / 'grid.png'}" in result.output
    w, h = png_size(out / "grid.png")
    assert w > h > 300
    assert (out / "summary.json").exists()

    grid = tmp_path / "elsewhere" / "g.png"
    result = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--attack", "torchattacks:FGSM eps=0.1",
                                      "--attack", "torchattacks:PGD eps=0.1 steps=2", "--n-examples", "6",
                                      "--grid", str(grid), "--grid-examples", "4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "4 images x 2 attack(s)" in result.output
    png_size(grid)
    bad = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--attack", "torchattacks:FGSM eps=0.1",
                                   "--grid", str(tmp_path / "g.jpg")])
    assert bad.exit_code == 2 and ".png" in bad.output
