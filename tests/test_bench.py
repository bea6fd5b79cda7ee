"""The benchmark subsystem: spec validation (API and CLI), cell keys, presets, an end-to-end run with its
report, reuse of recorded cells and trained weights, resume after a killed process, parallel runs,
worst-case semantics of minimal-distortion attacks, and Ctrl-C.

Expensive work is shared: one end-to-end run of a three-cell spec (module fixture ``e2e``) serves the
report, reuse, resume and matched-value tests. Cells are tiny (LeNet at width 0.25 on digits, one epoch,
40 evaluation examples), so a cell takes well under a second once torch is warm. What costs time is the
start-up of every new process (importing torch, scikit-learn, torch._dynamo for the first optimizer:
tens of seconds of CPU without compiled bytecode): the run killed for the resume test therefore starts
in the background with the module's first test, and only the ``jobs=2`` test waits for two workers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import base64

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import robustkit.host as host_module
from robustkit import hookimpl
from robustkit.bench import runner
from robustkit.bench import metrics as bench_metrics
from robustkit.bench.analysis import is_accuracy, load_run, metrics
from robustkit.bench.cells import within_threat
from robustkit.bench.presets import preset_from_file
from robustkit.bench.report import write_report
from robustkit.bench.runner import run_benchmark
from robustkit.bench.spec import SpecError, load_spec, parse_spec
from robustkit.cli import cli
from robustkit.compat import tomllib
from robustkit.errors import RobustkitError
from robustkit.evaluation import AttackOutcome, SampleRecord, build_result
from robustkit.attacks import Attack, AttackResult
from robustkit.host import make_host
from robustkit.params import Param
from robustkit.protocol import Point, read_at
from robustkit.store import ResultStore, cell_key

# Two attacks (one fixed-budget, one minimal-distortion), the audit with a cheap black box, and three
# cells: natural plus PGD-AT at two eps. Replacements in the tests below edit this text.
TINY = """\
name = "tiny"
description = "natural and PGD-AT on digits, seconds on a CPU"
seeds = [0]
dataset = {name = "digits"}
model = {name = "lenet", params = {width = 0.25}}
training = {epochs = 1, batch_size = 64, lr = 5e-3, val_examples = 0}
threat = {norm = "linf", eps = 0.1}
evaluation = {n_examples = 40, eps_curve = [0.05, 0.2]}
protocol = {targets = ["natural", 0.5], rank_by = "worst-case"}
audit = {steps = 2, more_steps = 4, black_box = {name = "torchattacks:Square", label = "square", params = {n_queries = 20}}}

[[attacks]]
name = "torchattacks:PGD"
label = "pgd"
params = {alpha = 0.04, steps = 3}

[[attacks]]
name = "art:DeepFool"
label = "deepfool"
params = {max_iter = 10, batch_size = 64, verbose = false}

[[defenses]]
name = "natural"

