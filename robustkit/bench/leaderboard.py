"""Leaderboard files from benchmark runs: export, and merge across machines.

One entry per defense, ranked by its matched robustness at the first target clean accuracy (ties
shared, see :mod:`robustkit.protocol`). Each entry fills RobustBench's fields as numbers:
``robust_acc`` is the matched worst case at ``target_acc`` with its 95% interval
(``robust_acc_interval``), ``null`` when no model of the defense reaches the target; ``clean_acc`` is
the measured clean accuracy of the model the reading comes from (the least accurate frontier model at
or above the target; every source model is in ``source_models``). Entries keep what they were
computed from: every raw point with its per-example outcomes, every matched reading, the audit flags
and provenance.

Because points keep their outcomes, :func:`merge_leaderboards` can pool results from different
machines (more seeds, more knob values) and recompute readings and intervals, provided every entry
was made under the same protocol (``protocol_fingerprint``) in the same numeric environment.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from robustkit.bench.analysis import WORST_CASE, BenchmarkRun, audit_flags, is_accuracy, load_run, metrics
from robustkit.devices import environment_difference
from robustkit.errors import RobustkitError
from robustkit.leaderboard import _utc_now, leaderboard_document, validate_leaderboard


def _pct(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(100.0 * value, 4)


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


def _source(end: Mapping[str, Any] | None, metric: str) -> dict[str, Any] | None:
    if end is None:
        return None
    scale = _pct if is_accuracy(metric) else _round
    return {"knob": end["knob"], "value": end["value"], "seed": end["seed"], "clean_acc": _pct(end["clean"]),
            "robust_acc": scale(end["robust"])}


def build_document(run: BenchmarkRun, meta: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """Entries for every defense with records, ranked; ``meta`` gives each defense's paper fields."""
    b = run.benchmark
    analysis = run.analysis()
    first = analysis.targets[0]
    if first.value is None:
        raise RobustkitError(f"the first target, defense {first.name!r}, has no finished cell to take its clean "
                             "accuracy from; finish the run first")
    ranked = analysis.comparison(first.name, WORST_CASE)
    ranking = analysis.comparison(first.name)
    entries = []
    for place in ranking.ranking:
        defense = place.name
        own = [r for r in run.records if r["defense"] == defense]
        if not own:
            continue
        readings = []
        for target in analysis.targets:
            for metric in metrics(b):
                r = analysis.comparison(target.name, metric).readings[defense]
                scale = _pct if is_accuracy(metric) else _round
                readings.append({"target": target.name, "target_acc": _pct(target.value), "metric": metric,
                                 "mean": scale(r.value), "low": scale(r.low), "high": scale(r.high),
                                 "n": r.n_in_range, "of": r.n_seeds, "status": r.status,
                                 "best_clean_acc": _pct(r.best_clean)})
        worst = ranked.readings[defense]
        uppers = [s["upper"]["clean"] for s in worst.sources if s["upper"] is not None]
        clean = sum(uppers) / len(uppers) if uppers else worst.best_clean
        fixed = [a["label"] for a in b["attacks"] if a["goal"] != "minimal-distortion"]
        attack_acc = {label: _pct(analysis.comparison(first.name, label).readings[defense].value) for label in fixed}
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
            "clean_acc": _pct(clean),
            "robust_acc": _pct(worst.value),
            "target_acc": _pct(first.value),
            "robust_acc_interval": [_pct(worst.low), _pct(worst.high)] if worst.low is not None else None,
            "reading_status": worst.status,
            "seeds_in_range": {"n": worst.n_in_range, "of": worst.n_seeds},
            "source_models": [{"seed": s["seed"], "lower": _source(s["lower"], WORST_CASE),
                               "upper": _source(s["upper"], WORST_CASE)} for s in worst.sources],
            "attack_suite": "+".join(a["label"] for a in b["attacks"]),
            "attack_acc": {k: v for k, v in attack_acc.items() if v is not None},
            "reported": None,
            "rank": place.rank,
            "rank_label": place.label,
            "tie_group": [p.name for p in ranking.ranking if p.rank is not None and p.rank == place.rank],
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
                "normalization": first_record.get("normalization"),
            },
        })
    doc = leaderboard_document(entries, presorted=True)
    doc["benchmark"] = {key: b[key] for key in ("name", "fingerprint", "spec_hash", "targets", "rank_by",
                                                "dataset", "model", "threat")}
    doc["benchmark"]["seeds"] = sorted({int(r["seed"]) for r in run.records})
    doc["benchmark"]["attacks"] = [{k: a[k] for k in ("label", "name", "params", "goal", "knowledge")}
                                   for a in b["attacks"]]
    doc["benchmark"]["target_accuracies"] = {t.name: _pct(t.value) for t in analysis.targets}
    doc["benchmark"]["bootstrap"] = dict(analysis.bootstrap)
    doc["benchmark"]["environment"] = environment_of(run)
    return validate_leaderboard(doc)


