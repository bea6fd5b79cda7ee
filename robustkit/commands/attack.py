"""``robustkit attack``: run attacks on a trained checkpoint (or a fresh registered model) and report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from robustkit.checkpoints import (SELECTIONS, WEIGHT_KINDS, chosen_checkpoint, load_model, model_metadata,
                                   read_metadata, weights_kind as loaded_kind)
from robustkit.commands.distributed import check_sharding, eval_shards_option, evaluate_in_shards, executor_options
from robustkit.commands.group import cli, echo_table
from robustkit.commands.common import (build_components, choose_model, data_options, device_option, load_dataset,
                                      output_folder, precision_options, say_normalization, seed_option,
                                      set_threads, threads_option, user_model_options)
from robustkit.devices import seed_everything
from robustkit.errors import RobustkitError
from robustkit.evaluation import EvaluationResult, evaluate
from robustkit.files import atomic_write_text, jsonable
from robustkit.host import get_host
from robustkit.models import normalization_of
from robustkit.params import parse_assignments


def print_evaluation(result: EvaluationResult) -> None:
    """The evaluation as a table: accuracies in percent, distortion of successful adversarials, and the worst
    case within each threat of the suite (attacks without a budget are listed beside it, never in it).

    An attack made of steps (AutoAttack) gets one indented row per step under its own: robust accuracy after
    the step, the share of the examples it attacked that it fooled, and its seconds."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    metrics = list(dict.fromkeys(m for s in result.attacks.values() for m in s.metrics))
    blank = ["-"] * (5 + len(metrics))
    rows = [["(clean)", pct(result.clean_accuracy), *blank[1:]]]
    for name, s in result.attacks.items():
        row = [name, pct(s.robust_accuracy), pct(s.success_rate), num(s.mean_l2), num(s.median_l2)]
        rows.append(row + [num(s.metrics.get(m, {}).get("mean")) for m in metrics] + [f"{s.seconds:.1f}"])
        for step in s.steps:  # an attack made of steps (AutoAttack): accuracy after each, its own success rate
            attacked = step.get("attacked") or 0
            rows.append([f"  after {step['attack']}", pct(step.get("robust_accuracy")),
                         pct(step.get("fooled", 0) / attacked if attacked else None), *blank[3:],
                         f"{step.get('seconds', 0.0):.1f}"])
    for threat, accuracy in result.worst_cases().items():
        rows.append([f"(worst case, {threat})", pct(accuracy), *blank[1:]])
    headers = ["attack", "accuracy %", "success %", "mean L2", "median L2"]
    echo_table(rows, headers + [f"mean {m}" for m in metrics] + ["seconds"])
    click.echo(f"{result.n_examples} examples, {result.n_clean_wrong} misclassified before any attack, "
               f"device {result.device}, {result.seconds:.1f} s")
    if result.unbounded():
        click.echo(f"in no worst case (no budget; their successes count at any distance): "
                   f"{', '.join(result.unbounded())}")


@cli.command(name="attack")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--select", type=click.Choice(SELECTIONS), default=None,
              help="Which epoch of a training run: best (best.json) or last (last.json); default: the one the run "
                   "kept when CHECKPOINT is its folder, else the file given.")
@click.option("--weights-kind", type=click.Choice(WEIGHT_KINDS), default=None,
              help="Which weights of the checkpoint: ema (the moving average, when trained with --ema-decay), raw, "
                   "or auto (default: the EMA when there is one).")
@click.option("--attack", "attack_specs", multiple=True, required=True, metavar="'NAME K=V ...'",
              help="Attack and its parameters in one quoted argument (repeatable).")
@click.option("--model", "model_name", default=None, help="Attack a freshly built registered model instead.")
@click.option("--model-param", "model_params", multiple=True, metavar="K=V",
              help="Parameter of the --model, e.g. weights=FILE for timm:NAME (repeatable).")
@user_model_options
@click.option("--dataset", "dataset_name", default=None,
              help="Dataset to attack on; default: the checkpoint's (digits for --model).")