[[defenses]]
name = "pgd-at"
params = {steps = 2}
sweep = [0.05, 0.1]
"""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Every host here, in this process or another, leaves out the timm plugin: nothing here uses it, and
# listing timm's architectures imports timm (seconds) whenever its cache is cold (the tests' cache is
# a fresh temporary folder).
NO_TIMM = {"ROBUSTKIT_BLOCK_PLUGINS": "timm-models"}


@pytest.fixture(scope="module")
def host():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_BLOCK_PLUGINS", NO_TIMM["ROBUSTKIT_BLOCK_PLUGINS"])
        return make_host()


@pytest.fixture
def no_timm(monkeypatch):
    """Hosts built during the test (plugin hosts, worker processes) leave out timm too."""
    monkeypatch.setenv("ROBUSTKIT_BLOCK_PLUGINS", NO_TIMM["ROBUSTKIT_BLOCK_PLUGINS"])


def edited(text: str, *replacements: tuple[str, str]) -> str:
    for old, new in replacements:
        assert text.count(old) == 1, f"{old!r} must occur once in the spec text"
        text = text.replace(old, new)
    return text


def write(folder: Path, text: str, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def invoke(host, args: list[str]):
    """Run the CLI in this process on ``host`` (building the process-wide host per test costs time)."""
    host_module._HOST = host  # the conftest fixture resets it after the test
    return CliRunner().invoke(cli, args)


def keys(spec) -> list[str]:
    return [c.key for c in spec.cells()]


def record_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "cells").glob("*.json"))}


# --- 1. spec validation ------------------------------------------------------------------------

# (id, replacements in TINY, JSON path the message names, fragment of the message)
BAD_SPECS = [
    ("unknown-key", [("epochs = 1,", "epoch = 1,")], "$.training", "'epoch' was unexpected"),
    ("unknown-top-level-key", [('seeds = [0]', 'seeds = [0]\nseed = 0')], "$", "'seed' was unexpected"),
    ("wrong-type", [("epochs = 1,", 'epochs = "one",')], "$.training.epochs", "is not of type 'integer'"),
    ("wrong-type-list", [("seeds = [0]", "seeds = 0")], "$.seeds", "is not of type 'array'"),
    ("float-epochs", [("epochs = 1,", "epochs = 1.0,")], "$.training", "epochs must be an integer"),
    ("unknown-dataset", [('{name = "digits"}', '{name = "digit"}')], "$.dataset.name", "did you mean digits"),
    ("unknown-model", [('name = "lenet"', 'name = "lenett"')], "$.model.name", "did you mean lenet"),
    ("bad-model-param", [("width = 0.25", "widht = 0.25")], "$.model.params", "did you mean width"),
    ("bad-dataset-param", [('{name = "digits"}', '{name = "digits", params = {test_fraction = 5}}')],
     "$.dataset.params", "test_fraction"),
    ("unknown-attack", [('"torchattacks:PGD"', '"torchattacks:PDG"')], "$.attacks[0].name",
     "did you mean torchattacks:PGD"),
    ("bad-attack-param", [("alpha = 0.04, steps = 3", "alpha = 0.04, stepz = 3")], "$.attacks[0].params",
     "unknown parameter 'stepz'; did you mean steps"),
    ("unknown-black-box", [("torchattacks:Square", "torchattacks:Sqare")], "$.audit.black_box.name",
     "did you mean torchattacks:Square"),
    ("unknown-defense", [('name = "pgd-at"', 'name = "pgd_at"')], "$.defenses[1].name", "did you mean pgd-at"),
    ("bad-eps-curve", [("eps_curve = [0.05, 0.2]", "eps_curve = [0.05, 2.0]")], "$.evaluation.eps_curve[1]",
     "exceeds the data range"),
    ("bad-sweep-value", [("sweep = [0.05, 0.1]", "sweep = [0.05, 2.0]")], "$.defenses[1]",
     "exceeds the data range"),
    ("bad-sweep-type", [("sweep = [0.05, 0.1]", 'sweep = [0.05, "big"]')], "$.defenses[1]",
     "must be of type float"),
    ("duplicate-sweep-value", [("sweep = [0.05, 0.1]", "sweep = [0.1, 0.1]")], "$.defenses[1].sweep",
     "sweep value 0.1 appears twice"),
    ("sweep-without-knob", [('name = "natural"\n', 'name = "natural"\nsweep = [1, 2]\n')], "$.defenses[0].sweep",
     "declares no trade-off knob"),
    ("knob-also-fixed", [("params = {steps = 2}", "params = {steps = 2, eps = 0.1}")], "$.defenses[1].params",
     "'eps' is swept"),
    ("duplicate-defense-labels", [('name = "pgd-at"', 'name = "pgd-at"\nlabel = "natural"')], "$.defenses",
     "'natural' appears twice"),
    ("duplicate-attack-labels", [('label = "deepfool"', 'label = "pgd"')], "$.attacks", "'pgd' appears twice"),
    ("unknown-target-label", [('targets = ["natural", 0.5]', 'targets = ["naturel", 0.5]')],
     "$.protocol.targets[0]", "'naturel'"),
    ("bad-rank-by", [('rank_by = "worst-case"', 'rank_by = "best"')], "$.protocol.rank_by", "'best'"),
    ("linf-eps-above-1", [("eps = 0.1}", "eps = 8}")], "$.threat.eps", "exceeds the data range"),
    ("curve-attack-without-eps", [("eps_curve = [0.05, 0.2]", 'eps_curve = [0.05, 0.2], curve_attack = "deepfool"')],
     "$.evaluation.curve_attack", "takes no eps"),
    ("invalid-toml", [("epochs = 1,", "epochs = = 1,")], "", "not valid TOML"),
    # The threat model holds: an attack whose own norm or budget contradicts it is refused.
    ("linf-attack-for-l2-threat", [('norm = "linf", eps = 0.1', 'norm = "l2", eps = 0.5')], "$.attacks[0].name",
     "torchattacks:PGD bounds linf eps 0.5, not the threat model's l2 eps 0.5; use an attack that bounds l2"),
    ("attack-eps-above-threat", [("alpha = 0.04, steps = 3", "alpha = 0.04, steps = 3, eps = 0.2")],
     "$.attacks[0].params", "torchattacks:PGD has eps 0.2, above the threat model's linf eps 0.1"),
    ("black-box-of-another-norm", [("params = {n_queries = 20}", 'params = {n_queries = 20, norm = "L2"}')],
     "$.audit.black_box.name", "torchattacks:Square bounds l2 eps 0.1, not the threat model's linf eps 0.1; "
     'set params.norm = "linf"'),
]


@pytest.mark.parametrize("replacements, where, fragment",
                         [pytest.param(r, w, f, id=i) for i, r, w, f in BAD_SPECS])
def test_bad_spec_fails_with_one_line(tmp_path, host, replacements, where, fragment):
    path = write(tmp_path, edited(TINY, *replacements))
    with pytest.raises(SpecError) as caught:
        load_spec(str(path), host)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {where}: " if where else f"{path}: "), message
    assert fragment in message

    result = invoke(host, ["bench", "show", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"Error: {message}"


def test_bad_spec_fails_before_bench_run_writes_anything(tmp_path, host):
    path = write(tmp_path, edited(TINY, ("epochs = 1,", "epoch = 1,")))
    out = tmp_path / "out"
    result = invoke(host, ["bench", "run", str(path), "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and "'epoch' was unexpected" in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def test_parse_spec_validates_a_dict(host):
    doc = tomllib.loads(TINY)
    doc["training"]["epoch"] = 1
    with pytest.raises(SpecError, match=r"^inline: \$\.training: .*'epoch' was unexpected"):
        parse_spec(doc, "inline", host)


def test_missing_file_and_unknown_preset(tmp_path, host):
    missing = tmp_path / "nope.toml"
    with pytest.raises(SpecError, match=f"benchmark spec {missing} does not exist"):
        load_spec(str(missing), host)
    with pytest.raises(SpecError, match=r"unknown benchmark 'quik'; did you mean quick\?.*path of a \.toml"):
        load_spec("quik", host)

    text = write(tmp_path, TINY, "spec.txt")
    with pytest.raises(SpecError, match=r"unknown benchmark '.*spec\.txt'.*path of a \.toml/\.yaml spec file"):
        load_spec(str(text), host)

    for arg, fragment in ((str(missing), "does not exist"), ("quik", "did you mean quick?")):
        result = invoke(host, ["bench", "show", arg])
        assert result.exit_code == 2
        assert result.stderr.startswith("Error: ") and fragment in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("bad, fragment", [("name: [unclosed", "not valid YAML"), ("- a list", "a table of settings")])
def test_bad_yaml(tmp_path, host, bad, fragment):
    path = write(tmp_path, bad, "spec.yaml")
    with pytest.raises(SpecError, match=fragment) as caught:
        load_spec(str(path), host)
    assert "\n" not in str(caught.value)


def test_yaml_and_json_specs_equal_to_the_toml_one_give_the_same_cells(tmp_path, host):
    doc = tomllib.loads(TINY)
    from_toml = load_spec(str(write(tmp_path, TINY)), host)
    from_yaml = load_spec(str(write(tmp_path, yaml.safe_dump(doc, sort_keys=False), "spec.yaml")), host)
    from_yml = load_spec(str(write(tmp_path, yaml.safe_dump(doc), "spec.yml")), host)
    from_json = load_spec(str(write(tmp_path, json.dumps(doc), "spec.json")), host)
    for other in (from_yaml, from_yml, from_json):
        assert keys(other) == keys(from_toml)
        assert [c.train_key for c in other.cells()] == [c.train_key for c in from_toml.cells()]
        assert other.fingerprint() == from_toml.fingerprint()
        assert other.spec_hash() == from_toml.spec_hash()


# --- 2. cell keys ------------------------------------------------------------------------------


def test_cell_key_is_a_hash_of_canonical_json():
    settings = {"b": [1, 2.5, None], "a": {"y": True, "x": "s"}}
    canonical = '{"a":{"x":"s","y":true},"b":[1,2.5,null]}'
    assert cell_key(settings) == hashlib.sha256(canonical.encode()).hexdigest()[:20]
    assert cell_key(dict(reversed(list(settings.items())))) == cell_key(settings)
    assert cell_key({**settings, "b": (1, 2.5, None)}) == cell_key(settings)  # tuples are lists


def test_cells_and_keys_are_stable(host):
    doc = tomllib.loads(TINY)
    spec = parse_spec(copy.deepcopy(doc), "a", host)
    cells = spec.cells()
    assert [(c.defense, c.knob, c.value, c.seed) for c in cells] == [
        ("natural", None, None, 0), ("pgd-at", "eps", 0.05, 0), ("pgd-at", "eps", 0.1, 0)]
    assert len(set(keys(spec))) == 3 and len({c.train_key for c in cells}) == 3
    for c in cells:
        assert c.key == cell_key(c.settings) and c.train_key == cell_key(c.train_settings)
        assert json.loads(json.dumps(c.settings)) == c.settings  # plain JSON: a cell can run anywhere
    assert cells[1].settings["defense"]["params"] == {"steps": 2, "eps": 0.05}
    assert cells[1].settings["attacks"][0]["params"]["eps"] == 0.1  # the threat's eps fills the attack's

    # The same spec read again, with its tables in another order, under another source name or data root
    reordered = {k: doc[k] for k in reversed(list(doc))}
    for other in (parse_spec(copy.deepcopy(doc), "b", host), parse_spec(reordered, "c", host),
                  parse_spec(copy.deepcopy(doc), "d", host, data_root="/elsewhere")):
        assert keys(other) == keys(spec)
        assert other.fingerprint() == spec.fingerprint()
    # The description is documentation only.
    assert keys(parse_spec({**copy.deepcopy(doc), "description": "other words"}, "e", host)) == keys(spec)


def load_spec_text(host, text):
    return parse_spec(tomllib.loads(text), "variant", host)


def variant(host, *replacements):
    """TINY with some settings changed."""
    return load_spec_text(host, edited(TINY, *replacements))


@pytest.mark.parametrize("replacements", [
    pytest.param([("alpha = 0.04, steps = 3", "alpha = 0.04, steps = 4")], id="attack-param"),
    pytest.param([("max_iter = 10", "max_iter = 12")], id="second-attack-param"),
    pytest.param([("n_examples = 40", "n_examples = 41")], id="evaluation"),
    pytest.param([("more_steps = 4", "more_steps = 5")], id="audit"),
    # The threat's eps is also training's default val_eps (the per-epoch PGD check); fixed, it stays out.
    pytest.param([("eps = 0.1}", "eps = 0.12}"), ("val_examples = 0}", "val_examples = 0, val_eps = 0.1}")],
                 id="threat-with-fixed-val-eps"),
])
def test_evaluation_changes_change_cell_keys_but_reuse_training(host, replacements):
    base, changed = load_spec_text(host, TINY), variant(host, *replacements)
    assert not set(keys(base)) & set(keys(changed))
    assert [c.train_key for c in changed.cells()] == [c.train_key for c in base.cells()]
    assert changed.fingerprint() != base.fingerprint()


@pytest.mark.parametrize("replacements", [
    pytest.param([("epochs = 1,", "epochs = 2,")], id="epochs"),
    pytest.param([("lr = 5e-3", "lr = 1e-3")], id="lr"),
    pytest.param([("width = 0.25", "width = 0.5")], id="model-param"),
    pytest.param([('{name = "digits"}', '{name = "digits", params = {split_seed = 1}}')], id="dataset-param"),
])
def test_training_changes_change_cell_and_train_keys(host, replacements):
    base, changed = load_spec_text(host, TINY), variant(host, *replacements)
    assert not set(keys(base)) & set(keys(changed))
    assert not {c.train_key for c in base.cells()} & {c.train_key for c in changed.cells()}
    assert changed.fingerprint() != base.fingerprint()


def test_threat_eps_reaches_training_only_through_validation(host):
    """The threat's eps is the per-epoch PGD check's default eps; without validation it stays out of training."""
    validated = variant(host, ("val_examples = 0}", "val_examples = 8}"))
    wider = variant(host, ("val_examples = 0}", "val_examples = 8}"), ("eps = 0.1}", "eps = 0.12}"))
    assert not {c.train_key for c in validated.cells()} & {c.train_key for c in wider.cells()}
    unvalidated = variant(host, ("eps = 0.1}", "eps = 0.12}"))
    assert [c.train_key for c in unvalidated.cells()] == [c.train_key for c in load_spec_text(host, TINY).cells()]


def test_fingerprint_ignores_defenses_and_seeds_and_new_points_keep_old_keys(host):
    base = load_spec_text(host, TINY)
    more = variant(host, ("seeds = [0]", "seeds = [0, 1]"), ("sweep = [0.05, 0.1]", "sweep = [0.05, 0.1, 0.2]"),
                    ('name = "natural"\n', 'name = "natural"\n\n[[defenses]]\nname = "trades"\nsweep = [1.0]\n'))
    assert more.fingerprint() == base.fingerprint()
    assert more.spec_hash() != base.spec_hash()
    assert set(keys(base)) < set(keys(more))  # adding seeds and sweep points reuses every recorded cell
    assert len(more.cells()) == 2 * 5
    # A different defense parameter changes only that defense's cells.
    steps = variant(host, ("params = {steps = 2}", "params = {steps = 3}"))
    assert steps.fingerprint() == base.fingerprint()
    assert keys(steps)[0] == keys(base)[0] and not set(keys(steps)[1:]) & set(keys(base))


# --- 3. presets and the CLI listing ------------------------------------------------------------


def test_bench_list_shows_quick(host):
    result = invoke(host, ["bench", "list"])
    assert result.exit_code == 0, result.output
    assert "quick" in result.output and "presets" in result.output

    result = invoke(host, ["bench", "list", "--json"])
    assert result.exit_code == 0
    entries = {e["name"]: e for e in json.loads(result.output)}
    assert entries["quick"]["plugin"] == "presets" and entries["quick"]["description"]

    result = invoke(host, ["bench", "list", "no-such-*"])
    assert result.exit_code == 0 and "no benchmark presets match" in result.output


def test_bench_show_quick_validates(host):
    spec = load_spec("quick", host)
    assert spec.source == "preset quick"
    doc = host.benchmarks.create("quick")
    expected = len(doc.get("seeds", [0])) * sum(len(d.get("sweep", [None])) for d in doc["defenses"])
    assert len(spec.cells()) == len(set(keys(spec))) == expected
    assert keys(load_spec(Path("quick"), host)) == keys(spec)  # a Path names a preset too
    result = invoke(host, ["bench", "show", "quick"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("quick: ")
    assert f"protocol fingerprint {spec.fingerprint()}" in result.output
    for key in keys(spec):
        assert key in result.output


def test_every_registered_preset_validates(host):
    assert "quick" in host.benchmarks
    failures = {}
    for entry in host.benchmarks:
        try:
            assert load_spec(entry.name, host).cells()
        except SpecError as err:
            failures[entry.name] = str(err)
    assert not failures


def test_third_party_plugin_registers_a_preset(tmp_path, host, no_timm):
    path = write(tmp_path, edited(TINY, ('name = "tiny"', 'name = "mine"')), "mine.toml")
    plugin = types.ModuleType("my_plugin")

    def register_benchmarks(register):
        factory = preset_from_file(path)
        register("my-bench", factory, description=factory.description)

    plugin.register_benchmarks = hookimpl(register_benchmarks)
    mine = make_host(plugins=[("my-plugin", plugin)])
    assert all(f.plugin != "my-plugin" for f in mine.failures)
    assert "my-bench" in mine.benchmarks and "quick" in mine.benchmarks
    entry = mine.benchmarks.get("my-bench")
    assert entry.plugin == "my-plugin" and entry.description.startswith("natural and PGD-AT")
    assert mine.records["my-plugin"].registered["benchmark"] == ["my-bench"]

    spec = load_spec("my-bench", mine)
    assert spec.name == "mine" and spec.source == "preset my-bench"
    assert keys(spec) == keys(load_spec(str(path), mine))
    # Each use gets its own copy of the document.
    mine.benchmarks.create("my-bench")["training"]["epochs"] = 99
    assert load_spec("my-bench", mine).training["epochs"] == 1

    result = invoke(mine, ["bench", "list"])
    assert "my-bench" in result.output and "my-plugin" in result.output
    result = invoke(mine, ["bench", "show", "my-bench"])
    assert result.exit_code == 0 and result.output.startswith("mine: ")


class OverBudget(Attack):
    """Claims linf eps but returns the image pushed 3 eps towards the far end of [0, 1]: out of budget."""

    name = "over-budget"
    threat_models = ("linf",)
    params = (Param("eps", float, 0.1, "claimed budget"),)

    def perturb(self, model, images, labels, target_labels=None):
        return AttackResult((images + torch.where(images < 0.5, 3.0, -3.0) * self.config["eps"]).clamp(0, 1))


def test_an_attack_returning_images_outside_the_threat_is_flagged_and_not_counted(tmp_path, host, no_timm):
    plugin = types.ModuleType("liar_plugin")
    plugin.register_attacks = hookimpl(lambda register: register("over-budget", OverBudget))
    liar = make_host(plugins=[("liar", plugin)])
    text = edited(TINY, ('name = "art:DeepFool"\nlabel = "deepfool"\nparams = {max_iter = 10, batch_size = 64, '
                         'verbose = false}', 'name = "over-budget"\nlabel = "liar"'),
                  ("sweep = [0.05, 0.1]", "sweep = [0.1]"), ("eps_curve = [0.05, 0.2]", "eps_curve = []"))
    spec = load_spec(str(write(tmp_path, text)), liar)
    summary = run_benchmark(spec, tmp_path / "out", liar, say=lambda line: None)
    assert not summary.failed
    for record in load_run(tmp_path / "out").records:
        liar_facts = record["attacks"]["liar"]
        fooled_anywhere = liar_facts["n_success"]
        assert fooled_anywhere > 0 and liar_facts["n_outside_threat"] == fooled_anywhere
        assert liar_facts["robust_accuracy"] == record["clean_accuracy"]  # none of its successes count
        assert record["worst_case_accuracy"] == record["attacks"]["pgd"]["robust_accuracy"]
        assert record["threat_flags"] == [f"liar: {fooled_anywhere} successful adversarial(s) outside the threat "
                                          "linf eps 0.1, counted as not broken"]
    write_report(tmp_path / "out")
    assert "outside the threat" in (tmp_path / "out" / "report.md").read_text()


def test_broken_preset_file_is_a_plugin_failure(tmp_path, no_timm):
    path = write(tmp_path, "name = = 1", "broken.toml")
    plugin = types.ModuleType("broken_plugin")
    plugin.register_benchmarks = hookimpl(lambda register: register("broken", preset_from_file(path)))
    other = make_host(plugins=[("broken-plugin", plugin)])
    assert "broken" not in other.benchmarks and "quick" in other.benchmarks
    assert [f.plugin for f in other.failures if f.plugin == "broken-plugin"] == ["broken-plugin"]


# --- 5. end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, host, one_torch_thread):
    """One ``bench run`` of TINY through the CLI: (out folder, spec, CLI output)."""
    folder = tmp_path_factory.mktemp("bench-e2e")
    path = write(folder, TINY)
    out = folder / "out"
    started = time.perf_counter()
    result = invoke(host, ["bench", "run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    print(f"end-to-end run: {time.perf_counter() - started:.1f} s")
    return out, load_spec(str(path), host), result.output


def test_run_writes_records_benchmark_and_report(e2e):
    out, spec, output = e2e
    cells = spec.cells()
    assert set(record_files(out)) == {f"{c.key}.json" for c in cells}
    for name in ("benchmark.json", "report.md", "robustness_curves.png", "accuracy_vs_eps.png"):
        assert (out / name).is_file(), name
    for name in ("robustness_curves.png", "accuracy_vs_eps.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC

    benchmark = json.loads((out / "benchmark.json").read_text())
    assert benchmark["cells"] == [c.key for c in cells]
    assert benchmark["fingerprint"] == spec.fingerprint() and benchmark["spec_hash"] == spec.spec_hash()
    assert [d["label"] for d in benchmark["defenses"]] == ["natural", "pgd-at"]
    assert {a["label"]: a["goal"] for a in benchmark["attacks"]} == {"pgd": "fixed-budget",
                                                                    "deepfool": "minimal-distortion"}

    # Training went to one folder per train key; the natural cell's weights are also the audit's surrogate.
    assert {p.name for p in (out / "train").iterdir()} == {c.train_key for c in cells}
    assert "done 3/3" in output and "3 cells, 0 already recorded" in output

    report = (out / "report.md").read_text()
    assert report.startswith("# Benchmark `tiny`")
    for fragment in ("natural", "pgd-at", "## Gradient-masking audit", spec.fingerprint(), "cells recorded: 3 of 3",
                     "![robustness_curves](robustness_curves.png)", "![accuracy_vs_eps](accuracy_vs_eps.png)"):
        assert fragment in report, fragment


def test_records_hold_what_the_cell_measured(e2e):
    out, spec, _ = e2e
    store = ResultStore(out)
    for cell in spec.cells():
        stored = store.get(cell.key)
        assert stored["key"] == cell.key and stored["settings"] == cell.settings
        r = stored["result"]
        assert (r["defense"], r["knob"], r["knob_value"], r["seed"]) == (cell.defense, cell.knob, cell.value, 0)
        assert r["n_examples"] == 40 and 0 <= r["clean_accuracy"] <= 1
        assert r["n_clean_wrong"] == round(40 * (1 - r["clean_accuracy"]))
        assert set(r["attacks"]) == {"pgd", "deepfool"}
        assert r["attacks"]["deepfool"]["goal"] == "minimal-distortion"
        for attack in r["attacks"].values():
            assert r["worst_case_accuracy"] <= attack["robust_accuracy"] <= r["clean_accuracy"]
        assert [p["eps"] for p in r["eps_curve"]] == [0.05, 0.2]
        assert all(0 <= p["accuracy"] <= r["clean_accuracy"] for p in r["eps_curve"])
        assert r["training"]["train_key"] == cell.train_key and r["training"]["epochs"] == 1
        assert r["training"]["cost_passes_per_batch"] == (1.0 if cell.defense == "natural" else 3.0)
        checks = r["audit"]["checks"]
        expected = {"unbounded", "more_steps", "black_box"} | ({"transfer"} if cell.defense != "natural" else set())
        assert set(checks) == expected
        assert r["audit"]["flags"] == [name for name, check in checks.items() if not check["passed"]]
        assert checks["unbounded"]["accuracy"] <= 0.05  # a plain CNN falls to ~0 under an unbounded attack
        assert r["versions"]["plugins"]["presets"] is not None


def test_rerun_recomputes_nothing(e2e, host, monkeypatch):
    out, spec, _ = e2e
    before = {p: p.stat().st_mtime_ns for folder in ("cells", "train") for p in (out / folder).rglob("*")
              if p.is_file()}

    def no_cell(*args, **kwargs):
        raise AssertionError("a recorded cell ran again")

    monkeypatch.setattr(runner, "run_cell", no_cell)
    said = []
    summary = run_benchmark(spec, out, host, say=said.append)
    assert (summary.total, summary.reused, summary.finished, summary.failed) == (3, 3, [], {})
    assert said == [f"benchmark tiny: 3 cells, 3 already recorded in {out}, 0 to run with "
                    f"{torch.get_num_threads()} torch thread(s) each"]
    assert {p: p.stat().st_mtime_ns for folder in ("cells", "train") for p in (out / folder).rglob("*")
            if p.is_file()} == before


def test_a_folder_keeps_one_numeric_environment(e2e, host):
    out, spec, _ = e2e
    recorded = json.loads((out / "benchmark.json").read_text())["environment"]
    assert recorded == {"device": "cpu", "threads": torch.get_num_threads(), "dtype": "float32",
                        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    other = torch.get_num_threads() + 1
    with pytest.raises(RobustkitError, match=rf"different numeric environment \(threads {recorded['threads']} vs "
                                             rf"{other}, recorded vs now\); pass --threads {recorded['threads']}"):
        run_benchmark(spec, out, host, threads=other, say=lambda line: None)
    result = invoke(host, ["bench", "run", str(spec.source), "--out", str(out), "--threads", str(other)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert json.loads((out / "benchmark.json").read_text())["environment"] == recorded  # nothing rewritten


def test_changed_attack_reevaluates_without_retraining(e2e, host, tmp_path, monkeypatch):
    out, spec, _ = e2e
    copy_ = tmp_path / "out"
    shutil.copytree(out, copy_)  # keeps mtimes

    def trained_files():  # what training wrote (the .lock file is opened, so touched, by every use)
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (copy_ / "train").rglob("*")
                if p.is_file() and p.name != ".lock"}

    checkpoints = trained_files()
    assert any(p.suffix == ".safetensors" for p in checkpoints)
    old_records = record_files(copy_)

    changed = load_spec_text(host, edited(TINY, ("alpha = 0.04, steps = 3", "alpha = 0.04, steps = 4")))
    assert [c.train_key for c in changed.cells()] == [c.train_key for c in spec.cells()]

    import robustkit.training as training

    epochs = []
    real_epoch = training._train_epoch
    monkeypatch.setattr(training, "_train_epoch", lambda *a, **k: epochs.append(1) or real_epoch(*a, **k))
    summary = run_benchmark(changed, copy_, host, say=lambda line: None)
    assert summary.reused == 0 and sorted(summary.finished) == sorted(keys(changed)) and not summary.failed
    assert epochs == []  # no epoch trained
    assert trained_files() == checkpoints
    after = record_files(copy_)
    assert {k: after[k] for k in old_records} == old_records  # append-only: the old records stay
    assert set(after) == set(old_records) | {f"{k}.json" for k in keys(changed)}
    run = load_run(copy_)  # the report reads the current spec's cells only
    assert run.complete and len(run.records) == 3
    assert all(r["training"]["train_key"] == c.train_key for r, c in zip(run.records, changed.cells()))
    # Same weights, so the same clean accuracy; DeepFool's results do not depend on the other attack.
    old = {r["result"]["knob_value"]: r["result"] for r in ResultStore(out)}
    for r in run.records:
        assert r["clean_accuracy"] == old[r["knob_value"]]["clean_accuracy"]
        assert r["attacks"]["deepfool"] == {**old[r["knob_value"]]["attacks"]["deepfool"],
                                            "seconds": r["attacks"]["deepfool"]["seconds"]}


def _hand_value(record, metric):
    """A record's value of ``metric`` recomputed from its stored per-example outcomes, by hand."""
    o = record["outcomes"]
    n = o["n"]
    bits = lambda text: np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8), count=n).astype(bool)  # noqa
    clean = bits(o["clean_correct"])
    fooled = {k: bits(v["fooled"]) for k, v in o["attacks"].items()}
    if metric == "worst-case":
        return float(np.mean(clean & ~np.any(list(fooled.values()), axis=0)))
    if metric.endswith(":rho"):
        label = metric[:-4]
        l2 = np.frombuffer(base64.b64decode(o["attacks"][label]["l2"]), "<f4")
        success = bits(o["attacks"][label]["success"])
        counted = ~clean | success
        values = np.where(clean, l2, 0.0)[counted]
        return float(values.mean()) if values.size else None
    return float(np.mean(clean & ~fooled[metric]))


