"""SSIM and PASS (robustkit_hotcold.pass_metric): exact identities, alignment, and an independent SSIM."""

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.datasets import load_digits

from robustkit.errors import InputError
from robustkit_hotcold.pass_metric import align, pass_score, ssim_score, ssim_window


def blobs(shift: float = 0.0, size: int = 32, seed: int = 0, channels: int = 1) -> torch.Tensor:
    """A smooth image of Gaussian blobs (dark border), all blobs moved right by ``shift`` pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    img = np.zeros((channels, size, size))
    for _ in range(6):
        cy, cx = rng.uniform(8, size - 8, 2)
        s = rng.uniform(1.5, 2.5)
        amp = rng.uniform(0.3, 0.7, channels)[:, None, None]
        img += amp * np.exp(-((yy - cy) ** 2 + (xx - cx - shift) ** 2) / (2 * s * s))
    return torch.tensor(np.clip(img, 0, 1), dtype=torch.float32).unsqueeze(0)


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. (2004) written out: 11 x 11 Gaussian window (sigma 1.5), valid positions only, L = 255."""
    r = np.arange(-5, 6, dtype=np.float64)
    g = np.exp(-(r ** 2) / (2 * 1.5 ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(img):
        return np.einsum("ijkl,kl->ij", sliding_window_view(img, (11, 11)), window)

    scores = []
    for ca, cb in zip(a, b):  # channels
        mu_a, mu_b = filt(ca), filt(cb)
        var_a = filt(ca * ca) - mu_a ** 2
        var_b = filt(cb * cb) - mu_b ** 2
        cov = filt(ca * cb) - mu_a * mu_b
        ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
        scores.append(ssim_map.mean())
    return float(np.mean(scores))


def test_pass_of_an_image_with_itself_is_exactly_one():
    torch.manual_seed(0)
    for shape in [(3, 1, 8, 8), (2, 3, 32, 32), (1, 1, 5, 7)]:
        x = torch.rand(shape)
        assert torch.equal(pass_score(x, x), torch.ones(shape[0], dtype=torch.float64))
        assert torch.equal(ssim_score(x, x), torch.ones(shape[0], dtype=torch.float64))
    flat = torch.full((2, 1, 16, 16), 0.5)
    assert torch.equal(pass_score(flat, flat), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("channels", [1, 3])
def test_pass_forgives_a_one_pixel_shift_that_ssim_does_not(channels):
    for seed in range(3):
        x, moved = blobs(0.0, seed=seed, channels=channels), blobs(1.0, seed=seed, channels=channels)
        p, s = float(pass_score(moved, x)), float(ssim_score(moved, x))
        assert p > 0.99, (seed, p)
        assert s < 0.95 and (1 - s) > 100 * (1 - p), (seed, p, s)
        # the aligned image is (nearly) the original again
        assert (align(moved, x) - x).abs().max() < 0.05


def test_ssim_matches_an_independent_implementation():
    torch.manual_seed(1)
    x = torch.cat([blobs(0.0, seed=s) for s in range(3)])
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    got = ssim_score(noisy, x)
    want = [reference_ssim(a.double().numpy() * 255, b.double().numpy() * 255) for a, b in zip(noisy, x)]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert (got < 1).all() and (got > 0).all()
    x3, n3 = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    want3 = [reference_ssim(a.double().numpy() * 255, b.double().numpy() * 255) for a, b in zip(n3, x3)]
    assert ssim_score(n3, x3).tolist() == pytest.approx(want3, abs=1e-6)


def test_pass_of_aligned_images_is_their_ssim():
    # A photometric change leaves nothing to align: ECC keeps (numerically) the identity.
    x = torch.cat([blobs(0.0, seed=s) for s in range(3)])
    brighter = 0.8 * x + 0.1
    want = [reference_ssim(a.double().numpy() * 255, b.double().numpy() * 255) for a, b in zip(brighter, x)]
    assert pass_score(brighter, x).tolist() == pytest.approx(want, abs=1e-6)
    assert pass_score(brighter, x).tolist() == pytest.approx(ssim_score(brighter, x).tolist(), abs=1e-6)


def test_flat_images_fall_back_to_the_identity():
    x = torch.full((1, 1, 16, 16), 0.3)
    adv = torch.full((1, 1, 16, 16), 0.5)
    assert float(pass_score(adv, x)) == pytest.approx(float(ssim_score(adv, x)), abs=1e-12)
    assert torch.equal(align(adv, x), adv)


def test_small_images_use_the_largest_window_that_fits():
    assert ssim_window(8, 8) == 7 and ssim_window(10, 12) == 9 and ssim_window(7, 30) == 7
    assert ssim_window(11, 11) == 11 and ssim_window(224, 224) == 11 and ssim_window(2, 2) == 1
    # 8 x 8 digits: scores exist and fall with the noise on average (ECC on 8 x 8 images is erratic
    # for single images, so only the mean is checked).
    x = torch.tensor(load_digits().images[:50] / 16, dtype=torch.float32).unsqueeze(1)
    torch.manual_seed(2)
    means = []
    for sd in (0.02, 0.1, 0.3):
        p = pass_score((x + sd * torch.randn_like(x)).clamp(0, 1), x)
        assert ((p <= 1) & (p >= -1)).all()
        means.append(float(p.mean()))
    assert means[0] > 0.95 and means[0] > means[1] > means[2]
    assert torch.equal(pass_score(x, x), torch.ones(50, dtype=torch.float64))


def test_bad_inputs_are_rejected():
    with pytest.raises(InputError):
        pass_score(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 9))
    with pytest.raises(InputError):
        ssim_score(torch.rand(2, 1, 8, 8) * 2, torch.rand(2, 1, 8, 8))
    with pytest.raises(InputError, match="ecc_blur"):
        pass_score(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), ecc_blur=4)
