"""The line search shared by FGS, FGV and hot/cold, and their common attack base class.

Rozsa et al. (2016) search along one direction per image for the closest quantized image the model
gets wrong, then optionally push further (hard positives) and keep only perceptually similar ones
(PASS). :func:`line_search` does the search for a whole batch at once; :class:`LineSearchAttack`
turns a subclass's :meth:`~LineSearchAttack.directions` into a robustkit attack.

The search (``SPECS.md`` section 5; the step schedule is a documented **choice**):

- Images live on the integer grid [0, 255]: ``Q(v) = clip(round(v), 0, 255)`` (round half to even).
- The direction ``d`` is scaled per image so that ``max |d| = 1`` grey level; a zero (or non-finite)
  direction finds nothing.
- ``s = 0`` is checked first (an image whose quantized version is already misclassified gets
  ``s* = 0``), then ``s = 1, 2, 4, ..., 128, 255``; the first misclassified ``Q(x + s d)`` closes
  the last interval ``(lo, hi]``.
- Bisection in that interval: the midpoint's image ``Q(x + mid d)`` is compared with the images at
  both ends; only a new image is sent to the model (an image equal to an end has that end's label).
  It stops when the quantized image no longer changes within the interval, i.e. when the interval
  is narrower than ``tol`` (1e-6 grey levels): ``s*`` is then, to that precision, the smallest step
  whose quantized image is misclassified ("any wrong label": prediction != y).
- Hard positives: the output is ``Q(x + Y s* d)`` with ``Y = scale`` (1 for the minimal adversarial).

Everything is vectorized over images: the Python loops run over steps (9 exponential steps, at most
``max_bisections`` bisection rounds), each one model call on the images still searching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.adversarial import input_gradient
from robustkit.attacks import Attack, AttackResult
from robustkit.errors import InputError
from robustkit.models import logits
from robustkit.params import Param

#: Exponential phase: step sizes in grey levels of the most-changed pixel.
STEPS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 255.0)


@dataclass
class LineSearchResult:
    """What :func:`line_search` found, per image.

    :param adversarial: ``Q(x + scale * s* d) / 255`` where found, else the input image unchanged.
    :param step: ``s*`` in grey levels of the most-changed pixel (float64, NaN where not found).
    :param found: whether some step up to 255 made the quantized image misclassified.
    :param queries: model calls spent on each image by the search (forward passes).
    """

    adversarial: torch.Tensor
    step: torch.Tensor
    found: torch.Tensor
    queries: torch.Tensor


def loss_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``grad_x J(x, y)`` per image, J the cross-entropy (the FGS / FGV direction before sign or scaling).

    The softmax runs in float64: in float32 a confident model's ``1 - p_y`` rounds to 0 and the
    gradient loses its "away from y" part.
    """
    return input_gradient(model, images, labels,
                          lambda out, y: F.cross_entropy(out.to(torch.float64), y, reduction="sum"))


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _predict(model: nn.Module, images: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return logits(model, images.to(like.dtype)).argmax(dim=1)


@torch.no_grad()
def line_search(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, direction: torch.Tensor, *,
                scale: float = 1.0, quantize: bool = True, tol: float = 1e-6,
                max_bisections: int = 64) -> LineSearchResult:
    """Smallest step along ``direction`` that changes the model's label, for a batch of images.

    :param model: images in [0, 1] -> logits (already in eval mode).
    :param images: ``N x C x H x W`` in [0, 1].
    :param labels: ``N`` labels; success is any prediction other than the label.
    :param direction: ``N x C x H x W``, any scale (normalized here to ``max |d| = 1`` grey level).
    :param scale: hard-positive factor ``Y``: the output is ``Q(x + Y s* d)``.
    :param quantize: round to the integer grid (the method); ``False`` searches continuous images,
        which tests use to check the search against an analytic boundary.
    :param tol: bisection stops when the interval is narrower than this (grey levels).
    :param max_bisections: safety bound on bisection rounds (64 halvings reach float64 resolution).
    """
    if direction.shape != images.shape:
        raise InputError(f"direction shape {tuple(direction.shape)} differs from images {tuple(images.shape)}")
    n = images.shape[0]
    dev = images.device
    work = _work_dtype(dev)
    x = images.detach().to(work) * 255.0
    d = direction.detach().to(work)
    peak = d.flatten(1).abs().amax(dim=1)
    usable = torch.isfinite(peak) & (peak > 0)
    d = torch.where(usable.view(-1, 1, 1, 1), d / torch.where(usable, peak, 1.0).view(-1, 1, 1, 1), 0.0)
    view = (-1,) + (1,) * (images.dim() - 1)

    def image_at(idx: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        v = x[idx] + s.view(view) * d[idx]
        return (v.round() if quantize else v).clamp(0.0, 255.0)

    def wrong(idx: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _predict(model, v / 255.0, images) != labels[idx]

    queries = torch.zeros(n, dtype=torch.long, device=dev)
    lo = torch.zeros(n, dtype=work, device=dev)
    hi = torch.full((n,), float("nan"), dtype=work, device=dev)
    everyone = torch.arange(n, device=dev)

    # s = 0: already misclassified after quantization.
    found = wrong(everyone, image_at(everyone, lo))
    queries += 1
    hi[found] = 0.0

    # Exponential phase, on the images still searching.
    for step in STEPS:
        idx = (usable & ~found).nonzero().flatten()
        if idx.numel() == 0:
            break
        s = torch.full((idx.numel(),), step, dtype=work, device=dev)
        hit = wrong(idx, image_at(idx, s))
        queries[idx] += 1
        found[idx[hit]] = True
        hi[idx[hit]] = step
        lo[idx[~hit]] = step

    # Bisection in (lo, hi]; only new quantized images cost a model call.
    active = found & (hi - lo > tol)
    for _ in range(max_bisections):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        a, b = lo[idx], hi[idx]
        mid = (a + b) / 2
        q_mid = image_at(idx, mid)
        same_hi = (q_mid == image_at(idx, b)).flatten(1).all(dim=1)
        same_lo = (q_mid == image_at(idx, a)).flatten(1).all(dim=1)
        hit = same_hi.clone()
        new = ~same_hi & ~same_lo
        if new.any():
            hit[new] = wrong(idx[new], q_mid[new])
            queries[idx[new]] += 1
        hi[idx[hit]] = mid[hit]
        lo[idx[~hit]] = mid[~hit]
        active[idx] = hi[idx] - lo[idx] > tol

    out = images.detach().clone()
    idx = found.nonzero().flatten()
    if idx.numel():
        out[idx] = (image_at(idx, scale * hi[idx]) / 255.0).to(images.dtype)
    return LineSearchResult(adversarial=out, step=hi, found=found, queries=queries)


class LineSearchAttack(Attack):
    """Base of FGS, FGV and hot/cold: a direction per image, then :func:`line_search`, scale, PASS.

    Subclasses implement :meth:`directions`, returning ``N x C x H x W`` (one direction per image)
    or ``N x R x C x H x W`` (R directions per image, e.g. hot/cold with several hot classes). With
    several, every one is searched (batched as ``N * R`` images) and the returned adversarial is the
    successful one with the smallest L2 distance (ties: the first); the per-direction results are
    in ``extra``.

    An image counts as a success when the output is misclassified and, with ``pass_threshold``
    set, ``PASS >= pass_threshold``; otherwise the clean image is returned. ``extra`` holds, per
    image (``N``, or ``N x R`` with several directions), CPU tensors:

    - ``s``: ``s*`` in grey levels of the most-changed pixel (NaN where nothing was found);
    - ``found``: the line search found a misclassified step up to 255;
    - ``pass``: PASS of the candidate ``Q(x + scale s* d)`` against the input (NaN where not found or
      ``report_pass=false`` without a threshold);
    - ``success``: found, still misclassified after scaling, and PASS above the threshold.

    ``queries`` counts model calls per image: one forward-backward for the direction(s), the
    search's forward passes, and one forward to check the final candidate (all directions summed).
    """

    threat_models: ClassVar[tuple[str, ...]] = ("unbounded",)
    knowledge: ClassVar[str] = "white-box"
    goal: ClassVar[str] = "minimal-distortion"
    supports_targeted: ClassVar[bool] = False
    common_params: ClassVar[tuple[Param, ...]] = (
        Param("scale", float, 1.0, "hard-positive factor Y: output Q(x + Y s* d) (1.05, 1.10 in the paper)",
              low=1.0, high=100.0),
        Param("pass_threshold", float, None, "keep an adversarial only if PASS >= this (0.99 on ImageNet)",
              low=0.0, high=1.0, optional=True),
        Param("report_pass", bool, True, "compute PASS of every candidate for extra['pass'] (CPU, per image)"),
    )

    def directions(self, model: nn.Module, images: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Search directions (``N x C x H x W`` or ``N x R x C x H x W``, any scale) and per-image
        facts for ``extra`` (e.g. the hot classes)."""
        raise NotImplementedError

    def perturb(self, model, images, labels, target_labels=None):
        n = images.shape[0]
        dirs, facts = self.directions(model, images, labels)
        several = dirs.dim() == images.dim() + 1
        r = dirs.shape[1] if several else 1
        flat_x = images.repeat_interleave(r, dim=0) if several else images
        flat_y = labels.repeat_interleave(r, dim=0) if several else labels
        flat_d = dirs.reshape(n * r, *images.shape[1:])

        found_res = line_search(model, flat_x, flat_y, flat_d, scale=self.config["scale"])
        candidate = found_res.adversarial
        found = found_res.found
        wrong_now = _predict(model, candidate, images) != flat_y
        tau = self.config["pass_threshold"]
        pass_values = torch.full((n * r,), float("nan"), dtype=torch.float64)
        if tau is not None or self.config["report_pass"]:
            idx = found.nonzero().flatten()
            if idx.numel():
                from robustkit_hotcold.pass_metric import pass_score  # OpenCV and scikit-image load only when PASS is asked for

                pass_values[idx.cpu()] = pass_score(candidate[idx], flat_x[idx])
        success = (found & wrong_now).cpu()
        if tau is not None:
            success &= pass_values >= tau  # NaN (not found) compares false
        queries = found_res.queries.cpu() + 2  # direction (forward-backward) + final check

        steps = found_res.step.cpu()
        if not several:
            ok = success.to(images.device).view(-1, 1, 1, 1)
            adversarial = torch.where(ok, candidate, images)
            extra = {"s": steps, "found": found.cpu(), "pass": pass_values, "success": success}
            extra.update(facts)
            return AttackResult(adversarial=adversarial, queries=queries, extra=extra)

        # Several directions per image: keep the closest successful one.
        shape = (n, r)
        success2 = success.view(shape)
        dist = (candidate - flat_x).flatten(1).norm(dim=1).cpu().view(shape).to(torch.float64)
        dist = torch.where(success2, dist, torch.full_like(dist, float("inf")))
        best = dist.argmin(dim=1)
        any_ok = success2.any(dim=1)
        per_dir = candidate.view(n, r, *images.shape[1:])
        chosen = per_dir[torch.arange(n, device=images.device), best.to(images.device)]
        adversarial = torch.where(any_ok.to(images.device).view(-1, 1, 1, 1), chosen, images)
        extra = {
            "s": steps.view(shape), "found": found.cpu().view(shape), "pass": pass_values.view(shape),
            "success": success2, "best": torch.where(any_ok, best + 1, torch.zeros_like(best)),
            "adversarials": torch.where(success2.to(images.device).view(n, r, 1, 1, 1), per_dir,
                                        images.unsqueeze(1)),
        }
        extra.update(facts)
        return AttackResult(adversarial=adversarial, queries=queries.view(shape).sum(dim=1), extra=extra)
