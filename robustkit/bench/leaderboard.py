"""Leaderboard files from benchmark runs: export, and merge across machines.

One entry per defense, ranked by its matched robustness at the first target clean accuracy. Each
entry fills RobustBench's fields as numbers (``clean_acc`` is the target accuracy the curve was read at,
``robust_acc`` the matched worst case there, ``null`` when the curve does not reach the target) and keeps
what it was computed from: every raw point, every matched reading, the audit flags and provenance.

Because entries keep their raw points, :func:`merge_leaderboards` can pool results from different
machines (more seeds, more knob values) and recompute the matching, provided every entry was made
under the same protocol (same ``protocol_fingerprint``); it refuses anything else.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from robustkit.bench.analysis import (WORST_CASE, BenchmarkRun, audit_flags, is_accuracy, load_run, matched, metrics,
                                      ranking, resolve_targets)
from robustkit.errors import RobustkitError
from robustkit.leaderboard import _utc_now, leaderboard_document, validate_leaderboard


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 4)


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def export_leaderboard(root: Any) -> dict[str, Any]:
    """The leaderboard document of the benchmark folder ``root`` (validated against the schema)."""
    run = load_run(root)
    if not run.records:
        raise RobustkitError(f"{run.root} has no finished cells yet; run `robustkit bench run` first")
    meta = {d["label"]: {"name": d["reference"].get("title") or d["label"], "link": d["reference"].get("link", ""),
                         "authors": d["reference"].get("authors", ""), "venue": d["reference"].get("venue", ""),
                         "defense_name": d["name"]}
            for d in run.benchmark["defenses"]}
    return build_document(run, meta)


def build_document(run: BenchmarkRun, meta: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """Entries for every defense with records, ranked; ``meta`` gives each defense's paper fields."""
    b = run.benchmark
    targets = resolve_targets(b, run.records)
    first_name, first_value = targets[0]
    if first_value is None:
        raise RobustkitError(f"the first target, defense {first_name!r}, has no finished cell to take its clean "
                             "accuracy from; finish the run first")
    table = matched(run)
    order = [d for d, _ in ranking(run)]
    entries = []
    for rank, defense in enumerate(order, start=1):
        own = [r for r in run.records if r["defense"] == defense]
        if not own:
            continue
        readings = []
        for name, value in targets:
            for metric in metrics(b):
                s = table[defense][name][metric]
                if s is None:
                    continue
                scale = _pct if is_accuracy(metric) else _round
                readings.append({"target": name, "target_acc": _pct(value), "metric": metric, "mean": scale(s.mean),
                                 "low": scale(s.low), "high": scale(s.high), "n": s.n,
                                 "n_out_of_range": s.n_out_of_range, "status": s.status})
        at_first = table[defense][first_name]
        worst = at_first[WORST_CASE]
        fixed = [a["label"] for a in b["attacks"] if a["goal"] != "minimal-distortion"]
        flags = audit_flags(run.records, defense)
        info = meta.get(defense, {})
        first_record = own[0]
        entries.append({
            "defense": defense,
            "model": b["model"]["name"],
            "name": info.get("name") or defense,
            "link": info.get("link", ""),
            "authors": info.get("authors", ""),
            "additional_data": False,
            "number_forward_passes": 1,
            "dataset": b["dataset"]["name"],
            "venue": info.get("venue", ""),
            "architecture": b["model"]["name"],
            "threat_model": b["threat"]["norm"],
            "eps": float(b["threat"]["eps"]),
            "clean_acc": _pct(first_value),
            "robust_acc": _pct(worst.mean) if worst is not None else None,
            "attack_suite": "+".join(a["label"] for a in b["attacks"]),
            "attack_acc": {label: _pct(at_first[label].mean) for label in fixed
                           if at_first.get(label) is not None and at_first[label].mean is not None},
            "reported": None,
            "rank": rank,
            "matched": readings,
            "points": [_point(r, b) for r in sorted(own, key=lambda r: (r["seed"], r["clean_accuracy"],
                                                                         str(r["knob_value"])))],
            "audit": {"flags": sorted(flags), "models_flagged": sum(1 for r in own if r.get("audit") and
                                                                    r["audit"]["flags"]),
                      "models_audited": sum(1 for r in own if r.get("audit"))},
            "provenance": {
                "robustkit_version": first_record["versions"]["robustkit"],
                "plugin_versions": dict(first_record["versions"]["plugins"]),
                "seed": int(min(r["seed"] for r in own)),
                "seeds": sorted({int(r["seed"]) for r in own}),
                "n_examples": int(first_record["n_examples"]),
                "attacks": [{"name": a["label"], "attack": a["name"], "params": a["params"]} for a in b["attacks"]],
                "device": first_record["device"],
                "runtime_seconds": round(sum(r["seconds"] for r in own), 3),
                "timestamp": _utc_now(),
                "torch_version": first_record["versions"]["torch"],
                "benchmark": b["name"],
                "spec_hash": b["spec_hash"],
                "protocol_fingerprint": b["fingerprint"],
            },
        })
    doc = leaderboard_document(entries, presorted=True)
    doc["benchmark"] = {key: b[key] for key in ("name", "fingerprint", "spec_hash", "targets", "rank_by",
                                                "dataset", "model", "threat")}
    doc["benchmark"]["seeds"] = sorted({int(r["seed"]) for r in run.records})
    doc["benchmark"]["attacks"] = [{k: a[k] for k in ("label", "name", "params", "goal", "knowledge")}
                                   for a in b["attacks"]]
    doc["benchmark"]["target_accuracies"] = {name: _pct(value) for name, value in targets}
    return validate_leaderboard(doc)


