"""NATTACK (Li et al., ICML 2019): a score-based linf attack that learns a Gaussian search
distribution over adversarial examples with natural evolution strategies.

Batched: every iteration makes one forward pass over the population of every image still being
attacked (split into chunks of at most ``batch_size`` images when that is too many, and cache-sized
chunks on the CPU), instead of the reference scripts' loop over images. Each image stops querying as
soon as it is fooled, and the loop ends when every image is fooled or out of iterations.

How it stays fast: the search state of the images still attacked is kept compact (rows drop out
only at the checks, so the host waits for the device once per check, never per iteration); w0 is
computed once (float64 arctanh, then the working dtype); samples are written into one reused buffer;
the shared population noise is drawn once per iteration, the samples are 1 / (1 + exp(-2 (w0 + mu)) *
exp(-2 sigma e)) (exps of k x D and b x D values, no sigmoid per sample), and the update of every
image's mean is one matrix product; the objective reads the logits class-major, so its reductions
over classes are elementwise, and it needs only the logit gap z_y - max_{c != y} z_c (no softmax over
the classes); queries are counted from the stopping iteration, not accumulated.

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
# On the CPU a forward pass gets at most this many sample pixels per torch thread (images x population x
# C x H x W; 1 MB of float32 each), so that a pass's tensors (the model's activations included) stay in the
# threads' caches and are not mapped fresh from the OS on every pass. On 8x8 digits (3M samples) an MLP
# 64-64-10 on 1 thread spent 0.5 s in its forward passes at 2^18 and 0.6 to 1.1 s at 2^19 (its 2 MB
# activations); on 2 threads the whole attack took 0.24 s (linear 64-10) and 0.46 s (the MLP) at 2^18 per
# thread, 0.27 s and 0.46 s at 2^17 per thread.
# Results do not depend on it beyond the floating-point differences of batched forward passes.
_CPU_PASS_ELEMENTS = 1 << 18
# Most logits (classes x images x population) scored together; more images are scored in groups.
_LOGITS_ELEMENTS = 1 << 22


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
        batch_size (int): most images in one forward pass (population samples count one each); lower it
            when a large model runs out of memory. On the CPU a pass also holds at most about 2^18 sample
            pixels per torch thread (cache-sized). (Default: 10000)
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
        every, sigma = cfg["check_every"], cfg["sigma"]
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
        # w0 once, in float64 (arctanh near +-1 needs it), then the working dtype; never recomputed.
        base = x.double().clamp(delta, 1.0 - delta) if delta > 0 else x.double()
        w0 = torch.atanh((2.0 * base - 1.0) * (1.0 - _ATANH_SHRINK)).to(dtype)
        lo, hi = (x - eps).clamp_min(0.0), (x + eps).clamp_max(1.0)
        lo3, hi3 = lo.unsqueeze(1), hi.unsqueeze(1)  # the bounds of every sample of an image (k x 1 x D)
        one = torch.ones((), device=device, dtype=dtype)  # the 1 of 1 / (1 + scale * factor)

        shared = cfg["shared_noise"]
        noise = _SharedNoise(cfg["seed"], b, dim, device, dtype) if shared else _PerImageNoise(cfg["seed"], b, x, y)
        mu = noise.initial().mul_(cfg["init_std"]).expand(m, dim).clone()

        # The search state of the images still attacked, kept compact (row j belongs to image rows[j]) so
        # that every iteration works on contiguous slices; it shrinks only when a check fools images.
        rows = torch.arange(m, device=device)
        per_chunk = self._images_per_pass(b, dim, device)
        samples = torch.empty(min(per_chunk, m), b, dim, device=device, dtype=dtype)
        coef = cfg["eta"] / (b * sigma)
        last_t = torch.full((m,), T, dtype=torch.long, device=device)  # iteration each image stopped at
        z = None  # class-major logits of the current iteration (shared noise)
        for t in range(T):
            if t % every == 0:
                x_mu = torch.clamp(_g(w0 + mu), lo, hi)
                hit = self._predict(model, x_mu.view(-1, *shape)) != y
                hit_rows = hit.nonzero().flatten()
                if hit_rows.numel():  # one host sync per check, none per iteration
                    where = todo[rows[hit_rows]]
                    adversarial[where] = x_mu[hit_rows].view(-1, *shape)
                    success[where] = True
                    fooled_at[where] = t
                    last_t[rows[hit_rows]] = t
                    keep = (~hit).nonzero().flatten()
                    if keep.numel() == 0:
                        break
                    rows, w0, mu, lo, hi, y = (v[keep] for v in (rows, w0, mu, lo, hi, y))
                    lo3, hi3 = lo.unsqueeze(1), hi.unsqueeze(1)
                    noise.keep(keep)
            k = rows.numel()
            noise.next_iteration()
            if shared:
                # g(w0 + mu + sigma e) = sigmoid(2 (w0 + mu) + 2 sigma e) = 1 / (1 + scale * factor) with
                # scale = exp(-2 (w0 + mu)) per image and factor = exp(-2 sigma e) per iteration: the exps are
                # taken on k x D and b x D values, not on every sample (a sigmoid costs 4x a reciprocal).
                factor = noise.factor(sigma)
                scale = (w0 + mu).mul_(-2.0).exp_().unsqueeze(1)
                # The logits of every pass are gathered class-major (K x k x b) and scored together: one
                # objective per iteration instead of one per pass (each is ~20 small operations); images
                # whose logits would not fit in _LOGITS_ELEMENTS are scored in groups.
                f = torch.empty(k, b, device=device, dtype=dtype)
                first = 0  # the image whose logits z[:, 0] holds
                for start in range(0, k, per_chunk):
                    part = slice(start, min(start + per_chunk, k))
                    batch = torch.addcmul(one, scale[part], factor, out=samples[:part.stop - start])
                    batch.reciprocal_().clamp_(lo3[part], hi3[part])
                    out = self._logits(model, batch, shape)
                    if z is None:  # allocated once: the class count is known from the first pass
                        group = max(part.stop, _LOGITS_ELEMENTS // (out.shape[-1] * b))
                        z = torch.empty(out.shape[-1], min(group, m), b, device=device, dtype=out.dtype)
                    if part.stop - first > z.shape[1]:  # z is full: score it, then fill it again from here
                        f[first:start] = self._objective_class_major(z[:, :start - first], y[first:start])
                        first = start
                    z[:, start - first:part.stop - first].copy_(out.permute(2, 0, 1))
                f[first:k] = self._objective_class_major(z[:, :k - first], y[first:k])
                # One (k x b) @ (b x D) product updates every image: the noise is the same for all.
                mu.add_(_standardize(f) @ noise.buffer[0], alpha=coef)
            else:  # each image has its own noise: update each pass's images now (their noise is not kept)
                centre = (w0 + mu).mul_(2.0)  # g(w) = sigmoid(2 w): the samples are sigmoid(centre + 2 sigma e)
                for start in range(0, k, per_chunk):
                    part = slice(start, min(start + per_chunk, k))
                    e = noise.draw(part)
                    batch = torch.add(centre[part].unsqueeze(1), e, alpha=2.0 * sigma, out=samples[:part.stop - start])
                    batch.sigmoid_().clamp_(lo3[part], hi3[part])
                    out = self._logits(model, batch, shape)
                    a = _standardize(self.objective(out, y[part]))
                    mu[part].add_(torch.bmm(a.unsqueeze(1), e).squeeze(1), alpha=coef)
        # Queries: an image stopped at check t made t NES updates of b samples and t // every + 1 checks;
        # one never fooled made T updates and ceil(T / every) checks.
        checks = torch.where(last_t < T, last_t // every + 1, -(-T // every))
        queries[todo] = last_t * b + checks
        return AttackResult(adversarial, queries, extra)

    def _images_per_pass(self, b: int, dim: int, device: torch.device) -> int:
        """Images whose populations go through the model together: ``batch_size // b`` (at least 1).

        On the CPU, passes are also kept to about :data:`_CPU_PASS_ELEMENTS` sample pixels per torch thread:
        that bounds the memory each pass allocates, which the CPU otherwise spends its time faulting in.
        """
        per_chunk = max(1, self.config["batch_size"] // b)
        if device.type == "cpu":
            per_chunk = min(per_chunk, max(1, _CPU_PASS_ELEMENTS * torch.get_num_threads() // (b * dim)))
        return per_chunk

    @staticmethod
    def _logits(model: nn.Module, samples: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Logits (k x b x K) of the samples (k x b x D) of k images."""
        k, b = samples.shape[:2]
        return model_logits(model, samples.view(k * b, *shape)).view(k, b, -1)

    def objective(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """f = max(0, log(p_y + 1e-30) - log(max_{c != y} p_c + 1e-30)) for logits ``out`` (k x b x K)."""
        # The logits are first laid out class-major (K x k x b), so that every reduction over the classes is
        # an elementwise operation on K rows of k * b values: reducing a short last dimension is several
        # times slower.
        k, b, classes = out.shape
        z = torch.empty(classes, k, b, device=out.device, dtype=out.dtype)
        z.copy_(out.permute(2, 0, 1))
        return self._objective_class_major(z, y)

    def _objective_class_major(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:meth:`objective` of class-major logits ``z`` (K x k x b; overwritten)."""
        classes, k, b = z.shape
        rows = torch.arange(k, device=y.device)
        z_true = z[y, rows]  # k x b
        if not self.config["legacy_other_class"]:
            # With gap = z_y - max_{c != y} z_c: f = 0 unless y is the top class (log is monotone); if it is, the
            # softmax denominator S = sum_c exp(z_c - z_y) lies in [1, K], p_y = 1 / S, p_other = exp(-gap) / S
            # and f = log(1 + 1e-30 S) - log(exp(-gap) + 1e-30 S) = -log(exp(-gap) + 1e-30) to float precision
            # (the floor only matters once exp(-gap) nears 1e-30, where S is 1). No exp over the K classes.
            z[y, rows] = float("-inf")
            gap = z_true.sub_(z.amax(dim=0))
            return gap.neg_().exp_().add_(_LOG_FLOOR).log_().neg_().clamp_min_(0.0)
        # The reference's scalar "other class": p = softmax by hand, p_y per sample, the first member's p_other.
        not_true = torch.zeros(classes, k, 1, device=z.device, dtype=z.dtype)
        not_true.scatter_(0, y.view(1, k, 1), float("-inf"))
        z_other = torch.add(z, not_true).amax(dim=0)
        z_max = torch.maximum(z_true, z_other)
        total = z.sub_(z_max).exp_().sum(dim=0)
        real = z_true.sub_(z_max).exp_().div_(total).add_(_LOG_FLOOR).log_()
        other = z_other.sub_(z_max).exp_().div_(total)[:, :1].expand(k, b)
        return real.sub_(other.add(_LOG_FLOOR).log_()).clamp_min_(0.0)

    def _predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        size = self.config["batch_size"]
        if x.shape[0] <= size:
            return model_logits(model, x).argmax(dim=1)
        return torch.cat([model_logits(model, x[i:i + size]).argmax(dim=1) for i in range(0, x.shape[0], size)])


def _standardize(f: torch.Tensor) -> torch.Tensor:
    """A_i = -(f_i - mean f) / (std f + 1e-7), per image (row) over its population."""
    mean = f.mean(dim=1, keepdim=True)
    centred = torch.sub(mean, f)  # -(f - mean)
    std = centred.square().mean(dim=1, keepdim=True).sqrt_()  # torch.std_mean is several times slower
    return centred.div_(std.add_(1e-7))


def _g(w: torch.Tensor) -> torch.Tensor:
    """(tanh(w) + 1) / 2, computed as sigmoid(2 w)."""
    return torch.sigmoid(2.0 * w)


class _SharedNoise:
    """One stream for all images: iteration t's population noise is the same for every image."""

    def __init__(self, seed: int, b: int, dim: int, device: torch.device, dtype: torch.dtype):
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.buffer = torch.empty(1, b, dim, device=device, dtype=dtype)
        self.exp_buffer: torch.Tensor | None = None

    def initial(self) -> torch.Tensor:
        return torch.empty_like(self.buffer[0, 0]).normal_(generator=self.gen).unsqueeze(0)

    def keep(self, rows: torch.Tensor) -> None:
        pass

    def next_iteration(self) -> None:
        self.buffer.normal_(generator=self.gen)

    def factor(self, sigma: float) -> torch.Tensor:
        """exp(-2 sigma e) of this iteration's noise e (1 x b x D), into a reused buffer."""
        if self.exp_buffer is None:
            self.exp_buffer = torch.empty_like(self.buffer)
        return torch.mul(self.buffer, -2.0 * sigma, out=self.exp_buffer).exp_()


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

    def keep(self, rows: torch.Tensor) -> None:
        """Keep the generators of the images still attacked (``rows`` of the current ones)."""
        self.gens = [self.gens[i] for i in rows.tolist()]

    def next_iteration(self) -> None:
        pass

    def draw(self, part: slice) -> torch.Tensor:
        gens = self.gens[part]
        e = torch.empty(len(gens), self.b, self.x.shape[1], device=self.x.device, dtype=self.x.dtype)
        for j, gen in enumerate(gens):
            e[j].normal_(generator=gen)
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
    register(NAttack.name, NAttack)
