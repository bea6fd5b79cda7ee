"""robustkit plugin ``nattack``: NATTACK (Li et al., ICML 2019), see :mod:`.nattack`."""

from robustkit_nattack.nattack import NAttack, register_attacks

__all__ = ["NAttack", "register_attacks"]
