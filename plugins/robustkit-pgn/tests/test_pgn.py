"""PGN: generator shapes and range, separate classifier/generator updates, resume, the attack, the effect, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn
from torch.utils.data import TensorDataset

from robustkit.adversarial import pgd
from robustkit.checkpoints import load_training_state, load_weights, read_metadata
from robustkit.cli import cli
from robustkit.data import DatasetInfo, ImageDataset
from robustkit.errors import ParameterError, RobustkitError
from robustkit.host import make_host
from robustkit.models import Classifier, ModelSpec, Normalize
from robustkit.essentials.defenses import Natural
from robustkit_pgn.pgn import PGN, Generator, PGNAttack, perturbed
from robustkit.threat import ThreatModel
from robustkit.training import TrainConfig, train
from robustkit.testing import InterruptAt


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Two channels of 4 x 4. Channel 0 is a fragile feature: +-0.02 around 0.5 with little noise, but its
# normalization (std 0.02) makes it loud inside the model, so natural training leans on it. Channel 1 is a
# robust one: +-0.25 with noise 0.15. Flipping channel 0 is cheap in l2 and in linf (eps 0.05).
INFO = DatasetInfo("toy-two-features", num_classes=2, channels=2, image_size=(4, 4), mean=(0.5, 0.5),
                   std=(0.02, 0.5))


def two_features(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    sign = (2 * y - 1).float().view(n, 1, 1)
    x = torch.empty(n, 2, 4, 4)
    x[:, 0] = 0.5 + 0.02 * sign + 0.005 * torch.randn(n, 4, 4, generator=g)
    x[:, 1] = 0.5 + 0.25 * sign + 0.15 * torch.randn(n, 4, 4, generator=g)
    return TensorDataset(x.clamp(0, 1), y)


def data(n_train: int = 256) -> ImageDataset:
    return ImageDataset(INFO, two_features(n_train, seed=0), two_features(256, seed=1))


def linear_model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(32, 2)), Normalize(INFO.mean, INFO.std),
                      ModelSpec("toy-linear", {}, INFO))


def mlp(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, classes))


def batch(n: int = 8, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, 4, 4, generator=g), torch.randint(0, classes, (n,), generator=g)


def small_pgn(**params: Any) -> PGN:
    """A narrow generator: the reference's 128 channels cost seconds per batch on a CPU."""
    return PGN(**{"gen_width": 8, **params})


# --- registration and parameters ----------------------------------------------------------------


def test_entry_point_registers_the_defense_and_the_attack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "pgn")
    host = make_host()
    assert not host.failures
    entry = host.defenses.get("pgn")
    assert entry.plugin == "pgn" and entry.description.startswith("Adversarial training with a perturbation generator")
    defense = host.defenses.create("pgn")
    assert defense.config == {"c_L": 50.0, "gen_lr": 5e-4, "ema_decay": 0.998, "ema_warmup": True,
                              "ema_classifier": True, "detach_grad": False, "adv_coeff": 1.0, "gen_width": 128}
    assert defense.knob == "c_L" and defense.cost() == 5.0
    assert host.defenses.create("pgn", {"detach_grad": "true", "c_L": "70"}).cost() == 3.0
    assert defense.reference["title"] == "Adversarial Training with Perturbation Generator Networks"
    assert defense.reference["authors"] == "Hyeungill Lee, Sungyeob Han, Jungwoo Lee"
    attack = host.attacks.get("pgn")
    assert attack.info["threat_models"] == ("unbounded",) and attack.info["knowledge"] == "white-box"
    assert [p.name for p in attack.declared_params()] == ["checkpoint", "use_ema"]


@pytest.mark.parametrize("given, fragment", [
    ({"ema_decay": 1.0}, "'ema_decay' must be < 1"),
    ({"c_L": -1}, "'c_L' must be >= 0"),
    ({"gen_lr": 0}, "'gen_lr' must be > 0"),
    ({"adv_coeff": 1.5}, "'adv_coeff' must be <= 1"),
    ({"gen_width": 0}, "'gen_width' must be >= 1"),
    ({"c_l": 10}, "did you mean c_L"),
])
def test_bad_params_are_refused(given: dict, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment) as info:
        PGN(**given)
    assert str(info.value).startswith("pgn")


