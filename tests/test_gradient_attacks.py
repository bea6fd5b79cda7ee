"""Native gradient attacks: localization masks, localized PGD, Shaham's one-step ascent, CW-linf."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from robustkit.adversarial import input_gradient
from robustkit.errors import ParameterError
from robustkit.host import make_host
from robustkit.plugins.gradient_attacks import (CWLinf, LocalizedPGD, OneStep, cw_margin, localized_pgd,
                                                make_mask, one_step)
from robustkit.plugins.gradient_attacks.masks import KINDS, central_block


def small_cnn(size: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * size * size, 10),
    ).eval()


def digit_like(n: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Images with a zero background and a bright random blob, like MNIST digits."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    q = size // 4
    x[:, :, q:size - q, q + 1:size - q] = torch.rand(n, 1, size - 2 * q, size - 2 * q - 1, generator=gen)
    x[x < 0.3] = 0.0  # some exact zeros inside the blob too
    return x


def labelled(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return x, model(x).argmax(1)


@pytest.fixture(scope="module")
def host():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_LOAD_PLUGINS", "gradient-attacks")
        return make_host()


# --- registration -----------------------------------------------------------------------------


def test_registered_with_facts(host):
    assert not host.failures
    assert {"cw-linf", "one-step", "localized-pgd"} <= set(host.attacks.names())
    assert host.attacks.get("one-step").info["threat_models"] == ("linf", "l2", "l1")
    attack = host.attacks.create("localized-pgd", {"mask": "broad", "localize": "each-step", "steps": "3"})
    assert attack.config["steps"] == 3 and attack.config["localize"] == "each-step"
    with pytest.raises(ParameterError, match="mask"):
        host.attacks.create("localized-pgd", {"mask": "center"})
    with pytest.raises(ParameterError, match="norm"):
        host.attacks.create("one-step", {"norm": "l0"})


# --- masks ------------------------------------------------------------------------------------


def test_background_mask_central_block_28():
    x = torch.rand(2, 1, 28, 28)
    mask = make_mask("background", x)
    assert mask.shape == x.shape and mask.dtype == x.dtype
    zero = (mask[0, 0] == 0).nonzero()
    assert zero[:, 0].unique().tolist() == list(range(11, 17))
    assert zero[:, 1].unique().tolist() == list(range(11, 17))
    assert int((mask == 0).sum()) == 2 * 36
    assert central_block(28) == (11, 17)


def test_background_mask_scales_with_size():
    assert central_block(8) == (3, 5)  # 6 * 8 / 28 ~ 1.7 -> 2 pixels, centred
    mask = make_mask("background", torch.rand(1, 3, 8, 8))
    assert mask.shape == (1, 3, 8, 8)
    assert (mask[:, :, 3:5, 3:5] == 0).all() and int((mask == 0).sum()) == 3 * 4


def test_standard_exact_and_broad_masks():
    x = digit_like(3)
    assert (make_mask("standard", x) == 1).all()
    for tau in (0.0, 0.5):
        exact = make_mask("exact", x, tau=tau)
        assert torch.equal(exact.bool(), x <= tau)
    for neighbourhood, structure in ((8, np.ones((3, 3), bool)), (4, ndimage.generate_binary_structure(2, 1))):
        broad = make_mask("broad", x, neighbourhood=neighbourhood)
        for i in range(len(x)):
            dilated = ndimage.binary_dilation(x[i, 0].numpy() > 0, structure=structure)
            assert np.array_equal(broad[i, 0].numpy() == 0, dilated)
    assert (make_mask("broad", x) <= make_mask("exact", x)).all()  # broad fixes a superset


def test_exact_mask_multichannel_uses_any_channel():
    x = torch.zeros(1, 3, 4, 4)
    x[0, 2, 1, 1] = 0.7
    mask = make_mask("exact", x)
    assert (mask[0, :, 1, 1] == 0).all() and int((mask == 0).sum()) == 3


def test_mask_errors():
    with pytest.raises(ParameterError, match="unknown mask"):
        make_mask("centre", torch.rand(1, 1, 8, 8))
    with pytest.raises(ParameterError, match="neighbourhood"):
        make_mask("broad", torch.rand(1, 1, 8, 8), neighbourhood=6)


# --- localized PGD ----------------------------------------------------------------------------


@pytest.mark.parametrize("localize", ["after", "each-step"])
@pytest.mark.parametrize("kind", KINDS)
def test_localized_pgd_never_changes_a_masked_pixel(kind, localize):
    model = small_cnn()
    x, y = labelled(model, digit_like(6))
    attack = LocalizedPGD(mask=kind, localize=localize, eps=0.3, steps=5, step_size=0.1)
    result = attack(model, x, y)
    mask = make_mask(kind, x)
    fixed = mask == 0
    assert torch.equal(result.adversarial[fixed], x[fixed])
    assert (result.adversarial - x).abs().max() <= 0.3 + 1e-6
    assert ((result.adversarial - x).abs() > 1e-3)[~fixed].any()  # the free pixels do move
    assert torch.equal(result.extra["mask"], mask)


def test_localized_pgd_function_keeps_model_mode_and_checks_localize():
    model = small_cnn().train()
    x, y = labelled(model, digit_like(2))
    adv = localized_pgd(model, x, y, make_mask("exact", x), eps=0.3, steps=2, step_size=0.1, localize="each-step")
    assert model.training and adv.shape == x.shape
    with pytest.raises(ValueError, match="localize"):
        localized_pgd(model, x, y, make_mask("exact", x), eps=0.3, steps=1, step_size=0.1, localize="during")


def test_localized_pgd_standard_mask_is_plain_pgd():
    model = small_cnn()
    x, y = labelled(model, digit_like(4))
    a = LocalizedPGD(mask="standard", localize="after", steps=4, step_size=0.05, seed=3)(model, x, y).adversarial
    b = LocalizedPGD(mask="standard", localize="each-step", steps=4, step_size=0.05, seed=3)(model, x, y).adversarial
    assert torch.allclose(a, b)


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
