"""The native attacks every install has: ``pgd`` and ``cw-linf`` (one attack per module)."""

from __future__ import annotations

from robustkit.essentials.attacks.cw_linf import CWLinf, cw_loss, cw_margin
from robustkit.essentials.attacks.pgd import PGD
from robustkit.hookspecs import Register, hookimpl

ATTACKS = (PGD, CWLinf)

__all__ = ["ATTACKS", "CWLinf", "PGD", "cw_loss", "cw_margin"]


@hookimpl
def register_attacks(register: Register) -> None:
    """Register ``pgd`` and ``cw-linf``."""
    for cls in ATTACKS:
        register(cls.name, cls)
