"""robustkit: evaluate and improve the adversarial robustness of image classifiers.

The host knows no particular attack or defense: everything method-specific arrives as a plugin
through the hooks in :mod:`robustkit.hookspecs`. Start from :func:`robustkit.host.get_host`.
"""

__version__ = "0.1.0"

from robustkit.errors import RobustkitError  # noqa: E402
from robustkit.hookspecs import hookimpl  # noqa: E402

__all__ = ["RobustkitError", "__version__", "hookimpl"]