# --- the generator ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels, size, classes, base", [
    (1, (8, 8), 2, (2, 2)),
    (1, (28, 28), 10, (7, 7)),
    (3, (32, 32), 100, (8, 8)),  # the paper's: an 8 x 8 x 128 base after Dense 8192
    (3, (96, 96), 10, (24, 24)),
    (3, (30, 17), 5, (8, 5)),  # not a multiple of 4: 32 x 20 cropped to 30 x 17
])
def test_generator_adapts_to_the_input_shape_and_classes(channels: int, size: tuple, classes: int,
                                                         base: tuple) -> None:
    torch.manual_seed(0)
    generator = Generator(channels, size, classes)
    assert generator.base == base and generator.fc1.in_features == classes
    assert generator.fc2.out_features == 128 * base[0] * base[1]
    assert generator.out.out_channels == channels and generator.conv.in_channels == 128 + 2 * channels
    x = torch.rand(2, channels, *size)
    with torch.no_grad():
        out = generator(torch.randn_like(x), x, F.one_hot(torch.tensor([0, classes - 1]), classes).float())
    assert out.shape == x.shape and torch.isfinite(out).all()
    adv = perturbed(x, out)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_the_defense_sizes_its_generator_from_the_model(tmp_path: Path) -> None:
    defense = small_pgn()
    defense.setup(linear_model(), torch.device("cpu"))
    assert defense.generator.input_shape == (2, 4, 4) and defense.generator.num_classes == 2
    assert defense.generator.width == 8 and defense.generator.fc1.out_features == 64
    # A bare module (no spec): the generator is built at the first batch from the images and logits.
    bare = small_pgn()
    bare.setup(mlp(classes=3), torch.device("cpu"))
    assert bare.generator is None
    bare.batch_loss(mlp(classes=3), *batch())
    assert bare.generator.input_shape == (2, 4, 4) and bare.generator.num_classes == 3


def test_adversarial_images_stay_in_the_unit_interval_even_at_0_and_1() -> None:
    x = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 0.25]).view(1, 1, 2, 3)
    for g in (torch.full_like(x, 1e4), torch.full_like(x, -1e4), torch.randn(x.shape) * 50, torch.zeros_like(x)):
        adv = perturbed(x, g)
        assert torch.isfinite(adv).all() and float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert torch.allclose(perturbed(x, torch.zeros_like(x)), x, atol=1e-6)  # G = 0 leaves the image alone
    # Saturated pixels can still move inwards (atanh of +-0.999999 is finite).
    assert float(perturbed(torch.ones(1), torch.tensor([-8.0]))) < 0.5
    assert float(perturbed(torch.zeros(1), torch.tensor([8.0]))) > 0.5
    # And through the defense, on images with many exact 0s and 1s.
    defense = small_pgn(c_L=0.0)
    x, y = batch()
    x = x.round()
    seen = []
    model = mlp()
    original = model.forward
    model.forward = lambda inp: (seen.append(inp.detach().clone()), original(inp))[1]
    defense.batch_loss(model, x, y)
    adv = seen[1]  # [clean forward, adversarial forward]
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0 and not torch.equal(adv, x)


# --- the two updates ----------------------------------------------------------------------------


