"""``attacks list`` hides what cannot be used here (``--all`` shows it, ``--json`` keeps it) and wraps long
descriptions to the terminal; specs read fractions like ``"8/255"`` as the CLI does; ``--threads N`` on the
commands that compute."""

from __future__ import annotations

import json
import types

import pytest
import torch
from click.testing import CliRunner

import robustkit.host as host_module
from robustkit import hookimpl
from robustkit.bench.spec import SpecError, parse_spec
from robustkit.cli import cli
from robustkit.compat import tomllib
from robustkit.errors import RobustkitError
from robustkit.host import make_host

LONG = ("A made-up attack whose description goes on and on about what it does, how it does it, and which "
        "paper it comes from, far past the width of any reasonable terminal window")


def _factory(**params):  # never built by these tests
    raise AssertionError("not built")


@pytest.fixture(scope="module")
def host():
    plugin = types.ModuleType("listing_plugin")

    def register_attacks(register):
        register("fake:usable", _factory, description=LONG, params=())
        register("fake:missing", _factory, description="needs a package that is not here", params=(),
                 available=False, reason="it needs the nopackage package, which is not installed")

    plugin.register_attacks = hookimpl(register_attacks)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_BLOCK_PLUGINS", "timm-models")
        return make_host(plugins=[("listing-plugin", plugin)])


def invoke(host, args, **kwargs):
    host_module._HOST = host  # the test environment resets it afterwards
    return CliRunner().invoke(cli, args, **kwargs)


# --- 1. listing -------------------------------------------------------------------------------------------


