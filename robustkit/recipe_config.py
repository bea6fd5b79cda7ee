"""A registered recipe as checked training settings: :func:`get_recipe` finds and checks one,
:func:`recipe_config` makes its :class:`~robustkit.training.TrainConfig` with explicit settings on top."""

from __future__ import annotations

import dataclasses
from typing import Any

from robustkit.errors import RobustkitError
from robustkit.recipes import NOT_RECIPE_SETTINGS, Recipe
from robustkit.training import TrainConfig


def recipe_config(recipe: Recipe, **overrides: Any) -> TrainConfig:
    """The recipe's :class:`TrainConfig`, with ``overrides`` (explicit settings, and where to run) on top and the
    recipe's name recorded."""
    settings = {**recipe.training, **overrides, "recipe": recipe.name}
    if isinstance(settings.get("milestones"), list):
        settings["milestones"] = tuple(settings["milestones"])
    return TrainConfig(**settings)


def check_recipe(recipe: Recipe, host: Any, registered_as: str | None = None) -> None:
    """Raise :class:`RobustkitError` naming the recipe and the field unless every name is registered, every
    parameter valid and every training setting a valid :class:`TrainConfig` setting."""
    def fail(message: str) -> RobustkitError:
        return RobustkitError(f"recipe {recipe.name!r}: {message}")

    if registered_as is not None and registered_as.lower() != recipe.name.lower():
        raise fail(f"registered as {registered_as!r} but named {recipe.name!r} inside; give both the same name")
    known = {f.name for f in dataclasses.fields(TrainConfig)} - set(NOT_RECIPE_SETTINGS)
    unknown = sorted(set(recipe.training) - known)
    if unknown:
        raise fail(f"training setting(s) {', '.join(unknown)} unknown; a recipe sets {', '.join(sorted(known))}")
    for kind, registry, name, params, context in (
            ("model", host.models, recipe.model, recipe.model_params, ("num_classes", "in_channels", "image_size")),
            ("dataset", host.datasets, recipe.dataset, recipe.dataset_params, ("root",)),
            ("defense", host.defenses, recipe.defense, recipe.defense_params, ())):
        try:
            registry.get(name).resolve(dict(params), context)
        except RobustkitError as err:
            raise fail(f"{kind}: {err}") from None
    try:
        host.defenses.create(recipe.defense, dict(recipe.defense_params))
        recipe_config(recipe).check()
    except RobustkitError as err:
        raise fail(str(err)) from None


def get_recipe(host: Any, name: str) -> Recipe:
    """The registered recipe ``name``, checked (one line naming the problem otherwise)."""
    recipe = host.recipes.create(name)
    check_recipe(recipe, host, host.recipes.get(name).name)
    return recipe
