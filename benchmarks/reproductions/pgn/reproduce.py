"""Reproduce Table 2 (and Figure 4) of "Adversarial Training with Perturbation Generator Networks" at CPU scale.

Runs the ``pgn`` preset (natural = the paper's naive baseline; FGM-AT and PGD-AT (L2) swept over eps; PGN
swept over c_L; attacks FGM-L2 eps 0.5, MIM-L2, DeepFool), copies its report, then compares the methods at
the naive model's clean accuracy, as the paper does:

- white-box FGM / MIM accuracy and DeepFool rho (mean, median): the benchmark's interpolated matching;
- CW-L2 rho (mean, median over successful adversarials) on each method's representative model (the trained
  model nearest the target accuracy), with the paper's cleverhans settings through ART's CarliniL2Method,
  and accuracy versus CW distortion per method (the paper's Figure 4);
- black-box accuracy of each representative on the suite's attacks and CW crafted on an independently
  trained natural model (same settings as the preset, another seed);
- training seconds per epoch per method and their ratio to natural training, beside the paper's.

Writes ``results/pgn.json``, ``results/table.md``, ``results/cw_accuracy_vs_l2.png`` and the benchmark's
report; its ``robustness_curves.png`` already holds the robustness curves (deepfool:rho panel).

    .venv/bin/python benchmarks/reproductions/pgn/reproduce.py [--jobs 2] [--dataset cifar10 --data-root DIR]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (describe, guarded, load_cell_model, markdown_table, parse_args, publish,  # noqa: E402
                    representatives, results_dir, run_preset, save_figure, target_accuracy, test_data, write_json)

import torch  # noqa: E402

PRESET = "pgn"
N_CW = 100  # CW-L2 is run on the first N_CW test images (the paper: the whole test set, on a GPU)
# The paper's cleverhans CW-L2 settings (SPECS 6) passed to ART's CarliniL2Method, which differs: a line
# search instead of Adam, and a binary search that doubles the constant until the first success where
# cleverhans multiplies it by 10, so 5 steps from 1e-2 reach 0.16 (cleverhans: 100). Hence "CW broken".
CW = ("art:CarliniL2Method", {"binary_search_steps": 5, "initial_const": 1e-2, "learning_rate": 5e-3,
                              "max_iter": 100, "batch_size": N_CW})
NAMES = {"natural": "naive (natural)", "fgm-at": "FGM-AT", "pgd-at": "PGD-AT", "pgn": "PGN"}

# Table 2 of the paper (CIFAR-100, ConvPool-CNN, 200 epochs, one RTX 2080 Ti): every method at benign ~0.700.
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "natural": {"clean": .7002, "fgm": .1173, "mim": .0167, "deepfool_rho": .0994, "deepfool_rho_median": .0626,
                "cw_rho": .0791, "cw_rho_median": .0503, "bb_fgm": .3843, "bb_mim": .2913, "bb_deepfool": .6688,
                "bb_cw": .6659, "seconds_per_epoch": 8.18},
    "fgm-at": {"clean": .6993, "fgm": .2213, "mim": .1068, "deepfool_rho": .1669, "deepfool_rho_median": .1089,
               "cw_rho": .1334, "cw_rho_median": .0867, "bb_fgm": .5211, "bb_mim": .5115, "bb_deepfool": .6902,
               "bb_cw": .6894, "seconds_per_epoch": 25.1248},
    "pgd-at": {"clean": .7000, "fgm": .2139, "mim": .1000, "deepfool_rho": .1625, "deepfool_rho_median": .1061,
               "cw_rho": .1305, "cw_rho_median": .0851, "bb_fgm": .5164, "bb_mim": .5014, "bb_deepfool": .6906,
               "bb_cw": .6880, "seconds_per_epoch": 175.8571},
    "pgn": {"clean": .7004, "fgm": .3906, "mim": .3444, "deepfool_rho": .3184, "deepfool_rho_median": .2064,
            "cw_rho": .2617, "cw_rho_median": .1674, "bb_fgm": .6428, "bb_mim": .6456, "bb_deepfool": .6958,
            "bb_cw": .6961, "seconds_per_epoch": 51.7681},
}
# Higher is more robust for every one of these (accuracies under attack, distortions needed to fool).
ROBUSTNESS_KEYS = ("fgm", "mim", "deepfool_rho", "deepfool_rho_median", "cw_rho", "cw_rho_median",
                   "cw_accuracy_at_eps", "bb_fgm", "bb_mim", "bb_deepfool", "bb_cw")


def matched_values(run: Any, target: str) -> dict[str, dict[str, float | None]]:
    """Per method, the suite's metrics read on its frontier at ``target`` (None: no model reaches it)."""
    table = run.analysis().table()
    metrics = {"fgm": "fgm", "mim": "mim", "deepfool_rho": "deepfool:rho", "deepfool_rho_median": "deepfool:rho-median",
               "deepfool_rho_success": "deepfool:rho-success"}
    return {label: {key: table[label][target][metric].value for key, metric in metrics.items()} for label in table}


