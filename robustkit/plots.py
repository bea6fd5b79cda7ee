"""Figures as PNG files; every matplotlib drawing of robustkit and its plugins lives here.

- :func:`save_example_grid`: clean images, their adversarials and the perturbations at one shared
  amplification, with a title and a legend for the colours (``robustkit attack --grid``);
- :func:`save_training_curves`: loss and accuracies per epoch of a training run (``curves.png``);
- :func:`save_tradeoff_panels`: per metric, model families as points (clean accuracy, robustness) with a
  note at each point, their frontiers, values read off them with error bars and labelled reference lines
  (``bench report``);
- :func:`save_line_plot`: labelled lines on one axes with labelled reference lines (accuracy against eps in
  ``bench report``);
- :func:`save_heatmap_grid`: a row of images, then one row of heat maps per name (saliency maps).

matplotlib is imported inside the functions and drawn through its Agg canvas (no pyplot, no
global backend switch), so importing this module is cheap and it works without a display. The writers
for these figures build them with :func:`example_grid_figure`, :func:`tradeoff_figure` and
:func:`line_figure` (inspectable before :func:`save_figure` writes them); numbers people read accuracy
from are in percent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from robustkit.errors import InputError
from robustkit.files import atomic_write

Tensors = torch.Tensor | Mapping[str, torch.Tensor]
FOOLED_COLOUR = "red"  # a prediction that differs from the true label
NORM_NAMES = {"linf": "Linf", "l2": "L2", "l1": "L1", "unbounded": "unbounded"}


def norm_name(norm: str) -> str:
    """A threat model's norm as figures write it: ``linf`` -> ``Linf``."""
    return NORM_NAMES.get(norm.lower(), norm)


def threat_label(norm: str, eps: float) -> str:
    """A threat model as figures write it: ``Linf eps=0.1``."""
    return f"{norm_name(norm)} eps={eps:g}"


def save_example_grid(path: str | Path, clean: torch.Tensor, adversarial: Tensors,
                      labels: torch.Tensor | Sequence[int] | None = None,
                      clean_pred: torch.Tensor | Sequence[int] | None = None,
                      adv_pred: torch.Tensor | Sequence[int] | Mapping[str, torch.Tensor] | None = None,
                      amplify: float | None = None, max_images: int = 8, class_names: Sequence[str] = (),
                      title: str | None = None, notes: Mapping[str, str] | None = None) -> Path:
    """Write :func:`example_grid_figure` of these images to ``path`` (a ``.png``; folders are created)."""
    return _save(example_grid_figure(clean, adversarial, labels=labels, clean_pred=clean_pred, adv_pred=adv_pred,
                                     amplify=amplify, max_images=max_images, class_names=class_names,
                                     title=title, notes=notes), path)


