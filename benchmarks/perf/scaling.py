"""Scaling of ``robustkit.evaluation.evaluate`` with a PGD attack: time and peak memory against the number of
evaluated images and against the batch size.

Run: ``.venv/bin/python benchmarks/perf/scaling.py [--quick]`` (``--quick``: about 1.5 minutes on 2 busy CPU
cores; the default: about 8 minutes). Writes ``benchmarks/results/perf_scaling.json``.

Setting: the Madry CNN (untrained) on random 32x32x3 images in [0, 1] with 10 classes, where the model's
arithmetic dominates Python overhead; labels are the model's own predictions, so every image is classified
correctly and attacked (``evaluate`` attacks only the clean-correct ones; random labels would leave about 90%
unattacked and make the cost depend on chance). Attack: the ``torchattacks:PGD`` adapter, linf eps 8/255,
step 2/255, 10 steps (``--quick``: 5), random start.

- Size sweep: n = 64, 128, 256, 512, 1024 images at batch 64 (``--quick``: 32..256 at batch 32).
- Batch sweep: batch 16, 32, 64, 128, 256 on 256 images (``--quick``: 8..64 on 64 images).

Time: ``evaluate``'s wall time, every point run ``--repeats`` times interleaved (rotating start) after one
untimed single-batch warm-up per batch size; medians. Linearity in n: time per image at the largest n over
that at the smallest (1 = perfectly linear), and a least-squares line t = a + b n with its R^2 and the
intercept a (fixed cost per call). Memory should not grow with n (one batch is live at a time; only the
per-image records accumulate) and should grow linearly with the batch size (activations of one batch).
A point in both sweeps is timed and measured once.

Peak memory, measured in a fresh subprocess per point (one run each), because no in-process figure is
trustworthy on the CPU: ``tracemalloc`` does not see torch's allocations, and a process's peak RSS only
grows. On the CPU the child starts with glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``),
so every tensor buffer larger than that is its own mapping and is returned to the system when freed; it
builds the model and the data, runs a 2-image warm-up, calls ``malloc_trim(0)``, reads VmRSS, resets the peak
(``echo 5 > /proc/self/clear_refs``), runs ``evaluate`` and reads VmHWM. The figure is VmHWM minus that
VmRSS: the peak of everything ``evaluate`` held at once (tensors, autograd graphs, oneDNN scratch, Python
records), not the model or the data. On a GPU the child reports ``torch.cuda.max_memory_allocated()`` minus
``torch.cuda.memory_allocated()`` before the call (after ``reset_peak_memory_stats``): tensor memory exactly.

With a CUDA GPU both sweeps also run on it at sizes that fill it (n = 1024..16384 at batch 512, batch
64..2048 on 4096 images; ``--quick``: n 256..2048 at batch 256, batch 32..512 on 1024), with throughput in
images/second and CUDA peak memory, and ``evaluate(..., precision=..., channels_last=...)`` runs the largest n
at every precision and memory format (fp32, bf16, fp16, each NCHW and channels-last); without a GPU the GPU
section says "no GPU". ``--gpu-only`` skips the CPU sweeps.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PLUGINS = "datasets,paper-models,torchattacks"
CLASSES = 10
EPS, ALPHA = 8 / 255, 2 / 255
DEFAULT = {"sizes": (64, 128, 256, 512, 1024), "size_batch": 64, "batches": (16, 32, 64, 128, 256),
           "batch_n": 256, "steps": 10, "repeats": 3}
QUICK = {"sizes": (32, 64, 128, 256), "size_batch": 32, "batches": (8, 16, 32, 64), "batch_n": 64,
         "steps": 5, "repeats": 3}
#: GPU sizes: at the CPU's sizes a GPU call is mostly fixed cost; from n = 1024 at batch 512 the fixed cost
#: was 1.9% of the smallest point on an H100.
GPU = {"sizes": (1024, 2048, 4096, 8192, 16384), "size_batch": 512, "batches": (64, 128, 256, 512, 1024, 2048),
       "batch_n": 4096}
GPU_QUICK = {"sizes": (256, 512, 1024, 2048), "size_batch": 256, "batches": (32, 64, 128, 256, 512), "batch_n": 1024}
MMAP_THRESHOLD = 65536


def build(host: Any, n: int, device: Any) -> tuple[Any, Any, Any]:
    """The model (on ``device``, eval mode) and ``n`` random images labelled with its own predictions."""
    import torch

    from robustkit.data import DatasetInfo
    from robustkit.models import build_model

    info = DatasetInfo("random-32x32x3", CLASSES, 3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = build_model(host, "madry-cnn", info).to(device).eval()
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = torch.cat([model(chunk.to(device)).argmax(1).cpu() for chunk in x.split(256)])
    return model, x, y


def attack(host: Any, steps: int) -> Any:
    return host.attacks.create("torchattacks:PGD", {"eps": EPS, "alpha": ALPHA, "steps": steps, "random_start": True})


# --- the memory child ---------------------------------------------------------------------------------


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_point(n: int, batch: int, steps: int, device_name: str) -> dict[str, Any]:
    """Run in a fresh process: peak memory of one ``evaluate`` call (see the module notes)."""
    import torch

    from robustkit.evaluation import evaluate
    from robustkit.host import make_host

    device = torch.device(device_name)
    host = make_host()
    model, x, y = build(host, n, device)
    pgd = attack(host, steps)
    evaluate(model, (x[:2], y[:2]), {"pgd": pgd}, batch_size=2, device=device)  # imports, first kernels
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        trimmed = True
    except (OSError, AttributeError):
        trimmed = False
    out: dict[str, Any] = {"n": n, "batch": batch, "device": device_name, "malloc_trim": trimmed}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before_cuda = torch.cuda.memory_allocated(device)
    rss_before = _status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        out["peak_reset"] = True
    except OSError:
        out["peak_reset"] = False  # VmHWM then includes everything before: an upper bound
    start = time.perf_counter()
    evaluate(model, (x, y), {"pgd": pgd}, batch_size=batch, device=device)
    common.sync(device)
    out["cold_seconds"] = round(time.perf_counter() - start, 4)
    out["rss_peak_delta_bytes"] = max(0, _status("VmHWM") - rss_before)
    if device.type == "cuda":
        out["cuda_peak_delta_bytes"] = torch.cuda.max_memory_allocated(device) - before_cuda
    return out


def measure_memory(n: int, batch: int, steps: int, device: str, threads: int) -> dict[str, Any]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    cmd = [sys.executable, __file__, "--memory-point", f"{n},{batch},{steps},{device}", "--threads", str(threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"memory point n={n} batch={batch} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the sweeps -------------------------------------------------------------------------------------


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares y = a + b x: a, b and R^2."""
    import numpy as np

    b, a = np.polyfit(xs, ys, 1)
    pred = a + b * np.asarray(xs)
    ss_res = float(((np.asarray(ys) - pred) ** 2).sum())
    ss_tot = float(((np.asarray(ys) - np.mean(ys)) ** 2).sum())
    return {"intercept": round(float(a), 6), "slope": round(float(b), 9),
            "r2": round(1 - ss_res / ss_tot, 5) if ss_tot > 0 else 1.0}


