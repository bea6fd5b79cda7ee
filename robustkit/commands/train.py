"""``robustkit train``: train a registered model, or the user's own, on a dataset with a defense."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from robustkit.commands.group import cli, echo_table
from robustkit.commands.common import (Fraction, choose_model, data_options, device_option, load_dataset,
                                      output_folder, precision_options, say_normalization, seed_option,
                                      set_threads, threads_option, user_model_options)
from robustkit.devices import seed_everything
from robustkit.host import get_host
from robustkit.params import parse_assignments
from robustkit.progress import percent
from robustkit.training import OPTIMIZERS, SCHEDULES, SELECTS, TrainConfig, train as run_training


DEFAULTS = TrainConfig()  # the one home of the training defaults and choices
#: Options whose value goes into TrainConfig under the same name: a recipe's value unless typed.
CONFIG_OPTIONS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "val_examples",
                  "val_eps", "val_steps", "eps_warmup", "augment", "ema_decay", "select", "precision", "channels_last")


def _list_recipes(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--list-recipes``: every registered recipe, its source and the figures it should reach; then exit."""
    if not value or ctx.resilient_parsing:
        return
    from robustkit.recipe_config import get_recipe
    from robustkit.robustbench_format import format_eps

    def shown(key: str, value: object) -> str:
        if isinstance(value, float) and ("eps" in key or "step_size" in key):
            return format_eps(value, "Linf")  # 8/255 as papers write it
        return str(list(value) if isinstance(value, tuple) else value)

    host = get_host()
    for entry in host.recipes:
        recipe = get_recipe(host, entry.name)
        settings = ", ".join(f"{k}={shown(k, v)}" for k, v in recipe.training.items())
        params = ", ".join(f"{k}={shown(k, v)}" for k, v in recipe.defense_params.items())
        click.echo(f"{recipe.name}  ({entry.plugin})\n  {recipe.description}")
        click.echo(f"  model {recipe.model}, dataset {recipe.dataset}, defense {recipe.defense} ({params})")
        click.echo(f"  training: {settings}")
        click.echo(f"  source: {recipe.source}" + (f" <{recipe.link}>" if recipe.link else ""))
        for figure in recipe.published:
            click.echo(f"  published: {figure.text()}")
        click.echo("")
    click.echo("Use one: robustkit train --recipe NAME [--data-root DIR]; options you give override the recipe's.")
    ctx.exit(0)


@cli.command()
@click.option("--recipe", "recipe_name", default=None, metavar="NAME",
              help="A published training setup (see --list-recipes): model, dataset, defense and training settings; "
                   "options you give explicitly override the recipe's.")
@click.option("--list-recipes", is_flag=True, expose_value=False, is_eager=True, callback=_list_recipes,
              help="List the registered recipes with their sources and published figures, and exit.")
@click.option("--model", "model_name", default=None, help="Registered model, e.g. madry-cnn or timm:resnet18.")
@click.option("--model-param", "model_params", multiple=True, metavar="K=V", help="Model parameter (repeatable).")
@user_model_options
@click.option("--dataset", "dataset_name", default="digits", show_default=True, help="Registered dataset.")
@data_options
@click.option("--defense", "defense_name", default="natural", show_default=True, help="Registered defense.")
@click.option("--param", "defense_params", multiple=True, metavar="K=V",
              help="Defense parameter, e.g. eps=0.1 or eps=8/255 (repeatable).")
@click.option("--epochs", type=int, default=DEFAULTS.epochs, show_default=True)
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size, show_default=True)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=DEFAULTS.optimizer, show_default=True)
@click.option("--lr", type=float, default=DEFAULTS.lr, show_default=True, help="Initial learning rate.")
@click.option("--momentum", type=float, default=DEFAULTS.momentum, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=float, default=DEFAULTS.weight_decay, show_default=True)
@click.option("--schedule", type=click.Choice(SCHEDULES), default=DEFAULTS.schedule, show_default=True)
@click.option("--augment", default="default", show_default=True, metavar="none|default|LIST",
              help="Training augmentation on the training device: default (the dataset's own: random 4-pixel crops "
                   "and flips for CIFAR and STL-10, none for MNIST and digits), none, or a list such as "
                   "crop:4:reflect,flip (crop[:PADDING[:zero|reflect]], flip).")
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True), default=None, metavar="DECAY",
              help="Also keep an exponential moving average of the weights (e.g. 0.999), saved beside them and used "
                   "by validation, attack and bench unless told otherwise.")
@click.option("--select", type=click.Choice(SELECTS), default="auto", show_default=True,
              help="The epoch to keep: best (highest validation PGD accuracy, saved as best.* beside last.*), last, "
                   "or auto: best for adversarial defenses when the PGD check is on, last otherwise.")
@click.option("--val-examples", type=int, default=DEFAULTS.val_examples, show_default=True,
              help="Training images to validate on after each epoch, never test images (held out of training when "
                   "the best epoch is selected; 0: no validation).")
@click.option("--val-eps", type=Fraction(), default=None,
              help="Linf eps of the per-epoch PGD check; default: the defense's eps if it has one, else off.")
@click.option("--val-steps", type=click.IntRange(min=1), default=DEFAULTS.val_steps, show_default=True,
              help="PGD steps of the per-epoch check.")
@click.option("--eps-warmup", type=click.IntRange(min=0), default=0, show_default=True, metavar="EPOCHS",
              help="Raise the defense's eps linearly over the first EPOCHS epochs (0: off); the usual remedy when "
                   "adversarial training from scratch stays at chance.")
