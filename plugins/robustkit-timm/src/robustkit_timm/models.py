"""Every timm architecture as a robustkit model, ``timm:NAME``, randomly initialized unless given local weights.

Nothing is downloaded: models are created with ``pretrained=False``; the ``weights`` parameter
loads a local file instead (safetensors or a torch state dict, including a robustkit checkpoint's
``.safetensors``), through timm's own adaptation (classifier reset when the class count differs,
first conv summed or repeated for other channel counts, position embeddings resampled).

Shape adaptation: ``num_classes`` and ``in_chans`` always; ``img_size`` for the models that take it
(ViTs and other fixed-grid models). A model whose strides or patches do not fit small images (a
ViT-16 or ConvNeXt on 8x8 digits) is built for the smallest of 16, 32, 64, 128, 224 that works,
and a forward pre-hook upsamples inputs bilinearly to that size; the ``resize`` parameter picks the
size explicitly. The hook keeps the state dict identical to timm's, so weights round-trip.

Registration must stay cheap (it runs whenever the CLI starts), so names come from a cache file per
timm installation instead of importing timm (several seconds); timm is imported when a model is built.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import warnings
from importlib import metadata, util
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from robustkit import hookimpl
from robustkit.errors import ParameterError, RobustkitError, one_line
from robustkit.hookspecs import Register
from robustkit.params import Param, parse_value
from robustkit.state_dicts import classifier_weights, read_state_dict

PREFIX = "timm:"
FALLBACK_SIZES = (16, 32, 64, 128, 224)
"""Square input sizes tried, smallest first, when a model cannot run at the dataset's own size."""
PROBE_MAX_PIXELS = 64 * 64
"""Native sizes up to this many pixels are checked with a dummy forward (cheap); larger ones are trusted."""
_RESERVED = ("pretrained", "num_classes", "in_chans", "img_size", "pretrained_cfg_overlay", "checkpoint_path")

PARAMS = (
    Param("weights", str, None, "local weights file (.safetensors or torch state dict); default: random init",
          optional=True),
    Param("resize", int, None, "upsample inputs to resize x resize first; default: the dataset's size, upsampled "
          "only if the model cannot run at it", low=1, optional=True),
    Param("drop_rate", float, None, "classifier dropout (timm drop_rate)", low=0.0, high=1.0, optional=True),
    Param("drop_path_rate", float, None, "stochastic depth rate (timm drop_path_rate)", low=0.0, high=1.0,
          optional=True),
    Param("kwargs", str, None, "further timm.create_model keywords as k=v,k=v (e.g. global_pool=max)", optional=True),
)