def test_matched_values_agree_with_a_hand_computation(e2e):
    out, spec, _ = e2e
    run = load_run(out)
    assert metrics(run.benchmark) == ["worst-case", "pgd", "deepfool:rho", "deepfool:rho-median",
                                      "deepfool:rho-success"]
    analysis = run.analysis()
    natural = [r for r in run.records if r["defense"] == "natural"]
    assert [(t.name, t.value) for t in analysis.targets] == [("natural", natural[0]["clean_accuracy"]), ("0.5", 0.5)]
    for r in run.records:  # the summary numbers of a record are its outcomes' numbers
        assert _hand_value(r, "worst-case") == pytest.approx(r["worst_case_accuracy"])
        assert _hand_value(r, "pgd") == pytest.approx(r["attacks"]["pgd"]["robust_accuracy"])
        rho = _hand_value(r, "deepfool:rho")
        assert rho == pytest.approx(r["attacks"]["deepfool"]["rho"]) if rho is not None else True
    for defense in ("natural", "pgd-at"):
        own = [r for r in run.records if r["defense"] == defense]
        for target in analysis.targets:
            for metric in ("worst-case", "pgd", "deepfool:rho"):
                points = [Point(r["clean_accuracy"], _hand_value(r, metric)) for r in own
                          if _hand_value(r, metric) is not None]
                got = analysis.comparison(target.name, metric).readings[defense]
                expected = read_at(points, target.value)
                assert got.value == pytest.approx(expected.value) if expected.value is not None else got.value is None
                assert got.status == expected.status and (got.n_in_range, got.n_seeds) == (int(got.value is not None), 1)
                if got.value is not None:
                    assert got.low <= got.value <= got.high  # the measured value lies in its interval
    # The natural defense read at its own accuracy is its own point, and always in range.
    reading = analysis.comparison("natural", "worst-case").readings["natural"]
    assert reading.value == natural[0]["worst_case_accuracy"] and reading.status == "ok"

    # In range, by the interpolation formula: a target a quarter of the way between PGD-AT's two points
    # (when both are on its frontier).
    a, b = sorted((r for r in run.records if r["defense"] == "pgd-at"), key=lambda r: r["clean_accuracy"])
    (ca, ra), (cb, rb) = ((r["clean_accuracy"], r["attacks"]["pgd"]["robust_accuracy"]) for r in (a, b))
    run.benchmark["targets"] = [ca + 0.25 * (cb - ca)]
    run._analysis = None
    got = run.analysis().comparison(metric="pgd").readings["pgd-at"]
    if cb > ca and ra > rb:
        assert got.value == pytest.approx(ra + 0.25 * (rb - ra))
    else:  # one point dominates the other: the better one is read, never an average
        assert got.value == max(ra, rb) if cb == ca else got.value == rb


