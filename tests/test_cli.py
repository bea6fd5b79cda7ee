"""The command line as a user meets it: help, listings, plugins, train/attack/quickstart, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from robustkit.cli import cli
from robustkit.leaderboard import validate_leaderboard


def run(*args: str) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def robustkit(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The installed CLI in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "robustkit", *args], capture_output=True, text=True,
                          env={**os.environ, "ROBUSTKIT_PROGRESS": "0", **env}, timeout=300)


def test_python_dash_m_runs_every_command_either_way():
    for module in ("robustkit", "robustkit.cli"):  # the second once ran a copy of the group without commands
        done = subprocess.run([sys.executable, "-m", module, "bench", "--help"], capture_output=True, text=True,
                              env={**os.environ, "ROBUSTKIT_PROGRESS": "0"}, timeout=300)
        assert done.returncode == 0 and "Accuracy-matched" in done.stdout, (module, done.stderr)


def test_every_command_has_help_with_examples():
    top = run("--help")
    assert top.exit_code == 0
    commands = ["plugins", "train", "attack", "quickstart", "models list", "datasets list", "attacks list",
                "defenses list"]
    for command in commands:
        assert command.split()[0] in top.output
        result = run(*command.split(), "--help")
        assert result.exit_code == 0, result.output
        assert "Example" in result.output, f"`robustkit {command} --help` shows no example"


def test_plugins_table_and_json_show_builtins_and_the_example_plugin():
    table = run("plugins")
    assert table.exit_code == 0
    for name in ("datasets", "paper-models", "timm-models", "torchattacks", "baseline-defenses", "example"):
        assert name in table.output
    data = json.loads(run("plugins", "--json").output)
    by_name = {p["name"]: p for p in data["plugins"]}
    example = by_name["example"]
    assert example["distribution"] == "robustkit-plugin-example" and example["version"] == "0.1.0"
    assert example["hooks"] == ["register_attacks", "register_commands"]
    assert example["registered"] == {"attack": ["example:uniform-noise"]}
    assert "torchattacks:PGD" in by_name["torchattacks"]["registered"]["attack"]
    assert by_name["baseline-defenses"]["version"]


def test_listing_with_wildcards():
    out = run("attacks", "list", "torchattacks:PGD*").output
    assert "torchattacks:PGD " in out and "torchattacks:PGDL2" in out and "FGSM" not in out
    models = json.loads(run("models", "list", "timm:resnet1*", "--json").output)
    assert {"timm:resnet18", "timm:resnet101"} <= {m["name"] for m in models}
    defenses = run("defenses", "list", "--params").output
    assert "pgd-at" in defenses and "eps=" in defenses
    assert "digits" in run("datasets", "list").output


def test_attack_reports_the_worst_case_per_threat_and_unbounded_attacks_beside_it(tmp_path):
    result = run("attack", "--model", "lenet", "--n-examples", "30", "--out", str(tmp_path),
                 "--attack", "torchattacks:PGD eps=0.1 steps=3", "--attack", "torchattacks:FGSM eps=0.05",
                 "--attack", "torchattacks:PGDL2 eps=0.5 steps=3", "--attack", "art:DeepFool max_iter=5")
    assert result.exit_code == 0, result.output
    rows = {line.split("  ")[0].strip(): line.split() for line in result.output.splitlines() if line.startswith("(")}
    assert set(rows) == {"(clean)", "(worst case, linf eps 0.1)", "(worst case, linf eps 0.05)",
                         "(worst case, l2 eps 0.5)"}
    assert "in no worst case (no budget; their successes count at any distance): art:DeepFool" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    within = summary["worst_case_within_threat"]
    attacks = summary["attacks"]
    # One attack bounded in l2: its worst case is its own accuracy; linf 0.1 takes PGD and FGSM (eps 0.05 lies
    # inside it), linf 0.05 FGSM and whatever PGD found within 0.05.
    assert within["l2 eps 0.5"] == attacks["torchattacks:PGDL2"]["robust_accuracy"]
    assert within["linf eps 0.05"] <= attacks["torchattacks:FGSM"]["robust_accuracy"]
    assert within["linf eps 0.1"] <= min(attacks["torchattacks:PGD"]["robust_accuracy"], within["linf eps 0.05"])
    assert summary["not_in_any_worst_case"] == ["art:DeepFool"]
    assert summary["worst_case_accuracy"] <= min(within.values())  # any distance, every attack


def test_train_attack_and_resume_through_the_cli(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "lenet", "--defense", "pgd-at", "--param", "eps=0.1", "--param", "steps=2",
            "--epochs", "1", "--val-examples", "50", "--out", str(out)]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert (out / "last.safetensors").exists() and (out / "curves.png").exists()
    meta = json.loads((out / "last.json").read_text())
    assert meta["defense"]["name"] == "pgd-at" and meta["model"]["name"] == "lenet"
    again = run(*args)
    assert "already trained (1 epochs)" in again.output
    attacked = run("attack", str(out / "last.json"), "--attack", "torchattacks:FGSM eps=0.1",
                   "--n-examples", "40", "--metric", "pass", "--out", str(tmp_path / "eval"))
    assert attacked.exit_code == 0, attacked.output
    assert "mean pass" in attacked.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n_examples"] == 40
    assert len((tmp_path / "eval" / "records.jsonl").read_text().splitlines()) == 40


def test_train_with_an_eps_warm_up_records_it(tmp_path):
    out = tmp_path / "warm"
    result = run("train", "--model", "lenet", "--model-param", "width=0.25", "--defense", "pgd-at", "--param",
                 "eps=0.3", "--param", "steps=2", "--epochs", "3", "--eps-warmup", "2", "--val-examples", "20",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row.get("warmup_eps") for row in rows] == [pytest.approx(0.1), pytest.approx(0.2), None]
    assert json.loads((out / "last.json").read_text())["run"]["config"]["eps_warmup"] == 2


def test_quickstart_end_to_end_writes_a_valid_leaderboard(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "")  # the core's essential set alone runs it
    result = run("quickstart", "--epochs", "1", "--n-examples", "30", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    doc = validate_leaderboard(tmp_path / "leaderboard.json")
    assert {e["defense"] for e in doc["entries"]} == {"natural", "pgd-at"}
    for entry in doc["entries"]:
        assert isinstance(entry["clean_acc"], float) and 0 <= entry["robust_acc"] <= entry["clean_acc"]
        assert entry["provenance"]["n_examples"] == 30
        assert entry["provenance"]["attacks"][0]["attack"] == "pgd"
    assert "natural" in result.output and "pgd-at" in result.output


@pytest.mark.parametrize("args, message", [
    (["attack", "--model", "lenet", "--attack", "torchattacks:PDG"], "did you mean torchattacks:PGD"),
    (["attack", "--model", "lenet", "--attack", "torchattacks:PGD eps=2"], "eps"),
    (["attack", "--model", "lenet", "--attack", "torchattacks:PGD epz=0.1"], "unknown parameter 'epz'"),
    (["train", "--model", "lenet", "--defense", "pgd-at", "--param", "eps=-1"], "'eps' must be >"),
    (["train", "--model", "lenet", "--dataset", "mnist"], "--data-root"),
    (["train", "--model", "no-such-model", "--epochs", "1"], "unknown model 'no-such-model'"),
    (["attack", "--model", "lenet", "--attack", "torchattacks:FGSM", "--n-examples", "0"], "--n-examples"),
    (["attack", "--model", "lenet", "--attack", "torchattacks:FGSM", "--n-examples", "3",
      "--grid", "/dev/null/grid.png"], "cannot use /dev/null"),
])
def test_bad_input_is_one_line_with_exit_code_2(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_real_process_reports_errors_without_traceback(tmp_path):
    bad = tmp_path / "last.json"
    bad.write_text("{not json")
    proc = robustkit("attack", str(bad), "--attack", "torchattacks:FGSM")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and str(bad) in error_lines[0]


def test_a_broken_plugin_is_reported_and_the_rest_work(tmp_path):
    """A broken third-party plugin, installed the way pip installs one (dist-info with an entry point)."""
    site = tmp_path / "site"
    dist = site / "broken_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[robustkit]\nbroken = broken_plugin\n")
    (site / "broken_plugin.py").write_text("raise ImportError('needs a library that is not installed')\n")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))  # keep a PYTHONPATH install
    proc = robustkit("attacks", "list", "torchattacks:FGSM", PYTHONPATH=path)
    assert proc.returncode == 0
    assert "torchattacks:FGSM" in proc.stdout
    assert "plugin 'broken' failed to load: ImportError: needs a library that is not installed" in proc.stderr
    blocked = robustkit("attacks", "list", "torchattacks:FGSM", PYTHONPATH=path,
                        ROBUSTKIT_BLOCK_PLUGINS="broken")
    assert "broken" not in blocked.stderr
