"""Square Attack (Andriushchenko et al.): score-based linf random search with square-shaped updates."""

from __future__ import annotations

import math

import torch
from torch import nn

from robustkit.attacks import Attack, AttackResult
from robustkit.models import logits as model_logits
from robustkit.params import Param

# Iterations (on the 10,000-query scale of the paper) after which the square's share p halves.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# Redraws of the signs of a proposal that would not change the image (a window already at those values).
_REDRAWS = 10


def p_schedule(p_init: float, iteration: int, n_queries: int) -> float:
    """Share of the pixels the square covers at ``iteration`` (0-based) of a ``n_queries`` budget.

    The paper's piecewise-constant schedule for 10,000 queries, rescaled to the budget: p starts at
    ``p_init`` and halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.
    """
    scaled = int(iteration / n_queries * 10_000)
    return p_init / 2 ** sum(scaled > mark for mark in _HALVINGS)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Per-image loss the search lowers: z_y - max_{j != y} z_j, or max_{j != t} z_j - z_t when targeted.

    Negative once the image is misclassified (reaches the target) in the usual case of no ties.
    """
    onehot = torch.nn.functional.one_hot(labels, logits.shape[1]).to(torch.bool)
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    other = logits.masked_fill(onehot, float("-inf")).amax(dim=1)
    return other - own if targeted else own - other


class Square(Attack):
    """Square Attack: random search over vertices of the linf ball, one square window at a time (score-based).

    Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box adversarial
    attack via random search", ECCV 2020 (the linf algorithm). Needs only the model's logits, never a
    gradient. Batched: each query is one forward pass over the images still being attacked.

    For every image the model classifies correctly (others are returned unchanged and cost no query;
    the clean prediction that decides this is not counted, as in the paper's evaluation):

    - start: vertical stripes, x_best = clip(x + eps * s, 0, 1) with s = +-1 drawn per image, channel and
      column (constant down each column); one query gives its margin loss
      L = z_y - max_{j != y} z_j (targeted: max_{j != t} z_j - z_t);
    - then up to n_queries - 1 iterations i = 0, 1, ..., while the image is not fooled: a square of side
      s = round(sqrt(p * H * W)) (at least 1, at most min(H, W) - 1) at a uniformly random position of
      the image; inside it every channel moves by +-2 eps from x_best (one sign per channel), projected
      to the eps ball around x and to [0, 1], i.e. it becomes clip(x +- eps, 0, 1); signs that would
      leave the image unchanged are redrawn (up to 10 times). The proposal replaces x_best only when
      its loss is lower. p follows the paper's schedule for 10,000 queries rescaled to ``n_queries``
      (:func:`p_schedule`): ``p_init``, halved after iterations 10, 50, 200, 500, 1000, 2000, 4000,
      6000 and 8000 (times n_queries / 10,000). A square position is drawn per image.

    An image stops querying once it is fooled, so it uses at most ``n_queries`` queries (the start
    counts one); ``AttackResult.queries`` holds each image's count and ``extra["success"]`` whether it
    was fooled. Unfooled images return their best point (lowest loss). Random draws come from a
    generator seeded with ``seed`` on the images' device: the same seed and batch give the same result.
    Targeted (``target_labels``): images already predicted as their target are left alone.

    Arguments:
        eps (float): linf budget in pixel units of images in [0, 1]. (Default: 8/255)
        n_queries (int): most queries per image. (Default: 5000)
        p_init (float): initial share of the pixels a square covers. (Default: 0.8)
        seed (int): seed of the random search. (Default: 0)

    Shape:
        images: (N, C, H, W) in [0, 1]; labels: (N,) class indices.
        output: adversarial images of the same shape.
    """

    name = "square"
    threat_models = ("linf",)
    knowledge = "score-based"
    goal = "fixed-budget"
    supports_targeted = True
    params = (
        Param("eps", float, 8 / 255, "linf budget in pixel units (images in [0, 1])", low=0.0, high=1.0),
        Param("n_queries", int, 5000, "most queries per image", low=1, high=10_000_000),
        Param("p_init", float, 0.8, "initial share of the pixels a square covers", low=0.0, high=1.0, low_open=True),
        Param("seed", int, 0, "seed of the random search"),
    )

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor | None = None) -> AttackResult:
        cfg = self.config
        eps, n_queries = cfg["eps"], cfg["n_queries"]
        targeted = target_labels is not None
        goal = target_labels if targeted else labels
        x = images.detach()
        n, c, h, w = x.shape
        device = x.device
        gen = torch.Generator(device=device).manual_seed(cfg["seed"])
        queries = torch.zeros(n, dtype=torch.long, device=device)
        with torch.no_grad():
            done = self._fooled(model_logits(model, x), goal, targeted)
            attacked = ~done
            best = x.clone()
            loss = torch.full((n,), float("inf"), dtype=x.dtype, device=device)
            # Vertical stripes: one sign per image, channel and column (drawn for the whole batch, so
            # an image's draws do not depend on which others are attacked).
            stripes = eps * _signs((n, c, 1, w), gen, x)
            idx = attacked.nonzero().squeeze(1)
            if idx.numel():
                best[idx] = (x[idx] + stripes[idx]).clamp(0.0, 1.0)
                out = model_logits(model, best[idx])
                loss[idx] = margin_loss(out, goal[idx], targeted)
                done[idx] = self._fooled(out, goal[idx], targeted)
                queries[idx] = 1
            rows = torch.arange(h, device=device)
            cols = torch.arange(w, device=device)
            for i in range(n_queries - 1):
                idx = (~done).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                m = idx.numel()
                side = round(math.sqrt(p_schedule(cfg["p_init"], i, n_queries) * h * w))
                side = max(min(side, min(h, w) - 1), 1)
                top = torch.randint(0, h - side + 1, (m,), generator=gen, device=device)
                left = torch.randint(0, w - side + 1, (m,), generator=gen, device=device)
                window = (((rows >= top[:, None]) & (rows < top[:, None] + side))[:, :, None]
                          & ((cols >= left[:, None]) & (cols < left[:, None] + side))[:, None, :]).unsqueeze(1)
                x_now, best_now = x[idx], best[idx]
                signs = _signs((m, c, 1, 1), gen, x)
                proposal = torch.where(window, (x_now + eps * signs).clamp(0.0, 1.0), best_now)
                for _ in range(_REDRAWS):
                    same = ((proposal - best_now).abs() < 1e-7).flatten(1).all(dim=1)
                    if not bool(same.any()):
                        break
                    signs = torch.where(same.view(-1, 1, 1, 1), _signs((m, c, 1, 1), gen, x), signs)
                    proposal = torch.where(window, (x_now + eps * signs).clamp(0.0, 1.0), best_now)
                out = model_logits(model, proposal)
                new_loss = margin_loss(out, goal[idx], targeted)
                queries[idx] += 1
                better = new_loss < loss[idx]
                if bool(better.any()):
                    won = idx[better]
                    best[won] = proposal[better]
                    loss[won] = new_loss[better]
                    done[won] = self._fooled(out[better], goal[won], targeted)
        return AttackResult(best, queries, extra={"success": done & attacked})

    @staticmethod
    def _fooled(out: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
        pred = out.argmax(1)
        return pred == goal if targeted else pred != goal


def _signs(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform +-1 of ``like``'s dtype and device."""
    bits = torch.randint(0, 2, shape, generator=gen, device=like.device)
    return (bits * 2 - 1).to(like.dtype)
