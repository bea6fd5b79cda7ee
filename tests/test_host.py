"""The plugin host: entry points, broken plugins, environment switches, duplicate names."""

from __future__ import annotations

import types

import pytest

from robustkit import hookimpl
from robustkit.attacks import Attack
from robustkit.errors import PluginError
from robustkit.host import make_host


def plugin(name: str, **hooks) -> types.SimpleNamespace:
    """A plugin object from hook functions (what a module with @hookimpl functions looks like)."""
    ns = types.SimpleNamespace(__name__=name)
    for hook_name, fn in hooks.items():
        setattr(ns, hook_name, hookimpl(fn))
    return ns


class Dummy(Attack):
    """Returns the images unchanged."""

    def perturb(self, model, images, labels, target_labels=None):
        return images


ESSENTIALS = {"datasets", "paper-models", "baseline-defenses", "native-attacks", "presets", "recipes", "executors"}


def test_the_essential_set_is_robustkits_own_and_the_rest_comes_through_entry_points():
    host = make_host()
    for name in ESSENTIALS:
        assert host.records[name].distribution == "robustkit", name
    for name, distribution in (("torchattacks", "robustkit-torchattacks"), ("timm-models", "robustkit-timm"),
                               ("hotcold", "robustkit-hotcold")):
        assert host.records[name].distribution == distribution, f"{name} not loaded: {host.failures}"
    assert not host.failures
    bare = make_host(entry_points=False)
    assert set(bare.records) == ESSENTIALS
    assert {"natural", "pgd-at", "fgsm-at", "fgm-at", "trades"} <= set(bare.defenses.names())
    assert {"pgd", "cw-linf"} <= set(bare.attacks.names()) and "quick" in bare.benchmarks


def test_registered_items_record_their_plugin():
    good = plugin("good", register_attacks=lambda register: register("dummy", Dummy))
    host = make_host(plugins=[("good", good)], entry_points=False)
    entry = host.attacks.get("dummy")
    assert entry.plugin == "good" and entry.description == "Returns the images unchanged."
    assert host.records["good"].registered == {"attack": ["dummy"]}
    assert host.records["good"].hooks == ["register_attacks"]


def test_plugin_raising_in_hook_is_reported_and_skipped():
    def broken(register):
        register("half", Dummy)
        raise RuntimeError("boom")

    good = plugin("good", register_attacks=lambda register: register("dummy", Dummy))
    bad = plugin("bad", register_attacks=broken)
    host = make_host(plugins=[("good", good), ("bad", bad)], entry_points=False)
    assert "dummy" in host.attacks
    assert "half" not in host.attacks  # all or nothing per plugin
    (failure,) = host.failures
    assert failure.plugin == "bad" and failure.phase == "register_attacks"
    assert "boom" in failure.message() and "skipped" in failure.message()


def test_misspelled_hook_is_a_broken_plugin():
    def register_atacks(register):  # typo: no such hook
        pass

    host = make_host(plugins=[("typo", plugin("typo", register_atacks=register_atacks))], entry_points=False)
    assert "typo" not in host.records
    assert host.failures[0].plugin == "typo" and "register_atacks" in host.failures[0].error


def test_duplicate_name_names_both_plugins_and_pluggys_call_order_decides():
    first = plugin("first", register_attacks=lambda register: register("same", Dummy))
    second = plugin("second", register_attacks=lambda register: register("SAME", Dummy))
    host = make_host(plugins=[("first", first), ("second", second)], entry_points=False)
    (failure,) = host.failures
    assert "'first'" in failure.error and "'second'" in failure.error
    assert host.attacks.get("same").plugin == "second"  # pluggy calls the last registered first


def test_tryfirst_and_trylast_are_honoured():
    def named(name):
        def register_attacks(register):
            register("same", Dummy)
        return register_attacks

    early = types.SimpleNamespace(__name__="early", register_attacks=hookimpl(tryfirst=True)(named("early")))
    late = types.SimpleNamespace(__name__="late", register_attacks=hookimpl(trylast=True)(named("late")))
    plain = plugin("plain", register_attacks=named("plain"))
    host = make_host(plugins=[("early", early), ("plain", plain), ("late", late)], entry_points=False)
    assert host.attacks.get("same").plugin == "early"
    assert sorted(f.plugin for f in host.failures) == ["late", "plain"]


def test_a_plugin_cannot_take_an_essential_name_whatever_its_order():
    impostor = plugin("aaa-dup", register_defenses=lambda register: register("natural", Dummy),
                      register_attacks=lambda register: register("PGD", Dummy))
    trying = types.SimpleNamespace(__name__="eager", register_attacks=hookimpl(tryfirst=True)(
        lambda register: register("cw-linf", Dummy)))
    host = make_host(plugins=[("aaa-dup", impostor), ("eager", trying)])
    assert host.defenses.get("natural").plugin == "baseline-defenses"
    assert host.attacks.get("pgd").plugin == "native-attacks"
    assert host.attacks.get("cw-linf").plugin == "native-attacks"
    assert {"pgd-at", "fgsm-at", "fgm-at", "trades"} <= set(host.defenses.names())  # the essential set is whole
    messages = {f.plugin: f.error for f in host.failures}
    assert "defense 'natural' is robustkit's own (plugin 'baseline-defenses'); plugin 'aaa-dup' may not replace" \
        in messages["aaa-dup"]
    assert "cw-linf" in messages["eager"]


