"""Batched hot/cold and FGV line search against a straightforward per-image implementation, same results.

Run: ``.venv/bin/python benchmarks/perf/hotcold_batched.py [--quick]`` (default: about 3 minutes on 2 shared CPU
cores; ``--quick``: about a minute). Writes ``benchmarks/results/perf_hotcold_batched.json``.

What is compared (``plugins/robustkit-hotcold/``, ``SPECS.md`` section 5): hot/cold (HC-D-1, the default:
``d = grad_x <w, h(x)>`` with ``w = |h_t| e_t - h_y e_y``, t the runner-up class) and FGV (``d = grad_x J``,
the raw cross-entropy gradient) both search ``d`` on the integer grid: ``Q(x + s d)`` with ``max |d|`` one grey
level, s = 0, then 1, 2, 4, ..., 128, 255, then bisection in the last interval until it is narrower than 1e-6
(a midpoint whose quantized image equals an end's costs no model call). Per attack, model and thread count:

- ``batched``: the robustkit attack (``host.attacks.create(name, {"report_pass": False})``) on all n images at
  once: one forward-backward for every direction, then one forward pass per search step over the images still
  searching, then one forward to check the candidates. ``report_pass`` is off in every variant: PASS (OpenCV
  alignment + SSIM) is a per-image metric outside the search and would cost every implementation the same.
- ``per-image (reference-style)``: written out below, the way the method reads in the paper, one image at a
  time: its direction with one forward and one backward of that image, then the s = 0 check, the doubling and
  the bisection, each trial one forward pass of the single image, and a final forward to check the candidate.
  It is the same algorithm as robustkit's (the same step schedule, the same tolerance, the same rule that a
  midpoint equal to an end is not sent to the model), so it makes the same decisions and the same model calls.
  One difference, in its favour: for hot/cold it takes the logits for ``w`` from the forward it differentiates,
  where robustkit runs one extra no-grad forward for them. This is the baseline.
- ``per-image (robustkit, batch of 1)``: the robustkit attack called once per image: the batched torch code
  without the batching (a stricter comparison; it also pays the attack's per-call checks n times).
- ``search only``: the line search alone on the same directions (taken from the batched attack), batched
  (``robustkit_hotcold.line_search``) against the reference-style per-image search: what batching the
  search buys, without the direction computation.

Both reach the same results: before timing, every implementation runs once (this is also the warm-up) and the
script compares them image by image: ``found``, ``success``, the step ``s*``, the queries and the adversarial
images. Asserted ("same outcome"): the same found and success sets and ``s*`` within a relative 1e-4. The steps
are not bit-equal on every image: the float32 input gradient of a batch of n images and of one image differ in
their last bits (the matrix products are blocked differently; about 1e-6 of the largest entry), and the step
where a pixel changes its rounding moves with them (by up to a few 1e-6 relative in the recorded run). On the
same directions ("search only") the two searches are bit-identical, and the adversarial images and query
counts of the whole attacks are reported (identical in the recorded run). The script writes the JSON, then
exits non-zero if an outcome differs.

Model: the registered ``lenet`` (Caffe's LeNet, the hot/cold paper's model; ``--models lenet,madry-cnn`` adds
the Madry CNN), trained naturally for 3 epochs with ``robustkit.training.train`` on the embedded 8x8 digits
(seed 0), attacked on the first n = 200 test images. Every variant's first run is untimed, then ``--repeats``
rounds interleaved (``common.measure``: rotating start); speedups are ratios of medians, ratios of minima
alongside. Everything once with 1 torch thread and once with 2 (``--threads``).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PLUGINS = "datasets,paper-models,baseline-defenses,hotcold"
DEFAULT = {"n": 200, "epochs": 3, "repeats": 5, "models": "lenet", "threads": [1, 2]}
QUICK = {"n": 40, "epochs": 1, "repeats": 3, "models": "lenet", "threads": [1, 2]}
ATTACKS = ("hotcold", "fgv")
#: The reference-style search's schedule, written out (checked against robustkit's at start).
STEPS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 255.0)
TOL, MAX_BISECTIONS = 1e-6, 64
#: s* of two implementations count as the same within this relative difference (see the module docstring).
STEP_RTOL = 1e-4
VARIANTS = ("batched", "per-image (reference-style)", "per-image (robustkit, batch of 1)",
            "search only: batched", "search only: per-image (reference-style)")


# ----------------------------------------------------------------------------------------------------------------
# The per-image baseline: one image at a time, one forward pass of a single image per trial.
# ----------------------------------------------------------------------------------------------------------------

def reference_direction(model: Any, image: Any, label: int, attack: str) -> Any:
    """The search direction of one image (``C x H x W``): one forward and one backward of that image."""
    import torch
    import torch.nn.functional as F

    x = image.unsqueeze(0).detach().requires_grad_(True)
    out = model(x)
    if attack == "hotcold":  # HC-D-1: t = the highest-scoring class other than the label; w held constant
        h = out.detach()[0]
        others = h.clone()
        others[label] = float("-inf")
        t = int(others.argmax())  # ties: the lower class index
        w = torch.zeros_like(h)
        w[t] = h[t].abs()
        w[label] = -h[label]
        objective = (out[0] * w).sum()
    else:  # FGV: the raw cross-entropy gradient (softmax in float64, as robustkit's loss_gradient)
        objective = F.cross_entropy(out.to(torch.float64), torch.tensor([label]), reduction="sum")
    (grad,) = torch.autograd.grad(objective, x)
    return grad[0]


def reference_search(model: Any, image: Any, label: int, direction: Any) -> tuple[bool, float, int, Any]:
    """Smallest misclassified quantized step along ``direction`` for one image.

    Returns ``(found, s*, model calls, Q(x + s* d) / 255 or None)``; every call is a forward pass of one image.
    """
    import torch

    x = image.detach().to(torch.float64) * 255.0
    d = direction.detach().to(torch.float64)
    peak = float(d.abs().max())
    usable = math.isfinite(peak) and peak > 0
    d = d / peak if usable else torch.zeros_like(d)

    def at(s: float) -> Any:
        return (x + s * d).round().clamp(0.0, 255.0)

    def wrong(v: Any) -> bool:
        with torch.no_grad():
            return int(model((v / 255.0).to(image.dtype).unsqueeze(0)).argmax(1)) != label

    calls = 1
    lo, q_lo = 0.0, at(0.0)
    hi, q_hi = None, None
    if wrong(q_lo):  # s = 0: the quantized image is already misclassified
        hi, q_hi = 0.0, q_lo
    elif usable:
        for s in STEPS:  # doubling
            v = at(s)
            calls += 1
            if wrong(v):
                hi, q_hi = s, v
                break
            lo, q_lo = s, v
    if hi is None:
        return False, float("nan"), calls, None
    for _ in range(MAX_BISECTIONS):  # bisection in (lo, hi]
        if not hi - lo > TOL:
            break
        mid = (lo + hi) / 2
        v = at(mid)
        if torch.equal(v, q_hi):
            hit = True
        elif torch.equal(v, q_lo):
            hit = False
        else:
            hit = wrong(v)
            calls += 1
        if hit:
            hi, q_hi = mid, v
        else:
            lo, q_lo = mid, v
    return True, hi, calls, (q_hi / 255.0).to(image.dtype)


def reference_attack(model: Any, images: Any, labels: Any, attack: str) -> dict[str, Any]:
    """The whole attack, image by image: direction, search, a forward to check the candidate."""
    import torch

    n = images.shape[0]
    out = images.detach().clone()
    found = torch.zeros(n, dtype=torch.bool)
    success = torch.zeros(n, dtype=torch.bool)
    steps = torch.full((n,), float("nan"), dtype=torch.float64)
    queries = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        label = int(labels[i])
        d = reference_direction(model, images[i], label, attack)
        ok, s, calls, candidate = reference_search(model, images[i], label, d)
        queries[i] = calls + 2  # + the direction's forward-backward and the final check, counted as robustkit does
        if ok:
            found[i], steps[i] = True, s
            with torch.no_grad():
                if int(model(candidate.unsqueeze(0)).argmax(1)) != label:
                    success[i] = True
                    out[i] = candidate
    return {"adversarial": out.clamp(0.0, 1.0), "found": found, "success": success, "s": steps, "queries": queries}


def reference_search_all(model: Any, images: Any, labels: Any, directions: Any) -> dict[str, Any]:
    """The reference-style search alone, image by image, on given directions."""
    import torch

    n = images.shape[0]
    found = torch.zeros(n, dtype=torch.bool)
    steps = torch.full((n,), float("nan"), dtype=torch.float64)
    queries = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        ok, s, calls, _ = reference_search(model, images[i], int(labels[i]), directions[i])
        found[i], queries[i] = ok, calls
        if ok:
            steps[i] = s
    return {"found": found, "s": steps, "queries": queries}


# ----------------------------------------------------------------------------------------------------------------

def _train(host: Any, name: str, data: Any, epochs: int) -> Any:
    import torch

    from robustkit.models import build_model
    from robustkit.training import TrainConfig, train

    torch.manual_seed(0)
    model = build_model(host, name, data.info)
    config = TrainConfig(epochs=epochs, batch_size=64, optimizer="adam", lr=1e-3, seed=0, device="cpu",
                         val_examples=0, out_dir=None)
    return train(model, data, host.defenses.create("natural", {}), config).model.eval()


def _same_steps(a: Any, b: Any) -> dict[str, Any]:
    both_nan = a.isnan() & b.isnan()
    equal = (a == b) | both_nan
    one_nan = a.isnan() ^ b.isnan()
    both = ~a.isnan() & ~b.isnan()
    diff = (a - b).abs()[both]
    rel = diff / b.abs()[both].clamp_min(1e-12)
    max_rel = float(rel.max()) if rel.numel() else 0.0
    return {"bit_identical": bool(equal.all()), "n_different": int((~equal).sum()),
            "max_abs_difference": float(diff.max()) if diff.numel() else 0.0, "max_rel_difference": max_rel,
            "n_nan_mismatch": int(one_nan.sum()),
            "within_rtol": bool(int(one_nan.sum()) == 0 and max_rel <= STEP_RTOL), "rtol": STEP_RTOL}


def agreement(ref: dict[str, Any], other: dict[str, Any], images: bool = True) -> dict[str, Any]:
    """Image-by-image comparison of two results (``found``, ``success``, ``s``, ``queries``, ``adversarial``)."""
    import torch

    out: dict[str, Any] = {"same_found": bool(torch.equal(ref["found"], other["found"])),
                           "steps": _same_steps(ref["s"], other["s"]),
                           "same_queries": bool(torch.equal(ref["queries"], other["queries"])),
                           "n_queries_different": int((ref["queries"] != other["queries"]).sum())}
    if "success" in ref and "success" in other:
        out["same_success"] = bool(torch.equal(ref["success"], other["success"]))
        out["n_success_different"] = int((ref["success"] != other["success"]).sum())
    if images and "adversarial" in ref and "adversarial" in other:
        same = (ref["adversarial"] == other["adversarial"]).flatten(1).all(dim=1)
        out["same_adversarials"] = bool(same.all())
        out["n_adversarials_different"] = int((~same).sum())
    out["same_outcome"] = out["same_found"] and out.get("same_success", True) and out["steps"]["within_rtol"]
    out["bit_identical"] = (out["same_outcome"] and out["steps"]["bit_identical"] and out["same_queries"]
                            and out.get("same_adversarials", True))
    return out


def _facts(res: dict[str, Any], queries: Any) -> dict[str, Any]:
    s = res["s"]
    return {"n_found": int(res["found"].sum()), "n_success": int(res["success"].sum()) if "success" in res else None,
            "n_step_zero": int((s == 0).sum()), "median_step": float(s.nanmedian()) if (~s.isnan()).any() else None,
            "mean_queries": float(queries.float().mean()), "total_queries": int(queries.sum())}


def run_attack(host: Any, model: Any, x: Any, y: Any, attack: str, repeats: int, label: str) -> dict[str, Any]:
    """Time the five variants of one attack on one model, after checking they agree."""
    import torch

    from robustkit_hotcold import line_search

    robust = host.attacks.create(attack, {"report_pass": False})

    def unpack(r: Any) -> dict[str, Any]:
        return {"adversarial": r.adversarial, "found": r.extra["found"], "success": r.extra["success"],
                "s": r.extra["s"], "queries": r.queries}

    def batched() -> dict[str, Any]:
        return unpack(robust(model, x, y))

    def per_image_robustkit() -> dict[str, Any]:
        singles = [unpack(robust(model, x[i:i + 1], y[i:i + 1])) for i in range(x.shape[0])]
        return {k: torch.cat([s[k] for s in singles]) for k in singles[0]}

    def per_image_reference() -> dict[str, Any]:
        return reference_attack(model, x, y, attack)

    directions, _ = robust.directions(model, x, y)

    def search_batched() -> dict[str, Any]:
        r = line_search(model, x, y, directions)
        return {"found": r.found, "s": r.step, "queries": r.queries}

    def search_reference() -> dict[str, Any]:
        return reference_search_all(model, x, y, directions)

    fns: dict[str, Callable[[], dict[str, Any]]] = dict(zip(VARIANTS, (
        batched, per_image_reference, per_image_robustkit, search_batched, search_reference)))
    outputs = {name: fn() for name, fn in fns.items()}  # the agreement check, and the untimed warm-up
    base, search_base = outputs[VARIANTS[0]], outputs[VARIANTS[3]]
    checks = {
        "reference-style vs batched": agreement(outputs[VARIANTS[1]], base),
        "robustkit batch of 1 vs batched": agreement(outputs[VARIANTS[2]], base),
        "search only: reference-style vs batched": agreement(outputs[VARIANTS[4]], search_base, images=False),
    }
    times = common.measure({k: common.wall(v) for k, v in fns.items()}, repeats, warmup=False, label=label)
    med = {k: statistics.median(v) for k, v in times.items()}
    mins = {k: min(v) for k, v in times.items()}

    def ratio(slow: str, fast: str) -> dict[str, float]:
        return {"median": round(med[slow] / med[fast], 3), "min": round(mins[slow] / mins[fast], 3)}

    rows = []
    for name in VARIANTS:
        row: dict[str, Any] = {"variant": name, "seconds": common.summary(times[name]),
                               "ms_per_image": round(1000 * med[name] / x.shape[0], 4)}
        row.update(_facts(outputs[name], outputs[name]["queries"]))
        rows.append(row)
    return {
        "attack": attack, "config": dict(robust.config), "rows": rows,
        "speedup": {"vs_reference_style": ratio(VARIANTS[1], VARIANTS[0]),
                    "vs_robustkit_batch_of_1": ratio(VARIANTS[2], VARIANTS[0]),
                    "search_only_vs_reference_style": ratio(VARIANTS[4], VARIANTS[3])},
        "agreement": checks,
    }


def show(run: dict[str, Any]) -> None:
    for name, res in run["models"].items():
        for attack, a in res["attacks"].items():
            rows = [[r["variant"], r["seconds"]["median"], r["seconds"]["min"], r["ms_per_image"], r["n_success"],
                     r["median_step"], r["mean_queries"]] for r in a["rows"]]
            common.table(["variant", "median s", "min s", "ms/image", "success", "median s*", "mean queries"], rows,
                         title=f"{attack} on {res['n_images']} digits, {name} (clean accuracy "
                               f"{res['clean_accuracy']:.3f}), {run['torch_threads']} torch thread(s), load "
                               f"{run['load_average_before'][0]:.1f}")
            sp = a["speedup"]
            ag = a["agreement"]
            print(f"speedup of batched: {sp['vs_reference_style']['median']:.1f}x vs the reference-style per-image "
                  f"loop, {sp['vs_robustkit_batch_of_1']['median']:.1f}x vs robustkit with batch 1; search only: "
                  f"{sp['search_only_vs_reference_style']['median']:.1f}x")
            for k, v in ag.items():
                print(f"  {k}: same outcome {'yes' if v['same_outcome'] else 'NO'}, bit-identical "
                      f"{'yes' if v['bit_identical'] else 'no'} (same found {v['same_found']}, same success "
                      f"{v.get('same_success', '-')}; s* not bit-equal on {v['steps']['n_different']} images, max "
                      f"relative difference {v['steps']['max_rel_difference']:.1e}; queries different on "
                      f"{v['n_queries_different']}, adversarials different on "
                      f"{v.get('n_adversarials_different', '-')})")
            print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--n", type=common.positive_int, default=None, help="test images attacked (default 200, --quick 40)")
    parser.add_argument("--epochs", type=common.positive_int, default=None, help="natural training epochs (default 3, --quick 1)")
    parser.add_argument("--models", default=None, help="comma-separated registered models (default lenet)")
    parser.add_argument("--repeats", type=common.positive_int, default=None, help="interleaved repeats (default 5, --quick 3)")
    parser.add_argument("--threads", type=common.thread_counts, default=None,
                        help="torch thread counts, comma-separated, one run each (default 1,2)")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "perf_hotcold_batched.json")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else DEFAULT)
    for key in ("n", "epochs", "models", "repeats", "threads"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    threads = cfg["threads"]

    common.setup(PLUGINS, 1)
    import torch

    from robustkit.data import stack, take
    from robustkit.host import make_host
    from robustkit_hotcold.line_search import STEPS as ROBUSTKIT_STEPS

    assert tuple(ROBUSTKIT_STEPS) == STEPS, f"robustkit's step schedule changed: {ROBUSTKIT_STEPS}"

    load_before = os.getloadavg()
    started = time.perf_counter()
    host = make_host()
    unknown = [name for name in cfg["models"].split(",") if name not in host.models]
    if unknown:
        parser.error(f"--models: no registered model {', '.join(unknown)} (see `robustkit models list`)")
    data = host.datasets.create("digits", {})
    x, y = stack(take(data.test, cfg["n"]))
    models = {}
    for name in cfg["models"].split(","):
        t0 = time.perf_counter()
        model = _train(host, name, data, cfg["epochs"])
        with torch.no_grad():
            acc = float((model(x).argmax(1) == y).float().mean())
        models[name] = (model, acc, round(time.perf_counter() - t0, 1))
        print(f"{name}: trained {cfg['epochs']} epoch(s) in {models[name][2]} s, clean accuracy {acc:.3f} on "
              f"{x.shape[0]} test images", file=sys.stderr, flush=True)

    runs = []
    for count in threads:
        torch.set_num_threads(count)
        run_load = os.getloadavg()
        per_model = {}
        for name, (model, acc, train_s) in models.items():
            per_model[name] = {
                "clean_accuracy": acc, "n_images": int(x.shape[0]), "training_seconds": train_s,
                "attacks": {attack: run_attack(host, model, x, y, attack, cfg["repeats"],
                                               f"{attack} {name} {count} thread(s)") for attack in ATTACKS}}
        run = {"torch_threads": count, "load_average_before": list(run_load),
               "load_average_after": list(os.getloadavg()), "models": per_model}
        show(run)
        runs.append(run)

    summary = [{"torch_threads": r["torch_threads"], "model": name, "attack": attack,
                "speedup_vs_reference_style": a["speedup"]["vs_reference_style"],
                "speedup_vs_robustkit_batch_of_1": a["speedup"]["vs_robustkit_batch_of_1"],
                "search_only_speedup": a["speedup"]["search_only_vs_reference_style"],
                "same_outcome_as_reference_style": a["agreement"]["reference-style vs batched"]["same_outcome"],
                "same_adversarials_as_reference_style":
                    a["agreement"]["reference-style vs batched"]["same_adversarials"],
                "same_queries_as_reference_style": a["agreement"]["reference-style vs batched"]["same_queries"],
                "search_only_bit_identical":
                    a["agreement"]["search only: reference-style vs batched"]["bit_identical"],
                "same_outcome_search_only": a["agreement"]["search only: reference-style vs batched"]["same_outcome"]}
               for r in runs for name, m in r["models"].items() for attack, a in m["attacks"].items()]
    common.table(["threads", "model", "attack", "x vs per-image", "(min)", "x vs rk batch 1", "search only", "(min)",
                  "same outcome", "same adv", "search bit-equal"],
                 [[s["torch_threads"], s["model"], s["attack"], s["speedup_vs_reference_style"]["median"],
                   s["speedup_vs_reference_style"]["min"], s["speedup_vs_robustkit_batch_of_1"]["median"],
                   s["search_only_speedup"]["median"], s["search_only_speedup"]["min"],
                   s["same_outcome_as_reference_style"] and s["same_outcome_search_only"],
                   s["same_adversarials_as_reference_style"], s["search_only_bit_identical"]] for s in summary],
                 title="speedup of the batched line search (ratio of medians; per-image seconds / batched seconds)")
    all_same = all(s["same_outcome_as_reference_style"] and s["same_outcome_search_only"] for s in summary)
    result = {
        "benchmark": "perf_hotcold_batched",
        "mode": "quick" if args.quick else "default",
        "method": "every variant once untimed (its output is the agreement check), then interleaved rounds "
                  "(common.measure, rotating start); wall seconds per call on all n images; speedup = per-image "
                  "median / batched median (ratio of minima alongside)",
        "baseline": "reference-style per-image loop written in this script: per image one forward + one backward "
                    "for the direction, then s = 0, doubling 1..128, 255 and bisection to 1e-6 (a midpoint equal "
                    "to an end is not sent to the model), each trial one forward pass of one image, then one forward "
                    "to check the candidate",
        "settings": {**cfg, "threads": threads, "dataset": "digits (first n test images)",
                     "training": "robustkit.training.train, natural, Adam lr 1e-3, batch 64, seed 0",
                     "attack_params": {"report_pass": False}, "tol": TOL, "steps": list(STEPS)},
        "summary": summary,
        "all_same_outcome": all_same,
        "same_outcome_rule": f"same found set, same success set, and s* equal within a relative {STEP_RTOL:g} "
                             "(the directions of a batch of n and of one image differ in float32 rounding); "
                             "bit-identity of s*, queries and adversarial images is reported alongside",
        "runs": runs,
        "gpu": {"available": bool(torch.cuda.is_available()), "rows": "not run: CPU-only benchmark"
                if torch.cuda.is_available() else "no GPU"},
        **common.stamp(load_before, started),
    }
    common.write(result, args.out)
    if not all_same:
        print("NOT the same: the batched and per-image results differ (see 'agreement' in the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
