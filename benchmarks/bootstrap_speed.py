"""How long the paired bootstrap of the accuracy-matched comparison takes (target: well under a second for
20 models x 10,000 examples x 1,000 resamples).

Synthetic records: 4 defenses of 5 models each (one seed), one fixed-budget attack; the comparison at one
target on the worst case is timed from the records (decoding the outcomes, drawing the resamples, every
frontier reading, every paired difference, the ranks), interleaved over repeats.

    .venv/bin/python benchmarks/bootstrap_speed.py [--models 20] [--n 10000] [--resamples 1000] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from perf.common import RESULTS, machine, positive_int, setup, summary, table, thread_counts, write

DEFENSES = 4


def records(models: int, n: int, rng: np.random.Generator) -> list[dict]:
    from robustkit.outcomes import AttackOutcomes, Outcomes

    out = []
    for i in range(models):
        clean = rng.random(n) < 0.9 - 0.01 * (i % 5)
        fooled = clean & (rng.random(n) < 0.2 + 0.03 * (i % 5))
        outcomes = Outcomes(clean, {"pgd": AttackOutcomes(fooled, fooled, np.where(fooled, 0.1, 0.0))})
        out.append({"defense": f"d{i % DEFENSES}", "seed": 0, "knob": "eps", "knob_value": i,
                    "outcomes": outcomes.to_json()})
    return out


def compare(recs: list[dict], resamples: int) -> float:
    from robustkit.bench.analysis import Analysis, BenchmarkRun

    benchmark = {"targets": [0.87], "defenses": [{"label": f"d{i}"} for i in range(DEFENSES)],
                 "attacks": [{"label": "pgd", "goal": "fixed-budget"}], "rank_by": "worst-case"}
    tick = time.perf_counter()
    Analysis(BenchmarkRun(None, benchmark, recs, 0), resamples=resamples).comparison()  # type: ignore[arg-type]
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=positive_int, default=20)
    parser.add_argument("--n", type=positive_int, default=10_000)
    parser.add_argument("--resamples", type=positive_int, default=1000)
    parser.add_argument("--threads", type=thread_counts, default=[1, 2])
    parser.add_argument("--repeats", type=positive_int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()
    recs = records(args.models, args.n, np.random.default_rng(0))
    rows, results = [], {}
    for threads in args.threads:
        setup("", threads)
        compare(recs, args.resamples)  # warm-up: imports, allocator
        seconds = [compare(recs, args.resamples) for _ in range(args.repeats)]
        results[str(threads)] = summary(seconds)
        rows.append([threads, results[str(threads)]["median"], results[str(threads)]["min"]])
    table(["threads", "median s", "min s"], rows,
          title=f"comparison of {args.models} models x {args.n} examples x {args.resamples} resamples")
    write({"benchmark": "bootstrap_speed", "models": args.models, "n": args.n, "resamples": args.resamples,
           "seconds_by_threads": results, "seconds": round(sum(r["median"] for r in results.values()), 3),
           "machine": machine(load)}, RESULTS / "bootstrap_speed.json")


if __name__ == "__main__":
    main()
