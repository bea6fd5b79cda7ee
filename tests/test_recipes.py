"""Recipes: registered like other components, checked, and their cited settings are what the trainer receives
(from the command line and from benchmark specs), with explicit settings winning."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

import robustkit.host as host_module
from robustkit.bench.spec import parse_spec
from robustkit.cli import cli
from robustkit.errors import PluginError, RobustkitError
from robustkit.essentials.recipes import MADRY_MNIST, RICE2020
from robustkit.hookspecs import hookimpl
from robustkit.host import make_host
from robustkit.recipe_config import get_recipe, recipe_config
from robustkit.recipes import Published, Recipe
from robustkit.training import TrainResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HOST = make_host(entry_points=False)


def test_the_shipped_recipes_are_registered_and_valid() -> None:
    assert {"cifar10-pgd-at-rice2020", "mnist-madry"} <= set(HOST.recipes.names())
    for name in HOST.recipes.names():
        recipe = get_recipe(HOST, name)  # checks names, parameters and training settings
        assert recipe.source and recipe.link.startswith("https://") and recipe.published, name
        assert all(0 < p.value < 1 for p in recipe.published), name


def test_the_recipes_say_what_their_papers_did() -> None:
    rice = recipe_config(RICE2020)
    assert (RICE2020.model, RICE2020.dataset, RICE2020.defense) == ("preact-resnet18", "cifar10", "pgd-at")
    assert (rice.optimizer, rice.lr, rice.momentum, rice.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert (rice.epochs, rice.schedule, rice.milestones, rice.gamma) == (200, "step", (100, 150), 0.1)
    assert rice.augment == "crop:4:reflect,flip" and rice.select == "best" and rice.val_examples == 1000
    assert RICE2020.defense_params["eps"] == 8 / 255 and RICE2020.defense_params["step_size"] == 2 / 255
    assert RICE2020.defense_params["steps"] == 10
    madry = recipe_config(MADRY_MNIST)
    assert (MADRY_MNIST.model, MADRY_MNIST.dataset) == ("madry-cnn", "mnist")
    assert (madry.optimizer, madry.lr, madry.batch_size, madry.augment, madry.eps_warmup) == ("adam", 1e-4, 50, "none", 5)
    assert MADRY_MNIST.defense_params == {"norm": "linf", "eps": 0.3, "steps": 40, "step_size": 0.01, "rand_init": True}
    assert "98.8%" in MADRY_MNIST.published[0].text()


def run_train(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str]) -> tuple[Any, dict[str, Any]]:
    """``robustkit train ARGS`` with the trainer replaced by a recorder: what would it have been given?"""
    import robustkit.commands.train as command

    given: dict[str, Any] = {}

    def recorder(model: Any, dataset: Any, defense: Any, config: Any, **kw: Any) -> TrainResult:
        given.update(model=model, dataset=dataset, defense=defense, config=config)
        row = {"epoch": 1, "train_loss": 1.0, "val_clean_acc": 0.5}
        return TrainResult(model, [row], 0, Path(config.out_dir) / "last.json", 1, "raw")

    monkeypatch.setattr(command, "run_training", recorder)
    host_module._HOST = HOST
    result = CliRunner().invoke(cli, ["train", *args, "--out", str(tmp_path / "run"), "--threads", "1"])
    return result, given


def test_the_trainer_receives_the_recipes_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # MNIST is not in the test environment: the recipe's dataset is replaced, nothing else is.
    result, given = run_train(monkeypatch, tmp_path, ["--recipe", "mnist-madry", "--dataset", "digits",
                                                      "--dataset-param", "resize=28"])
    assert result.exit_code == 0, result.output
    config, defense = given["config"], given["defense"]
    expected = recipe_config(MADRY_MNIST)
    for name, value in MADRY_MNIST.training.items():
        assert getattr(config, name) == value, name
    assert config.recipe == "mnist-madry" and config.momentum == expected.momentum
    assert defense.display_name() == "pgd-at" and {k: defense.config[k] for k in MADRY_MNIST.defense_params} == \
        MADRY_MNIST.defense_params
    assert given["model"].spec.name == "madry-cnn" and given["dataset"].info.name == "digits"


def test_explicit_options_override_the_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, given = run_train(monkeypatch, tmp_path, [
        "--recipe", "mnist-madry", "--dataset", "digits", "--dataset-param", "resize=28", "--epochs", "3",
        "--eps-warmup", "1", "--lr", "0.002", "--select", "last", "--param", "steps=5", "--val-examples", "64"])
    assert result.exit_code == 0, result.output
    config, defense = given["config"], given["defense"]
    assert (config.epochs, config.eps_warmup, config.lr, config.select, config.val_examples) == (3, 1, 0.002, "last", 64)
    assert (config.batch_size, config.optimizer, config.val_steps, config.val_eps) == (50, "adam", 40, 0.3)  # kept
    assert defense.config["steps"] == 5 and defense.config["eps"] == 0.3 and defense.config["step_size"] == 0.01


def test_the_cifar_recipe_reaches_the_trainer_with_its_augmentation(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    result, given = run_train(monkeypatch, tmp_path, ["--recipe", "cifar10-pgd-at-rice2020", "--dataset", "digits",
                                                      "--epochs", "1"])
    assert result.exit_code == 0, result.output
    config = given["config"]
    assert (config.optimizer, config.lr, config.weight_decay, config.milestones) == ("sgd", 0.1, 5e-4, (100, 150))
    assert config.augment == "crop:4:reflect,flip" and config.val_step_size == 2 / 255 and config.epochs == 1
    assert given["model"].spec.name == "preact-resnet18"


def test_an_unknown_recipe_is_one_line_with_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, _ = run_train(monkeypatch, tmp_path, ["--recipe", "mnist-madri"])
    assert result.exit_code == 2
    assert "unknown recipe 'mnist-madri'; did you mean mnist-madry?" in result.output
    assert "robustkit recipes list" in result.output and "Traceback" not in result.output


def test_list_recipes_shows_sources_and_published_figures() -> None:
    host_module._HOST = HOST
    result = CliRunner().invoke(cli, ["train", "--list-recipes"])
    assert result.exit_code == 0, result.output
    assert "cifar10-pgd-at-rice2020" in result.output and "mnist-madry" in result.output
    assert "eps=8/255" in result.output and "published: clean accuracy: 98.8%" in result.output
    assert "arxiv.org/abs/1706.06083" in result.output


SPEC = {
    "name": "from-recipe", "recipe": "mnist-madry", "dataset": {"name": "digits"},
    "training": {"epochs": 1, "eps_warmup": 0, "val_examples": 50},
    "threat": {"norm": "linf", "eps": 0.1},
    "attacks": [{"name": "pgd", "params": {"steps": 5}}],
    "defenses": [{"name": "natural"}, {"name": "pgd-at", "sweep": [0.05, 0.1]}],
}


def test_a_spec_takes_the_recipe_under_its_own_settings() -> None:
    spec = parse_spec(dict(SPEC), "test", HOST)
    assert spec.model["name"] == "madry-cnn" and spec.dataset["name"] == "digits"  # the spec's dataset wins
    training = spec.training
    assert (training["epochs"], training["eps_warmup"], training["val_examples"]) == (1, 0, 50)  # the spec's
    assert (training["batch_size"], training["optimizer"], training["lr"], training["val_steps"]) == (50, "adam", 1e-4, 40)
    assert training["select"] == "best" and training["val_holdout"] is True and training["augment"] == "none"
    pgd_at = next(d for d in spec.defenses if d.name == "pgd-at")
    assert pgd_at.params == {"norm": "linf", "steps": 40, "step_size": 0.01, "rand_init": True}  # eps is swept
    assert next(d for d in spec.defenses if d.name == "natural").params == {}
    assert spec.document["recipe"] == "mnist-madry"


def test_spec_defaults_resolve_augmentation_and_the_holdout() -> None:
    plain = {k: v for k, v in SPEC.items() if k != "recipe"} | {"model": {"name": "madry-cnn"},
                                                                "training": {"epochs": 1}}
    spec = parse_spec(dict(plain), "test", HOST)
    assert spec.training["augment"] == "none" and spec.training["select"] == "auto"
    assert spec.training["val_holdout"] is True  # pgd-at keeps its best epoch, so every cell holds the slice out
    natural_only = parse_spec(dict(plain, defenses=[{"name": "natural"}]), "test", HOST)
    assert natural_only.training["val_holdout"] is False
    with pytest.raises(RobustkitError, match=r"\$.training.augment: augment 'spin' is not an operation"):
        parse_spec(dict(plain, training={"epochs": 1, "augment": "spin"}), "test", HOST)
    with pytest.raises(RobustkitError, match=r"\$.recipe: unknown recipe 'nope'"):
        parse_spec(dict(SPEC, recipe="nope"), "test", HOST)


def _plugin(factory: Any, name: str = "mine") -> Any:
    return SimpleNamespace(register_recipes=hookimpl(lambda register: register(name, factory, params=())))


def test_a_plugin_adds_a_recipe_through_the_hook() -> None:
    mine = Recipe(name="mine", description="natural LeNet on digits", model="lenet", dataset="digits",
                  defense="natural", source="nobody, 2024", training={"epochs": 2, "lr": 0.01},
                  published=(Published("clean accuracy", 0.9),))
    host = make_host(plugins=[("myrecipes", _plugin(lambda: mine))], entry_points=False)
    assert get_recipe(host, "mine") is mine and host.recipes.get("mine").plugin == "myrecipes"
    assert host.records["myrecipes"].registered == {"recipe": ["mine"]}


@pytest.mark.parametrize("recipe, fragment", [
    (Recipe(name="bad", description="", model="no-such-net", dataset="digits", defense="natural", source="x"),
     "recipe 'bad': model: unknown model 'no-such-net'"),
    (Recipe(name="bad", description="", model="lenet", dataset="digits", defense="natural", source="x",
            training={"epoch": 3}), r"training setting\(s\) epoch unknown; a recipe sets augment, batch_size"),
    (Recipe(name="bad", description="", model="lenet", dataset="digits", defense="pgd-at", source="x",
            defense_params={"eps": -1.0}), "recipe 'bad': defense:"),
    (Recipe(name="bad", description="", model="lenet", dataset="digits", defense="natural", source="x",
            training={"lr": 0.0}), "recipe 'bad': training: lr must be > 0"),
    (Recipe(name="other", description="", model="lenet", dataset="digits", defense="natural", source="x"),
     "registered as 'bad' but named 'other'"),
])
def test_a_broken_recipe_is_named_with_its_field(recipe: Recipe, fragment: str) -> None:
    host = make_host(plugins=[("broken", _plugin(lambda: recipe, "bad"))], entry_points=False)
    with pytest.raises(RobustkitError, match=fragment) as err:
        get_recipe(host, "bad")
    assert "\n" not in str(err.value)


def test_a_recipe_factory_must_return_a_recipe() -> None:
    host = make_host(plugins=[("broken", _plugin(lambda: {"model": "lenet"}, "bad"))], entry_points=False)
    with pytest.raises(PluginError, match="returned a value of type dict, not Recipe"):
        host.recipes.create("bad")
