"""The essential built-in set: what the core itself names, so no plugin may remove or replace it.

The runner, the spec defaults, the quickstart and the ``quick`` preset name these components; they are
registered before any entry point, cannot be left out with ``ROBUSTKIT_LOAD_PLUGINS`` or
``ROBUSTKIT_BLOCK_PLUGINS``, and a plugin registering one of their names is the one refused, by name.

- ``datasets``: digits (embedded), MNIST, CIFAR-10/100 and STL-10 from a local folder.
- ``paper-models``: the source papers' reference architectures.
- ``baseline-defenses``: ``natural``, ``pgd-at``, ``fgsm-at``, ``fgm-at``, ``trades``.
- ``native-attacks``: ``pgd``, ``cw-linf``, ``deepfool`` and ``square``.
- ``presets``: the ``quick`` benchmark.
- ``executors``: ``local`` (the default) and ``ray``, what runs a benchmark's cells.
- ``recipes``: the training recipes ``cifar10-pgd-at-rice2020`` and ``mnist-madry``.

Everything else (the library adapters, the papers' methods) lives in its own distribution under
``plugins/`` and is found through the ``robustkit`` entry-point group, as a third party's plugin is.
"""

from __future__ import annotations

from robustkit.essentials import attacks, datasets, defenses, executors, paper_models, presets, recipes

#: ``(plugin name, module)`` of the essential set, in registration order.
ESSENTIAL_PLUGINS = (("datasets", datasets), ("paper-models", paper_models), ("baseline-defenses", defenses),
                     ("native-attacks", attacks), ("presets", presets), ("recipes", recipes),
                     ("executors", executors))