def environment_of(run: BenchmarkRun) -> dict[str, Any]:
    """The one numeric environment of a run's records (refused when they mix several)."""
    found: dict[str, Any] | None = None
    for r in run.records:
        env = r.get("environment")
        if env is None:
            continue
        if found is not None and environment_difference(found, env):
            raise RobustkitError(f"the records of {run.root or 'these files'} were made in different numeric "
                                 f"environments ({environment_difference(found, env)}); their readings would mix "
                                 "them: rerun the odd cells in one environment")
        found = env
    return found or run.benchmark.get("environment") or {}


def _point(record: Mapping[str, Any], benchmark: Mapping[str, Any]) -> dict[str, Any]:
    attacks = record["attacks"]
    return {
        "knob": record["knob"], "value": record["knob_value"], "seed": int(record["seed"]),
        "clean_acc": _pct(record["clean_accuracy"]), "robust_acc": _pct(record["worst_case_accuracy"]),
        "attack_acc": {a["label"]: _pct(attacks[a["label"]]["robust_accuracy"]) for a in benchmark["attacks"]},
        "rho": {a["label"]: {kind: _round(attacks[a["label"]].get(kind.replace("-", "_")))
                             for kind in ("rho", "rho-median", "rho-success")}
                for a in benchmark["attacks"] if a["goal"] == "minimal-distortion"},
        "audit_flags": list(record["audit"]["flags"]) if record.get("audit") else None,
        "threat_flags": list(record.get("threat_flags", [])),
        "seconds_per_epoch": record["training"].get("seconds_per_epoch"),
        "environment": record.get("environment"),
        "outcomes": record["outcomes"],
    }


def _record(point: Mapping[str, Any], defense: str, benchmark: Mapping[str, Any], provenance: Mapping[str, Any],
            ) -> dict[str, Any]:
    """A point back in the shape of a cell record (what the analysis reads)."""
    attacks = {}
    for a in benchmark["attacks"]:
        rho = point.get("rho", {}).get(a["label"], {})
        attacks[a["label"]] = {"robust_accuracy": point["attack_acc"][a["label"]] / 100.0,
                               **{kind.replace("-", "_"): value for kind, value in rho.items()}}
    record = {"defense": defense, "seed": point["seed"], "knob": point["knob"], "knob_value": point["value"],
              "clean_accuracy": point["clean_acc"] / 100.0, "worst_case_accuracy": point["robust_acc"] / 100.0,
              "attacks": attacks, "n_examples": provenance["n_examples"], "outcomes": point["outcomes"],
              "audit": {"flags": point["audit_flags"]} if point.get("audit_flags") is not None else None,
              "threat_flags": point.get("threat_flags", []),
              "training": {"seconds_per_epoch": point.get("seconds_per_epoch")}, "seconds": 0.0,
              "device": provenance["device"],
              "versions": {"robustkit": provenance["robustkit_version"], "plugins": provenance["plugin_versions"],
                           "torch": provenance.get("torch_version", "")}}
    if point.get("environment") is not None:
        record["environment"] = point["environment"]
    return record


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
        difference = environment_difference(base["benchmark"].get("environment") or {},
                                            doc["benchmark"].get("environment") or {})
        if difference is not None:
            raise RobustkitError(f"cannot merge: {where} and {base_where} were made in different numeric environments "
                                 f"({difference}), so the same cell would give different numbers; rerun one of "
                                 "them like the other (bench run --threads, --device)")
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
