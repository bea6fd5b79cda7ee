"""Generating the hard-positive training set with the native attacks, and caching it on disk.

:func:`generate` runs each type's attack (:mod:`robustkit_hotcold`) over the chosen training
images with the base model, and keeps a candidate when the attack succeeded (the scaled image
``Q(x + Y s* d)`` is still misclassified by the base model) and ``low <= PASS <= high``. Images are
kept as ``uint8`` grey levels: the attacks return them on the ``k / 255`` grid, so nothing is lost.

The cache (:class:`SetCache`) holds one set per key, the SHA-256 of everything that determines the set
(:func:`set_key`): ``KEY.safetensors`` (the tensors) and ``KEY.json`` (what made it, its counts and
the tensor file's SHA-256), both written atomically, the JSON last (the commit point). A damaged or
inconsistent entry raises :class:`CacheDamaged`; the defense then regenerates it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import safetensors.torch
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from robustkit.checkpoints import dataset_info_to_dict
from robustkit.errors import one_line
from robustkit.files import atomic_write, atomic_write_text, jsonable, sha256_file
from robustkit.models import logits
from robustkit_hard_positives.kinds import HardPositiveType
from robustkit.progress import progress

FORMAT = "robustkit-hard-positives"
#: Bump when the generation changes what a key produces (it is part of every key).
GENERATOR_VERSION = 1
#: Training items hashed into the dataset fingerprint (evenly spaced; cheap, catches other data under one name).
FINGERPRINT_ITEMS = 16
_TENSORS = ("images", "labels", "kinds", "pass", "sources")


class CacheDamaged(Exception):
    """A cache entry that cannot be used as it is (the message says why, in one line)."""


@dataclass
class HardPositiveSet:
    """A generated training set.

    :param images: ``M x C x H x W`` uint8 grey levels (the image is ``images / 255``).
    :param labels: ``M`` original labels (int64).
    :param kinds: ``M`` index into ``names`` of the type that made each image (int64).
    :param pass_scores: ``M`` PASS of each image against its source (float64).
    :param sources: ``M`` index of the source image in the training split (int64).
    :param names: the types' names, in ``types`` order.
    :param stats: per type ``{candidates, adversarial, kept}``; plus ``images`` (training images
        offered), ``attacked`` (those attacked: correctly classified with ``correct_only``) and ``queries``
        (model calls spent, forward or forward+backward, summed over types).
    """

    images: torch.Tensor
    labels: torch.Tensor
    kinds: torch.Tensor
    pass_scores: torch.Tensor
    sources: torch.Tensor
    names: list[str]
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def summary(self) -> dict[str, Any]:
        """Counts per type and in all, and the kept fraction (kept / successful adversarials)."""
        per_type = self.stats.get("types", {})
        adversarial = sum(t["adversarial"] for t in per_type.values())
        return {
            "total": len(self),
            "per_type": {name: per_type.get(name, {}).get("kept", 0) for name in self.names},
            "adversarial": adversarial,
            "kept_fraction": len(self) / adversarial if adversarial else 0.0,
            "images": self.stats.get("images"),
            "attacked": self.stats.get("attacked"),
            "queries": self.stats.get("queries"),
        }


# --- what determines a set ----------------------------------------------------------------------


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state dict (names, dtypes, shapes and bytes), device-independent."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """The dataset's info, its training split's size and a hash of up to 16 evenly spaced training items."""
    train = dataset.train
    n = len(train)
    digest = hashlib.sha256()
    picks = sorted({round(i * (n - 1) / max(FINGERPRINT_ITEMS - 1, 1)) for i in range(FINGERPRINT_ITEMS)}) if n else []
    for i in picks:
        image, label = train[i]
        t = torch.as_tensor(image).detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{i}|{int(label)}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes())
    return {"info": dataset_info_to_dict(dataset.info), "train_size": n, "sample_sha256": digest.hexdigest()}


def set_key(identity: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``identity`` (what determines the set)."""
    text = json.dumps(jsonable({"format": FORMAT, "generator": GENERATOR_VERSION, **identity}), sort_keys=True,
                      separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def generation_indices(n: int, examples: int | None, seed: int) -> list[int]:
    """The training images to generate from: all, or ``examples`` of them drawn with ``seed`` (sorted)."""
    if examples is None or examples >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:examples].tolist())