@pytest.mark.parametrize("detach_grad", [False, True])
@pytest.mark.parametrize("adv_coeff", [1.0, 0.7])
def test_generator_and_classifier_updates_do_not_interfere(detach_grad: bool, adv_coeff: float) -> None:
    model, (x, y) = mlp(), batch()
    classifier_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    defense = small_pgn(c_L=3.0, detach_grad=detach_grad, adv_coeff=adv_coeff, ema_decay=0.9, ema_warmup=False)
    defense.setup(model, torch.device("cpu"))
    defense.batch_loss(model, x, y)  # builds the generator (a bare model has no spec); one step
    model.zero_grad(set_to_none=True)

    # What the two losses should give, computed the plain way on copies.
    g0 = copy.deepcopy(defense.generator)
    x_req = x.clone().requires_grad_(True)
    logits_clean = model(x_req)
    p_true = logits_clean.softmax(1).gather(1, y[:, None]).mean()
    (grad,) = torch.autograd.grad(p_true, x_req, create_graph=not detach_grad, retain_graph=True)
    x_adv = perturbed(x, g0(grad if not detach_grad else grad.detach(), x, F.one_hot(y, 3).float()))
    ce_adv = F.cross_entropy(model(x_adv if not detach_grad else x_adv.detach()), y)
    classifier_loss = adv_coeff * ce_adv + (1 - adv_coeff) * F.cross_entropy(logits_clean, y)
    expected_theta = torch.autograd.grad(classifier_loss, list(model.parameters()), retain_graph=True)
    ce_for_g = F.cross_entropy(model(x_adv), y)
    generator_loss = -ce_for_g + 3.0 * (x_adv - x).pow(2).flatten(1).sum(1).mean()
    expected_phi = torch.autograd.grad(generator_loss, list(g0.parameters()))

    spied: list[list[torch.Tensor]] = []
    step = defense.gen_optimizer.step

    def spy(*args: Any, **kwargs: Any) -> Any:
        spied.append([p.grad.clone() for p in defense.generator.parameters()])
        return step(*args, **kwargs)

    defense.gen_optimizer.step = spy
    theta = [p.detach().clone() for p in model.parameters()]
    ema_before = [p.detach().clone() for p in defense.generator_ema.parameters()]

    out = defense.batch_loss(model, x, y)  # the generator steps here
    assert all(p.grad is None for p in model.parameters())  # the classifier's grads: untouched
    assert all(torch.equal(a, b) for a, b in zip(theta, model.parameters()))
    assert len(spied) == 1 and defense.steps == 2
    for got, want in zip(spied[0], expected_phi):
        assert torch.allclose(got, want, atol=1e-6)
    phi = [p.detach().clone() for p in defense.generator.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(phi, g0.parameters()))  # it did move
    for avg, before, live in zip(defense.generator_ema.parameters(), ema_before, phi):
        assert torch.allclose(avg, 0.9 * before + 0.1 * live, atol=1e-6)
    assert float(out.loss.detach()) == pytest.approx(float(classifier_loss.detach()), abs=1e-6)

    out.loss.backward()  # the loop's backward and step: the classifier only
    classifier_opt.step()
    assert all(p.grad is None for p in defense.generator.parameters())
    assert all(torch.equal(a, b) for a, b in zip(phi, defense.generator.parameters()))
    for p, before, want in zip(model.parameters(), theta, expected_theta):
        assert torch.allclose(before - p.detach(), 0.1 * want, atol=1e-6)  # exactly the plain gradient


def test_double_backprop_reaches_the_classifier_through_the_generator() -> None:
    model, (x, y) = mlp(), batch()
    double = small_pgn()
    double.batch_loss(model, x, y)  # builds the generator
    detached = copy.deepcopy(double)
    detached.config["detach_grad"] = True
    grads = []
    for defense in (double, detached):
        model.zero_grad(set_to_none=True)
        defense.batch_loss(model, x, y).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    # Same generator, same classifier: only the second-order path through G and grad differs.
    assert not all(torch.allclose(a, b, atol=1e-7) for a, b in zip(*grads))


# --- checkpoints and resume ----------------------------------------------------------------------


class InterruptedPGN(InterruptAt, PGN):
    """PGN that gets a Ctrl-C at a chosen batch."""


