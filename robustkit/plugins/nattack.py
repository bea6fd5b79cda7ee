"""NATTACK (Li et al., ICML 2019): a score-based linf attack that learns a Gaussian search
distribution over adversarial examples with natural evolution strategies.

Batched: every iteration makes one forward pass over the population of every image still being
attacked (split into chunks of at most ``batch_size`` images when that is too many), instead of
the reference scripts' loop over images. Each image stops querying as soon as it is fooled, and
the loop ends when every image is fooled or out of iterations.

References: Y. Li, L. Li, L. Wang, T. Zhang, B. Gong, "NATTACK: Learning the Distributions of
Adversarial Examples for an Improved Black-Box Attack on Deep Neural Networks", ICML 2019
(Cold-Winter/Nattack); the evaluation script of RLFAT (JHL-HUST/RLFAT ``cifar_10/nattack.py``),
whose settings are the defaults here.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn

from robustkit import hookimpl
from robustkit.attacks import Attack, AttackResult
from robustkit.models import logits as model_logits
from robustkit.params import Param

_ATANH_SHRINK = 1e-6  # arctanh((2x - 1)(1 - 1e-6)), as in the reference helpers.torch_arctanh
_LOG_FLOOR = 1e-30  # log(p + 1e-30), as in the reference


class NAttack(Attack):
    """NATTACK: natural-evolution-strategies search for an linf adversarial example (score-based).

    For each correctly classified image x with label y (misclassified images are skipped and
    cost no queries), with g(w) = (tanh(w) + 1) / 2 and w0 = arctanh((2 x_d - 1)(1 - 1e-6)) where
    x_d = clip(x, delta, 1 - delta), a search mean mu ~ N(0, init_std^2 I) is updated ``iterations``
    times:

    - every ``check_every`` iterations (from the first), x_mu = clip(x + clip(g(w0 + mu) - x, -eps, eps), 0, 1)
      is queried; if the model no longer predicts y, the image is done (success, x_mu is returned);
    - ``population`` samples e_i ~ N(0, I) give x_i = clip(x + clip(g(w0 + mu + sigma e_i) - x, -eps, eps), 0, 1)
      and f_i = max(0, log(p_i[y] + 1e-30) - log(max_{c != y} p_i[c] + 1e-30)), p = softmax(logits);
    - A_i = -(f_i - mean f) / (std f + 1e-7); mu <- mu + eta / (population * sigma) * sum_i A_i e_i.

    Queries per image: at most iterations * population + ceil(iterations / check_every)
    (returned in ``AttackResult.queries``; 0 for skipped images; the clean prediction that decides
    the skipping is not counted, as the reference does not count it). Images that are not fooled are
    returned unchanged. ``extra`` holds per-image ``success``, ``skipped`` and ``iterations``
    (the iteration at which the image was fooled; -1 if never).

    Saturation margin ``delta``: with delta = 0 (the reference), pixels at exactly 0 or 1 (MNIST,
    digits) sit at arctanh(+-(1 - 1e-6)) ~ +-7.25 where tanh is flat, so the search cannot move
    them and NATTACK fails even on undefended models. delta > 0 computes w0 from
    clip(x, delta, 1 - delta) and always clips relative to the original x. The default (none)
    is delta = min(eps, 0.5): the search starts inside the eps ball (never pushed against its edge,
    which freezes a pixel's search signal), saturated pixels move freely, and pixels already inside
    (delta, 1 - delta) start exactly where the reference starts them. Checked on an undefended MLP,
    T 200, b 300: on digits (saturated) delta = eps fooled 95/95 images at eps 0.3 and 54/100 at
    eps 0.1, against 82 and 18 with delta = 0 (a fixed delta = 0.3 fell to 25 at eps 0.1); on
    unsaturated digits (contrast 0.2..0.8 plus noise, CIFAR-like) delta = eps matched delta = 0
    exactly (19/36 at eps 0.03, 33/36 at eps 0.06), where delta = 0.3 did worse (17, 32).
    Give delta=0 to reproduce the reference (which clips relative to g(w0) rather than x; they
    differ by < 1e-6).

    ``legacy_other_class``: the reference scripts compute the "other class" term as
    ``np.log(((1 - onehot) * p - onehot * 10000).max(1)[0] + 1e-30)``: in NumPy ``.max(1)[0]``
    is the other-class maximum of the *first population member only* (a scalar), not each
    sample's own (a port of PyTorch's ``.max(1)[0]``, which returns the values). True reproduces
    that scalar, broadcast to the whole population; False (default) uses each sample's own maximum.

    Randomness (``shared_noise``): each image's search is exactly the algorithm above, with i.i.d.
    N(0, I) samples. By default the images attacked together share them: iteration t's population
    e_1..e_b (and the initial mean) come from one generator seeded by ``seed``, the same for every
    image (common random numbers). Every image's own search distribution, and so its chance of
    being fooled, is unchanged; the noise is drawn once per iteration instead of once per image
    (on CPU, drawing normals costs more than a small model's forward pass), and an image's result
    depends only on the seed, never on the batch it is in, its position or ``batch_size``.
    ``shared_noise=False`` gives every image its own generator, seeded from ``seed``, its pixels and
    its label (equally independent of batching; N times the random draws). Batched runs equal
    image-at-a-time runs up to the floating-point differences of batched forward passes.

    Arguments:
        eps (float): linf budget in pixel units of [0, 1] images. (Default: 0.03, RLFAT)
        iterations (int): number of NES updates T (RLFAT 200; the NATTACK paper up to 600). (Default: 200)
        population (int): population size b per iteration. (Default: 300)
        sigma (float): standard deviation of the search noise in tanh space. (Default: 0.1)
        eta (float): learning rate of the search mean. (Default: 0.008)
        check_every (int): query the search mean every this many iterations. (Default: 10)
        init_std (float): standard deviation of the initial search mean. (Default: 0.001)
        delta (float | None): saturation margin in [0, 0.5]; none = min(eps, 0.5). (Default: None)
        legacy_other_class (bool): reproduce the reference's scalar "other class" term. (Default: False)
        batch_size (int): most images in one forward pass (population samples count one each); raise it
            for tiny models, lower it when a large model runs out of memory. (Default: 10000)
        shared_noise (bool): one noise stream for all images (see Randomness). (Default: True)
        seed (int): seed of the search noise. (Default: 0)

    Shape:
        images: (N, C, H, W) in [0, 1]; labels: (N,) class indices.
        output: adversarial images of the same shape.
    """

    name = "nattack"
    threat_models = ("linf",)
    knowledge = "score-based"
    goal = "fixed-budget"
    supports_targeted = False
    reference = {
        "title": "NATTACK: Learning the Distributions of Adversarial Examples for an Improved Black-Box Attack "
                 "on Deep Neural Networks",
        "authors": "Yandong Li, Lijun Li, Liqiang Wang, Tong Zhang, Boqing Gong",
        "venue": "ICML 2019",
        "link": "https://github.com/Cold-Winter/Nattack",
    }
    params = (
        Param("eps", float, 0.03, "linf budget in pixel units of [0, 1] images", low=0.0, high=1.0, low_open=True),
        Param("iterations", int, 200, "NES updates T", low=1),
        Param("population", int, 300, "samples b per iteration", low=2),
        Param("sigma", float, 0.1, "noise standard deviation in tanh space", low=0.0, low_open=True),
        Param("eta", float, 0.008, "learning rate of the search mean", low=0.0, low_open=True),
        Param("check_every", int, 10, "query the search mean every this many iterations", low=1),
        Param("init_std", float, 0.001, "standard deviation of the initial search mean", low=0.0),
        Param("delta", float, None, "saturation margin: w0 from clip(x, delta, 1-delta); none = min(eps, 0.5); "
              "0 = the reference", low=0.0, high=0.5, optional=True),
        Param("legacy_other_class", bool, False,
              "reference bug: the first population member's other-class max for every sample"),
        Param("batch_size", int, 10000, "most images per forward pass (population samples count one each)",
              low=1),
        Param("shared_noise", bool, True, "images attacked together share each iteration's population noise "
              "(common random numbers; each image's search is unchanged)"),
        Param("seed", int, 0, "seed of the search noise"),
    )

    def margin(self) -> float:
        """The saturation margin in use (``delta``, or its default min(eps, 0.5))."""
        delta = self.config["delta"]
        return min(self.config["eps"], 0.5) if delta is None else delta

    @torch.no_grad()
    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor | None = None) -> AttackResult:
        cfg = self.config
        eps, T, b = cfg["eps"], cfg["iterations"], cfg["population"]
        every = cfg["check_every"]
        n, shape = images.shape[0], images.shape[1:]
        dim = shape.numel()
        device, dtype = images.device, images.dtype

        adversarial = images.clone()
        queries = torch.zeros(n, dtype=torch.long, device=device)
        success = torch.zeros(n, dtype=torch.bool, device=device)
        fooled_at = torch.full((n,), -1, dtype=torch.long, device=device)
        clean_pred = self._predict(model, images)
        skipped = clean_pred != labels
        todo = (~skipped).nonzero().flatten()
        extra = {"success": success, "skipped": skipped, "iterations": fooled_at}
        if todo.numel() == 0:
            return AttackResult(adversarial, queries, extra)

        x = images[todo].reshape(-1, dim)
        y = labels[todo].long()
        m = x.shape[0]
        delta = self.margin()
        base = x.double().clamp(delta, 1.0 - delta) if delta > 0 else x.double()
        w0 = torch.atanh((2.0 * base - 1.0) * (1.0 - _ATANH_SHRINK)).to(dtype)
        lo, hi = (x - eps).clamp_min(0.0), (x + eps).clamp_max(1.0)

        noise = _SharedNoise(cfg["seed"], b, dim, device, dtype) if cfg["shared_noise"] else \
            _PerImageNoise(cfg["seed"], b, x, y)
        mu = noise.initial().mul_(cfg["init_std"]).expand(m, dim).clone()

        per_chunk = max(1, cfg["batch_size"] // b)
        active = torch.arange(m, device=device)
        local_queries = torch.zeros(m, dtype=torch.long, device=device)
        for t in range(T):
            if t % every == 0:
                x_mu = torch.clamp(_g(w0[active] + mu[active]), lo[active], hi[active])
                pred = self._predict(model, x_mu.view(-1, *shape))
                local_queries[active] += 1
                hit = pred != y[active]
                if hit.any():
                    where = todo[active[hit]]
                    adversarial[where] = x_mu[hit].view(-1, *shape)
                    success[where] = True
                    fooled_at[where] = t
                    active = active[~hit]
                if active.numel() == 0:
                    break
            noise.next_iteration(active)
            for start in range(0, active.numel(), per_chunk):
                idx = active[start:start + per_chunk]
                self._step(model, noise.draw(idx), idx, w0, mu, lo, hi, y, shape)
            local_queries[active] += b
        queries[todo] = local_queries
        return AttackResult(adversarial, queries, extra)

    def _step(self, model: nn.Module, e: torch.Tensor, idx: torch.Tensor, w0: torch.Tensor, mu: torch.Tensor,
              lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor, shape: torch.Size) -> None:
        """One NES update of the search means ``mu[idx]`` from the population noise ``e``.

        ``e`` is ``k x b x D`` (one population per image) or ``1 x b x D`` (shared by the k images).
        """
        cfg = self.config
        k, b = idx.numel(), e.shape[1]
        sigma = cfg["sigma"]
        # g(w) = (tanh(w) + 1) / 2 = sigmoid(2 w): one elementwise pass (tanh is several times slower).
        centre = 2.0 * (w0[idx] + mu[idx])
        samples = torch.add(centre.unsqueeze(1), e, alpha=2.0 * sigma).sigmoid_()
        samples.clamp_(lo[idx].unsqueeze(1), hi[idx].unsqueeze(1))
        out = model_logits(model, samples.view(k * b, *shape))
        f = self.objective(out.view(k, b, -1), y[idx])
        mean, std = f.mean(dim=1, keepdim=True), f.std(dim=1, unbiased=False, keepdim=True)
        a = -(f - mean) / (std + 1e-7)
        step = a @ e[0] if e.shape[0] == 1 else torch.bmm(a.unsqueeze(1), e).squeeze(1)
        mu[idx] += (cfg["eta"] / (b * sigma)) * step

    def objective(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """f = max(0, log(p_y + 1e-30) - log(max_{c != y} p_c + 1e-30)) for logits ``out`` (k x b x K)."""
        # p = softmax(out) by hand, touching the k x b x K logits as few times as possible (torch.softmax
        # over ~10 classes is several times slower): only p_y and the largest other p are needed.
        z_true = out.gather(-1, y.view(-1, 1, 1).expand(-1, out.shape[1], 1)).squeeze(-1)
        is_true = torch.arange(out.shape[-1], device=out.device) == y.view(-1, 1, 1)
        z_other = out.masked_fill(is_true, float("-inf")).amax(dim=-1)
        z_max = torch.maximum(z_true, z_other)
        total = (out - z_max.unsqueeze(-1)).exp_().sum(dim=-1)
        real = torch.log((z_true - z_max).exp_().div_(total).add_(_LOG_FLOOR))
        other = (z_other - z_max).exp_().div_(total)
        if self.config["legacy_other_class"]:
            other = other[:, :1].expand_as(other)
        return (real - torch.log(other + _LOG_FLOOR)).clamp_min(0.0)

    def _predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        size = self.config["batch_size"]
        return torch.cat([model_logits(model, x[i:i + size]).argmax(dim=1) for i in range(0, x.shape[0], size)])


def _g(w: torch.Tensor) -> torch.Tensor:
    """(tanh(w) + 1) / 2, computed as sigmoid(2 w)."""
    return torch.sigmoid(2.0 * w)


class _SharedNoise:
    """One stream for all images: iteration t's population noise is the same for every image."""

    def __init__(self, seed: int, b: int, dim: int, device: torch.device, dtype: torch.dtype):
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.buffer = torch.empty(1, b, dim, device=device, dtype=dtype)

    def initial(self) -> torch.Tensor:
        return torch.empty_like(self.buffer[0, 0]).normal_(generator=self.gen).unsqueeze(0)

    def next_iteration(self, active: torch.Tensor) -> None:
        self.buffer.normal_(generator=self.gen)

    def draw(self, idx: torch.Tensor) -> torch.Tensor:
        return self.buffer


class _PerImageNoise:
    """One stream per image, seeded from the seed, the image's pixels and its label."""

    def __init__(self, seed: int, b: int, x: torch.Tensor, y: torch.Tensor):
        self.gens = [_image_generator(seed, x[i], int(y[i])) for i in range(x.shape[0])]
        self.b, self.x = b, x

    def initial(self) -> torch.Tensor:
        mu = torch.empty_like(self.x)
        for i, gen in enumerate(self.gens):
            mu[i].normal_(generator=gen)
        return mu

    def next_iteration(self, active: torch.Tensor) -> None:
        pass

    def draw(self, idx: torch.Tensor) -> torch.Tensor:
        e = torch.empty(idx.numel(), self.b, self.x.shape[1], device=self.x.device, dtype=self.x.dtype)
        for j, i in enumerate(idx.tolist()):
            e[j].normal_(generator=self.gens[i])
        return e


def _image_generator(seed: int, image: torch.Tensor, label: int) -> torch.Generator:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(int(seed).to_bytes(8, "little", signed=True))
    digest.update(int(label).to_bytes(8, "little", signed=True))
    digest.update(image.detach().float().cpu().numpy().tobytes())
    gen = torch.Generator(device=image.device)
    gen.manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))
    return gen


def max_queries(iterations: int, population: int, check_every: int = 10) -> int:
    """The most queries NATTACK spends on one image: T * b + ceil(T / check_every)."""
    return iterations * population + math.ceil(iterations / check_every)


@hookimpl
def register_attacks(register: Any) -> None:
    """Register ``nattack``."""
    register(NAttack.name, NAttack, threat_models=NAttack.threat_models, knowledge=NAttack.knowledge,
             goal=NAttack.goal, supports_targeted=False)
