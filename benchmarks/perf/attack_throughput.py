"""Attack throughput: robustkit's PGD, CW-linf and AutoAttack against the same attacks called directly.

Run: ``.venv/bin/python benchmarks/perf/attack_throughput.py [--quick]`` (``--quick``: about a minute on 2 busy
CPU cores; the default: about 7 minutes). Writes ``benchmarks/results/perf_attack_throughput.json``.

Model and input, chosen so the model's arithmetic dominates Python overhead: the Madry CNN (untrained, eval
mode) on random 32x32x3 images in [0, 1], 10 classes, batch 64 (``--quick``: 32). The labels are the model's
own predictions, so every image starts correctly classified (AutoAttack only attacks those; with random
labels about 90% would be skipped). Pairs, each robustkit variant against its direct equivalent:

- PGD (linf, eps 8/255, step 2/255, 10 steps (``--quick``: 5), random start):
  ``torchattacks.PGD(model, ...)(x, y)`` built once outside the timing (the cheapest way to use the library)
  against ``robustkit.adversarial.pgd`` (native: the function pgd-at and validation use) and the
  ``torchattacks:PGD`` adapter (``host.attacks.create(...)(model, x, y)``: input checks, eval mode, seeding,
  building the torchattacks object on every call, the output check). The direct call seeds the RNGs first,
  as the adapter does, so their outputs are compared for equality.
- CW-linf (``robustkit/essentials/attacks/cw_linf.py``: linf PGD ascending -relu(z_y - max_{j!=y} z_j
  + kappa), kappa 50, same eps/step/steps): torchattacks.PGD hard-codes the cross-entropy, so the closest
  faithful equivalent is torchattacks' own PGD loop with a custom loss, ``torchattacks.UPGD(loss=<CW loss
  written out below>, decay=0, eot_iter=1, random_start=True)``. With decay 0 its step is the sign of the
  gradient divided by its mean absolute value, i.e. the same sign step (one extra division per step). Its
  random start draws from the global generator and cw-linf's from its own seeded one, so outputs are
  compared once without random start, where the two must agree.
- AutoAttack (``plugins/robustkit-autoattack/``, linf): a reduced budget for run time, ``version=custom``
  with APGD-CE, APGD-T, FAB-T and Square, ``steps=10`` (``--quick``: 5; reference 100), 9 target classes
  (``--quick``: 3; reference 9) and ``n_queries=100`` (``--quick``: 50; reference 5000). The direct
  equivalent is torchattacks' own APGD, APGDT, FAB(multi_targeted) and Square objects with the same settings
  (read from the robustkit attack's plan), built once, chained pointwise in this script as the reference
  ``run_standard_evaluation`` does (each sub-attack gets the images still classified correctly). eps is
  0.5/255: on an untrained model a larger budget lets APGD-CE fool every image and leaves the other three
  sub-attacks nothing to do; ``n_attacked`` records how many images each sub-attack received.

Every variant runs once untimed, then ``--repeats`` rounds interleaved (rotating start); the ratio is
robustkit's median over the direct median. Target: within 5% (ratio <= 1.05). With a CUDA GPU the same pairs
run on it (batch 256) and the GPU rows give images/second, then robustkit's PGD, the torchattacks:PGD adapter
and cw-linf run on the model wrapped by ``robustkit.precision.wrap`` at every precision and memory format
(fp32, bf16, fp16, each NCHW and channels-last): images/second, speed-up over fp32 NCHW and the fraction of
images fooled, for each of ``--sweep-models`` (default: the Madry CNN, too small to gain from reduced precision,
and wrn-32-10, Madry's CIFAR-10 WideResNet, which does); without a GPU the GPU section says "no GPU".
``--gpu-only`` skips the CPU rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PLUGINS = "datasets,paper-models,torchattacks,gradient-attacks,autoattack"
TARGET = 1.05
CLASSES = 10
DEFAULT = {"batch": 64, "steps": 10, "aa_steps": 10, "aa_targets": 9, "aa_queries": 100, "repeats": 7}
QUICK = {"batch": 32, "steps": 5, "aa_steps": 5, "aa_targets": 3, "aa_queries": 50, "repeats": 5}
GPU = {"batch": 256}
EPS, ALPHA, KAPPA, AA_EPS = 8 / 255, 2 / 255, 50.0, 0.5 / 255


def direct_cw_loss(model: Any, kappa: float) -> Callable[..., Any]:
    """The CW loss as a torchattacks UPGD ``loss`` callable: sum of -relu(z_y - max_{j != y} z_j + kappa)."""
    import torch

    def loss(images: Any, labels: Any, target_labels: Any = None) -> Any:
        logits = model(images)
        true = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
        return -torch.relu(true - other + kappa).sum()

    return loss


def direct_autoattack(model: Any, plan: list[dict[str, Any]], eps: float, seed: int, device: Any) -> Callable[..., Any]:
    """The plugin's sub-attacks (torchattacks' classes running the authors' arithmetic, ``robustkit_autoattack.parts``)
    with the plan's settings, built once, chained on the still-robust images: the same computation without
    robustkit's wrapper."""
    import torch
    from robustkit_autoattack import parts

    from robustkit.devices import seed_everything

    attacks = []
    for item in plan:
        kwargs = dict(item["params"], norm="Linf", eps=eps, seed=seed, verbose=False)
        if "n_target_classes" in item:
            kwargs["n_classes"] = CLASSES
        attack = getattr(parts, item["torchattacks"])(model, **kwargs)
        if "n_target_classes" in item:
            attack.n_target_classes = min(item["n_target_classes"], CLASSES - 1)
        attack.set_device(device)
        attacks.append(attack)

    def run(x: Any, y: Any) -> Any:
        with torch.no_grad():
            robust = model(x).argmax(1) == y
        adv = x.clone()
        for attack in attacks:
            todo = robust.nonzero().flatten()
            if todo.numel() == 0:
                break
            seed_everything(seed)
            candidate = attack(x[todo], y[todo]).detach()
            with torch.no_grad():
                fooled = model(candidate).argmax(1) != y[todo]
            adv[todo[fooled]] = candidate[fooled]
            robust[todo[fooled]] = False
        return adv

    return run


