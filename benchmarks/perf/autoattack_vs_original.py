"""AutoAttack: robustkit's ``autoattack`` (each backend) against the authors' own package, same models and images.

Run: ``.venv/bin/python benchmarks/perf/autoattack_vs_original.py [--quick]`` (default: about 15 minutes on one
busy CPU core; ``--quick``: about 3). Writes ``benchmarks/results/perf_autoattack_vs_original.json``. Needs the
authors' package (``pip install pyautoattack``; it is in the test extra).

Models: the Madry CNN (``madry-cnn``) on the embedded 8x8 digits, trained here with robustkit's own loop
(seed 0): naturally, and with PGD-AT (eps 0.1, 7 steps), so that on the robust one every sub-attack runs on
many images. Each is attacked with the standard version (APGD-CE 100 steps, APGD-T 100 x 9, FAB-T 100 x 9,
Square 5000 queries; linf eps 0.1, seed 0) on the first ``--n`` test images (default 64, ``--quick`` 16),
as one batch, by three variants:

- ``robustkit (torchattacks)``: ``autoattack`` with its default backend (``plugins/robustkit-autoattack``:
  torchattacks' classes running the authors' arithmetic, see ``parts.py``);
- ``robustkit (original)``: ``autoattack backend=original`` (the authors' package, one sub-attack per call);
- ``original``: the authors' ``AutoAttack(model, norm='Linf', eps, seed=0).run_standard_evaluation(x, y,
  batch_size=n)``, what RobustBench runs: the baseline of every ratio. Its per-sub-attack seconds are read from
  its own log (the cumulative "total time" after each sub-attack).

Every variant first runs on two images (imports, allocator), then ``--repeats`` rounds interleaved with a
rotating start (``common.measure``); every timed run is also checked: robust accuracy, the set of robust
images and the adversarial images of each run are compared with the original's. Times: wall clock and the
process's CPU time (on a shared machine CPU time is disturbed less by other jobs); figures are medians, with
the minima beside them; ratios are robustkit / original. Goals (issue 20): at most 1.0x the original on CPU for
the natural and the robust model, at most 0.7x on a GPU, identical robust sets in every row. With a CUDA GPU
the same rows run on it; without one the JSON says ``"not done (no GPU lent)"``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PLUGINS = "autoattack"
EPS = 0.1
CPU_GOAL, GPU_GOAL = 1.0, 0.7
DEFAULT = {"n": 64, "repeats": 3, "epochs": 10}
QUICK = {"n": 16, "repeats": 2, "epochs": 5}
VARIANTS = ("robustkit (torchattacks)", "robustkit (original)", "original")
BASELINE = "original"
SUB_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


def train_models(host: Any, epochs: int) -> dict[str, Any]:
    """The Madry CNN on the digits, trained naturally and with PGD-AT (eps 0.1, 7 steps), seed 0."""
    import torch

    from robustkit.models import build_model
    from robustkit.training import TrainConfig, train

    data = host.datasets.create("digits", {}, root=None)
    models = {}
    for name, defense in (("natural", host.defenses.create("natural")),
                          ("pgd-at", host.defenses.create("pgd-at", eps=EPS, steps=7))):
        torch.manual_seed(0)
        model = build_model(host, "madry-cnn", data.info)
        trained = train(model, data, defense, TrainConfig(epochs=epochs, out_dir=None, val_examples=0, seed=0)).model
        models[f"madry-cnn {name}"] = trained.eval()
    return models


class OriginalLog(logging.Handler):
    """The cumulative seconds the authors' package logs after each sub-attack ("... (total time 6.3 s)")."""

    PATTERN = re.compile(r"robust accuracy after ([A-Z-]+): .* \(total time ([0-9.]+) s\)")

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.cumulative: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = self.PATTERN.search(record.getMessage())
        if match:
            self.cumulative[match.group(1).lower()] = float(match.group(2))

    def seconds(self) -> dict[str, float]:
        out, before = {}, 0.0
        for name, total in self.cumulative.items():
            out[name], before = total - before, total
        return out