@data_options
@click.option("--n-examples", type=click.IntRange(min=1), default=None, help="Evaluate the first N test images (default: all).")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Write summary.json, records.jsonl (per-sample results) and grid.png here.")
@click.option("--grid", "grid_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="PATH.png", help="Write the example grid here (default with --out: OUT/grid.png).")
@click.option("--metric", "metric_specs", multiple=True, metavar="'NAME K=V ...'",
              help="Also measure this image metric on each successful adversarial (repeatable; see "
                   "`robustkit metrics list`, e.g. 'pass' from the hotcold plugin).")
@click.option("--grid-examples", type=click.IntRange(0), default=8, show_default=True,
              help="Images in the example grid: the first clean-correct ones (0: no grid).")
@click.option("--state", "state_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="FILE", help="Make the run resumable: record finished batches (and AutoAttack's finished "
                                   "sub-attacks) in FILE; rerunning the same command continues from it. Kept "
                                   "when the run ends.")
@seed_option
@device_option
@precision_options
@threads_option
@eval_shards_option()
@executor_options("shard", jobs=False)
def attack(checkpoint, select, weights_kind, attack_specs, model_name, model_params, model_file, model_args, weights, normalize,
           dataset_name, data_root, dataset_params, n_examples, batch_size, out_dir, grid_path, metric_specs,
           grid_examples, state_path, seed, device, precision, channels_last, threads, eval_shards, executor_name,
           address, gpus_per_cell, cpus_per_cell, max_retries) -> None:
    """Attack a model with one or more attacks: clean, robust and worst-case accuracy.

    CHECKPOINT is a last.json / last.safetensors written by `robustkit train`; or --model NAME (a
    registered model), or your own model: --model-file PATH.py:CLASS [--model-arg K=V ...] --weights
    FILE (a state dict .pt/.pth or .safetensors), or a TorchScript file as --model-file MODEL.pt.
    Your own model gets images in [0, 1] as they are (--normalize none) unless --normalize says
    otherwise. Each --attack is a registered attack name followed by its parameters (see
    `robustkit attacks list --params`).

    \b
    Examples:
      robustkit attack runs/digits-madry-cnn-pgd-at-s0/last.json \\
          --attack 'torchattacks:PGD eps=0.1 alpha=0.01 steps=40' --attack 'torchattacks:FGSM eps=0.1'
      robustkit attack --model lenet --attack 'torchattacks:PGDL2 eps=1.0' --n-examples 100
      robustkit attack --model lenet --attack autoattack --attack 'torchattacks:FGSM eps=0.1' --grid grid.png
      robustkit attack --model-file mynet.py:Net --model-arg width=2 --weights mynet.pt \\
          --dataset cifar10 --data-root ~/data --attack 'autoattack eps=8/255'
      robustkit attack runs/cifar/last.json --attack autoattack --out runs/aa --executor ray --eval-shards 16

    The example grid shows the first clean-correct images, each attack's adversarials and their
    perturbations amplified so the largest change is black or white (grey: unchanged).

    --state FILE makes a long run resumable: the file records every finished batch and, for
    AutoAttack, every finished sub-attack of the batch in progress. Kill the run at any moment and
    rerun the same command: it continues where it stopped and reports the numbers an uninterrupted
    run reports. A file made with other settings (model, attacks, examples, batch size, seed) is
    refused; delete it or give another path.
    """
    set_threads(threads)
    host = get_host()
    choice = choose_model(host, model_name=model_name, model_params=model_params, model_file=model_file,
                          model_args=model_args, weights=weights, normalize=normalize, checkpoint=checkpoint,
                          takes_checkpoint=True)
    attacks = build_components(host.attacks, attack_specs)
    metrics = build_components(host.metrics, metric_specs)
    loaded = None
    if checkpoint is not None:
        checkpoint = chosen_checkpoint(checkpoint, select)  # a run's folder: the epoch it kept; --select: that one
        meta = read_metadata(checkpoint)
        loaded = loaded_kind(meta, weights_kind, checkpoint)
        stored = meta.get("dataset") or {}
        name = dataset_name or stored.get("name")
        params = dict(stored.get("params") or {}) if dataset_name is None else {}
        params.update(parse_assignments(dataset_params, "--dataset-param"))
        dataset = load_dataset(host, name, params, data_root)
        model = load_model(checkpoint, host, kind=loaded)
        trained_on = model.spec.dataset.input_shape if getattr(model, "spec", None) is not None else None
        if trained_on is not None and tuple(dataset.info.input_shape) != tuple(trained_on):
            raise RobustkitError(
                f"{checkpoint} was trained on {_shape(trained_on)} images, but the dataset gives "
                f"{_shape(dataset.info.input_shape)}; attack it on data of its own size (drop --dataset-param "
                "resize, or pass the resize it was trained with)")
    else:
        if select is not None or weights_kind is not None:
            raise RobustkitError("--select and --weights-kind choose among a CHECKPOINT's weights; give the checkpoint "
                                 "(a training run's folder or its .json)")
        dataset = load_dataset(host, dataset_name or "digits", dataset_params, data_root)
        seed_everything(seed)
        model = choice.build(host, dataset.info)
    if grid_path is None and out_dir is not None:
        grid_path = out_dir / "grid.png"
    if grid_path is not None and grid_path.suffix.lower() != ".png":
        raise RobustkitError(f"--grid {grid_path}: give a .png file name")
    if out_dir is not None:
        output_folder(out_dir)
    if state_path is not None:
        output_folder(state_path.parent, "--state")
    keep = grid_examples if grid_path is not None and eval_shards is None else 0  # shards bring back no images
    check_sharding(executor_name, eval_shards, out_dir, state_path)
    shards = None
    if eval_shards is not None:
        result, shards = evaluate_in_shards(
            host, executor_name, {"address": address, "gpus_per_cell": gpus_per_cell, "cpus_per_cell": cpus_per_cell,
                                  "max_retries": max_retries}, model, dataset, attacks, shards=eval_shards,
            out_dir=out_dir, n_examples=n_examples, batch_size=batch_size, device=device, seed=seed, threads=threads,
            metrics=metrics, precision=precision, channels_last=channels_last)
    else:
        result = evaluate(model, dataset, attacks, n_examples=n_examples, batch_size=batch_size, device=device,
                          seed=seed, keep_examples=keep, metrics=metrics, precision=precision,
                          channels_last=channels_last, state=state_path)
    say_normalization(model)  # after the work: an error before it stays the only line on stderr
    print_evaluation(result)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        # The evaluation's summary plus the model's provenance (its normalization included).
        normalization = normalization_of(model)
        summary = {**result.summary(), **({"shards": shards} if shards else {}),
                   "model": jsonable(_provenance(model, checkpoint, loaded)),
                   "normalization": normalization.to_json() if normalization is not None else None}
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        result.save_records(out_dir / "records.jsonl")
        click.echo(f"wrote {out_dir / 'summary.json'} and {out_dir / 'records.jsonl'}")
    if keep:
        write_grid(result, grid_path, class_names=dataset.info.class_names, model=_grid_model(model, checkpoint),
                   dataset=dataset.info.name)


def _provenance(model: Any, checkpoint: Path | None, weights: str | None = None) -> dict[str, Any] | None:
    """The summary's ``model`` entry: name, parameters, the user's source, the dataset, the checkpoint (its file,
    epoch and which ``weights``: raw or ema)."""
    spec = getattr(model, "spec", None)
    if spec is None:
        return None
    out = model_metadata(spec)
    if spec.dataset is not None:
        out["dataset"] = spec.dataset.name
    if checkpoint is not None:
        out["checkpoint"] = str(Path(checkpoint).resolve())
        out["epoch"] = read_metadata(checkpoint).get("epoch")
        out["weights"] = weights
    return out


def _shape(shape: tuple[int, ...]) -> str:
    channels, height, width = shape
    return f"{height}x{width} {'grey' if channels == 1 else f'{channels}-channel'}"


def write_grid(result: EvaluationResult, path: Path, class_names: tuple[str, ...] = (), model: str = "model",
               dataset: str = "") -> None:
    """The kept examples as one PNG: the clean row, then adversarial and perturbation rows per attack,
    under a title naming the model, the dataset and each attack with its threat model.

    The examples are the first clean-correct ones; misclassified ones (not attacked) fill in when
    fewer were correct.
    """
    from robustkit.plots import save_example_grid, threat_label

    examples = result.examples
    if examples is None or len(examples) == 0:
        return
    wrong = int((examples.clean_pred != examples.labels).sum())
    budgets = {name: result.budgets.get(name) for name in examples.adversarial}
    threats = {name: "no budget" if b is None else threat_label(b.norm, b.eps) for name, b in budgets.items()}
    title = f"{model}{f' on {dataset}' if dataset else ''}: " + "; ".join(f"{n} ({t})" for n, t in threats.items())
    save_example_grid(path, examples.images, examples.adversarial, labels=examples.labels,
                      clean_pred=examples.clean_pred, adv_pred=examples.adv_pred, max_images=len(examples),
                      class_names=class_names, title=title, notes=threats)
    note = f"; {wrong} of them misclassified before any attack, so not attacked" if wrong else ""
    click.echo(f"wrote example grid {path} ({len(examples)} images x {len(examples.adversarial)} attack(s){note})")


def _grid_model(model: Any, checkpoint: Path | None) -> str:
    """The model as the grid's title names it: its name and, for a checkpoint, its folder and file."""
    spec = getattr(model, "spec", None)
    name = spec.name if spec is not None else type(model).__name__
    return name if checkpoint is None else f"{name} ({Path(checkpoint).parent.name}/{Path(checkpoint).name})"
