"""Localized adversarial training: registration, parameters, the masked training inputs, cost and effect."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from robustkit.adversarial import pgd
from robustkit.cli import cli
from robustkit.errors import ParameterError
from robustkit.host import get_host, make_host
from robustkit.models import Classifier, ModelSpec, Normalize
from robustkit.essentials.defenses import PGDAT, Natural
from robustkit_localized_at.masks import KINDS, make_mask
from robustkit_localized_at.defense import LocalizedAT
from robustkit.threat import ThreatModel
from robustkit.training import TrainConfig, train


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorder(nn.Module):
    """A tiny nonlinear net (with batch norm) that remembers every input and the mode of every forward pass."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))
        self.inputs: list[torch.Tensor] = []
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        self.modes.append(self.training)
        return self.body(x)


def digit_like_batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 images with a black background (exactly 0) and a random 'stroke' of values in (0, 1]."""
    g = torch.Generator().manual_seed(seed)
    stroke = torch.rand(n, 1, 8, 8, generator=g) < 0.3
    values = 0.05 + 0.95 * torch.rand(n, 1, 8, 8, generator=g)
    return torch.where(stroke, values, torch.zeros_like(values)), torch.randint(0, 3, (n,), generator=g)


# --- registration and parameters ------------------------------------------------------------------


def test_entry_point_registers_localized_at(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "localized-at")
    host = make_host()
    assert not host.failures
    assert host.records["localized-at"].registered == {"attack": ["localized-pgd"], "benchmark": ["localized-at"],
                                                       "defense": ["localized-at"]}
    entry = host.defenses.get("localized-at")
    assert entry.plugin == "localized-at"
    assert entry.description.startswith("Localized adversarial training")
    assert tuple(entry.info["threat_models"]) == ("linf",)
    defense = host.defenses.create("localized-at", {"mask": "exact", "localize": "each-step", "eps": "8/255",
                                                    "steps": "7", "step_size": "none", "neighbourhood": "4"})
    assert defense.config == {"mask": "exact", "localize": "each-step", "eps": 8 / 255, "steps": 7,
                              "step_size": None, "tau": 0.0, "neighbourhood": 4, "rand_init": True,
                              "attack_mode": "train"}
    assert defense.step_size == pytest.approx(2.5 * (8 / 255) / 7)
    assert defense.knob == "eps" and defense.cost() == 8.0
    assert defense.describe()["name"] == "localized-at"
    assert "Localized Adversarial Training" in defense.reference["title"]
    assert defense.reference["authors"].startswith("Eitan Rothberg")
    assert defense.reference["venue"] and defense.reference["link"]


def test_defaults_are_the_papers() -> None:
    defense = LocalizedAT()
    assert defense.config["mask"] == "broad" and defense.config["localize"] == "after"
    assert defense.config["eps"] == 0.3 and defense.config["steps"] == 100 and defense.step_size == 0.01
    assert defense.cost() == 101.0 == defense.passes_per_batch
    assert LocalizedAT(steps=5).cost() == 6.0


@pytest.mark.parametrize("given, fragment", [
    ({"eps": 0}, "'eps' must be > 0"),
    ({"eps": -0.1}, "'eps' must be > 0"),
    ({"eps": 1.5}, "'eps' must be <= 1"),
    ({"eps": "lots"}, "must be of type float"),
    ({"mask": "center"}, "must be one of standard, background, exact, broad"),
    ({"localize": "during"}, "must be one of after, each-step"),
    ({"steps": 0}, "'steps' must be >= 1"),
    ({"step_size": 0}, "'step_size' must be > 0"),
    ({"tau": -0.1}, "'tau' must be >= 0"),
    ({"tau": 1.0}, "'tau' must be < 1"),
    ({"neighbourhood": 6}, "must be one of 8, 4"),
    ({"attack_mode": "test"}, "must be one of train, eval"),
    ({"epss": 0.1}, "did you mean eps"),
])
def test_bad_params_are_refused_in_one_line(given: dict, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment) as info:
        LocalizedAT(**given)
    message = str(info.value)
    assert message.startswith("localized-at") and "\n" not in message


# --- the training inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("localize", ["after", "each-step"])
@pytest.mark.parametrize("kind", KINDS)
def test_training_inputs_leave_masked_pixels_exactly_unchanged(kind: str, localize: str) -> None:
    x, y = digit_like_batch()
    net = Recorder()
    net.train()
    eps, steps = 0.3, 4
    defense = LocalizedAT(mask=kind, localize=localize, eps=eps, steps=steps, step_size=0.1)
    out = defense.batch_loss(net, x, y)
    assert len(net.inputs) == steps + 1 == defense.cost()  # steps attack passes, then one training pass
    fed = net.inputs[-1]  # what the model was trained on
    mask = make_mask(kind, x)
    fixed, free = mask == 0, mask == 1
    assert torch.equal(fed[fixed], x[fixed])  # bit for bit
    assert fed.min() >= 0 and fed.max() <= 1
    assert (fed - x).abs().max() <= eps + 1e-6
    assert (fed[free] != x[free]).float().mean() > 0.5  # the free pixels were attacked
    if localize == "after" and kind != "standard":  # the unrestricted attack moved masked pixels, then undid it
        assert any(not torch.equal(seen[fixed], x[fixed]) for seen in net.inputs[:-1])
    # The loss is the cross-entropy of that whole batch (train mode: its own batch statistics), no clean term.
    assert torch.allclose(out.loss, F.cross_entropy(net.body(fed), y), atol=1e-6)
    assert out.loss.requires_grad and out.logits is not None and out.logits.shape == (16, 3)
    assert out.metrics == {"mask_frac": pytest.approx(float(mask.mean()))}


def test_standard_mask_is_pgd_at() -> None:
    x, y = digit_like_batch(seed=1)
    net = Recorder()
    torch.manual_seed(7)
    localized = LocalizedAT(mask="standard", eps=0.2, steps=3, step_size=0.05).adversarial_examples(net, x, y)
    torch.manual_seed(7)
    plain = PGDAT(eps=0.2, steps=3, step_size=0.05).adversarial_examples(net, x, y)
    assert torch.allclose(localized, plain, atol=1e-6)


@pytest.mark.parametrize("mode, expected", [("train", True), ("eval", False)])
def test_attack_mode_sets_the_mode_while_crafting_and_restores_it(mode: str, expected: bool) -> None:
    net = Recorder()
    net.train()
    x, y = digit_like_batch()
    LocalizedAT(mask="exact", eps=0.1, steps=3, attack_mode=mode).batch_loss(net, x, y)
    assert net.modes == [expected] * 3 + [True]  # the three attack steps, then the training forward
    assert net.training


def test_rand_init_off_is_deterministic() -> None:
    x, y = digit_like_batch()
    net = Recorder().eval()
    defense = LocalizedAT(mask="broad", eps=0.2, steps=2, rand_init=False)
    assert torch.equal(defense.adversarial_examples(net, x, y), defense.adversarial_examples(net, x, y))


# --- effect ------------------------------------------------------------------------------------------


def digits_mlp(info, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return Classifier(net, Normalize(info.mean, info.std), ModelSpec("toy-mlp", {}, info))


def test_localized_at_beats_natural_under_pgd_on_digits() -> None:
    # The real 8x8 digits: black background, so the exact mask frees about half of the pixels.
    data = get_host().datasets.create("digits", {}, root=None)
    eps = 0.15
    config = TrainConfig(epochs=5, batch_size=64, lr=1e-2, seed=0, device="cpu", val_examples=450,
                         val_eps=eps, val_steps=10)
    natural = train(digits_mlp(data.info), data, Natural(), config)
    results = {kind: train(digits_mlp(data.info), data,
                           LocalizedAT(mask=kind, eps=eps, steps=5, step_size=None), config)
               for kind in ("standard", "exact")}
    assert natural.metrics["val_clean_acc"] > 0.93
    for result in results.values():
        assert result.metrics["val_clean_acc"] > 0.9
    # Measured (seeds 0-2): natural about 0.17, standard about 0.6, exact about 0.28.
    assert results["standard"].metrics["val_pgd_acc"] > natural.metrics["val_pgd_acc"] + 0.25
    assert results["exact"].metrics["val_pgd_acc"] > natural.metrics["val_pgd_acc"] + 0.05
    # The independent check: an attack the training loop did not run.
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    y = torch.as_tensor([int(data.test[i][1]) for i in range(len(data.test))])
    accs = {}
    for name, result in (("natural", natural), *results.items()):
        adv = pgd(result.model, x, y, ThreatModel("linf", eps), steps=20, step_size=0.02, rand_init=False)
        accs[name] = float((result.model(adv).argmax(1) == y).float().mean())
    assert accs["standard"] > accs["natural"] + 0.25 and accs["exact"] > accs["natural"] + 0.05


# --- command line ------------------------------------------------------------------------------------


def test_cli_trains_a_broad_mask_model_on_digits(tmp_path) -> None:
    out = tmp_path / "run"
    args = ["train", "--model", "madry-cnn", "--dataset", "digits", "--defense", "localized-at",
            "--param", "mask=broad", "--param", "eps=0.1", "--param", "steps=2", "--param", "step_size=none",
            "--epochs", "1", "--batch-size", "256", "--val-examples", "50", "--device", "cpu",
            "--out", str(out)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "last.json").read_text())
    assert meta["defense"]["name"] == "localized-at"
    assert meta["defense"]["params"]["mask"] == "broad" and meta["defense"]["params"]["steps"] == 2
    assert meta["defense"]["knob"] == "eps"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 0 < rows[-1]["mask_frac"] < 0.5  # the broad mask frees few pixels of an 8x8 digit
    bad = CliRunner().invoke(cli, ["train", "--model", "madry-cnn", "--defense", "localized-at",
                                   "--param", "eps=2", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "'eps' must be <= 1" in bad.output
