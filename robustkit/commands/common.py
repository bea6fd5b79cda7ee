"""Options and helpers shared by the commands that train and evaluate."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import click

from robustkit.data import ImageDataset
from robustkit.errors import RobustkitError
from robustkit.models import Normalization, build_model, normalization_of
from robustkit.params import eval_fraction, parse_assignments, parse_spec


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True,
                        help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")(f)


def precision_options(f: Callable) -> Callable:
    f = click.option("--channels-last", is_flag=True, help="Channels-last memory format (faster convolutions on GPUs).")(f)
    return click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
                        help="Mixed precision: bf16 or fp16 autocast (fp16 scales the loss).")(f)


#: Seeds torch, NumPy and Python all accept.
SEED_RANGE = click.IntRange(0, 2**63 - 1)


class Fraction(click.ParamType):
    """A number written as ``0.3``, ``8/255`` or ``1e-3`` (eps values), checked by click: one line, exit 2."""

    name = "number"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float):
            return value
        try:
            number = eval_fraction(str(value))
        except ValueError as err:
            self.fail(f"{value!r} is not a number like 0.3 or 8/255 ({err})", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not finite", param, ctx)
        return number


def threads_option(f: Callable | None = None, *, default_help: str = "torch's default, usually one per core",
                   note: str = "") -> Callable:
    """``--threads N``: torch's intra-op CPU threads (None: leave torch's default). Commands call
    :func:`set_threads` with it before any work; ``bench run`` passes it to every cell instead."""
    def decorate(g: Callable) -> Callable:
        return click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                            help=f"Torch CPU threads  [default: {default_help}].{note}")(g)
    return decorate(f) if f is not None else decorate


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` unless ``threads`` is None (then torch's default stays)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def seed_option(f: Callable) -> Callable:
    return click.option("--seed", type=SEED_RANGE, default=0, show_default=True,
                        help="Seed for everything random.")(f)


def data_root_option(f: Callable) -> Callable:
    return click.option("--data-root", type=click.Path(path_type=Path), default=None,
                        help="Folder (or file) holding a real dataset: MNIST, CIFAR, STL-10, CIFAR-10-C, an image folder, "
                             "a tensors file; not needed for digits.")(f)


def data_options(f: Callable) -> Callable:
    """``--data-root`` and ``--dataset-param`` (the ``--dataset`` option itself differs per command)."""
    f = data_root_option(f)
    f = click.option("--dataset-param", "dataset_params", multiple=True, metavar="K=V",
                     help="Dataset parameter, e.g. resize=28 (repeatable).")(f)
    return f


def load_dataset(host: Any, name: str, params: tuple[str, ...] | dict, data_root: Path | None) -> ImageDataset:
    given = parse_assignments(params, "--dataset-param") if isinstance(params, tuple) else dict(params)
    return host.datasets.create(name, given, root=data_root)


def build_components(registry: Any, specs: tuple[str, ...] | list[str],
                     defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``--attack 'NAME k=v ...'`` (or ``--metric``) options to ``{display name: component}``, all validated
    before any work.

    A name given once is keyed by its bare name; every use of a name given more than once is keyed by the
    name and the parameters that differ between its uses (:func:`robustkit.registry.distinct_labels`), e.g.
    ``localized-pgd mask=exact`` and ``localized-pgd mask=broad``.

    :param defaults: values for declared parameters a spec does not set (``robustkit.benchmark`` passes the
        threat's ``eps`` and ``norm``); a parameter the component does not declare is left out.
    """
    from robustkit.registry import distinct_labels

    uses = []
    for spec in specs:
        name, params = parse_spec(spec)
        entry = registry.get(name)
        declared = {p.name: p for p in entry.declared_params()}
        for key, value in (defaults or {}).items():
            if key in declared and key not in params:
                params[key] = _fitting_choice(declared[key], value)
        made = registry.create(name, params)
        uses.append((name, params, dict(getattr(made, "config", None) or entry.resolve(params)), made))
    labels = distinct_labels([use[:3] for use in uses])
    return {label: use[3] for label, use in zip(labels, uses)}


def _fitting_choice(param: Any, value: Any) -> Any:
    """``value``, spelled as one of ``param``'s choices when they differ only in case (``linf`` -> ``Linf``)."""
    choices = list(param.choices or ())
    if value in choices:
        return value
    for choice in choices:
        if isinstance(choice, str) and isinstance(value, str) and choice.lower() == value.lower():
            return choice
    return value


def output_folder(path: Path, option: str = "--out", create: bool = True) -> Path:
    """``path`` as a folder results can be written into (created now unless ``create`` is false): checked
    before any work starts, so a typo does not surface after the first epoch."""
    if path.exists() and not path.is_dir():
        raise RobustkitError(f"{option} {path} is a file; give a folder (it is created when missing)")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RobustkitError(f"{option} {path}: cannot create the folder ({err.strerror}); give a folder you "
                                 "can write to") from None
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise RobustkitError(f"{option} {path}: cannot create the folder ({existing} is a file); give a folder you "
                             "can write to")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RobustkitError(f"{option} {path}: {existing} is not writable; give a folder you can write to")
    return path


# --- which model: a registered one, the user's own (a .py class or TorchScript), and its normalization ---------