def variants(model: Any, x: Any, y: Any, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Callable[[], float]]:
    """The three variants as ``common.measure`` callables (each returns its wall seconds and appends the run's
    CPU seconds, per-sub-attack seconds and adversarials to ``runs``)."""
    from pyautoattack import AutoAttack as Original

    from robustkit_autoattack.autoattack import AutoAttack

    def timed(name: str, attack: Callable[[], tuple[Any, dict[str, float]]]) -> Callable[[], float]:
        def run() -> float:
            wall, cpu = time.perf_counter(), time.process_time()
            adversarial, per_sub = attack()
            common.sync(x.device)
            record = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "per_sub": per_sub,
                      "adversarial": adversarial.detach().cpu()}
            runs[name].append(record)
            return record["wall"]

        return run

    def ours(backend: str) -> Callable[[], tuple[Any, dict[str, float]]]:
        def attack() -> tuple[Any, dict[str, float]]:
            result = AutoAttack(eps=EPS, seed=0, backend=backend)(model, x, y)
            return result.adversarial, dict(result.extra["seconds"])

        return attack

    def original() -> tuple[Any, dict[str, float]]:
        log = OriginalLog()
        logger = logging.getLogger("auto-attack")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(log)
        try:
            adversary = Original(model, norm="Linf", eps=EPS, seed=0, version="standard", device=x.device)
            adversarial, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
        finally:
            logger.removeHandler(log)
        return adversarial, log.seconds()

    return {"robustkit (torchattacks)": timed("robustkit (torchattacks)", ours("torchattacks")),
            "robustkit (original)": timed("robustkit (original)", ours("original")),
            "original": timed("original", original)}


def measure_model(name: str, model: Any, x: Any, y: Any, repeats: int) -> dict[str, Any]:
    """Interleaved timings of the three variants on one model, with the image-by-image comparison."""
    import torch

    model = model.to(x.device)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    calls = variants(model, x, y, runs)
    warm = variants(model, x[:2], y[:2], {v: [] for v in VARIANTS})
    for call in warm.values():  # imports and allocator growth, outside the timings
        call()
    common.measure(calls, repeats, warmup=False, label=name)

    reference = runs[BASELINE][0]["adversarial"]
    with torch.no_grad():
        robust_ref = (model(reference.to(x.device)).argmax(1) == y).cpu()
    rows: dict[str, Any] = {}
    for variant, records in runs.items():
        robust_sets = []
        for record in records:
            with torch.no_grad():
                robust_sets.append((model(record["adversarial"].to(x.device)).argmax(1) == y).cpu())
        per_sub = {sub: common.summary([r["per_sub"].get(sub, 0.0) for r in records]) for sub in SUB_ATTACKS}
        rows[variant] = {
            "wall_seconds": common.summary([r["wall"] for r in records]),
            "cpu_seconds": common.summary([r["cpu"] for r in records]),
            "per_sub_attack_seconds": per_sub,
            "robust_accuracy": round(float(robust_sets[0].float().mean()), 4),
            "robust_sets_equal_to_original": all(torch.equal(r, robust_ref) for r in robust_sets),
            "adversarials_equal_to_original": all(torch.equal(r["adversarial"], reference) for r in records),
        }
    base = rows[BASELINE]
    for variant, row in rows.items():
        if variant == BASELINE:
            continue
        row["ratio"] = {
            "wall_median": _ratio(row["wall_seconds"]["median"], base["wall_seconds"]["median"]),
            "wall_min": _ratio(row["wall_seconds"]["min"], base["wall_seconds"]["min"]),
            "cpu_median": _ratio(row["cpu_seconds"]["median"], base["cpu_seconds"]["median"]),
            "cpu_min": _ratio(row["cpu_seconds"]["min"], base["cpu_seconds"]["min"]),
            "per_sub_attack_wall_median": {sub: _ratio(row["per_sub_attack_seconds"][sub]["median"],
                                                       base["per_sub_attack_seconds"][sub]["median"])
                                           for sub in SUB_ATTACKS},
        }
    return {"model": name, "n": len(x), "eps": EPS, "clean_accuracy": round(float(clean.float().mean()), 4),
            "rows": rows}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def verdict(models: list[dict[str, Any]], goal: float) -> dict[str, Any]:
    """Whether robustkit's default backend is within ``goal`` x the original (median CPU time) with identical
    robust sets, model by model."""
    out = {}
    for m in models:
        row = m["rows"]["robustkit (torchattacks)"]
        out[m["model"]] = {"ratio_cpu_median": row["ratio"]["cpu_median"],
                           "ratio_wall_median": row["ratio"]["wall_median"],
                           "identical_robust_sets": all(r["robust_sets_equal_to_original"] for r in m["rows"].values()),
                           "met": (row["ratio"]["cpu_median"] is not None and row["ratio"]["cpu_median"] <= goal
                                   and all(r["robust_sets_equal_to_original"] for r in m["rows"].values()))}
    return out


