"""Bad inputs through the CLI, as a careless user or an attacker types them: every one ends in one line on
stderr naming what is wrong, exit code 2, and no traceback.

Each case is ``(id, argv, fragment of the message)``; files the cases need are written once per module into a
shared folder (``{tmp}`` in argv is replaced by it), around one tiny trained checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import types

import click
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

import robustkit.host as host_module
from robustkit import hookimpl
from robustkit.cli import cli
from robustkit.errors import RobustkitError
from robustkit.host import make_host
from robustkit_timm.models import load_weights

TRAIN = ["train", "--model", "lenet", "--model-param", "width=0.25", "--epochs", "1", "--val-examples", "0"]
FGSM = ["--attack", "torchattacks:FGSM eps=0.1", "--n-examples", "10"]
LENET_FGSM = ["attack", "--model", "lenet", "--attack", "torchattacks:FGSM"]
CK_FGSM = ["attack", "{tmp}/ck/last.json", "--attack", "torchattacks:FGSM"]

TINY_SPEC = """\
name = "probe"
seeds = [0]
dataset = {name = "digits"}
model = {name = "lenet", params = {width = 0.25}}
training = {epochs = 1, batch_size = 64, val_examples = 0}
threat = {norm = "linf", eps = 0.1}
evaluation = {n_examples = 20}
protocol = {targets = ["natural"]}
audit = {enabled = false}

[[attacks]]
name = "torchattacks:PGD"
label = "pgd"
params = {steps = 2}