def user_model_options(f: Callable) -> Callable:
    """``--model-file``, ``--model-arg``, ``--weights`` and ``--normalize`` (attack and train)."""
    f = click.option("--normalize", "normalize", default=None, metavar="none|dataset|MEAN/STD",
                     help="What the model does to images in [0, 1] first: none (they go in as they are), dataset "
                          "(the dataset's mean/std) or MEAN/STD per channel, e.g. 0.4914,0.4822,0.4465/0.2471,"
                          "0.2435,0.2616 (one number each: every channel). Default: none for --model-file, the "
                          "registry's choice (usually dataset) for --model.")(f)
    f = click.option("--weights", "weights", default=None, metavar="FILE",
                     help="Weights for --model-file PATH.py:CLASS: a state dict (.pt/.pth, loaded with "
                          "weights_only=True) or .safetensors; for --model NAME, its weights parameter.")(f)
    f = click.option("--model-arg", "model_args", multiple=True, metavar="K=V",
                     help="Constructor argument of the --model-file class (repeatable).")(f)
    f = click.option("--model-file", "model_file", default=None, metavar="PATH.py:CLASS | MODEL.pt",
                     help="Your own model: an nn.Module class in a .py file (with --weights), or a TorchScript "
                          "file alone.")(f)
    return f


@dataclass
class ModelChoice:
    """The model the options name, checked before any data is loaded; :meth:`build` makes it."""

    name: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    source: Any = None  # robustkit.user_models.ModelSource
    normalization: Normalization | None = None

    @property
    def label(self) -> str:
        """For folder names: the registry name (``timm_resnet18``) or the class (``SmallCNN``)."""
        if self.source is not None:
            return self.source.class_name or Path(self.source.file).stem
        return str(self.name).replace(":", "_")

    def build(self, host: Any, info: Any) -> Any:
        """The :class:`~robustkit.models.Classifier` (:func:`say_normalization` tells the user which)."""
        if self.source is not None:
            from robustkit.user_models import build_user_model

            model = build_user_model(self.source, info, self.normalization)
        else:
            model = build_model(host, str(self.name), info, self.params, normalization=self.normalization)
        return model


def say_normalization(model: Any) -> None:
    """``normalization: ...``, one line on stderr. Commands say it once the work is done, just before the
    results, so that an error stays the only line on stderr."""
    normalization = normalization_of(model)
    if normalization is not None:
        info = getattr(getattr(model, "spec", None), "dataset", None)
        click.echo(normalization.describe(getattr(info, "name", None)), err=True)


def choose_model(host: Any, *, model_name: str | None, model_params: tuple[str, ...] = (),
                 model_file: str | None = None, model_args: tuple[str, ...] = (), weights: str | None = None,
                 normalize: str | None = None, checkpoint: Any = None,
                 takes_checkpoint: bool = False) -> ModelChoice | None:
    """Check the model options together (one of CHECKPOINT, --model, --model-file); None for a checkpoint."""
    given = [what for what, value in (("a CHECKPOINT", checkpoint), ("--model", model_name),
                                      ("--model-file", model_file)) if value is not None]
    if len(given) != 1:
        options = ("a CHECKPOINT, --model NAME (e.g. madry-cnn) or your own model as --model-file PATH.py:CLASS"
                   if takes_checkpoint else "--model NAME (e.g. madry-cnn) or your own model as --model-file "
                   "PATH.py:CLASS")
        if not given:
            raise RobustkitError(f"no model given: give {options}")
        raise RobustkitError(f"give one of {options}, not several; got {' and '.join(given)}")
    if model_args and model_file is None:
        raise RobustkitError("--model-arg sets the constructor arguments of --model-file PATH.py:CLASS; for --model "
                             "NAME use --model-param K=V")
    if model_params and model_name is None:
        raise RobustkitError("--model-param sets parameters of a registered --model NAME; for --model-file use "
                             "--model-arg K=V")
    if checkpoint is not None:
        if weights is not None:
            raise RobustkitError("--weights goes with --model-file or --model; a CHECKPOINT holds its own weights")
        if normalize is not None:
            raise RobustkitError("--normalize goes with --model-file or --model; a CHECKPOINT keeps the "
                                 "normalization it was trained with (drop --normalize)")
        return None
    normalization = Normalization.parse(normalize) if normalize is not None else None
    if model_file is not None:
        from robustkit.user_models import model_args as typed_args, model_source

        return ModelChoice(source=model_source(model_file, typed_args(model_args), weights),
                           normalization=normalization)
    entry = host.models.get(str(model_name))
    params: dict[str, Any] = dict(parse_assignments(model_params, "--model-param"))
    if weights is not None:
        declared = {p.name for p in entry.declared_params(MODEL_CONTEXT)}
        if "weights" not in declared:
            raise RobustkitError(f"--weights: model '{entry.name}' takes no weights (its parameters: "
                                 f"{', '.join(sorted(declared)) or 'none'}); for your own weights of it give its "
                                 "class as --model-file PATH.py:CLASS --weights FILE, or train it with robustkit "
                                 "train")
        if "weights" in params:
            raise RobustkitError("--weights and --model-param weights=... both name weights; give one")
        if not Path(weights).expanduser().is_file():
            raise RobustkitError(f"--weights {weights}: file not found; give a local weights file")
        params["weights"] = str(Path(weights).expanduser())
    entry.resolve(params, MODEL_CONTEXT)  # a bad parameter fails before any data is loaded
    return ModelChoice(name=entry.name, params=params, normalization=normalization)


#: What the host passes every model factory (the user does not set them).
MODEL_CONTEXT = ("num_classes", "in_channels", "image_size")