# --- generating ---------------------------------------------------------------------------------


@torch.no_grad()
def _correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits(model, images).argmax(dim=1) == labels


def generate(model: nn.Module, train: Dataset, kinds: Sequence[HardPositiveType], *, band: tuple[float, float],
             indices: Sequence[int], batch_size: int, correct_only: bool, device: torch.device) -> HardPositiveSet:
    """Run every type's attack on ``train[indices]`` with ``model`` (put in eval mode, restored after).

    A candidate is kept when the attack succeeded and ``band[0] <= PASS <= band[1]``.
    """
    low, high = band
    names = [kind.name for kind in kinds]
    attacks = [kind.attack() for kind in kinds]
    stats: dict[str, Any] = {"types": {name: {"candidates": 0, "adversarial": 0, "kept": 0} for name in names},
                             "images": len(indices), "attacked": 0, "queries": 0}
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in _TENSORS}
    loader = DataLoader(Subset(train, list(indices)), batch_size=batch_size, shuffle=False)
    starts = list(range(0, len(indices), batch_size))
    bar = progress(total=len(starts) * len(kinds), desc="hard positives", unit="batch")
    was_training = model.training
    model.eval()
    try:
        for start, (images, labels) in zip(starts, loader):
            images = images.to(device)
            labels = torch.as_tensor(labels).to(device, torch.long)
            sources = torch.as_tensor(indices[start:start + labels.shape[0]], dtype=torch.long)
            if correct_only:
                keep = _correct(model, images, labels)
                images, labels, sources = images[keep], labels[keep], sources[keep.cpu()]
            stats["attacked"] += int(labels.shape[0])
            for k, (name, attack) in enumerate(zip(names, attacks)):
                bar.update(1)
                if labels.shape[0] == 0:
                    continue
                result = attack(model, images, labels)
                extra = result.extra
                success, scores = extra["success"].cpu(), extra["pass"].cpu()
                if "adversarials" in extra:  # hot/cold over ranks: N x R candidates
                    candidates = extra["adversarials"].flatten(0, 1)
                    ranks = success.shape[1]
                    success, scores = success.reshape(-1), scores.reshape(-1)
                    src, lab = sources.repeat_interleave(ranks), labels.cpu().repeat_interleave(ranks)
                else:
                    candidates, src, lab = result.adversarial, sources, labels.cpu()
                kept = success & (scores >= low) & (scores <= high)  # NaN PASS compares false
                entry = stats["types"][name]
                entry["candidates"] += int(success.numel())
                entry["adversarial"] += int(success.sum())
                entry["kept"] += int(kept.sum())
                if result.queries is not None:
                    stats["queries"] += int(result.queries.sum())
                idx = kept.nonzero().flatten()
                parts["images"].append((candidates[idx.to(candidates.device)].cpu() * 255).round().to(torch.uint8))
                parts["labels"].append(lab[idx])
                parts["kinds"].append(torch.full((idx.numel(),), k, dtype=torch.long))
                parts["pass"].append(scores[idx].to(torch.float64))
                parts["sources"].append(src[idx])
    finally:
        bar.close()
        model.train(was_training)
    sample = train[indices[0]][0] if len(indices) else None
    shape = tuple(torch.as_tensor(sample).shape) if sample is not None else (0, 0, 0)
    empty = {"images": torch.zeros((0, *shape), dtype=torch.uint8), "labels": torch.zeros(0, dtype=torch.long),
             "kinds": torch.zeros(0, dtype=torch.long), "pass": torch.zeros(0, dtype=torch.float64),
             "sources": torch.zeros(0, dtype=torch.long)}
    tensors = {key: torch.cat(parts[key]) if parts[key] else empty[key] for key in _TENSORS}
    return HardPositiveSet(tensors["images"], tensors["labels"], tensors["kinds"], tensors["pass"],
                           tensors["sources"], names, stats)


# --- the cache ----------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$ROBUSTKIT_CACHE_DIR``, else ``~/.cache/robustkit``."""
    return Path(os.environ.get("ROBUSTKIT_CACHE_DIR") or Path.home() / ".cache" / "robustkit")