[[defenses]]
name = "natural"
"""

CASES = [
    # numbers written as fractions
    ("param-divides-by-zero", ["train", "--model", "lenet", "--defense", "pgd-at", "--param", "eps=1/0"],
     "parameter 'eps' must be of type float, got '1/0' ('1/0' divides by zero)"),
    ("attack-param-divides-by-zero", ["attack", "--model", "lenet", "--attack", "torchattacks:PGD eps=1/0"],
     "divides by zero"),
    ("val-eps-divides-by-zero", ["train", "--model", "lenet", "--val-eps", "1/0"], "Invalid value for '--val-eps'"),
    ("val-eps-not-a-number", ["train", "--model", "lenet", "--val-eps", "abc"], "is not a number like 0.3 or 8/255"),
    ("val-eps-infinite", ["train", "--model", "lenet", "--val-eps", "inf"], "is not finite"),
    # seeds torch cannot take
    ("seed-overflow", ["train", "--model", "lenet", "--seed", "99999999999999999999"], "Invalid value for '--seed'"),
    ("seed-negative", ["attack", "--model", "lenet", "--attack", "torchattacks:FGSM", "--seed", "-1"],
     "Invalid value for '--seed'"),
    ("spec-seed-overflow", ["bench", "show", "{tmp}/big-seed.toml"], "$.seeds[0]: 99999999999999999999 is greater"),
    # a parameter given twice
    ("attack-param-twice", ["attack", "--model", "lenet", "--attack", "torchattacks:PGD eps=0.1 eps=0.3"],
     "'eps' is given twice ('0.1' and '0.3'); give it once"),
    # click's own checks end in one line too
    ("unknown-command", ["tarin"], "No such command 'tarin'"),
    ("unknown-option", ["train", "--epoch", "3"], "No such option '--epoch'. Did you mean '--epochs'?"),
    ("missing-argument", ["bench", "show"], "Missing argument 'SPEC'"),
    ("defense-param-twice", ["train", "--model", "lenet", "--defense", "pgd-at", "--param", "eps=0.1", "--param",
                             "eps=0.2"], "'eps' is given twice"),
    # an attack that would not run at all
    ("torchattacks-steps-zero", ["attack", "--model", "lenet", "--attack", "torchattacks:PGD steps=0"],
     "parameter 'steps' must be >= 1, got 0"),
    ("torchattacks-steps-negative", ["attack", "--model", "lenet", "--attack", "torchattacks:PGD steps=-5"],
     "parameter 'steps' must be >= 1, got -5"),
    ("art-max-iter-zero", ["attack", "--model", "lenet", "--attack", "art:ProjectedGradientDescent max_iter=0"],
     "parameter 'max_iter' must be >= 1"),
    ("native-steps-zero", ["attack", "--model", "lenet", "--attack", "cw-linf steps=0"], "'steps' must be >= 1"),
    ("localized-steps-zero", ["attack", "--model", "lenet", "--attack", "localized-pgd steps=0"], "must be >= 1"),
    # output folders that cannot be one, found before any work
    ("train-out-is-a-file", [*TRAIN, "--out", "{tmp}/big-seed.toml"], "is a file; give a folder"),
    ("train-out-under-a-file", [*TRAIN, "--out", "{tmp}/big-seed.toml/run"], "cannot create the folder"),
    ("attack-out-is-a-file", ["attack", "--model", "lenet", *FGSM, "--out", "{tmp}/big-seed.toml"], "is a file"),
    ("bench-out-is-a-file", ["bench", "run", "{tmp}/probe.toml", "--out", "{tmp}/binary.json"],
     "--out " + "{tmp}/binary.json is a file"),
    ("quickstart-out-is-a-file", ["quickstart", "--out", "{tmp}/binary.json"], "is a file; give a folder"),
    # found by a fresh probe of the CLI: options, parameters, files and folders in the wrong place
    ('train-epochs-zero', ['train', '--model', 'lenet', '--epochs', '0'],
     'training: epochs must be an integer >= 1, got 0'),
    ('train-batch-size-zero', ['train', '--model', 'lenet', '--batch-size', '0'],
     'training: batch_size must be an integer >= 1, got 0'),
    ('train-lr-negative', ['train', '--model', 'lenet', '--lr', '-1'],
     'training: lr must be > 0, got -1.0'),
    ('train-lr-nan', ['train', '--model', 'lenet', '--lr', 'nan'],
     'training: lr must be > 0, got nan'),
    ('train-momentum-above-1', ['train', '--model', 'lenet', '--momentum', '2'],
     'training: momentum must be in [0, 1), got 2.0'),
    ('train-weight-decay-negative', ['train', '--model', 'lenet', '--weight-decay', '-1'],
     'training: weight_decay must be >= 0, got -1.0'),
    ('train-val-examples-negative', ['train', '--model', 'lenet', '--val-examples', '-5'],
     'training: val_examples must be >= 0, got -5'),
    ('train-val-eps-above-1', ['train', '--model', 'lenet', '--val-eps', '2'],
     'training: val_eps must be in (0, 1] or None, got 2.0'),
    ('train-missing-gpu', ['train', '--model', 'lenet', '--device', 'cuda:7'],
     '--device cuda:7: '),
    ('train-unknown-device', ['train', '--model', 'lenet', '--device', 'tpu'],
     '--device tpu: unknown device; use auto, cpu, cuda or cuda:N'),
    ('model-param-not-a-number', ['train', '--model', 'lenet', '--model-param', 'width=abc'],
     "lenet: parameter 'width' must be of type float, got 'abc'"),
    ('model-param-zero', ['train', '--model', 'lenet', '--model-param', 'width=0'],
     "lenet: parameter 'width' must be > 0.0, got 0.0"),
    ('model-param-nan', ['train', '--model', 'lenet', '--model-param', 'width=nan'],
     "lenet: parameter 'width' must be finite, got nan"),
    ('dataset-param-zero', ['train', '--model', 'lenet', '--dataset-param', 'resize=0'],
     "digits: parameter 'resize' must be >= 1, got 0"),
    ('dataset-param-not-a-number', ['train', '--model', 'lenet', '--dataset-param', 'resize=abc'],
     "digits: parameter 'resize' must be of type int, got 'abc'"),
    ('param-without-value', ['train', '--model', 'lenet', '--param', 'eps'],
     "--param expects key=value, got 'eps'"),
    ('param-without-name', ['train', '--model', 'lenet', '--defense', 'pgd-at', '--param', '=0.1'],
     "--param expects key=value, got '=0.1'"),
    ('param-nan', ['train', '--model', 'lenet', '--defense', 'pgd-at', '--param', 'eps=nan'],
     "pgd-at: parameter 'eps' must be finite, got nan"),
    ('param-infinite', ['train', '--model', 'lenet', '--defense', 'pgd-at', '--param', 'eps=inf'],
     "pgd-at: parameter 'eps' must be finite, got inf"),
    ('param-overflowing', ['train', '--model', 'lenet', '--defense', 'pgd-at', '--param', 'eps=1e400'],
     "pgd-at: parameter 'eps' must be finite, got inf"),
    ('trades-beta-negative', ['train', '--model', 'lenet', '--defense', 'trades', '--param', 'beta=-1'],
     "trades: parameter 'beta' must be >= 0.0, got -1.0"),
    ('attack-empty', ['attack', '--model', 'lenet', '--attack', ''],
     "attack '': start with a name, e.g. 'torchattacks:PGD eps=0.1 steps=10'"),
    ('attack-only-parameters', ['attack', '--model', 'lenet', '--attack', 'eps=0.1'],
     "attack 'eps=0.1': start with a name, e.g. 'torchattacks:PGD eps=0.1"),
    ('attack-eps-nan', ['attack', '--model', 'lenet', '--attack', 'torchattacks:PGD eps=nan'],
     "torchattacks:PGD: parameter 'eps' must be finite, got nan"),
    ('attack-eps-negative', ['attack', '--model', 'lenet', '--attack', 'torchattacks:PGD eps=-0.1'],
     "torchattacks:PGD: parameter 'eps' must be >= 0.0, got -0.1"),
    ('attack-norm-it-lacks', ['attack', '--model', 'lenet', '--attack', 'torchattacks:PGD norm=l2'],
     "torchattacks:PGD: unknown parameter 'norm' (known: eps, alpha, steps,"),
    ('autoattack-unknown-version', ['attack', '--model', 'lenet', '--attack', 'autoattack version=bogus'],
     "autoattack: parameter 'version' must be one of standard, plus, rand,"),
    ('autoattack-one-class', ['attack', '--model', 'lenet', '--attack', 'autoattack eps=0.1 n_classes=1'],
     "autoattack: parameter 'n_classes' must be >= 2, got 1"),
    ('nattack-population-zero', ['attack', '--model', 'lenet', '--attack', 'nattack population=0'],
     "nattack: parameter 'population' must be >= 2, got 0"),
    ('attack-batch-size-zero', [*LENET_FGSM, '--batch-size', '0'],
     'batch_size must be >= 1, got 0'),
    ('attack-grid-examples-negative', [*LENET_FGSM, '--grid-examples', '-1'],
     "Invalid value for '--grid-examples': -1 is not in the range x>=0."),
    ('attack-grid-not-png', [*LENET_FGSM, '--grid', 'x.jpg'],
     '--grid x.jpg: give a .png file name'),
    ('attack-checkpoint-and-model', [*CK_FGSM, '--model', 'lenet'],
     'not several; got a CHECKPOINT and --model'),
    ('attack-no-checkpoint', ['attack', '{tmp}/nowhere/last.json', '--attack', 'torchattacks:FGSM'],
     'nowhere/last.json: file not found; check the path'),
    ('attack-folder-without-checkpoint', ['attack', '{tmp}', '--attack', 'torchattacks:FGSM'],
     '/last.json: file not found; check the path (a checkpoint is NAME.safetensors'),
    ('attack-dataset-without-root', [*CK_FGSM, '--dataset', 'cifar10'],
     "dataset 'cifar10' reads local files: pass --data-root DIR (root= in"),
    ('attack-unknown-precision', [*CK_FGSM, '--precision', 'fp8'],
     "Invalid value for '--precision': 'fp8' is not one of 'fp32', 'bf16',"),
    ('bench-unknown-spec-file', ['bench', 'show', '{tmp}/nowhere.toml'],
     'nowhere.toml does not exist'),
    ('bench-spec-is-a-folder', ['bench', 'show', '{tmp}'],
     "or give the path of a .toml/.yaml spec file"),
    ('bench-jobs-zero', ['bench', 'run', '{tmp}/probe.toml', '--jobs', '0'],
     "Invalid value for '--jobs': 0 is not in the range x>=1"),
    ('bench-threads-zero', ['bench', 'run', '{tmp}/probe.toml', '--threads', '0'],
     "Invalid value for '--threads': 0 is not in the range x>=1"),
    ('bench-report-nowhere', ['bench', 'report', '{tmp}/nowhere'],
     'nowhere holds no benchmark (benchmark.json is missing)'),
    ('bench-report-of-a-file', ['bench', 'report', '{tmp}/probe.toml'],
     'probe.toml holds no benchmark'),
    ('leaderboard-export-nowhere', ['leaderboard', 'export', '{tmp}/nowhere', '-o', '{tmp}/x.json'],
     'nowhere holds no benchmark'),
    ('leaderboard-validate-nowhere', ['leaderboard', 'validate', '{tmp}/nowhere.json'],
     '/nowhere.json: cannot read: No such file or directory'),
    ('leaderboard-validate-a-folder', ['leaderboard', 'validate', '{tmp}'],
     'cannot read: Is a directory'),
    ('leaderboard-merge-specs', ['leaderboard', 'merge', '{tmp}/probe.toml', '{tmp}/probe.toml', '-o', '{tmp}/m.json'],
     '/probe.toml: not JSON: Expecting value at line 1 column 1'),

    # checkpoints edited, damaged or tampered with
    ("checkpoint-weights-outside", ["attack", "{tmp}/ck-dotdot/last.json", *FGSM],
     "files.weights is '../x.safetensors'; it must be a file name beside the JSON"),
    ("checkpoint-weights-absolute", ["attack", "{tmp}/ck-absolute/last.json", *FGSM],
     "files.weights is '/etc/passwd'; it must be a file name beside the JSON"),
    ("checkpoint-format-version", ["attack", "{tmp}/ck-version/last.json", *FGSM],
     "format_version is 'abc', not a whole number"),
    ("checkpoint-files-not-a-table", ["attack", "{tmp}/ck-files/last.json", *FGSM],
     '"files" must be a table of file names, got str'),
    ("checkpoint-nan-weights", ["attack", "{tmp}/ck-nan/last.json", *FGSM], "holds NaN or infinite weights"),
    ("checkpoint-history-string", [*TRAIN, "--out", "{tmp}/ck-history"], "its training history is damaged"),
    ("checkpoint-history-number", [*TRAIN, "--out", "{tmp}/ck-history-5"], "its training history is damaged"),
    ("attack-at-another-size", ["attack", "{tmp}/ck/last.json", *FGSM, "--dataset-param", "resize=28"],
     "was trained on 8x8 grey images, but the dataset gives 28x28 grey"),
    # specs
    ("spec-nan-target", ["bench", "show", "{tmp}/nan-target.toml"],
     "$.protocol.targets[0]: a target clean accuracy must be in (0, 1], got nan"),
    ("spec-target-above-1", ["bench", "show", "{tmp}/big-target.toml"], "99 is greater than the maximum of 1"),
    ("spec-target-names-a-swept-defense", ["bench", "show", "{tmp}/swept-target.toml"],
     "'pgd-at' is swept, so its models have several clean accuracies"),
    ("spec-binary", ["bench", "show", "{tmp}/binary.toml"], "not a text file (not UTF-8)"),
    ("spec-empty-seeds", ["bench", "show", "{tmp}/no-seeds.toml"], "$.seeds: [] should be non-empty"),
    ("spec-unknown-norm", ["bench", "show", "{tmp}/bad-norm.toml"], "$.threat.norm"),
    # leaderboards
    ("leaderboard-binary", ["leaderboard", "validate", "{tmp}/binary.json"], "not a text file (not UTF-8)"),
    ("leaderboard-merge-binary", ["leaderboard", "merge", "{tmp}/binary.json", "{tmp}/binary.json", "-o",
                                  "{tmp}/merged.json"], "not a text file"),
    ("leaderboard-nan", ["leaderboard", "validate", "{tmp}/nan.json"], "NaN is not a number a leaderboard may hold"),
    ("leaderboard-merge-nan", ["leaderboard", "merge", "{tmp}/nan.json", "{tmp}/nan.json", "-o", "{tmp}/merged.json"],
     "NaN is not a number"),
]


def _edited_checkpoint(base: Path, folder: Path, edit) -> None:
    shutil.copytree(base, folder)
    meta = json.loads((folder / "last.json").read_text())
    edit(meta)
    (folder / "last.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("probe")
    (folder / "big-seed.toml").write_text(TINY_SPEC.replace("seeds = [0]", "seeds = [99999999999999999999]"))
    (folder / "probe.toml").write_text(TINY_SPEC)
    (folder / "swept-target.toml").write_text(TINY_SPEC.replace('targets = ["natural"]', 'targets = ["pgd-at"]')
                                              + '\n[[defenses]]\nname = "pgd-at"\nsweep = [0.05, 0.1]\n')
    (folder / "binary.toml").write_bytes(bytes(range(128, 256)))
    (folder / "no-seeds.toml").write_text(TINY_SPEC.replace("seeds = [0]", "seeds = []"))
    (folder / "bad-norm.toml").write_text(TINY_SPEC.replace('norm = "linf"', 'norm = "l7"'))
    (folder / "nan-target.toml").write_text(TINY_SPEC.replace('targets = ["natural"]', "targets = [nan]"))
    (folder / "big-target.toml").write_text(TINY_SPEC.replace('targets = ["natural"]', "targets = [99]"))
    (folder / "binary.json").write_bytes(bytes(range(256)) * 4)
    (folder / "nan.json").write_text('{"schema": "robustkit-leaderboard", "schema_version": 2, "entries": [], '
                                     '"generated": "2026-01-01T00:00:00", "units": {"accuracy": "percent", '
                                     '"eps": "pixel"}, "extra": NaN}')
    trained = CliRunner().invoke(cli, [*TRAIN, "--out", str(folder / "ck")])
    assert trained.exit_code == 0, trained.output
    base = folder / "ck"
    _edited_checkpoint(base, folder / "ck-dotdot", lambda m: m["files"].update(weights="../x.safetensors"))
    _edited_checkpoint(base, folder / "ck-absolute", lambda m: m["files"].update(weights="/etc/passwd"))
    _edited_checkpoint(base, folder / "ck-version", lambda m: m.update(format_version="abc"))
    _edited_checkpoint(base, folder / "ck-files", lambda m: m.update(files="x"))
    _edited_checkpoint(base, folder / "ck-history", lambda m: m.update(history="abc"))
    _edited_checkpoint(base, folder / "ck-history-5", lambda m: m.update(history=5))
    # All weights NaN, with a checksum that matches: what a diverged run leaves.
    nan = folder / "ck-nan"
    shutil.copytree(base, nan)
    tensors = safetensors.torch.load_file(nan / "last.safetensors")
    safetensors.torch.save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()},
                                nan / "last.safetensors", {"format": "robustkit-checkpoint"})
    _edited_checkpoint(nan, folder / "ck-nan-fixed", lambda m: m["files"].update(
        weights_sha256=hashlib.sha256((nan / "last.safetensors").read_bytes()).hexdigest()))
    shutil.rmtree(nan)
    (folder / "ck-nan-fixed").rename(nan)
    return folder


@pytest.mark.parametrize("argv, fragment", [pytest.param(a, f, id=i) for i, a, f in CASES])
def test_bad_input_is_one_line_with_exit_code_2(workspace, argv, fragment):
    result = CliRunner().invoke(cli, [a.replace("{tmp}", str(workspace)) for a in argv])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    fragment = fragment.replace("{tmp}", str(workspace))
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.stderr


def test_the_probe_is_wide():
    assert len({i for i, _, _ in CASES}) == len(CASES)


# --- plugins and the environment ------------------------------------------------------------------


def _plugin(**hooks) -> types.ModuleType:
    module = types.ModuleType("probe_plugin")
    for name, function in hooks.items():
        setattr(module, name, hookimpl(function))
    return module


def _raises(**_):
    raise RuntimeError("boom")


class _Command:
    """register_commands implementations a broken plugin might ship."""

    @staticmethod
    def crashing(cli):
        @cli.command(name="crash")
        def crash():
            raise ZeroDivisionError("division by zero")

    @staticmethod
    def shadowing(cli):
        @cli.command(name="train")
        def train():
            click.echo("not the real train")

    @staticmethod
    def raising(cli):
        raise RuntimeError("cannot register")


def _mislabelled(root=None):
    """Ten classes declared, labels up to 11 (a plugin whose labels and class count disagree)."""
    from torch.utils.data import TensorDataset

    from robustkit.data import DatasetInfo, ImageDataset

    images = torch.rand(64, 1, 8, 8)
    labels = torch.arange(64) % 12
    info = DatasetInfo("mislabelled", 10, 1, (8, 8), (0.5,), (0.25,))
    return ImageDataset(info, TensorDataset(images, labels), TensorDataset(images, labels))


PLUGIN_CASES = [
    ("dataset-labels-outside-its-classes", dict(register_datasets=lambda register: register("mislabelled",
                                                                                            _mislabelled)),
     [*TRAIN, "--dataset", "mislabelled", "--out", "{tmp}/mislabelled"],
     "outside its 10 classes (0..9): its labels and its class count disagree"),
    ("evaluation-labels-outside-the-models-classes",
     dict(register_datasets=lambda register: register("mislabelled", _mislabelled)),
     ["attack", "--model", "lenet", "--dataset", "mislabelled", "--attack", "torchattacks:FGSM eps=0.1"],
     "label 10 is not one of the model's 10 classes"),
    ("factory-not-callable", dict(register_defenses=lambda register: register("broken", 42)),
     ["train", "--model", "lenet", "--defense", "broken"], "unknown defense 'broken'"),
    ("factory-returns-a-number", dict(register_attacks=lambda register: register("number", lambda: 42)),
     ["attack", "--model", "lenet", "--attack", "number"],
     "attack 'number' of plugin 'probe' returned a value of type int, not Attack: the plugin is broken"),
    ("factory-returns-none", dict(register_defenses=lambda register: register("nothing", lambda: None)),
     ["train", "--model", "lenet", "--defense", "nothing"], "returned a value of type NoneType, not Defense"),
    ("factory-returns-a-string", dict(register_models=lambda register: register(
        "text", lambda num_classes, in_channels, image_size: "a model")),
     ["train", "--model", "text"], "model 'text' of plugin 'probe' returned a value of type str, not Module"),
    ("command-raises", dict(register_commands=_Command.crashing), ["crash"],
     "command 'crash' of plugin 'probe' failed (ZeroDivisionError: division by zero)"),
]


@pytest.mark.parametrize("hooks, argv, fragment", [pytest.param(h, a, f, id=i) for i, h, a, f in PLUGIN_CASES])
def test_a_broken_plugin_is_named_in_one_line(monkeypatch, tmp_path, hooks, argv, fragment):
    monkeypatch.setenv("ROBUSTKIT_BLOCK_PLUGINS", "timm-models")
    host_module._HOST = make_host(plugins=[("probe", _plugin(**hooks))])
    result = CliRunner().invoke(cli, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.strip().splitlines() if not line.startswith("robustkit: warning:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def test_plugins_lists_a_factory_that_is_not_callable_and_commands_that_fail(monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_BLOCK_PLUGINS", "timm-models")
    hooks = [("not-callable", _plugin(register_defenses=lambda register: register("broken", 42))),
             ("shadow", _plugin(register_commands=_Command.shadowing)),
             ("no-commands", _plugin(register_commands=_Command.raising))]
    host_module._HOST = make_host(plugins=hooks)
    listing = CliRunner().invoke(cli, ["plugins"])
    assert listing.exit_code == 0
    failed = [line for line in listing.stdout.splitlines() if line.startswith("FAILED")]
    assert any("'not-callable' failed in register_defenses" in line and "not something to call" in line
               for line in failed), failed
    assert any("'shadow' failed in register_commands: it replaces the command(s) train" in line for line in failed)
    assert any("'no-commands' failed in register_commands: RuntimeError: cannot register" in line for line in failed)
    # The built-in train is untouched.
    assert "not the real train" not in CliRunner().invoke(cli, ["train", "--help"]).output


def test_load_plugins_naming_no_plugin_is_said_in_the_error(monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "nonexistent")
    host_module._HOST = make_host()
    assert [f.plugin for f in host_module._HOST.failures] == ["nonexistent"]
    result = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--attack", "torchattacks:FGSM"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "(ROBUSTKIT_LOAD_PLUGINS='nonexistent' limits which plugins load)")


# --- no file a user hands in is ever unpickled with code -----------------------------------------


class _Payload:
    """Unpickling this creates the marker folder: proof that code from the file ran."""

    marker = ""

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def _evil(path: Path, marker: Path, wrap=lambda payload: payload) -> None:
    import pickle

    payload = _Payload()
    payload.marker = str(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(wrap(payload), protocol=2))


CIFAR10_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"]


@pytest.mark.parametrize("poisoned", ["data_batch_1", "test_batch", "batches.meta"])
def test_a_cifar_root_never_runs_code_from_its_pickles(tmp_path, poisoned):
    from test_datasets import write_cifar

    write_cifar(tmp_path, hundred=False)
    marker = tmp_path / "ran"
    _evil(tmp_path / "cifar-10-batches-py" / poisoned, marker, lambda p: {"data": p, "labels": [0]})
    result = CliRunner().invoke(cli, [*TRAIN, "--dataset", "cifar10", "--data-root", str(tmp_path),
                                      "--out", str(tmp_path / "out")])
    assert not marker.exists(), "code from a data file ran"
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = result.stderr.strip().splitlines()[-1]
    assert f"{poisoned} is not a plain data file: it refers to posix.mkdir" in line and "nothing in it was run" in line


def test_cifar100_root_never_runs_code(tmp_path):
    from test_datasets import write_cifar

    write_cifar(tmp_path, hundred=True)
    marker = tmp_path / "ran"
    _evil(tmp_path / "cifar-100-python" / "meta", marker, lambda p: {"fine_label_names": p})
    result = CliRunner().invoke(cli, [*TRAIN, "--dataset", "cifar100", "--data-root", str(tmp_path),
                                      "--out", str(tmp_path / "out")])
    assert not marker.exists() and result.exit_code == 2 and "is not a plain data file" in result.stderr


def test_weights_checkpoints_and_leaderboards_that_are_pickles_never_run(workspace, tmp_path):
    marker = tmp_path / "ran"
    # A checkpoint's weights replaced by a pickle (its checksum updated to match).
    ck = tmp_path / "ck"
    shutil.copytree(workspace / "ck", ck)
    _evil(ck / "last.safetensors", marker)
    meta = json.loads((ck / "last.json").read_text())
    meta["files"]["weights_sha256"] = hashlib.sha256((ck / "last.safetensors").read_bytes()).hexdigest()
    (ck / "last.json").write_text(json.dumps(meta))
    # The checkpoint's JSON itself a pickle; a leaderboard a pickle; timm weights a torch pickle with code.
    _evil(tmp_path / "meta" / "last.json", marker)
    _evil(tmp_path / "board.json", marker)
    _evil(tmp_path / "timm.pt", marker)
    runs = {
        "weights": ["attack", str(ck / "last.json"), *FGSM],
        "metadata": ["attack", str(tmp_path / "meta" / "last.json"), *FGSM],
        "leaderboard": ["leaderboard", "validate", str(tmp_path / "board.json")],
    }
    for what, argv in runs.items():
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 2 and "Traceback" not in result.output, (what, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, (what, result.stderr)
    with pytest.raises(RobustkitError, match="cannot read weights file"):  # torch.load(weights_only=True) refuses
        load_weights(tmp_path / "timm.pt", "timm:resnet18")
    assert not marker.exists(), "code from a file ran"


# --- no output written through a symbolic link ----------------------------------------------------


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_kept(tmp_path, monkeypatch):
    from robustkit.bench.spec import load_spec
    from robustkit.host import get_host

    monkeypatch.setenv("ROBUSTKIT_BLOCK_PLUGINS", "timm-models")
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(TINY_SPEC)
    key = load_spec(str(spec_path), get_host()).cells()[0].train_key
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    lock = tmp_path / "out" / "train" / key / ".lock"
    lock.parent.mkdir(parents=True)
    lock.symlink_to(victim)
    result = CliRunner().invoke(cli, ["bench", "run", str(spec_path), "--out", str(tmp_path / "out")])
    assert victim.read_text() == "keep me"
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "robustkit never writes through links" in result.stderr


def test_attack_outputs_replace_a_planted_link_instead_of_writing_through_it(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    victims = {}
    for name in ("grid.png", "summary.json", "records.jsonl"):
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_text("keep me")
        (out / name).symlink_to(victims[name])
    result = CliRunner().invoke(cli, ["attack", "--model", "lenet", *FGSM, "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name, victim in victims.items():
        assert victim.read_text() == "keep me", name
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0, name


def test_a_training_folder_loses_the_temporaries_of_a_killed_save(workspace, tmp_path):
    import subprocess

    done = subprocess.Popen(["true"])
    done.wait()
    folder = tmp_path / "ck"
    shutil.copytree(workspace / "ck", folder)
    stale = folder / f".last.optim.safetensors.{done.pid}.0123abcd.tmp"
    stale.write_bytes(b"half a file")
    result = CliRunner().invoke(cli, [*TRAIN, "--out", str(folder)])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and not list(folder.glob("*.tmp"))
