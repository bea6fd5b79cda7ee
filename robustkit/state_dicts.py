"""Reading a state dict from a weights file a user hands in, safely, and loading it strictly.

One home for what ``--weights`` (:mod:`robustkit.user_models`) and plugins taking a ``weights=`` file need:

- :func:`read_state_dict`: ``.safetensors`` (never unpickled) or a torch file read with
  ``torch.load(weights_only=True)``, so a pickle that would run code is refused, in one line naming the file,
  without running it; then a configurable set of wrapper keys (``{"state_dict": ...}``) is unwrapped and a
  configurable set of prefixes (DataParallel's ``module.``) stripped.
- :func:`classifier_weights`: a robustkit :class:`~robustkit.models.Classifier`'s state dict reduced to its
  network's (``net.`` stripped, its normalization buffers dropped).
- :func:`state_mismatch` and :func:`load_state_strict`: every key must match, with a few missing / unexpected
  keys and shape mismatches said in one line otherwise.

Every error is an :class:`~robustkit.errors.InputError` of one line naming ``owner`` (what asked for the
weights) and the file.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from robustkit.errors import InputError, one_line

WRAPPERS = ("state_dict", "model_state_dict")
"""Keys of a saved dict that hold the state dict itself (training scripts save ``{"state_dict": ..., "epoch": ...}``)."""
PREFIXES = ("module.",)
"""Key prefixes stripped (each when every key has it): DataParallel's ``module.``."""
SAVE_HINT = "save the weights alone with torch.save(model.state_dict(), FILE) or as .safetensors"
EXPECTED = "a state dict (.pt/.pth) or .safetensors file"

TORCHSCRIPT = "torchscript"


def archive_kind(path: Path) -> str:
    """``torchscript``, ``torch`` (a zip written by ``torch.save``), ``safetensors``, ``python`` or ``other``."""
    if path.suffix == ".py":
        return "python"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "other"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return TORCHSCRIPT
        if any(n.endswith("/data.pkl") for n in names):
            return "torch"
        return "other"
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return "other"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    if head[:1] == b"\x80":  # a pickle (torch.save's legacy format, or pickle.dump)
        return "torch"
    return "other"


def few(names: Iterable[str], n: int = 3) -> str:
    """``a, b, c and 4 more``."""
    names = list(names)
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _unsafe_global(message: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"global:?\s+([\w.]+)", message, re.IGNORECASE)
    return found.group(1) if found else "objects other than tensors"


def read_state_dict(path: str | os.PathLike[str], owner: str, *, wrappers: Iterable[str] = WRAPPERS,
                    prefixes: Iterable[str] = PREFIXES, hint: str = SAVE_HINT,
                    expected: str = EXPECTED) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, or a one-line :class:`InputError` naming ``owner`` and the file.

    ``.safetensors`` is read without unpickling; anything else with ``torch.load(weights_only=True)``, which
    refuses (without running it) a pickle that builds objects other than tensors and plain containers.

    :param owner: what asks for the weights (``timm:resnet18``, ``net.py:TinyCNN``); leads every error.
    :param wrappers: keys of a saved dict holding the state dict itself; the first present is unwrapped.
    :param prefixes: key prefixes stripped in turn, each when every key has it.
    :param hint: how to save a good file, said after a failure.
    :param expected: what to give instead of a missing file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"{owner}: weights file {file} does not exist; give {expected}")
    try:
        if file.suffix == ".safetensors" or archive_kind(file) == "safetensors":
            import safetensors.torch

            data: Any = safetensors.torch.load_file(str(file), device="cpu")
        else:
            with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
                warnings.simplefilter("ignore")
                data = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise InputError(f"{owner}: cannot read weights file {file}: refused: a pickle that asks for "
                         f"{_unsafe_global(str(err))}, which weights have no need for (loading it could run code); "
                         f"nothing in it was run. {hint}") from None
    except Exception as err:  # each reader reports damage with its own exception type
        raise InputError(f"{owner}: cannot read weights file {file} ({one_line(err, typed=True)[:160]}); give an "
                         f"intact state dict: {hint}") from None
    return unwrap_state_dict(data, file, owner, wrappers=wrappers, prefixes=prefixes, hint=hint)


