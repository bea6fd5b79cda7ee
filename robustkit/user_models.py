"""A model robustkit never saw: the user's own ``nn.Module`` class in a ``.py`` file, or a TorchScript file.

- ``PATH.py:CLASS`` with constructor arguments (``--model-arg K=V``) and, optionally, weights: a plain
  state dict saved with ``torch.save`` (``.pt``/``.pth``, read with ``torch.load(weights_only=True)``, so a
  pickle that would run code is refused without running it) or a ``.safetensors`` file. A
  ``{"state_dict": ...}`` or ``{"model_state_dict": ...}`` wrapper and DataParallel's ``module.`` prefix are
  unwrapped; then every key must match (strict).
- A TorchScript archive (``torch.jit.save``) alone: code and weights in one file.

The network is checked once on two images of the dataset's shape: it must return ``N x num_classes`` logits.
It is wrapped in a :class:`~robustkit.models.Classifier` whose normalization defaults to ``none`` (images in
[0, 1] go to it as they are, as torchattacks and RobustBench assume); ``--normalize`` says otherwise.

A checkpoint of such a model records a :class:`ModelSource`: the file's absolute path, the class, the
arguments and the file's SHA-256 (and the weights file it started from). :func:`robustkit.checkpoints.load_model`
rebuilds the class from the file and loads the checkpoint's own weights; a file changed since is said in one
line on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import os
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from robustkit.data import DatasetInfo
from robustkit.errors import InputError, ParameterError, RobustkitError, one_line
from robustkit.files import sha256_file
from robustkit.models import Classifier, ModelSpec, Normalization
from robustkit.params import parse_assignments, parse_value

from robustkit.state_dicts import (EXPECTED, SAVE_HINT, TORCHSCRIPT, WRAPPERS, archive_kind, load_state_strict,
                                   read_state_dict)

PYTHON = "python"
__all__ = ["PYTHON", "SAVE_HINT", "TORCHSCRIPT", "WRAPPERS", "ModelSource", "archive_kind", "build_network",
           "build_user_model", "changed_since", "check_logits", "construct", "import_class", "load_state_strict",
           "load_torchscript", "model_args", "model_source", "parse_model_file", "read_weights"]


@dataclass(frozen=True)
class ModelSource:
    """Where a user's model comes from; recorded in checkpoints and benchmark cells.

    :param kind: ``python`` (a class in a ``.py`` file) or ``torchscript`` (a ``torch.jit.save`` archive).
    :param file: the ``.py`` or TorchScript file, absolute.
    :param class_name: the ``nn.Module`` subclass (``python`` only).
    :param args: the constructor's keyword arguments.
    :param sha256: the file's SHA-256 when the model was built.
    :param weights: the state-dict file the weights were loaded from, absolute (``python`` only; optional).
    :param weights_sha256: its SHA-256.
    """

    kind: str
    file: str
    class_name: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None

    @property
    def name(self) -> str:
        """How results name it: ``model.py:SmallCNN`` or ``model.pt``."""
        base = Path(self.file).name
        return f"{base}:{self.class_name}" if self.kind == PYTHON else base

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": self.file, "class": self.class_name, "args": dict(self.args),
                "sha256": self.sha256, "weights": self.weights, "weights_sha256": self.weights_sha256}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "the checkpoint") -> "ModelSource":
        if not isinstance(data, Mapping) or data.get("kind") not in (PYTHON, TORCHSCRIPT) or not data.get("file"):
            raise RobustkitError(f"{where}: its model source is malformed ({data!r}); it needs kind "
                                 f"({PYTHON} or {TORCHSCRIPT}) and file")
        if not Path(str(data["file"])).is_absolute():
            raise RobustkitError(f"{where}: its model file {data['file']!r} is not an absolute path; robustkit records "
                                 "absolute ones, so the metadata was edited: retrain or restore it")
        if data["kind"] == PYTHON and not data.get("class"):
            raise RobustkitError(f"{where}: its model source names no class")
        args = data.get("args") or {}
        if not isinstance(args, Mapping):
            raise RobustkitError(f"{where}: its model arguments must be a table, got {args!r}")
        return cls(data["kind"], str(data["file"]), data.get("class"), dict(args), data.get("sha256"),
                   data.get("weights"), data.get("weights_sha256"))


# --- naming the model ---------------------------------------------------------------------------------


def parse_model_file(text: str, what: str = "--model-file") -> tuple[Path, str | None]:
    """``PATH.py:CLASS`` -> (path, class); a TorchScript file -> (path, None). Checks the form only."""
    raw = str(text).strip()
    path_text, sep, class_name = raw.rpartition(":")
    if sep and path_text.lower().endswith(".py"):
        if not class_name.isidentifier():
            raise InputError(f"{what} {raw}: {class_name!r} is not a class name; give PATH.py:CLASS, e.g. "
                             "model.py:SmallCNN")
        return Path(path_text).expanduser(), class_name
    if raw.lower().endswith(".py"):
        raise InputError(f"{what} {raw}: name the class too, as {raw}:CLASS (the nn.Module subclass to build)")
    if not sep or not class_name.isidentifier():
        return Path(raw).expanduser(), None  # a TorchScript file (a drive letter's colon stays in the path)
    raise InputError(f"{what} {raw}: only a .py file takes :CLASS; give PATH.py:CLASS, or a TorchScript file alone")


def model_args(pairs: tuple[str, ...] | Mapping[str, Any], what: str = "--model-arg") -> dict[str, Any]:
    """``K=V`` strings (values typed: true/false, numbers, none, else text) or a ready mapping."""
    if isinstance(pairs, Mapping):
        return dict(pairs)
    out: dict[str, Any] = {}
    for key, value in parse_assignments(pairs, what).items():
        if not key.isidentifier():
            raise ParameterError(f"{what} {key}={value}: {key!r} is not a Python argument name")
        out[key] = None if value.lower() == "none" else parse_value(value)
    return out


def model_source(model_file: str | os.PathLike[str], args: Mapping[str, Any] | None = None,
                 weights: str | os.PathLike[str] | None = None, what: str = "--model-file") -> ModelSource:
    """The :class:`ModelSource` of ``--model-file``/``--model-arg``/``--weights``: files checked, hashed."""
    path, class_name = parse_model_file(str(model_file), what)
    path = _existing(path, what, "a .py file with your model's class, or a TorchScript file")
    if class_name is None:
        if args:
            raise InputError(f"{what} {path.name}: a TorchScript file takes no constructor arguments; drop "
                             "--model-arg (or give the class as PATH.py:CLASS)")
        if weights is not None:
            raise InputError(f"{what} {path.name}: a TorchScript file carries its own weights; drop --weights (or "
                             "give the class as PATH.py:CLASS to load a state dict into)")
        kind = archive_kind(path)
        if kind != TORCHSCRIPT:
            raise InputError(f"{what} {path}: {_what_it_is(kind)}, not a TorchScript archive (torch.jit.save); "
                             "give the model's class as --model-file PATH.py:CLASS with --weights "
                             f"{path.name}")
        return ModelSource(TORCHSCRIPT, str(path.resolve()), sha256=sha256_file(path))
    weights_path = _existing(Path(weights).expanduser(), "--weights", EXPECTED) if weights is not None else None
    return ModelSource(PYTHON, str(path.resolve()), class_name, dict(args or {}), sha256_file(path),
                       str(weights_path.resolve()) if weights_path else None,
                       sha256_file(weights_path) if weights_path else None)


def _existing(path: Path, what: str, expected: str) -> Path:
    if not path.exists():
        raise InputError(f"{what} {path}: file not found; give {expected}")
    if not path.is_file():
        raise InputError(f"{what} {path}: not a file; give {expected}")
    return path


# --- reading files --------------------------------------------------------------------------------------


def _what_it_is(kind: str) -> str:
    return {"torch": "it is a file saved with torch.save (a state dict holds weights, not the model's code)",
            "safetensors": "it is a safetensors file (weights, not the model's code)",
            "python": "it is a Python file",
            TORCHSCRIPT: "it is a TorchScript archive"}.get(kind, "it is neither TorchScript nor a torch file")


def read_weights(path: str | os.PathLike[str], owner: str, what: str = "--weights") -> dict[str, torch.Tensor]:
    """The state dict for ``owner`` in ``path`` (:func:`robustkit.state_dicts.read_state_dict`), after refusing
    a TorchScript archive or a Python file given as weights, in one line."""
    file = _existing(Path(path).expanduser(), what, EXPECTED)
    kind = archive_kind(file)
    if kind == TORCHSCRIPT:
        raise InputError(f"{what} {file}: a TorchScript archive (code and weights), not a state dict; give it "
                         f"alone as --model-file {file.name}, without --weights")
    if kind == "python":
        raise InputError(f"{what} {file}: a Python file, not weights; the class goes to --model-file PATH.py:CLASS")
    return read_state_dict(file, owner)


# --- building -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _beside(folder: Path) -> Iterator[None]:
    """The model file's folder on ``sys.path`` while it is imported (so it may import its neighbours)."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def _where(err: BaseException, file: Path) -> str:
    """`` at model.py line 12`` when the error was raised in the user's file, else nothing."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == file]
    return f" at {file.name} line {frames[-1].lineno}" if frames else ""


def import_class(file: Path, class_name: str, what: str = "--model-file") -> type:
    """Import ``file`` as a fresh module and return its ``nn.Module`` subclass ``class_name``."""
    file = file.resolve()
    module_name = "robustkit_user_model_" + hashlib.sha256(str(file).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise InputError(f"{what} {file}: cannot be imported as Python; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look classes up there
    try:
        with _beside(file.parent):
            spec.loader.exec_module(module)
    except SyntaxError as err:
        sys.modules.pop(module_name, None)
        raise InputError(f"{what} {file}: line {err.lineno}: SyntaxError: {err.msg}; fix the file") from None
    except Exception as err:
        sys.modules.pop(module_name, None)
        raise InputError(f"{what} {file}: importing it failed{_where(err, file)} ({one_line(err, typed=True)}); "
                         "fix the file or install what it imports") from None
    if not hasattr(module, class_name):
        classes = sorted(n for n, v in vars(module).items()
                         if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module_name)
        has = f"its nn.Module classes: {', '.join(classes)}" if classes else "it defines no nn.Module class"
        raise InputError(f"{what} {file.name}:{class_name}: {file.name} has no {class_name!r} ({has}); "
                         "name the model's class after the colon")
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        kind = "a class" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise InputError(f"{what} {file.name}:{class_name} is {kind}, not an nn.Module subclass; name the class of "
                         "your model (class ...(torch.nn.Module))")
    return cls


def construct(cls: type, args: Mapping[str, Any], owner: str, file: Path) -> nn.Module:
    """``cls(**args)``, with a one-line error naming the argument for a bad one."""
    try:
        inspect.signature(cls).bind(**args)
    except TypeError as err:
        takes = [n for n, p in inspect.signature(cls).parameters.items()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        raise ParameterError(f"{owner}: {one_line(err)} (it takes: {', '.join(takes) or 'no arguments'}); check "
                             "--model-arg") from None
    except ValueError:  # no signature to read (a C extension): let the call decide
        pass
    try:
        net = cls(**args)
    except Exception as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise ParameterError(f"{owner}({shown}) failed{_where(err, file)} ({one_line(err, typed=True)}); check "
                             "--model-arg") from None
    return net


def load_torchscript(file: Path, what: str = "--model-file") -> nn.Module:
    """``torch.jit.load`` on CPU, quietly (torch announces TorchScript's deprecation on every load)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(file), map_location="cpu")
    except Exception as err:
        raise InputError(f"{what} {file}: cannot load it as TorchScript ({one_line(err, typed=True)[:160]}); "
                         "save it with torch.jit.save(torch.jit.script(model), FILE)") from None


def build_network(source: ModelSource, *, load_weights: bool = True, what: str = "--model-file") -> nn.Module:
    """The network ``source`` names: the class built with its arguments (and its weights), or the TorchScript."""
    file = Path(source.file)
    if not file.is_file():
        raise InputError(f"{what} {file}: file not found; the model is rebuilt from it, so put it back (or give "
                         "the path where it now is)")
    if source.kind == TORCHSCRIPT:
        return load_torchscript(file, what)
    cls = import_class(file, str(source.class_name), what)
    net = construct(cls, source.args, source.name, file)
    if load_weights and source.weights:
        load_state_strict(net, read_weights(source.weights, source.name), source.weights, source.name)
    return net


def check_logits(net: nn.Module, info: DatasetInfo, owner: str, file: Path | None = None) -> None:
    """Run ``net`` on two mid-grey images of ``info``'s shape; it must return ``2 x info.num_classes`` logits."""
    shape = (2, *info.input_shape)
    training = net.training
    net.eval()  # batch norm keeps its statistics, dropout is off
    try:
        with torch.no_grad():
            out = net(torch.full(shape, 0.5))
    except Exception as err:
        where = _where(err, file) if file is not None else ""
        raise InputError(f"{owner} failed on {_images(info)}{where} ({one_line(err, typed=True)[:200]}); it must "
                         f"take N x {' x '.join(map(str, info.input_shape))} images and return N x "
                         f"{info.num_classes} logits") from None
    finally:
        net.train(training)
    needs = f"{info.name} needs N x {info.num_classes} logits (N images, {info.num_classes} classes)"
    if not isinstance(out, torch.Tensor):
        raise InputError(f"{owner} returned a {type(out).__name__} for {_images(info)}, not a tensor; {needs}: "
                         "return the logits alone")
    if tuple(out.shape) != (2, info.num_classes):
        raise InputError(f"{owner} returned shape {tuple(out.shape)} for {_images(info)}; {needs}")


def _images(info: DatasetInfo) -> str:
    return f"2 {info.name} images (2 x {' x '.join(map(str, info.input_shape))})"


def build_user_model(source: ModelSource, info: DatasetInfo, normalization: Normalization | str | None = None, *,
                     load_weights: bool = True, what: str = "--model-file") -> Classifier:
    """``source``'s network for ``info``, checked to give ``N x num_classes`` logits, with ``normalization``
    (default ``none``) in front; its spec records the source for checkpoints.

    :param load_weights: load ``source.weights`` (False when a checkpoint's weights follow).
    """
    chosen = Normalization.coerce(normalization, "--normalize") or Normalization("none")
    chosen.resolve(info)  # a channel-count mismatch fails before the model is built
    net = build_network(source, load_weights=load_weights, what=what)
    return wrap_network(net, info, chosen, source.name, Path(source.file) if source.kind == PYTHON else None,
                        source=source)


def wrap_network(net: nn.Module, info: DatasetInfo, normalization: Normalization, name: str,
                 file: Path | None = None, *, source: "ModelSource | None" = None,
                 what: str = "--normalize") -> Classifier:
    """A user's network as a :class:`~robustkit.models.Classifier` for ``info``: checked to give
    ``N x num_classes`` logits, with ``normalization`` (resolved against ``info``; ``what`` names it in
    errors) in front."""
    used = normalization.resolve(info, what)
    check_logits(net, info, name, file)
    spec = ModelSpec(name, dict(source.args) if source else {}, info, used, source.to_json() if source else None)
    return Classifier(net, used.module(info.channels), spec)


def changed_since(source: ModelSource) -> str | None:
    """One line when ``source``'s file is not the one recorded (by SHA-256), else None."""
    file = Path(source.file)
    if source.sha256 and file.is_file() and sha256_file(file) != source.sha256:
        return (f"warning: {file} changed since this model was saved (its sha256 differs); the model is rebuilt "
                "from the file as it is now")
    return None