# --- names ----------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    """``$ROBUSTKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/robustkit``, else ``~/.cache/robustkit``."""
    if os.environ.get("ROBUSTKIT_CACHE_DIR"):
        return Path(os.environ["ROBUSTKIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robustkit"


def _installation_key() -> str | None:
    """Identifies the installed timm (version, location, models folder mtime) without importing it."""
    spec = util.find_spec("timm")
    if spec is None or not spec.origin:
        return None
    models = Path(spec.origin).parent / "models"
    try:
        stamp = f"{metadata.version('timm')}|{models}|{models.stat().st_mtime_ns}"
    except (OSError, metadata.PackageNotFoundError):
        return None
    return hashlib.sha256(stamp.encode()).hexdigest()[:16]


def model_names() -> list[str]:
    """Every timm architecture name (``timm.list_models()``), cached per timm installation."""
    key = _installation_key()
    cache = _cache_dir() / f"timm-models-{key}.txt" if key else None
    if cache is not None:
        try:
            names = cache.read_text(encoding="utf-8").split()
            if names:
                return names
        except OSError:
            pass
    import timm  # slow (seconds): only when the cache is missing or stale

    names = list(timm.list_models())
    if cache is not None:
        try:  # a read-only home only costs speed
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            tmp.write_text("\n".join(names) + "\n", encoding="utf-8")
            os.replace(tmp, cache)
        except OSError:
            pass
    return names


# --- weights --------------------------------------------------------------------------------------


WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model")
"""Keys of a saved dict holding the state dict (timm's training scripts save EMA weights beside the model's)."""
HINT = "it must be an intact safetensors file or a torch-saved state dict"


def load_weights(path: str | os.PathLike[str], owner: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file, or a one-line :class:`RobustkitError`.

    Reads safetensors (never unpickles) or a torch file with ``weights_only=True``
    (:func:`robustkit.state_dicts.read_state_dict`); unwraps ``state_dict`` / ``model`` / EMA wrappers,
    DataParallel's ``module.`` prefix and a robustkit classifier's ``net.`` prefix (its normalization buffers
    are dropped: the host adds its own).
    """
    state = read_state_dict(path, owner, wrappers=WRAPPERS, prefixes=("module.",), hint=HINT,
                            expected="a local .safetensors or torch state-dict file (robustkit never downloads "
                            "weights)")
    return classifier_weights(state)


def _channels_in(state: Mapping[str, torch.Tensor], model: nn.Module, first_conv: Any, in_channels: int) -> int | None:
    """How many image channels the file's stem was trained on (None if it cannot tell).

    timm assumes the registry's channel count (3); telling it the file's count lets a 1-channel
    checkpoint load unchanged into a 1-channel model, or be repeated for a 3-channel one.
    """
    names = (first_conv,) if isinstance(first_conv, str) else tuple(first_conv or ())
    for name in names:
        weight = state.get(f"{name}.weight")
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if weight is None or weight.dim() != 4 or not isinstance(module, nn.Conv2d):
            continue
        # Same relation timm checks: file channels * stem inputs per channel = weight inputs * groups.
        total = int(weight.shape[1]) * in_channels * module.groups
        if total % module.in_channels == 0:
            return total // module.in_channels
    return None


def _classes_in(state: Mapping[str, torch.Tensor], classifier: Any) -> int | None:
    """How many classes the file's classifier has (None if it has none)."""
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    for name in names:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.dim() >= 1:
            return int(weight.shape[0])
    return None


# --- building -------------------------------------------------------------------------------------


class ResizeInput:
    """Forward pre-hook upsampling the input to ``size`` (bilinear): fits small images to a model's strides."""

    def __init__(self, size: tuple[int, int]):
        self.size = size

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if tuple(x.shape[-2:]) == self.size:
            return args
        return (F.interpolate(x, size=self.size, mode="bilinear", align_corners=False), *args[1:])

    def __repr__(self) -> str:
        return f"ResizeInput(size={self.size})"


_TAKES_IMG_SIZE: dict[str, bool] = {}
"""Per model name: whether its constructor accepts ``img_size`` (learned from the first TypeError)."""


def _parse_kwargs(text: str | None, owner: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ParameterError(f"{owner}: kwargs expects k=v,k=v, got {part.strip()!r}")
        if key in _RESERVED:
            raise ParameterError(f"{owner}: kwargs may not set {key}; robustkit sets it from the dataset "
                                 "(use weights= for a local file)")
        value = value.strip()
        out[key] = None if value.lower() == "none" else parse_value(value)
    return out


def _create(model_name: str, size: tuple[int, int], **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with ``img_size`` when the model takes it."""
    import timm

    if _TAKES_IMG_SIZE.get(model_name, True):
        try:
            return timm.create_model(model_name, img_size=size, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            _TAKES_IMG_SIZE[model_name] = False
    return timm.create_model(model_name, **kwargs)


def _runs_at(model: nn.Module, in_channels: int, size: tuple[int, int], num_classes: int) -> None:
    """Raise unless one dummy image of ``size`` gives ``1 x num_classes`` logits."""
    training = model.training
    model.eval()  # one image: batch norm must use its running statistics
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, *size))
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RuntimeError(f"output {got} instead of 1 x {num_classes} logits")


def create_timm_model(model_name: str, num_classes: int, in_channels: int, image_size: tuple[int, int], *,
                      weights: str | None = None, resize: int | None = None, drop_rate: float | None = None,
                      drop_path_rate: float | None = None, kwargs: str | None = None) -> nn.Module:
    """Build timm's ``model_name`` for ``in_channels x image_size`` images and ``num_classes`` logits.

    :param weights: local weights file; default: random init (``pretrained=False``).
    :param resize: upsample inputs to ``resize x resize`` and build for that size.
    :param drop_rate: timm's classifier dropout.
    :param drop_path_rate: timm's stochastic depth rate.
    :param kwargs: further ``timm.create_model`` keywords as ``k=v,k=v``.
    """
    owner = f"{PREFIX}{model_name}"
    extra = _parse_kwargs(kwargs, owner)
    if drop_rate is not None:
        extra["drop_rate"] = drop_rate
    if drop_path_rate is not None:
        extra["drop_path_rate"] = drop_path_rate
    state = load_weights(weights, owner) if weights else None  # fail on a bad file before building anything
    native = (int(image_size[0]), int(image_size[1]))
    if resize is not None:
        candidates = [(resize, resize)]
    else:
        candidates = [native] + [(s, s) for s in FALLBACK_SIZES if s > max(native)]
        patch = re.search(r"patch(\d+)", model_name)
        if patch and min(native) < int(patch.group(1)) < max(FALLBACK_SIZES):
            # A patch larger than the image cannot work: skip building the sizes that are sure to fail.
            candidates = [c for c in candidates if min(c) >= int(patch.group(1))]
    common = dict(num_classes=num_classes, in_chans=in_channels, **extra)

    model, size, first_error = None, native, None
    for size in candidates:
        try:
            with warnings.catch_warnings(record=True) as caught:  # a failed size's warnings are noise
                warnings.simplefilter("always")
                model = _create(model_name, size, pretrained=False, **common)
                if size != native or native[0] * native[1] <= PROBE_MAX_PIXELS:
                    _runs_at(model, in_channels, size, num_classes)
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            break
        except TypeError as err:
            if any(f"'{k}'" in str(err) for k in extra):  # a kwargs= keyword this model does not know
                raise ParameterError(f"{owner}: {one_line(err, typed=True)}") from None
            model, first_error = None, first_error or err
        except Exception as err:  # timm models fail on too-small inputs with many exception types
            model, first_error = None, first_error or err
    if model is None:
        tried = ", ".join(f"{h}x{w}" for h, w in candidates)
        raise RobustkitError(f"{owner}: cannot build for {in_channels}-channel images at {tried} "
                             f"({one_line(first_error, typed=True) if first_error else 'no size tried'}); "
                             "try resize=224")

    if state is not None:
        model = _with_weights(model, model_name, size, state, weights or "", common)
    if size != native:
        model.register_forward_pre_hook(ResizeInput(size))
    return model


def _with_weights(random_model: nn.Module, model_name: str, size: tuple[int, int], state: dict[str, torch.Tensor],
                  path: str, common: dict[str, Any]) -> nn.Module:
    """Rebuild with timm's pretrained-loading path fed from ``state`` (it adapts heads, stems, grids)."""
    owner = f"{PREFIX}{model_name}"
    if not set(state) & set(random_model.state_dict()):
        raise RobustkitError(f"{owner}: no tensor in weights file {path} matches the model's parameters; "
                             "is it for another architecture?")
    cfg = getattr(random_model, "pretrained_cfg", None) or {}
    file_classes = _classes_in(state, cfg.get("classifier"))
    # source=None: the in-memory state dict must win over any hub source the registry names.
    overlay: dict[str, Any] = {"state_dict": state, "source": None,
                               "num_classes": file_classes if file_classes is not None else -1}
    # The stem is adapted here, not by timm: timm before 1.0.31 assumes every file has 3 channels (a 1-channel
    # file's stem is not tiled for an RGB model, and a stem adapted for 2 or 4 channels is dropped). timm is
    # then told the file already has the model's channels, so every version loads it unchanged.
    stems = _adapted_stems(state, random_model, cfg.get("first_conv"), common["in_chans"])
    overlay["state_dict"] = {**state, **stems}
    overlay["input_size"] = (common["in_chans"], *tuple(cfg.get("input_size") or (3, *size))[1:])
    try:
        model = _create(model_name, size, pretrained=True, pretrained_cfg_overlay=overlay, **common)
    except Exception as err:
        raise RobustkitError(f"{owner}: weights file {path} does not fit the model "
                             f"({one_line(err, typed=True)})") from None
    with torch.no_grad():  # a timm that dropped an adapted stem (random init) gets it back
        for key, weight in stems.items():
            target = model.get_parameter(key)
            if not torch.equal(target, weight):
                target.copy_(weight)
    return model


def _adapted_stems(state: Mapping[str, torch.Tensor], model: nn.Module, first_conv: Any,
                   in_channels: int) -> dict[str, torch.Tensor]:
    """The file's first-conv weights converted to ``in_channels`` image channels (only those that differ).

    The rule timm uses for pretrained stems: a 1-channel model sums the file's channels; otherwise the file's
    channels are tiled to the model's count and scaled by file / model channels, so an image whose channels are
    all equal gives the same response. Stems that fold pixels into channels (space-to-depth) keep their groups.
    """
    file_channels = _channels_in(state, model, first_conv, in_channels)
    if file_channels is None or file_channels == in_channels:
        return {}
    out = {}
    for name in (first_conv,) if isinstance(first_conv, str) else tuple(first_conv or ()):
        weight = state.get(f"{name}.weight")
        if weight is None or weight.dim() != 4:
            continue
        o, i, kh, kw = weight.shape
        groups = i // file_channels  # pixels folded into channels per image channel (1 for a plain stem)
        w = weight.float().reshape(o, groups, file_channels, kh, kw)
        if in_channels == 1:
            w = w.sum(dim=2, keepdim=True)
        else:
            reps = -(-in_channels // file_channels)
            w = w.repeat(1, 1, reps, 1, 1)[:, :, :in_channels] * (file_channels / in_channels)
        out[f"{name}.weight"] = w.reshape(o, groups * w.shape[2], kh, kw).to(weight.dtype)
    return out


# --- plugin ---------------------------------------------------------------------------------------


@hookimpl
def register_models(register: Register) -> None:
    for name in model_names():
        # A partial per name is cheap; timm is imported only when one is built.
        register(f"{PREFIX}{name}", functools.partial(create_timm_model, name), params=PARAMS,
                 description=f"timm {name} (random init unless weights= names a local file)", library="timm")


__all__ = ["PARAMS", "PREFIX", "ResizeInput", "create_timm_model", "load_weights", "model_names", "register_models"]

