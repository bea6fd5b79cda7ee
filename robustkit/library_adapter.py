"""A base for plugins that offer every attack of an attack library as a robustkit attack.

An adapter plugin (``torchattacks:NAME``, ``art:NAME``) generates one :class:`LibraryAttack` subclass per
attack of its library, from a table of reviewed :class:`AttackFacts`, and registers them all with
:func:`register_adapters`. What every such plugin needs, and this module provides:

- :class:`Library`: how the library is named in registry names, class names, docstrings and provenance,
  with its installed version (:func:`installed_version`, read from the distribution's metadata).
- :class:`AttackFacts`: what one library attack is (threat models, knowledge, goal, targeted mode, a
  note), known without importing the library; plugins subclass it for their own facts.
- Lazy declared parameters (:class:`FromLibrary`): registering and listing names must stay cheap (they
  run whenever the CLI starts) while importing a library takes seconds, so a generated class's library
  class, ``params`` and ``__doc__`` are read from the library the first time any of them is asked for
  (the attack is created, its parameters listed or its help read), then cached on the class.
- The parameters themselves: the library constructor's keyword arguments (:meth:`LibraryAttack.library_params`,
  through :func:`~robustkit.params.params_from_signature`), adjusted by the plugin, plus ``seed``.
- Docstrings in the uniform format of the project's attacks (:func:`attack_docstring`).
- Tuple parameters typed on the command line as ``2,10`` (:func:`parse_tuple`).
- :meth:`LibraryAttack.unavailable_class`: a library attack the adapter cannot offer is still registered
  and listed with the reason, and refuses to be created with a one-line :class:`~robustkit.errors.RobustkitError`.

What stays in a plugin: how its library is found and called, how models are handed to it, what it caches,
and the tables of reviewed attacks. This module imports no attack library and no plugin.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, ClassVar

from robustkit.attacks import Attack
from robustkit.errors import ParameterError, RobustkitError
from robustkit.params import Param, params_from_signature, signature_names
from robustkit.threat import NORMS, ThreatModel, threat_of

#: Shorthands for :attr:`AttackFacts.knowledge` and :attr:`AttackFacts.goal` in plugins' tables.
WHITE, SCORE, DECISION = "white-box", "score-based", "decision-based"
FIXED, MINIMAL = "fixed-budget", "minimal-distortion"

SHAPE_DOC = """Shape:
    images: (N, C, H, W) in [0, 1]; labels: (N,) class indices.
    output: adversarial images of the same shape."""

_DOC_TYPES = (bool, int, float, str)


def installed_version(distribution: str) -> str | None:
    """The installed version of the pip ``distribution``, read from its metadata (nothing is imported), or
    None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Library:
    """An attack library as its adapter names it.

    :param label: its name in docstrings and provenance (``torchattacks``, ``ART``).
    :param version: the installed version (see :func:`installed_version`).
    :param prefix: the registry names' prefix (``torchattacks:``).
    :param class_prefix: the generated classes' names' prefix (``Torchattacks`` gives ``TorchattacksPGD``).
    """

    label: str
    version: str
    prefix: str
    class_prefix: str

    def source(self, name: str) -> str:
        """``label version name``: where the library attack ``name`` comes from, for docstrings."""
        return f"{self.label} {self.version} {name}"


@dataclass(frozen=True)
class AttackFacts:
    """What one library attack is, for listings, the benchmark protocol and the adapter; known without
    importing the library. Plugins subclass it to add their own facts (with defaults).

    :param threat_models: norms it bounds or minimizes (the first is the one without a ``norm`` parameter).
    :param knowledge: what it needs from the model (:data:`WHITE`, :data:`SCORE`, :data:`DECISION`).
    :param goal: :data:`FIXED` (stays within a budget) or :data:`MINIMAL` (finds the smallest change).
    :param targeted: whether robustkit offers its label-targeted mode.
    :param note: a caveat worth showing in listings (no final period).
    :param title: one line naming it; empty: the plugin's :meth:`LibraryAttack.title` decides.
    :param targeted_only: it needs ``target_labels``.
    """

    threat_models: tuple[str, ...]
    knowledge: str
    goal: str
    targeted: bool
    note: str = ""
    title: str = ""
    targeted_only: bool = False


