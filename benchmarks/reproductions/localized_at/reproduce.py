"""Reproduce Localized Adversarial Training's 5 x 5 evaluation (SPECS section 1) with robustkit.

Runs the ``localized-at`` preset (natural and masked PGD-AT with the standard, background, exact and
broad masks, each swept over eps; matched at the natural model's clean accuracy), then builds the
paper's matrix: the five models x five inputs (natural, and localized PGD with each mask) as mean
cross-entropy and accuracy. As in the paper, each model is the one trained at the attack's eps; the
matrix is drawn for every eps of the sweep, with the mask applied after the attack (the paper) and
inside every step (the stronger variant).

    .venv/bin/python benchmarks/reproductions/localized_at/reproduce.py
    .venv/bin/python benchmarks/reproductions/localized_at/reproduce.py --dataset mnist --data-root ~/data
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import (  # noqa: E402
    guarded,
    ROOT,
    load_cell_model,
    markdown_table,
    parse_args,
    publish,
    results_dir,
    run_preset,
    save_figure,
    test_data,
    write_json,
)

MASKS = ("standard", "background", "exact", "broad")
MODELS = ("natural",) + tuple(f"localized-{m}" for m in MASKS)
INPUTS = ("natural",) + tuple(f"{m}-attack" for m in MASKS)
LOCALIZE = ("after", "each-step")
STEPS = 40  # the paper runs 100; 40 steps of 2.5 eps / 40 already cross the ball and back


def models_at(run: Any, eps: float) -> dict[str, dict[str, Any]]:
    """The natural record and each localized model trained at ``eps`` (the paper trains at the attack's eps)."""
    chosen = {}
    for label in MODELS:
        records = [r for r in run.records if r["defense"] == label and (label == "natural" or r["knob_value"] == eps)]
        if not records:
            raise SystemExit(f"{label} has no cell at eps {eps} in {run.root}; rerun the benchmark")
        chosen[label] = records[0]
    return chosen


def attack_inputs(host: Any, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
                  localize: str) -> dict[str, torch.Tensor]:
    """The five inputs of the matrix for ``model``: the clean images and localized PGD with each mask."""
    out = {"natural": images}
    for mask in MASKS:
        attack = host.attacks.create("localized-pgd", {"eps": eps, "steps": STEPS, "step_size": 2.5 * eps / STEPS,
                                                       "mask": mask, "localize": localize})
        out[f"{mask}-attack"] = attack(model, images, labels).adversarial
    return out


@torch.no_grad()
def loss_and_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    logits = model(images)
    return float(F.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())


def matrix(run: Any, records: dict[str, dict[str, Any]], images: torch.Tensor, labels: torch.Tensor, eps: float,
           localize: str) -> dict[str, list[list[float]]]:
    """``{"ce": rows x cols, "accuracy": rows x cols}``: each model on its own five inputs (white-box)."""
    from robustkit.host import get_host

    ce, acc = [], []
    for label in MODELS:
        model = load_cell_model(run, records[label])
        inputs = attack_inputs(get_host(), model, images, labels, eps, localize)
        row = [loss_and_accuracy(model, inputs[name], labels) for name in INPUTS]
        ce.append([c for c, _ in row])
        acc.append([a for _, a in row])
    return {"ce": ce, "accuracy": acc}


def relative(a: float, b: float) -> float:
    """How much less loss ``a`` suffers than ``b``, as the paper states it (positive: a is better)."""
    return (b - a) / b if b > 0 else 0.0


def claims(ce: list[list[float]]) -> dict[str, Any]:
    """The paper's statements, checked on one cross-entropy matrix (rows MODELS, columns INPUTS)."""
    row = dict(zip(MODELS, ce))
    adversarial = range(1, len(INPUTS))
    return {
        "standard_vs_natural_on_natural_inputs": relative(row["localized-standard"][0], row["natural"][0]),
        "standard_vs_natural_on_attacks": [relative(row["localized-standard"][j], row["natural"][j]) for j in adversarial],
        "broad_vs_standard_on_natural_inputs": relative(row["localized-broad"][0], row["localized-standard"][0]),
        "broad_vs_standard_on_attacks": [relative(row["localized-broad"][j], row["localized-standard"][j])
                                         for j in adversarial],
        "background_vs_natural_on_natural_inputs": relative(row["localized-background"][0], row["natural"][0]),
        "background_vs_natural_on_attacks": [relative(row["localized-background"][j], row["natural"][j])
                                             for j in adversarial],
        "beat_natural_on_every_input": [m for m in MODELS[1:] if all(a < b for a, b in zip(row[m], row["natural"]))],
    }


def heatmap(path: Path, result: dict[str, Any], eps: float) -> None:
    """Cross-entropy and accuracy matrices, after-attack and in-step masks, as one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.patheffects import withStroke

    fig = Figure(figsize=(12, 9.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for i, localize in enumerate(LOCALIZE):
        for j, (metric, title) in enumerate((("ce", "mean cross-entropy"), ("accuracy", "accuracy"))):
            ax, values = axes[i][j], torch.tensor(result[localize][metric])
            norm = LogNorm(vmin=max(float(values.min()), 1e-4), vmax=max(float(values.max()), 1e-3)) if metric == "ce" else None
            image = ax.imshow(values.clamp_min(1e-4).numpy() if metric == "ce" else values.numpy(),
                              cmap="magma_r" if metric == "ce" else "viridis", norm=norm,
                              vmin=None if metric == "ce" else 0, vmax=None if metric == "ce" else 1)
            for r in range(len(MODELS)):
                for c in range(len(INPUTS)):
                    ax.text(c, r, f"{float(values[r, c]):.3g}", ha="center", va="center", fontsize=8, color="white",
                            path_effects=[withStroke(linewidth=2, foreground="black")])
            ax.set_xticks(range(len(INPUTS)), INPUTS, rotation=30, ha="right", fontsize=8)
            ax.set_yticks(range(len(MODELS)), [m.replace("localized-", "") + " model" for m in MODELS], fontsize=8)
            ax.set_title(f"{title}, mask {localize} (eps {eps:g})", fontsize=10)
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def tables(results: dict[str, Any], eps: float) -> str:
    text = ""
    names = [m.replace("localized-", "") for m in MODELS]
    for localize in LOCALIZE:
        for metric in ("ce", "accuracy"):
            rows = [[name] + values for name, values in zip(names, results[f"{eps:g}"][localize][metric])]
            text += f"\n**{metric}, eps {eps:g}, mask {localize}** (rows: model, columns: input)\n\n"
            text += markdown_table(["model"] + list(INPUTS), rows)
    return text


def mask_coverage(images: torch.Tensor) -> dict[str, float]:
    """The mean fraction of pixels each mask lets the attack change (small images leave little background)."""
    from robustkit_localized_at.masks import make_mask

    return {mask: float(make_mask(mask, images).mean()) for mask in MASKS}


def main(argv: list[str] | None = None) -> None:
    args = parse_args("localized-at", __doc__.splitlines()[0], argv)
    results = results_dir(args, __file__)
    run = run_preset(args)
    publish(run, results)
    started = time.perf_counter()
    images, labels = test_data(run, run.benchmark["evaluation"]["n_examples"], data_root=args.data_root)
    sweep = sorted({r["knob_value"] for r in run.records if r["knob_value"] is not None})
    out: dict[str, Any] = {"models": MODELS, "inputs": INPUTS, "steps": STEPS, "n_examples": int(labels.shape[0]),
                           "step_size": "2.5 * eps / steps", "mask_coverage": mask_coverage(images),
                           "matrices": {}}
    for eps in sweep:
        records = models_at(run, eps)
        per_eps: dict[str, Any] = {"clean_accuracy": {m: records[m]["clean_accuracy"] for m in MODELS}}
        for localize in LOCALIZE:
            torch.manual_seed(0)
            per_eps[localize] = matrix(run, records, images, labels, eps, localize)
            per_eps[localize]["claims"] = claims(per_eps[localize]["ce"])
        out["matrices"][f"{eps:g}"] = per_eps
        heatmap(results / f"matrix_eps{eps:g}.png", per_eps, eps)
    out["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out, results / "localized_at.json")
    text = "# Localized AT: the 5 x 5 matrix (written by reproduce.py)\n"
    for eps in sweep:
        text += tables(out["matrices"], eps)
    (results / "table.md").write_text(text, encoding="utf-8")
    print(f"wrote {results / 'table.md'}")


if __name__ == "__main__":
    guarded(main)
