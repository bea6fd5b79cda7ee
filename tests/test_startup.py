"""Startup stays cheap: building the plugin host and listing names import no heavy library.

Every ``robustkit`` command builds the plugin host, so ``robustkit --help`` and ``robustkit
attacks|models|datasets|defenses list`` would pay seconds per library a plugin imports while
registering. torch itself is unavoidable; torchvision, torchattacks, timm, ART and SciPy must be
imported only when a component is created, its parameters are listed (``list --params/--json``)
or in tests. Each check runs in a fresh interpreter, since this one has imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest

HEAVY = ("torchvision", "torchattacks", "timm", "art", "scipy")
PLUGINS = sorted({ep.name for ep in metadata.entry_points(group="robustkit")})

# Loads the plugins one at a time (so an import is blamed on the plugin that made it; a library
# that an earlier plugin already imported is not blamed again), then all of them together as the
# CLI does, lists every registry the way plain `list` does, runs the CLI's listing commands, and
# finally lists one attack's parameters, which may import its library.
SCRIPT = r"""
import contextlib, io, json, os, sys
from importlib import metadata

heavy = json.loads(sys.argv[1])
loaded = lambda: sorted(m for m in heavy if m in sys.modules)
report = {"plugins": {}, "failed": []}

from robustkit.host import make_host, reset_host

for ep in sorted(metadata.entry_points(group="robustkit"), key=lambda e: e.name):
    os.environ["ROBUSTKIT_LOAD_PLUGINS"] = ep.name
    before = set(loaded())
    host = make_host()
    report["failed"] += [f.plugin for f in host.failures]
    report["plugins"][ep.name] = sorted(set(loaded()) - before)
del os.environ["ROBUSTKIT_LOAD_PLUGINS"]

host = make_host()
report["names"] = {kind: registry.names() for kind, registry in host.registries.items()}
for registry in host.registries.values():
    for entry in registry.list():  # what plain `robustkit KIND list` shows
        entry.name, entry.plugin, entry.description, dict(entry.info)
report["host"] = loaded()

from robustkit.cli import cli

for args in (["--help"], ["plugins"], ["attacks", "list"], ["models", "list", "timm:resnet1*"],
             ["datasets", "list"], ["defenses", "list"]):
    reset_host()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.main(args, prog_name="robustkit", standalone_mode=False)
        except SystemExit:
            pass
report["cli"] = loaded()

if "torchattacks:PGD" in host.attacks:
    report["pgd_params"] = [p.name for p in host.attacks.get("torchattacks:PGD").declared_params()]
report["after_params"] = loaded()
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from robustkit_timm import models as timm_models

    # A warm timm name cache of our own: a cold one has to import timm once, by design.
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_CACHE_DIR", str(cache))
        timm_models.model_names()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBUSTKIT_")}
    env.update(ROBUSTKIT_CACHE_DIR=str(cache), ROBUSTKIT_PROGRESS="0")
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(HEAVY)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _culprits(report: dict) -> str:
    blamed = {p: mods for p, mods in report["plugins"].items() if mods and p not in report["failed"]}
    return f"first imported by plugins: {blamed}" if blamed else "no plugin alone imports them"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_registering_a_plugin_imports_no_heavy_library(report, plugin):
    if plugin in report["failed"]:
        pytest.skip(f"plugin '{plugin}' does not load here (see tests/test_host.py)")
    assert report["plugins"][plugin] == [], f"plugin '{plugin}' imports {report['plugins'][plugin]} at registration"


def test_building_the_host_and_listing_names_imports_no_heavy_library(report):
    names = report["names"]
    assert "torchattacks:PGD" in names["attack"] and "timm:resnet18" in names["model"]
    assert {"digits", "mnist", "cifar10", "cifar100", "stl10"} <= set(names["dataset"])
    assert report["host"] == [], f"imported while building the host: {report['host']}; {_culprits(report)}"


def test_help_and_plain_listings_import_no_heavy_library(report):
    assert report["cli"] == [], f"imported by --help / list commands: {report['cli']}; {_culprits(report)}"


def test_listing_parameters_imports_the_library(report):
    assert {"eps", "alpha", "steps", "seed"} <= set(report["pgd_params"])
    assert "torchattacks" in report["after_params"]
