"""robustkit plugin ``torchattacks``: every torchattacks attack as ``torchattacks:NAME`` (see :mod:`.adapter`)."""

from robustkit_torchattacks.adapter import adapter_classes, register_attacks

__all__ = ["adapter_classes", "register_attacks"]
