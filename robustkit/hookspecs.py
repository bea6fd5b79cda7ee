"""The plugin contract: every hook a robustkit plugin may implement.

A plugin is a module (or object) with functions decorated by :data:`hookimpl` and named like the
specs below. Built-in plugins and pip-installed ones are loaded the same way, through the
``robustkit`` entry-point group.

Registration hooks receive a ``register`` callback, typed by :class:`Register`::

    register(name, factory, *, description=None, params=None, **info)

- ``name``: what users type; unique across all plugins for that kind.
- ``factory``: callable building the component from keyword parameters (a class works).
- ``description``: one line for listings; defaults to the first line of the factory's docstring.
- ``params``: a tuple of :class:`robustkit.params.Param`; defaults to the factory's ``params``
  attribute, else to its signature's keyword defaults.
- ``info``: any further facts shown in listings (e.g. ``threat_models=("linf",)``).

The host calls each hook one plugin at a time, so a plugin that raises is reported by name and
skipped while the others keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

import click
import pluggy

if TYPE_CHECKING:
    from robustkit.params import Param

PROJECT = "robustkit"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorate plugin functions with this: ``@robustkit.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)



class Register(Protocol):
    """The callback every registration hook receives; the host writes down who registered what.

    A class with ``declared_facts()`` (attacks, defenses) has those facts recorded as ``info`` unless
    given here; a registered name is unique per kind across all plugins, and the essential set's names
    (:mod:`robustkit.essentials`) are never given to another plugin.
    """

    def __call__(self, name: str, factory: Callable[..., Any], *, description: str | None = None,
                 params: tuple[Param, ...] | None = None, **info: Any) -> None:
        """Register ``factory`` under ``name``.

        :param name: what users type; unique across all plugins for that kind (case-insensitive).
        :param factory: builds the component from keyword parameters (a class works).
        :param description: one line for listings; default: the first line of the factory's docstring.
        :param params: declared parameters; default: the factory's ``params`` attribute, else its signature.
        :param info: further facts shown in listings and recorded in provenance.
        """


# --- Registration: components -------------------------------------------------------------


@hookspec
def register_models(register: Register) -> None:
    """Register model architectures.

    The factory is called as ``factory(num_classes=..., in_channels=..., image_size=(H, W), **params)``
    and returns an ``nn.Module`` mapping images (normalized by the host) to logits. The host adds
    the dataset's normalization in front, so every attack works on images in [0, 1].

    :param register: the :class:`Register` callback.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register image classification datasets.

    The factory is called as ``factory(root=Path | None, **params)`` and returns a
    :class:`robustkit.data.ImageDataset` (train and test splits of images in [0, 1]).

    :param register: the :class:`Register` callback.
    """


@hookspec
def register_attacks(register: Register) -> None:
    """Register evasion attacks.

    The factory takes the attack's parameters and returns a :class:`robustkit.attacks.Attack`.
    Put ``threat_models``, ``knowledge``, ``goal`` and ``supports_targeted`` in ``info`` (or as class
    attributes of an Attack subclass) so listings and the benchmark protocol can use them.

    :param register: the :class:`Register` callback.
    """


@hookspec
def register_defenses(register: Register) -> None:
    """Register defenses (training methods).

    The factory takes the defense's parameters and returns a :class:`robustkit.defenses.Defense`,
    which supplies the loss of one batch; the shared training loop does the rest.

    :param register: the :class:`Register` callback.
    """


@hookspec
def register_benchmarks(register: Register) -> None:
    """Register benchmark presets (``robustkit bench list``, ``robustkit bench run NAME``).

    The factory takes no arguments and returns the spec as a dict, exactly what a TOML or YAML spec
    file would hold (see :mod:`robustkit.bench.spec`); :class:`robustkit.bench.presets.preset_from_file`
    makes one from a spec file shipped with the plugin. It is validated when the preset is used.

    :param register: the :class:`Register` callback.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register per-example image metrics (``robustkit metrics list``, ``robustkit attack --metric NAME``).

    The factory takes the metric's parameters and returns a :class:`robustkit.image_metrics.ImageMetric`,
    called as ``metric(adversarial, clean)`` on batches ``N x C x H x W`` in [0, 1] and returning one value
    per image; evaluation applies it to every successful adversarial.

    :param register: the :class:`Register` callback.
    """


@hookspec
def register_recipes(register: Register) -> None:
    """Register training recipes (``robustkit train --recipe NAME``, ``recipe = "NAME"`` in benchmark specs).

    The factory takes no arguments and returns a :class:`robustkit.recipes.Recipe`: a published training setup
    (model, dataset, defense, training settings) with its source and the figures it reported. It is checked
    against the registered components when it is used.

    :param register: the :class:`Register` callback.
    """


@hookspec
def register_executors(register: Register) -> None:
    """Register executors: what runs a benchmark's cells (``robustkit bench run SPEC --executor NAME``).

    The factory takes the executor's options as keyword parameters (declare them as ``params``; ``bench run``
    passes ``--option-name`` as ``option_name``) and returns a :class:`robustkit.executors.Executor`. It runs
    the cells wherever it likes and hands each record back to the driver, which alone writes records. The
    essential set registers ``local`` (processes on this machine, the default) and ``ray``.

    :param register: the :class:`Register` callback.
    """


# --- Registration: command line -------------------------------------------------------------


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``robustkit`` command line.

    :param cli: the top-level click group; add commands with ``@cli.command()``.
    """


HOOK_KINDS: dict[str, str] = {
    "register_models": "model",
    "register_datasets": "dataset",
    "register_attacks": "attack",
    "register_defenses": "defense",
    "register_benchmarks": "benchmark",
    "register_metrics": "metric",
    "register_executors": "executor",
    "register_recipes": "recipe",
}
"""Registration hooks that fill a registry, and the kind of component each one registers."""


def _all_specs() -> dict[str, Any]:
    return {name: obj for name, obj in globals().items() if hasattr(obj, "robustkit_spec")}