def run(host: Any, device: Any, cfg: dict[str, Any], threads: int) -> dict[str, Any]:
    from robustkit.evaluation import evaluate

    biggest = max(max(cfg["sizes"]), cfg["batch_n"])
    model, x, y = build(host, biggest, device)
    pgd = attack(host, cfg["steps"])
    points = [("size", n, cfg["size_batch"]) for n in cfg["sizes"]]
    points += [("batch", cfg["batch_n"], b) for b in cfg["batches"]]
    for b in sorted({b for _, _, b in points}):  # one single-batch warm-up per batch size, untimed
        evaluate(model, (x[:b], y[:b]), {"pgd": pgd}, batch_size=b, device=device)

    def point(n: int, b: int) -> Any:
        return common.wall(lambda: evaluate(model, (x[:n], y[:n]), {"pgd": pgd}, batch_size=b, device=device), device)

    keys = {f"n={n} batch={b}": (n, b) for _, n, b in points}  # a point in both sweeps is timed once
    started = time.perf_counter()
    times = common.measure({k: point(n, b) for k, (n, b) in keys.items()}, cfg["repeats"], warmup=False,
                           label=f"scaling on {device}")
    memory = {k: measure_memory(n, b, cfg["steps"], str(device), threads) for k, (n, b) in keys.items()}
    rows = []
    for kind, n, b in points:
        k = f"n={n} batch={b}"
        med = statistics.median(times[k])
        mem = memory[k]
        rows.append({"sweep": kind, "n": n, "batch": b, "seconds": common.summary(times[k]),
                     "seconds_per_image": round(med / n, 6), "images_per_second": round(n / med, 2),
                     "rss_peak_delta_mib": round(mem["rss_peak_delta_bytes"] / 2**20, 2),
                     "cuda_peak_delta_mib": (round(mem["cuda_peak_delta_bytes"] / 2**20, 2)
                                             if "cuda_peak_delta_bytes" in mem else None),
                     "memory_child": mem})
    sizes = [r for r in rows if r["sweep"] == "size"]
    batches = [r for r in rows if r["sweep"] == "batch"]
    mem_key = "cuda_peak_delta_mib" if device.type == "cuda" else "rss_peak_delta_mib"
    time_fit = linear_fit([r["n"] for r in sizes], [r["seconds"]["median"] for r in sizes])
    first, last = sizes[0], sizes[-1]
    linearity = {
        "time_per_image_largest_over_smallest": round(last["seconds_per_image"] / first["seconds_per_image"], 3),
        "time_fit_seconds_vs_n": time_fit,
        "fixed_cost_share_at_smallest_n": round(time_fit["intercept"] / first["seconds"]["median"], 3),
        "memory_largest_over_smallest_n": round(last[mem_key] / first[mem_key], 3) if first[mem_key] else None,
        "memory_fit_mib_vs_n": linear_fit([r["n"] for r in sizes], [r[mem_key] for r in sizes]),
        "memory_fit_mib_vs_batch": linear_fit([r["batch"] for r in batches], [r[mem_key] for r in batches]),
        "time_per_image_smallest_batch_over_largest": round(
            batches[0]["seconds_per_image"] / batches[-1]["seconds_per_image"], 3),
    }
    return {"device": str(device), "model": "madry-cnn (untrained)",
            "data": "random 32x32x3 images in [0, 1], labels = the model's predictions (all attacked)",
            "attack": {"name": "torchattacks:PGD", "eps": EPS, "alpha": ALPHA, "steps": cfg["steps"],
                       "random_start": True},
            "repeats": cfg["repeats"], "memory_measure": mem_key, "rows": rows, "linearity": linearity,
            "seconds": round(time.perf_counter() - started, 1)}