def cw_rho(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
           eps: float) -> dict[str, Any]:
    """CW-L2 on ``images``: rho over successful adversarials, how many were wrong before or never broken, and
    the accuracy left within L2 ``eps`` (the threat budget; needs no choice of which successes to average)."""
    from robustkit.evaluation import evaluate
    from robustkit.host import get_host

    attack = get_host().attacks.create(*CW)
    result = evaluate(model, (images, labels), {"cw": attack}, batch_size=len(images), device=device, seed=0)
    summary = result.attacks["cw"]
    success_l2 = sorted(r.attacks["cw"].l2 for r in result.records if r.attacks["cw"].success)
    return {"n": result.n_examples, "clean_accuracy": result.clean_accuracy, "rho": summary.mean_l2,
            "rho_median": summary.median_l2, "n_success": summary.n_success, "n_clean_wrong": result.n_clean_wrong,
            "n_unbroken": result.n_examples - result.n_clean_wrong - summary.n_success,
            "accuracy_at_eps": (result.n_examples - result.n_clean_wrong - sum(d <= eps for d in success_l2))
            / result.n_examples,
            "seconds": round(summary.seconds, 2), "success_l2": success_l2}


def natural_train_settings(run: Any, seed: int) -> dict[str, Any]:
    """The training settings of the benchmark's natural cell, with ``seed``; checked against its train key."""
    from robustkit.store import ResultStore, cell_key

    store = ResultStore(run.root)
    for key in run.benchmark["cells"]:
        cell = store.get(key)
        if cell and cell["settings"]["defense"]["name"] == "natural":
            s = cell["settings"]
            settings = {k: s[k] for k in ("format", "dataset", "model", "training", "seed")}
            settings["defense"] = {"name": "natural", "params": s["defense"]["params"]}
            if cell_key(settings) != cell["result"]["training"]["train_key"]:  # same recipe as the benchmark's
                raise SystemExit("cannot rebuild the natural cell's training settings; robustkit changed its cells")
            return {**settings, "seed": seed}
    raise SystemExit(f"no finished natural cell in {run.root}; rerun the benchmark")


def train_surrogate(run: Any, data_root: Path | None, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The black-box source: a natural model trained like the benchmark's with an unused seed, kept (and
    resumed) under the benchmark's ``train/`` folder."""
    from robustkit.bench.cells import train_cell_model
    from robustkit.host import get_host

    host = get_host()
    seed = max(run.benchmark["seeds"]) + 1
    dataset = host.datasets.create(run.benchmark["dataset"]["name"], run.benchmark["dataset"].get("params") or {},
                                   root=data_root)
    model, facts = train_cell_model(host, dataset, natural_train_settings(run, seed), run.root, str(device))
    return model.eval(), {"seed": seed, **{k: facts[k] for k in ("train_key", "epochs", "seconds_per_epoch")}}


