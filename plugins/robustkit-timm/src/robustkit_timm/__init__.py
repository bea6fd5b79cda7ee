"""robustkit plugin ``timm-models``: every timm architecture as ``timm:NAME`` (see :mod:`.models`)."""

from robustkit_timm.models import create_timm_model, load_weights, model_names, register_models

__all__ = ["create_timm_model", "load_weights", "model_names", "register_models"]