def precision_sweep(host: Any, device: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """``evaluate`` on the largest n at every precision and memory format (a fresh model copy each), interleaved."""
    import copy

    from robustkit.evaluation import evaluate

    n, batch = max(cfg["sizes"]), cfg["size_batch"]
    model, x, y = build(host, n, device)
    pgd = attack(host, cfg["steps"])
    variants, robust = {}, {}
    for precision, channels_last in common.PRECISION_VARIANTS:
        net = copy.deepcopy(model)  # channels-last converts the model in place

        def call(net: Any = net, precision: str = precision, channels_last: bool = channels_last) -> Any:
            return evaluate(net, (x, y), {"pgd": pgd}, batch_size=batch, device=device, precision=precision,
                            channels_last=channels_last)

        label = common.variant_label(precision, channels_last)
        result = call()  # the warm-up, and the accuracies to report
        robust[label] = {"clean_accuracy": result.clean_accuracy,
                         "robust_accuracy": result.attacks["pgd"].robust_accuracy}
        variants[label] = common.wall(call, device)
    times = common.measure(variants, cfg["repeats"], warmup=False, label=f"precision sweep on {device}")
    reference = statistics.median(next(iter(times.values())))
    rows = [{"variant": label, "seconds": common.summary(t), "images_per_second": round(n / statistics.median(t), 2),
             "speedup_vs_fp32_nchw": round(reference / statistics.median(t), 3), **robust[label]}
            for label, t in times.items()]
    return {"n": n, "batch": batch, "reference": common.variant_label(*common.PRECISION_VARIANTS[0]), "rows": rows}


def show_sweep(sweep: dict[str, Any]) -> None:
    headers = ["variant", "median s", "img/s", "x fp32 NCHW", "clean acc", "PGD acc"]
    rows = [[r["variant"], r["seconds"]["median"], r["images_per_second"], r["speedup_vs_fp32_nchw"],
             r["clean_accuracy"], r["robust_accuracy"]] for r in sweep["rows"]]
    common.table(headers, rows, title=f"evaluate at each precision and memory format: n {sweep['n']}, batch "
                                      f"{sweep['batch']} (labels are the fp32 model's predictions)")


def show(result: dict[str, Any]) -> None:
    mem_key = result["memory_measure"]
    headers = ["sweep", "n", "batch", "median s", "min s", "ms/image", "img/s", "peak MiB"]
    rows = [[r["sweep"], r["n"], r["batch"], r["seconds"]["median"], r["seconds"]["min"],
             1000 * r["seconds_per_image"], r["images_per_second"], r[mem_key]] for r in result["rows"]]
    common.table(headers, rows, title=f"evaluate + PGD-{result['attack']['steps']} scaling: {result['model']} on "
                                      f"{result['data']}, {result['device']}, {result['repeats']} interleaved "
                                      f"repeats; peak memory: {mem_key}")
    lin = result["linearity"]
    fit = lin["time_fit_seconds_vs_n"]
    print(f"time vs n: per-image time at largest / smallest n = {lin['time_per_image_largest_over_smallest']:.3f}; "
          f"t = {fit['intercept']:.4f} s + {1000 * fit['slope']:.3f} ms x n, R^2 = {fit['r2']:.4f} "
          f"(fixed cost = {100 * lin['fixed_cost_share_at_smallest_n']:.1f}% of the smallest point)")
    m = lin["memory_fit_mib_vs_n"]
    print(f"memory vs n: {m['intercept']:.1f} MiB + {1024 * m['slope']:.2f} KiB x n (R^2 {m['r2']:.3f}); peak at the "
          f"largest / smallest n = {lin['memory_largest_over_smallest_n']}")
    m = lin["memory_fit_mib_vs_batch"]
    print(f"memory vs batch: {m['intercept']:.1f} MiB + {m['slope']:.3f} MiB x batch (R^2 {m['r2']:.3f}); "
          f"per-image time at the smallest / largest batch = {lin['time_per_image_smallest_batch_over_largest']:.3f}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about 1.5 minutes")
    parser.add_argument("--repeats", type=common.positive_int, default=None, help="interleaved repeats (default 3)")
    parser.add_argument("--threads", type=common.positive_int, default=1,
                        help="torch CPU threads (default 1: less noise from other jobs on a shared machine)")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "perf_scaling.json")
    parser.add_argument("--memory-point", help=argparse.SUPPRESS)  # internal: N,BATCH,STEPS,DEVICE in a fresh process
    common.add_gpu_options(parser)
    args = parser.parse_args(argv)

    common.setup(PLUGINS, args.threads)
    if args.memory_point:
        n, batch, steps, device = args.memory_point.split(",")
        print(json.dumps(memory_point(int(n), int(batch), int(steps), device)))
        return 0
    import torch

    from robustkit.host import make_host

    load_before = os.getloadavg()
    started = time.perf_counter()
    host = make_host()
    cfg = dict(QUICK if args.quick else DEFAULT)
    if args.repeats:
        cfg["repeats"] = args.repeats
    gpu_device = common.gpu_or_exit(args.gpu_only)
    cpu: dict[str, Any] | str = "not run (--gpu-only)"
    if not args.gpu_only:
        cpu = run(host, torch.device("cpu"), cfg, args.threads)
        show(cpu)
    if gpu_device is None:
        gpu: dict[str, Any] = {"available": False, "rows": "no GPU"}
        print("GPU: no GPU (no CUDA device visible); no GPU throughput or CUDA memory rows\n")
    else:
        gpu_cfg = {**cfg, **(GPU_QUICK if args.quick else GPU)}
        gpu_run = run(host, gpu_device, gpu_cfg, args.threads)
        show(gpu_run)
        sweep = precision_sweep(host, gpu_device, gpu_cfg)
        show_sweep(sweep)
        gpu = {**common.gpu_facts(gpu_device), **gpu_run, "settings": {k: list(v) if isinstance(v, tuple) else v
                                                                        for k, v in gpu_cfg.items()},
               "precision_sweep": sweep}
    result = {
        "benchmark": "perf_scaling",
        "mode": "quick" if args.quick else "default",
        "method": {"time": "evaluate() wall time, interleaved repeats (rotating start) after a single-batch warm-up "
                           "per batch size; medians",
                   "memory_cpu": f"fresh subprocess per point, MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}, 2-image "
                                 "warm-up, malloc_trim(0), VmRSS, clear_refs 5 (resets VmHWM), evaluate, VmHWM - VmRSS",
                   "memory_cuda": "same child: max_memory_allocated - memory_allocated before, after "
                                  "reset_peak_memory_stats"},
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "cpu": cpu,
        "gpu": gpu,
        **common.stamp(load_before, started),
    }
    common.write(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
