"""Adversarial training cost: each defense's epoch time divided by natural training's, against its floor.

Run: ``.venv/bin/python benchmarks/perf/training_cost.py [--quick]`` (``--quick``: about 1.5 minutes on 2 busy
CPU cores; the default: about 10 minutes). Writes ``benchmarks/results/perf_training_cost.json``.

What is timed: the shared loop itself. Every run is ``robustkit.training.train(model, data, defense,
TrainConfig(epochs=1, val_examples=0, out_dir=None, ...))`` on a fresh copy of the same initial model, and
the recorded time is the loop's own ``epoch_time`` (``history[0]["epoch_time"]``): the batches of one epoch
(data loading, the input check, ``defense.batch_loss``, the loss readout, backward, the optimizer step,
``defense.after_step``), without setup (optimizer, PGN's generator) or validation. Why the loop and not
``batch_loss`` + backward + step timed by hand: the loop is what a user's epoch costs, including the
per-batch work a hand-written timer would leave out, and it needs no copy of the loop here that could drift
from the real one. Runs are interleaved by epoch: each round trains one epoch of every defense (rotating
which goes first), after one untimed warm-up epoch each; the ratios are taken of the medians.

Two settings, because they show different things:

- ``paper-like``: the PGN paper's classifier, ConvPool-CNN at full width, on 32x32x3 images with 100
  classes (its CIFAR-100 table), Adam, batch 32 (``--quick``: 8), random images in [0, 1] with random labels
  (the cost of a pass does not depend on the pixel values). A full-width ConvPool-CNN pass costs about 0.3
  GMAC per image, so the model's arithmetic dominates Python overhead: the ratios here are the algorithmic
  cost (passes per batch). The PGN target is read here.
- ``digits``: the quick benchmark's Madry CNN on the embedded 8x8 digits, batch 128, the whole training
  split (``--quick``: its first 256 images). A pass is about 1 MMAC per image, so fixed per-pass and per-batch
  costs (Python, dispatch, the optimizer, data loading) weigh much more, and PGN's reference-sized
  generator (about 12 MMAC per 8x8 image) outweighs the classifier by an order of magnitude: this is what
  the CPU-scale presets pay, not the paper's ratio.

``--quick`` runs the paper-like setting on one batch of 8: a smoke test. The ratios depend on the batch size
(on a 2-core CPU, PGD-10 came out about 7x natural at batch 8 and about 11x at batch 32), so read the
targets from a default run.

Targets: a PGD-k AT epoch within 15% of the floor of k + 1 forward/backward passes (ratio <= 1.15 (k + 1));
a PGN epoch (generator width 128, the reference's, double backprop on and off) at most 0.4 of a PGD-10 AT
epoch (the paper: 51.8 s / 175.9 s = 0.29). Each defense's declared ``cost()`` is recorded next to its
measured ratio. An attack pass (forward, then a backward to the input only) skips the weight gradients
that a training pass computes, so a ratio somewhat below the floor is possible and still meets the target.

With a CUDA GPU, the ``--gpu-settings`` (default: paper-like) are also run on it (batch 128) and the absolute
throughput (images per second of training) is reported, then natural, PGD-10 AT and PGN (detach_grad) again at
every precision and memory format (``TrainConfig(precision=..., channels_last=...)``: fp32, bf16, fp16, each
NCHW and channels-last), with each one's speed-up over fp32 NCHW; without a GPU the GPU section says "no GPU".
``--gpu-only`` skips the CPU settings. A GPU setting of its own, ``wrn-32-10`` (Madry's CIFAR-10 WideResNet,
about 6 GMAC per 32x32 image, 10 classes, batch 128, 10 batches), is big enough to keep an H100 busy: on the
paper-like ConvPool-CNN a GPU waits on kernel launches and data loading more than it computes.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PLUGINS = "datasets,paper-models,baseline-defenses,rlfat,pgn"
PGD_STEPS = (3, 7, 10)
PGD_TARGET = 1.15  # epoch ratio <= 1.15 * (k + 1)
PGN_TARGET = 0.4  # PGN epoch <= 0.4 * PGD-10 epoch
PAPER_PGN_RATIO = round(51.7681 / 175.8571, 3)  # Table 2 of the PGN paper (CIFAR-100, sec/epoch)

SETTINGS: dict[str, dict[str, Any]] = {
    "paper-like": {"model": "convpool-cnn", "model_params": {"width": 1.0}, "data": "random",
                   "shape": (3, 32, 32), "classes": 100, "batch": 32, "batches": 2, "eps": 8 / 255,
                   "repeats": 3, "pgn_gen16": False},
    "digits": {"model": "madry-cnn", "model_params": {}, "data": "digits", "batch": 128, "n_train": None,
               "eps": 0.1, "repeats": 5, "pgn_gen16": True},
    "wrn-32-10": {"model": "wrn-32-10", "model_params": {}, "data": "random", "shape": (3, 32, 32), "classes": 10,
                  "batch": 128, "batches": 10, "eps": 8 / 255, "repeats": 2, "pgn_gen16": False},
}
QUICK = {"paper-like": {"batch": 8, "batches": 1, "repeats": 3}, "digits": {"n_train": 256, "repeats": 3}}
GPU = {"paper-like": {"batch": 128, "batches": 20, "repeats": 3}, "wrn-32-10": {}}
GPU_QUICK = {"paper-like": {"batch": 128, "batches": 5, "repeats": 2}, "wrn-32-10": {"batches": 3, "repeats": 1}}
#: What the precision sweep trains: the natural denominator, the PGD-AT baseline and PGN, the cheapest defense.
SWEPT = ("natural", "pgd-at k=10", "pgn gen128 detach_grad")


def defenses(eps: float, other_steps: int, gen16: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, registered name, parameters) of every timed defense; ``natural`` first (the denominator)."""
    rows = [("natural", "natural", {})]
    rows += [(f"pgd-at k={k}", "pgd-at", {"eps": eps, "steps": k}) for k in PGD_STEPS]
    rows += [
        (f"trades k={other_steps}", "trades", {"eps": eps, "steps": other_steps}),
        (f"rlfat P k={other_steps}", "rlfat", {"variant": "P", "eps": eps, "steps": other_steps}),
        (f"rlfat T k={other_steps}", "rlfat", {"variant": "T", "eps": eps, "steps": other_steps}),
        ("pgn gen128 double-backprop", "pgn", {"gen_width": 128, "detach_grad": False}),
        ("pgn gen128 detach_grad", "pgn", {"gen_width": 128, "detach_grad": True}),
    ]
    if gen16:
        rows.append(("pgn gen16 double-backprop", "pgn", {"gen_width": 16, "detach_grad": False}))
    return rows


