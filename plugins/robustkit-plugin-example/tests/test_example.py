"""How a plugin tests itself: robustkit's contract checks over what it registers, then its own behaviour.

robustkit's pytest plugin (``robustkit.testing``) is active wherever robustkit is installed: every test gets
a fresh host and a private cache folder, with no setup here.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from robustkit.cli import cli
from robustkit.testing.contracts import check_attack, registered


@pytest.mark.parametrize("name", registered("attack", plugin="example"))
def test_every_attack_of_the_plugin_meets_the_contract(name):
    check_attack(name)


def test_the_attack_runs_from_the_command_line_and_the_command_is_added():
    result = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--attack", "example:uniform-noise eps=0.2",
                                      "--n-examples", "20"])
    assert result.exit_code == 0, result.output
    assert "example:uniform-noise" in result.output and "20 examples" in result.output
    demo = CliRunner().invoke(cli, ["noise-demo", "--eps", "0.25"])
    assert demo.output.strip() == "max change: 0.250"
