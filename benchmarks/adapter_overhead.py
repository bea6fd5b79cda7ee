"""Adapter overhead: robustkit's torchattacks and ART adapters against calling the libraries directly.

Run: ``.venv/bin/python benchmarks/adapter_overhead.py`` (about a minute on a laptop CPU).

What is timed, per attack, on one batch of the embedded digits (8x8) and a freshly built LeNet:

- ``direct``: the library object built once, outside the timing, then only the attack call
  (``torchattacks.PGD(model, ...)(x, y)``; ART ``attack.generate(x, y_onehot)`` on a
  ``PyTorchClassifier`` built once). This is the cheapest way to use the library, so the ratio
  is the adapter's whole cost.
- ``direct+build``: the same, building the library objects inside the timing (what the adapter did
  on every call before it cached them).
- ``direct (tensors)``, ART only: the direct call as a PyTorch user makes it, from the same tensors the
  adapter takes: ``torch.from_numpy(attack.generate(x.numpy(), one_hot(y)))``. ART works on NumPy arrays, so
  ``direct`` hands it arrays converted once, outside the timing, which no tensor pipeline gets for free.
  The target is judged against this variant (for torchattacks, ``direct`` already takes tensors); the
  ratio against ``direct`` is reported beside it.
  Every direct variant seeds the RNGs first, as the adapter does, so the outputs can be compared.
- ``robustkit``: ``attack(model, x, y)`` through the registry-built adapter, one adapter for all
  calls as an evaluation uses it: input checks, eval mode, the model's facts (class count, device:
  remembered while the model is unchanged), the library object (torchattacks) or ART's
  ``PyTorchClassifier`` built on the first call and reused while the model is unchanged, seeding,
  device and dtype handling, the output check.

Each variant runs 5 to 201 times (as many as fit in about 5 s: the millisecond single-step attacks get
many runs, since on a busy machine a median of 31 still moves by several percent between runs),
interleaved (direct, direct+build, robustkit, direct, ...) so load drifts hit all three alike. The ratio
is taken of the medians; the ratio of the minima is printed too, since on a busy machine the fastest run
is the least disturbed. The adapter's output is also checked to equal the direct call's (same seed).
Results go to ``benchmarks/results/adapter_overhead.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Only the plugins this benchmark uses: the others' import time stays out.
os.environ["ROBUSTKIT_LOAD_PLUGINS"] = "datasets,paper-models,torchattacks,art"
os.environ.setdefault("ROBUSTKIT_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from robustkit.data import stack, take  # noqa: E402
from robustkit.devices import seed_everything  # noqa: E402
from robustkit.host import make_host  # noqa: E402
from robustkit.models import build_model  # noqa: E402

MIN_REPEATS, MAX_REPEATS, BUDGET_S = 5, 201, 5.0
BATCH = 128
TARGET = 1.05  # adapter within 5% of the direct call
THREADS = 1  # one thread: less noise from other processes than two threads fighting for cores
OUT = ROOT / "benchmarks" / "results" / "adapter_overhead.json"


def measure(variants: dict[str, Callable[[], Any]]) -> tuple[dict[str, float], dict[str, float], int]:
    """Median and minimum seconds of each variant, and the number of runs.

    One untimed warm-up of each, then runs interleaved; as many as fit in ``BUDGET_S`` seconds per
    variant, at least ``MIN_REPEATS`` and at most ``MAX_REPEATS``.
    """
    warm = []
    for fn in variants.values():
        start = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - start)
    repeats = max(MIN_REPEATS, min(MAX_REPEATS, int(BUDGET_S / max(warm))))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return ({name: statistics.median(ts) for name, ts in times.items()},
            {name: min(ts) for name, ts in times.items()}, repeats)


def torchattacks_cases(host: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    import torchattacks

    cases = [
        ("PGD", {"eps": 0.1, "alpha": 0.01, "steps": 20, "random_start": True}),
        ("FGSM", {"eps": 0.1}),
    ]
    rows = []
    for name, params in cases:
        adapter = host.attacks.create(f"torchattacks:{name}", params)
        direct_attack = getattr(torchattacks, name)(model, **params)

        def direct(attack: Any = direct_attack) -> torch.Tensor:
            seed_everything(0)
            return attack(x, y)

        def direct_build(name: str = name, params: dict = params) -> torch.Tensor:
            attack = getattr(torchattacks, name)(model, **params)
            seed_everything(0)
            return attack(x, y)

        def robustkit(adapter: Any = adapter) -> torch.Tensor:
            return adapter(model, x, y).adversarial

        same = torch.equal(direct(), robustkit())
        rows.append(row(f"torchattacks:{name}", params, *measure(
            {"direct": direct, "direct+build": direct_build, "robustkit": robustkit}), same))
    return rows


def art_cases(host: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    from robustkit_art.adapter import one_hot

    classes = int(model(x[:1]).shape[1])
    x_np, y_np = x.numpy().astype(np.float32), one_hot(y, classes)
    cases = [
        ("ProjectedGradientDescent", ProjectedGradientDescent,
         {"eps": 0.1, "eps_step": 0.01, "max_iter": 20, "num_random_init": 1, "batch_size": BATCH, "verbose": False}),
        ("FastGradientMethod", FastGradientMethod, {"eps": 0.1, "batch_size": BATCH}),
    ]

    def classifier() -> Any:
        # What a user writes: the model as ART's PyTorchClassifier on images in [0, 1].
        return PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                 nb_classes=classes, clip_values=(0.0, 1.0), device_type="cpu")

    rows = []
    for name, cls, params in cases:
        adapter = host.attacks.create(f"art:{name}", params)
        direct_attack = cls(classifier(), **params)

        def direct(attack: Any = direct_attack) -> np.ndarray:
            seed_everything(0)
            return attack.generate(x_np, y_np)

        def direct_build(cls: type = cls, params: dict = params) -> np.ndarray:
            attack = cls(classifier(), **params)
            seed_everything(0)
            return attack.generate(x_np, y_np)

        def direct_tensors(attack: Any = direct_attack) -> torch.Tensor:
            seed_everything(0)
            return torch.from_numpy(attack.generate(x.numpy(), one_hot(y, classes)))

        def robustkit(adapter: Any = adapter) -> torch.Tensor:
            return adapter(model, x, y).adversarial

        same = np.array_equal(direct(), robustkit().numpy())
        rows.append(row(f"art:{name}", params, *measure(
            {"direct": direct, "direct+build": direct_build, "direct (tensors)": direct_tensors,
             "robustkit": robustkit}), same))
    return rows


def row(name: str, params: dict[str, Any], times: dict[str, float], fastest: dict[str, float], repeats: int,
        same: bool) -> dict[str, Any]:
    judged = "direct (tensors)" if "direct (tensors)" in times else "direct"  # the call a tensor user makes
    ratio = times["robustkit"] / times[judged]
    return {"attack": name, "params": params, "repeats": repeats,
            "median_seconds": {k: round(v, 6) for k, v in times.items()},
            "min_seconds": {k: round(v, 6) for k, v in fastest.items()},
            "judged_against": judged,
            "ratio_vs_judged": round(ratio, 4),
            "ratio_vs_judged_min": round(fastest["robustkit"] / fastest[judged], 4),
            "ratio_vs_direct": round(times["robustkit"] / times["direct"], 4),
            "ratio_vs_direct_min": round(fastest["robustkit"] / fastest["direct"], 4),
            "ratio_vs_direct_build": round(times["robustkit"] / times["direct+build"], 4),
            "overhead_ms": round(1000 * (times["robustkit"] - times[judged]), 3),
            "within_target": ratio <= TARGET, "same_output": bool(same)}


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    started = time.perf_counter()
    host = make_host()
    dataset = host.datasets.create("digits", {})
    x, y = stack(take(dataset.test, BATCH))
    seed_everything(0)
    model = build_model(host, "lenet", dataset.info).eval()

    rows = torchattacks_cases(host, model, x, y)
    notes = []
    art_file = ROOT / "robustkit" / "plugins" / "art_adapter.py"
    if not art_file.exists() or "art:FastGradientMethod" not in host.attacks:
        notes.append("ART adapter not available (plugins/robustkit-art missing or failed to load); "
                     "ART rows skipped")
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            rows += art_cases(host, model, x, y)
    load_after = os.getloadavg()
    notes.append(
        f"measured on a shared machine (load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, "
        f"{os.cpu_count()} CPUs) while other jobs ran: timings are noisy, ratios more so for the fast "
        "single-step attacks, where the adapter's fixed per-call cost weighs most")

    print(f"adapter overhead: {BATCH} digits 8x8, LeNet (untrained), CPU, {THREADS} thread(s), "
          "medians of interleaved runs")
    header = f"{'attack':<30} {'runs':>4} {'direct ms':>10} {'+build ms':>10} {'tensors ms':>10} " \
             f"{'robustkit ms':>13} {'ratio':>6} {'min ratio':>9} {'vs direct':>9} {'vs +build':>9} {'<=5%':>5} " \
             f"{'same':>5}"
    print(header)
    print("-" * len(header))
    for r in rows:
        t = r["median_seconds"]
        tensors = f"{1000 * t['direct (tensors)']:>10.2f}" if "direct (tensors)" in t else f"{'-':>10}"
        print(f"{r['attack']:<30} {r['repeats']:>4} {1000 * t['direct']:>10.2f} {1000 * t['direct+build']:>10.2f} "
              f"{tensors} {1000 * t['robustkit']:>13.2f} {r['ratio_vs_judged']:>6.3f} {r['ratio_vs_judged_min']:>9.3f} "
              f"{r['ratio_vs_direct']:>9.3f} {r['ratio_vs_direct_build']:>9.3f} "
              f"{'yes' if r['within_target'] else 'NO':>5} {'yes' if r['same_output'] else 'NO':>5}")
    print("ratio: robustkit / the direct call from tensors (ART: tensors ms; torchattacks: direct ms); "
          "vs direct: / ART called on arrays converted beforehand")
    for note in notes:
        print(f"note: {note}")

    result = {
        "benchmark": "adapter_overhead",
        "target_ratio": TARGET,
        "setup": {"dataset": "digits (test split, first images)", "batch": BATCH, "model": "lenet (untrained)",
                  "device": "cpu", "torch_threads": THREADS,
                  "repeats": f"{MIN_REPEATS}..{MAX_REPEATS} per variant (about {BUDGET_S:g} s each)",
                  "statistic": "median (and minimum) of interleaved runs after one warm-up; ratio_vs_judged = "
                               "robustkit median / median of the direct call from tensors (judged_against: "
                               "'direct (tensors)' for ART, 'direct' for torchattacks); ratio_vs_direct = robustkit "
                               "median / direct median (ART on arrays converted beforehand)"},
        "rows": rows,
        "notes": notes,
        "environment": {"python": platform.python_version(), "platform": platform.platform(),
                        "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_after,
                        "torch": torch.__version__, "torchattacks": version("torchattacks"),
                        "adversarial-robustness-toolbox": version("adversarial-robustness-toolbox"),
                        "robustkit": version("robustkit")},
        "seconds": round(time.perf_counter() - started, 1),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
