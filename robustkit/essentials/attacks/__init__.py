"""The native attacks every install has, one attack per module: ``pgd`` and ``cw-linf`` (white-box,
fixed budget), ``deepfool`` (white-box, minimal L2 distortion) and ``square`` (score-based black box)."""

from __future__ import annotations

from robustkit.essentials.attacks.cw_linf import CWLinf, cw_loss, cw_margin
from robustkit.essentials.attacks.deepfool import DeepFool
from robustkit.essentials.attacks.pgd import PGD
from robustkit.essentials.attacks.square import Square, margin_loss, p_schedule
from robustkit.hookspecs import Register, hookimpl

ATTACKS = (PGD, CWLinf, DeepFool, Square)

__all__ = ["ATTACKS", "PGD", "CWLinf", "DeepFool", "Square", "cw_loss", "cw_margin", "margin_loss", "p_schedule"]


@hookimpl
def register_attacks(register: Register) -> None:
    """Register ``pgd``, ``cw-linf``, ``deepfool`` and ``square``."""
    for cls in ATTACKS:
        register(cls.name, cls)
