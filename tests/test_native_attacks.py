"""The essential native attacks: PGD and CW-linf, checked where the answer is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustkit.essentials.attacks import PGD, CWLinf, cw_margin
from robustkit.errors import ParameterError
from robustkit.host import make_host
from robustkit.testing import digit_like, labelled, small_cnn


def test_registered_as_essentials():
    host = make_host(entry_points=False)
    assert {"pgd", "cw-linf"} <= set(host.attacks.names())
    entry = host.attacks.get("pgd")
    assert entry.plugin == "native-attacks" and entry.info["threat_models"] == ("linf", "l2")
    assert entry.info["supports_targeted"] is True
    with pytest.raises(ParameterError, match="norm"):
        host.attacks.create("pgd", {"norm": "l1"})


# --- PGD --------------------------------------------------------------------------------------


def linear_two_class(weights: torch.Tensor) -> nn.Module:
    """logit_1 - logit_0 = w . x: the linf-optimal attack on class 1 is x - eps * sign(w), reached in one step."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(weights.numel(), 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([torch.zeros_like(weights), weights]))
    return net.eval()


def test_pgd_linf_on_a_linear_model_reaches_the_optimal_corner():
    w = torch.randn(64, generator=torch.Generator().manual_seed(0))
    model = linear_two_class(w)
    x = torch.full((3, 1, 8, 8), 0.5)
    y = torch.ones(3, dtype=torch.long)
    adv = PGD(eps=0.1, steps=5, random_start=True)(model, x, y).adversarial
    assert torch.allclose(adv, x - 0.1 * w.sign().view(1, 1, 8, 8), atol=1e-6)


def test_pgd_l2_on_a_linear_model_moves_eps_against_the_weights():
    w = torch.randn(64, generator=torch.Generator().manual_seed(1))
    model = linear_two_class(w)
    x = torch.full((2, 1, 8, 8), 0.5)
    y = torch.ones(2, dtype=torch.long)
    adv = PGD(norm="l2", eps=0.3, steps=20, random_start=False)(model, x, y).adversarial
    expected = x - 0.3 * (w / w.norm()).view(1, 1, 8, 8)
    assert torch.allclose(adv, expected, atol=1e-4)


def test_pgd_stays_in_the_ball_is_seeded_and_targets():
    model = small_cnn()
    x, y = labelled(model, torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2)))
    a = PGD(eps=0.05, steps=5, seed=3)(model, x, y).adversarial
    assert torch.equal(a, PGD(eps=0.05, steps=5, seed=3)(model, x, y).adversarial)
    assert (a - x).abs().max() <= 0.05 + 1e-6 and a.min() >= 0 and a.max() <= 1
    target = (y + 1) % 10
    hit = PGD(eps=0.5, steps=30)(model, x, y, target_labels=target).adversarial
    with torch.no_grad():
        assert (model(hit).argmax(1) == target).float().mean() >= 0.9


# --- CW-linf ----------------------------------------------------------------------------------


def test_cw_margin_and_legacy_mask():
    logits = torch.tensor([[1.0, -2.0, -3.0], [0.5, 2.0, -1.0]])
    labels = torch.tensor([0, 1])
    assert torch.allclose(cw_margin(logits, labels), torch.tensor([3.0, 1.5]))
    # RLFAT's (1 - onehot) * z puts 0 in the true slot: image 0's other logits are all negative.
    assert torch.allclose(cw_margin(logits, labels, legacy_mask=True), torch.tensor([1.0, 1.5]))


@pytest.mark.parametrize("legacy", [False, True])
def test_cw_linf_lowers_the_margin_within_eps(legacy):
    model = small_cnn()
    x, y = labelled(model, torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2)))
    attack = CWLinf(eps=0.05, steps=10, step_size=0.0125, legacy_mask=legacy)
    adv = attack(model, x, y).adversarial
    with torch.no_grad():
        before, after = cw_margin(model(x), y), cw_margin(model(adv), y)
    assert after.mean() < before.mean() - 0.01
    assert (after <= before + 1e-4).float().mean() >= 0.9
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_cw_linf_unclipped_start_and_seed():
    model = small_cnn()
    x, y = labelled(model, digit_like(4))
    a = CWLinf(eps=0.1, steps=2, step_size=0.02, clip_start=False, seed=5)(model, x, y).adversarial
    b = CWLinf(eps=0.1, steps=2, step_size=0.02, clip_start=False, seed=5)(model, x, y).adversarial
    assert torch.equal(a, b) and a.min() >= 0 and (a - x).abs().max() <= 0.1 + 1e-6