def test_an_entry_point_with_an_essential_plugins_name_is_refused_by_name(monkeypatch):
    from importlib import metadata

    class FakeEntryPoint:
        name, group, dist = "baseline-defenses", "robustkit", types.SimpleNamespace(name="evil-dist", version="1")

        def load(self):
            raise AssertionError("an entry point named after an essential plugin must not even be loaded")

    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [FakeEntryPoint()] if group == "robustkit"
                        else real(group=group))
    host = make_host()
    assert host.records["baseline-defenses"].distribution == "robustkit"
    (failure,) = host.failures
    assert failure.plugin == "baseline-defenses" and "distribution 'evil-dist'" in failure.error


def test_wrapper_implementations_are_refused_at_load():
    def register_attacks(register):
        register("never", Dummy)
        yield

    wrapped = types.SimpleNamespace(__name__="wrapped", register_attacks=hookimpl(wrapper=True)(register_attacks))
    host = make_host(plugins=[("wrapped", wrapped)], entry_points=False)
    assert "wrapped" not in host.records and "never" not in host.attacks
    (failure,) = host.failures
    assert failure.plugin == "wrapped" and "register_attacks is declared as a wrapper" in failure.error


def test_load_only_and_block_environment(monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "torchattacks")
    assert set(make_host().records) == ESSENTIALS | {"torchattacks"}
    monkeypatch.delenv("ROBUSTKIT_LOAD_PLUGINS")
    monkeypatch.setenv("ROBUSTKIT_BLOCK_PLUGINS", "timm-models")
    host = make_host()
    assert "timm-models" not in host.records and "paper-models" in host.records
    assert not host.models.list("timm:*")


def test_the_essential_set_cannot_be_left_out_or_blocked(monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "")
    assert set(make_host().records) == ESSENTIALS
    monkeypatch.delenv("ROBUSTKIT_LOAD_PLUGINS")
    monkeypatch.setenv("ROBUSTKIT_BLOCK_PLUGINS", "baseline-defenses")
    host = make_host()
    assert "natural" in host.defenses
    (failure,) = host.failures
    assert failure.plugin == "baseline-defenses" and "essential set, which is always loaded" in failure.error


def test_trace_environment_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "")
    monkeypatch.setenv("ROBUSTKIT_TRACE_HOOKS", "1")
    make_host(plugins=[("good", plugin("good", register_attacks=lambda register: register("dummy", Dummy)))])
    assert "register_attacks" in capsys.readouterr().err


def test_registry_duplicate_error_is_a_plugin_error():
    from robustkit.registry import Entry, Registry

    reg = Registry("attack")
    reg.add(Entry("x", Dummy, plugin="a"))
    with pytest.raises(PluginError, match="'a' and by plugin 'b'"):
        reg.add(Entry("X", Dummy, plugin="b"))


def test_every_hookspec_is_documented_with_params():
    from robustkit import hookspecs

    specs = hookspecs._all_specs()
    assert {"register_models", "register_datasets", "register_attacks", "register_defenses",
            "register_commands"} <= set(specs)
    for name, fn in specs.items():
        assert fn.__doc__ and ":param" in fn.__doc__, f"hook {name} lacks a documented parameter"


def test_a_bug_inside_a_factory_keeps_its_traceback_and_names_the_plugin():
    from robustkit.errors import PluginBug, RobustkitError

    def buggy(**params):
        return 1 / 0

    host = make_host(plugins=[("buggy", plugin("buggy", register_attacks=lambda register: register("oops", buggy)))],
                     entry_points=False)
    expected = (r"attack 'oops' of plugin 'buggy' failed while being created \(ZeroDivisionError: division by zero\); "
                "this is a bug in the plugin")
    with pytest.raises(PluginBug, match=expected) as caught:
        host.attacks.create("oops")
    assert not isinstance(caught.value, RobustkitError)  # the CLI shows its traceback
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_a_parameter_problem_a_component_names_stays_one_line():
    from robustkit.errors import ParameterError

    host = make_host()
    with pytest.raises(ParameterError, match="6n \\+ 4"):
        host.models.create("wide-resnet", {"depth": 20}, num_classes=10, in_channels=1, image_size=(8, 8))


def test_an_attack_classs_facts_are_recorded_without_restating_them():
    class Bounded(Dummy):
        threat_models = ("l2",)
        knowledge = "score-based"
        goal = "minimal-distortion"

    host = make_host(plugins=[("facts", plugin("facts", register_attacks=lambda register: register("b", Bounded,
                                                                                                      note="x")))],
                     entry_points=False)
    info = dict(host.attacks.get("b").info)
    assert info == {"threat_models": ("l2",), "knowledge": "score-based", "goal": "minimal-distortion",
                    "supports_targeted": False, "note": "x"}