def build_data(host: Any, setting: dict[str, Any]) -> Any:
    import torch
    from torch.utils.data import TensorDataset

    from robustkit.data import DatasetInfo, ImageDataset, take

    if setting["data"] == "digits":
        data = host.datasets.create("digits", {})
        return ImageDataset(data.info, take(data.train, setting["n_train"]), data.test)
    channels, height, width = setting["shape"]
    n = setting["batch"] * setting["batches"]
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, channels, height, width, generator=gen)
    labels = torch.randint(0, setting["classes"], (n,), generator=gen)
    info = DatasetInfo(f"random-{height}x{width}x{channels}", setting["classes"], channels, (height, width),
                       (0.5,) * channels, (0.25,) * channels)
    split = TensorDataset(images, labels)
    return ImageDataset(info, split, TensorDataset(images[: setting["batch"]], labels[: setting["batch"]]))


def run_setting(host: Any, name: str, setting: dict[str, Any], device: Any, other_steps: int,
                precision: str = "fp32", channels_last: bool = False,
                only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Time one epoch of every defense (those labelled in ``only``, if given) at ``precision``."""
    import torch

    from robustkit.models import build_model
    from robustkit.training import TrainConfig, train

    data = build_data(host, setting)
    n_train = len(data.train)
    torch.manual_seed(0)
    base = build_model(host, setting["model"], data.info, setting["model_params"])
    config = TrainConfig(epochs=1, batch_size=setting["batch"], optimizer="adam", lr=5e-4, seed=0,
                         device=str(device), val_examples=0, out_dir=None, precision=precision,
                         channels_last=channels_last)
    plan = [row for row in defenses(setting["eps"], other_steps, setting["pgn_gen16"])
            if only is None or row[0] in only]
    declared = {label: float(host.defenses.create(reg, params).cost()) for label, reg, params in plan}

    def epoch(reg: str, params: dict[str, Any]) -> Any:
        def run() -> float:
            model = copy.deepcopy(base)
            torch.manual_seed(1)  # PGN's generator initialization, the same in every run
            result = train(model, data, host.defenses.create(reg, params), config)
            return float(result.history[0]["epoch_time"])

        return run

    started = time.perf_counter()
    passes = pass_costs(base, data, setting, device)
    times = common.measure({label: epoch(reg, params) for label, reg, params in plan}, setting["repeats"],
                           label=f"{name} on {device}")
    natural = statistics.median(times["natural"])
    natural_min = min(times["natural"])
    pgd10 = statistics.median(times["pgd-at k=10"])
    pgd10_min = min(times["pgd-at k=10"])
    rows = []
    for label, reg, params in plan:
        t = times[label]
        med, low = statistics.median(t), min(t)
        row: dict[str, Any] = {
            "defense": label, "name": reg, "params": params, "declared_cost": declared[label],
            "epoch_seconds": common.summary(t), "images_per_second": round(n_train / med, 2),
            "ratio_vs_natural": round(med / natural, 3), "ratio_vs_natural_min": round(low / natural_min, 3),
            "ratio_over_declared_cost": round(med / natural / declared[label], 3),
        }
        if reg == "pgd-at":
            floor = params["steps"] + 1
            # What k attack passes add to a natural epoch, from the measured pass costs (an estimate).
            expected = 1 + params["steps"] * passes["attack_pass_seconds"] * n_train / setting["batch"] / natural
            row.update({"floor_passes": floor, "ratio_over_floor": round(med / natural / floor, 3),
                        "expected_from_pass_costs": round(expected, 3),
                        "ratio_over_expected": round(med / natural / expected, 3),
                        "target": f"ratio <= {PGD_TARGET} * {floor} = {PGD_TARGET * floor:g}",
                        "target_met": med / natural <= PGD_TARGET * floor})
        if reg == "pgn":
            row.update({"ratio_vs_pgd10": round(med / pgd10, 3), "ratio_vs_pgd10_min": round(low / pgd10_min, 3)})
            if params["gen_width"] == 128:
                row.update({"target": f"pgn epoch <= {PGN_TARGET} * pgd-at k=10 epoch (paper {PAPER_PGN_RATIO})",
                            "target_met": med / pgd10 <= PGN_TARGET})
        rows.append(row)
    return {
        "setting": name, "device": str(device), "precision": precision, "channels_last": channels_last,
        "model": setting["model"], "model_params": setting["model_params"],
        "data": ("embedded digits, train split" + (f" (first {setting['n_train']})" if setting.get("n_train") else "")
                 if setting["data"] == "digits" else
                 f"random images {'x'.join(map(str, setting['shape']))} in [0, 1], random labels"),
        "input_shape": list(data.info.input_shape), "classes": data.info.num_classes,
        "batch_size": setting["batch"], "train_images": n_train, "batches_per_epoch": -(-n_train // setting["batch"]),
        "repeats": setting["repeats"], "optimizer": "adam lr 5e-4", "eps": setting["eps"],
        "pass_costs": passes, "rows": rows, "seconds": round(time.perf_counter() - started, 1),
    }


def pass_costs(base: Any, data: Any, setting: dict[str, Any], device: Any) -> dict[str, Any]:
    """One training step and one attack pass on the first batch, interleaved: what PGD-k should cost.

    Training step: zero_grad, forward, cross-entropy, backward (weights and activations), Adam step.
    Attack pass: forward and a backward to the input only (``robustkit.adversarial.input_gradient``, what
    every PGD step of pgd-at runs), in training mode as pgd-at crafts. Neither includes data loading.
    """
    import torch
    import torch.nn.functional as F

    from robustkit.adversarial import input_gradient
    from robustkit.data import stack, take

    x, y = stack(take(data.train, setting["batch"]))
    x, y = x.to(device), y.to(device)
    model = copy.deepcopy(base).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)

    def training_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    times = common.measure({"training_step": common.wall(training_step, device),
                            "attack_pass": common.wall(lambda: input_gradient(model, x, y), device)},
                           max(10, setting["repeats"]))
    step, attack = statistics.median(times["training_step"]), statistics.median(times["attack_pass"])
    return {"batch": int(x.shape[0]), "training_step_seconds": round(step, 6), "attack_pass_seconds": round(attack, 6),
            "attack_pass_over_training_step": round(attack / step, 3),
            "runs": {name: common.summary(t) for name, t in times.items()}}


def show(result: dict[str, Any]) -> None:
    headers = ["defense", "declared", "epoch s (med)", "min s", "img/s", "x natural", "x nat (min)", "/ declared",
               "/ floor", "x pgd-10", "target"]
    rows = []
    for r in result["rows"]:
        rows.append([r["defense"], r["declared_cost"], r["epoch_seconds"]["median"], r["epoch_seconds"]["min"],
                     r["images_per_second"], r["ratio_vs_natural"], r["ratio_vs_natural_min"],
                     r["ratio_over_declared_cost"], r.get("ratio_over_floor"), r.get("ratio_vs_pgd10"),
                     r.get("target_met")])
    common.table(headers, rows, title=(
        f"[{result['setting']}] {result['model']} {result['model_params'] or ''} on {result['data']}, "
        f"{result['device']} {common.variant_label(result['precision'], result['channels_last'])}, "
        f"batch {result['batch_size']}, {result['train_images']} images/epoch, "
        f"{result['repeats']} interleaved repeats"))
    p = result["pass_costs"]
    expected = ", ".join(f"k={r['params']['steps']}: {r['expected_from_pass_costs']:.2f} x natural "
                         f"(measured {r['ratio_vs_natural']:.2f})" for r in result["rows"] if r["name"] == "pgd-at")
    print(f"one batch: training step {p['training_step_seconds']:.4f} s, attack pass {p['attack_pass_seconds']:.4f} s "
          f"(x {p['attack_pass_over_training_step']:.2f}); pgd-at expected from these: {expected}\n")


def precision_sweep(host: Any, name: str, setting: dict[str, Any], device: Any, other_steps: int) -> dict[str, Any]:
    """:data:`SWEPT` at every precision and memory format; speed-ups over fp32 NCHW, the same defense."""
    runs = {common.variant_label(p, cl): run_setting(host, name, setting, device, other_steps, p, cl, SWEPT)
            for p, cl in common.PRECISION_VARIANTS}
    reference = next(iter(runs.values()))
    base = {r["defense"]: r["epoch_seconds"]["median"] for r in reference["rows"]}
    rows = []
    for label, run in runs.items():
        for r in run["rows"]:
            rows.append({"variant": label, "precision": run["precision"], "channels_last": run["channels_last"],
                         "defense": r["defense"], "epoch_seconds": r["epoch_seconds"],
                         "images_per_second": r["images_per_second"],
                         "speedup_vs_fp32_nchw": round(base[r["defense"]] / r["epoch_seconds"]["median"], 3),
                         "ratio_vs_natural": r["ratio_vs_natural"], "ratio_vs_pgd10": r.get("ratio_vs_pgd10")})
    return {"setting": name, "defenses": list(SWEPT),
            "reference": common.variant_label(*common.PRECISION_VARIANTS[0]),
            "batch_size": setting["batch"], "train_images": reference["train_images"], "rows": rows,
            "runs": list(runs.values())}


def show_sweep(sweep: dict[str, Any]) -> None:
    headers = ["variant", "defense", "epoch s (med)", "img/s", "x fp32 NCHW", "x natural", "x pgd-10"]
    rows = [[r["variant"], r["defense"], r["epoch_seconds"]["median"], r["images_per_second"],
             r["speedup_vs_fp32_nchw"], r["ratio_vs_natural"], r["ratio_vs_pgd10"]] for r in sweep["rows"]]
    common.table(headers, rows, title=f"[{sweep['setting']} (GPU)] precision and memory format, "
                                      f"batch {sweep['batch_size']}, "
                                      f"{sweep['train_images']} images/epoch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about 1.5 minutes")
    parser.add_argument("--settings", default="paper-like,digits", help="comma-separated: paper-like, digits")
    parser.add_argument("--gpu-settings", default="paper-like",
                        help="comma-separated settings run on a GPU: paper-like, wrn-32-10")
    parser.add_argument("--repeats", type=common.positive_int, default=None, help="interleaved repeats (default: per setting)")
    parser.add_argument("--other-steps", type=common.positive_int, default=10, help="attack steps of TRADES and RLFAT (default 10)")
    parser.add_argument("--threads", type=common.positive_int, default=1,
                        help="torch CPU threads (default 1: less noise from other jobs on a shared machine)")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "perf_training_cost.json")
    common.add_gpu_options(parser)
    args = parser.parse_args(argv)
    for option in ("settings", "gpu_settings"):
        unknown = [n.strip() for n in getattr(args, option).split(",") if n.strip() and n.strip() not in SETTINGS]
        if unknown:
            parser.error(f"--{option.replace('_', '-')}: unknown setting {', '.join(unknown)}; "
                         f"choose from {', '.join(SETTINGS)}")

    common.setup(PLUGINS, args.threads)
    import torch

    from robustkit.host import make_host

    load_before = os.getloadavg()
    started = time.perf_counter()
    host = make_host()
    gpu_device = common.gpu_or_exit(args.gpu_only)
    results = []
    for name in [] if args.gpu_only else [s.strip() for s in args.settings.split(",") if s.strip()]:
        setting = {**SETTINGS[name], **(QUICK.get(name, {}) if args.quick else {})}
        if args.repeats:
            setting["repeats"] = args.repeats
        result = run_setting(host, name, setting, torch.device("cpu"), args.other_steps)
        show(result)
        results.append(result)

    if gpu_device is None:
        gpu: dict[str, Any] = {"available": False, "rows": "no GPU"}
        print("GPU: no GPU (no CUDA device visible); no GPU throughput rows\n")
    else:
        gpu_results = []
        for name in [s.strip() for s in args.gpu_settings.split(",") if s.strip()]:
            setting = {**SETTINGS[name], **(GPU_QUICK if args.quick else GPU).get(name, {})}
            if args.repeats:
                setting["repeats"] = args.repeats
            gpu_result = run_setting(host, name, setting, gpu_device, args.other_steps)
            gpu_result["setting"] = f"{name} (GPU)"
            show(gpu_result)
            gpu_result["precision_sweep"] = precision_sweep(host, name, setting, gpu_device, args.other_steps)
            show_sweep(gpu_result["precision_sweep"])
            gpu_results.append(gpu_result)
        gpu = {**common.gpu_facts(gpu_device), "settings": gpu_results,
               "note": "epoch_time is the loop's own timer: each batch's loss readout synchronizes the GPU, so at "
                       "most the last batch's backward and step fall outside it"}

    measured = results + (gpu["settings"] if gpu["available"] else [])
    targets = [{"setting": r["setting"], "defense": row["defense"], "target": row["target"], "met": row["target_met"]}
               for r in measured for row in r["rows"] if "target_met" in row]
    for t in targets:
        print(f"target [{t['setting']}] {t['defense']}: {t['target']}: {'met' if t['met'] else 'NOT met'}")
    result = {
        "benchmark": "perf_training_cost",
        "mode": "quick" if args.quick else "default",
        "method": "robustkit.training.train(epochs=1, val_examples=0, out_dir=None) per defense on a fresh copy of "
                  "one initial model; the loop's own epoch_time (no setup, no validation); one warm-up epoch each, "
                  "then interleaved rounds (one epoch of every defense per round, rotating start); ratios of medians",
        "targets": {"pgd_at": f"epoch ratio vs natural <= {PGD_TARGET} * (k + 1)",
                    "pgn": f"pgn epoch <= {PGN_TARGET} * pgd-at k=10 epoch (gen_width 128; paper {PAPER_PGN_RATIO})"},
        "settings": results if results else "not run (--gpu-only)",
        "targets_met": targets,
        "gpu": gpu,
        **common.stamp(load_before, started),
    }
    common.write(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
