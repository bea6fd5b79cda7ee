"""robustkit plugin ``autoattack``: AutoAttack (Croce & Hein 2020) with its reference settings (see :mod:`.autoattack`)."""

from robustkit_autoattack.autoattack import AutoAttack, register_attacks

__all__ = ["AutoAttack", "register_attacks"]
