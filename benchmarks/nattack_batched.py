"""Batched NATTACK vs the reference's image-at-a-time loop, at the same success rate.

Measures, in one run on the embedded digits and two small undefended models:

- ``batched``: ``robustkit.plugins.nattack.NAttack`` (defaults) on all images at once: one forward
  pass over every active image's population per iteration, early stop per image, and one draw of
  population noise per iteration shared by all images (each image's search is unchanged).
- ``batched (noise per image)``: the same with ``shared_noise=False`` (every image draws its own
  population noise, as N separate runs would), to show what sharing the draws buys.
- ``per-image (reference-style)``: the loop of RLFAT's ``cifar_10/nattack.py`` written out below: one
  image at a time, its population batched into one forward pass, noise and arithmetic in NumPy
  float64 (``np.random.randn``, ``np.tanh``, arctanh recomputed every iteration), the model in torch.
  Two deliberate departures keep it the same algorithm as ``batched``: the per-sample other-class
  maximum (the reference's ``.max(1)[0]`` takes the first member's) and the saturation margin delta
  (the same default, min(eps, 0.5)).
- ``per-image (robustkit, batch of 1)``: the robustkit attack called once per image, which isolates
  what batching across images gains from what torch-vs-NumPy gains. Its noise is the batched
  run's (the shared stream depends only on the seed), so its adversarials, successes and queries
  are the same up to floating point.

Settings are RLFAT's (T 200, b 300, sigma 0.1, eta 0.008, no fewer iterations); eps 0.1 on [0, 1]
digits gives a success rate well away from 0 and 1. Two small undefended models: an MLP 64-64-10 and
a linear 64-10 classifier (the model's forward pass is the same work in every implementation, so
the cheaper the model, the more batching shows). The attack runs with its defaults (``batch_size``
10,000 images per forward pass). Every implementation is warmed up first. Prints a table per
model and writes ``benchmarks/results/nattack_batched.json``; about a minute on 2 idle CPU cores.

    .venv/bin/python benchmarks/nattack_batched.py [--n 150] [--eps 0.1] [--models mlp,linear]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robustkit.data import stack  # noqa: E402
from robustkit.plugins.datasets import load_digits_dataset  # noqa: E402
from robustkit.plugins.nattack import NAttack  # noqa: E402


def train_mlp(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _arctanh(v: np.ndarray, shrink: float = 1e-6) -> np.ndarray:  # RLFAT helpers.torch_arctanh
    v = v * (1.0 - shrink)
    return 0.5 * np.log((1 + v) / (1 - v))


@torch.no_grad()
def nattack_reference_loop(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float, T: int,
                           b: int, sigma: float = 0.1, eta: float = 0.008, delta: float = 0.0,
                           check_every: int = 10, seed: int = 0) -> dict:
    """RLFAT's nattack.py loop (one image at a time, population batched, NumPy float64)."""
    np.random.seed(seed)
    n = images.shape[0]
    success = np.zeros(n, bool)
    queries = np.zeros(n, np.int64)
    adversarial = images.clone()
    for i in range(n):
        x = images[i].numpy().astype(np.float64)  # C x H x W
        y = int(labels[i])
        if int(model(images[i:i + 1]).argmax(1)) != y:
            continue  # skip the wrong example
        modify = np.random.randn(1, *x.shape) * 0.001
        base = np.clip(x, delta, 1 - delta) if delta > 0 else x
        for t in range(T):
            nsample = np.random.randn(b, *x.shape)
            modify_try = modify.repeat(b, 0) + sigma * nsample
            newimg = _arctanh((base - 0.5) / 0.5)
            inputimg = np.tanh(newimg + modify_try) * 0.5 + 0.5
            if t % check_every == 0:
                realinputimg = np.tanh(newimg + modify) * 0.5 + 0.5
                realclipinput = x + np.clip(realinputimg - x, -eps, eps)
                out = model(torch.from_numpy(realclipinput).float())
                queries[i] += 1
                if int(out.argmax(1)) != y:
                    success[i] = True
                    adversarial[i] = torch.from_numpy(realclipinput[0]).float()
                    break
            clipinput = x + np.clip(inputimg - x, -eps, eps)
            outputs = _softmax(model(torch.from_numpy(clipinput).float()).numpy().astype(np.float64))
            queries[i] += b
            onehot = np.zeros((1, outputs.shape[1]))
            onehot[0, y] = 1.0
            onehot = onehot.repeat(b, 0)
            real = np.log((onehot * outputs).sum(1) + 1e-30)
            other = np.log(((1.0 - onehot) * outputs - onehot * 10000.0).max(1) + 1e-30)  # per sample
            reward = -0.5 * np.clip(real - other, 0.0, 1000)
            a = (reward - np.mean(reward)) / (np.std(reward) + 1e-7)
            modify = modify + (eta / (b * sigma)) * (nsample.reshape(b, -1).T @ a).reshape(x.shape)
    return {"success": torch.from_numpy(success), "queries": torch.from_numpy(queries), "adversarial": adversarial}


