"""Perceptual similarity of adversarial images: SSIM and PASS (Rozsa et al. 2016).

PASS, the *perceptual adversarial similarity score*, first aligns the adversarial image to the
original with a homography, then measures their structural similarity:
``PASS(adv, x) = SSIM(align(adv -> x), x)``. A small translation or rotation, which a person does
not see as a change of the image, barely lowers PASS while it ruins SSIM and every Lp distance.

Both functions take batches ``N x C x H x W`` in [0, 1] (any device) and return one score per image
as a float64 tensor on the CPU (the work runs there: OpenCV and scikit-image, one call per image).

Conventions (``SPECS.md`` section 5):

- Images are compared on the [0, 255] scale (``255 * x``, not rounded), ``data_range=255``.
- SSIM is Wang et al. (2004): 11 x 11 Gaussian window with sigma 1.5, ``C1 = (0.01 L)^2``,
  ``C2 = (0.03 L)^2``, mean of the SSIM map, computed by scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=255)``; channels are compared separately and averaged (``channel_axis``).
- Small images (a side under 11 pixels, e.g. the 8 x 8 digits): ``win_size`` becomes the largest odd
  number <= the smaller side. scikit-image keeps its Gaussian weights (11 taps, sigma 1.5, reflected
  borders) and only crops ``(win_size - 1) // 2`` pixels per border before averaging the map, so on
  8 x 8 images the score is the mean over the central 2 x 2 map values, each a Gaussian-weighted
  comparison of (nearly) the whole image. Images of 11 pixels and more are scored exactly as Wang et al.
- Alignment: OpenCV ``findTransformECC(template=x, input=adv, warp=eye(3), MOTION_HOMOGRAPHY,
  criteria=(COUNT+EPS, 50, 1e-3))`` on grayscale images (the channel mean for other than 1 or 3
  channels), then ``warpPerspective(adv, H, flags=INTER_LINEAR | WARP_INVERSE_MAP)`` channel by
  channel. ECC pre-blurs both images with a 5 x 5 Gaussian (``gaussFiltSize=5``: fixed in the OpenCV
  2.4/3.x the paper used, the default since OpenCV 4.1; ``ecc_blur`` changes it). Where ECC fails
  (flat images, no convergence: ``cv2.error``) or returns a non-finite matrix, the identity is
  used, i.e. PASS falls back to SSIM.
- Caveat: on tiny images (8 x 8 digits) the 8-parameter homography fitted to 64 blurred pixels is
  sometimes wild, so a single PASS can be far below the plain SSIM even for a barely changed image
  (about 4% of digits with noise of 5 grey levels); averages over many images are meaningful.
  ``ecc_blur=1`` (no pre-blur) is much steadier there, but is not the paper's setting.
- ``PASS(x, x) == 1`` exactly (identical images are not aligned at all).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from skimage.metrics import structural_similarity

from robustkit.data import check_images
from robustkit.errors import InputError

#: ECC termination: at most 50 iterations or a correlation increment below 1e-3.
ECC_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-3)
#: Side of Wang et al.'s Gaussian window (11 taps for sigma 1.5 in scikit-image).
SSIM_WINDOW = 11


def ssim_score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM between two batches, without alignment.

    :param a: images ``N x C x H x W`` in [0, 1].
    :param b: images of the same shape in [0, 1].
    :returns: ``N`` scores (float64, CPU); 1 means identical.
    """
    xa, xb = _as_255(a, b)
    return torch.tensor([_ssim(p, q) for p, q in zip(xa, xb)], dtype=torch.float64)


def pass_score(adv: torch.Tensor, x: torch.Tensor, *, ecc_blur: int = 5) -> torch.Tensor:
    """Per-image PASS: SSIM of ``adv`` aligned onto ``x`` (ECC homography) with ``x``.

    :param adv: adversarial (or any perturbed) images ``N x C x H x W`` in [0, 1].
    :param x: the original images, same shape, in [0, 1].
    :param ecc_blur: ECC's Gaussian pre-blur size (odd; 5 as in the paper, 1 for none).
    :returns: ``N`` scores (float64, CPU); ``PASS(x, x) == 1``.
    """
    xa, xx = _as_255(adv, x)
    scores = []
    for p, q in zip(xa, xx):
        if np.array_equal(p, q):
            scores.append(1.0)
        else:
            scores.append(_ssim(_warp(p, ecc_homography(p, q, ecc_blur=ecc_blur)), q))
    return torch.tensor(scores, dtype=torch.float64)


