"""Shared parts of the performance benchmarks in ``benchmarks/perf/`` (not a benchmark itself).

- :func:`setup` pins the plugins a script loads and the torch thread count, and switches progress bars off;
- :func:`measure` runs variants interleaved (one warm-up each, then round-robin with a rotating
  start, so load drifts on a shared machine hit every variant alike) and keeps every timing;
- :func:`summary` reduces timings to median and minimum, :func:`machine` records the machine,
  :func:`table` prints a fixed-width table and :func:`write` writes the JSON result;
- :func:`positive_int` and :func:`thread_counts` check count options, so a bad one ends in argparse's one line;
- :func:`add_gpu_options`, :func:`gpu_or_exit`, :data:`PRECISION_VARIANTS` and :func:`gpu_facts` are the
  GPU section every script shares (``--gpu-only``, the precision and memory-format sweep, the GPU's facts).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_NOTE = ("measured on a shared machine (other jobs ran on the same cores): single timings are noisy, so "
               "every figure is the median of interleaved repeats; the minimum (the least disturbed run) is kept too")


def setup(plugins: str, threads: int) -> None:
    """Load only ``plugins`` (comma-separated entry-point names), use ``threads`` torch threads, no progress bars.

    Must run before the first :func:`robustkit.host.make_host`.
    """
    os.environ["ROBUSTKIT_LOAD_PLUGINS"] = plugins
    os.environ["ROBUSTKIT_PROGRESS"] = "0"
    import torch

    torch.set_num_threads(threads)


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 1 (a count of images, repeats, threads...), else a one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def thread_counts(text: str) -> list[int]:
    """An argparse ``type``: comma-separated torch thread counts, e.g. ``1,2`` (one run each)."""
    try:
        return [positive_int(t) for t in str(text).split(",")]
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of thread counts, e.g. 1,2 "
                                         f"({err})") from None


#: The (precision, channels_last) pairs a GPU section sweeps; the first is the reference the others are compared to.
PRECISION_VARIANTS: tuple[tuple[str, bool], ...] = (
    ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True), ("fp16", False), ("fp16", True))


def variant_label(precision: str, channels_last: bool) -> str:
    return f"{precision} {'channels-last' if channels_last else 'NCHW'}"


def add_gpu_options(parser: Any) -> None:
    """``--gpu-only``: skip the CPU measurements (a GPU machine's time is for its GPU rows)."""
    parser.add_argument("--gpu-only", action="store_true",
                        help="only the GPU section (needs a CUDA GPU); the CPU figures stay those of a CPU run")


def gpu_or_exit(gpu_only: bool) -> Any:
    """The CUDA device, or ``None`` without one; with ``gpu_only`` and no GPU, exit 2 with a one-line reason."""
    device = cuda_device()
    if device is None and gpu_only:
        print("error: --gpu-only needs a CUDA GPU and torch sees none; run without --gpu-only for the CPU figures",
              file=sys.stderr)
        raise SystemExit(2)
    return device


def gpu_facts(device: Any) -> dict[str, Any]:
    """The GPU and the math settings that decide its speed (TF32 changes fp32 convolutions and matmuls)."""
    import torch

    props = torch.cuda.get_device_properties(device)
    return {"available": True, "device": props.name, "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def cuda_device() -> Any:
    """``torch.device('cuda')`` when a CUDA GPU is visible, else ``None``."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else None


def sync(device: Any) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    import torch

    if device is not None and getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def wall(fn: Callable[[], Any], device: Any = None) -> Callable[[], float]:
    """``fn`` as a variant for :func:`measure`: returns its wall-clock seconds (GPU work included)."""

    def run() -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    return run


def measure(variants: Mapping[str, Callable[[], float]], repeats: int, warmup: bool = True,
            label: str = "") -> dict[str, list[float]]:
    """Seconds of every variant, ``repeats`` each, interleaved.

    Each variant returns the seconds to record (:func:`wall` makes one from any callable; a training
    variant returns the loop's own epoch time). One untimed warm-up call of each first (kernel
    selection, allocator growth, lazy imports), then ``repeats`` rounds calling every variant once;
    round ``r`` starts at variant ``r mod n`` so no variant always runs first or last.
    """
    names = list(variants)
    if warmup:
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(float(variants[name]()))
        if label:
            print(f"  {label}: round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    return times


def summary(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, minimum and every value (rounded to microseconds) of one variant's timings."""
    return {"median": round(statistics.median(seconds), 6), "min": round(min(seconds), 6),
            "runs": [round(s, 6) for s in seconds]}


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """Facts about the machine and the software, for the JSON result."""
    import torch

    facts: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torchattacks": version("torchattacks"), "robustkit": version("robustkit"),
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        # BENCH_SHARED=0 says the machine ran nothing else (a lent GPU machine); the CPU runs here were shared.
        "shared_machine": os.environ.get("BENCH_SHARED", "1") != "0",
        "shared_machine_note": SHARED_NOTE if os.environ.get("BENCH_SHARED", "1") != "0" else "a dedicated machine",
        # A copy of the tree made elsewhere (a GPU machine's) may carry no .git or a stale one: BENCH_GIT_COMMIT wins.
        "git_commit": os.environ.get("BENCH_GIT_COMMIT") or _git("rev-parse", "HEAD"),
        "git_dirty": (None if os.environ.get("BENCH_GIT_COMMIT")
                      else bool(_git("status", "--porcelain", "--untracked-files=no"))),
    }
    return facts


def stamp(load_before: tuple[float, float, float], started: float) -> dict[str, Any]:
    """A result's closing fields: the machine (with the load before and now), seconds since ``started``
    (a ``time.perf_counter()`` value) and a UTC timestamp."""
    return {"machine": machine(load_before), "seconds": round(time.perf_counter() - started, 1),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> None:
    """Print ``rows`` under ``headers`` in fixed-width columns (first column left-aligned)."""
    rows = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    if title:
        print(title)
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    print()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def write(result: dict[str, Any], out: Path) -> None:
    """Write ``result`` as indented JSON to ``out`` (its folder is created)."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    try:
        shown = out.resolve().relative_to(ROOT)
    except ValueError:
        shown = out
    print(f"wrote {shown} ({result.get('seconds')} s)")
