"""Localized PGD and its masks (localized adversarial training, SPECS section 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from robustkit.errors import ParameterError
from robustkit.host import make_host
from robustkit.testing import digit_like, labelled, small_cnn
from robustkit_localized_at import LocalizedPGD, localized_pgd, make_mask
from robustkit_localized_at.masks import KINDS, central_block


def test_registered_with_its_parameters():
    host = make_host()
    assert not host.failures and host.attacks.get("localized-pgd").plugin == "localized-at"
    attack = host.attacks.create("localized-pgd", {"mask": "broad", "localize": "each-step", "steps": "3"})
    assert attack.config["steps"] == 3 and attack.config["localize"] == "each-step"
    with pytest.raises(ParameterError, match="mask"):
        host.attacks.create("localized-pgd", {"mask": "center"})


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


