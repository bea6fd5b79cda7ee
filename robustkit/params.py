"""Declared parameters for attacks and defenses: typed, ranged, parsed from ``k=v`` strings.

Components declare their parameters as a tuple of :class:`Param`. Parsing happens before any
work starts, so an unknown name, a wrong type or an out-of-range value fails at once with a
message naming the parameter and the component.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from robustkit.errors import ParameterError


@dataclass(frozen=True)
class Param:
    """One parameter of a component.

    :param name: keyword name.
    :param type: ``int``, ``float``, ``bool`` or ``str`` (values from the CLI are converted).
    :param default: value used when the user gives none.
    :param help: one line for ``--help`` and listings.
    :param low: smallest allowed value (numbers), inclusive unless ``low_open``.
    :param high: largest allowed value (numbers), inclusive.
    :param choices: allowed values (strings).
    :param low_open: ``low`` itself is not allowed (e.g. eps > 0).
    :param optional: ``None`` is an allowed value.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: Sequence[Any] | None = None
    low_open: bool = False
    optional: bool = False

    def convert(self, value: Any, owner: str) -> Any:
        if value is None or (isinstance(value, str) and value.lower() == "none" and self.optional):
            if self.optional:
                return None
            raise ParameterError(f"{owner}: parameter '{self.name}' needs a value of type {self.type.__name__}")
        value = _coerce(value, self.type, f"{owner}: parameter '{self.name}'")
        if self.choices is not None and value not in self.choices:
            raise ParameterError(
                f"{owner}: parameter '{self.name}' must be one of {', '.join(map(str, self.choices))}, got {value!r}"
            )
        if self.type in (int, float):
            if isinstance(value, float) and not math.isfinite(value):
                raise ParameterError(f"{owner}: parameter '{self.name}' must be finite, got {value}")
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                op = ">" if self.low_open else ">="
                raise ParameterError(f"{owner}: parameter '{self.name}' must be {op} {self.low}, got {value}")
            if self.high is not None and value > self.high:
                raise ParameterError(f"{owner}: parameter '{self.name}' must be <= {self.high}, got {value}")
        return value


def _coerce(value: Any, kind: type, what: str) -> Any:
    """Convert CLI strings (and ints given for floats) to ``kind``."""
    if kind is _AnyValue:
        return parse_value(value)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on"}:
                return True
            if isinstance(value, str) and value.lower() in {"0", "false", "no", "off"}:
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(eval_fraction(value) if isinstance(value, str) else value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError) as err:
        reason = f" ({err})" if "divides by zero" in str(err) else ""
        raise ParameterError(f"{what} must be of type {kind.__name__}, got {value!r}{reason}") from None
    return value


def eval_fraction(text: str) -> float:
    """Parse ``0.3``, ``8/255`` or ``1e-3`` (eps values are often written as fractions)."""
    text = text.strip()
    if "/" in text:
        num, _, den = text.partition("/")
        numerator, denominator = float(num), float(den)
        if denominator == 0:
            raise ValueError(f"{text!r} divides by zero")
        return numerator / denominator
    return float(text)


def parse_assignments(pairs: Iterable[str], what: str = "--param") -> dict[str, str]:
    """Split CLI ``k=v`` strings into a dict, with a clear error for anything else."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"{what} expects key=value, got {pair!r}")
        key, value = key.strip(), value.strip()
        if key in out:
            raise ParameterError(f"{what}: '{key}' is given twice ({out[key]!r} and {value!r}); give it once")
        out[key] = value
    return out


def resolve_params(declared: Sequence[Param], given: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """Validate ``given`` against ``declared`` and fill defaults; names are checked first."""
    by_name = {p.name: p for p in declared}
    for key in given:
        if key not in by_name:
            close = difflib.get_close_matches(key, list(by_name), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            known = ", ".join(by_name) or "none"
            raise ParameterError(f"{owner}: unknown parameter '{key}'{hint} (known: {known})")
    return {p.name: p.convert(given[p.name], owner) if p.name in given else p.default for p in declared}


@functools.lru_cache(maxsize=None)
def signature_names(cls: type) -> frozenset[str]:
    """Names of ``cls``'s constructor parameters (read once per class: adapters filter keyword arguments
    with them on every call)."""
    return frozenset(inspect.signature(cls.__init__).parameters)


#: Integer parameters that count iterations, restarts, queries or items: at least 1 whatever a library's
#: signature says (torchattacks' PGD with steps=0 silently runs no attack).
COUNT_NAMES = frozenset({"steps", "n_restarts", "n_queries", "max_iter", "nb_iter", "eot_iter", "n_iter",
                         "max_iterations", "batch_size", "iterations"})


def params_from_signature(func: Callable[..., Any], skip: Iterable[str] = ("self", "model")) -> tuple[Param, ...]:
    """Derive :class:`Param` declarations from a library callable's keyword defaults.

    Used by adapters: the wrapped library's own signature is the source of truth, so every
    parameter passes through and unknown names are still caught. Types come from defaults;
    parameters whose default is ``None`` accept anything (strings stay strings).
    """
    skip = set(skip)
    out = []
    for name, p in inspect.signature(func).parameters.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        kind = type(default) if isinstance(default, (bool, int, float, str)) else _AnyValue
        low = 1 if kind is int and name in COUNT_NAMES else None
        out.append(Param(name, kind, default, optional=True, low=low))
    return tuple(out)


class _AnyValue:
    """Marker type for parameters whose type a signature does not reveal: numbers are parsed, else kept."""


def parse_value(value: Any) -> Any:
    """A command-line value of unknown type: ``true``/``false``, an integer, a number or fraction
    (``8/255``), else the text itself; values that are not text pass through."""
    if not isinstance(value, str):
        return value
    low = value.lower()
    if low in {"true", "false"}:
        return low == "true"
    for kind in (int, eval_fraction):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def parse_spec(text: str, what: str = "attack") -> tuple[str, dict[str, str]]:
    """Split ``"NAME k=v k=v"`` (one CLI argument) into the name and its parameters.

    Example: ``"torchattacks:PGD eps=8/255 steps=10"`` -> ``("torchattacks:PGD", {"eps": "8/255", "steps": "10"})``.
    """
    parts = text.split()
    if not parts or "=" in parts[0]:
        raise ParameterError(f"{what} {text!r}: start with a name, e.g. 'torchattacks:PGD eps=0.1 steps=10'")
    return parts[0], parse_assignments(parts[1:], what=f"{what} {parts[0]}")
