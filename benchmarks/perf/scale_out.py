"""Scale-out on Ray: benchmark cells per hour and evaluation images per second for 1, 2 and 4 workers, and the
Ray executor's overhead against the local ``--jobs`` executor on the same spec.

Run: ``.venv/bin/python benchmarks/perf/scale_out.py [--quick] [--workers 1,2]`` (on 2 CPU cores with
``--workers 1,2``: about 12 minutes, ``--quick`` about 6). Writes ``benchmarks/results/perf_scale_out.json``.
Needs ``robustkit[ray]``.

Setting: Ray embedded in this process with as many logical CPUs as the most workers measured (``--workers``,
default 1,2,4), started once and its workers started once (both timed and reported apart, not charged to
every run); W
workers are made by giving each cell or shard ``max(workers) / W`` CPUs, so exactly W run at once. Every cell
and shard runs one torch thread, as ``--jobs`` does, so the numbers are the same and only the time differs.
On a machine with fewer cores than workers the extra workers share cores: the speed-up stops at the core count
(the JSON records the machine's CPU count and load).

- Cells: a spec of 8 cells (``--quick``: 4): natural and FGSM-AT at several eps, two seeds; the Madry CNN on
  digits resized to 28x28, PGD-10 on 200 images, no audit, 3 epochs (``--quick``: 1): cells of 10 to 60 s
  here, where real data take minutes. Each
  variant trains every cell from scratch into a fresh folder: ``bench run --jobs W`` (local processes) and
  ``bench run --executor ray`` with W workers. Cells/hour = cells / wall time x 3600; the overhead is the Ray
  time over the ``--jobs`` time at the same W, minus 1 (it includes the preflight check of the node and the
  workers' start-up, which weigh less the longer the cells).
- Evaluation: one model (the Madry CNN on digits at 28x28, untrained; labels are its own predictions, so every
  image is attacked) under PGD-20, 2048 images (``--quick``: 512; the 360 test digits repeated) in batches of 32: one ``evaluate`` call in this process, then ``attack --eval-shards``'s
  :func:`robustkit.sharding.evaluate_sharded` with 2W shards on W workers (more shards than workers, as the
  docs advise). Images/s and the speed-up over the one-process run; the merged records are checked equal to it.

Targets (from issue 18): overhead under 5% for cells of a minute or more; evaluation speed-up at least
0.8 x workers. The CPU figures here come from cells of seconds on a shared 2-core machine, so they show the
fixed costs, not those targets; the JSON says which were met.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PLUGINS = ""  # the essential set: digits, LeNet, FGSM-AT, native PGD
DEFAULT = {"cells": 8, "epochs": 3, "images": 2048, "repeats": 1}
QUICK = {"cells": 4, "epochs": 1, "images": 512, "repeats": 1}
#: The Madry MNIST CNN on digits at 28x28: enough arithmetic per cell and per batch for the timings to measure
#: the work rather than Python's fixed costs (a cell of 1 epoch: about 7 s on one idle core).
DATASET = {"name": "digits", "params": {"resize": 28}}
MODEL = "madry-cnn"


def spec_text(cells: int, epochs: int) -> str:
    """Natural plus FGSM-AT swept over enough eps values for ``cells`` cells over two seeds."""
    sweep = [round(0.02 * (i + 1), 2) for i in range(max(1, cells // 2 - 1))]
    return f"""\
name = "scale-out"
seeds = [0, 1]
dataset = {{name = "digits", params = {{resize = 28}}}}
model = {{name = "{MODEL}"}}
training = {{epochs = {epochs}, batch_size = 64, lr = 1e-3, val_examples = 0}}
threat = {{norm = "linf", eps = 0.1}}
evaluation = {{n_examples = 200}}
protocol = {{targets = ["natural"]}}
audit = {{enabled = false}}

[[attacks]]
name = "pgd"
label = "pgd"
params = {{step_size = 0.01, steps = 10}}

[[defenses]]
name = "natural"