def show(section: dict[str, Any]) -> None:
    for m in section["models"]:
        headers = ["variant", "wall s", "min", "cpu s", "ratio (wall)", "ratio (cpu)",
                   *(f"{s} s" for s in SUB_ATTACKS), "robust", "same set", "same adv"]
        rows = []
        for variant, r in m["rows"].items():
            ratio = r.get("ratio", {})
            rows.append([variant, r["wall_seconds"]["median"], r["wall_seconds"]["min"], r["cpu_seconds"]["median"],
                         ratio.get("wall_median"), ratio.get("cpu_median"),
                         *(r["per_sub_attack_seconds"][s]["median"] for s in SUB_ATTACKS),
                         f"{100 * r['robust_accuracy']:.1f}%", r["robust_sets_equal_to_original"],
                         r["adversarials_equal_to_original"]])
        common.table(headers, rows, title=f"{m['model']} ({section['device']}): "
                                          f"clean {100 * m['clean_accuracy']:.1f}%, "
                                          f"linf eps {m['eps']}, {m['n']} images, standard version")


def run_section(models: dict[str, Any], host: Any, device: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    from robustkit.data import stack

    data = host.datasets.create("digits", {}, root=None)
    x, y = stack(data.test)
    x, y = x[:cfg["n"]].to(device), y[:cfg["n"]].to(device)
    measured = [measure_model(name, model, x, y, cfg["repeats"]) for name, model in models.items()]
    return {"device": str(device), "models": measured}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 images, 2 repeats, 5 training epochs")
    parser.add_argument("--n", type=common.positive_int, default=None, help="test images (default 64)")
    parser.add_argument("--repeats", type=common.positive_int, default=None, help="interleaved repeats (default 3)")
    parser.add_argument("--threads", type=common.positive_int, default=1,
                        help="torch CPU threads (default 1: less noise from other jobs on a shared machine)")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "perf_autoattack_vs_original.json")
    common.add_gpu_options(parser)
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else DEFAULT)
    cfg.update({k: v for k, v in (("n", args.n), ("repeats", args.repeats)) if v is not None})

    common.setup(PLUGINS, args.threads)
    from robustkit.host import make_host

    from robustkit_autoattack import original

    if not original.installed():
        print("error: this benchmark compares with the authors' package, which is not installed: "
              "pip install pyautoattack", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    started = time.perf_counter()
    gpu = common.gpu_or_exit(args.gpu_only)
    host = make_host()
    models = train_models(host, cfg["epochs"])
    result: dict[str, Any] = {
        "benchmark": "autoattack_vs_original",
        "settings": {**cfg, "eps": EPS, "norm": "linf", "version": "standard", "seed": 0, "threads": args.threads,
                     "data": "embedded digits (8x8), first n test images, one batch",
                     "models": "madry-cnn trained on the digits: natural, and pgd-at eps 0.1 steps 7 (seed 0)",
                     "variants": list(VARIANTS), "baseline": BASELINE,
                     "pyautoattack": common.version("pyautoattack")},
        "goals": {"cpu": f"robustkit <= {CPU_GOAL}x the original (median CPU time), identical robust sets",
                  "gpu": f"robustkit <= {GPU_GOAL}x the original, identical robust sets"},
    }
    if not args.gpu_only:
        cpu = run_section(models, host, "cpu", cfg)
        show(cpu)
        result["cpu"] = {**cpu, "goal_met": verdict(cpu["models"], CPU_GOAL)}
    if gpu is not None:
        section = run_section(models, host, gpu, cfg)
        show(section)
        result["gpu"] = {**section, "facts": common.gpu_facts(gpu), "goal_met": verdict(section["models"], GPU_GOAL)}
    else:
        result["gpu"] = {"available": False, "rows": "not done (no GPU lent)"}
    result.update(common.stamp(load_before, started))
    common.write(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
