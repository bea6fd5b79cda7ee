"""robustkit plugin ``art``: every Adversarial Robustness Toolbox evasion attack as ``art:NAME`` (see :mod:`.adapter`)."""

from robustkit_art.adapter import adapter_classes, register_attacks

__all__ = ["adapter_classes", "register_attacks"]
