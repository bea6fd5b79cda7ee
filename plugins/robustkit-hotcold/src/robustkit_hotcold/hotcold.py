"""Hot/cold: directions toward a chosen "hot" class and away from the "cold" true class."""

from __future__ import annotations

import torch

from robustkit.errors import ParameterError
from robustkit.models import logits
from robustkit.params import Param
from robustkit_hotcold.line_search import LineSearchAttack


def hot_classes(scores: torch.Tensor, labels: torch.Tensor, ranks: int) -> torch.Tensor:
    """The ``ranks`` highest-scoring classes other than the label, best first: ``N x ranks``.

    Column ``X - 1`` is HC-X's hot class (ties: the lower class index first).
    """
    masked = scores.detach().clone()
    masked[torch.arange(scores.shape[0], device=scores.device), labels] = float("-inf")
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    return order[:, :ranks]


def hot_cold_weights(scores: torch.Tensor, labels: torch.Tensor, hot: torch.Tensor) -> torch.Tensor:
    """The constant vector ``w = |h_t(x)| e_t - h_y(x) e_y`` (Eq. 7) for each image and hot class ``t``.

    :param scores: logits ``N x K``; :param labels: ``N``; :param hot: hot classes ``N`` or ``N x R``.
    :returns: ``N x K`` or ``N x R x K``.
    """
    h = scores.detach()
    several = hot.dim() == 2
    hot2 = hot if several else hot.unsqueeze(1)
    n, r = hot2.shape
    w = torch.zeros(n, r, h.shape[1], dtype=h.dtype, device=h.device)
    w.scatter_(2, hot2.unsqueeze(2), h.gather(1, hot2).abs().unsqueeze(2))
    w.scatter_(2, labels.view(n, 1, 1).expand(n, r, 1), -h.gather(1, labels.view(n, 1)).unsqueeze(2).expand(n, r, 1))
    return w if several else w.squeeze(1)


class HotCold(LineSearchAttack):
    r"""Hot/cold directions toward the X-th closest class, with a line search for the smallest adversarial step.

    Hot/cold in the paper 'Adversarial Diversity and Hard Positive Generation' (Rozsa et al., 2016)
    [https://arxiv.org/abs/1605.01775]. With logits ``h`` and hot class ``t`` (the X-th highest
    scoring class other than ``y``), ``w = |h_t(x)| e_t - h_y(x) e_y`` is held constant and
    ``d = grad_x <w, h(x)>`` (one backward pass from the logits). HC-D searches along ``d``, HC-S
    along ``sign(d)``; the smallest step ``s`` with ``f(Q(x + s d)) != y`` (any wrong label) on the
    integer grid [0, 255] is kept. Images are returned quantized to ``k / 255``.

    ``all_ranks=true`` runs HC-1 ... HC-``rank`` in one batched call (the paper's HC-D-X training
    sets: X closest classes; ``rank`` is capped at K - 1, so a large ``rank`` means every other
    class). The returned image is then the successful one closest in L2, and ``extra`` holds every
    rank's result.

    Distance Measure : unbounded (minimal-distortion along ``d``; no eps)

    Arguments:
        mode (str): ``D`` searches along the derivative (HC-D), ``S`` along its sign (HC-S). (Default: D)
        rank (int): X, the hot class is the X-th closest class (1 = the runner-up). (Default: 1)
        all_ranks (bool): search every X = 1 ... rank at once. (Default: False)
        scale (float): hard-positive factor Y, output ``Q(x + Y s* d)``. (Default: 1.0)
        pass_threshold (float or None): keep an adversarial only if PASS >= this. (Default: None)
        report_pass (bool): compute PASS of every candidate into ``extra['pass']``. (Default: True)

    Shape:
        images: (N, C, H, W) in [0, 1]; labels: (N,) class indices.
        output: adversarial images of the same shape; the clean image where the attack failed.
        extra: per image ``s`` (step s*), ``found``, ``pass``, ``success``, ``hot_class``; with
        ``all_ranks`` these are (N, R), plus ``best`` (N,: the X returned, 0 if none) and
        ``adversarials`` (N, R, C, H, W: each rank's output, the clean image where it failed).

    Examples::
        >>> attack = make_host().attacks.create("hotcold", {"rank": 9, "all_ranks": True, "scale": 1.05})
        >>> result = attack(model, images, labels)     # HC-D-9-1.05 hard positives
        >>> result.extra["adversarials"][result.extra["success"]]
    """

    name = "hotcold"
    params = (
        Param("mode", str, "D", "D: search along the derivative (HC-D); S: along its sign (HC-S)", choices=("D", "S")),
        Param("rank", int, 1, "X: the hot class is the X-th highest-scoring class other than the label", low=1),
        Param("all_ranks", bool, False, "search HC-1 ... HC-rank in one call (rank capped at classes - 1)"),
    ) + LineSearchAttack.common_params

    def directions(self, model, images, labels):
        x = images.detach().requires_grad_(True)
        with torch.no_grad():
            scores = logits(model, images)
        k = scores.shape[1]
        rank = self.config["rank"]
        if self.config["all_ranks"]:
            ranks = min(rank, k - 1)
        elif rank > k - 1:
            raise ParameterError(f"hotcold: rank {rank} needs at least {rank + 1} classes, the model has {k}")
        else:
            ranks = rank
        if ranks < 1:
            raise ParameterError(f"hotcold: the model has {k} class(es); hot/cold needs at least 2")
        hot = hot_classes(scores, labels, ranks)
        if not self.config["all_ranks"]:
            hot = hot[:, -1]
            w = hot_cold_weights(scores, labels, hot)
            out = logits(model, x)
            (d,) = torch.autograd.grad((out * w.to(out.dtype)).sum(), x)
        else:
            # One forward-backward for all ranks: every image repeated R times.
            n = images.shape[0]
            w = hot_cold_weights(scores, labels, hot).reshape(n * ranks, k)
            xr = images.detach().repeat_interleave(ranks, dim=0).requires_grad_(True)
            out = logits(model, xr)
            (d,) = torch.autograd.grad((out * w.to(out.dtype)).sum(), xr)
            d = d.view(n, ranks, *images.shape[1:])
        if self.config["mode"] == "S":
            d = d.sign()
        return d.detach(), {"hot_class": hot.cpu()}