[[defenses]]
name = "fgsm-at"
sweep = {sweep}
"""


def cell_runs(host: Any, workers: list[int], cells: int, epochs: int, repeats: int, folder: Path) -> dict[str, Any]:
    from robustkit.bench.runner import run_benchmark
    from robustkit.bench.spec import load_spec
    from robustkit.executors.ray_executor import RayExecutor

    path = folder / "spec.toml"
    path.write_text(spec_text(cells, epochs), encoding="utf-8")
    spec = load_spec(str(path), host)
    count = len(spec.cells())
    most = max(workers)
    runs = iter(range(10**6))

    def variant(kind: str, w: int) -> Any:
        def run() -> float:
            out = folder / f"{kind}-{w}-{next(runs)}"
            executor = (RayExecutor(cpus_per_cell=most / w, gpus_per_cell=0) if kind == "ray"
                        else host.executors.create("local", {"jobs": w}))
            started = time.perf_counter()
            summary = run_benchmark(spec, out, host, threads=1, executor=executor, say=lambda line: None)
            seconds = time.perf_counter() - started
            assert not summary.failed and len(summary.finished) == count, summary.failed
            return seconds
        return run

    variants = {f"{kind} x{w}": variant(kind, w) for w in workers for kind in ("jobs", "ray")}
    times = common.measure(variants, repeats, warmup=False, label="cells")
    rows = []
    for w in workers:
        jobs, ray_ = (common.summary(times[f"{kind} x{w}"]) for kind in ("jobs", "ray"))
        rows.append({"workers": w, "jobs_seconds": jobs, "ray_seconds": ray_,
                     "jobs_cells_per_hour": round(count / jobs["median"] * 3600, 1),
                     "ray_cells_per_hour": round(count / ray_["median"] * 3600, 1),
                     "ray_overhead": round(ray_["median"] / jobs["median"] - 1, 4),
                     "ray_overhead_of_minima": round(ray_["min"] / jobs["min"] - 1, 4)})
    return {"cells": count, "epochs": epochs, "seconds_per_cell_one_worker": round(
        rows[0]["jobs_seconds"]["median"] / count, 2) if workers[0] == 1 else None, "rows": rows}


def evaluation_runs(host: Any, workers: list[int], images: int, repeats: int, folder: Path) -> dict[str, Any]:
    import torch

    from robustkit.data import stack, take
    from robustkit.evaluation import evaluate
    from robustkit.executors.ray_executor import RayExecutor
    from robustkit.models import build_model
    from robustkit.sharding import evaluate_sharded

    dataset = host.datasets.create(DATASET["name"], DATASET["params"], root=None)
    torch.manual_seed(0)
    model = build_model(host, MODEL, dataset.info).eval()
    x, _ = stack(take(dataset.test, len(dataset.test)))
    x = x.repeat(1 + images // len(x), 1, 1, 1)[:images]  # digits has 360 test images: repeat them
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # every image classified correctly, so every one is attacked
    attacks = {"pgd": host.attacks.create("pgd", eps=0.1, step_size=0.01, steps=20)}
    batch = 32
    reference = evaluate(model, (x, y), attacks, batch_size=batch, seed=0)
    most = max(workers)
    runs = iter(range(10**6))
    equal: dict[str, bool] = {}

    def one_process() -> float:
        started = time.perf_counter()
        evaluate(model, (x, y), attacks, batch_size=batch, seed=0)
        return time.perf_counter() - started

    def sharded(w: int) -> Any:
        def run() -> float:
            started = time.perf_counter()
            result, _ = evaluate_sharded(model, (x, y), attacks, shards=2 * w, out_dir=folder / f"eval-{next(runs)}",
                                         executor=RayExecutor(cpus_per_cell=most / w, gpus_per_cell=0),
                                         batch_size=batch, seed=0, threads=1)
            seconds = time.perf_counter() - started
            equal[f"ray x{w}"] = [r.to_dict() for r in result.records] == [r.to_dict() for r in reference.records]
            return seconds
        return run

    variants = {"one process": one_process, **{f"ray x{w}": sharded(w) for w in workers}}
    times = common.measure(variants, repeats, warmup=False, label="evaluation")
    base = common.summary(times["one process"])
    rows = [{"workers": 0, "variant": "one process (evaluate)", "seconds": base,
             "images_per_second": round(images / base["median"], 1), "speedup": 1.0}]
    for w in workers:
        s = common.summary(times[f"ray x{w}"])
        rows.append({"workers": w, "variant": f"ray, {2 * w} shards", "seconds": s,
                     "images_per_second": round(images / s["median"], 1),
                     "speedup": round(base["median"] / s["median"], 3), "records_equal": equal[f"ray x{w}"]})
    return {"images": images, "batch_size": batch, "attack": "pgd linf eps 0.1, 20 steps", "rows": rows}


def targets_note(cells: dict[str, Any], cores: int, load: float) -> str:
    """What to keep in mind reading the targets: the machine, and how long the cells measured were."""
    total = cells["rows"][0]["jobs_seconds"]["median"] * cells["rows"][0]["workers"]
    return (f"{cores} CPU core(s), load average {load:.1f} at the end (other jobs share the cores, and so do Ray's "
            f"own processes); cells of about {total / cells['cells']:.0f} s on one worker, where the overhead target "
            "is for cells of a minute or more; the --jobs runs start their worker processes in every run, Ray's were "
            "started once (reported apart); more workers than cores cannot speed anything up")


def warm_workers(ray: Any, count: int) -> None:
    """Start ``count`` Ray workers with robustkit imported (what every run's tasks reuse), so the first variant
    measured does not pay for them: a worker's start-up is a one-off cost of a session, reported apart."""
    from robustkit.executors.ray_executor import worker_environment

    task = ray.remote(num_cpus=1, runtime_env={"env_vars": worker_environment()})(_imported)
    ray.get([task.remote() for _ in range(count)])


def _imported() -> int:
    from robustkit.host import get_host

    return len(get_host().plugin_versions())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 6 minutes on 2 CPU cores)")
    parser.add_argument("--workers", type=common.thread_counts, default=[1, 2, 4],
                        help="worker counts, comma-separated (default 1,2,4)")
    parser.add_argument("--repeats", type=common.positive_int, default=None, help="interleaved repeats")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "perf_scale_out.json")
    args = parser.parse_args()
    sizes = dict(QUICK if args.quick else DEFAULT)
    if args.repeats:
        sizes["repeats"] = args.repeats
    try:
        import ray
    except ImportError:
        print("error: this benchmark needs Ray: pip install 'robustkit[ray]'", file=sys.stderr)
        raise SystemExit(2)
    common.setup(PLUGINS, threads=1)
    load_before, started = os.getloadavg(), time.perf_counter()
    from robustkit.host import make_host

    host = make_host()
    tick = time.perf_counter()
    ray.init(address="local", num_cpus=max(args.workers), num_gpus=0, include_dashboard=False,
             logging_level="WARNING")
    ray_start = time.perf_counter() - tick
    tick = time.perf_counter()
    warm_workers(ray, max(args.workers))
    warm_up = time.perf_counter() - tick
    try:
        with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
            cells = cell_runs(host, args.workers, sizes["cells"], sizes["epochs"], sizes["repeats"], Path(tmp))
            evaluation = evaluation_runs(host, args.workers, sizes["images"], sizes["repeats"], Path(tmp))
    finally:
        ray.shutdown()
    common.table(["workers", "jobs s", "ray s", "jobs cells/h", "ray cells/h", "ray overhead"],
                 [[r["workers"], r["jobs_seconds"]["median"], r["ray_seconds"]["median"], r["jobs_cells_per_hour"],
                   r["ray_cells_per_hour"], f"{100 * r['ray_overhead']:.1f}%"] for r in cells["rows"]],
                 title=f"cells: {cells['cells']} cells of {cells['epochs']} epoch(s)")
    common.table(["variant", "seconds", "images/s", "speed-up", "records equal"],
                 [[r["variant"], r["seconds"]["median"], r["images_per_second"], r["speedup"],
                   r.get("records_equal")] for r in evaluation["rows"]],
                 title=f"evaluation: {evaluation['images']} images, {evaluation['attack']}")
    targets = {
        "ray_overhead_under_5_percent": {str(r["workers"]): r["ray_overhead"] < 0.05 for r in cells["rows"]},
        "evaluation_speedup_at_least_0.8_x_workers": {str(r["workers"]): r["speedup"] >= 0.8 * r["workers"]
                                                      for r in evaluation["rows"][1:]},
        "note": targets_note(cells, os.cpu_count() or 1, os.getloadavg()[0]),
    }
    common.write({"benchmark": "scale_out", "settings": {**sizes, "workers": args.workers, "torch_threads": 1},
                  "ray": {"version": ray.__version__, "embedded_start_seconds": round(ray_start, 2),
                          "worker_warm_up_seconds": round(warm_up, 2), "logical_cpus": max(args.workers)},
                  "cells": cells, "evaluation": evaluation, "targets": targets,
                  **common.stamp(load_before, started)}, args.out)


if __name__ == "__main__":
    main()
