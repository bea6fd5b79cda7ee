"""robustkit's built-in plugins.

Each module here is an ordinary plugin, listed in the ``robustkit`` entry-point group of
robustkit's own ``pyproject.toml`` and loaded exactly like a third-party plugin.
"""
