"""Native gradient attacks: CW-linf, Shaham's one-step ascent, localized PGD (with its masks).

Entry point ``gradient-attacks``. One attack per module; :mod:`.masks` is shared with localized
adversarial training.
"""

from __future__ import annotations

from typing import Any

from robustkit import hookimpl
from robustkit.plugins.gradient_attacks.cw_linf import CWLinf, cw_loss, cw_margin
from robustkit.plugins.gradient_attacks.localized_pgd import LocalizedPGD, localized_pgd
from robustkit.plugins.gradient_attacks.masks import KINDS as MASK_KINDS
from robustkit.plugins.gradient_attacks.masks import make_mask
from robustkit.plugins.gradient_attacks.one_step import OneStep, one_step

ATTACKS = (CWLinf, OneStep, LocalizedPGD)

__all__ = ["ATTACKS", "CWLinf", "LocalizedPGD", "MASK_KINDS", "OneStep", "cw_loss", "cw_margin", "localized_pgd",
           "make_mask", "one_step"]


@hookimpl
def register_attacks(register: Any) -> None:
    """Register ``cw-linf``, ``one-step`` and ``localized-pgd``."""
    for cls in ATTACKS:
        register(cls.name, cls)