def test_metrics_of_attacks_labelled_by_their_names():
    """An attack without a label is labelled by its name, colon included (torchattacks:PGD)."""
    benchmark = {"attacks": [{"label": "torchattacks:PGD", "goal": "fixed-budget"},
                             {"label": "art:DeepFool", "goal": "minimal-distortion"}]}
    names = metrics(benchmark)
    assert names == ["worst-case", "torchattacks:PGD", "art:DeepFool:rho", "art:DeepFool:rho-median",
                     "art:DeepFool:rho-success"]
    assert [bench_metrics.split(m) for m in names[1:3]] == [("torchattacks:PGD", "accuracy"), ("art:DeepFool", "rho")]
    assert [is_accuracy(m) for m in names] == [True, True, False, False, False]


def test_report_command_prints_the_table(e2e, host):
    out, spec, output = e2e
    result = invoke(host, ["bench", "report", str(out)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "benchmark tiny: 3 of 3 cells recorded" in text
    run = load_run(out)
    natural = next(r for r in run.records if r["defense"] == "natural")
    assert f"target natural ({100 * natural['clean_accuracy']:.2f}% clean)" in text and "target 0.5 (50.00% clean)" in text
    block = text.split("target natural")[1].split("target 0.5")[0]
    rows = {line.split()[1]: line for line in block.splitlines()[3:] if line.strip()}
    assert set(rows) == {"natural", "pgd-at"}
    assert rows["natural"].split()[2] == f"{100 * natural['worst_case_accuracy']:.1f}%"
    assert "1/1" in rows["natural"]  # seeds in range
    for name in ("report.md", "report.html", "robustness_curves.png", "accuracy_vs_eps.png"):
        assert f"wrote {out / name}" in text
    assert "benchmark tiny: 3 of 3 cells recorded" in output  # bench run printed the same table


def test_report_of_an_incomplete_run(e2e, tmp_path):
    out, spec, _ = e2e
    partial = tmp_path / "partial"
    shutil.copytree(out, partial, ignore=shutil.ignore_patterns("train"))
    (partial / "cells" / f"{spec.cells()[2].key}.json").unlink()
    text, files = write_report(partial)
    assert "2 of 3 cells recorded (incomplete: rerun `bench run` to finish)" in text
    assert "cells recorded: 2 of 3" in (partial / "report.md").read_text()
    assert files[0] == partial / "report.md"


def test_report_without_a_benchmark(tmp_path, host):
    result = invoke(host, ["bench", "report", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {tmp_path} holds no benchmark (benchmark.json is missing)")


# --- 6. worst case: minimal-distortion attacks break only within eps ----------------------------


def _outcome(success: bool, linf: float = 0.0, l2: float = 0.0, attacked: bool = True) -> AttackOutcome:
    return AttackOutcome(attacked=attacked, adv_pred=1 if success else 0, success=success, l2=l2, linf=linf)


def _hand_made_result():
    """Six examples of class 0; the first is misclassified. ``pgd`` fixed-budget, ``df`` minimal-distortion."""
    f32 = float(torch.tensor(0.1, dtype=torch.float32))  # 0.10000000149: eps in float32, as distances are
    rows = [  # (clean_pred, pgd outcome, df outcome)
        (1, _outcome(False, attacked=False), _outcome(False, attacked=False)),  # wrong before any attack
        (0, _outcome(False), _outcome(True, linf=0.05, l2=0.3)),  # df inside linf eps and l2 eps: broken
        (0, _outcome(False), _outcome(True, linf=0.3, l2=0.6)),  # df outside both: robust
        (0, _outcome(True, linf=0.1, l2=0.5), _outcome(True, linf=0.5, l2=0.9)),  # pgd breaks it
        (0, _outcome(False), _outcome(True, linf=f32, l2=0.7)),  # df at linf eps (float round-off): broken
        (0, _outcome(False), _outcome(False)),  # nothing breaks it
    ]
    records = [SampleRecord(i, 0, pred, {"pgd": pgd, "df": df}) for i, (pred, pgd, df) in enumerate(rows)]
    attacks = {"pgd": types.SimpleNamespace(goal="fixed-budget", knowledge="white-box", describe=lambda: {}),
               "df": types.SimpleNamespace(goal="minimal-distortion", knowledge="white-box", describe=lambda: {})}
    return build_result(records, attacks, {}, {"pgd": 1.0, "df": 2.0}, 0, torch.device("cpu"), 3.0), attacks


def test_minimal_distortion_breaks_only_within_the_threat_eps():
    result, attacks = _hand_made_result()
    assert result.worst_case_accuracy == 1 / 6  # evaluate() counts every success of every attack
    per_attack, worst = _within(result, attacks, {"norm": "linf", "eps": 0.1})
    assert per_attack["pgd"]["robust_accuracy"] == pytest.approx(4 / 6)
    assert per_attack["df"]["robust_accuracy"] == pytest.approx(3 / 6)  # rows 1 and 4 broken; 2 and 3 not by df
    assert worst == pytest.approx(2 / 6)  # rows 2 and 5
    # rho keeps every success, inside the threat or not; by default misclassified examples count 0 (SPECS)
    assert per_attack["df"]["n_success"] == 4
    assert per_attack["df"]["mean_l2"] == pytest.approx((0.3 + 0.6 + 0.9 + 0.7) / 4)
    assert per_attack["df"]["rho_success"] == pytest.approx((0.3 + 0.6 + 0.9 + 0.7) / 4)
    assert per_attack["df"]["rho"] == pytest.approx((0.0 + 0.3 + 0.6 + 0.9 + 0.7) / 5)  # row 5 failed: left out
    assert per_attack["df"]["rho_median"] == pytest.approx(0.6)
    assert per_attack["df"]["rho_failed_share"] == pytest.approx(1 / 6)
    assert per_attack["df"]["success_rate"] == pytest.approx(4 / 5)
    assert (per_attack["df"]["goal"], per_attack["pgd"]["goal"]) == ("minimal-distortion", "fixed-budget")
    assert per_attack["df"]["knowledge"] == "white-box" and per_attack["df"]["seconds"] == 2.0


def test_minimal_distortion_uses_the_threat_norm():
    result, attacks = _hand_made_result()
    per_attack, worst = _within(result, attacks, {"norm": "l2", "eps": 0.5})
    assert per_attack["df"]["robust_accuracy"] == pytest.approx(4 / 6)  # only row 1 (l2 0.3) is inside
    assert worst == pytest.approx(3 / 6)  # rows 2, 4 and 5
    # A budget covering every distance counts every success, as evaluate() does.
    per_attack, worst = _within(result, attacks, {"norm": "linf", "eps": 1.0})
    assert per_attack["df"]["robust_accuracy"] == pytest.approx(result.attacks["df"].robust_accuracy)
    assert worst == pytest.approx(result.worst_case_accuracy)


def test_fixed_budget_successes_outside_the_threat_are_flagged_and_do_not_count():
    result, attacks = _hand_made_result()
    per_attack, worst = _within(result, attacks, {"norm": "linf", "eps": 0.01})
    assert per_attack["pgd"]["robust_accuracy"] == pytest.approx(5 / 6)  # its success at linf 0.1 is outside
    assert per_attack["pgd"]["n_outside_threat"] == 1
    assert per_attack["df"]["robust_accuracy"] == pytest.approx(5 / 6)
    assert per_attack["df"]["n_outside_threat"] == 0  # a minimal-distortion attack promises no budget
    per_attack, _ = _within(result, attacks, {"norm": "linf", "eps": 0.1})
    assert per_attack["pgd"]["n_outside_threat"] == 0


def _within(result, attacks, threat):
    outcomes, per_attack = within_threat(result, attacks, threat)
    return per_attack, float(bench_metrics.value(outcomes, "worst-case", bench_metrics.ones(outcomes.n))[0])


# --- 7. resume after a killed process -----------------------------------------------------------


class KilledRun:
    """``python -m robustkit bench run`` of TINY in another process, SIGKILLed by a watcher thread the moment
    its first record is on disk.

    It starts with the module's first test, so the other process's start-up (importing torch and the
    plugins) overlaps this process's tests instead of adding to them.
    """

    def __init__(self, folder: Path, cache: Path):
        self.spec_path = write(folder, TINY)
        self.out = folder / "out"
        self.log_path = folder / "run.log"
        self.records: dict[str, bytes] = {}
        # One thread, as in this process, so its records can be compared with the reference run's numbers.
        env = {**os.environ, "ROBUSTKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1", "ROBUSTKIT_CACHE_DIR": str(cache),
               **NO_TIMM}
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "robustkit", "bench", "run", str(self.spec_path), "--out", str(self.out),
                 "--no-report"], stdout=log, stderr=subprocess.STDOUT, env=env)
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        cells, deadline = self.out / "cells", time.monotonic() + 600
        while self.proc.poll() is None and time.monotonic() < deadline:
            if cells.is_dir() and any(cells.glob("*.json")):
                break
            time.sleep(0.01)
        self.proc.send_signal(signal.SIGKILL)  # nothing happens if it has already exited
        self.proc.wait()
        self.records = record_files(self.out)

    def finish(self) -> tuple[int, dict[str, bytes]]:
        """The exit code and the records just after the kill."""
        self.thread.join(timeout=600)
        assert not self.thread.is_alive(), "the killed run's watcher did not finish"
        return self.proc.returncode, self.records

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.thread.join(timeout=60)


@pytest.fixture(scope="module", autouse=True)
def killed_run(request, tmp_path_factory):
    """Started only when the resume test is among the tests to run."""
    if not any(item.name == "test_resume_after_sigkill" for item in request.session.items):
        yield None
        return
    run = KilledRun(tmp_path_factory.mktemp("bench-killed"), tmp_path_factory.getbasetemp() / "robustkit-cache")
    yield run
    run.close()


def test_resume_after_sigkill(e2e, host, killed_run):
    reference_out, _, _ = e2e
    returncode, before = killed_run.finish()
    log = killed_run.log_path.read_text()
    assert returncode == -signal.SIGKILL, f"the run ended ({returncode}) before it could be killed:\n{log}"
    assert 1 <= len(before) < 3, log
    for name, data in before.items():  # every record on disk is whole
        record = json.loads(data)
        assert record["key"] == name.removesuffix(".json") and "clean_accuracy" in record["result"]
    out = killed_run.out
    assert record_files(out) == before
    assert len(ResultStore(out)) == len(before)  # a temporary file cut short by the kill is not a record

    # Temporaries a killed write leaves behind (their process is gone) are cleaned by the next run.
    dead = _dead_pid()
    stale = [out / "cells" / f".x.json.{dead}.0123abcd.tmp", out / f".benchmark.json.{dead}.0123abcd.tmp"]
    for path in stale:
        path.write_text("half")
    spec = load_spec(str(killed_run.spec_path), host)
    summary = run_benchmark(spec, out, host, say=lambda line: None)
    assert summary.reused == len(before) and len(summary.finished) == 3 - len(before) and not summary.failed
    assert not any(path.exists() for path in stale) and not list(out.rglob("*.tmp"))
    after = record_files(out)
    assert {name: after[name] for name in before} == before  # byte-identical
    assert set(after) == set(record_files(reference_out))  # the uninterrupted run's cells
    reference = {r["key"]: r["result"] for r in ResultStore(reference_out)}
    for record in ResultStore(out):
        ours, theirs = record["result"], reference[record["key"]]
        for field in ("clean_accuracy", "worst_case_accuracy", "eps_curve"):
            assert ours[field] == theirs[field], (record["key"], field)
        assert {k: v["robust_accuracy"] for k, v in ours["attacks"].items()} == \
            {k: v["robust_accuracy"] for k, v in theirs["attacks"].items()}
        assert ours["outcomes"] == theirs["outcomes"]  # example by example


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


# --- 8. parallel cells --------------------------------------------------------------------------

# No natural cell, no audit and one attack: both cells start at once, one per process.
JOBS = """\
name = "tiny-jobs"
seeds = [0]
dataset = {name = "digits"}
model = {name = "lenet", params = {width = 0.25}}
training = {epochs = 1, batch_size = 64, lr = 5e-3, val_examples = 0}
threat = {norm = "linf", eps = 0.1}
evaluation = {n_examples = 40}
protocol = {targets = [0.5]}
audit = {enabled = false}

[[attacks]]
name = "torchattacks:PGD"
label = "pgd"
params = {alpha = 0.04, steps = 3}

[[defenses]]
name = "pgd-at"
params = {steps = 2}
sweep = [0.05, 0.1]
"""


def test_jobs_2_records_what_jobs_1_records(tmp_path, host, no_timm):
    spec = load_spec(str(write(tmp_path, JOBS)), host)
    one = run_benchmark(spec, tmp_path / "one", host, jobs=1, say=lambda line: None)
    two = run_benchmark(spec, tmp_path / "two", host, jobs=2, say=lambda line: None)
    assert not one.failed and not two.failed, (one.failed, two.failed)
    first = {r["key"]: r for r in ResultStore(tmp_path / "one")}
    second = {r["key"]: r for r in ResultStore(tmp_path / "two")}
    assert set(first) == set(second) == set(keys(spec))
    # Every cell runs the same torch thread count however cells are scheduled: the records are equal
    # but for timings and the folder they point to, per-example outcomes included.
    for key in first:
        assert first[key]["settings"] == second[key]["settings"]
        a, b = without_timings(first[key]["result"]), without_timings(second[key]["result"])
        assert a == b, key
        assert a["environment"]["threads"] == torch.get_num_threads()


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items()
                if "seconds" not in k and "time" not in k and k != "checkpoint"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


# --- 10. Ctrl-C -----------------------------------------------------------------------------------


def test_ctrl_c_keeps_finished_records(tmp_path, host, monkeypatch):
    spec = load_spec(str(write(tmp_path, TINY)), host)
    calls = []

    def fake_cell(settings, work_dir, **kwargs):
        calls.append(settings)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"clean_accuracy": 0.5, "attacks": {}, "audit": None}

    monkeypatch.setattr(runner, "run_cell", fake_cell)
    out = tmp_path / "out"
    with pytest.raises(RobustkitError) as caught:
        run_benchmark(spec, out, host, say=lambda line: None)
    assert str(caught.value) == (f"benchmark interrupted: 1 of 3 cells are recorded in {out}; "
                                 "rerun the same command to continue")
    assert len(calls) == 2
    assert set(record_files(out)) == {f"{cell_key(calls[0])}.json"}
    assert ResultStore(out).get(cell_key(calls[0]))["result"]["clean_accuracy"] == 0.5

    # Through the CLI: exit code 2, one line.
    calls.clear()
    result = invoke(host, ["bench", "run", str(tmp_path / "spec.toml"), "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]  # progress lines beside it
    assert errors == [f"Error: benchmark interrupted: 2 of 3 cells are recorded in {out}; "
                      "rerun the same command to continue"]
    assert result.stdout == ""


def test_ctrl_c_during_training_stops_the_benchmark(tmp_path, host, monkeypatch):
    """The training loop turns Ctrl-C into a RobustkitError; the runner must stop, not skip to the next cell."""
    import robustkit.training as training

    spec = load_spec(str(write(tmp_path, TINY)), host)
    calls = []
    real_cell = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: calls.append(1) or real_cell(*a, **k))

    def interrupted_epoch(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_train_epoch", interrupted_epoch)
    out = tmp_path / "out"
    with pytest.raises(RobustkitError, match=r"^benchmark interrupted: 0 of 3 cells are recorded"):
        run_benchmark(spec, out, host, say=lambda line: None)
    assert calls == [1]
    assert record_files(out) == {}


def test_a_digits_spec_runs_on_a_real_dataset_from_a_data_root(tmp_path, host):
    """`bench run SPEC --dataset mnist --data-root DIR`: the same protocol on MNIST files in the real format."""
    from test_datasets import write_mnist

    write_mnist(tmp_path / "data", n_train=40, n_test=12)
    text = edited(TINY, ("n_examples = 40, eps_curve = [0.05, 0.2]", "n_examples = 12"),
                  ("audit = {steps", "audit = {enabled = false, steps"), ("sweep = [0.05, 0.1]", "sweep = [0.1]"))
    spec_path = write(tmp_path, text)
    result = invoke(host, ["bench", "run", str(spec_path), "--dataset", "mnist", "--data-root", str(tmp_path / "data"),
                           "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert bench["dataset"] == {"name": "mnist"} and "on mnist" in bench["source"]
    records = [json.loads(p.read_text())["result"] for p in (tmp_path / "out" / "cells").glob("*.json")]
    assert len(records) == 2 and all(r["n_examples"] == 12 for r in records)
    missing = invoke(host, ["bench", "show", str(spec_path), "--dataset", "mnist"])
    assert missing.exit_code == 0  # show validates names only; the data are read when cells run
    absent = invoke(host, ["bench", "run", str(spec_path), "--dataset", "mnist", "--data-root",
                           str(tmp_path / "nowhere"), "--out", str(tmp_path / "out2")])
    assert absent.exit_code == 2 and "expects the files" in absent.output  # once, before any cell
    assert absent.output.count("\n") == 1 and not (tmp_path / "out2").exists()


def test_the_black_box_check_runs_only_when_the_spec_names_an_attack(host):
    """The host names no attack plugin: without audit.black_box the check is skipped, and says so."""
    spec = load_spec_text(host, edited(TINY, (', black_box = {name = "torchattacks:Square", label = "square", '
                                              'params = {n_queries = 20}}', "")))
    assert spec.audit["black_box"] is False and spec.audit["enabled"]
    assert load_spec_text(host, TINY).audit["black_box"]["name"] == "torchattacks:Square"