def example_grid_figure(clean: torch.Tensor, adversarial: Tensors,
                        labels: torch.Tensor | Sequence[int] | None = None,
                        clean_pred: torch.Tensor | Sequence[int] | None = None,
                        adv_pred: torch.Tensor | Sequence[int] | Mapping[str, torch.Tensor] | None = None,
                        amplify: float | None = None, max_images: int = 8, class_names: Sequence[str] = (),
                        title: str | None = None, notes: Mapping[str, str] | None = None) -> Any:
    """A matplotlib Figure with one column per image: the clean row, then per attack an adversarial row and a
    perturbation row, and a legend saying what red predictions and grey perturbations mean.

    Every perturbation row uses the same amplification, so the attacks' changes compare at a glance; each
    perturbation is captioned with its Linf and L2 size, or "not fooled" / "not attacked" when the image
    was left unchanged.

    :param clean: ``N x C x H x W`` images in [0, 1], C = 1 or 3, any size.
    :param adversarial: their adversarials, same shape; or ``{attack name: adversarials}`` for one
        block of two rows (adversarial, perturbation) per attack under a shared clean row.
    :param labels: true classes, shown over the clean images.
    :param clean_pred: predictions on the clean images.
    :param adv_pred: predictions on the adversarials (a dict keyed like ``adversarial``); one that differs
        from the label (from the clean prediction without labels) is drawn in red: fooled.
    :param amplify: perturbations are shown as ``0.5 + amplify * delta``; by default scaled so that the
        largest ``|delta|`` of all attacks reaches black or white (grey = unchanged), as in papers.
    :param max_images: show at most this many columns.
    :param class_names: readable names for class indices.
    :param title: over the figure (e.g. the model, its attacks and their threat models); long ones wrap.
    :param notes: per attack name, a short line under its row name (e.g. its threat model, "Linf eps=0.1").
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

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
    truth = labels_ if labels_ is not None else clean_pred_
    deltas = {name: adv - clean for name, adv in blocks.items()}
    # One amplification for every attack, so a fainter row means a smaller change.
    scale = amplified_perturbation(torch.cat(list(deltas.values())), amplify)[1]

    rows = 1 + 2 * len(blocks)
    height, width = clean.shape[2:]
    cell = 1.6
    fig_width = max(cell * width / height * n, 4.0) + 1.2
    wrapped = _wrap(title, fig_width, 10) if title else ""
    extra = 0.25 * (wrapped.count("\n") + 1) if title else 0.0
    fig = Figure(figsize=(fig_width, cell * rows + extra + 0.9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, n, squeeze=False)

    def name_of(k: int) -> str:
        return class_names[k] if 0 <= k < len(class_names) else str(k)

    def colour(pred: int, j: int) -> str:
        return FOOLED_COLOUR if truth is not None and pred != truth[j] else "black"

    for j in range(n):
        parts = []
        if labels_ is not None:
            parts.append(f"label {name_of(labels_[j])}")
        if clean_pred_ is not None:
            parts.append(f"pred {name_of(clean_pred_[j])}")
        _show(axes[0, j], clean[j], "\n".join(parts),  # red: wrong before any attack
              color=colour(clean_pred_[j], j) if clean_pred_ is not None else "black")
    axes[0, 0].set_ylabel("clean", fontsize=9)
    for b, (name, adv) in enumerate(blocks.items()):
        row = 1 + 2 * b
        delta = deltas[name]
        shown, _ = amplified_perturbation(delta, scale)
        pred = _ints(preds.get(name), n)
        for j in range(n):
            _show(axes[row, j], adv[j], f"pred {name_of(pred[j])}" if pred is not None else "",
                  color=colour(pred[j], j) if pred is not None else "black")
            wrong_before = truth is not None and clean_pred_ is not None and clean_pred_[j] != truth[j]
            _show(axes[row + 1, j], shown[j], _perturbation_caption(delta[j], wrong_before))
        note = (notes or {}).get(name)
        axes[row, 0].set_ylabel(_wrap(name, cell, 8) + (f"\n({note})" if note else ""), fontsize=8)
        axes[row + 1, 0].set_ylabel(f"perturbation\nx{scale:.3g}", fontsize=8)
    legend = [Patch(color=FOOLED_COLOUR, label="red prediction: differs from the true label (an adversarial's: "
                                               "fooled)"),
              Patch(color="black", label="black prediction: correct"),
              Patch(facecolor="0.5", edgecolor="black",
                    label=f"perturbation = adversarial - clean, x{scale:.3g} in every row: grey unchanged, "
                          "lighter raised, darker lowered")]
    fig.legend(handles=legend, loc="outside lower center", ncol=1, fontsize=8, frameon=False)
    if title:
        fig.suptitle(wrapped, fontsize=10)
    return fig


def save_training_curves(path: str | Path, history: Sequence[Mapping[str, Any]], *, title: str | None = None,
                         val_pgd_label: str | None = None, chosen_epoch: int | None = None,
                         chosen_label: str = "chosen epoch") -> Path:
    """Write a PNG of a training run: loss per epoch on the left, accuracies per epoch on the right.

    :param path: the ``.png`` to write.
    :param history: one row per epoch, as :func:`robustkit.training.train` records them (``metrics.jsonl``):
        ``epoch`` and ``train_loss``; ``train_acc``, ``val_clean_acc`` and ``val_pgd_acc`` are drawn where not
        ``None`` (a missing one leaves its line out).
    :param title: over both panels, e.g. the run's defense, model and dataset.
    :param val_pgd_label: the legend entry of ``val_pgd_acc``, e.g. naming the validation attack's eps and steps.
    :param chosen_epoch: the epoch the run keeps (its best or last), marked by a dashed line on both panels and
        a ring on its validation points; ``chosen_label`` names it in the legend.
    :returns: ``path``.

    Epochs trained during an eps warm-up (rows with ``warmup_eps``) are shaded: their loss is at a smaller eps.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.9 if title else 3.5), dpi=100)
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [row.get("train_loss") for row in history], marker="o", label="train loss")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss")
    chosen_row = next((row for row in history if row["epoch"] == chosen_epoch), None)
    for key, label in (("train_acc", "train (defense inputs)"), ("val_clean_acc", "val clean"),
                       ("val_pgd_acc", val_pgd_label or "val PGD")):
        points = [(e, 100 * row[key]) for e, row in zip(epochs, history) if row.get(key) is not None]
        if points:
            line, = acc_ax.plot(*zip(*points), marker="o", label=label)
            if chosen_row is not None and key.startswith("val_") and chosen_row.get(key) is not None:
                acc_ax.plot([chosen_epoch], [100 * chosen_row[key]], marker="o", markersize=13, markerfacecolor="none",
                            markeredgecolor=line.get_color(), markeredgewidth=2, linestyle="none")
    acc_ax.set(xlabel="epoch", ylabel="accuracy %", title="accuracy", ylim=(-2, 102))
    if chosen_row is not None:
        for ax in (loss_ax, acc_ax):
            ax.axvline(chosen_epoch, color="0.35", linestyle="--", linewidth=1.2,
                       label=f"{chosen_label}: {chosen_epoch}" if ax is acc_ax else None)
    warm = [row["epoch"] for row in history if row.get("warmup_eps") is not None]
    if warm:
        for ax in (loss_ax, acc_ax):
            ax.axvspan(min(warm) - 0.5, max(warm) + 0.5, color="0.85", alpha=0.6, zorder=0,
                       label="eps warm-up" if ax is acc_ax else None)
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
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
    :param notes: a short text written beside each frontier point (e.g. its knob value, ``eps=0.1``).
    :param dominated_notes: likewise beside each dominated point.
    """

    x: Sequence[float]
    y: Sequence[float]
    dominated_x: Sequence[float] = ()
    dominated_y: Sequence[float] = ()
    label: str | None = None
    notes: Sequence[str] = ()
    dominated_notes: Sequence[str] = ()


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
class RefLine:
    """A dashed grey vertical reference line at ``x``, its ``label`` written along it (e.g. a target)."""

    x: float
    label: str = ""


@dataclass
class TradeoffPanel:
    """One axes of :func:`tradeoff_figure`.

    :param title: over the axes.
    :param xlabel: e.g. ``clean accuracy (%)``.
    :param ylabel: the robustness metric and its unit.
    :param families: drawn in this order (later ones on top).
    :param vlines: labelled vertical reference lines (e.g. the target clean accuracies).
    """

    title: str
    xlabel: str
    ylabel: str
    families: list[TradeoffFamily] = field(default_factory=list)
    vlines: Sequence[RefLine] = ()


def save_tradeoff_panels(path: str | Path, panels: Sequence[TradeoffPanel], title: str | None = None) -> Path:
    """Write :func:`tradeoff_figure` of ``panels`` to ``path`` (a ``.png``)."""
    return _save(tradeoff_figure(panels, title), path)


def tradeoff_figure(panels: Sequence[TradeoffPanel], title: str | None = None) -> Any:
    """A matplotlib Figure with one trade-off panel per entry of ``panels``, at most three to a row.

    On each panel every family's frontiers are lines with filled markers (its dominated points hollow),
    each point with its note beside it, its readings stars with a black edge and capped error bars, all in
    the family's colour; the reference lines are dashed, grey and labelled. One legend under the panels
    names the families and says what lines, hollow markers, stars and bars mean.

    :param panels: at least one.
    :param title: over the figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not panels:
        raise InputError("no panels to draw")
    rows = -(-len(panels) // 3)
    cols = -(-len(panels) // rows)
    fig = Figure(figsize=(max(5.4 * cols, 7.0), 4.3 * rows + 1.0 + (0.4 if title else 0)), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    named: dict[str, Any] = {}  # legend: one entry per family name, from whichever panel shows it
    for ax, panel in zip(axes, panels):
        for family in panel.families:
            color = family.color
            for front in family.frontiers:
                line, = ax.plot(list(front.x), list(front.y), marker="o", color=color, alpha=0.9)
                if front.label is not None:
                    named.setdefault(front.label, line)
                ax.plot(list(front.dominated_x), list(front.dominated_y), linestyle="none", marker="o",
                        markerfacecolor="none", color=color, alpha=0.9)
                for x, y, note in [*zip(front.x, front.y, front.notes),
                                   *zip(front.dominated_x, front.dominated_y, front.dominated_notes)]:
                    ax.annotate(note, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7, color=color)
            for reading in family.readings:
                error = None if reading.below is None else [[reading.below], [reading.above]]
                ax.errorbar([reading.x], [reading.y], yerr=error, marker="*", markersize=13, color=color,
                            markeredgecolor="black", capsize=3, linestyle="none")
        _reference_lines(ax, panel.vlines)
        ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel)
        ax.set_title(panel.title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:  # the grid's unused places
        ax.remove()
    key = [Line2D([], [], color="black", marker="o", label="frontier: the defense's undominated models"),
           Line2D([], [], color="black", marker="o", markerfacecolor="none", linestyle="none",
                  label="dominated model"),
           Line2D([], [], color="grey", marker="*", markersize=11, markeredgecolor="black", linestyle="none",
                  label="reading at a target (bar: 95% interval)")]
    fig.legend(handles=[*named.values(), *key], labels=[*named, *(k.get_label() for k in key)],
               loc="outside lower center", ncol=min(len(named) + len(key), 2 * cols + 1), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


@dataclass
class Line:
    """One line of :func:`line_figure`: points joined in order.

    :param color: default: the next one of matplotlib's cycle.
    :param linestyle: a matplotlib line style (``-``, ``--``, ``:``, ``-.``).
    :param marker: a matplotlib marker (``o``, ``s``, ``^``, ...).
    """

    x: Sequence[float]
    y: Sequence[float]
    label: str
    color: str | None = None
    linestyle: str | tuple[float, tuple[float, ...]] = "-"
    marker: str = "."


def save_line_plot(path: str | Path, lines: Sequence[Line], *, title: str, xlabel: str, ylabel: str,
                   ylim: tuple[float, float] | None = None, vlines: Sequence[RefLine] = (),
                   legend_title: str | None = None) -> Path:
    """Write :func:`line_figure` of ``lines`` to ``path`` (a ``.png``)."""
    return _save(line_figure(lines, title=title, xlabel=xlabel, ylabel=ylabel, ylim=ylim, vlines=vlines,
                             legend_title=legend_title), path)


def line_figure(lines: Sequence[Line], *, title: str, xlabel: str, ylabel: str,
                ylim: tuple[float, float] | None = None, vlines: Sequence[RefLine] = (),
                legend_title: str | None = None) -> Any:
    """A matplotlib Figure of labelled lines on one axes, the legend beside it.

    :param lines: drawn in order.
    :param title: over the axes.
    :param xlabel: under the x axis.
    :param ylabel: beside the y axis.
    :param ylim: the y range (default: fitted to the data).
    :param vlines: labelled dashed vertical reference lines (e.g. the threat model's eps).
    :param legend_title: over the legend (what its entries are).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for line in lines:
        ax.plot(list(line.x), list(line.y), marker=line.marker, markersize=4, linestyle=line.linestyle,
                color=line.color, alpha=0.85, label=line.label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, **({} if ylim is None else {"ylim": ylim}))
    _reference_lines(ax, vlines)
    ax.grid(alpha=0.3)
    if lines:
        fig.legend(loc="outside right upper", fontsize=7, frameon=False, title=legend_title, title_fontsize=8)
    return fig


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


def _reference_lines(ax: Any, refs: Sequence[RefLine]) -> None:
    """Dashed grey vertical lines, their labels stacked in a band added over the data (so no label hides a
    point), each label on the side of its line that has room."""
    for ref in refs:
        ax.axvline(ref.x, color="grey", linestyle="--", linewidth=1)
    labelled = [ref for ref in refs if ref.label]
    if not labelled:
        return
    low, high = ax.get_ylim()
    band = 0.02 + 0.055 * len(labelled)  # of the axes height
    ax.set_ylim(low, high + (high - low) * band / (1 - band))
    left, right = ax.get_xlim()
    for row, ref in enumerate(labelled):
        on_right = (ref.x - left) / (right - left) > 0.6
        ax.text(ref.x, 0.985 - 0.055 * row, f" {ref.label} ", transform=ax.get_xaxis_transform(),
                ha="right" if on_right else "left", va="top", fontsize=7, color="dimgrey")


def save_figure(fig: Any, path: str | Path, dpi: float | None = None) -> Path:
    """Write ``fig`` (one of this module's figures) as a PNG, atomically (never through a link someone
    placed there); returns ``path``."""
    path = Path(path)
    options = {} if dpi is None else {"dpi": dpi}
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", **options))
    return path


_save = save_figure  # the name this module's writers use


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



def _perturbation_caption(delta: torch.Tensor, wrong_before: bool) -> str:
    """The size of one perturbation; an unchanged image says why, not "Linf 0.000"."""
    if not bool(delta.any()):
        return "not attacked\n(wrong before)" if wrong_before else "not fooled\n(unchanged)"
    return f"Linf {float(delta.abs().max()):.3f}\nL2 {float(delta.norm()):.3f}"


def _wrap(text: str, inches: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``inches`` at ``fontsize`` (an average glyph is ~0.55 em wide)."""
    import textwrap

    return textwrap.fill(text, max(int(inches * 72 / (0.55 * fontsize)), 8), break_on_hyphens=False)