def _point(record: Mapping[str, Any], benchmark: Mapping[str, Any]) -> dict[str, Any]:
    attacks = record["attacks"]
    return {
        "knob": record["knob"], "value": record["knob_value"], "seed": int(record["seed"]),
        "clean_acc": _pct(record["clean_accuracy"]), "robust_acc": _pct(record["worst_case_accuracy"]),
        "attack_acc": {a["label"]: _pct(attacks[a["label"]]["robust_accuracy"]) for a in benchmark["attacks"]},
        "rho": {a["label"]: {"mean": _round(attacks[a["label"]]["mean_l2"]),
                             "median": _round(attacks[a["label"]]["median_l2"])}
                for a in benchmark["attacks"] if a["goal"] == "minimal-distortion"},
        "audit_flags": list(record["audit"]["flags"]) if record.get("audit") else None,
        "seconds_per_epoch": record["training"].get("seconds_per_epoch"),
    }


def _record(point: Mapping[str, Any], defense: str, benchmark: Mapping[str, Any], provenance: Mapping[str, Any],
            ) -> dict[str, Any]:
    """A point back in the shape of a cell record (what the analysis reads)."""
    attacks = {}
    for a in benchmark["attacks"]:
        rho = point.get("rho", {}).get(a["label"], {})
        attacks[a["label"]] = {"robust_accuracy": point["attack_acc"][a["label"]] / 100.0,
                               "mean_l2": rho.get("mean"), "median_l2": rho.get("median")}
    return {"defense": defense, "seed": point["seed"], "knob": point["knob"], "knob_value": point["value"],
            "clean_accuracy": point["clean_acc"] / 100.0, "worst_case_accuracy": point["robust_acc"] / 100.0,
            "attacks": attacks, "n_examples": provenance["n_examples"],
            "audit": {"flags": point["audit_flags"]} if point.get("audit_flags") is not None else None,
            "training": {"seconds_per_epoch": point.get("seconds_per_epoch")}, "seconds": 0.0,
            "device": provenance["device"],
            "versions": {"robustkit": provenance["robustkit_version"], "plugins": provenance["plugin_versions"],
                         "torch": provenance.get("torch_version", torch.__version__)}}


def merge_leaderboards(docs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Pool the points of benchmark leaderboards made under one protocol and recompute the matching.

    :param docs: ``(where, document)`` pairs, each already validated; ``where`` names it in errors.
    :raises RobustkitError: when a document is not a benchmark export, or any entry's protocol
        fingerprint or the targets differ from the first document's.
    """
    base_where, base = docs[0]
    for where, doc in docs:
        if "benchmark" not in doc:
            raise RobustkitError(f"{where} is not a benchmark leaderboard (no 'benchmark' block); only "
                                 "`robustkit leaderboard export` files can be merged")
    fingerprint = base["benchmark"]["fingerprint"]
    for where, doc in docs:
        for i, entry in enumerate(doc["entries"]):
            theirs = entry["provenance"].get("protocol_fingerprint", doc["benchmark"]["fingerprint"])
            if theirs != fingerprint:
                raise RobustkitError(f"cannot merge: {where} entry {i} ({entry['defense']}) has protocol fingerprint "
                                     f"{theirs}, {base_where} has {fingerprint}; results from different data, "
                                     "model, budget, threat model or attacks are not comparable")
        for key in ("targets", "rank_by"):
            if doc["benchmark"][key] != base["benchmark"][key]:
                raise RobustkitError(f"cannot merge: {where} has {key} {doc['benchmark'][key]}, {base_where} has "
                                     f"{base['benchmark'][key]}; export both with the same spec")
    records: dict[tuple[str, Any, int], dict[str, Any]] = {}
    meta: dict[str, dict[str, str]] = {}
    labels: list[str] = []
    for _, doc in docs:
        for entry in doc["entries"]:
            if entry["defense"] not in labels:
                labels.append(entry["defense"])
            meta.setdefault(entry["defense"], {k: entry[k] for k in ("name", "link", "authors", "venue")})
            for point in entry["points"]:
                key = (entry["defense"], repr(point["value"]), point["seed"])
                records.setdefault(key, _record(point, entry["defense"], doc["benchmark"], entry["provenance"]))
    benchmark = dict(base["benchmark"])
    benchmark["defenses"] = [{"label": label} for label in labels]
    benchmark["cells"] = list(records)
    run = BenchmarkRun(root=None, benchmark=benchmark, records=list(records.values()), missing=0)  # type: ignore[arg-type]
    merged = build_document(run, meta)
    seconds = {(e["defense"]): 0.0 for e in merged["entries"]}
    for _, doc in docs:  # runtimes add up across the merged files
        for entry in doc["entries"]:
            seconds[entry["defense"]] = seconds.get(entry["defense"], 0.0) + entry["provenance"]["runtime_seconds"]
    for entry in merged["entries"]:
        entry["provenance"]["runtime_seconds"] = round(seconds[entry["defense"]], 3)
        entry["provenance"]["merged_from"] = [where for where, _ in docs]
    return validate_leaderboard(merged)
