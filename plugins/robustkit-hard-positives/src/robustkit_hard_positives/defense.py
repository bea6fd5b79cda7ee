"""The ``hard-positives`` defense: fine-tune a base model on clean batches mixed with cached hard positives."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.checkpoints import CheckpointPaths, load_weights, read_metadata
from robustkit.defenses import BatchLoss, Defense
from robustkit.errors import ParameterError, RobustkitError
from robustkit.params import Param
from robustkit_hard_positives.generation import (CacheDamaged, HardPositiveSet, SetCache, dataset_fingerprint,
                                                         default_cache_dir, generate, generation_indices,
                                                         model_fingerprint, set_key)
from robustkit_hard_positives.kinds import parse_types

#: ``cache_dir`` value that switches the on-disk cache off.
NO_CACHE = "off"


class HardPositives(Defense):
    """Hard positives (Rozsa et al.): fine-tune a base model on its own scaled, PASS-filtered adversarials.

    Paper: A. Rozsa, E. M. Rudd, T. E. Boult, "Adversarial Diversity and Hard Positive Generation",
    CVPR Workshops 2016 (arXiv:1605.01775), Sec. 5.2 (LeNet/MNIST) and 5.3 (GoogLeNet/ImageNet). No public code.

    Before the first epoch (:meth:`prepare`), the base model (in eval mode) turns each chosen training
    image into hard positives of every type in ``types``: the native attacks of
    :mod:`robustkit_hotcold` search a direction (FGS, FGV, or hot/cold toward each of the X
    closest classes) for the closest quantized misclassified image ``x + s* d`` and output
    ``Q(x + Y s* d)``, ``Y = scale``. A candidate is kept when the base model misclassifies it and
    ``pass_low <= PASS <= pass_high``; it keeps the source image's label. The set is cached on disk.
    Then every batch of B clean images is trained together with hard positives drawn at random from
    the set: one cross-entropy (the mean over clean and hard images), as if the two sets were one.

    Params:

    - ``base``: a robustkit checkpoint (folder, ``last.json`` or stem) loaded into the model by
      :meth:`setup`; the paper fine-tunes trained networks. ``none``: the model as handed over is the
      base (e.g. weights loaded through the Python API; from scratch, a random model makes the set).
    - ``types``: comma-separated generators, ``fgs``, ``fgv``, ``hc-d-X``, ``hc-s-X``, each optionally
      ending in ``-Y`` (its own scale): see :mod:`robustkit_hard_positives.kinds`. Default
      ``hc-d-9``, which with ``scale`` 1.05 is the paper's best set, HC-D-9-1.05 (Table 1); X is capped
      at classes - 1.
    - ``scale``: Y, the factor beyond the minimal adversarial (the paper: 1.05, 1.10; 1 = minimal
      adversarials); the trade-off knob, with the PASS band.
    - ``pass_low``, ``pass_high``: the PASS band a hard positive must lie in. The paper keeps PASS >=
      0.99 on ImageNet (too-low PASS: perceptibly changed) and finds that training on intermediate PASS
      does best on MNIST (Fig. 6: images with the highest PASS, near-copies, help least); the upper
      bound drops those. PASS is an SSIM, in [-1, 1]. Default [0, 1]: only images whose aligned
      structure is anti-correlated with the source's are dropped (the paper's MNIST training sets,
      Table 1, name no threshold).
    - ``mix``: the fraction of hard positives in each training batch: B clean images get
      round(B mix / (1 - mix)) hard positives, at least one (``mix=1``: B hard positives and no clean
      image; ``mix=0``: none, plain fine-tuning, and nothing is generated). ``none`` mixes as the paper
      mixes whole sets (ImageNet: 250K hard positives with the 1.28M originals): round(B M / N), at
      least one, hard positives per batch for M hard positives and N training images, so an epoch
      sees each about once. **Choice**, default 0.5: a fixed cost (the paper's MNIST sets hold ~5.7 hard
      positives per training image).
    - ``correct_only``: generate only from images the base model classifies correctly (the paper's
      ImageNet set takes correctly classified images; a misclassified image has no adversarial).
    - ``gen_examples``: generate from this many training images drawn with ``gen_seed`` (``none``: all).
    - ``gen_batch_size``: images per attack call during generation.
    - ``cache_dir``: where generated sets are kept (``none``: ``$ROBUSTKIT_CACHE_DIR``, else
      ``~/.cache/robustkit``; ``off``: never read or write a cache). Not part of the run's identity.

    Sampling: each batch draws its hard positives uniformly with replacement from the set with the
    global torch generator (on the CPU), which the loop reseeds per epoch: runs repeat and resume exactly.

    Cache: keyed by the SHA-256 of the base model's state (whatever loaded it; the base checkpoint's
    path and file checksum are recorded in the entry for provenance only), the dataset (its info,
    training-split size and a hash of 16 of its items), the types with their scales, the band,
    ``correct_only``, the generation subset and batch size. A damaged cache entry (unreadable JSON, a
    checksum mismatch, wrong shapes) is reported as a warning on stderr and regenerated: the cache
    holds derived data only (a cache that cannot be written is a warning too). The resume state
    records the set's key, so a resumed run refuses a different set (e.g. another base model)
    instead of silently switching.

    Logged per epoch: ``hp_acc`` (accuracy on the batch's hard positives), ``hp_total`` (the set's
    size) and ``hp_kept_fraction`` (kept / successful adversarials, i.e. after the PASS band);
    ``train_acc`` is on the clean images. :attr:`summary` has the counts per type.

    Cost: cost() returns the forward+backward passes per batch of B clean images, 1 / (1 - mix)
    (2 at the default; 1 + M / N with ``mix=none``). Generating is a one-time cost before the first
    epoch, reported as ``summary["queries"]`` (model calls: one forward+backward per direction plus
    the line search's forwards, about 20 per direction on digits) and skipped when the cache has the set.
    """

    name = "hard-positives"
    reference = {"title": "Adversarial Diversity and Hard Positive Generation",
                 "authors": "Andras Rozsa, Ethan M. Rudd, Terrance E. Boult",
                 "venue": "CVPR Workshops 2016 (arXiv:1605.01775)", "link": "https://arxiv.org/abs/1605.01775"}
    knob = "scale"  # the PASS band (pass_low, pass_high) trades off too: a benchmark spec can sweep it with knob = ...
    cheap_params = {"types": "fgv", "correct_only": False, "cache_dir": "off"}
    passes_per_batch = 2.0  # at the default mix 0.5; cost() reads the actual parameters
    params = (
        Param("base", str, None, "base checkpoint to fine-tune (none: the model as handed over)", optional=True),
        Param("types", str, "hc-d-9", "comma-separated: fgs, fgv, hc-d-X, hc-s-X, each optionally -Y (a scale)"),
        Param("scale", float, 1.05, "Y: hard positive Q(x + Y s* d) (1.05, 1.10 in the paper; 1 = minimal)",
              low=1.0, high=100.0),
        Param("pass_low", float, 0.0, "keep a hard positive only if PASS >= this", low=-1.0, high=1.0),
        Param("pass_high", float, 1.0, "keep a hard positive only if PASS <= this (drops near-copies)",
              low=-1.0, high=1.0),
        Param("mix", float, 0.5, "fraction of hard positives per batch (none: in proportion to the set sizes)",
              low=0.0, high=1.0, optional=True),
        Param("correct_only", bool, True, "generate only from images the base model classifies correctly"),
        Param("gen_examples", int, None, "generate from this many training images (none: all)", low=1,
              optional=True),
        Param("gen_seed", int, 0, "seed of the choice of gen_examples images", low=0),
        Param("gen_batch_size", int, 256, "images per attack call while generating", low=1),
        Param("cache_dir", str, None, "cache folder (none: $ROBUSTKIT_CACHE_DIR or ~/.cache/robustkit; off: none)",
              optional=True),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        owner = self.display_name()
        if self.config["pass_low"] > self.config["pass_high"]:
            raise ParameterError(f"{owner}: the PASS band is empty: pass_low {self.config['pass_low']:g} > "
                                 f"pass_high {self.config['pass_high']:g}")
        self.kinds = parse_types(self.config["types"], self.config["scale"], owner)
        self.base_meta: dict[str, Any] | None = None
        if self.config["base"]:
            self.base_meta = read_metadata(self.config["base"])  # a missing or damaged checkpoint fails now
        self.hard: HardPositiveSet | None = None
        self.key: str | None = None
        #: Counts of the generated set (per type, kept fraction, queries) and where it came from.
        self.summary: dict[str, Any] = {}
        self.cache_file: Path | None = None
        self.generated = False  # whether this call generated the set (False: it came from the cache)
        self._ratio: float | None = None  # hard positives per clean image in a batch

    def describe(self) -> dict[str, Any]:
        """As :meth:`Defense.describe`, without ``cache_dir`` (where the set is kept does not change the run)."""
        described = super().describe()
        described["params"] = {k: v for k, v in described["params"].items() if k != "cache_dir"}
        return described

    def cost(self) -> float:
        mix = self.config["mix"]
        if mix is None:
            return 1.0 + self._ratio if self._ratio is not None else float("nan")  # known after prepare()
        return 1.0 if mix >= 1 else 1.0 / (1.0 - mix)

    # --- before training ---

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Load the base checkpoint's weights into ``model`` (a resumed run then overwrites them)."""
        if not self.config["base"]:
            return
        path = CheckpointPaths.of(self.config["base"]).meta
        spec = getattr(model, "spec", None)
        recorded = (self.base_meta or {}).get("model") or {}
        if spec is not None and recorded.get("name") and recorded["name"] != spec.name:
            raise RobustkitError(f"{self.display_name()}: the base checkpoint {path} holds a {recorded['name']} model, "
                                 f"the model to fine-tune is {spec.name}; use --model {recorded['name']}")
        self.base_meta = load_weights(model, path)

    def prepare(self, model: nn.Module, dataset: Any, device: torch.device) -> None:
        """Load the hard positives from the cache or generate them with ``model`` (the base) in eval mode.

        :raises RobustkitError: when no hard positive is kept (e.g. a band too narrow).
        """
        self.hard, self.key, self.generated, self.cache_file, self._ratio = None, None, False, None, None
        owner = self.display_name()
        base_dataset = (self.base_meta or {}).get("dataset") or {}
        if base_dataset.get("name") and base_dataset["name"] != dataset.info.name:
            raise RobustkitError(f"{owner}: the base checkpoint was trained on {base_dataset['name']}, "
                                 f"not {dataset.info.name}; fine-tune it on its own dataset")
        mix = self.config["mix"]
        if mix is not None and mix == 0:  # plain fine-tuning: nothing to generate
            self.summary = {"total": 0, "per_type": {}, "generated": False}
            return
        info = dataset.info
        indices = generation_indices(len(dataset.train), self.config["gen_examples"], self.config["gen_seed"])
        identity = self._identity(model, dataset)
        self.key = set_key(identity)
        cache = self._cache()
        hard = None
        if cache is not None:
            try:
                hard = cache.load(self.key, info.input_shape, info.num_classes)
            except CacheDamaged as err:
                print(f"robustkit: warning: {owner}: damaged cache entry ({err}); regenerating it", file=sys.stderr)
        if hard is None:
            hard = generate(model, dataset.train, self.kinds, band=self._band(), indices=indices,
                            batch_size=self.config["gen_batch_size"], correct_only=self.config["correct_only"],
                            device=torch.device(device))
            self.generated = True
            if cache is not None:
                provenance = {"base": self.config["base"],
                              "base_weights_sha256": ((self.base_meta or {}).get("files") or {}).get("weights_sha256")}
                try:
                    self.cache_file = cache.save(self.key, hard, identity, provenance)
                except OSError as err:  # a read-only or full disk costs the cache, not the run
                    print(f"robustkit: warning: {owner}: cannot write the cache in {cache.dir} "
                          f"({type(err).__name__}: {err}); continuing without it", file=sys.stderr)
        elif cache is not None:
            self.cache_file = cache.paths(self.key)[1]
        self.hard = hard
        self.summary = {**hard.summary(), "generated": self.generated, "key": self.key,
                        "cache_file": str(self.cache_file) if self.cache_file else None}
        if len(hard) == 0:
            stats = hard.stats
            adversarial = self.summary["adversarial"]
            raise RobustkitError(
                f"{owner}: no hard positive was kept ({stats.get('attacked')} of {stats.get('images')} training images "
                f"attacked, {adversarial} adversarials, none with PASS in [{self.config['pass_low']:g}, "
                f"{self.config['pass_high']:g}]); widen the PASS band, add types or check the base model")
        self._ratio = len(hard) / max(len(dataset.train), 1)

    def _band(self) -> tuple[float, float]:
        return float(self.config["pass_low"]), float(self.config["pass_high"])

    def _cache(self) -> SetCache | None:
        where = self.config["cache_dir"]
        if where is not None and where.strip().lower() == NO_CACHE:
            return None
        return SetCache(where if where else default_cache_dir())

    def _identity(self, model: nn.Module, dataset: Any) -> dict[str, Any]:
        """Everything that determines the set (hashed into its cache key)."""
        spec = getattr(model, "spec", None)
        return {
            "model": {"name": spec.name, "params": dict(spec.params)} if spec is not None else type(model).__name__,
            "model_state_sha256": model_fingerprint(model),
            "dataset": dataset_fingerprint(dataset),
            "types": [kind.name for kind in self.kinds],
            "band": list(self._band()),
            "correct_only": self.config["correct_only"],
            "gen_examples": self.config["gen_examples"],
            "gen_seed": self.config["gen_seed"],
            "gen_batch_size": self.config["gen_batch_size"],
        }

    # --- resuming ---

    def state_dict(self) -> dict[str, Any] | None:
        """The key of the set trained on (a resumed run must train on the same set)."""
        return {"hard_positives_key": self.key, "hard_positives": len(self.hard) if self.hard is not None else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("hard_positives_key")
        if saved != self.key:
            raise RobustkitError(f"{self.display_name()}: the checkpoint was trained on another hard-positive set "
                                 f"(key {str(saved)[:12]}, now {str(self.key)[:12]}: a different base model or data); "
                                 "resume with the same base, or start a new run (--no-resume)")

    # --- one batch ---

    def hard_count(self, batch: int) -> int:
        """Hard positives mixed into a batch of ``batch`` clean images."""
        mix = self.config["mix"]
        if self.hard is None or len(self.hard) == 0 or (mix is not None and mix == 0):
            return 0
        if mix is None:
            return max(1, int(round(batch * (self._ratio or 0.0))))
        return batch if mix >= 1 else max(1, int(round(batch * mix / (1.0 - mix))))

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        n = labels.shape[0]
        k = self.hard_count(n)
        if k == 0:
            out = model(images)
            return BatchLoss(F.cross_entropy(out, labels), out, self._metrics(None))
        hard = self.hard
        idx = torch.randint(len(hard), (k,))  # the global CPU generator, reseeded by the loop per epoch
        hard_x = hard.images[idx].to(images.device, non_blocking=True).to(images.dtype) / 255.0
        hard_y = hard.labels[idx].to(labels.device, non_blocking=True)
        only_hard = self.config["mix"] is not None and self.config["mix"] >= 1
        x = hard_x if only_hard else torch.cat([images, hard_x])
        y = hard_y if only_hard else torch.cat([labels, hard_y])
        out = model(x)
        hard_out = out if only_hard else out[n:]
        with torch.no_grad():
            hp_acc = float((hard_out.argmax(1) == hard_y).float().mean())
        return BatchLoss(F.cross_entropy(out, y), None if only_hard else out[:n], self._metrics(hp_acc))

    def _metrics(self, hp_acc: float | None) -> dict[str, float]:
        metrics = {"hp_total": float(len(self.hard)) if self.hard is not None else 0.0,
                   "hp_kept_fraction": float(self.summary.get("kept_fraction", 0.0))}
        if hp_acc is not None and math.isfinite(hp_acc):
            metrics["hp_acc"] = hp_acc
        return metrics