def craft(source: torch.nn.Module, attacks: Mapping[str, Any], images: torch.Tensor,
          labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Adversarials of every image against ``source``, per attack label."""
    return {label: attack(source, images, labels).adversarial for label, attack in attacks.items()}


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (model(images).argmax(1) == labels).float().mean().item()


def fastest_epoch(run: Any, train_key: str) -> float | None:
    """A training's least disturbed epoch time (from its log): robust to load on a shared machine."""
    path = run.root / "train" / train_key / "metrics.jsonl"
    if not path.exists():
        return None
    times = [json.loads(line).get("epoch_time") for line in path.read_text(encoding="utf-8").splitlines() if line]
    return min((t for t in times if t is not None), default=None)


def training_cost(run: Any, surrogate_key: str) -> dict[str, dict[str, Any]]:
    """Per method, seconds per epoch and their ratio to natural training's, beside the paper's.

    Two readings: the mean over the method's cells of the records' mean epoch, and the fastest epoch of any of
    its trainings (natural: the benchmark's and the black-box source's, trained alike), which load from other
    jobs on a shared machine disturbs least.
    """
    cost: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(r["defense"] for r in run.records):
        records = [r for r in run.records if r["defense"] == label]
        keys = [r["training"]["train_key"] for r in records] + ([surrogate_key] if label == "natural" else [])
        by_training = {key: fastest_epoch(run, key) for key in keys}
        fastest = [t for t in by_training.values() if t is not None]
        cost[label] = {"seconds_per_epoch": statistics.fmean(r["training"]["seconds_per_epoch"] for r in records),
                       "fastest_epoch_seconds": min(fastest) if fastest else None,
                       "fastest_epoch_by_training": by_training,
                       "declared_passes_per_batch": records[0]["training"]["cost_passes_per_batch"],
                       "paper_seconds_per_epoch": PAPER_TABLE2.get(label, {}).get("seconds_per_epoch")}
    base = cost.get("natural", {})
    for row in cost.values():
        for key, ratio in (("seconds_per_epoch", "ratio_to_natural"),
                           ("fastest_epoch_seconds", "fastest_ratio_to_natural"),
                           ("paper_seconds_per_epoch", "paper_ratio_to_natural")):
            row[ratio] = row[key] / base[key] if row[key] and base.get(key) else None
    return cost


def directions(rows: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Per robustness column: the most robust method, and whether PGN beats FGM-AT and PGD-AT there."""
    out = {}
    for key in ROBUSTNESS_KEYS:
        values = {label: row.get(key) for label, row in rows.items() if row.get(key) is not None}
        pgn = values.get("pgn")
        out[key] = {"best": max(values, key=values.get) if values else None,
                    **{f"pgn_above_{other}": None if pgn is None or other not in values else pgn > values[other]
                       for other in ("fgm-at", "pgd-at")}}
    return out


def plot_cw_curves(cw: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str], path: Path) -> None:
    """Accuracy under CW-L2 against the allowed L2 distortion, one line per representative (Figure 4)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    top = max((max(c["success_l2"], default=0.0) for c in cw.values()), default=1.0) * 1.1 or 1.0
    grid = [top * i / 200 for i in range(201)]
    fig = Figure(figsize=(6, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, c in cw.items():
        # Robust at distortion t: correct before the attack and CW needed more than t (or never succeeded).
        acc = [100 * (c["n_unbroken"] + sum(d > t for d in c["success_l2"])) / c["n"] for t in grid]
        ax.plot(grid, acc, label=labels[label])
    ax.set(xlabel="L2 distortion allowed", ylabel="accuracy under CW-L2 %", ylim=(0, 100),
           title=f"CW-L2 on {next(iter(cw.values()))['n']} test images (Figure 4 analogue)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    print(f"wrote {path}")


def tables(rows: Mapping[str, Mapping[str, Any]], cost: Mapping[str, Mapping[str, Any]], target: float) -> str:
    """The Table-2 analogue (ours and the paper's, same columns) and the training-cost table, as Markdown."""
    header = ["method", "model", "clean", "FGM", "MIM", "DF rho", "DF median", "DF rho-success", "CW rho",
              "CW median", "CW broken", "CW acc@eps", "BB FGM", "BB MIM", "BB DF", "BB CW"]
    keys = ["clean", "fgm", "mim", "deepfool_rho", "deepfool_rho_median", "deepfool_rho_success", "cw_rho",
            "cw_rho_median", "cw_broken", "cw_accuracy_at_eps", "bb_fgm", "bb_mim", "bb_deepfool", "bb_cw"]
    ours = [[NAMES.get(label, label), row["model"]] + [row.get(k) for k in keys] for label, row in rows.items()]
    paper = [[NAMES[label], "paper"] + [p.get(k) for k in keys] for label, p in PAPER_TABLE2.items()]
    cost_keys = ["declared_passes_per_batch", "seconds_per_epoch", "ratio_to_natural", "fastest_epoch_seconds",
                 "fastest_ratio_to_natural", "paper_seconds_per_epoch", "paper_ratio_to_natural"]
    cost_rows = [[NAMES.get(label, label)] + [c[k] for k in cost_keys] for label, c in cost.items()]
    return (f"## Ours: every method at the naive model's clean accuracy {100 * target:.1f}%\n\n"
            "clean: the target for the matched columns (FGM, MIM, DF), read on each method's frontier; model: the "
            "representative that the CW and black-box (BB) columns come from, with its own clean accuracy. '-': no "
            "model of the method reaches the target (never extrapolated). DF rho counts examples misclassified "
            "before the attack as 0 and leaves failures out; DF rho-success averages the successes only. CW "
            "broken: successes / examples correct before the attack; CW rho averages the successes only; CW "
            "acc@eps: accuracy left within the threat's L2 eps. Intervals of the matched columns are in "
            "report.md.\n\n" +
            markdown_table(header, ours) +
            "\n## Paper, Table 2 (CIFAR-100, one GPU)\n\n" + markdown_table(header, paper) +
            "\n## Training cost per epoch (ours: CPU; mean over each method's cells, and fastest epoch of any of its "
            "trainings)\n\n" +
            markdown_table(["method", "passes/batch", "s/epoch", "x natural", "fastest s/epoch", "x natural",
                            "paper s/epoch", "paper x natural"], cost_rows))


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = parse_args(PRESET, __doc__.splitlines()[0], argv)
    results = results_dir(args, __file__)
    run = run_preset(args)
    publish(run, results)
    benchmark_seconds = time.perf_counter() - started

    from robustkit.devices import resolve_device
    from robustkit.host import get_host

    device = resolve_device(args.device)
    target_name, target = target_accuracy(run)
    reps = representatives(run)
    matched_rows = matched_values(run, target_name)

    surrogate, surrogate_facts = train_surrogate(run, args.data_root, device)
    cost = training_cost(run, surrogate_facts["train_key"])
    host = get_host()
    suite = {a["label"]: host.attacks.create(a["name"], a["params"]) for a in run.benchmark["attacks"]}
    images, labels = test_data(run, run.benchmark["evaluation"]["n_examples"], data_root=args.data_root, device=device)
    cw_images, cw_labels = images[:N_CW], labels[:N_CW]
    transferred = craft(surrogate, suite, images, labels)
    transferred_cw = craft(surrogate, {"cw": host.attacks.create(*CW)}, cw_images, cw_labels)["cw"]
    surrogate_facts["clean_accuracy"] = accuracy(surrogate, images, labels)

    rows: dict[str, dict[str, Any]] = {}
    cw: dict[str, dict[str, Any]] = {}
    for label, record in reps.items():
        model = load_cell_model(run, record, device)
        cw[label] = cw_rho(model, cw_images, cw_labels, device, float(run.benchmark["threat"]["eps"]))
        black_box = {f"bb_{k}": accuracy(model, adv, labels) for k, adv in transferred.items()}
        black_box["bb_cw"] = accuracy(model, transferred_cw, cw_labels)
        rows[label] = {"clean": target, "model": f"{describe(record)}, clean {100 * record['clean_accuracy']:.1f}%",
                       **matched_rows[label], "cw_rho": cw[label]["rho"], "cw_rho_median": cw[label]["rho_median"],
                       "cw_accuracy_at_eps": cw[label]["accuracy_at_eps"],
                       "cw_broken": f"{cw[label]['n_success']}/{cw[label]['n'] - cw[label]['n_clean_wrong']}",
                       **black_box}
        print(f"{label}: {rows[label]}")

    plot_cw_curves(cw, {label: describe(r) for label, r in reps.items()},
                   results / "cw_accuracy_vs_l2.png")
    (results / "table.md").write_text(tables(rows, cost, target), encoding="utf-8")
    print(f"wrote {results / 'table.md'}")
    write_json({
        "preset": PRESET, "dataset": run.benchmark["dataset"], "benchmark": str(args.out),
        "device": str(device), "jobs": args.jobs,
        "target": {"name": target_name, "clean_accuracy": target},
        "settings": {"cw_attack": {"name": CW[0], "params": CW[1]}, "cw_examples": len(cw_images),
                     "black_box_examples": len(images), "suite": run.benchmark["attacks"]},
        "representatives": {label: {"knob": r["knob"], "knob_value": r["knob_value"],
                                    "clean_accuracy": r["clean_accuracy"], "train_key": r["training"]["train_key"]}
                            for label, r in reps.items()},
        "rows": rows, "cw": cw, "training_cost": cost, "surrogate": surrogate_facts,
        # Why PGN does (not) gain robustness: the generator's last-epoch perturbation size and the accuracy on it.
        "pgn_last_epoch": {str(r["knob_value"]): {k: r["training"]["final"].get(k)
                                                  for k in ("delta_l2", "train_acc", "train_clean_acc")}
                           for r in run.records if r["defense_name"] == "pgn"},
        "directions": directions(rows),
        "pgn_cheaper_than_pgd_at": {key: cost["pgn"][key] < cost["pgd-at"][key]
                                    for key in ("seconds_per_epoch", "fastest_epoch_seconds")},
        "paper_table2": PAPER_TABLE2,
        "seconds": {"benchmark_cells": round(sum(r["seconds"] for r in run.records), 1),  # when they ran
                    "benchmark_this_call": round(benchmark_seconds, 1),
                    "analysis": round(time.perf_counter() - started - benchmark_seconds, 1),
                    "total_this_call": round(time.perf_counter() - started, 1)},
    }, results / "pgn.json")


if __name__ == "__main__":
    guarded(main)
