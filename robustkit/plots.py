"""Figures as PNG files; every matplotlib drawing of robustkit and its plugins lives here.

- :func:`save_example_grid`: clean images, their adversarials and the amplified perturbations;
- :func:`save_training_curves`: loss and accuracies per epoch of a training run (``curves.png``);
- :func:`save_tradeoff_panels`: per metric, model families as points (clean accuracy, robustness), their
  frontiers, values read off them with error bars and reference lines (``bench report``);
- :func:`save_line_plot`: labelled lines on one axes (accuracy against eps in ``bench report``);
- :func:`save_heatmap_grid`: a row of images, then one row of heat maps per name (saliency maps).

matplotlib is imported inside the functions and drawn through its Agg canvas (no pyplot, no
global backend switch), so importing this module is cheap and it works without a display.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from robustkit.errors import InputError
from robustkit.files import atomic_write

Tensors = torch.Tensor | Mapping[str, torch.Tensor]


def save_example_grid(path: str | Path, clean: torch.Tensor, adversarial: Tensors,
                      labels: torch.Tensor | Sequence[int] | None = None,
                      clean_pred: torch.Tensor | Sequence[int] | None = None,
                      adv_pred: torch.Tensor | Sequence[int] | Mapping[str, torch.Tensor] | None = None,
                      amplify: float | None = None, max_images: int = 8, class_names: Sequence[str] = (),
                      title: str | None = None) -> Path:
    """Write a PNG with one column per image: clean row, adversarial row, perturbation row.

    :param path: the ``.png`` to write (folders are created).
    :param clean: ``N x C x H x W`` images in [0, 1], C = 1 or 3, any size.
    :param adversarial: their adversarials, same shape; or ``{attack name: adversarials}`` for one
        block of two rows (adversarial, perturbation) per attack under a shared clean row.
    :param labels: true classes, shown over the clean images.
    :param clean_pred: predictions on the clean images.
    :param adv_pred: predictions on the adversarials (a dict keyed like ``adversarial``); a wrong one
        is drawn in red.
    :param amplify: perturbations are shown as ``0.5 + amplify * delta``; by default each block is
        scaled so that its largest ``|delta|`` reaches black or white (grey = unchanged), as in papers.
    :param max_images: show at most this many columns.
    :param class_names: readable names for class indices.
    :param title: a line over the figure.
    :returns: ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    blocks = dict(adversarial) if isinstance(adversarial, Mapping) else {"adversarial": adversarial}
    preds = dict(adv_pred) if isinstance(adv_pred, Mapping) else {k: adv_pred for k in blocks}
    clean = _check(clean, "clean images")
    if max_images < 1:
        raise InputError(f"max_images must be >= 1, got {max_images}")
    n = min(len(clean), max_images)
    if n == 0:
        raise InputError("no images to draw")
    for name, adv in blocks.items():
        adv = _check(adv, f"adversarial images ({name})")
        if adv.shape[1:] != clean.shape[1:] or len(adv) < n:
            raise InputError(f"adversarial images ({name}) have shape {tuple(adv.shape)}, "
                             f"the clean ones {tuple(clean.shape)}")
        blocks[name] = adv[:n]
    clean = clean[:n]
    labels_, clean_pred_ = _ints(labels, n), _ints(clean_pred, n)

    rows = 1 + 2 * len(blocks)
    height, width = clean.shape[2:]
    cell = 1.6
    aspect = width / height
    fig = Figure(figsize=(max(cell * aspect * n, 4.0) + 1.0, cell * rows + (0.4 if title else 0.1)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, n, squeeze=False)

    def name_of(k: int) -> str:
        return class_names[k] if 0 <= k < len(class_names) else str(k)

    for j in range(n):
        parts = []
        if labels_ is not None:
            parts.append(f"label {name_of(labels_[j])}")
        if clean_pred_ is not None:
            parts.append(f"pred {name_of(clean_pred_[j])}")
        _show(axes[0, j], clean[j], "\n".join(parts))
    axes[0, 0].set_ylabel("clean", fontsize=9)
    for b, (name, adv) in enumerate(blocks.items()):
        row = 1 + 2 * b
        delta = adv - clean
        shown, scale = amplified_perturbation(delta, amplify)
        pred = _ints(preds.get(name), n)
        for j in range(n):
            text, wrong = "", False
            if pred is not None:
                text = f"pred {name_of(pred[j])}"
                truth = labels_[j] if labels_ is not None else clean_pred_[j] if clean_pred_ is not None else None
                wrong = truth is not None and pred[j] != truth
            _show(axes[row, j], adv[j], text, color="red" if wrong else "black")
            linf = float(delta[j].abs().max())
            _show(axes[row + 1, j], shown[j], f"Linf {linf:.3f}")
        axes[row, 0].set_ylabel(name if len(name) <= 18 else name[:17] + "…", fontsize=9)
        axes[row + 1, 0].set_ylabel(f"delta x{scale:.3g}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def save_training_curves(path: str | Path, history: Sequence[Mapping[str, Any]]) -> Path:
    """Write a PNG of a training run: loss per epoch on the left, accuracies per epoch on the right.

    :param path: the ``.png`` to write.
    :param history: one row per epoch, as :func:`robustkit.training.train` records them (``metrics.jsonl``):
        ``epoch`` and ``train_loss``; ``train_acc``, ``val_clean_acc`` and ``val_pgd_acc`` are drawn where not
        ``None`` (a missing one leaves its line out).
    :returns: ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [row.get("train_loss") for row in history], marker="o", label="train loss")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss")
    for key, label in (("train_acc", "train (defense inputs)"), ("val_clean_acc", "val clean"),
                       ("val_pgd_acc", "val PGD")):
        points = [(e, row.get(key)) for e, row in zip(epochs, history) if row.get(key) is not None]
        if points:
            acc_ax.plot(*zip(*points), marker="o", label=label)
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(-0.02, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


@dataclass
class Frontier:
    """One model family's points on a trade-off panel (e.g. one defense at one seed).

    :param x: x of the frontier points, joined by a line with filled markers.
    :param y: their y.
    :param dominated_x: x of the family's other points, drawn as hollow markers without a line.
    :param dominated_y: their y.
    :param label: legend entry (``None``: none, e.g. for the family's further seeds).
    """

    x: Sequence[float]
    y: Sequence[float]
    dominated_x: Sequence[float] = ()
    dominated_y: Sequence[float] = ()
    label: str | None = None


@dataclass
class Reading:
    """A value read off a family, drawn as a star at ``(x, y)``; with ``below`` and ``above``, an error bar
    from ``y - below`` to ``y + above``."""

    x: float
    y: float
    below: float | None = None
    above: float | None = None


@dataclass
class TradeoffFamily:
    """Everything of one family on one panel, in one colour: its frontiers, then its readings."""

    color: str
    frontiers: list[Frontier] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)


@dataclass
class TradeoffPanel:
    """One axes of :func:`save_tradeoff_panels`.

    :param title: over the axes.
    :param xlabel: e.g. ``clean accuracy %``.
    :param ylabel: the robustness metric and its unit.
    :param families: drawn in this order (later ones on top).
    :param vlines: x of dashed grey vertical reference lines (e.g. target clean accuracies).
    """

    title: str
    xlabel: str
    ylabel: str
    families: list[TradeoffFamily] = field(default_factory=list)
    vlines: Sequence[float] = ()


def save_tradeoff_panels(path: str | Path, panels: Sequence[TradeoffPanel], title: str | None = None) -> Path:
    """Write a PNG with one trade-off panel per entry of ``panels``, side by side.

    On each panel every family's frontiers are lines with filled markers (its dominated points hollow),
    its readings stars with a black edge and capped error bars, all in the family's colour; the
    ``vlines`` are dashed and grey; families with a labelled frontier get a legend.

    :param path: the ``.png`` to write.
    :param panels: at least one.
    :param title: a line over the figure.
    :returns: ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not panels:
        raise InputError("no panels to draw")
    fig = Figure(figsize=(5.2 * len(panels), 4.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for family in panel.families:
            color = family.color
            for front in family.frontiers:
                ax.plot(list(front.x), list(front.y), marker="o", color=color, alpha=0.9, label=front.label)
                ax.plot(list(front.dominated_x), list(front.dominated_y), linestyle="none", marker="o",
                        markerfacecolor="none", color=color, alpha=0.9)
            for reading in family.readings:
                error = None if reading.below is None else [[reading.below], [reading.above]]
                ax.errorbar([reading.x], [reading.y], yerr=error, marker="*", markersize=13, color=color,
                            markeredgecolor="black", capsize=3, linestyle="none")
        for x in panel.vlines:
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel, title=panel.title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


@dataclass
class Line:
    """One line of :func:`save_line_plot`: points joined in order, with small markers."""

    x: Sequence[float]
    y: Sequence[float]
    label: str
    color: str | None = None


def save_line_plot(path: str | Path, lines: Sequence[Line], *, title: str, xlabel: str, ylabel: str,
                   ylim: tuple[float, float] | None = None) -> Path:
    """Write a PNG of labelled lines on one axes (7 x 4.5 inches), with a two-column legend.

    :param path: the ``.png`` to write.
    :param lines: drawn in order; a line without a colour takes the next one of matplotlib's cycle.
    :param title: over the axes.
    :param xlabel: under the x axis.
    :param ylabel: beside the y axis.
    :param ylim: the y range (default: fitted to the data).
    :returns: ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for line in lines:
        ax.plot(list(line.x), list(line.y), marker=".", color=line.color, alpha=0.8, label=line.label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, **({} if ylim is None else {"ylim": ylim}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def save_heatmap_grid(path: str | Path, images: torch.Tensor, heatmaps: Mapping[str, torch.Tensor], *,
                      column_titles: Sequence[str] | None = None, title: str | None = None,
                      cmap: str = "inferno") -> Path:
    """Write a PNG grid: the images on the first row, then one row of heat maps per name, each map
    under its image and the name at the left of its row (e.g. saliency maps of several models).

    :param path: the ``.png`` to write.
    :param images: ``N x C x H x W`` in [0, 1] (values outside are clipped); C = 1 is drawn in grey.
    :param heatmaps: per row name, ``N x H' x W'`` maps drawn on a fixed [0, 1] colour scale.
    :param column_titles: a title over each image (at least N).
    :param title: a line over the figure.
    :param cmap: matplotlib colour map of the heat maps.
    :returns: ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InputError(f"images must be N x C x H x W, got {_shape(images)}")
    n = images.shape[0]
    for name, heat in heatmaps.items():
        if not isinstance(heat, torch.Tensor) or heat.dim() != 3 or len(heat) < n:
            raise InputError(f"heat maps {name!r} must be N x H x W with N >= {n}, got {_shape(heat)}")
    if column_titles is not None and len(column_titles) < n:
        raise InputError(f"expected at least {n} column titles, got {len(column_titles)}")
    rows = 1 + len(heatmaps)
    fig = Figure(figsize=(1.3 * n + 1.2, 1.3 * rows + (0.4 if title else 0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, n, squeeze=False)
    shown = images.detach().cpu()
    for j in range(n):
        image = shown[j].permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
        axes[0][j].imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        if column_titles is not None:
            axes[0][j].set_title(column_titles[j], fontsize=8)
    for i, (name, heat) in enumerate(heatmaps.items(), start=1):
        for j in range(n):
            axes[i][j].imshow(heat[j].detach().cpu().numpy(), cmap=cmap, vmin=0, vmax=1)
        axes[i][0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def _save(fig: Any, path: str | Path, dpi: float | None = None) -> Path:
    """Write ``fig`` as a PNG, atomically (never through a link someone placed there)."""
    path = Path(path)
    options = {} if dpi is None else {"dpi": dpi}
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", **options))
    return path


def _shape(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def amplified_perturbation(delta: torch.Tensor, amplify: float | None = None) -> tuple[torch.Tensor, float]:
    """``delta`` as a displayable image ``0.5 + scale * delta`` in [0, 1], and the scale used.

    By default ``scale = 0.5 / max |delta|``, so the largest change reaches 0 or 1 and grey means
    unchanged; an all-zero ``delta`` stays grey (scale 1).
    """
    if amplify is None:
        peak = float(delta.abs().max()) if delta.numel() else 0.0
        amplify = 0.5 / peak if peak > 0 else 1.0
    return (0.5 + amplify * delta).clamp(0.0, 1.0), float(amplify)


def _check(images: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{what} must be N x C x H x W with C = 1 or 3, got {shape}")
    return images.detach().float().cpu().clamp(0.0, 1.0)


def _ints(values: torch.Tensor | Sequence[int] | None, n: int) -> list[int] | None:
    if values is None:
        return None
    out = [int(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    if len(out) < n:
        raise InputError(f"expected at least {n} labels or predictions, got {len(out)}")
    return out[:n]


def _show(ax, image: torch.Tensor, text: str, color: str = "black") -> None:  # noqa: ANN001
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if text:
        ax.set_title(text, fontsize=8, color=color)
