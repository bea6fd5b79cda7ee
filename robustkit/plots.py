"""Figures as PNG files: example grids (clean, adversarial, amplified perturbation).

matplotlib is imported inside the functions and drawn through its Agg canvas (no pyplot, no
global backend switch), so importing this module is cheap and it works without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

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
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))  # never through a link someone placed there
    return path


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
