"""Bad inputs through the CLI, as a careless user or an attacker types them: every one ends in one line on
stderr naming what is wrong, exit code 2, and no traceback.

Each case is ``(id, argv, fragment of the message)``; files a case needs are written by ``prepare`` into the
test's folder (``{tmp}`` in argv is replaced by it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from robustkit.cli import cli

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
]


def prepare(folder: Path) -> None:
    (folder / "big-seed.toml").write_text(TINY_SPEC.replace("seeds = [0]", "seeds = [99999999999999999999]"))


@pytest.mark.parametrize("argv, fragment", [pytest.param(a, f, id=i) for i, a, f in CASES])
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, argv, fragment):
    prepare(tmp_path)
    result = CliRunner().invoke(cli, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.stderr


def test_the_probe_is_wide():
    assert len({i for i, _, _ in CASES}) == len(CASES)
