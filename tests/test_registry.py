"""Registries: wildcard listing, did-you-mean, creation with validated parameters."""

from __future__ import annotations

import pytest

from robustkit.errors import ParameterError, UnknownNameError
from robustkit.params import Param, parse_assignments, resolve_params
from robustkit.registry import Entry, Registry


class Widget:
    """A test component."""

    params = (Param("size", int, 3, low=1), Param("rate", float, 0.5, low=0.0, high=1.0),
              Param("mode", str, "a", choices=("a", "b")), Param("flag", bool, False))

    def __init__(self, size, rate, mode, flag, **context):
        self.kw = dict(size=size, rate=rate, mode=mode, flag=flag, **context)


@pytest.fixture
def registry():
    reg = Registry("attack")
    for name in ("torchattacks:PGD", "torchattacks:PGDL2", "torchattacks:FGSM", "art:DeepFool", "widget"):
        reg.add(Entry(name, Widget, plugin="p"))
    return reg


def test_wildcards_and_substrings(registry):
    assert [e.name for e in registry.list("torchattacks:PGD*")] == ["torchattacks:PGD", "torchattacks:PGDL2"]
    assert [e.name for e in registry.list("deepfool")] == ["art:DeepFool"]
    assert [e.name for e in registry.list("*:?GSM")] == ["torchattacks:FGSM"]
    assert len(registry.list()) == 5


def test_unknown_name_suggests_closest(registry):
    with pytest.raises(UnknownNameError) as err:
        registry.get("torchattacks:PDG")
    assert "did you mean torchattacks:PGD" in str(err.value)
    assert "robustkit attacks list" in str(err.value)


def test_lookup_is_case_insensitive(registry):
    assert registry.get("TORCHATTACKS:pgd").name == "torchattacks:PGD"


def test_create_converts_cli_strings_and_passes_context(registry):
    w = registry.create("widget", {"size": "7", "rate": "1/4", "flag": "true"}, extra=1)
    assert w.kw == {"size": 7, "rate": 0.25, "mode": "a", "flag": True, "extra": 1}


@pytest.mark.parametrize("given, message", [
    ({"sise": 3}, "unknown parameter 'sise'; did you mean size"),
    ({"size": "three"}, "'size' must be of type int"),
    ({"size": 0}, "'size' must be >= 1"),
    ({"rate": 2}, "'rate' must be <= 1.0"),
    ({"rate": "nan"}, "'rate' must be finite"),
    ({"mode": "c"}, "'mode' must be one of a, b"),
    ({"flag": "maybe"}, "'flag' must be of type bool"),
])
def test_bad_parameters_fail_before_creation(registry, given, message):
    with pytest.raises(ParameterError, match=message):
        registry.create("widget", given)


def test_parse_assignments():
    assert parse_assignments(["eps=8/255", " steps = 10"]) == {"eps": "8/255", "steps": "10"}
    with pytest.raises(ParameterError, match="key=value"):
        parse_assignments(["eps"])


def test_signature_params_pass_through():
    def factory(model=None, eps=0.3, steps=10, norm="Linf", extra=None):
        return dict(eps=eps, steps=steps, norm=norm, extra=extra)

    entry = Entry("f", factory, plugin="p")
    assert [p.name for p in entry.declared_params()] == ["eps", "steps", "norm", "extra"]
    assert entry.resolve({"eps": "0.1", "extra": "5"}) == {"eps": 0.1, "steps": 10, "norm": "Linf", "extra": 5}
    with pytest.raises(ParameterError, match="did you mean steps"):
        entry.resolve({"step": 3})


def test_resolve_params_fills_defaults():
    assert resolve_params((Param("a", int, 1),), {}, "x") == {"a": 1}