def run_config(out_dir: Path | None, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(epochs=3, batch_size=16, lr=0.01, seed=3, device="cpu", val_examples=16,
                                    val_eps=0.05, val_steps=2, out_dir=out_dir)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_resume_gives_exactly_the_straight_run(tmp_path: Path) -> None:
    params = dict(c_L=10.0, gen_lr=1e-2, ema_decay=0.9, gen_width=8)
    straight_defense = InterruptedPGN(**params)
    straight = train(linear_model(), data(64), straight_defense, run_config(tmp_path / "straight"))

    # Stop after epoch 1: Ctrl-C at the first batch of epoch 2 (64 images / 16 = 4 batches per epoch).
    with pytest.raises(RobustkitError):
        train(linear_model(), data(64), InterruptedPGN(interrupt_at=5, **params), run_config(tmp_path / "split"))
    assert read_metadata(tmp_path / "split")["epoch"] == 1
    saved = load_training_state(tmp_path / "split")
    assert set(saved) >= {"architecture", "generator", "generator_ema", "optimizer", "steps", "classifier_ema",
                          "robustkit_live_weights"} and saved["steps"] == saved["classifier_steps"] == 4

    torch.manual_seed(999)  # a different model init and global RNG state (so a different fresh generator)
    resumed_defense = InterruptedPGN(**params)
    resumed = train(linear_model(seed=42), data(64), resumed_defense, run_config(tmp_path / "split"))
    assert resumed.resumed_from == 1 and resumed.epochs_run == 2
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    mine, theirs = straight_defense.state_dict(), resumed_defense.state_dict()
    assert mine["steps"] == theirs["steps"] == 12
    for key in ("generator", "generator_ema"):
        for name in mine[key]:
            assert torch.equal(mine[key][name], theirs[key][name]), (key, name)
    for index, state in mine["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, theirs["optimizer"]["state"][index][name]), (index, name)
    strip = [{k: v for k, v in row.items() if "time" not in k} for row in resumed.history]
    assert strip == [{k: v for k, v in row.items() if "time" not in k} for row in straight.history]


class RecordingPGN(PGN):
    """PGN that remembers the live classifier weights after every optimizer step."""

    def after_step(self, model: nn.Module) -> None:
        self.seen = getattr(self, "seen", []) + [{k: v.detach().clone() for k, v in model.named_parameters()}]
        super().after_step(model)


def test_classifier_moving_average_is_published_and_the_live_weights_are_kept(tmp_path: Path) -> None:
    """The loop validates, saves and returns the average (warm-up decay); the checkpoint keeps the live weights."""
    params = dict(c_L=10.0, gen_lr=1e-2, ema_decay=0.5, gen_width=8)
    averaged = RecordingPGN(**params)
    model = linear_model()
    expected = {k: v.detach().clone() for k, v in model.named_parameters()}
    result = train(model, data(64), averaged, run_config(tmp_path / "ema", epochs=1))
    for t, live_now in enumerate(averaged.seen):  # replay: avg <- d avg + (1 - d) live, d = min(0.5, (1+t)/(10+t))
        decay = min(0.5, (1 + t) / (10 + t))
        expected = {k: decay * expected[k] + (1 - decay) * live_now[k] for k in expected}
    live = load_training_state(tmp_path / "ema")["robustkit_live_weights"]
    for name, value in result.model.named_parameters():
        assert torch.allclose(value, expected[name], atol=1e-6)
        assert torch.equal(live[name], averaged.seen[-1][name]) and not torch.equal(value, live[name])
    saved = linear_model(seed=5)
    load_weights(saved, tmp_path / "ema")
    for a, b in zip(saved.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)

    off = train(linear_model(), data(64), PGN(ema_classifier=False, **params), run_config(tmp_path / "live", epochs=1))
    assert "robustkit_live_weights" not in (load_training_state(tmp_path / "live") or {})
    assert not any(torch.equal(a, b) for a, b in zip(off.model.parameters(), result.model.parameters()))


def test_moving_average_warm_up_follows_tensorflow() -> None:
    defense = PGN(ema_decay=0.998)
    assert [round(defense._decay(t), 6) for t in (0, 1, 10, 10_000)] == [0.1, round(2 / 11, 6), round(11 / 20, 6), 0.998]
    assert PGN(ema_decay=0.998, ema_warmup=False)._decay(0) == 0.998


# --- the attack -----------------------------------------------------------------------------------


def test_pgn_attack_loads_the_generator_and_fools_a_natural_model(tmp_path: Path, monkeypatch) -> None:
    dataset = data()
    settings = dict(batch_size=32, lr=0.003, seed=0, device="cpu", val_examples=0)
    natural = train(linear_model(), dataset, Natural(), TrainConfig(epochs=4, **settings)).model
    # Two epochs: the generator is still winning (the classifier has not learned to ignore channel 0);
    # ema_decay 0.9 so the average of 16 steps is not the random initial generator.
    train(linear_model(), dataset, small_pgn(c_L=10.0, gen_lr=1e-2, ema_decay=0.9, gen_width=16),
          TrainConfig(epochs=2, out_dir=tmp_path / "pgn", **settings))
    x, y = dataset.test.tensors
    clean = float((natural(x).argmax(1) == y).float().mean())
    assert clean > 0.95

    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "pgn")
    host = make_host()
    for use_ema in (True, False):
        attack = host.attacks.create("pgn", {"checkpoint": str(tmp_path / "pgn" / "last.json"),
                                             "use_ema": use_ema})
        assert attack.generator.input_shape == (2, 4, 4) and attack.facts["batch_size"] == 32
        result = attack(natural, x, y)
        assert float(result.adversarial.min()) >= 0 and float(result.adversarial.max()) <= 1
        fooled = float((natural(result.adversarial).argmax(1) == y).float().mean())
        assert fooled < clean - 0.5
    # The gradient is scaled by the training batch size, so an image's result does not depend on its batch.
    attack = PGNAttack(checkpoint=str(tmp_path / "pgn"))
    whole = attack(natural, x, y).adversarial
    assert torch.allclose(attack(natural, x[:5], y[:5]).adversarial, whole[:5], atol=1e-5)


def test_pgn_attack_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    settings = dict(batch_size=32, lr=0.01, seed=0, device="cpu", val_examples=0, epochs=1)
    train(linear_model(), data(64), Natural(), TrainConfig(out_dir=tmp_path / "natural", **settings))
    with pytest.raises(RobustkitError, match="is not a pgn training run") as err:
        PGNAttack(checkpoint=str(tmp_path / "natural"))
    assert "\n" not in str(err.value) and "defense: natural" in str(err.value)
    with pytest.raises(RobustkitError, match="no checkpoint metadata"):
        PGNAttack(checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(ParameterError, match="give checkpoint=PATH"):
        PGNAttack()

    train(linear_model(), data(64), small_pgn(), TrainConfig(out_dir=tmp_path / "pgn", **settings))
    attack = PGNAttack(checkpoint=str(tmp_path / "pgn"))
    other = DatasetInfo("other", num_classes=2, channels=1, image_size=(8, 8), mean=(0.5,), std=(0.25,))
    wrong = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), Normalize(other.mean, other.std),
                       ModelSpec("toy", {}, other))
    with pytest.raises(RobustkitError, match="was trained on 2x4x4 images, not 1x8x8"):
        attack(wrong, torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 0]))
    with pytest.raises(RobustkitError, match="trained for 2 classes, the model has 3"):
        attack(mlp(classes=3), *batch(classes=3))