@seed_option
@device_option
@precision_options
@threads_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder; default runs/DATASET-MODEL-DEFENSE-sSEED (runs/RECIPE-sSEED with --recipe).")
@click.option("--no-resume", is_flag=True, help="Start over even if --out holds a checkpoint of this run.")
@click.pass_context
def train(ctx, recipe_name, model_name, model_params, model_file, model_args, weights, normalize, dataset_name,
          data_root, dataset_params, defense_name, defense_params, epochs, batch_size, optimizer, lr, momentum,
          weight_decay, schedule, augment, ema_decay, select, val_examples, val_eps, val_steps, eps_warmup, seed,
          device, precision, channels_last, threads, out_dir, no_resume) -> None:
    """Train a model on DATASET with a defense; checkpoints every epoch and resumes after interruption.

    The model is a registered one (--model NAME) or your own (--model-file PATH.py:CLASS with
    --model-arg K=V and, to fine-tune, --weights FILE; or a TorchScript file). The checkpoint records
    your file's absolute path, class, arguments and SHA-256, so `robustkit attack CHECKPOINT` rebuilds it.
    --recipe NAME starts from a published setup (--list-recipes shows them); what you type overrides it.

    Writes last.safetensors + last.json (the checkpoint; last.ema.safetensors with --ema-decay),
    best.* (the best epoch, when selected), metrics.jsonl (per-epoch train loss and accuracy,
    validation clean and PGD accuracy, the kept epoch marked) and curves.png into --out. Rerunning the
    same command continues from the last finished epoch.

    \b
    Examples:
      robustkit train --model madry-cnn --defense natural --epochs 5
      robustkit train --model madry-cnn --defense pgd-at --param eps=0.1 --param steps=7
      robustkit train --recipe mnist-madry --data-root ~/data
      robustkit train --recipe cifar10-pgd-at-rice2020 --data-root ~/data --ema-decay 0.999
      robustkit train --model timm:resnet18 --dataset cifar10 --data-root ~/data \\
          --defense pgd-at --param eps=8/255 --epochs 100 --schedule cosine
      robustkit train --model-file mynet.py:Net --weights mynet.pt --defense pgd-at --epochs 1
    """
    set_threads(threads)
    host = get_host()
    options = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                   weight_decay=weight_decay, schedule=schedule, val_examples=val_examples, val_eps=val_eps,
                   val_steps=val_steps, eps_warmup=eps_warmup, augment=augment, ema_decay=ema_decay, select=select,
                   precision=precision, channels_last=channels_last)
    typed = {name for name in ("model_name", "dataset_name", "defense_name", *CONFIG_OPTIONS)
             if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}
    recipe = None
    given_params = parse_assignments(defense_params, "--param")
    dataset_given = parse_assignments(dataset_params, "--dataset-param")
    recipe_training: dict = {}
    if recipe_name is not None:
        from robustkit.recipe_config import get_recipe, recipe_config

        recipe = get_recipe(host, recipe_name)
        if model_name is None and model_file is None:
            model_name = recipe.model
            model_params = tuple(f"{k}={v}" for k, v in recipe.model_params.items()) + tuple(model_params)
        if "dataset_name" not in typed:
            dataset_name, dataset_given = recipe.dataset, {**recipe.dataset_params, **dataset_given}
        if "defense_name" not in typed or defense_name == recipe.defense:
            defense_name, given_params = recipe.defense, {**recipe.defense_params, **given_params}
        recipe_training = {k: v for k, v in recipe.training.items() if k not in typed}
        options.update({k: v for k, v in recipe_training.items() if k in options})
    choice = choose_model(host, model_name=model_name, model_params=model_params, model_file=model_file,
                          model_args=model_args, weights=weights, normalize=normalize)
    # Everything is validated before the (possibly long) training starts.
    defense = host.defenses.create(defense_name, given_params)
    dataset = load_dataset(host, dataset_name, dataset_given, data_root)
    eps = defense.config.get("eps")
    if (options["val_eps"] is None and "val_eps" not in recipe_training and isinstance(eps, float) and 0 < eps <= 1
            and defense.config.get("norm", "linf") == "linf"):
        options["val_eps"] = eps  # the per-epoch check uses linf PGD: only a linf defense's eps carries over
    extra = {k: v for k, v in recipe_training.items() if k not in options}  # what the CLI has no option for
    default_out = (Path("runs") / f"{recipe.name}-s{seed}" if recipe is not None
                   else Path("runs") / f"{dataset_name}-{choice.label}-{defense_name}-s{seed}")
    settings = {**options, **extra, "seed": seed, "device": device, "out_dir": out_dir or default_out}
    config = recipe_config(recipe, **settings) if recipe is not None else TrainConfig(**settings)
    config.check()
    output_folder(Path(config.out_dir))
    seed_everything(seed)  # the initial weights are part of the run
    model = choice.build(host, dataset.info)
    result = run_training(model, dataset, defense, config, resume=not no_resume, host=host)
    if result.resumed_from and result.epochs_run == 0:
        click.echo(f"already trained ({result.resumed_from} epochs) in {config.out_dir}")
    elif result.resumed_from:
        click.echo(f"resumed after epoch {result.resumed_from}")
    say_normalization(model)
    kept = next((row for row in result.history if row["epoch"] == result.selected_epoch), result.metrics)
    which = "best" if result.checkpoint is not None and result.checkpoint.stem == "best" else "kept"
    rows = [[k, percent(v) if k.endswith("_acc") and isinstance(v, float) else
             f"{v:.4f}" if isinstance(v, float) else str(v)] for k, v in kept.items()]
    echo_table(rows, [f"metric ({which} epoch {result.selected_epoch} of {len(result.history)})", "value"])
    click.echo(f"checkpoint: {result.checkpoint} ({result.weights} weights)")
