"""Training recipes: a published training setup, by name, with the figures it should reach.

A recipe fixes what a paper trained (model, dataset, defense and its parameters, optimizer, schedule, epochs,
augmentation, validation and the epoch kept) and cites where it comes from and what it reported, so that
``robustkit train --recipe NAME`` (or ``recipe = "NAME"`` in a benchmark spec) reproduces it. Recipes are
registered like every other component, through the ``register_recipes`` hook: ``register(name, factory)``
with ``factory() -> Recipe``; the built-in ones are in :mod:`robustkit.essentials.recipes`.

Explicit settings win over a recipe's: a command-line option the user typed, or a spec's own ``training``
entry, replaces the recipe's value; everything not given comes from the recipe, then from the defaults.

This module holds the record only (the host checks factories against it, so it imports nothing that needs the
host); :mod:`robustkit.recipe_config` checks a registered recipe and turns it into training settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

#: TrainConfig settings a recipe may not fix: where and how this machine runs it, not what is trained.
NOT_RECIPE_SETTINGS = ("device", "out_dir", "num_workers", "seed", "recipe")


@dataclass(frozen=True)
class Published:
    """A figure the recipe's source reports, as a fraction (shown in percent).

    :param what: what was measured, e.g. ``clean accuracy`` or ``PGD-40 accuracy (1 restart)``.
    :param value: the reported fraction.
    :param where: where in the source, e.g. ``Table 1``.
    """

    what: str
    value: float
    where: str = ""

    def text(self) -> str:
        return f"{self.what}: {100 * self.value:.1f}%" + (f" ({self.where})" if self.where else "")


@dataclass(frozen=True)
class Recipe:
    """One published training setup.

    :param name: the registered name (``cifar10-pgd-at-rice2020``).
    :param description: one line for listings.
    :param model: registered model name, with ``model_params``.
    :param dataset: registered dataset name, with ``dataset_params``.
    :param defense: registered defense name, with ``defense_params``.
    :param training: :class:`~robustkit.training.TrainConfig` settings (not ``device``, ``out_dir``,
        ``num_workers``, ``seed``).
    :param source: the citation (authors, title, venue) and ``link``.
    :param published: the figures the source reports for this setup.
    :param notes: how the recipe maps the source onto robustkit, and what differs.
    """

    name: str
    description: str
    model: str
    dataset: str
    defense: str
    source: str
    link: str = ""
    model_params: Mapping[str, Any] = field(default_factory=dict)
    dataset_params: Mapping[str, Any] = field(default_factory=dict)
    defense_params: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    published: tuple[Published, ...] = ()
    notes: str = ""

    def summary(self) -> dict[str, Any]:
        """Everything the recipe fixes and cites, JSON-ready (``robustkit train --list-recipes --json``)."""
        return {
            "name": self.name, "description": self.description,
            "model": {"name": self.model, "params": dict(self.model_params)},
            "dataset": {"name": self.dataset, "params": dict(self.dataset_params)},
            "defense": {"name": self.defense, "params": dict(self.defense_params)},
            "training": {k: list(v) if isinstance(v, tuple) else v for k, v in self.training.items()},
            "source": self.source, "link": self.link,
            "published": [{"what": p.what, "value": p.value, "where": p.where} for p in self.published],
            "notes": self.notes,
        }
