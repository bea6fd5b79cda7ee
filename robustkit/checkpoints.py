"""Checkpoints without pickle: weights in safetensors, facts in JSON, every file written atomically.

A checkpoint named ``S`` (e.g. ``runs/digits-pgd/last``) is two or three files side by side:

- ``S.safetensors``: the model's state dict (loaded strictly).
- ``S.json``: metadata: model name and parameters (for a user's own model also its source file, class
  and the file's SHA-256), the normalization in front of the network, dataset info, defense, epoch,
  seed, metrics, versions, and the SHA-256 of the other files.
- ``S.optim.safetensors`` (only when saved for resuming): optimizer tensors; its header holds the
  optimizer's non-tensor state, the scheduler state and any defense state as JSON.
- ``S.ema.safetensors`` (only when training kept a moving average of the weights, :mod:`robustkit.ema`):
  the averaged state dict. The JSON's ``weights`` entry says which file holds which (``raw``: the trained
  weights, ``ema``: their average) and which one the checkpoint serves by default; :func:`load_weights` and
  :func:`load_model` load that one unless told ``kind="raw"`` or ``"ema"``.

A training run writes ``last`` (the last finished epoch, with its resume state) and, when it selects the
best epoch, ``best`` beside it (that epoch's weights); ``last.json``'s ``selection`` names the chosen one, and
:func:`chosen_checkpoint` finds it from the run's folder.

Loading never runs code from the files. (A checkpoint of the user's own model, :mod:`robustkit.user_models`,
records the absolute path, class and SHA-256 of the user's ``.py`` file: loading it imports that file, as
building the model did, and says so in one line when the file changed since.) The JSON is written last and records the checksums of the
tensor files, so a save cut short between files, a truncated file or a file edited after saving is
reported as such instead of silently mixing two epochs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import signal
import struct
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import safetensors
import safetensors.torch
import torch
from torch import nn

from robustkit.version import __version__
from robustkit.files import atomic_write, atomic_write_text, jsonable, sha256_file
from robustkit.data import DatasetInfo
from robustkit.errors import RobustkitError, one_line

FORMAT = "robustkit-checkpoint"
FORMAT_VERSION = 1
_RESERVED = ("format", "format_version", "files", "model", "normalization", "dataset", "defense", "epoch", "seed",
             "metrics", "versions", "created", "weights")
_STATE_KEY = "robustkit"  # safetensors header entry holding the JSON skeleton of the resume state
#: The checkpoint stems of a training run: the last finished epoch, and the selected best one.
LAST, BEST = "last", "best"
SELECTIONS = (BEST, LAST)
#: Which weights to load: the checkpoint's default (``auto``: the EMA when there is one), or one kind.
WEIGHT_KINDS = ("auto", "raw", "ema")


@dataclass(frozen=True)
class CheckpointPaths:
    """The files of one checkpoint.

    :param weights: ``S.safetensors``.
    :param meta: ``S.json``.
    :param state: ``S.optim.safetensors`` (optimizer, scheduler and defense state, for resuming).
    :param ema: ``S.ema.safetensors`` (the moving average of the weights, when training kept one).
    """

    weights: Path
    meta: Path
    state: Path
    ema: Path

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> "CheckpointPaths":
        """Accept a directory (its ``last`` checkpoint), a stem, or any of the checkpoint's files."""
        p = Path(path)
        if p.is_dir():
            stem = p / LAST
        elif p.name.endswith((".optim.safetensors", ".ema.safetensors")):
            stem = p.with_name(p.name.rsplit(".", 2)[0])
        elif p.suffix in (".safetensors", ".json"):
            stem = p.with_suffix("")
        else:
            stem = p
        return cls(stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json"),
                   stem.with_name(stem.name + ".optim.safetensors"), stem.with_name(stem.name + ".ema.safetensors"))