def run(host: Any, device: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torchattacks

    from robustkit.adversarial import pgd
    from robustkit.data import DatasetInfo
    from robustkit.devices import seed_everything
    from robustkit.models import build_model
    from robustkit.threat import ThreatModel

    info = DatasetInfo("random-32x32x3", CLASSES, 3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = build_model(host, "madry-cnn", info).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(cfg["batch"], 3, 32, 32, generator=gen).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    steps = cfg["steps"]

    pgd_params = {"eps": EPS, "alpha": ALPHA, "steps": steps, "random_start": True}
    ta_pgd = torchattacks.PGD(model, **pgd_params)
    adapter = host.attacks.create("torchattacks:PGD", pgd_params)
    threat = ThreatModel("linf", EPS)
    cw_params = {"eps": EPS, "steps": steps, "step_size": ALPHA, "kappa": KAPPA, "rand_init": True}
    cw = host.attacks.create("cw-linf", cw_params)
    upgd = torchattacks.UPGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True,
                             loss=direct_cw_loss(model, KAPPA), decay=0.0, eot_iter=1)
    aa_params = {"norm": "linf", "eps": AA_EPS, "version": "custom", "attacks": "apgd-ce,apgd-t,fab-t,square",
                 "steps": cfg["aa_steps"], "n_target_classes": cfg["aa_targets"], "n_queries": cfg["aa_queries"],
                 "seed": 0}
    aa = host.attacks.create("autoattack", aa_params)
    aa_direct = direct_autoattack(model, aa.plan, AA_EPS, 0, device)

    def ta_pgd_call() -> Any:
        seed_everything(0)
        return ta_pgd(x, y)

    variants = {
        "pgd: torchattacks.PGD (direct)": ta_pgd_call,
        "pgd: robustkit.adversarial.pgd (native)": lambda: pgd(model, x, y, threat, steps=steps, step_size=ALPHA),
        "pgd: torchattacks:PGD adapter": lambda: adapter(model, x, y).adversarial,
        "cw-linf: torchattacks.UPGD + CW loss (direct)": lambda: upgd(x, y),
        "cw-linf: robustkit cw-linf": lambda: cw(model, x, y).adversarial,
        "autoattack: torchattacks components (direct)": lambda: aa_direct(x, y),
        "autoattack: robustkit autoattack": lambda: aa(model, x, y).adversarial,
    }

    # Outputs: the same computation must give the same images (checked before timing).
    checks = {}
    checks["pgd adapter == direct"] = bool(torch.equal(ta_pgd_call(), adapter(model, x, y).adversarial))
    checks["pgd native vs direct, max |diff|"] = float((ta_pgd_call() - pgd(model, x, y, threat, steps=steps,
                                                                          step_size=ALPHA)).abs().max())
    cw_plain = host.attacks.create("cw-linf", {**cw_params, "rand_init": False})
    upgd_plain = torchattacks.UPGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=False,
                                   loss=direct_cw_loss(model, KAPPA), decay=0.0, eot_iter=1)
    checks["cw-linf vs UPGD+CW without random start, max |diff|"] = float(
        (cw_plain(model, x, y).adversarial - upgd_plain(x, y)).abs().max())
    aa_result = aa(model, x, y)
    checks["autoattack vs direct chain, max |diff|"] = float((aa_result.adversarial - aa_direct(x, y)).abs().max())
    n_attacked = aa_result.extra["n_attacked"]
    n_fooled = aa_result.extra["n_fooled"]

    started = time.perf_counter()
    times = common.measure({k: common.wall(v, device) for k, v in variants.items()}, cfg["repeats"],
                           label=f"attacks on {device}")
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    rows = []
    pairs = [("pgd: robustkit.adversarial.pgd (native)", "pgd: torchattacks.PGD (direct)"),
             ("pgd: torchattacks:PGD adapter", "pgd: torchattacks.PGD (direct)"),
             ("cw-linf: robustkit cw-linf", "cw-linf: torchattacks.UPGD + CW loss (direct)"),
             ("autoattack: robustkit autoattack", "autoattack: torchattacks components (direct)")]
    for name, t in times.items():
        row: dict[str, Any] = {"variant": name, "seconds": common.summary(t),
                               "images_per_second": round(cfg["batch"] / med[name], 2)}
        for mine, direct in pairs:
            if name == mine:
                ratio = med[mine] / med[direct]
                row.update({"versus": direct, "ratio_vs_direct": round(ratio, 4),
                            "ratio_vs_direct_min": round(low[mine] / low[direct], 4),
                            "target": f"ratio <= {TARGET}", "target_met": ratio <= TARGET})
        rows.append(row)
    return {
        "device": str(device), "model": "madry-cnn (untrained, eval mode)",
        "data": "random 32x32x3 images in [0, 1], labels = the model's predictions", "batch": cfg["batch"],
        "repeats": cfg["repeats"],
        "attacks": {"pgd": {**pgd_params, "norm": "linf"}, "cw-linf": cw_params, "autoattack": aa_params,
                    "autoattack_plan": aa.plan,
                    "autoattack_reduced_budget": "custom: APGD-CE, APGD-T, FAB-T, Square with steps "
                                                 f"{cfg['aa_steps']} (reference 100), {cfg['aa_targets']} target "
                                                 f"classes (reference 9), {cfg['aa_queries']} queries (reference 5000)",
                    "autoattack_n_attacked": n_attacked, "autoattack_n_fooled": n_fooled},
        "output_checks": checks, "rows": rows, "seconds": round(time.perf_counter() - started, 1),
    }