def unwrap_state_dict(data: Any, file: str | os.PathLike[str], owner: str, *, wrappers: Iterable[str] = WRAPPERS,
                      prefixes: Iterable[str] = PREFIXES, hint: str = SAVE_HINT) -> dict[str, torch.Tensor]:
    """``data`` (read from ``file``) as a state dict: the first of ``wrappers`` unwrapped, ``prefixes`` stripped."""
    for key in wrappers:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not data:
        raise InputError(f"{owner}: weights file {file} holds no state dict (a mapping of names to tensors) but "
                         f"{'an empty ' if isinstance(data, Mapping) else 'a '}{type(data).__name__}; {hint}")
    odd = [str(k) for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise InputError(f"{owner}: weights file {file} holds no state dict: {few(odd)} "
                         f"{'is not a tensor' if len(odd) == 1 else 'are not tensors'} (a checkpoint of several things? its "
                         f"weights sit under one key); {hint}")
    state = {str(k): v for k, v in data.items()}
    for prefix in prefixes:
        state = strip_prefix(state, prefix)
    return state


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``state`` with ``prefix`` removed from its keys when every key has it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def is_classifier_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` is a robustkit classifier's (``normalize.*`` buffers and ``net.*`` weights)."""
    return "normalize.mean" in state and any(k.startswith("net.") for k in state)


def classifier_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A robustkit classifier's state dict as its network's (``net.`` stripped, normalization dropped);
    any other state dict as it is."""
    if is_classifier_state(state):
        return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    return dict(state)


@dataclass(frozen=True)
class Mismatch:
    """How a state dict differs from a module's: keys it lacks, keys it has extra, tensors of another shape
    (name, shape in the file, shape in the module)."""

    missing: list[str]
    unexpected: list[str]
    wrong: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong)


def state_mismatch(net: nn.Module, state: Mapping[str, torch.Tensor],
                   optional: Iterable[str] = ()) -> Mismatch:
    """How ``state`` differs from ``net.state_dict()``; keys ending in one of ``optional`` may be missing."""
    expected = net.state_dict()
    ends = tuple(optional)
    missing = [k for k in expected if k not in state and not (ends and k.endswith(ends))]
    unexpected = [k for k in state if k not in expected]
    wrong = [(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in expected
             if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    return Mismatch(missing, unexpected, wrong)


def load_state_strict(net: nn.Module, state: Mapping[str, torch.Tensor], file: str | os.PathLike[str], owner: str,
                      what: str = "--weights", hint: str | None = None) -> None:
    """Load ``state`` into ``net``; every key must match and every shape fit, in one line otherwise.

    :param what: how the user named the file (leads the error, before the file).
    :param hint: said after a mismatch; default: asks whether the weights come from this class.
    """
    odd = state_mismatch(net, state)
    default = "were they saved from this class with these --model-arg values?"
    if odd.wrong:
        detail = "; ".join(f"size mismatch for {k}: {a} in the file, {b} here" for k, a, b in odd.wrong[:3])
        more = f" and {len(odd.wrong) - 3} more" if len(odd.wrong) > 3 else ""
        raise InputError(f"{what} {file}: the weights do not fit {owner} ({detail[:220]}{more}); "
                         f"{hint or default}")
    if odd:
        parts = ([f"missing {few(odd.missing)}"] if odd.missing else []) + (
            [f"unexpected {few(odd.unexpected)}"] if odd.unexpected else [])
        if hint is None and is_classifier_state({k: state[k] for k in odd.unexpected}):
            hint = "they are a robustkit checkpoint's: attack it with robustkit attack CHECKPOINT.json"
        raise InputError(f"{what} {file}: the keys do not match {owner} ({'; '.join(parts)}); {hint or default}")
    try:
        net.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:  # what the checks above do not see (a module's own load hook)
        raise InputError(f"{what} {file}: the weights do not fit {owner} ({one_line(err)[:220]}); "
                         f"{hint or default}") from None


__all__ = [
    "EXPECTED",
    "PREFIXES",
    "SAVE_HINT",
    "WRAPPERS",
    "Mismatch",
    "archive_kind",
    "classifier_weights",
    "few",
    "is_classifier_state",
    "load_state_strict",
    "read_state_dict",
    "state_mismatch",
    "strip_prefix",
    "unwrap_state_dict",
]
