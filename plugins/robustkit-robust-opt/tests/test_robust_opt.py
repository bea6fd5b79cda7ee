"""Robust optimization (Shaham et al.): registration, parameters, the l1/l2/linf ascent steps and the effect."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


from robustkit.adversarial import input_gradient, pgd
from robustkit.data import ImageDataset
from robustkit.errors import ParameterError
from robustkit.host import make_host
from robustkit.essentials.defenses import Natural
from robustkit_robust_opt.defense import RobustOpt
from robustkit.threat import ThreatModel
from robustkit.training import TrainConfig, train
from robustkit.testing import INFO, linear_model, small_mlp, ModeRecorder, robust_vs_fragile


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def interior_batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0.3, 0.7]: a step of at most 0.2 per pixel never reaches the clipping bounds."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_entry_point_registers_robust_opt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "robust-opt")
    host = make_host()
    assert not host.failures
    entry = host.defenses.get("robust-opt")
    assert entry.plugin == "robust-opt"
    assert entry.description.startswith("Robust optimization (Shaham et al.)")
    assert set(entry.info["threat_models"]) == {"linf", "l2", "l1"}
    defense = host.defenses.create("robust-opt", {"norm": "l2", "radius": "1/2"})
    assert defense.config == {"norm": "l2", "radius": 0.5, "clip": True}
    assert defense.knob == "radius" and defense.cost() == 2.0 and defense.passes_per_batch == 2.0
    assert defense.reference["authors"] == "Uri Shaham, Yutaro Yamada, Sahand Negahban"
    assert defense.reference["title"].startswith("Understanding Adversarial Training: Increasing Local Stability")
    assert defense.reference["link"] and defense.reference["venue"]


@pytest.mark.parametrize("given, fragment", [
    ({"norm": "l3"}, "must be one of linf, l2, l1"),
    ({"radius": 0}, "must be > 0"),
    ({"radius": -0.1}, "must be > 0"),
    ({"radius": 1.5}, "exceeds the data range"),
    ({"clip": "maybe"}, "must be of type bool"),
    ({"radios": 0.1}, "did you mean radius"),
])
def test_bad_params_are_refused(given: dict, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment) as info:
        RobustOpt(**given)
    assert str(info.value).startswith("robust-opt")


def test_default_radius_follows_the_norm_and_l2_may_exceed_one() -> None:
    assert RobustOpt().radius == pytest.approx(0.06)
    assert RobustOpt(norm="l2").radius == pytest.approx(0.6)
    assert RobustOpt(norm="l1").radius == pytest.approx(0.6)
    assert RobustOpt(norm="l2", radius=3.0).radius == 3.0
    assert RobustOpt(radius=0.1).describe() == {"name": "robust-opt", "knob": "radius",
                                                 "params": {"norm": "linf", "radius": 0.1, "clip": True}}


@pytest.mark.parametrize("clip", [True, False])
def test_linf_step_is_radius_times_the_gradient_sign(clip: bool) -> None:
    model, (x, y) = small_mlp(), interior_batch()
    adv = RobustOpt(norm="linf", radius=0.1, clip=clip).adversarial_examples(model, x, y)
    grad = input_gradient(model, x, y)
    assert (grad != 0).all()
    assert torch.allclose(adv - x, 0.1 * grad.sign(), atol=1e-6)
    assert not adv.requires_grad


@pytest.mark.parametrize("clip", [True, False])
def test_l2_step_has_norm_radius_along_the_gradient(clip: bool) -> None:
    model, (x, y) = small_mlp(), interior_batch()
    adv = RobustOpt(norm="l2", radius=0.5, clip=clip).adversarial_examples(model, x, y)
    delta = (adv - x).flatten(1)
    assert torch.allclose(delta.norm(dim=1), torch.full((16,), 0.5), atol=1e-5)
    grad = input_gradient(model, x, y).flatten(1)
    assert torch.allclose(F.cosine_similarity(delta, grad, dim=1), torch.ones(16), atol=1e-5)


@pytest.mark.parametrize("clip", [True, False])
def test_l1_step_changes_exactly_one_coordinate_per_image(clip: bool) -> None:
    model, (x, y) = small_mlp(), interior_batch()
    adv = RobustOpt(norm="l1", radius=0.2, clip=clip).adversarial_examples(model, x, y)
    delta = (adv - x).flatten(1)
    changed = delta.abs() > 1e-7
    assert changed.sum(dim=1).tolist() == [1] * 16
    grad = input_gradient(model, x, y).flatten(1)
    top = grad.abs().argmax(dim=1)
    assert changed.float().argmax(dim=1).tolist() == top.tolist()  # the coordinate of largest |g|
    rows = torch.arange(16)
    assert torch.allclose(delta[rows, top], 0.2 * grad[rows, top].sign(), atol=1e-6)


def test_clip_keeps_images_in_range_and_the_reference_mode_does_not() -> None:
    # A linear model: the gradient's sign depends on the label only, so it is the same at the edge images.
    model, (x, y) = linear_model(), interior_batch()
    grad = input_gradient(model, x, y)
    edge = torch.where(grad > 0, torch.ones_like(x), torch.zeros_like(x))  # every step points outwards
    assert torch.equal(input_gradient(model, edge, y).sign(), grad.sign())
    clipped = RobustOpt(norm="linf", radius=0.1).adversarial_examples(model, edge, y)
    assert torch.equal(clipped, edge)  # nothing can move: the whole step is lost at the bounds
    unclipped = RobustOpt(norm="linf", radius=0.1, clip=False).adversarial_examples(model, edge, y)
    assert float(unclipped.max()) == pytest.approx(1.1) and float(unclipped.min()) == pytest.approx(-0.1)


def test_loss_is_cross_entropy_on_the_perturbed_batch_only_with_two_passes() -> None:
    net = ModeRecorder()
    net.train()
    x, y = interior_batch()
    defense = RobustOpt(norm="l2", radius=0.5)
    out = defense.batch_loss(net, x, y)
    assert net.modes == [True, True]  # one pass for g (as the loop hands the model over), one for the update
    adv = defense.adversarial_examples(net, x, y)
    assert torch.allclose(out.loss, F.cross_entropy(net(adv), y))
    assert out.logits is not None and out.logits.shape == (16, 2)
    assert out.loss.requires_grad


def test_robust_opt_beats_natural_under_pgd() -> None:
    # The pgd-at test's problem: pixel 0 is a robust feature, 63 weak pixels a fragile one.
    data = ImageDataset(INFO, robust_vs_fragile(256, seed=0), robust_vs_fragile(256, seed=1))
    eps = 0.2
    config = TrainConfig(epochs=6, batch_size=32, lr=0.05, seed=0, device="cpu", val_examples=256,
                         val_eps=eps, val_steps=10)
    natural = train(linear_model(), data, Natural(), config)
    robust = train(linear_model(), data, RobustOpt(norm="linf", radius=eps), config)
    assert natural.metrics["val_clean_acc"] > 0.95
    assert robust.metrics["val_clean_acc"] > 0.9
    assert robust.metrics["val_pgd_acc"] > natural.metrics["val_pgd_acc"] + 0.5
    # The independent check: an attack the training loop did not run.
    x, y = data.test.tensors
    accs = []
    for result in (natural, robust):
        adv = pgd(result.model, x, y, ThreatModel("linf", eps), steps=20, step_size=0.02, rand_init=False)
        accs.append(float((result.model(adv).argmax(1) == y).float().mean()))
    assert accs[1] > accs[0] + 0.5
