"""The ``types`` parameter of ``hard-positives``: which generators make the training set, in the paper's names.

Syntax (case-insensitive, comma-separated, spaces ignored), one entry per generator:

- ``fgs`` / ``fgv``: fast gradient sign / value (:class:`~robustkit_hotcold.FGS`, ``FGV``);
- ``hc-d-X`` / ``hc-s-X``: hot/cold along the derivative / its sign toward each of the X closest
  classes (HC-1 ... HC-X, up to X images per training image; X is capped at classes - 1, so
  ``hc-d-9`` on 10 classes is every other class);
- any entry may end in ``-Y``, its own scale (``hc-d-9-1.05``, ``fgv-1.1``); without it the
  defense's ``scale`` parameter applies.

Examples: ``hc-d-9`` (with scale 1.05: the paper's best set, HC-D-9-1.05), ``fgs,fgv,hc-s-5``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from robustkit.attacks import Attack
from robustkit.errors import ParameterError

#: Largest hard-positive factor Y (the native attacks' own limit).
MAX_SCALE = 100.0
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_GRADIENT = re.compile(rf"^(fgs|fgv)(?:-{_NUMBER})?$")
_HOTCOLD = re.compile(rf"^hc-([ds])-(\d+)(?:-{_NUMBER})?$")


@dataclass(frozen=True)
class HardPositiveType:
    """One generator of the training set.

    :param method: ``fgs``, ``fgv`` or ``hc``.
    :param mode: ``D`` or ``S`` (hot/cold only).
    :param ranks: X, the closest classes targeted (hot/cold only).
    :param scale: Y, or ``None`` for the defense's ``scale``.
    """

    method: str
    mode: str | None = None
    ranks: int | None = None
    scale: float | None = None

    def resolved(self, default_scale: float) -> "HardPositiveType":
        """This type with its scale filled in."""
        return HardPositiveType(self.method, self.mode, self.ranks,
                                self.scale if self.scale is not None else float(default_scale))

    @property
    def name(self) -> str:
        """The paper's name: ``FGS``, ``FGV``, ``HC-D-9``, ``HC-D-9-1.05`` (the scale only when not 1)."""
        base = f"HC-{self.mode}-{self.ranks}" if self.method == "hc" else self.method.upper()
        return base if self.scale in (None, 1.0) else f"{base}-{self.scale:g}"

    def attack(self) -> Attack:
        """The native attack that generates this type (PASS reported, no threshold: the band filters)."""
        from robustkit_hotcold import FGS, FGV, HotCold

        common = {"scale": self.scale if self.scale is not None else 1.0, "pass_threshold": None,
                  "report_pass": True}
        if self.method == "fgs":
            return FGS(**common)
        if self.method == "fgv":
            return FGV(**common)
        return HotCold(mode=self.mode, rank=self.ranks, all_ranks=True, **common)


def parse_types(text: str, default_scale: float = 1.0, owner: str = "hard-positives") -> tuple[HardPositiveType, ...]:
    """Parse the ``types`` parameter (see the module docstring), scales filled in from ``default_scale``.

    :raises ParameterError: (one line) for an unknown or repeated type, X < 1 or a scale outside [1, 100].
    """
    entries = [part.strip().lower().replace(" ", "") for part in str(text).split(",")]
    if not any(entries):
        raise ParameterError(f"{owner}: parameter 'types' is empty; give e.g. types=hc-d-9 or types=fgs,fgv,hc-s-5")
    out: list[HardPositiveType] = []
    for entry in entries:
        if not entry:
            raise ParameterError(f"{owner}: parameter 'types' has an empty entry in {text!r}; "
                                 "separate types with single commas")
        gradient, hotcold = _GRADIENT.match(entry), _HOTCOLD.match(entry)
        if gradient:
            kind = HardPositiveType(gradient.group(1), scale=_scale(gradient.group(2), entry, owner))
        elif hotcold:
            ranks = int(hotcold.group(2))
            if ranks < 1:
                raise ParameterError(f"{owner}: type {entry!r} needs X >= 1 closest classes")
            kind = HardPositiveType("hc", hotcold.group(1).upper(), ranks, _scale(hotcold.group(3), entry, owner))
        else:
            raise ParameterError(f"{owner}: unknown type {entry!r} in types={text!r}; use fgs, fgv, hc-d-X or "
                                 "hc-s-X, each optionally followed by -Y (a scale), e.g. hc-d-9-1.05")
        kind = kind.resolved(default_scale)
        if kind in out:
            raise ParameterError(f"{owner}: type {entry!r} ({kind.name}) is given twice in types={text!r}")
        out.append(kind)
    return tuple(out)


def _scale(text: str | None, entry: str, owner: str) -> float | None:
    if text is None:
        return None
    value = float(text)
    if not 1.0 <= value <= MAX_SCALE:
        raise ParameterError(f"{owner}: type {entry!r} has scale {value:g}; a scale Y must be in [1, {MAX_SCALE:g}]")
    return value