class SetCache:
    """Hard-positive sets under ``root/hard-positives/``, one ``KEY.safetensors`` + ``KEY.json`` per key."""

    def __init__(self, root: str | os.PathLike[str]):
        self.dir = Path(root).expanduser() / "hard-positives"

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.safetensors", self.dir / f"{key}.json"

    def load(self, key: str, input_shape: Sequence[int], num_classes: int) -> HardPositiveSet | None:
        """The cached set of ``key``; ``None`` when there is none; :class:`CacheDamaged` when it is unusable."""
        tensor_path, meta_path = self.paths(key)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CacheDamaged(f"{meta_path} is not readable JSON ({one_line(err)})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key:
            raise CacheDamaged(f"{meta_path} is not the hard-positive set of this key")
        try:
            data = tensor_path.read_bytes()
        except OSError as err:
            raise CacheDamaged(f"{tensor_path} cannot be read ({one_line(err)})") from None
        if hashlib.sha256(data).hexdigest() != meta.get("tensors_sha256"):
            raise CacheDamaged(f"{tensor_path} does not match the checksum in {meta_path.name} (truncated or edited)")
        try:
            tensors = safetensors.torch.load(data)
            names = [str(n) for n in meta["names"]]
            stats = dict(meta["stats"])
            found = _check_tensors(tensors, tuple(int(s) for s in input_shape), num_classes, len(names))
        except CacheDamaged:
            raise
        except Exception as err:  # safetensors raises its own error type for every kind of damage
            raise CacheDamaged(f"{tensor_path} is not a readable hard-positive set ({one_line(err)})") from None
        return HardPositiveSet(found["images"], found["labels"], found["kinds"], found["pass"], found["sources"],
                               names, stats)

    def save(self, key: str, hard: HardPositiveSet, identity: dict[str, Any],
             provenance: dict[str, Any] | None = None) -> Path:
        """Write the set atomically (tensors first, the JSON with their checksum last); return the JSON's path.

        :param identity: what the key hashes (recorded as is); :param provenance: facts recorded, not hashed.
        """
        tensor_path, meta_path = self.paths(key)
        tensors = {"images": hard.images.contiguous(), "labels": hard.labels.contiguous(),
                   "kinds": hard.kinds.contiguous(), "pass": hard.pass_scores.contiguous(),
                   "sources": hard.sources.contiguous()}
        atomic_write(tensor_path, lambda tmp: safetensors.torch.save_file(tensors, tmp, {"format": FORMAT}))
        meta = {"format": FORMAT, "generator": GENERATOR_VERSION, "key": key,
                "tensors_sha256": sha256_file(tensor_path), "names": hard.names, "stats": hard.stats,
                "summary": hard.summary(), "identity": identity, "provenance": provenance or {},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write_text(meta_path, json.dumps(jsonable(meta), indent=2, allow_nan=False) + "\n")
        return meta_path


def _check_tensors(tensors: dict[str, torch.Tensor], shape: tuple[int, ...], num_classes: int,
                   num_types: int) -> dict[str, torch.Tensor]:
    missing = [key for key in _TENSORS if key not in tensors]
    if missing:
        raise CacheDamaged(f"the cached set lacks {', '.join(missing)}")
    images = tensors["images"]
    m = images.shape[0] if images.dim() else -1
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != shape:
        raise CacheDamaged(f"the cached images are {images.dtype} {tuple(images.shape)}, expected uint8 N x {shape}")
    for key in ("labels", "kinds", "pass", "sources"):
        if tuple(tensors[key].shape) != (m,):
            raise CacheDamaged(f"the cached {key} have shape {tuple(tensors[key].shape)}, expected ({m},)")
    labels, kinds = tensors["labels"].long(), tensors["kinds"].long()
    if m and (labels.min() < 0 or labels.max() >= num_classes or kinds.min() < 0 or kinds.max() >= num_types):
        raise CacheDamaged("the cached labels or types are out of range")
    return {"images": images, "labels": labels, "kinds": kinds, "pass": tensors["pass"].double(),
            "sources": tensors["sources"].long()}


