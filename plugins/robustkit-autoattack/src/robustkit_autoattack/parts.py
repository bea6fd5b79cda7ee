"""The sub-attacks of the default backend (``backend=torchattacks``): torchattacks' classes computing what the
authors' code computes, with less work.

torchattacks 3.5.1 ports the authors' code from an older version, and the port differs from the authors' current
package (``pyautoattack`` 0.2, what RobustBench runs):

- APGD-T's targeted DLR loss divides by ``z1 - 0.5 z3 - 0.5 z4``, the authors' by ``z1 - 0.5 (z3 + z4)``;
- APGD-T's L2 step scales every image by the first image's step size (``step_size[0]``), the authors' by its own;
- APGD's random start and L2 step are computed in another order (``eps * t / |t|`` against
  ``eps * (t / (|t| + 1e-12))``), so the floats differ in their last bits;
- Square's L2 version measures the old perturbation inside its two windows over all channels at once, the
  authors' per channel (the same on one-channel images, not on colour ones).

Each changes the iterates and can change which images a run fools. The classes here keep torchattacks'
constructors, parameters and attributes (which robustkit records as the settings) and run the authors'
algorithms (Linf and L2) with their arithmetic and their random draws in the same order:

- :class:`APGD`, :class:`APGDT`: the authors' ``APGDAttack`` / ``APGDAttack_targeted``, less the bookkeeping
  nothing reads (per-step accuracy and best-loss histories, the zero-gradient warning);
- :class:`FAB`: torchattacks' FAB (whose arithmetic is the authors'), without the second forward pass over the
  clean images at each target's start, the choice of the closest hyperplane when there is one, and constant
  tensors rebuilt at every step;
- :class:`Square`: the authors' Square without the query counter, the NaN assertions and the cross-entropy
  the margin loss never reads.

A 0/1 blend ``m * new + (1 - m) * old`` is written as a selection: the same floats. ``tests/test_original.py``
checks every sub-attack against the authors' package, adversarial image by adversarial image.

Imported only when an attack runs (it imports torchattacks).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
import torchattacks
from torch import nn
from torchattacks.attacks.fab import projection_l2, projection_linf


def _normalize(x: torch.Tensor, norm: str) -> torch.Tensor:
    """``x`` divided by its per-image norm plus 1e-12 (the authors' ``APGDAttack.normalize``)."""
    flat = x.view(x.shape[0], -1)
    t = flat.abs().max(1)[0] if norm == "Linf" else (flat ** 2).sum(-1).sqrt()
    return x / (t.view(-1, *[1] * (x.dim() - 1)) + 1e-12)


def _l2_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm, shaped to broadcast over an image (the authors' ``L2_norm(x, keepdim=True)``)."""
    return (x ** 2).view(x.shape[0], -1).sum(-1).sqrt().view(-1, *[1] * (x.dim() - 1))


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The authors' DLR loss."""
    x_sorted, ind_sorted = logits.sort(dim=1)
    ind = (ind_sorted[:, -1] == y).float()
    u = torch.arange(logits.shape[0])
    return -(logits[u, y] - x_sorted[:, -2] * ind - x_sorted[:, -1] * (1.0 - ind)) / (
        x_sorted[:, -1] - x_sorted[:, -3] + 1e-12)


def dlr_loss_targeted(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
    """The authors' targeted DLR loss."""
    x_sorted, _ = logits.sort(dim=1)
    u = torch.arange(logits.shape[0])
    return -(logits[u, y] - logits[u, y_target]) / (x_sorted[:, -1] - 0.5 * (x_sorted[:, -3] + x_sorted[:, -4]) + 1e-12)


def _oscillating(loss_steps: torch.Tensor, j: int, k: int, k3: float) -> torch.Tensor:
    """1 for images whose loss rose in at most ``k * k3`` of the last ``k`` steps (the authors'
    ``check_oscillation``)."""
    t = torch.zeros(loss_steps.shape[1], device=loss_steps.device)
    for counter5 in range(k):
        t += (loss_steps[j - counter5] > loss_steps[j - counter5 - 1]).float()
    return (t <= k * k3 * torch.ones_like(t)).float()


def single_run(attack: Any, x: torch.Tensor, y: torch.Tensor,
               criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run from a random start on every image of ``x`` (the authors' ``attack_single_run``, Linf and L2).

    ``attack`` is a torchattacks APGD or APGDT (its ``eps``, ``norm``, ``steps``, ``eot_iter``, ``thr_decr``,
    ``device`` and ``get_logits``). Returns whether each image is still classified correctly at every step
    and the last misclassified iterate of each (the start where none was).
    """
    eps, norm, steps = attack.eps, attack.norm, attack.steps
    n_iter_2, n_iter_min, size_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    if norm == "Linf":
        t = 2 * torch.rand(x.shape).to(attack.device).detach() - 1
    else:
        t = torch.randn(x.shape).to(attack.device).detach()
    x_adv = (x + eps * torch.ones_like(x).detach() * _normalize(t, norm)).clamp(0.0, 1.0)
    x_best = x_adv.clone()
    x_best_adv = x_adv.clone()
    loss_steps = torch.zeros([steps, x.shape[0]]).to(attack.device)

    def gradient(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, per-image loss and the loss's input gradient at ``point`` (averaged over ``eot_iter`` draws)."""
        grad = torch.zeros_like(x)
        for _ in range(attack.eot_iter):
            with torch.enable_grad():
                logits = attack.get_logits(point)
                loss_indiv = criterion(logits, y)
                loss = loss_indiv.sum()
            grad += torch.autograd.grad(loss, [point])[0].detach()
        grad /= float(attack.eot_iter)
        return logits, loss_indiv, grad

    # Bounds computed once: the same floats the authors' code recomputes at every step.
    lower, upper, eps_full = x - eps, x + eps, eps * torch.ones_like(x).detach()
    x_adv.requires_grad_()
    logits, loss_indiv, grad = gradient(x_adv)
    grad_best = grad.clone()
    acc = logits.detach().max(1)[1] == y
    loss_best = loss_indiv.detach().clone()
    step_size = 2.0 * eps * torch.ones([x.shape[0], *[1] * (x.dim() - 1)]).to(attack.device).detach()
    x_adv_old = x_adv.clone()
    k = n_iter_2 + 0
    counter3 = 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones_like(loss_best)

    for i in range(steps):
        with torch.no_grad():
            x_adv = x_adv.detach()
            grad2 = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            if norm == "Linf":
                x_adv_1 = x_adv + step_size * torch.sign(grad)
                x_adv_1 = torch.clamp(torch.min(torch.max(x_adv_1, lower), upper), 0.0, 1.0)
                x_adv_1 = torch.clamp(torch.min(torch.max(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), lower),
                                                upper), 0.0, 1.0)
            else:
                x_adv_1 = x_adv + step_size * _normalize(grad, norm)
                x_adv_1 = torch.clamp(x + _normalize(x_adv_1 - x, norm) * torch.min(eps_full, _l2_norm(x_adv_1 - x)),
                                      0.0, 1.0)
                x_adv_1 = x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a)
                x_adv_1 = torch.clamp(x + _normalize(x_adv_1 - x, norm) * torch.min(eps_full, _l2_norm(x_adv_1 - x)),
                                      0.0, 1.0)
            x_adv = x_adv_1 + 0.0

        x_adv.requires_grad_()
        logits, loss_indiv, grad = gradient(x_adv)
        pred = logits.detach().max(1)[1] == y
        acc = torch.min(acc, pred)
        fooled = ~pred
        x_best_adv[fooled] = x_adv[fooled].detach() + 0.0

        with torch.no_grad():
            y1 = loss_indiv.detach().clone()
            loss_steps[i] = y1 + 0
            better = y1 > loss_best
            x_best[better] = x_adv[better].clone()
            grad_best[better] = grad[better].clone()
            loss_best[better] = y1[better] + 0
            counter3 += 1
            if counter3 == k:
                fl_oscillation = _oscillating(loss_steps, i, k, attack.thr_decr)
                fl_reduce_no_impr = (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best).float()
                fl_oscillation = torch.max(fl_oscillation, fl_reduce_no_impr)
                reduced_last_check = fl_oscillation.clone()
                loss_best_last_check = loss_best.clone()
                if fl_oscillation.sum() > 0:
                    reduce = fl_oscillation > 0
                    step_size[reduce] /= 2.0
                    x_adv[reduce] = x_best[reduce].clone()
                    grad[reduce] = grad_best[reduce].clone()
                k = max(k - size_decr, n_iter_min)
                counter3 = 0
    return acc, x_best_adv


def _restart(attack: Any, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, acc: torch.Tensor,
             criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """One restart on the images still classified correctly; fooled ones get their adversarial (in place)."""
    ind_to_fool = acc.nonzero().squeeze()
    if len(ind_to_fool.shape) == 0:
        ind_to_fool = ind_to_fool.unsqueeze(0)
    if ind_to_fool.numel() == 0:
        return
    acc_curr, adv_curr = single_run(attack, x[ind_to_fool].clone(), y[ind_to_fool].clone(), criterion)
    ind_curr = (acc_curr == 0).nonzero().squeeze()
    acc[ind_to_fool[ind_curr]] = 0
    adv[ind_to_fool[ind_curr]] = adv_curr[ind_curr].clone()


def _start(attack: Any, images: torch.Tensor, labels: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The images and labels on the attack's device, the adversarials so far (the images) and which images are
    classified correctly; then torch's generator seeded, as the authors' ``perturb`` begins."""
    if attack.norm not in ("Linf", "L2"):
        raise ValueError(f"norm {attack.norm!r}: robustkit's APGD runs Linf and L2")
    x = images.detach().clone().float().to(attack.device)
    y = labels.detach().clone().long().to(attack.device)
    with torch.no_grad():
        acc = attack.get_logits(x).max(1)[1] == y
    torch.random.manual_seed(attack.seed)
    torch.cuda.random.manual_seed(attack.seed)
    return x, y, x.clone(), acc


class APGD(torchattacks.APGD):
    """torchattacks' APGD (cross-entropy or DLR loss) running the authors' APGD arithmetic."""

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, y, adv, acc = _start(self, images, labels)
        criterion = nn.CrossEntropyLoss(reduction="none") if self.loss == "ce" else dlr_loss
        for _ in range(self.n_restarts):
            _restart(self, x, y, adv, acc, criterion)
        return adv


class APGDT(torchattacks.APGDT):
    """torchattacks' APGD-T running the authors' APGD-T arithmetic: the targeted DLR loss towards the 2nd, 3rd, ...
    most likely class of each still-robust image, one target after the other."""

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, y, adv, acc = _start(self, images, labels)
        for target_class in range(2, self.n_target_classes + 2):
            self.target_class = target_class
            for _ in range(self.n_restarts):
                still = acc.nonzero().flatten()
                if still.numel() == 0:
                    break
                with torch.no_grad():
                    y_target = self.get_logits(x[still]).sort(dim=1)[1][:, -target_class]
                _restart(self, x, y, adv, acc, functools.partial(dlr_loss_targeted, y_target=y_target))
        return adv


def _distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image Linf or L2 norm of a batch of perturbations, as FAB computes it."""
    flat = delta.reshape(delta.shape[0], -1)
    return flat.abs().max(dim=1)[0] if norm == "Linf" else (flat ** 2).sum(dim=-1).sqrt()


class FAB(torchattacks.FAB):
    """torchattacks' FAB (untargeted, and multi-targeted as FAB-T), with fewer operations and the same numbers.

    Its arithmetic is the authors' already; what goes: the second forward pass over the clean images at the
    start of each target (torchattacks, like the authors' code, computes the same logits twice: once for the
    labels, once for the target), the choice of the closest hyperplane when there is only one (FAB-T has one
    per image), the 0/1 blends written as selections, and the constant tensors rebuilt at every step.
    """

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.norm not in ("Linf", "L2") or (self.targeted and not self.multi_targeted):
            return super().forward(images, labels)
        x = images.clone().detach().to(self.device)
        y = labels.clone().detach().to(self.device)
        adv = x.clone()
        with torch.no_grad():
            acc = self.get_logits(x).max(1)[1] == y
            torch.random.manual_seed(self.seed)
            torch.cuda.random.manual_seed(self.seed)
            for target_class in range(2, self.n_target_classes + 2) if self.multi_targeted else [None]:
                self.target_class = target_class
                for counter in range(self.n_restarts):
                    ind_to_fool = acc.nonzero().flatten()
                    if ind_to_fool.numel() == 0:
                        continue
                    x_to_fool, y_to_fool = x[ind_to_fool].clone(), y[ind_to_fool].clone()
                    adv_curr = self._single_run(x_to_fool, y_to_fool, counter > 0, target_class)
                    acc_curr = self.get_logits(adv_curr).max(1)[1] == y_to_fool
                    acc_curr = torch.max(acc_curr, _distance(x_to_fool - adv_curr, self.norm) > self.eps)
                    fooled = ~acc_curr
                    acc[ind_to_fool[fooled]] = False
                    adv[ind_to_fool[fooled]] = adv_curr[fooled].clone()
        return adv

    def _single_run(self, x: torch.Tensor, y: torch.Tensor, use_rand_start: bool,
                    target_class: int | None) -> torch.Tensor:
        """One FAB run from ``x`` (torchattacks' ``attack_single_run[_targeted]``, Linf and L2): the smallest
        adversarial found for each image, the image itself where none was."""
        ndims = x.dim() - 1
        shape = [-1, *[1] * ndims]
        x = x.detach().clone().float().to(self.device)
        output = self.get_logits(x)
        y_pred = torch.max(output, dim=1)[1]
        y = y.detach().clone().long().to(self.device)
        pred = y_pred == y
        if pred.sum() == 0:
            return x
        pred = pred.nonzero().flatten()
        la_target2 = None if target_class is None else output.sort(dim=-1)[1][:, -target_class][pred].clone()
        im2 = x[pred].detach().clone()
        la2 = y[pred].detach().clone()
        bs = im2.shape[0]
        u1 = torch.arange(bs)
        adv = im2.clone()
        adv_c = x.clone()
        res2 = 1e10 * torch.ones([bs]).to(self.device)
        x1 = im2.clone()
        x0 = im2.clone().reshape([bs, -1])
        if use_rand_start:
            radius = torch.min(res2, self.eps * torch.ones(res2.shape).to(self.device)).reshape(shape)
            if self.norm == "Linf":
                t = 2 * torch.rand(x1.shape).to(self.device) - 1
                scale = t.reshape([t.shape[0], -1]).abs().max(dim=1, keepdim=True)[0].reshape(shape)
            else:
                t = torch.randn(x1.shape).to(self.device)
                scale = (t ** 2).view(t.shape[0], -1).sum(dim=-1).sqrt().view(t.shape[0], *[1] * ndims)
            x1 = (im2 + radius * t / scale * 0.5).clamp(0.0, 1.0)
        project = projection_linf if self.norm == "Linf" else projection_l2
        for _ in range(self.steps):
            df, dg = self._linearization(x1, la2, la_target2)
            if la_target2 is None:  # the closest of the K - 1 hyperplanes; FAB-T has one per image
                if self.norm == "Linf":
                    dist1 = df.abs() / (1e-12 + dg.abs().view(dg.shape[0], dg.shape[1], -1).sum(dim=-1))
                else:
                    dist1 = df.abs() / (1e-12 + (dg ** 2).view(dg.shape[0], dg.shape[1], -1).sum(dim=-1).sqrt())
                ind = dist1.min(dim=1)[1]
                dg2, df2 = dg[u1, ind], df[u1, ind]
            else:
                dg2, df2 = dg[:, 0], df[:, 0]
            b = -df2 + (dg2 * x1).view(bs, -1).sum(dim=-1)
            w = dg2.reshape([bs, -1])
            d3 = project(torch.cat((x1.reshape([bs, -1]), x0), 0), torch.cat((w, w), 0), torch.cat((b, b), 0))
            d1 = torch.reshape(d3[:bs], x1.shape)
            d2 = torch.reshape(d3[-bs:], x1.shape)
            if self.norm == "Linf":
                a0 = d3.abs().max(dim=1, keepdim=True)[0].view(*shape)
            else:
                a0 = (d3 ** 2).sum(dim=1, keepdim=True).sqrt().view(*shape)
            a0 = a0.clamp_min(1e-8)
            a1, a2 = a0[:bs], a0[-bs:]
            alpha = (a1 / (a1 + a2)).clamp(0.0, self.alpha_max)
            x1 = ((x1 + self.eta * d1) * (1 - alpha) + (im2 + d2 * self.eta) * alpha).clamp(0.0, 1.0)
            is_adv = torch.max(self.get_logits(x1), dim=1)[1] != la2
            if is_adv.any():
                ind_adv = is_adv.nonzero().flatten()
                t = _distance(x1[ind_adv] - im2[ind_adv], self.norm)
                closer = t < res2[ind_adv]
                adv[ind_adv[closer]] = x1[ind_adv[closer]]
                res2[ind_adv[closer]] = t[closer]
                x1[ind_adv] = im2[ind_adv] + (x1[ind_adv] - im2[ind_adv]) * self.beta
        ind_succ = (res2 < 1e10).nonzero().flatten()
        adv_c[pred[ind_succ]] = adv[ind_succ].clone()
        return adv_c

    def _linearization(self, x1: torch.Tensor, la: torch.Tensor, la_target: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logit differences at ``x1`` and their input gradients: towards the target (one hyperplane per image),
        or towards every other class (torchattacks' ``get_diff_logits_grads_batch[_targeted]``)."""
        im = x1.clone().requires_grad_()
        with torch.enable_grad():
            logits = self.get_logits(im)
            if la_target is not None:
                u = torch.arange(im.shape[0])
                diffy = -(logits[u, la] - logits[u, la_target])
                grad = torch.autograd.grad(diffy.sum(), im)[0]
                return diffy.detach().unsqueeze(1), grad.detach().unsqueeze(1)
            classes = logits.shape[-1]
            g2 = torch.zeros([classes, *im.size()]).to(self.device)
            grad_mask = torch.zeros_like(logits)
            for counter in range(classes):
                grad_mask[:, counter] = 1.0
                g2[counter] = torch.autograd.grad(logits, im, grad_mask, retain_graph=counter < classes - 1)[0]
                grad_mask[:, counter] = 0.0
        g2 = torch.transpose(g2, 0, 1).detach()
        y2 = logits.detach()
        rows = torch.arange(im.shape[0])
        df = y2 - y2[rows, la].unsqueeze(1)
        dg = g2 - g2[rows, la].unsqueeze(1)
        df[rows, la] = 1e10
        return df, dg


class Square(torchattacks.Square):
    """torchattacks' Square running the authors' Square arithmetic (untargeted; Linf and L2), with less bookkeeping.

    torchattacks' L2 version measures the old perturbation inside the two windows over all channels at once, the
    authors' per channel; on one-channel images they agree, on colour images they do not. The loop here is the
    authors' with the same random draws in the same order; what it leaves out changes no number: the query
    counter and the NaN assertions nothing reads, the cross-entropy the margin loss never uses, and the blend
    ``m * new + (1 - m) * old`` with a 0/1 mask ``m``, written as a selection.
    """

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.targeted or self.norm not in ("Linf", "L2"):
            return super().forward(images, labels)
        self.init_hyperparam(images)
        x = images.clone().detach().to(self.device)
        y = labels.clone().detach().long().to(self.device)
        adv = x.clone()
        with torch.no_grad():
            acc = self.get_logits(x).max(1)[1] == y
            torch.random.manual_seed(self.seed)
            torch.cuda.random.manual_seed(self.seed)
            for _ in range(self.n_restarts):
                ind_to_fool = acc.nonzero().flatten()
                if ind_to_fool.numel() == 0:
                    continue
                x_to_fool, y_to_fool = x[ind_to_fool].clone(), y[ind_to_fool].clone()
                run = self._linf_run if self.norm == "Linf" else self._l2_run
                adv_curr = run(x_to_fool, y_to_fool)
                fooled = self.get_logits(adv_curr).max(1)[1] != y_to_fool
                acc[ind_to_fool[fooled]] = False
                adv[ind_to_fool[fooled]] = adv_curr[fooled].clone()
        return adv

    def _margin_and_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The margin (and the loss, which with the margin loss is the same tensor) at ``x``."""
        if self.loss != "margin":
            return self.margin_and_loss(x, y)
        logits = self.get_logits(x)
        u = torch.arange(x.shape[0])
        y_corr = logits[u, y].clone()
        logits[u, y] = -float("inf")
        margin = y_corr - logits.max(dim=-1)[0]
        return margin, margin

    def _side(self, i_iter: int, n_features: int, c: int, least: int) -> int:
        """The side of this query's square (before the caps), from the schedule of ``p``."""
        return max(round(math.sqrt(self.p_selection(i_iter) * n_features / c)), least)

    def _update(self, margin_min: torch.Tensor, loss_min: torch.Tensor, x_best: torch.Tensor,
                idx_to_fool: torch.Tensor, margin: torch.Tensor, loss: torch.Tensor, x_new: torch.Tensor) -> None:
        """Keep each image's new point where its loss improved or it is misclassified (in place)."""
        loss_min_curr = loss_min[idx_to_fool]
        improved = loss < loss_min_curr
        if loss_min is not margin_min:
            loss_min[idx_to_fool] = torch.where(improved, loss, loss_min_curr)
        improved = improved | (margin <= 0.0)
        keep = idx_to_fool[improved]
        margin_min[keep] = margin[improved]
        x_best[keep] = x_new[improved]

    def _linf_run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        n_features = c * h * w
        x_best = torch.clamp(x + self.eps * self.random_choice([x.shape[0], c, 1, w]), 0.0, 1.0)
        margin_min, loss_min = self._margin_and_loss(x_best, y)
        if (margin_min < 0.0).all():
            return x_best
        for i_iter in range(self.n_queries):
            idx_to_fool = (margin_min > 0.0).nonzero().flatten()
            x_curr, x_best_curr, y_curr = x[idx_to_fool], x_best[idx_to_fool], y[idx_to_fool]
            s = min(self._side(i_iter, n_features, c, 1), min(h, w))
            vh = self.random_int(0, h - s)
            vw = self.random_int(0, w - s)
            new_deltas = torch.zeros([c, h, w]).to(self.device)
            new_deltas[:, vh:vh + s, vw:vw + s] = 2.0 * self.eps * self.random_choice([c, 1, 1])
            x_new = torch.min(torch.max(x_best_curr + new_deltas, x_curr - self.eps), x_curr + self.eps)
            x_new = torch.clamp(x_new, 0.0, 1.0)
            margin, loss = self._margin_and_loss(x_new, y_curr)
            self._update(margin_min, loss_min, x_best, idx_to_fool, margin, loss, x_new)
            if bool((margin_min <= 0.0).all()):
                break
        return x_best

    def _l2_run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        n_features = c * h * w
        delta_init = torch.zeros_like(x)
        s = h // 5
        sp_init = (h - s * 5) // 2
        vh = sp_init + 0
        for _ in range(h // s):
            vw = sp_init + 0
            for _ in range(w // s):
                delta_init[:, :, vh:vh + s, vw:vw + s] += self.eta(s).view(1, 1, s, s) * self.random_choice(
                    [x.shape[0], c, 1, 1])
                vw += s
            vh += s
        x_best = torch.clamp(x + self.normalize_delta(delta_init) * self.eps, 0.0, 1.0)
        margin_min, loss_min = self._margin_and_loss(x_best, y)
        if (margin_min < 0.0).all():
            return x_best
        for i_iter in range(self.n_queries):
            idx_to_fool = (margin_min > 0.0).nonzero().flatten()
            x_curr, x_best_curr, y_curr = x[idx_to_fool], x_best[idx_to_fool], y[idx_to_fool]
            delta_curr = x_best_curr - x_curr
            s = self._side(i_iter, n_features, c, 3)
            if s % 2 == 0:
                s += 1
            s = min(s, min(h, w))
            vh = self.random_int(0, h - s)
            vw = self.random_int(0, w - s)
            new_deltas_mask = torch.zeros_like(x_curr)
            new_deltas_mask[:, :, vh:vh + s, vw:vw + s] = 1.0
            norms_window_1 = (delta_curr[:, :, vh:vh + s, vw:vw + s] ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
            vh2 = self.random_int(0, h - s)
            vw2 = self.random_int(0, w - s)
            new_deltas_mask_2 = torch.zeros_like(x_curr)
            new_deltas_mask_2[:, :, vh2:vh2 + s, vw2:vw2 + s] = 1.0
            norms_image = self.lp_norm(x_best_curr - x_curr)
            mask_image = torch.max(new_deltas_mask, new_deltas_mask_2)
            norms_windows = ((delta_curr * mask_image) ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
            new_deltas = torch.ones([x_curr.shape[0], c, s, s]).to(self.device)
            new_deltas *= self.eta(s).view(1, 1, s, s) * self.random_choice([x_curr.shape[0], c, 1, 1])
            old_deltas = delta_curr[:, :, vh:vh + s, vw:vw + s] / (1e-12 + norms_window_1)
            new_deltas += old_deltas
            new_deltas = new_deltas / (1e-12 + (new_deltas ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()) * (
                torch.max((self.eps * torch.ones_like(new_deltas)) ** 2 - norms_image ** 2,
                          torch.zeros_like(new_deltas)) / c + norms_windows ** 2).sqrt()
            delta_curr[:, :, vh2:vh2 + s, vw2:vw2 + s] = 0.0
            delta_curr[:, :, vh:vh + s, vw:vw + s] = new_deltas + 0
            x_new = torch.clamp(x_curr + self.normalize_delta(delta_curr) * self.eps, 0.0, 1.0)
            margin, loss = self._margin_and_loss(x_new, y_curr)
            self._update(margin_min, loss_min, x_best, idx_to_fool, margin, loss, x_new)
            if bool((margin_min <= 0.0).all()):
                break
        return x_best


__all__ = ["APGD", "APGDT", "FAB", "Square", "dlr_loss", "dlr_loss_targeted", "single_run"]
