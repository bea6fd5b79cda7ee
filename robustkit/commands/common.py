"""Options and helpers shared by the commands that train and evaluate."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import click

from robustkit.data import ImageDataset
from robustkit.errors import RobustkitError
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


def build_components(registry: Any, specs: tuple[str, ...]) -> dict[str, Any]:
    """``--attack 'NAME k=v ...'`` (or ``--metric``) options to ``{display name: component}``, all validated
    before any work; a name given twice is keyed by its whole spec."""
    made: dict[str, Any] = {}
    for spec in specs:
        name, params = parse_spec(spec)
        key = name if name not in made else spec
        made[key] = registry.create(name, params)
    return made


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