_BATCH_SIZE = next(p.default for p in NAttack.params if p.name == "batch_size")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def train_linear(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


MODELS = {
    "mlp": ("MLP 64-64-10 (ReLU), 300 full-batch Adam steps, undefended", train_mlp),
    "linear": ("linear 64-10 (softmax regression), 300 full-batch Adam steps, undefended", train_linear),
}


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> dict:
    """Time the four implementations on one model; returns the rows and settings."""
    n = x.shape[0]
    with torch.no_grad():
        clean_correct = int((model(x).argmax(1) == y).sum())
    common = dict(eps=args.eps, iterations=args.iterations, population=args.population, batch_size=args.batch_size)
    attack = NAttack(**common)
    own = NAttack(shared_noise=False, **common)
    delta = attack.margin()
    rows = []

    # Warm up every implementation (thread pools, allocator) on two images for ten iterations.
    for warm in (attack, own):
        NAttack(**{**warm.config, "iterations": 10})(model, x[:2], y[:2])
    nattack_reference_loop(model, x[:2], y[:2], eps=args.eps, T=10, b=args.population, delta=delta)

    def record(name, success, queries, seconds, adversarial):
        with torch.no_grad():
            fooled = int((model(adversarial).argmax(1) != y).sum()) - (n - clean_correct)
        rows.append({"implementation": name, "seconds": seconds, "success_rate": float(success.sum()) / clean_correct,
                     "n_success": int(success.sum()), "fooled_check": fooled,
                     "mean_queries": float(queries[queries > 0].float().mean()),
                     "linf_max": float((adversarial - x).abs().max())})

    result, seconds = timed(lambda: attack(model, x, y))
    record("batched (robustkit, shared noise)", result.extra["success"], result.queries, seconds,
           result.adversarial)

    result, seconds = timed(lambda: own(model, x, y))
    record("batched (robustkit, noise per image)", result.extra["success"], result.queries, seconds,
           result.adversarial)

    singles, seconds = timed(lambda: [attack(model, x[i:i + 1], y[i:i + 1]) for i in range(n)])
    record("per-image (robustkit, batch of 1)", torch.cat([s.extra["success"] for s in singles]),
           torch.cat([s.queries for s in singles]), seconds, torch.cat([s.adversarial for s in singles]))

    ref, seconds = timed(lambda: nattack_reference_loop(model, x, y, eps=args.eps, T=args.iterations,
                                                        b=args.population, delta=delta))
    record("per-image (reference-style, NumPy)", ref["success"], ref["queries"], seconds, ref["adversarial"])

    batched = rows[0]["seconds"]
    for row in rows:
        row["slowdown_vs_batched"] = row["seconds"] / batched
    return {
        "clean_correct": clean_correct, "delta": delta, "results": rows,
        "speedup_vs_reference_style": rows[3]["seconds"] / batched,
        "speedup_vs_per_image_robustkit": rows[2]["seconds"] / batched,
        "speedup_noise_per_image_vs_reference_style": rows[3]["seconds"] / rows[1]["seconds"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150, help="test images attacked (the first n)")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--population", type=int, default=300)
    parser.add_argument("--models", default="mlp,linear", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--batch-size", type=int, default=_BATCH_SIZE,
                        help="NAttack batch_size (images per forward pass); the attack's default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nattack_batched.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = load_digits_dataset()
    (xtr, ytr), (xte, yte) = stack(data.train), stack(data.test)
    x, y = xte[:args.n], yte[:args.n]
    load_before = os.getloadavg()
    per_model = {}
    for name in args.models.split(","):
        description, train = MODELS[name]
        per_model[name] = {"model": description, **run(train(xtr, ytr), x, y, args)}
    load_after = os.getloadavg()

    report = {
        "benchmark": "nattack_batched",
        "settings": {"eps": args.eps, "iterations": args.iterations, "population": args.population, "sigma": 0.1,
                     "eta": 0.008, "check_every": 10, "batch_size": args.batch_size, "n_images": args.n,
                     "dataset": "digits (first n test images)",
                     "warm_up": "each implementation, 2 images x 10 iterations"},
        "models": per_model,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__,
                    "loadavg_before": load_before, "loadavg_after": load_after},
        "note": "one run; wall-clock seconds on CPU; the machine may be shared with other jobs (see loadavg)",
    }
    for name, res in per_model.items():
        print(f"\nNATTACK on {args.n} digits ({res['clean_correct']} clean-correct), {res['model']}; eps {args.eps}, "
              f"T {args.iterations}, b {args.population}, delta {res['delta']:g}, {torch.get_num_threads()} threads")
        header = f"{'implementation':40s} {'seconds':>9s} {'x batched':>9s} {'success':>8s} {'mean q':>8s} {'linf':>6s}"
        print(header)
        print("-" * len(header))
        for row in res["results"]:
            print(f"{row['implementation']:40s} {row['seconds']:9.2f} {row['slowdown_vs_batched']:9.1f} "
                  f"{row['success_rate']:8.3f} {row['mean_queries']:8.0f} {row['linf_max']:6.3f}")
        print(f"speedup of batched (shared noise, the default): {res['speedup_vs_reference_style']:.1f}x vs the "
              f"reference-style loop, {res['speedup_vs_per_image_robustkit']:.1f}x vs robustkit one image at a time; "
              f"noise per image: {res['speedup_noise_per_image_vs_reference_style']:.1f}x vs the reference-style loop")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
