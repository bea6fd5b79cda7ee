"""Figures that explain themselves: example grids (the PNG, the examples evaluation keeps for it, ``robustkit
attack`` writing it with its title), trade-off panels and eps curves of ``bench report`` (titles, legends, notes,
one panel per distinct metric, a colour per defense)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from matplotlib.colors import to_hex
from torch import nn

from robustkit.attacks import Attack, AttackResult
from robustkit.bench.analysis import BenchmarkRun
from robustkit.bench.report_plots import plot_curves, plot_eps
from robustkit.cli import cli
from robustkit.errors import InputError
from robustkit.evaluation import evaluate
from robustkit.models import Classifier, ModelSpec, Normalize
from robustkit.outcomes import AttackOutcomes, Outcomes
from robustkit.plots import (Frontier, Line, RefLine, TradeoffFamily, TradeoffPanel, amplified_perturbation,
                             example_grid_figure, line_figure, save_example_grid, tradeoff_figure)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def images(n: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels, height, width", [(1, 8, 8), (3, 32, 32), (3, 20, 12)])
def test_grid_is_a_png_of_sensible_size(tmp_path, channels, height, width):
    clean = images(5, channels, height, width)
    adv = (clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    path = save_example_grid(tmp_path / "sub" / "grid.png", clean, adv, labels=[0, 1, 2, 3, 4],
                             clean_pred=torch.tensor([0, 1, 2, 3, 0]), adv_pred=torch.tensor([1, 1, 0, 3, 2]))
    w, h = png_size(path)
    assert 400 <= w <= 3000 and 300 <= h <= 2000, (w, h)
    assert path.stat().st_size > 2000


def test_blocks_per_attack_and_max_images(tmp_path):
    clean = images(12, 1, 8, 8)
    one = png_size(save_example_grid(tmp_path / "one.png", clean, clean.flip(0), max_images=8))
    two = png_size(save_example_grid(tmp_path / "two.png", clean, {"PGD": clean.flip(0), "FGSM": 1 - clean},
                                     adv_pred={"PGD": torch.zeros(12), "FGSM": torch.ones(12)}, max_images=8))
    few = png_size(save_example_grid(tmp_path / "few.png", clean, clean.flip(0), max_images=3))
    assert two[1] > one[1] * 1.4  # two more rows
    assert few[0] < one[0]  # fewer columns


def test_perturbation_is_amplified_around_grey():
    delta = torch.tensor([0.0, 0.01, -0.02, 0.005])
    shown, scale = amplified_perturbation(delta)
    assert scale == pytest.approx(25.0)
    assert shown.tolist() == pytest.approx([0.5, 0.75, 0.0, 0.625])
    zero, scale = amplified_perturbation(torch.zeros(3))
    assert zero.tolist() == [0.5, 0.5, 0.5] and scale == 1.0
    fixed, scale = amplified_perturbation(delta, amplify=10)
    assert scale == 10 and fixed.tolist() == pytest.approx([0.5, 0.6, 0.3, 0.55])


def test_bad_inputs(tmp_path):
    clean = images(4, 1, 8, 8)
    with pytest.raises(InputError, match="shape"):
        save_example_grid(tmp_path / "x.png", clean, images(4, 1, 9, 8))
    with pytest.raises(InputError, match="C = 1 or 3"):
        save_example_grid(tmp_path / "x.png", images(4, 2, 8, 8), images(4, 2, 8, 8))
    with pytest.raises(InputError, match="labels"):
        save_example_grid(tmp_path / "x.png", clean, clean, labels=[1, 2])


def tiny_model() -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return Classifier(net, Normalize((0.5,), (0.25,)), ModelSpec("tiny-linear")).eval()


class Shift(Attack):
    """A stand-in attack: adds a fixed value (enough to flip some predictions)."""

    name = "shift"

    def perturb(self, model, images, labels, target_labels=None):
        return AttackResult(adversarial=(images + 0.3).clamp(0, 1))


def test_evaluation_keeps_the_first_clean_correct_examples():
    model = tiny_model()
    x = images(20, 1, 8, 8, seed=3)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[[0, 3, 4]] = (y[[0, 3, 4]] + 1) % 10  # wrong before any attack
    result = evaluate(model, (x, y), {"shift": Shift()}, batch_size=4, device="cpu", keep_examples=6)
    ex = result.examples
    assert ex.indices.tolist() == [1, 2, 5, 6, 7, 8]  # clean-correct ones, across batches
    assert torch.equal(ex.images, x[ex.indices]) and torch.equal(ex.labels, y[ex.indices])
    assert torch.equal(ex.adversarial["shift"], (x[ex.indices] + 0.3).clamp(0, 1))
    assert ex.adv_pred["shift"].tolist() == [result.records[i].attacks["shift"].adv_pred for i in ex.indices]
    assert "examples" not in result.summary() and len(json.dumps(result.summary())) < 2000
    assert evaluate(model, (x, y), {"shift": Shift()}, device="cpu").examples is None
    # Fewer correct than asked: misclassified ones (not attacked, adversarial = clean) fill in.
    few = evaluate(model, (x[:5], y[:5]), {"shift": Shift()}, batch_size=2, device="cpu", keep_examples=4).examples
    assert few.indices.tolist() == [1, 2, 0, 3]
    assert torch.equal(few.adversarial["shift"][2:], x[[0, 3]])


def test_attack_command_writes_the_grid(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--attack", "torchattacks:FGSM eps=0.1",
                                      "--n-examples", "10", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"wrote example grid {out / 'grid.png'}" in result.output
    w, h = png_size(out / "grid.png")
    assert w > h > 300
    assert (out / "summary.json").exists()

    grid = tmp_path / "elsewhere" / "g.png"
    result = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--attack", "torchattacks:FGSM eps=0.1",
                                      "--attack", "torchattacks:PGD eps=0.1 steps=2", "--n-examples", "6",
                                      "--grid", str(grid), "--grid-examples", "4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "4 images x 2 attack(s)" in result.output
    png_size(grid)
    bad = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--attack", "torchattacks:FGSM eps=0.1",
                                   "--grid", str(tmp_path / "g.jpg")])
    assert bad.exit_code == 2 and ".png" in bad.output


# --- figures that explain themselves: titles, legends, notes, one panel per distinct metric -------------------

def texts(fig) -> list[str]:
    """Every text a reader sees on a figure: titles, labels, annotations, legend entries."""
    out = [fig._suptitle.get_text()] if fig._suptitle is not None else []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
    for legend in fig.legends:
        out += [t.get_text() for t in legend.get_texts()] + [legend.get_title().get_text()]
    return [t for t in out if t]


def test_grid_has_a_title_a_legend_and_red_fooled_predictions():
    clean = images(3, 1, 8, 8)
    fig = example_grid_figure(clean, {"pgd": (clean + 0.1).clamp(0, 1)}, labels=[1, 2, 3], clean_pred=[1, 2, 3],
                              adv_pred={"pgd": torch.tensor([1, 7, 3])}, title="net on digits: pgd (Linf eps=0.1)",
                              notes={"pgd": "Linf eps=0.1"})
    assert fig._suptitle.get_text() == "net on digits: pgd (Linf eps=0.1)"
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "red prediction" in legend and "fooled" in legend and "grey unchanged" in legend
    adv_row = fig.axes[3:6]  # row-major: clean row, then the attack's adversarial row
    assert [ax.get_title() for ax in adv_row] == ["pred 1", "pred 7", "pred 3"]
    assert [ax.title.get_color() for ax in adv_row] == ["black", "red", "black"]
    assert adv_row[0].get_ylabel() == "pgd\n(Linf eps=0.1)"


def test_grid_uses_one_amplification_and_says_not_fooled_for_an_unchanged_image():
    clean = torch.full((3, 1, 4, 4), 0.5)
    small = clean.clone()
    small[1] += 0.01  # column 0 unchanged, column 1 a small change, column 2 unchanged (wrong before)
    large = clean + 0.2
    fig = example_grid_figure(clean, {"small": small, "large": large}, labels=[0, 1, 2], clean_pred=[0, 1, 5],
                              adv_pred={"small": torch.tensor([0, 1, 5]), "large": torch.tensor([4, 4, 5])})
    rows = [fig.axes[3 * r:3 * r + 3] for r in range(5)]
    assert rows[2][0].get_ylabel() == rows[4][0].get_ylabel() == "perturbation\nx2.5"  # 0.5 / 0.2, both rows
    assert [ax.get_title() for ax in rows[2]] == ["not fooled\n(unchanged)", "Linf 0.010\nL2 0.040",
                                                  "not attacked\n(wrong before)"]
    assert rows[4][1].get_title() == "Linf 0.200\nL2 0.800"
    shown = rows[2][1].get_images()[0].get_array()
    assert float(shown.max()) == pytest.approx(0.5 + 2.5 * 0.01, abs=1e-6)  # faint: the large attack sets the scale
    assert rows[0][2].title.get_color() == "red"  # misclassified before any attack


def families(n: int) -> list[TradeoffFamily]:
    return [TradeoffFamily(color=f"C{i}", frontiers=[Frontier([90 + i, 95], [80, 70 - i], [92], [60],
                                                              label=f"defense{i}", notes=["eps=0.1", "eps=0.05"],
                                                              dominated_notes=["eps=0.2"])])
            for i in range(n)]


@pytest.mark.parametrize("n_panels, shown", [(1, 1), (2, 2), (4, 4), (5, 5)])
def test_tradeoff_panels_are_a_grid_with_one_shared_legend(n_panels, shown):
    panels = [TradeoffPanel(f"metric {k}", "clean accuracy (%)", "robust accuracy (%)", families(2),
                            vlines=[RefLine(97.0, "target 97.0%"), RefLine(98.5, "target natural 98.5%")])
              for k in range(n_panels)]
    fig = tradeoff_figure(panels, title="quick: digits, Linf eps=0.1")
    assert len(fig.axes) == shown  # the grid's unused places are removed
    assert [ax.get_title() for ax in fig.axes] == [f"metric {k}" for k in range(n_panels)]
    ax = fig.axes[0]
    notes = [t.get_text() for t in ax.texts]
    assert notes.count("eps=0.1") == 2 and notes.count("eps=0.2") == 2  # every point of both families
    assert " target 97.0% " in notes and " target natural 98.5% " in notes
    assert max(line.get_ydata()[0] for line in ax.get_lines()) < ax.get_ylim()[1]  # labels sit above the data
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["defense0", "defense1"] and "dominated model" in legend
    assert any("95% interval" in t for t in legend)
    assert fig._suptitle.get_text() == "quick: digits, Linf eps=0.1"


def test_line_figure_marks_the_threat_and_styles_lines():
    lines = [Line([0, 0.1], [99, 80], "pgd-at eps=0.05", color="C1", linestyle="-", marker="o"),
             Line([0, 0.1], [98, 85], "pgd-at eps=0.1", color="C1", linestyle="--", marker="s")]
    fig = line_figure(lines, title="t", xlabel="Linf eps", ylabel="robust accuracy (%)", ylim=(-2, 102),
                      vlines=[RefLine(0.1, "threat Linf eps=0.1")], legend_title="trained model")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == [" threat Linf eps=0.1 "]
    drawn = [line for line in ax.get_lines() if line.get_label() in {"pgd-at eps=0.05", "pgd-at eps=0.1"}]
    assert [(line.get_linestyle(), line.get_marker()) for line in drawn] == [("-", "o"), ("--", "s")]
    assert fig.legends[0].get_title().get_text() == "trained model"


# A synthetic benchmark run: per-example outcomes of 200 examples, as the cells record them.
N = 200


def first(k: int) -> np.ndarray:
    return np.arange(N) < k


def record(defense: str, knob: str | None, value, clean: int, fooled: dict[str, int | np.ndarray],
           eps_curve=()) -> dict:
    """A record whose model is right on the first ``clean`` examples; each attack fools its first ``k`` (or the
    ones a mask picks) of those."""
    masks = {label: first(k) if isinstance(k, int) else k for label, k in fooled.items()}
    attacks = {label: AttackOutcomes(m & first(clean), m & first(clean), np.where(m, 0.5, 0.0))
               for label, m in masks.items()}
    return {"defense": defense, "seed": 0, "knob": knob, "knob_value": value, "clean_accuracy": clean / N,
            "outcomes": Outcomes(first(clean), attacks).to_json(),
            "eps_curve": [{"eps": e, "accuracy": a} for e, a in eps_curve]}


def synthetic_run(attacks: list[str], records: list[dict]) -> BenchmarkRun:
    benchmark = {"name": "tiny", "dataset": {"name": "digits"}, "model": {"name": "madry-cnn"}, "seeds": [0],
                 "threat": {"norm": "linf", "eps": 0.1}, "targets": ["natural", 0.95], "rank_by": "worst-case",
                 "evaluation": {"n_examples": N, "curve_attack": attacks[0]},
                 "attacks": [{"label": a, "goal": "fixed-budget"} for a in attacks],
                 "defenses": [{"label": "natural", "knob": None, "sweep": [None]},
                              {"label": "pgd-at", "knob": "eps", "sweep": [0.05, 0.1]}]}
    return BenchmarkRun(None, benchmark, records, 0)  # type: ignore[arg-type]


def test_curves_show_one_panel_when_the_worst_case_is_the_only_attack(tmp_path):
    run = synthetic_run(["pgd"], [record("natural", None, None, 197, {"pgd": 120}),
                                  record("pgd-at", "eps", 0.05, 196, {"pgd": 60}),
                                  record("pgd-at", "eps", 0.1, 188, {"pgd": 40})])
    fig = plot_curves(run, tmp_path / "curves.png")
    assert png_size(tmp_path / "curves.png")[0] > 300
    assert [ax.get_title() for ax in fig.axes] == ["worst case of the attacks = pgd (Linf eps=0.1)"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "clean accuracy (%)" and ax.get_ylabel() == "robust accuracy (%)"
    assert fig._suptitle.get_text().startswith("tiny: digits, Linf eps=0.1\nmadry-cnn, 200 evaluation examples")
    notes = [t.get_text() for t in ax.texts]
    assert {"eps=0.05", "eps=0.1", " target natural 98.5% ", " target 95.0% "} <= set(notes)
    # One colour per defense: every line of a defense in its colour, readings (stars) included.
    legend = fig.legends[0]
    colours = {t.get_text(): to_hex(h.get_color()) for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert colours["natural"] == to_hex("C0") and colours["pgd-at"] == to_hex("C1")
    assert {to_hex(t.get_color()) for t in ax.texts if t.get_text().startswith("eps=")} == {to_hex("C1")}
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    # natural at both targets; pgd-at (best clean 98%) cannot reach 98.5%, and reads 72.5% at 95% between its
    # models at 94% (74%) and 98% (68%).
    assert [to_hex(s.get_color()) for s in stars] == [to_hex("C0")] * 2 + [to_hex("C1")]
    assert [s.get_ydata()[0] for s in stars] == pytest.approx([38.5, 38.5, 72.5])
    assert len(ax.collections) == 3  # their 95% interval bars


def test_curves_keep_a_panel_per_distinct_attack(tmp_path):
    last = np.arange(N) >= N - 100  # fgsm fools other examples than pgd: the worst case is neither alone
    run = synthetic_run(["pgd", "fgsm"], [record("natural", None, None, 197, {"pgd": 120, "fgsm": last}),
                                          record("pgd-at", "eps", 0.05, 196, {"pgd": 60, "fgsm": last})])
    fig = plot_curves(run, tmp_path / "curves.png")
    assert [ax.get_title() for ax in fig.axes] == ["worst case of the attacks", "pgd (Linf eps=0.1)",
                                                   "fgsm (Linf eps=0.1)"]


def test_eps_plot_has_a_colour_per_defense_a_style_per_knob_and_the_threat(tmp_path):
    curve = [(0.05, 0.9), (0.1, 0.7), (0.2, 0.3)]
    run = synthetic_run(["pgd"], [record("natural", None, None, 197, {"pgd": 120}, curve),
                                  record("pgd-at", "eps", 0.05, 196, {"pgd": 60}, curve),
                                  record("pgd-at", "eps", 0.1, 188, {"pgd": 40}, curve)])
    fig = plot_eps(run, tmp_path / "eps.png")
    assert png_size(tmp_path / "eps.png")[0] > 300
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Linf eps" and ax.get_ylabel() == "robust accuracy under pgd (%)"
    assert [t.get_text() for t in ax.texts] == [" threat Linf eps=0.1 "]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert list(lines) == ["natural", "pgd-at eps=0.05", "pgd-at eps=0.1"]
    assert [to_hex(lines[k].get_color()) for k in lines] == [to_hex(c) for c in ("C0", "C1", "C1")]
    assert lines["pgd-at eps=0.05"].get_linestyle() != lines["pgd-at eps=0.1"].get_linestyle()
    assert list(lines["natural"].get_ydata()) == pytest.approx([98.5, 90, 70, 30])  # clean first, in percent
    assert plot_eps(synthetic_run(["pgd"], [record("natural", None, None, 197, {"pgd": 120})]),
                    tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_attack_grid_is_titled_with_the_model_attacks_and_threats(tmp_path, monkeypatch):
    import robustkit.plots

    seen = {}
    monkeypatch.setattr(robustkit.plots, "save_example_grid", lambda path, *args, **kw: seen.update(kw))
    result = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--attack", "pgd eps=0.1 steps=2",
                                      "--attack", "deepfool max_iter=3", "--n-examples", "4", "--threads", "1",
                                      "--grid", str(tmp_path / "g.png")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen["title"] == "lenet on digits: pgd (Linf eps=0.1); deepfool (no budget)"
    assert seen["notes"] == {"pgd": "Linf eps=0.1", "deepfool": "no budget"}
