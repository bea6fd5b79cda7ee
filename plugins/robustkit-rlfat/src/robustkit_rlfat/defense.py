"""RLFAT: robust local features for adversarial training (Song et al., ICLR 2020).

A plugin like any other (entry point ``rlfat``). It registers the defense ``rlfat`` in its two
variants, P (built on PGD-AT) and T (built on TRADES), and provides the Random Block Shuffle
transformation as a reusable function, :func:`random_block_shuffle`, and transform,
:class:`RandomBlockShuffle`. The baselines the paper compares against are ``pgd-at`` and ``trades``
(plugin ``baseline-defenses``).

Where the paper is garbled or silent, the choices follow the authors' TensorFlow code
(JHL-HUST/RLFAT: ``utils.rbs_transformation``, ``train_pgdat_RLFAT.py``, ``train_trades_RLFAT.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.adversarial import crafting_mode, kl_batchmean, pgd, pgd_step_size, trades_examples
from robustkit.defenses import BatchLoss, Defense
from robustkit.errors import ParameterError
from robustkit.params import Param
from robustkit.threat import threat_of

VARIANTS = ("P", "T")
DEFAULT_ETA = {"P": 0.5, "T": 1.0}
"""The paper's eta (weight of the transfer term) per variant."""
DEFAULT_BETA = 6.0
"""The paper's lambda (weight of TRADES's KL term) for variant T."""


# --- Random Block Shuffle ----------------------------------------------------------------------