@contextlib.contextmanager
def defer_interrupts() -> Iterator[None]:
    """Hold back Ctrl-C until the block ends, so a checkpoint's files are all written or none.

    Only the main thread receives signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, Any]] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append((signum, frame)))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(*received[0])
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *, defense: Any = None,
                    epoch: int | None = None, seed: int | None = None,
                    metrics: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    defense_state: Mapping[str, Any] | None = None, ema: Mapping[str, torch.Tensor] | None = None,
                    ema_decay: float | None = None, default_weights: str = "ema") -> CheckpointPaths:
    """Save ``model`` (and, for resuming, the optimizer, scheduler and defense state) under ``path``.

    :param path: a stem (``runs/x/last``), a directory (``runs/x`` -> ``runs/x/last``) or a file name.
    :param model: usually a :class:`robustkit.models.Classifier`; its ``spec`` makes the checkpoint
        loadable with :func:`load_model`. Other modules can be saved and loaded with :func:`load_weights`.
    :param defense: a :class:`robustkit.defenses.Defense` (its ``describe()`` is stored) or a plain dict.
    :param metrics: scalars to record (e.g. the last epoch's accuracies).
    :param extra: further JSON-able metadata; may not reuse the keys this function writes.
    :param optimizer: saved to ``S.optim.safetensors`` together with ``scheduler`` and ``defense_state``.
    :param ema: the moving average of the weights (:class:`robustkit.ema.WeightAverage`'s state), saved to
        ``S.ema.safetensors``; ``ema_decay`` is its decay, recorded beside it.
    :param default_weights: which weights loading serves when not told: ``ema`` (when saved) or ``raw``.
    :return: the paths written.
    """
    paths = CheckpointPaths.of(path)
    clash = sorted(set(extra or {}) & set(_RESERVED))
    if clash:
        raise ValueError(f"save_checkpoint: extra metadata may not set {', '.join(clash)}")
    weights = _own_tensors({k: v for k, v in model.state_dict().items()})
    ema_tensors = _own_tensors(ema) if ema is not None else None
    with_state = optimizer is not None or scheduler is not None or defense_state is not None
    state_tensors: dict[str, torch.Tensor] = {}
    if with_state:
        skeleton = {
            "optimizer": _flatten(optimizer.state_dict(), "optimizer", state_tensors) if optimizer else None,
            "scheduler": _flatten(scheduler.state_dict(), "scheduler", state_tensors) if scheduler else None,
            "defense": _flatten(dict(defense_state), "defense", state_tensors) if defense_state is not None else None,
        }
        state_tensors = _own_tensors(state_tensors)
        state_header = {_STATE_KEY: json.dumps(skeleton, allow_nan=False)}

    spec = getattr(model, "spec", None)
    described = defense.describe() if hasattr(defense, "describe") else defense
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "files": {"weights": paths.weights.name, "weights_sha256": None, "state": None, "state_sha256": None,
                  "ema": None, "ema_sha256": None},
        # Which file holds which weights, and the one loading serves unless told otherwise.
        "weights": {"raw": paths.weights.name, "ema": paths.ema.name if ema is not None else None,
                    "ema_decay": ema_decay if ema is not None else None,
                    "default": "ema" if ema is not None and default_weights == "ema" else "raw"},
        "model": model_metadata(spec) if spec is not None else None,
        # What the model does to [0, 1] images before the network ({"mode", "mean", "std"}); absent in
        # checkpoints written before it was recorded, which means the dataset's.
        "normalization": spec.normalization.to_json() if getattr(spec, "normalization", None) is not None else None,
        "dataset": dataset_info_to_dict(spec.dataset) if spec is not None and spec.dataset is not None else None,
        "defense": described,
        "epoch": epoch,
        "seed": seed,
        "metrics": dict(metrics or {}),
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **dict(extra or {}),
    }

    with defer_interrupts():
        if with_state:
            atomic_write(paths.state, lambda tmp: safetensors.torch.save_file(state_tensors, tmp, state_header))
            meta["files"]["state"] = paths.state.name
            meta["files"]["state_sha256"] = sha256_file(paths.state)
        atomic_write(paths.weights, lambda tmp: safetensors.torch.save_file(weights, tmp, {"format": FORMAT}))
        meta["files"]["weights_sha256"] = sha256_file(paths.weights)
        if ema_tensors is not None:
            atomic_write(paths.ema, lambda tmp: safetensors.torch.save_file(ema_tensors, tmp, {"format": FORMAT}))
            meta["files"]["ema"] = paths.ema.name
            meta["files"]["ema_sha256"] = sha256_file(paths.ema)
        # The JSON goes last: it is the commit point, naming the checksums of what is now on disk.
        atomic_write_text(paths.meta, json.dumps(jsonable(meta), indent=2, allow_nan=False) + "\n")
        for kept, stale in ((with_state, paths.state), (ema_tensors is not None, paths.ema)):
            if not kept:
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()  # a file from an earlier save under this name no longer matches
    return paths


def _own_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; tensors sharing memory (tied weights) get their own copy."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, tensor in tensors.items():
        t = tensor.detach().to("cpu").contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and ident in seen:
            t = t.clone()  # safetensors refuses shared memory; a tied weight is simply stored twice
        seen.add(ident)
        out[key] = t
    return out


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in ``obj`` by ``{"__tensor__": key}`` and collect it in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj):
            return {k: _flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        # Optimizer state is keyed by parameter index: keep the keys' types.
        return {"__items__": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return jsonable(obj)


def _unflatten(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


# --- reading ------------------------------------------------------------------------------------


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of the checkpoint at ``path`` (any of its files, its stem or its directory)."""
    meta_path = CheckpointPaths.of(path).meta
    if not meta_path.is_file():
        raise RobustkitError(
            f"no checkpoint metadata at {meta_path}: file not found; check the path "
            "(a checkpoint is NAME.safetensors with NAME.json next to it)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RobustkitError(
            f"{meta_path} is not valid JSON ({one_line(err)}); the checkpoint is damaged: retrain or restore it"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RobustkitError(f"{meta_path} is not a robustkit checkpoint (no \"format\": \"{FORMAT}\")")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise RobustkitError(f"{meta_path}: format_version is {version!r}, not a whole number; the checkpoint is "
                             "damaged: retrain or restore it")
    if version > FORMAT_VERSION:
        raise RobustkitError(f"{meta_path} was written by a newer robustkit (format {version}); upgrade robustkit")
    _check_files(meta.get("files"), meta_path)
    return meta


def _check_files(files: Any, meta_path: Path) -> None:
    """The ``files`` entry names plain files beside the JSON: no folders, no way out of the checkpoint's own."""
    if files is None:
        return
    if not isinstance(files, dict):
        raise RobustkitError(f"{meta_path}: \"files\" must be a table of file names, got {type(files).__name__}; "
                             "the checkpoint is damaged: retrain or restore it")
    for key in ("weights", "state", "ema"):
        name = files.get(key)
        if name is None:
            continue
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise RobustkitError(f"{meta_path}: files.{key} is {name!r}; it must be a file name beside the JSON (no "
                                 "folders, no absolute paths): the checkpoint is damaged or was tampered with")
    for key in ("weights_sha256", "state_sha256", "ema_sha256"):
        if files.get(key) is not None and not isinstance(files.get(key), str):
            raise RobustkitError(f"{meta_path}: files.{key} must be a checksum string; the checkpoint is damaged")


def weights_kind(meta: Mapping[str, Any], kind: str | None = None, where: Any = "the checkpoint") -> str:
    """Which weights ``kind`` (``auto``/None, ``raw`` or ``ema``) means for a checkpoint with metadata ``meta``:
    ``auto`` is the checkpoint's default (its EMA when it has one, unless it was saved to serve the raw ones)."""
    files = meta.get("files") or {}
    if kind in (None, "auto"):
        default = (meta.get("weights") or {}).get("default")
        return "ema" if files.get("ema") and default != "raw" else "raw"
    if kind not in WEIGHT_KINDS:
        raise RobustkitError(f"weights kind {kind!r}: use one of {', '.join(WEIGHT_KINDS)}")
    if kind == "ema" and not files.get("ema"):
        raise RobustkitError(f"{where} holds no EMA weights (trained without an ema decay); use the raw weights "
                             "(--weights-kind raw) or train with --ema-decay")
    return kind


def read_weights(path: str | os.PathLike[str], kind: str | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """The checkpoint's weights of ``kind`` (:func:`weights_kind`) as tensors, checked against their checksum and
    for NaN or infinite values; with the metadata (``weights.loaded`` says which kind) and the file read."""
    paths = CheckpointPaths.of(path)
    meta = read_metadata(paths.meta)
    files = meta.get("files") or {}
    chosen = weights_kind(meta, kind, paths.meta)
    name_key = "ema" if chosen == "ema" else "weights"
    weights_path = paths.meta.with_name(files.get(name_key) or (paths.ema if chosen == "ema" else paths.weights).name)
    tensors, _ = _read_tensors(weights_path, files.get(f"{name_key}_sha256"), paths.meta)
    meta["weights"] = {**(meta.get("weights") or {}), "loaded": chosen}
    broken = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        raise RobustkitError(f"{weights_path} holds NaN or infinite weights ({_few(broken)}): the training that wrote "
                             "it diverged; retrain (a lower learning rate, or an eps warm-up) or use an earlier "
                             "checkpoint")
    return tensors, meta, weights_path


def load_weights(model: nn.Module, path: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """Load the checkpoint's weights into ``model`` (strictly) and return its metadata.

    :param kind: ``auto`` (None: the checkpoint's default, its EMA when it has one), ``raw`` or ``ema``
        (:func:`weights_kind`); the metadata's ``weights.loaded`` says which were loaded.
    """
    tensors, meta, weights_path = read_weights(path, kind)
    _load_strict(model, tensors, weights_path)
    return meta


def load_model(path: str | os.PathLike[str], host: Any = None, device: str | torch.device = "cpu",
               kind: str | None = None) -> nn.Module:
    """Rebuild the checkpoint's :class:`~robustkit.models.Classifier` and load its weights.

    The architecture comes from the metadata (model name, parameters, dataset info) through
    :func:`robustkit.models.build_model`, so the plugin that registered the model must be installed.
    A training run's folder means the checkpoint the run selected (:func:`chosen_checkpoint`).

    :param host: the plugin host (default: the process-wide one).
    :param kind: which weights: ``auto`` (None: the EMA when the checkpoint has one), ``raw`` or ``ema``.
    :return: the model on ``device``, in eval mode.
    """
    from robustkit.models import build_model  # models imports data only; keep import cheap and acyclic

    paths = CheckpointPaths.of(chosen_checkpoint(path))
    meta = read_metadata(paths.meta)
    if not meta.get("model") or not meta.get("dataset"):
        raise RobustkitError(
            f"{paths.meta} records no model name or dataset, so the architecture cannot be rebuilt; "
            "build the model yourself and use robustkit.checkpoints.load_weights"
        )
    if host is None:
        from robustkit.host import get_host

        host = get_host()
    try:
        info = dataset_info_from_dict(meta["dataset"])
        normalization = recorded_normalization(meta, paths.meta)
        if meta["model"].get("source"):  # a user's own model: rebuilt from its file, weights from the checkpoint
            from robustkit.user_models import ModelSource, build_user_model, changed_since

            source = ModelSource.from_json(meta["model"]["source"], str(paths.meta))
            note = changed_since(source)
            if note is not None:
                print(f"robustkit: {note}", file=sys.stderr)
            model = build_user_model(source, info, normalization, load_weights=False,
                                     what=f"the model file recorded in {paths.meta.name}")
        else:
            model = build_model(host, meta["model"]["name"], info, meta["model"].get("params") or {},
                                normalization=normalization)
    except RobustkitError as err:
        raise RobustkitError(f"cannot rebuild the model of {paths.meta}: {err}") from None
    except (KeyError, TypeError, AttributeError) as err:
        raise RobustkitError(f"{paths.meta} has malformed model or dataset metadata ({one_line(err)})") from None
    load_weights(model, paths.meta, kind)
    return model.to(device).eval()


def chosen_checkpoint(path: str | os.PathLike[str], select: str | None = None) -> Path:
    """The metadata file of the checkpoint ``path`` and ``select`` name.

    Without ``select``: a training run's folder means the checkpoint the run selected (``best`` when its
    ``last.json`` records a best-epoch selection, else ``last``); a file or stem means that checkpoint.
    ``select`` (``best`` or ``last``) picks that checkpoint of the run ``path`` belongs to.
    """
    p = Path(path)
    if select is None:
        last = CheckpointPaths.of(p).meta
        if not p.is_dir() or not last.is_file():
            return last
        chosen = (read_metadata(last).get("selection") or {}).get("checkpoint")
        if chosen == BEST:
            best = last.with_name(f"{BEST}.json")
            if not best.is_file():
                raise RobustkitError(f"{p} selected its best epoch, but {best.name} is missing; restore it, or use the "
                                     f"last epoch's weights (--select last)")
            return best
        return last
    if select not in SELECTIONS:
        raise RobustkitError(f"select {select!r}: use {' or '.join(SELECTIONS)}")
    folder = p if p.is_dir() else CheckpointPaths.of(p).meta.parent
    target = folder / f"{select}.json"
    if not target.is_file():
        hint = ("the run kept no best epoch (it selected the last one, or validated nothing); use --select last"
                if select == BEST else "check the path")
        raise RobustkitError(f"no {select} checkpoint in {folder} ({target.name} not found): {hint}")
    return target


def model_metadata(spec: Any) -> dict[str, Any]:
    """A :class:`~robustkit.models.ModelSpec` as the checkpoint's ``model`` entry: name, parameters and, for a
    user's own model, its source (file, class, arguments, SHA-256)."""
    out: dict[str, Any] = {"name": spec.name, "params": dict(spec.params)}
    source = getattr(spec, "source", None)
    if source is not None:
        out["source"] = dict(source)
    return out


def recorded_normalization(meta: Mapping[str, Any], where: Any = "the checkpoint") -> Any:
    """The normalization a checkpoint's metadata records; ``dataset`` for one written before it was recorded."""
    from robustkit.models import Normalization

    try:
        return Normalization.coerce(meta.get("normalization"), f"{where}: normalization") or Normalization()
    except RobustkitError as err:
        raise RobustkitError(f"{err}; the checkpoint is damaged: retrain or restore it") from None


def load_training_state(path: str | os.PathLike[str], optimizer: torch.optim.Optimizer | None = None,
                        scheduler: Any = None) -> dict[str, Any] | None:
    """Restore the optimizer and scheduler saved with the checkpoint; return the saved defense state.

    :raises RobustkitError: when the checkpoint was saved without resume state, the state file is
        missing or damaged, or it does not fit ``optimizer`` (a different model or optimizer).
    """
    paths = CheckpointPaths.of(path)
    meta = read_metadata(paths.meta)
    files = meta.get("files") or {}
    if not files.get("state"):
        raise RobustkitError(f"{paths.meta} was saved without optimizer state, so training cannot resume from it; "
                             "start a new run (--no-resume)")
    state_path = paths.meta.with_name(files["state"])
    tensors, header = _read_tensors(state_path, files.get("state_sha256"), paths.meta)
    try:
        skeleton = json.loads(header[_STATE_KEY])
    except (KeyError, json.JSONDecodeError):
        raise RobustkitError(f"{state_path} has no readable resume state; start a new run (--no-resume)") from None
    try:
        if optimizer is not None and skeleton.get("optimizer") is not None:
            state = _unflatten(skeleton["optimizer"], tensors)
            _restore_tuples(state["param_groups"], optimizer.state_dict()["param_groups"])
            optimizer.load_state_dict(state)
        if scheduler is not None and skeleton.get("scheduler") is not None:
            scheduler.load_state_dict(_unflatten(skeleton["scheduler"], tensors))
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise RobustkitError(
            f"the optimizer state in {state_path} does not fit this optimizer ({one_line(err)}); "
            "start a new run (--no-resume)"
        ) from None
    defense = skeleton.get("defense")
    return None if defense is None else _unflatten(defense, tensors)


def _restore_tuples(loaded: list[dict[str, Any]], current: list[dict[str, Any]]) -> None:
    """JSON turns tuples (Adam's betas) into lists; give them back the optimizer's own types."""
    for got, now in zip(loaded, current):
        for key, value in now.items():
            if isinstance(value, tuple) and isinstance(got.get(key), list):
                got[key] = tuple(got[key])


def _read_tensors(path: Path, sha256: str | None, meta_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file, checked against the recorded checksum."""
    if not path.is_file():
        raise RobustkitError(f"checkpoint file {path} not found (named by {meta_path.name}); "
                             "copy it next to the JSON or retrain")
    data = path.read_bytes()  # one read serves the checksum and the parse, and holds no mmap open
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise RobustkitError(
            f"{path} does not match the checksum recorded in {meta_path.name}: it is truncated, corrupt, or was "
            "replaced after saving; retrain or restore the checkpoint from a backup"
        )
    try:
        tensors = safetensors.torch.load(data)
        header = _header_metadata(data)
    except Exception as err:  # safetensors raises its own error type for every kind of damage
        raise RobustkitError(
            f"{path} is not a readable safetensors file ({one_line(err)}); it is truncated or corrupt: "
            "retrain or restore it from a backup"
        ) from None
    return tensors, header


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte little-endian header length, then JSON)."""
    (size,) = struct.unpack("<Q", data[:8])
    return dict(json.loads(data[8: 8 + size]).get("__metadata__") or {})


def _load_strict(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    try:
        missing, unexpected = model.load_state_dict(dict(tensors), strict=False)
    except RuntimeError as err:  # shape mismatch
        detail = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), one_line(err))
        raise RobustkitError(
            f"the weights in {path} do not fit this model ({detail}); the checkpoint was saved from a different "
            "architecture or model parameters"
        ) from None
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise RobustkitError(
            f"the weights in {path} do not fit this model ({'; '.join(parts)}); the checkpoint was saved from a "
            "different architecture or model parameters"
        )


# --- metadata helpers -----------------------------------------------------------------------------


def dataset_info_to_dict(info: DatasetInfo) -> dict[str, Any]:
    """:class:`DatasetInfo` as JSON-able fields."""
    return jsonable(dataclasses.asdict(info))


def dataset_info_from_dict(data: Mapping[str, Any]) -> DatasetInfo:
    """Rebuild :class:`DatasetInfo` from :func:`dataset_info_to_dict`'s output (unknown keys are ignored)."""
    known = {f.name for f in dataclasses.fields(DatasetInfo)}
    kwargs = {k: v for k, v in data.items() if k in known}
    for key in ("image_size", "mean", "std", "class_names"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    return DatasetInfo(**kwargs)


def versions() -> dict[str, str]:
    """Versions that matter for reproducing a checkpoint."""
    return {
        "robustkit": __version__,
        "torch": torch.__version__,
        "safetensors": getattr(safetensors, "__version__", "unknown"),
        "python": platform.python_version(),
    }


def _few(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