def align(adv: torch.Tensor, x: torch.Tensor, *, ecc_blur: int = 5) -> torch.Tensor:
    """``adv`` warped onto ``x`` with the ECC homography PASS uses (for inspection), in [0, 1].

    :param ecc_blur: ECC's Gaussian pre-blur size, as in :func:`pass_score`.
    :returns: a float32 batch on ``adv``'s device, shaped like ``adv``.
    """
    xa, xx = _as_255(adv, x)
    out = np.stack([p if np.array_equal(p, q) else _warp(p, ecc_homography(p, q, ecc_blur=ecc_blur))
                    for p, q in zip(xa, xx)])
    return (torch.from_numpy(out).permute(0, 3, 1, 2) / 255.0).clamp(0, 1).to(adv.device)


def ecc_homography(adv: np.ndarray, x: np.ndarray, *, ecc_blur: int = 5) -> np.ndarray:
    """The 3 x 3 homography mapping ``adv`` onto ``x`` (identity where ECC fails).

    :param adv: ``H x W x C`` float image on the [0, 255] scale (the input that gets warped).
    :param x: ``H x W x C`` float image on the [0, 255] scale (the template).
    :param ecc_blur: ECC's Gaussian pre-blur size (``gaussFiltSize``).
    """
    if not (isinstance(ecc_blur, int) and ecc_blur >= 1 and ecc_blur % 2 == 1):
        raise InputError(f"ecc_blur must be an odd positive integer (5 as in the paper, 1 for none), got {ecc_blur!r}")
    warp = np.eye(3, dtype=np.float32)
    try:
        _, warp = cv2.findTransformECC(_gray(x), _gray(adv), warp, cv2.MOTION_HOMOGRAPHY, ECC_CRITERIA, None,
                                          ecc_blur)
    except cv2.error:  # flat or uncorrelated images, no convergence
        return np.eye(3, dtype=np.float32)
    if not np.all(np.isfinite(warp)):
        return np.eye(3, dtype=np.float32)
    return warp


def ssim_window(height: int, width: int) -> int:
    """The ``win_size`` used for an ``height x width`` image: 11, or the largest odd side that fits."""
    side = min(height, width)
    return SSIM_WINDOW if side >= SSIM_WINDOW else max(1, side - (1 - side % 2))


# --- internals -------------------------------------------------------------------------------


def _as_255(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Both batches as ``N x H x W x C`` float32 arrays on the [0, 255] scale."""
    check_images(a, what="adversarial images")
    check_images(b, what="original images")
    if a.shape != b.shape:
        raise InputError(f"cannot compare images of shape {tuple(a.shape)} with {tuple(b.shape)}")
    to_np = lambda t: (t.detach().to("cpu", torch.float64) * 255.0).permute(0, 2, 3, 1).numpy().astype(np.float32)
    return to_np(a), to_np(b)


def _gray(img: np.ndarray) -> np.ndarray:
    if img.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(img.mean(axis=2, dtype=np.float32))


def _warp(img: np.ndarray, homography: np.ndarray) -> np.ndarray:
    h, w, c = img.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    channels = [cv2.warpPerspective(np.ascontiguousarray(img[:, :, k]), homography, (w, h), flags=flags)
                for k in range(c)]
    return np.stack(channels, axis=2)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    h, w, c = a.shape
    kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255.0,
                  win_size=ssim_window(h, w))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if c == 1:
        return float(structural_similarity(a64[:, :, 0], b64[:, :, 0], **kwargs))
    return float(structural_similarity(a64, b64, channel_axis=2, **kwargs))
