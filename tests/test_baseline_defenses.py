"""The baseline defenses: registration, parameters, PGD-AT's inner examples and its effect."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustkit.data import ImageDataset
from robustkit.errors import ParameterError
from robustkit.host import make_host
from robustkit.essentials.defenses import PGDAT, Natural
from robustkit.threat import ThreatModel
from robustkit.training import TrainConfig, train
from robustkit.testing import INFO, linear_model, ModeRecorder, robust_vs_fragile, random_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_entry_point_registers_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "baseline-defenses")
    host = make_host()
    assert not host.failures
    assert {"natural", "pgd-at"} <= set(host.defenses.names())
    entry = host.defenses.get("pgd-at")
    assert entry.plugin == "baseline-defenses"
    assert entry.description.startswith("PGD adversarial training")
    defense = host.defenses.create("pgd-at", {"eps": "8/255", "steps": "7"})
    assert defense.config["eps"] == pytest.approx(8 / 255)
    assert defense.knob == "eps" and defense.cost() == 8.0
    assert host.defenses.create("natural").cost() == 1.0


@pytest.mark.parametrize("given, fragment", [
    ({"eps": 0}, "must be > 0"),
    ({"eps": -0.1}, "must be > 0"),
    ({"eps": 1.5}, "exceeds the data range"),
    ({"steps": 0}, "must be >= 1"),
    ({"step_size": 0}, "must be > 0"),
    ({"norm": "l1"}, "must be one of linf, l2"),
    ({"attack_mode": "test"}, "must be one of train, eval"),
    ({"epsilon": 0.1}, "did you mean eps"),
])
def test_pgd_at_rejects_bad_params(given: dict, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment) as info:
        PGDAT(**given)
    assert str(info.value).startswith("pgd-at")


def test_l2_eps_may_exceed_one_and_step_size_follows_eps() -> None:
    defense = PGDAT(norm="l2", eps=2.0, steps=5)
    assert defense.step_size == pytest.approx(2.5 * 2.0 / 5)
    assert PGDAT(step_size=0.01).step_size == 0.01
    assert defense.describe() == {"name": "pgd-at", "knob": "eps", "params": {
        "norm": "l2", "eps": 2.0, "steps": 5, "step_size": None, "rand_init": True, "attack_mode": "train"}}


def test_natural_loss_is_cross_entropy() -> None:
    model = linear_model()
    x, y = random_batch()
    out = Natural().batch_loss(model, x, y)
    assert torch.allclose(out.loss, F.cross_entropy(model(x), y))
    assert out.logits is not None and out.logits.shape == (16, 2)


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_pgd_at_examples_stay_in_the_ball_and_raise_the_loss(norm: str, eps: float) -> None:
    model = linear_model()
    x, y = random_batch(32)
    torch.manual_seed(1)
    adv = PGDAT(norm=norm, eps=eps, steps=5).adversarial_examples(model, x, y)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert not adv.requires_grad
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)


def test_pgd_at_loss_is_cross_entropy_on_the_adversarial_batch() -> None:
    model = linear_model()
    x, y = random_batch()
    defense = PGDAT(eps=0.1, steps=3)
    torch.manual_seed(5)
    out = defense.batch_loss(model, x, y)
    torch.manual_seed(5)
    adv = defense.adversarial_examples(model, x, y)
    assert torch.allclose(out.loss, F.cross_entropy(model(adv), y))
    assert out.loss.requires_grad  # gradients reach the weights through the adversarial forward


@pytest.mark.parametrize("mode, expected", [("train", True), ("eval", False)])
def test_attack_mode_sets_the_mode_while_crafting_and_restores_it(mode: str, expected: bool) -> None:
    net = ModeRecorder()
    net.train()
    x, y = random_batch()
    defense = PGDAT(eps=0.1, steps=3, attack_mode=mode)
    defense.batch_loss(net, x, y)
    assert net.modes[:3] == [expected] * 3  # the three attack steps
    assert net.modes[3] is True  # the training forward
    assert net.training


def test_rand_init_off_starts_from_the_clean_image() -> None:
    model = linear_model()
    x, y = random_batch()
    first = PGDAT(eps=0.1, steps=2, rand_init=False).adversarial_examples(model, x, y)
    second = PGDAT(eps=0.1, steps=2, rand_init=False).adversarial_examples(model, x, y)
    assert torch.equal(first, second)


def test_pgd_at_beats_natural_under_pgd(tmp_path) -> None:
    data = ImageDataset(INFO, robust_vs_fragile(256, seed=0), robust_vs_fragile(256, seed=1))
    eps = 0.2
    config = TrainConfig(epochs=6, batch_size=32, lr=0.05, seed=0, device="cpu", val_examples=256,
                         val_eps=eps, val_steps=10)
    natural = train(linear_model(), data, Natural(), config)
    robust = train(linear_model(), data, PGDAT(eps=eps, steps=5), config)
    assert natural.metrics["val_clean_acc"] > 0.95
    assert robust.metrics["val_clean_acc"] > 0.9
    assert robust.metrics["val_pgd_acc"] > natural.metrics["val_pgd_acc"] + 0.5
    # The independent check: an attack the training loop did not run.
    x, y = torch.stack([data.test[i][0] for i in range(256)]), data.test.tensors[1]
    threat = ThreatModel("linf", eps)
    from robustkit.adversarial import pgd

    accs = []
    for result in (natural, robust):
        adv = pgd(result.model, x, y, threat, steps=20, step_size=0.02, rand_init=False)
        accs.append(float((result.model(adv).argmax(1) == y).float().mean()))
    assert accs[1] > accs[0] + 0.5