def precision_sweep(host: Any, device: Any, cfg: dict[str, Any], model_name: str = "madry-cnn") -> dict[str, Any]:
    """robustkit's PGD, the adapter and cw-linf on ``model_name`` (untrained) at every precision and memory
    format, interleaved."""
    import copy

    import torch

    from robustkit.adversarial import pgd
    from robustkit.data import DatasetInfo
    from robustkit.models import build_model
    from robustkit.precision import wrap
    from robustkit.threat import ThreatModel

    info = DatasetInfo("random-32x32x3", CLASSES, 3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = build_model(host, model_name, info).to(device).eval()
    x = torch.rand(cfg["batch"], 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    steps = cfg["steps"]
    threat = ThreatModel("linf", EPS)
    adapter = host.attacks.create("torchattacks:PGD", {"eps": EPS, "alpha": ALPHA, "steps": steps,
                                                       "random_start": True})
    cw = host.attacks.create("cw-linf", {"eps": EPS, "steps": steps, "step_size": ALPHA, "kappa": KAPPA})
    attacks: dict[str, Callable[[Any], Any]] = {
        "pgd (native)": lambda m: pgd(m, x, y, threat, steps=steps, step_size=ALPHA),
        "torchattacks:PGD adapter": lambda m: adapter(m, x, y).adversarial,
        "cw-linf": lambda m: cw(m, x, y).adversarial,
    }
    variants, fooled = {}, {}
    for precision, channels_last in common.PRECISION_VARIANTS:
        net = wrap(copy.deepcopy(model), precision, channels_last)  # channels-last converts in place: a copy each
        for attack_name, attack in attacks.items():
            key = f"{attack_name} | {common.variant_label(precision, channels_last)}"
            variants[key] = common.wall(lambda a=attack, m=net: a(m), device)
            adversarial = attack(net)
            with torch.no_grad():  # judged by the fp32 model: did reduced precision weaken the attack?
                fooled[key] = round(float((model(adversarial).argmax(1) != y).float().mean()), 4)
    times = common.measure(variants, cfg["repeats"], label=f"precision sweep of {model_name} on {device}")
    rows = []
    for key, t in times.items():
        attack_name, label = key.split(" | ")
        reference = statistics.median(times[f"{attack_name} | {common.variant_label(*common.PRECISION_VARIANTS[0])}"])
        rows.append({"attack": attack_name, "variant": label, "seconds": common.summary(t),
                     "images_per_second": round(cfg["batch"] / statistics.median(t), 2),
                     "speedup_vs_fp32_nchw": round(reference / statistics.median(t), 3),
                     "fooled_fraction_judged_fp32": fooled[key]})
    return {"model": f"{model_name} (untrained, eval mode)", "batch": cfg["batch"], "steps": steps,
            "reference": common.variant_label(*common.PRECISION_VARIANTS[0]), "rows": rows}


def show_sweep(sweep: dict[str, Any]) -> None:
    headers = ["attack", "variant", "median s", "img/s", "x fp32 NCHW", "fooled"]
    rows = [[r["attack"], r["variant"], r["seconds"]["median"], r["images_per_second"], r["speedup_vs_fp32_nchw"],
             r["fooled_fraction_judged_fp32"]] for r in sweep["rows"]]
    common.table(headers, rows, title=f"precision and memory format: {sweep['model']}, batch {sweep['batch']}, "
                                      f"{sweep['steps']} steps; fooled = fraction the fp32 model misclassifies")


def show(result: dict[str, Any]) -> None:
    headers = ["variant", "median s", "min s", "img/s", "ratio", "min ratio", "<=5%"]
    rows = [[r["variant"], r["seconds"]["median"], r["seconds"]["min"], r["images_per_second"],
             r.get("ratio_vs_direct"), r.get("ratio_vs_direct_min"), r.get("target_met")] for r in result["rows"]]
    common.table(headers, rows, title=f"attack throughput: {result['model']} on {result['data']}, {result['device']}, "
                                      f"batch {result['batch']}, {result['repeats']} interleaved repeats")
    for name, value in result["output_checks"].items():
        print(f"check: {name}: {value}")
    print(f"autoattack images attacked per sub-attack: {result['attacks']['autoattack_n_attacked']}, "
          f"fooled: {result['attacks']['autoattack_n_fooled']}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--repeats", type=common.positive_int, default=None, help="interleaved repeats (default 7, --quick 5)")
    parser.add_argument("--threads", type=common.positive_int, default=1,
                        help="torch CPU threads (default 1: less noise from other jobs on a shared machine)")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "perf_attack_throughput.json")
    parser.add_argument("--sweep-models", default="madry-cnn,wrn-32-10",
                        help="registered models the GPU precision sweep attacks (comma-separated)")
    common.add_gpu_options(parser)
    args = parser.parse_args(argv)

    common.setup(PLUGINS, args.threads)
    import torch

    from robustkit.host import make_host

    load_before = os.getloadavg()
    started = time.perf_counter()
    host = make_host()
    unknown = [n.strip() for n in args.sweep_models.split(",") if n.strip() and n.strip() not in host.models]
    if unknown:
        parser.error(f"--sweep-models: no registered model {', '.join(unknown)} (see `robustkit models list`)")
    cfg = dict(QUICK if args.quick else DEFAULT)
    if args.repeats:
        cfg["repeats"] = args.repeats
    gpu_device = common.gpu_or_exit(args.gpu_only)
    cpu: dict[str, Any] | None = None
    if not args.gpu_only:
        cpu = run(host, torch.device("cpu"), cfg)
        show(cpu)
    if gpu_device is None:
        gpu: dict[str, Any] = {"available": False, "rows": "no GPU"}
        print("GPU: no GPU (no CUDA device visible); no GPU throughput rows\n")
    else:
        gpu_run = run(host, gpu_device, {**cfg, **GPU})
        show(gpu_run)
        sweeps = [precision_sweep(host, gpu_device, {**cfg, **GPU}, name.strip())
                  for name in args.sweep_models.split(",") if name.strip()]
        for sweep in sweeps:
            show_sweep(sweep)
        gpu = {**common.gpu_facts(gpu_device), **gpu_run, "precision_sweep": sweeps}
    measured = ([cpu] if cpu else []) + ([gpu] if gpu.get("available") else [])
    targets = [{"device": d["device"], "variant": r["variant"], "ratio": r["ratio_vs_direct"], "met": r["target_met"]}
               for d in measured for r in d["rows"] if "target_met" in r]
    for t in targets:
        print(f"target [{t['device']}] {t['variant']}: ratio {t['ratio']:.3f} <= {TARGET}: "
              f"{'met' if t['met'] else 'NOT met'}")
    result = {
        "benchmark": "perf_attack_throughput",
        "mode": "quick" if args.quick else "default",
        "target_ratio": TARGET,
        "method": "each variant once untimed, then interleaved rounds (rotating start); wall time per call of one "
                  "batch; ratio = robustkit median / direct median (ratio of minima too)",
        "settings": {k: v for k, v in cfg.items()},
        "cpu": cpu if cpu else "not run (--gpu-only)",
        "gpu": gpu,
        "targets_met": targets,
        **common.stamp(load_before, started),
    }
    common.write(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
