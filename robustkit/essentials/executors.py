"""The built-in executors: ``local`` (this machine's processes, the default) and ``ray`` (a Ray cluster, or
Ray embedded in this process; needs ``robustkit[ray]``, imported only when a run uses it).

Registered through the ``register_executors`` hook exactly as a plugin registers Dask or Slurm.
"""

from __future__ import annotations

from robustkit.executors.local import LocalExecutor
from robustkit.executors.ray_executor import RayExecutor
from robustkit.hookspecs import Register, hookimpl


@hookimpl
def register_executors(register: Register) -> None:
    """Register ``local`` and ``ray``."""
    register(LocalExecutor.name, LocalExecutor)
    register(RayExecutor.name, RayExecutor)
