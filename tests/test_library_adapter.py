"""The core's adapter base (robustkit.library_adapter) on its own, wrapping a fake in-memory attack library."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import types
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from robustkit import hookimpl
from robustkit.attacks import AttackResult
from robustkit.errors import ParameterError, RobustkitError
from robustkit.host import make_host
from robustkit.library_adapter import (
    DECISION,
    FIXED,
    SHAPE_DOC,
    WHITE,
    AttackFacts,
    FromLibrary,
    Library,
    LibraryAttack,
    attack_docstring,
    installed_version,
    parse_tuple,
    register_adapters,
)
from robustkit.params import Param

# --- a fake attack library, importable as "fakelib" while a test runs ---------------------------------------


class Shift:
    """Shift: move every pixel up by eps.

    Arguments:
        eps (float): how far every pixel moves.
    """

    def __init__(self, model: nn.Module, eps: float = 0.1, steps: int = 3, norm: str = "Linf",
                 size: tuple[int, int] = (2, 4)):
        if steps > 100:
            raise ValueError("steps must be at most 100")
        self.model, self.eps, self.steps, self.norm, self.size = model, eps, steps, norm, size

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return images + self.eps


class Noise:
    """Noise: add Gaussian noise."""

    def __init__(self, model: nn.Module, std: float = 0.5, seed=None):
        self.std = std

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return images + self.std * torch.randn_like(images)


def fake_library() -> types.ModuleType:
    library = types.ModuleType("fakelib")
    library.Shift, library.Noise = Shift, Noise  # type: ignore[attr-defined]
    return library


class FakeAttack(LibraryAttack):
    """Base of the ``fake:NAME`` classes."""

    library = Library("fakelib", "1.2.3", "fake:", "Fake")
    loads: ClassVar[list[str]] = []  # every read of the library, by attack name
    tuple_hint = "a pair like 2,4"

    @classmethod
    def load_library_class(cls) -> type:
        FakeAttack.loads.append(cls.library_name)
        return getattr(importlib.import_module("fakelib"), cls.library_name)

    @classmethod
    def hidden_arguments(cls) -> tuple[str, ...]:
        return ("self", "model", "seed")

    @classmethod
    def argument_help(cls, library_class: type) -> dict[str, str]:
        doc = inspect.getdoc(library_class) or ""
        return {"eps": "how far every pixel moves"} if "eps (float)" in doc else {}

    @classmethod
    def param_changes(cls, param: Param, argument: inspect.Parameter) -> dict[str, Any]:
        if param.name == "norm":
            return {"choices": ("Linf", "L2", "linf", "l2")}
        return {"low": 0.0, "high": 1.0} if param.name == "eps" else {}

    def check_with_library(self) -> None:
        try:
            self.library_class(nn.Identity(), **self.library_kwargs())
        except ValueError as err:
            raise ParameterError(f"{self.display_name()}: {err}") from None

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor | None = None) -> AttackResult:
        return AttackResult(self.library_class(model, **self.library_kwargs())(images, labels))


FACTS = {
    "Shift": AttackFacts(("linf", "l2"), WHITE, FIXED, False, "moves every pixel", title="Shift every pixel up"),
    "Noise": AttackFacts(("unbounded",), DECISION, FIXED, False),
}
UNAVAILABLE = {"Train": ("Train a surrogate", "it needs training data\nand a surrogate; use fakelib directly")}


def fake_classes() -> list[type]:
    return [*(FakeAttack.adapter_class(name, facts) for name, facts in FACTS.items()),
            *(FakeAttack.unavailable_class(name, title, reason) for name, (title, reason) in UNAVAILABLE.items())]


class FakePlugin:
    @hookimpl
    def register_attacks(self, register: Any) -> None:
        register_adapters(register, fake_classes())


@pytest.fixture
def fakelib(monkeypatch):
    """``fakelib`` importable, and the record of its reads emptied."""
    monkeypatch.setitem(sys.modules, "fakelib", fake_library())
    FakeAttack.loads.clear()
    return sys.modules["fakelib"]


def fake_host():
    return make_host(plugins=[("fake", FakePlugin())], entry_points=False)


# --- registering and listing read nothing from the library ----------------------------------------------


def test_registering_and_listing_do_not_read_the_library(fakelib, monkeypatch):
    monkeypatch.setitem(sys.modules, "fakelib", None)  # any import of the library fails
    host = fake_host()
    assert not host.failures
    entries = {e.name: e for e in host.attacks.list("fake:*")}
    assert list(entries) == ["fake:Noise", "fake:Shift", "fake:Train"]
    shift = entries["fake:Shift"]
    assert shift.description == "Shift every pixel up (fakelib 1.2.3 Shift, adapted)."
    assert entries["fake:Noise"].description == "Noise (fakelib 1.2.3 Noise, adapted)."
    assert dict(shift.info) == {"threat_models": ("linf", "l2"), "knowledge": WHITE, "goal": FIXED,
                                "supports_targeted": False, "available": True, "note": "moves every pixel"}
    assert FakeAttack.loads == []
    for attr in ("library_class", "params", "__doc__"):
        assert isinstance(vars(shift.factory)[attr], FromLibrary), attr
    # Without the library, the help still states the facts; the parameters cannot be listed.
    assert "Threat models: linf, l2" in shift.factory.__doc__ and "fakelib's own (not readable here" in \
        shift.factory.__doc__
    with pytest.raises(ImportError):
        shift.declared_params()


def test_parameters_are_read_once_and_cached_per_class(fakelib):
    host = fake_host()
    shift = host.attacks.get("fake:Shift").factory
    assert FakeAttack.loads == []
    params = host.attacks.get("fake:Shift").declared_params()
    assert FakeAttack.loads == ["Shift"]
    assert [p.name for p in params] == ["eps", "steps", "norm", "size", "seed"]
    eps = params[0]
    assert (eps.type, eps.default, eps.help, eps.low, eps.high) == (float, 0.1, "how far every pixel moves", 0.0, 1.0)
    assert params[-1] == Param("seed", int, 0, FakeAttack.seed_help, low=0)
    # All placeholders were replaced at once, on the class: no further reads, whichever is asked next.
    assert vars(shift)["params"] is params and vars(shift)["library_class"] is Shift
    assert isinstance(vars(shift)["__doc__"], str)
    shift(eps=0.2)
    shift(steps=4)
    assert shift.__doc__ and shift.params is params
    assert FakeAttack.loads == ["Shift"]
    # Each class reads its own, once; an instance reaching an attribute first binds the class as well.
    noise = host.attacks.get("fake:Noise").factory
    assert object.__new__(noise).library_class is Noise
    assert [p.name for p in noise.params] == ["std", "seed"]
    assert FakeAttack.loads == ["Shift", "Noise"]


def test_a_created_attack_checks_parses_and_runs(fakelib):
    host = fake_host()
    attack = host.attacks.create("fake:Shift", {"eps": "1/10", "norm": "L2", "size": "3,5"})
    assert attack.config == {"eps": 0.1, "steps": 3, "norm": "L2", "size": (3, 5), "seed": 0}
    assert attack.norm == "l2" and attack.threat.norm == "l2" and attack.threat.eps == pytest.approx(0.1)
    assert attack.library_kwargs() == {"eps": 0.1, "steps": 3, "norm": "L2", "size": (3, 5)}
    assert attack.describe() == {"name": "fake:Shift", "params": attack.config, "library": "fakelib 1.2.3",
                                 "norm": "l2"}
    x = torch.full((2, 1, 4, 4), 0.5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    assert torch.allclose(attack(model, x, torch.zeros(2, dtype=torch.long)).adversarial, x + 0.1)
    with pytest.raises(ParameterError, match=r"fake:Shift: parameter 'size' must be a pair like 2,4; got '3,,'"):
        host.attacks.create("fake:Shift", {"size": "3,,"})
    with pytest.raises(ParameterError, match="fake:Shift: steps must be at most 100"):  # the library's own check
        host.attacks.create("fake:Shift", {"steps": 101})
    with pytest.raises(ParameterError, match="'eps' must be <= 1.0"):
        host.attacks.create("fake:Shift", {"eps": 2})
    noise = host.attacks.create("fake:Noise")
    assert noise.norm == "unbounded" and noise.threat is None


def test_unavailable_attacks_are_listed_with_their_reason_and_refused_in_one_line(fakelib):
    host = fake_host()
    entry = host.attacks.get("fake:Train")
    reason = "it needs training data and a surrogate; use fakelib directly"
    assert entry.info["available"] is False and entry.info["reason"] == reason
    assert entry.declared_params() == ()
    assert entry.description == f"Train a surrogate (fakelib 1.2.3 Train; unavailable: {reason})."
    assert entry.factory.__name__ == "FakeTrain" and entry.factory.__module__ == __name__
    with pytest.raises(RobustkitError) as caught:
        host.attacks.create("fake:Train")
    assert str(caught.value) == f"fake:Train is not available through robustkit: {reason}"
    described = FakeAttack.unavailable_class("Train", "Train a surrogate", "no", description="Train (unavailable)")
    assert described.description == "Train (unavailable)" and described.__doc__.endswith("unavailable: no).")
    assert FakeAttack.loads == []


# --- docstrings, tuples, versions -----------------------------------------------------------------------


def test_docstrings_follow_the_uniform_format(fakelib):
    doc = fake_host().attacks.get("fake:Shift").factory.__doc__
    assert doc == "\n".join([
        "Shift every pixel up (fakelib 1.2.3 Shift, adapted).",
        "",
        "Threat models: linf, l2. Knowledge: white-box. Goal: fixed-budget. Targeted: no.",
        "Note: moves every pixel.",
        "",
        "Arguments:",
        "    eps (float): how far every pixel moves (Default: 0.1)",
        "    steps (int): passed to fakelib (Default: 3)",
        "    norm (str): passed to fakelib (Default: 'Linf')",
        "    size (any): passed to fakelib (Default: (2, 4))",
        f"    seed (int): {FakeAttack.seed_help} (Default: 0)",
        "",
        SHAPE_DOC,
    ])
    assert doc.splitlines()[0] == FakeAttack.adapter_class("Shift", FACTS["Shift"]).summary()
    only = AttackFacts(("l2",), WHITE, FIXED, True, targeted_only=True)
    assert "Targeted: only." in attack_docstring(FakeAttack.library, "X", "X", only, ())
    both = AttackFacts(("l2",), WHITE, FIXED, True)
    assert "Targeted: yes." in attack_docstring(FakeAttack.library, "X", "X", both, ())


@pytest.mark.parametrize("given, parsed", [
    ("2,10", (2, 10)), ("(2, 10)", (2, 10)), (" (0.5, -1) ", (0.5, -1)), ("3", 3), ("-0.2,0.2", (-0.2, 0.2)),
    ([1, 2], (1, 2)), ((1, 2), (1, 2)), (7, 7), (None, None),
])
def test_tuples_are_parsed_from_the_command_line(given, parsed):
    assert parse_tuple(given, "x: parameter 'p'") == parsed


def test_a_bad_tuple_names_the_parameter():
    with pytest.raises(ParameterError, match=r"^x: parameter 'p' must be a tuple like 1,2; got 'a,b'$"):
        parse_tuple("a,b", "x: parameter 'p'")
    with pytest.raises(ParameterError, match=r"must be a number or a pair; got '1,,'$"):
        parse_tuple("1,,", "x", "a number or a pair")


def test_installed_version_reads_metadata_and_knows_a_missing_distribution():
    import pluggy

    assert installed_version("pluggy") == pluggy.__version__
    assert installed_version("robustkit-no-such-distribution") is None


def test_the_module_imports_no_attack_library_and_no_plugin():
    script = ("import sys, robustkit.library_adapter; "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('torchattacks', 'art', 'foolbox', 'robustkit_torchattacks', 'robustkit_art')))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
