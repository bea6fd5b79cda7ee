"""Loss sensitivity, photometric shifts and SmoothGrad on cases with a known answer."""

from __future__ import annotations

import colorsys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.errors import InputError
from robustkit_rlfat.saliency import saliency_map, save_saliency_grid, smoothgrad
from robustkit_rlfat.sensitivity import (
    brightness_shift,
    gamma_shift,
    loss_sensitivity,
    rlfat_shifts,
    sensitivity_table,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def linear_model(channels: int = 1, size: int = 4, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, classes)).eval()


def test_brightness_on_grey_adds_and_clips():
    x = torch.tensor([0.0, 0.1, 0.5, 0.95]).view(1, 1, 2, 2)
    assert torch.allclose(brightness_shift(x, 0.15), torch.tensor([0.15, 0.25, 0.65, 1.0]).view(1, 1, 2, 2))
    assert torch.allclose(brightness_shift(x, -0.15), torch.tensor([0.0, 0.0, 0.35, 0.8]).view(1, 1, 2, 2))


@pytest.mark.parametrize("alpha", [-0.15, 0.15])
def test_brightness_on_colour_moves_only_the_hsv_value(alpha):
    x = torch.rand(2, 3, 3, 3, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    shifted = brightness_shift(x, alpha)
    for before, after in zip(x.permute(0, 2, 3, 1).reshape(-1, 3).tolist(),
                             shifted.permute(0, 2, 3, 1).reshape(-1, 3).tolist()):
        h0, s0, v0 = colorsys.rgb_to_hsv(*before)
        h1, s1, v1 = colorsys.rgb_to_hsv(*after)
        assert (h1, s1) == pytest.approx((h0, s0), abs=1e-5)
        assert v1 == pytest.approx(min(max(v0 + alpha, 0.0), 1.0), abs=1e-6)


def test_brightness_turns_black_into_grey():
    shifted = brightness_shift(torch.zeros(1, 3, 1, 1), 0.15)
    assert torch.allclose(shifted, torch.full((1, 3, 1, 1), 0.15))


def test_gamma_shift():
    x = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3)
    assert torch.allclose(gamma_shift(x, 2.0), torch.tensor([0.0, 0.0625, 1.0]).view(1, 1, 1, 3))


def test_loss_sensitivity_matches_the_closed_form_of_a_linear_model():
    model = linear_model()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1])
    weight = model[1].weight.detach()
    probs = F.softmax(model(x), dim=1).detach()
    grads = (probs - F.one_hot(y, 3).float()) @ weight  # d CE / d x = W^T (p - e_y)
    expected = float(grads.norm(dim=1).mean())
    assert loss_sensitivity(model, x, y) == pytest.approx(expected, rel=1e-5)
    assert loss_sensitivity(model, x, y, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_sensitivity_table_has_every_shift_and_rejects_bad_images():
    model = linear_model()
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    table = sensitivity_table(model, x, y)
    assert set(table) == set(rlfat_shifts()) and table["none"] == pytest.approx(loss_sensitivity(model, x, y))
    with pytest.raises(InputError, match="0, 1"):
        loss_sensitivity(model, x * 3, y)


def test_smoothgrad_of_a_linear_model_is_the_true_class_weight():
    model = linear_model()
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([2, 0, 1])
    grad = smoothgrad(model, x, y, samples=4, generator=torch.Generator().manual_seed(0))
    weight = model[1].weight.detach()
    assert torch.allclose(grad.flatten(1), weight[y], atol=1e-6)  # the logit's gradient ignores the noise


def test_smoothgrad_without_noise_is_the_plain_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([1, 2])
    xg = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(xg).gather(1, y[:, None]).sum(), xg)
    assert torch.allclose(smoothgrad(model, x, y, samples=3, noise=0.0), plain, atol=1e-6)


def test_saliency_map_scaling_and_grid(tmp_path):
    grad = torch.tensor([[[[1.0, -4.0]], [[2.0, 0.0]], [[0.0, 1.0]]]])  # 1 x 3 x 1 x 2
    heat = saliency_map(grad)
    assert heat.shape == (1, 1, 2) and torch.allclose(heat, torch.tensor([[[0.5, 1.0]]]))
    images = torch.rand(3, 1, 8, 8)
    path = save_saliency_grid(tmp_path / "maps.png", images, {"a": torch.rand(3, 8, 8), "b": torch.rand(3, 8, 8)},
                              labels=[1, 2, 3], title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
