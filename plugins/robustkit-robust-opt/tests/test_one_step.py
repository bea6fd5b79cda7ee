"""Shaham et al.'s one-step ascent (robust optimization, SPECS section 4): known answers for l1, l2 and linf."""

from __future__ import annotations

import pytest
import torch

from robustkit.adversarial import input_gradient
from robustkit.errors import ParameterError
from robustkit.host import make_host
from robustkit.testing import digit_like, labelled, small_cnn
from robustkit_robust_opt import OneStep, one_step


def test_registered_with_its_norms():
    host = make_host()
    assert not host.failures and host.attacks.get("one-step").info["threat_models"] == ("linf", "l2", "l1")
    with pytest.raises(ParameterError, match="norm"):
        host.attacks.create("one-step", {"norm": "l0"})


# --- one-step ascent --------------------------------------------------------------------------


def test_one_step_l1_changes_exactly_one_coordinate():
    model = small_cnn()
    x, y = labelled(model, torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.4 + 0.3)
    adv = OneStep(norm="l1", eps=0.25)(model, x, y).adversarial
    diff = (adv - x).flatten(1)
    assert ((diff.abs() > 0).sum(dim=1) == 1).all()
    grad = input_gradient(model, x, y).flatten(1)
    k = grad.abs().argmax(dim=1)
    rows = torch.arange(len(x))
    assert torch.allclose(diff[rows, k], 0.25 * grad[rows, k].sign())


def test_one_step_l2_has_norm_r_and_linf_is_r_sign():
    model = small_cnn()
    x, y = labelled(model, torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25)
    adv = one_step(model, x, y, norm="l2", eps=0.7, clip=False)
    assert torch.allclose((adv - x).flatten(1).norm(dim=1), torch.full((5,), 0.7), atol=1e-5)
    grad = input_gradient(model, x, y)
    assert torch.allclose(adv - x, 0.7 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1), atol=1e-6)
    adv = OneStep(norm="linf", eps=0.1)(model, x, y).adversarial
    assert torch.allclose(adv - x, 0.1 * grad.sign(), atol=1e-6)


def test_one_step_clip_keeps_images_in_range():
    model = small_cnn()
    x, y = labelled(model, digit_like(4))
    adv = OneStep(norm="linf", eps=0.5)(model, x, y).adversarial
    assert adv.min() >= 0 and adv.max() <= 1
    raw = one_step(model, x, y, norm="linf", eps=0.5, clip=False)  # the function can skip the clip
    assert raw.min() < 0 and torch.allclose(raw.clamp(0, 1), one_step(model, x, y, norm="linf", eps=0.5))


