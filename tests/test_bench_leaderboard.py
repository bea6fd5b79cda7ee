"""Leaderboard export, validation and merge of benchmark runs; the "@natural" base of hard positives."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import robustkit.host as host_module
from click.testing import CliRunner
from robustkit.bench.leaderboard import export_leaderboard, merge_leaderboards
from robustkit.bench.runner import run_benchmark
from robustkit.bench.spec import load_spec
from robustkit.checkpoints import read_metadata
from robustkit.cli import cli
from robustkit.errors import RobustkitError
from robustkit.host import make_host
from robustkit.leaderboard import validate_leaderboard
from test_bench import TINY, edited, write

TIMING = ("timestamp", "generated", "runtime_seconds", "seconds_per_epoch")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def host():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_BLOCK_PLUGINS", "timm-models")
        return make_host()


def run(host, folder: Path, text: str, name: str = "out") -> Path:
    spec = load_spec(str(write(folder, text)), host)
    run_benchmark(spec, folder / name, host, say=lambda _: None)
    return folder / name


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, host):
    """The same tiny spec run twice from scratch in separate folders."""
    folder = tmp_path_factory.mktemp("lb")
    small = edited(TINY, ("sweep = [0.05, 0.1]", "sweep = [0.05, 0.2]"),
                   ("eps_curve = [0.05, 0.2]", "eps_curve = []"))
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    return run(host, folder / "a", small), run(host, folder / "b", small), small, folder


def strip_timing(obj):
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def test_export_is_valid_ranked_and_keeps_every_point(two_runs):
    out, _, _, _ = two_runs
    doc = export_leaderboard(out)
    validate_leaderboard(doc)
    ranks = [e["rank"] for e in doc["entries"] if e["rank"] is not None]
    assert ranks == sorted(ranks) and ranks[0] == 1
    by_defense = {e["defense"]: e for e in doc["entries"]}
    assert len(by_defense["pgd-at"]["points"]) == 2 and len(by_defense["natural"]["points"]) == 1
    natural = by_defense["natural"]
    assert natural["target_acc"] == doc["benchmark"]["target_accuracies"]["natural"]
    assert natural["clean_acc"] == natural["points"][0]["clean_acc"]  # the measured model
    assert natural["robust_acc"] == natural["points"][0]["robust_acc"]  # read at its own accuracy
    low, high = natural["robust_acc_interval"]
    assert low <= natural["robust_acc"] <= high and natural["seeds_in_range"] == {"n": 1, "of": 1}
    assert natural["reading_status"] == "ok" and natural["rank_label"].startswith(str(natural["rank"]))
    assert natural["source_models"] == [{"seed": 0, "lower": None, "upper": {
        "knob": None, "value": None, "seed": 0, "clean_acc": natural["clean_acc"], "robust_acc": natural["robust_acc"]}}]
    assert doc["benchmark"]["bootstrap"]["resamples"] == 1000 and doc["benchmark"]["environment"]["device"] == "cpu"
    pgd = by_defense["pgd-at"]
    if pgd["robust_acc"] is None:  # cannot reach: its best model's clean accuracy is stated
        assert pgd["clean_acc"] == max(p["clean_acc"] for p in pgd["points"]) and pgd["rank"] is None
    else:
        assert pgd["clean_acc"] >= pgd["target_acc"]
    prov = natural["provenance"]
    assert prov["protocol_fingerprint"] == doc["benchmark"]["fingerprint"] and prov["seeds"] == [0]
    assert prov["n_examples"] == 40 and prov["spec_hash"] and prov["plugin_versions"]
    assert natural["audit"]["models_audited"] == 1
    matched = [m for m in natural["matched"] if m["metric"] == "worst-case" and m["target"] == "natural"]
    assert matched[0]["mean"] == natural["robust_acc"] and matched[0]["status"] == "ok"


def test_same_spec_and_seed_export_identically_apart_from_timing(two_runs):
    a, b, _, _ = two_runs
    assert strip_timing(export_leaderboard(a)) == strip_timing(export_leaderboard(b))


def test_cli_export_validate_and_merge(two_runs, host, tmp_path):
    a, b, _, _ = two_runs
    host_module._HOST = host
    runner = CliRunner()
    result = runner.invoke(cli, ["leaderboard", "export", str(a), "-o", str(tmp_path / "a.json")])
    assert result.exit_code == 0, result.output
    assert "natural" in result.output
    result = runner.invoke(cli, ["leaderboard", "validate", str(tmp_path / "a.json")])
    assert result.exit_code == 0 and "valid" in result.output
    runner.invoke(cli, ["leaderboard", "export", str(b), "-o", str(tmp_path / "b.json")])
    result = runner.invoke(cli, ["leaderboard", "merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                 "-o", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "m.json").read_text())
    # The same points from two machines: pooled without duplicates, the same matching.
    assert strip_timing([{k: v for k, v in e.items() if k != "provenance"} for e in merged["entries"]]) == \
        strip_timing([{k: v for k, v in e.items() if k != "provenance"}
                      for e in json.loads((tmp_path / "a.json").read_text())["entries"]])


def test_merge_pools_seeds_into_intervals(two_runs, host):
    a, _, text, folder = two_runs
    (folder / "seed1").mkdir()
    seed1 = run(host, folder / "seed1", edited(text, ("seeds = [0]", "seeds = [1]"), ("sweep = [0.05, 0.2]",
                                                                                      "sweep = [0.05, 0.2]")))
    merged = merge_leaderboards([("a", export_leaderboard(a)), ("seed1", export_leaderboard(seed1))])
    pgd = next(e for e in merged["entries"] if e["defense"] == "pgd-at")
    assert sorted({p["seed"] for p in pgd["points"]}) == [0, 1] and len(pgd["points"]) == 4
    assert merged["benchmark"]["seeds"] == [0, 1]
    readings = [m for m in pgd["matched"] if m["metric"] == "worst-case" and m["target"] == "0.5"]
    assert readings[0]["of"] == 2 and 0 <= readings[0]["n"] <= 2
    natural = next(e for e in merged["entries"] if e["defense"] == "natural")
    # Each seed's natural model is read at its own accuracy: in range on both seeds.
    assert natural["seeds_in_range"] == {"n": 2, "of": 2}
    assert natural["robust_acc"] == pytest.approx(sum(p["robust_acc"] for p in natural["points"]) / 2, abs=1e-3)


def test_merge_refuses_a_different_protocol(two_runs):
    a, _, _, _ = two_runs
    doc = export_leaderboard(a)
    other = copy.deepcopy(doc)
    other["entries"][0]["provenance"]["protocol_fingerprint"] = "0" * 20
    with pytest.raises(RobustkitError, match="protocol fingerprint"):
        merge_leaderboards([("a", doc), ("b", other)])
    other = copy.deepcopy(doc)
    other["benchmark"]["targets"] = [0.9]
    with pytest.raises(RobustkitError, match="targets"):
        merge_leaderboards([("a", doc), ("b", other)])
    other = copy.deepcopy(doc)
    other["benchmark"]["environment"]["threads"] = 7
    with pytest.raises(RobustkitError, match="numeric environments .threads"):
        merge_leaderboards([("a", doc), ("b", other)])
    plain = copy.deepcopy(doc)
    del plain["benchmark"]
    with pytest.raises(RobustkitError, match="not a benchmark leaderboard"):
        merge_leaderboards([("a", doc), ("plain", plain)])


def test_validate_refuses_entries_of_another_protocol_and_non_finite_numbers(two_runs):
    doc = export_leaderboard(two_runs[0])
    other = copy.deepcopy(doc)
    other["benchmark"]["fingerprint"] = "0" * 20
    with pytest.raises(RobustkitError, match=r"\$\.entries\[0\]\.provenance\.protocol_fingerprint is '[0-9a-f]+', "
                                             "but the file's benchmark.fingerprint is '0+'"):
        validate_leaderboard(other)
    nan = copy.deepcopy(doc)
    nan["entries"][0]["points"][0]["clean_acc"] = float("nan")
    with pytest.raises(RobustkitError, match=r"\$\.entries\[0\]\.points\[0\]\.clean_acc: a number must be finite"):
        validate_leaderboard(nan)


def test_a_benchmark_export_without_its_points_is_invalid(two_runs, tmp_path, host):
    """Merging re-ranks from the raw points: a benchmark file that lost them fails validation, not merge."""
    doc = export_leaderboard(two_runs[0])
    for entry in doc["entries"]:
        del entry["points"]
    path = tmp_path / "stripped.json"
    path.write_text(json.dumps(doc))
    host_module._HOST = host
    result = CliRunner().invoke(cli, ["leaderboard", "merge", str(path), str(path), "-o", str(tmp_path / "m.json")])
    assert result.exit_code == 2 and "'points' is a required property" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m.json").exists()


def test_validate_rejects_a_broken_file(tmp_path, host):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "robustkit-leaderboard", "entries": []}))
    host_module._HOST = host
    result = CliRunner().invoke(cli, ["leaderboard", "validate", str(bad)])
    assert result.exit_code == 2 and "Error:" in result.output and "Traceback" not in result.output


def test_export_of_an_empty_run_is_a_clear_error(tmp_path, host):
    spec = load_spec(str(write(tmp_path, TINY)), host)
    from robustkit.bench.runner import BENCHMARK_FILE, describe_benchmark
    from robustkit.files import atomic_write_text

    (tmp_path / "out").mkdir()
    atomic_write_text(tmp_path / "out" / BENCHMARK_FILE, json.dumps(describe_benchmark(spec, host)))
    with pytest.raises(RobustkitError, match="no finished cells"):
        export_leaderboard(tmp_path / "out")


def test_hard_positives_fine_tune_the_natural_model_of_the_same_settings(tmp_path, host):
    text = edited(TINY, ('''[[defenses]]
name = "pgd-at"
params = {steps = 2}
sweep = [0.05, 0.1]''', '''[[defenses]]
name = "hard-positives"
params = {base = "@natural", types = "fgv", gen_examples = 64}
sweep = [1.0]'''), ("audit = {steps", "audit = {enabled = false, steps"))
    out = run(host, tmp_path, text)
    records = [json.loads(p.read_text())["result"] for p in (out / "cells").glob("*.json")]
    natural = next(r for r in records if r["defense"] == "natural")
    hard = next(r for r in records if r["defense"] == "hard-positives")
    base = read_metadata(hard["training"]["checkpoint"])["defense"]["params"]["base"]
    assert Path(base) == Path(natural["training"]["checkpoint"])  # the natural cell's model, trained once
    assert len(list((out / "train").iterdir())) == 2