def _block_orders(length: int, k: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` random block orders of ``range(length)``: a ``count x length`` index tensor.

    Each draws k - 1 cut points uniformly from {0, ..., length - 1} (with replacement, sorted; the
    reference's ``np.random.randint(0, length)``), giving k contiguous blocks of which the first may
    be empty (or several, when cuts coincide), and lays the blocks out in a uniformly random order.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    cuts = torch.randint(0, length, (count, k - 1), generator=generator, device=device).sort(dim=1).values
    bounds = torch.cat([torch.zeros(count, 1, dtype=torch.long, device=device), cuts,
                        torch.full((count, 1), length, dtype=torch.long, device=device)], dim=1)
    starts, sizes = bounds[:, :-1], bounds[:, 1:] - bounds[:, :-1]
    order = torch.rand(count, k, generator=generator, device=device).argsort(dim=1)  # uniform permutations
    placed_sizes = sizes.gather(1, order)
    placed_ends = placed_sizes.cumsum(dim=1)
    positions = torch.arange(length, device=device).expand(count, length).contiguous()
    # The block each output position falls in; empty blocks are skipped because their end repeats.
    block = torch.searchsorted(placed_ends, positions, right=True)
    offset = positions - (placed_ends - placed_sizes).gather(1, block)
    return starts.gather(1, order).gather(1, block) + offset


def random_block_shuffle(images: torch.Tensor, k: int = 2, generator: torch.Generator | None = None,
                         per_image: bool = False) -> torch.Tensor:
    """RLFAT's Random Block Shuffle (RBS) of a batch of images ``N x C x H x W`` (or ``N x H x W``).

    Rows: draw k - 1 cut points uniformly over the rows (with replacement, sorted), split the image into
    the k row blocks they delimit (blocks may be empty), and put the blocks in a uniformly random order.
    Columns: the same on the result, with fresh draws. Pixels are only moved, never changed, and each
    block keeps its inner order, so local features survive while the global structure is broken.

    :param k: blocks per side (k = 2 in the paper); k = 1 returns ``images`` unchanged.
    :param generator: torch generator for the draws (its device is where they are drawn); default:
        torch's global generator.
    :param per_image: one draw per image instead of one for the whole batch (the reference code uses one
        per minibatch).
    :returns: the shuffled batch; differentiable (an index gather) with respect to ``images``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"random_block_shuffle: k must be an integer >= 1, got {k!r}")
    if images.dim() < 3:
        raise ValueError(f"random_block_shuffle: expected a batch N x C x H x W or N x H x W, got shape "
                         f"{tuple(images.shape)}")
    if k == 1:
        return images
    height, width = images.shape[-2:]
    count = images.shape[0] if per_image else 1
    rows = _block_orders(height, k, count, generator).to(images.device)
    cols = _block_orders(width, k, count, generator).to(images.device)
    if not per_image:
        return images.index_select(-2, rows[0]).index_select(-1, cols[0])
    middle = [1] * (images.dim() - 3)
    shuffled = images.gather(-2, rows.view(count, *middle, height, 1).expand_as(images))
    return shuffled.gather(-1, cols.view(count, *middle, 1, width).expand_as(images))


class RandomBlockShuffle:
    """:func:`random_block_shuffle` as a reusable transform: ``RandomBlockShuffle(k=3)(images)``.

    :param k: blocks per side (>= 1).
    :param per_image: one draw per image instead of one per batch.
    :param generator: default generator for the draws (a call may pass its own).
    """

    def __init__(self, k: int = 2, per_image: bool = False, generator: torch.Generator | None = None):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"RandomBlockShuffle: k must be an integer >= 1, got {k!r}")
        self.k = k
        self.per_image = per_image
        self.generator = generator

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_block_shuffle(images, self.k, generator or self.generator, self.per_image)

    def __repr__(self) -> str:
        return f"RandomBlockShuffle(k={self.k}, per_image={self.per_image})"


# --- the defense ---------------------------------------------------------------------------------


def transfer_loss(shuffled_logits: torch.Tensor, adversarial_logits: torch.Tensor) -> torch.Tensor:
    """Robust local feature transfer: (1/B) * sum_i ||z(RBS(x'_i)) - z(x'_i)||_2^2 (gradients reach both)."""
    return (shuffled_logits - adversarial_logits).pow(2).sum(dim=1).mean()


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.detach().argmax(1) == labels).float().mean())


class RLFAT(Defense):
    """RLFAT (Song et al., 2020): adversarial training on block-shuffled examples, plus logit transfer.

    Paper: C. Song, K. He, J. Lin, L. Wang, J. E. Hopcroft, "Robust Local Features for Improving the
    Generalization of Adversarial Training", ICLR 2020 (reference code JHL-HUST/RLFAT).

    Loss (z = logits, B = batch size, RBS = :func:`random_block_shuffle`, transfer =
    (1/B) * sum_i ||z(RBS(x'_i)) - z(x'_i)||_2^2, squared as in the reference code; the paper's Eq. 9
    is garbled; gradients flow through both branches):

    - variant ``P`` (RLFAT_P, on PGD-AT): mean CE(f(RBS(x')), y) + eta * transfer, x' = PGD on the
      cross-entropy from x + U(-eps, eps). There is no CE on x' itself.
    - variant ``T`` (RLFAT_T, on TRADES): mean CE(f(x), y) + beta * KL(p(x) || p(RBS(x'))) + eta * transfer,
      the KL summed over classes and averaged over the batch, x' = TRADES's inner attack (ascending
      KL(p(x) || p(x')) with p(x) fixed, from x + 0.001 * N(0, I)).

    The attack steps are linf sign steps projected onto the eps ball and clipped to [0, 1]. One RBS
    draw serves the whole minibatch, as in the reference (``per_image`` draws one per image). Unlike the
    reference, PGD's uniform start is clipped to [0, 1] before the first gradient (robustkit's shared
    PGD, the one pgd-at uses), so RLFAT_P and its PGDAT baseline craft x' identically.

    Params:

    - ``variant``: ``P`` or ``T``.
    - ``eps``: linf budget in pixel units of images in [0, 1]; default 0.03 (the paper's, on CIFAR and
      STL-10). The trade-off knob.
    - ``steps``: attack iterations (10 on CIFAR-10; 7 on CIFAR-100 and STL-10).
    - ``step_size``: per-step size; ``none`` means 2.5 * eps / steps (0.0075 at the defaults, the
      paper's value).
    - ``eta``: weight of the transfer term; ``none`` means the variant's default, 0.5 for P and 1 for
      T (the paper's). The resolved value is what ``config`` and checkpoints record.
    - ``beta``: variant T only: weight of the KL term, the paper's lambda (named as in the ``trades``
      defense, since ``lambda`` is a Python keyword); ``none`` means 6. Setting it for P is an error.
    - ``k``: RBS blocks per side (2 in the paper); 1 switches the shuffle off.
    - ``per_image``: draw a fresh RBS per image rather than one per minibatch.
    - ``rand_init``: the attack's random start (uniform for P, Gaussian 0.001 for T).
    - ``attack_mode``: model mode while crafting x'; default ``train``, as the reference code crafts
      with its training-mode graph (see pgd-at); ``eval`` uses running batch-norm statistics.

    Knob: ``eps``. The accuracy-matched protocol needs a knob that moves a model along the clean versus
    robust accuracy trade-off, from natural training (eps -> 0) to strong robustness; eps does that
    for both variants, and it is pgd-at's knob, so RLFAT_P and PGDAT curves are swept on the same axis.
    eta only weights the logit alignment: the paper's ablation (its Figure 2) shows the transfer term
    raising clean and robust accuracy together rather than trading one for the other, and eta = 0 is
    still adversarial training on RBS examples, so an eta sweep spans too narrow a range of clean
    accuracies to match at.

    Cost: steps + 2 forward+backward passes per batch for P (RBS(x') and x'); steps + 3 for T (x,
    RBS(x'), x'; plus one forward for p(x) in the attack).
    """

    name = "rlfat"
    reference = {"title": "Robust Local Features for Improving the Generalization of Adversarial Training",
                 "authors": "Chuanbiao Song, Kun He, Jiadong Lin, Liwei Wang, John E. Hopcroft",
                 "venue": "ICLR 2020", "link": "https://arxiv.org/abs/1909.10147"}
    knob = "eps"
    cheap_params = {"eps": 0.1, "steps": 1}
    passes_per_batch = 12.0  # variant P with the default steps; cost() reads the actual parameters
    params = (
        Param("variant", str, "P", "P: RLFAT on PGD-AT; T: RLFAT on TRADES", choices=VARIANTS),
        Param("eps", float, 0.03, "linf perturbation budget (pixel units, images in [0, 1])", low=0.0,
              low_open=True),
        Param("steps", int, 10, "attack iterations", low=1, high=10_000),
        Param("step_size", float, None, "step size; none: 2.5 * eps / steps", low=0.0, low_open=True,
              optional=True),
        Param("eta", float, None, "weight of the transfer term; none: 0.5 for P, 1 for T", low=0.0,
              optional=True),
        Param("beta", float, None, "T only: weight of the KL term (the paper's lambda); none: 6", low=0.0,
              optional=True),
        Param("k", int, 2, "RBS blocks per side", low=1, high=4096),
        Param("per_image", bool, False, "one RBS draw per image instead of one per minibatch"),
        Param("rand_init", bool, True, "random start of the attack (uniform for P, 0.001 * N(0, I) for T)"),
        Param("attack_mode", str, "train", "model mode while crafting: train (reference) or eval",
              choices=("train", "eval")),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        owner = self.display_name()
        variant = self.config["variant"]
        if variant == "P" and self.config["beta"] is not None:
            raise ParameterError(f"{owner}: parameter 'beta' applies to variant T only (TRADES's KL weight)")
        if self.config["eta"] is None:
            self.config["eta"] = DEFAULT_ETA[variant]
        if variant == "T" and self.config["beta"] is None:
            self.config["beta"] = DEFAULT_BETA
        self.threat = threat_of(owner, "linf", self.config["eps"])
        self.shuffle = RandomBlockShuffle(self.config["k"], self.config["per_image"])

    @property
    def variant(self) -> str:
        return str(self.config["variant"])

    @property
    def step_size(self) -> float:
        """The per-step size actually used."""
        return pgd_step_size(self.config["step_size"], self.config["eps"], self.config["steps"])

    def cost(self) -> float:
        return float(self.config["steps"] + (2 if self.variant == "P" else 3))

    def adversarial_examples(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x' for this batch (detached): PGD on the CE (P) or TRADES's KL attack (T), in ``attack_mode``."""
        with crafting_mode(model, self.config["attack_mode"]):
            if self.variant == "P":
                return pgd(model, images, labels, self.threat, steps=self.config["steps"], step_size=self.step_size,
                           rand_init=self.config["rand_init"])
            return trades_examples(model, images, self.threat, steps=self.config["steps"], step_size=self.step_size,
                                   rand_init=self.config["rand_init"])

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        adversarial = self.adversarial_examples(model, images, labels)
        shuffled = self.shuffle(adversarial)
        shuffled_logits = model(shuffled)
        adversarial_logits = model(adversarial)
        transfer = transfer_loss(shuffled_logits, adversarial_logits)
        metrics = {"adv_acc": _accuracy(adversarial_logits, labels), "transfer": float(transfer.detach())}
        if self.variant == "P":
            loss = F.cross_entropy(shuffled_logits, labels) + self.config["eta"] * transfer
            return BatchLoss(loss, shuffled_logits, metrics)
        logits = model(images)
        loss = (F.cross_entropy(logits, labels) + self.config["beta"] * kl_batchmean(logits, shuffled_logits)
                + self.config["eta"] * transfer)
        metrics["rbs_acc"] = _accuracy(shuffled_logits, labels)
        return BatchLoss(loss, logits, metrics)