def parse_tuple(value: Any, what: str, expected: str = "a tuple like 1,2") -> Any:
    """``"2,10"`` or ``"(2, 10)"`` from the command line -> ``(2, 10)``; a list becomes a tuple, a single
    value stays itself (``"3"`` -> 3), anything else passes.

    :param what: the parameter, for the message (``"art:X: parameter 'p'"``).
    :param expected: what a good value looks like, for the message.
    :raises ParameterError: the string is not a Python literal.
    """
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, list) else value
    try:
        parsed = ast.literal_eval(value if value.strip().startswith("(") else f"({value},)")
    except (ValueError, SyntaxError):
        raise ParameterError(f"{what} must be {expected}; got {value!r}") from None
    return parsed[0] if isinstance(parsed, tuple) and len(parsed) == 1 else parsed


def attack_docstring(library: Library, name: str, title: str, facts: AttackFacts, params: Sequence[Param] | None,
                     unreadable: BaseException | None = None) -> str:
    """The docstring of an adapted attack, in the format of the project's attacks
    (:class:`robustkit.essentials.attacks.PGD`): title, facts, ``Arguments:`` and ``Shape:``.

    :param name: the attack's name in the library.
    :param params: its declared parameters; None when they could not be read (``unreadable`` says why).
    """
    targeted = "only" if facts.targeted_only else "yes" if facts.targeted else "no"
    lines = [
        f"{title} ({library.source(name)}, adapted).",
        "",
        (f"Threat models: {', '.join(facts.threat_models)}. Knowledge: {facts.knowledge}. Goal: {facts.goal}. "
         f"Targeted: {targeted}."),
    ]
    if facts.note:
        lines.append(f"Note: {facts.note}.")
    if params is None:
        lines += ["", f"Arguments: {library.label}'s own (not readable here: {unreadable})."]
    else:
        lines += ["", "Arguments:", "\n".join(
            (f"    {p.name} ({p.type.__name__ if p.type in _DOC_TYPES else 'any'}): "
             f"{p.help or f'passed to {library.label}'} (Default: {p.default!r})") for p in params)]
    lines += ["", SHAPE_DOC]
    return "\n".join(lines)


class FromLibrary:
    """Placeholder for a generated class's attribute that is read from the library (``library_class``,
    ``params``, ``__doc__``, and any in :attr:`LibraryAttack.lazy_attributes`).

    The first read of any of them (on the class or an instance) imports the library and replaces all the
    placeholders of the class with their values (:meth:`LibraryAttack.bind_library`), so later reads are
    plain attribute reads. Should the library not be importable, reading ``__doc__`` still works (the
    facts without the arguments, not cached); the other attributes raise the ImportError.
    """

    owner: type[LibraryAttack]
    attr: str

    def __set_name__(self, owner: type[LibraryAttack], attr: str) -> None:
        self.owner, self.attr = owner, attr

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        try:
            self.owner.bind_library()
        except ImportError as err:
            if self.attr != "__doc__":
                raise
            return self.owner.docstring(None, unreadable=err)
        return getattr(self.owner, self.attr)