def test_list_hides_unavailable_and_says_so(host, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    result = invoke(host, ["attacks", "list", "fake:*"])
    assert result.exit_code == 0, result.output
    assert "fake:usable" in result.output and "fake:missing" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("1 attack hidden") and "--all" in last

    shown = invoke(host, ["attacks", "list", "fake:*", "--all"])
    assert shown.exit_code == 0 and "fake:missing" in shown.output and "hidden" not in shown.output


def test_list_of_only_unavailable_ones(host):
    result = invoke(host, ["attacks", "list", "fake:missing"])
    assert result.exit_code == 0 and "fake:missing" not in result.output.replace("'fake:missing'", "")
    assert "--all shows them" in result.output


def test_json_keeps_everything(host):
    entries = {e["name"]: e for e in json.loads(invoke(host, ["attacks", "list", "fake:*", "--json"]).output)}
    assert set(entries) == {"fake:usable", "fake:missing"}
    assert entries["fake:missing"]["available"] is False and "nopackage" in entries["fake:missing"]["reason"]
    assert entries["fake:missing"]["info"]["available"] is False
    assert entries["fake:usable"]["available"] is True and entries["fake:usable"]["reason"] is None


@pytest.mark.parametrize("columns", [60, 80, 100])
def test_long_descriptions_wrap_to_the_width(host, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    out = invoke(host, ["attacks", "list", "fake:*", "--all"]).output
    assert max(len(line) for line in out.splitlines()) <= columns
    assert all(word in out.replace(",", " ").split() for word in LONG.replace(",", "").split())  # wrapped, not cut
    assert len(out.splitlines()) > 4  # onto continuation lines


def test_real_art_plugin_hides_what_it_cannot_run():
    host = make_host()
    entries = json.loads(invoke(host, ["attacks", "list", "art:*", "--all", "--json"]).output)
    unavailable = [e["name"] for e in entries if e["available"] is False]
    if not unavailable:
        pytest.skip("every ART attack is available here")
    out = invoke(host, ["attacks", "list", "art:*"]).output
    assert unavailable[0] + " " not in out and f"{len(unavailable)} attacks hidden" in out
    assert unavailable[0] in invoke(host, ["attacks", "list", "art:*", "--all"]).output


# --- 2. fractions in specs --------------------------------------------------------------------------------

SPEC = """\
name = "fractions"
seeds = [0]
dataset = {{name = "digits"}}
model = {{name = "lenet", params = {{width = 0.25}}}}
training = {{epochs = 1, batch_size = 64, lr = 5e-3, val_examples = 0}}
threat = {{norm = "linf", eps = {eps}}}
evaluation = {{n_examples = 40, eps_curve = [{curve}]}}
audit = {{enabled = false}}

[[attacks]]
name = "torchattacks:PGD"
label = "pgd"
params = {{alpha = {alpha}, steps = 3}}

[[defenses]]
name = "natural"

[[defenses]]
name = "pgd-at"
params = {{steps = 2}}
sweep = [{sweep}]
"""


def spec(host, **values):
    text = SPEC.format(**{"eps": repr(8 / 255), "curve": f"{4 / 255!r}, {16 / 255!r}", "alpha": repr(2 / 255),
                          "sweep": f"{4 / 255!r}, {8 / 255!r}", **values})
    return parse_spec(tomllib.loads(text), "spec.toml", host)


def test_fraction_strings_read_as_numbers_with_the_same_keys(host):
    plain = spec(host)
    written = spec(host, eps='"8/255"', curve='"4/255", "16/255"', alpha='"2/255"', sweep='"4/255", "8 / 255"')
    assert written.threat["eps"] == 8 / 255
    assert written.evaluation["eps_curve"] == [4 / 255, 16 / 255]
    assert written.attack("pgd").params["alpha"] == 2 / 255
    assert written.defenses[1].sweep == (4 / 255, 8 / 255)
    assert [c.key for c in written.cells()] == [c.key for c in plain.cells()]
    assert written.spec_hash() == plain.spec_hash() and written.fingerprint() == plain.fingerprint()


def test_a_plain_number_string_is_read_in_numeric_fields_only(host):
    assert spec(host, eps='"0.0313725"').threat["eps"] == pytest.approx(0.0313725)


@pytest.mark.parametrize("values, where", [
    ({"eps": '"8/0"'}, "$.threat.eps"),
    ({"curve": '"1/255", "8/0"'}, "$.evaluation.eps_curve[1]"),
    ({"alpha": '"2/0"'}, "$.attacks[0].params.alpha"),
    ({"sweep": '"4/255", "1/0"'}, "$.defenses[1].sweep[1]"),
    ({"eps": '"eight/255"'}, "$.threat.eps"),
])
def test_a_bad_fraction_is_one_line_naming_the_field(host, values, where):
    with pytest.raises(SpecError) as err:
        spec(host, **values)
    message = str(err.value)
    assert "\n" not in message and where in message and message.startswith("spec.toml: ")


def test_bench_show_reads_a_fraction_spec_file(host, tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(eps='"8/255"', curve='"4/255"', alpha='"2/255"', sweep='"4/255"'))
    result = invoke(host, ["bench", "show", str(path)])
    assert result.exit_code == 0, result.output
    path.write_text(SPEC.format(eps='"8/0"', curve='"4/255"', alpha='"2/255"', sweep='"4/255"'))
    bad = invoke(host, ["bench", "show", str(path)])
    assert bad.exit_code != 0 and "$.threat.eps" in bad.output and "divides by zero" in bad.output


# --- 3. --threads -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "attack", "quickstart"])
def test_threads_in_help(host, command):
    result = invoke(host, [command, "--help"])
    assert result.exit_code == 0 and "--threads N" in result.output


@pytest.fixture
def calls(monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    return seen


@pytest.mark.parametrize("args", [
    ["train", "--model", "no-such-model"],
    ["attack", "--model", "no-such-model", "--attack", "torchattacks:FGSM"],
])
def test_threads_set_before_work(host, calls, args):
    result = invoke(host, [*args, "--threads", "3"])
    assert result.exit_code != 0 and "no-such-model" in result.output  # failed after the threads were set
    assert calls == [3]
    calls.clear()
    invoke(host, args)
    assert calls == []  # without --threads torch's default stays


def test_quickstart_sets_threads(host, calls, monkeypatch, tmp_path):
    import robustkit.commands.quickstart as quickstart

    def stop(*args, **kwargs):
        raise RobustkitError("stopped before the work")

    monkeypatch.setattr(quickstart, "run_quickstart", stop)
    result = invoke(host, ["quickstart", "--threads", "1", "--out", str(tmp_path / "qs")])
    assert "stopped before the work" in result.output and calls == [1]


def test_threads_must_be_positive(host):
    result = invoke(host, ["train", "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output


def test_recipes_list_like_every_registry_and_json_carries_what_each_recipe_fixes(host):
    table = invoke(host, ["recipes", "list"])
    assert table.exit_code == 0, table.output
    assert "cifar10-pgd-at-rice2020" in table.output and "mnist-madry" in table.output
    only = invoke(host, ["recipes", "list", "cifar10-*"])
    assert "cifar10-pgd-at-rice2020" in only.output and "mnist-madry" not in only.output
    listed = json.loads(invoke(host, ["recipes", "list", "--json"]).output)
    rice = next(entry for entry in listed if entry["name"] == "cifar10-pgd-at-rice2020")
    assert rice["recipe"]["model"]["name"] == "preact-resnet18" and rice["recipe"]["published"]
