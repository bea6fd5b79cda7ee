"""robustkit: evaluate and improve the adversarial robustness of image classifiers.

The host knows no particular attack or defense: everything method-specific arrives as a plugin
through the hooks in :mod:`robustkit.hookspecs`. Start from :func:`robustkit.host.get_host`.
"""

from robustkit.errors import RobustkitError
from robustkit.hookspecs import hookimpl
from robustkit.version import __version__

__all__ = ["RobustkitError", "__version__", "attack", "benchmark", "hookimpl"]


def __getattr__(name: str):
    """``robustkit.benchmark`` and ``robustkit.attack`` (:mod:`robustkit.api`), imported on first use so that
    ``import robustkit`` stays cheap."""
    if name in ("benchmark", "attack"):
        from robustkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'robustkit' has no attribute {name!r}")
