"""``robustkit train``: train a registered model, or the user's own, on a dataset with a defense."""

from __future__ import annotations

from pathlib import Path

import click

from robustkit.commands.group import cli, echo_table
from robustkit.commands.common import (Fraction, choose_model, data_options, device_option, load_dataset,
                                      output_folder, precision_options, say_normalization, seed_option,
                                      set_threads, threads_option, user_model_options)
from robustkit.devices import seed_everything
from robustkit.host import get_host
from robustkit.params import parse_assignments
from robustkit.training import OPTIMIZERS, SCHEDULES, TrainConfig, train as run_training


DEFAULTS = TrainConfig()  # the one home of the training defaults and choices


@cli.command()
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
@click.option("--val-examples", type=int, default=DEFAULTS.val_examples, show_default=True,
              help="Test images to check after each epoch (0: none).")
@click.option("--val-eps", type=Fraction(), default=None,
              help="Linf eps of the per-epoch PGD check; default: the defense's eps if it has one, else off.")
@click.option("--eps-warmup", type=click.IntRange(min=0), default=0, show_default=True, metavar="EPOCHS",
              help="Raise the defense's eps linearly over the first EPOCHS epochs (0: off); the usual remedy when "
                   "adversarial training from scratch stays at chance.")
@seed_option
@device_option
@precision_options
@threads_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder; default runs/DATASET-MODEL-DEFENSE-sSEED.")
@click.option("--no-resume", is_flag=True, help="Start over even if --out holds a checkpoint of this run.")
def train(model_name, model_params, model_file, model_args, weights, normalize, dataset_name, data_root, dataset_params, defense_name, defense_params, epochs,
          batch_size, optimizer, lr, momentum, weight_decay, schedule, val_examples, val_eps, eps_warmup, seed, device,
          precision, channels_last, threads, out_dir, no_resume) -> None:
    """Train a model on DATASET with a defense; checkpoints every epoch and resumes after interruption.

    The model is a registered one (--model NAME) or your own (--model-file PATH.py:CLASS with
    --model-arg K=V and, to fine-tune, --weights FILE; or a TorchScript file). The checkpoint records
    your file's absolute path, class, arguments and SHA-256, so `robustkit attack CHECKPOINT` rebuilds it.

    Writes last.safetensors + last.json (the checkpoint), metrics.jsonl (per-epoch train loss and
    accuracy, validation clean and PGD accuracy) and curves.png into --out. Rerunning the same
    command continues from the last finished epoch.

    \b
    Examples:
      robustkit train --model madry-cnn --defense natural --epochs 5
      robustkit train --model madry-cnn --defense pgd-at --param eps=0.1 --param steps=7
      robustkit train --model timm:resnet18 --dataset cifar10 --data-root ~/data \\
          --defense pgd-at --param eps=8/255 --epochs 100 --schedule cosine
      robustkit train --model-file mynet.py:Net --weights mynet.pt --defense pgd-at --epochs 1
    """
    set_threads(threads)
    host = get_host()
    choice = choose_model(host, model_name=model_name, model_params=model_params, model_file=model_file,
                          model_args=model_args, weights=weights, normalize=normalize)
    # Everything is validated before the (possibly long) training starts.
    defense = host.defenses.create(defense_name, parse_assignments(defense_params, "--param"))
    dataset = load_dataset(host, dataset_name, dataset_params, data_root)
    eps = defense.config.get("eps")
    if val_eps is None and isinstance(eps, float) and 0 < eps <= 1 and defense.config.get("norm", "linf") == "linf":
        val_eps = eps  # the per-epoch check uses linf PGD: only a linf defense's eps carries over
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
        weight_decay=weight_decay, schedule=schedule, seed=seed, device=device, val_examples=val_examples,
        precision=precision, channels_last=channels_last,
        val_eps=val_eps, eps_warmup=eps_warmup,
        out_dir=out_dir or Path("runs") / f"{dataset_name}-{choice.label}-{defense_name}-s{seed}",
    )
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
    last = result.metrics
    rows = [[k, f"{v:.4f}" if isinstance(v, float) else str(v)] for k, v in last.items()]
    echo_table(rows, ["metric (last epoch)", "value"])
    click.echo(f"checkpoint: {result.checkpoint}")
