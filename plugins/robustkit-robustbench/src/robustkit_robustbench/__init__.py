"""robustkit plugin ``robustbench``: RobustBench CIFAR-10 zoo models as ``robustbench:NAME`` (see :mod:`.zoo`)."""

from robustkit_robustbench.zoo import ZOO, create_zoo_model, load_zoo_state, read_checkpoint, register_models

__all__ = ["ZOO", "create_zoo_model", "load_zoo_state", "read_checkpoint", "register_models"]