class LibraryAttack(Attack):
    """The base of every adapted library attack.

    A plugin subclasses it once (its adapter base, e.g. ``TorchattacksAttack``), sets :attr:`library`, and
    makes one subclass of that per library attack with :meth:`adapter_class`. It implements
    :meth:`load_library_class`, :meth:`perturb` and, as needed, the hooks that read parameters
    (:meth:`hidden_arguments`, :meth:`argument_help`, :meth:`param_changes`) and :meth:`check_with_library`.

    Creating an instance resolves the parameters, parses tuple parameters given as strings
    (:func:`parse_tuple`), sets ``threat`` from the norm and budget, and runs :meth:`check_with_library`.
    """

    library: ClassVar[Library]
    #: The attack's name in the library, and its facts (set on each generated class).
    library_name: ClassVar[str]
    facts: ClassVar[AttackFacts]
    #: The library's class (read on first use, like ``params`` and ``__doc__``).
    library_class: ClassVar[type]
    note: ClassVar[str] = ""
    #: Attributes read from the library on first use (:class:`FromLibrary`); all are set by :meth:`library_details`.
    lazy_attributes: ClassVar[tuple[str, ...]] = ("library_class", "params", "__doc__")
    #: Parameters holding the budget: the first one present bounds :attr:`threat`.
    budget_names: ClassVar[tuple[str, ...]] = ("eps",)
    seed_help: ClassVar[str] = "seeds Python, NumPy and torch right before the attack"
    #: What a tuple parameter looks like, for :func:`parse_tuple`'s message.
    tuple_hint: ClassVar[str] = "a tuple like 1,2"

    def __init__(self, **params: Any):
        super().__init__(**params)
        for name in self.tuple_params():
            self.config[name] = parse_tuple(self.config[name], f"{self.display_name()}: parameter '{name}'",
                                            self.tuple_hint)
        self.threat = self._threat_model()
        self.check_with_library()

    # -- generating classes --------------------------------------------------------------------------

    @classmethod
    def adapter_class(cls, name: str, facts: AttackFacts, **attrs: Any) -> type[LibraryAttack]:
        """A subclass for the library's attack ``name``, built from ``facts`` alone (nothing is imported);
        ``attrs`` are further class attributes."""
        class_name = cls.library.class_prefix + name
        namespace = {
            **{attr: FromLibrary() for attr in cls.lazy_attributes},
            "__module__": cls.__module__,
            "__qualname__": class_name,
            "name": cls.library.prefix + name,
            "library_name": name,
            "facts": facts,
            "threat_models": facts.threat_models,
            "knowledge": facts.knowledge,
            "goal": facts.goal,
            "supports_targeted": facts.targeted,
            "note": facts.note,
            **attrs,
        }
        return type(class_name, (cls,), namespace)

    @classmethod
    def unavailable_class(cls, name: str, title: str, reason: str, description: str | None = None) -> type[Attack]:
        """A class for the library's attack ``name`` that the adapter cannot offer: it registers (with
        :func:`register_adapters`) and lists with ``reason``, and creating it raises a one-line
        :class:`~robustkit.errors.RobustkitError` giving the reason.

        :param description: the listing's line; default: the docstring, ``title (library version name;
            unavailable: reason).``
        """
        reason = " ".join(reason.split())
        full_name = cls.library.prefix + name
        doc = f"{title} ({cls.library.source(name)}; unavailable: {reason})."

        def __init__(self: Attack, **params: Any) -> None:
            raise RobustkitError(f"{full_name} is not available through robustkit: {reason}")

        class_name = cls.library.class_prefix + name
        return type(class_name, (Attack,), {
            "__doc__": doc, "__module__": cls.__module__, "__qualname__": class_name, "__init__": __init__,
            "name": full_name, "available": False, "unavailable_reason": reason, "title": title,
            "description": doc if description is None else description,
        })

    # -- what is read from the library, once per class --------------------------------------------------

    @classmethod
    def load_library_class(cls) -> type:
        """The library's class for :attr:`library_name` (imports the library)."""
        raise NotImplementedError

    @classmethod
    def bind_library(cls) -> None:
        """Replace the class's :class:`FromLibrary` placeholders with :meth:`library_details`."""
        for attr, value in cls.library_details().items():
            setattr(cls, attr, value)
        left = [attr for attr, value in vars(cls).items() if isinstance(value, FromLibrary)]
        if left:
            raise TypeError(f"{cls.__name__}.library_details() did not set {', '.join(left)}")

    @classmethod
    def library_details(cls) -> dict[str, Any]:
        """The values of the :attr:`lazy_attributes`: the library class, the parameters and the docstring."""
        library_class = cls.load_library_class()
        params = cls.library_params(library_class)
        return {"library_class": library_class, "params": params, "__doc__": cls.docstring(params, library_class)}

    @classmethod
    def library_params(cls, library_class: type) -> tuple[Param, ...]:
        """The declared parameters: the library constructor's keyword arguments (less
        :meth:`hidden_arguments`) with help from :meth:`argument_help` and :meth:`param_changes` applied,
        then ``seed``."""
        helps = cls.argument_help(library_class)
        constructor = library_class.__init__  # type: ignore[misc]
        arguments = inspect.signature(constructor).parameters
        out = []
        for p in params_from_signature(constructor, skip=cls.hidden_arguments()):
            changes: dict[str, Any] = {"help": helps.get(p.name, ""), "optional": p.default is None}
            changes.update(cls.param_changes(p, arguments[p.name]))
            out.append(dataclasses.replace(p, **changes))
        out.append(Param("seed", int, 0, cls.seed_help, low=0))
        return tuple(out)

    @classmethod
    def hidden_arguments(cls) -> tuple[str, ...]:
        """Constructor arguments that are not parameters (the model, ``self``...)."""
        return ("self",)

    @classmethod
    def argument_help(cls, library_class: type) -> dict[str, str]:
        """One line of help per argument name, from the library's documentation."""
        return {}

    @classmethod
    def param_changes(cls, param: Param, argument: inspect.Parameter) -> Mapping[str, Any]:
        """Fields of ``param`` (as read from the signature, ``argument``) to replace: types, ranges, choices."""
        return {}

    @classmethod
    def title(cls, library_class: type | None = None) -> str:
        """One line naming the attack: :attr:`AttackFacts.title`, else the library's name for it."""
        return cls.facts.title or cls.library_name

    @classmethod
    def summary(cls) -> str:
        """The listing's line, known without the library: the docstring's first line."""
        return f"{cls.title()} ({cls.library.source(cls.library_name)}, adapted)."

    @classmethod
    def docstring(cls, params: Sequence[Param] | None, library_class: type | None = None,
                  unreadable: BaseException | None = None) -> str:
        """The class's docstring (:func:`attack_docstring`)."""
        return attack_docstring(cls.library, cls.library_name, cls.title(library_class), cls.facts, params,
                                unreadable)

    @classmethod
    def tuple_params(cls) -> list[str]:
        """Parameters whose default is a tuple: a string given for them is parsed (:func:`parse_tuple`)."""
        return [p.name for p in cls.params if isinstance(p.default, tuple)]

    # -- facts of this instance ------------------------------------------------------------------------

    @property
    def norm(self) -> str:
        """The norm this instance bounds or minimizes (robustkit spelling): its ``norm`` parameter where that
        names one of the threat models, else the first threat model."""
        norm = str(self.config["norm"]).lower() if "norm" in self.config else None
        return norm if norm in self.threat_models else self.threat_models[0]

    def _threat_model(self) -> ThreatModel | None:
        budget = next((n for n in self.budget_names if n in self.config), None)
        if budget is None or self.norm not in NORMS or self.norm == "unbounded":
            return None
        return threat_of(self.display_name(), self.norm, self.config[budget])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "library": f"{self.library.label} {self.library.version}", "norm": self.norm}

    def check_with_library(self) -> None:
        """Let the library check the parameters now (e.g. by building on a stand-in model), not mid-evaluation;
        raise :class:`~robustkit.errors.ParameterError`."""

    def library_kwargs(self) -> dict[str, Any]:
        """The parameters the library's constructor takes."""
        names = signature_names(self.library_class)
        return {k: v for k, v in self.config.items() if k in names}


def register_adapters(register: Callable[..., None], classes: Iterable[type[Attack]]) -> None:
    """Register generated classes through the ``register_attacks`` hook's ``register``: the unavailable ones
    (:meth:`LibraryAttack.unavailable_class`) with their reason, the others with their
    :meth:`~LibraryAttack.summary` (their facts come from the class, :meth:`~robustkit.attacks.Attack.declared_facts`).

    Nothing here reads ``params`` or ``__doc__``, so registering imports no library.
    """
    for cls in classes:
        if getattr(cls, "available", True) is False:
            register(cls.name, cls, description=cls.description, params=(),  # type: ignore[attr-defined]
                     available=False, reason=cls.unavailable_reason)  # type: ignore[attr-defined]
            continue
        assert issubclass(cls, LibraryAttack), cls
        info: dict[str, Any] = {"available": True}
        if cls.facts.targeted_only:
            info["targeted_only"] = True
        if cls.facts.note:
            info["note"] = cls.facts.note
        register(cls.name, cls, description=cls.summary(), **info)  # type: ignore[attr-defined]