# --- the effect -----------------------------------------------------------------------------------


def test_pgn_beats_natural_under_pgd() -> None:
    dataset = data()
    eps = 0.05
    # A slower classifier than generator (two time scales): the generator stays near its best response.
    config = TrainConfig(epochs=8, batch_size=32, lr=0.003, seed=0, device="cpu", val_examples=256,
                         val_eps=eps, val_steps=10)
    natural = train(linear_model(), dataset, Natural(), config)
    robust = train(linear_model(), dataset, small_pgn(c_L=10.0, gen_lr=1e-2, gen_width=16), config)
    assert natural.metrics["val_clean_acc"] > 0.95 and robust.metrics["val_clean_acc"] > 0.95
    assert robust.metrics["val_pgd_acc"] > natural.metrics["val_pgd_acc"] + 0.5
    # Independent checks the training loop did not run: PGD in linf and in l2 (PGN's own geometry).
    x, y = dataset.test.tensors
    for threat, step in ((ThreatModel("linf", eps), eps / 4), (ThreatModel("l2", 0.2), 0.05)):
        accs = []
        for result in (natural, robust):
            adv = pgd(result.model, x, y, threat, steps=20, step_size=step, rand_init=False)
            accs.append(float((result.model(adv).argmax(1) == y).float().mean()))
        assert accs[1] > accs[0] + 0.5, threat


# --- command line ---------------------------------------------------------------------------------


def test_train_with_pgn_and_attack_with_its_generator_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # gen_width 16: the reference's 128 channels take about a minute per digits epoch on a loaded CPU.
    args = ["train", "--model", "lenet", "--defense", "pgn", "--param", "gen_width=16", "--epochs", "1",
            "--val-examples", "20", "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "delta_l2" in result.output
    meta = json.loads((out / "last.json").read_text())
    assert meta["defense"]["name"] == "pgn" and meta["defense"]["params"]["gen_width"] == 16
    assert meta["defense_cost"] == 5.0
    attacked = CliRunner().invoke(cli, ["attack", str(out / "last.json"), "--attack", f"pgn checkpoint={out}",
                                        "--n-examples", "20", "--device", "cpu"], catch_exceptions=False)
    assert attacked.exit_code == 0, attacked.output
    assert "pgn" in attacked.output and "20 examples" in attacked.output
    refused = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--attack", f"pgn checkpoint={tmp_path}",
                                       "--n-examples", "5"])
    assert refused.exit_code == 2 and "no checkpoint metadata" in refused.output
