"""Adversarial training with perturbation generator networks (PGN), and the trained generator as an attack.

A plugin like any other (entry point ``pgn``). The defense ``pgn`` trains a generator network G
alongside the classifier: each batch, G turns (gradient image, image, label) into a perturbation,
the classifier learns on the perturbed batch, and G learns to raise the classifier's loss at a
squared-L2 price. The defense owns G, its Adam optimizer and its moving average through the
``setup`` / ``state_dict`` / ``load_state_dict`` hooks of :class:`robustkit.defenses.Defense`, so
checkpoints and resuming work like for any other defense. After training, the attack ``pgn``
loads G from the run's checkpoint and applies it to any model of the same input shape and classes.

Reference: ATPGN/ATPGN (TF1 + cleverhans; ``models/PGN.py``, ``train.py``, ``main.py``).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.attacks import Attack, AttackResult
from robustkit.checkpoints import CheckpointPaths, load_training_state, read_metadata
from robustkit.defenses import BatchLoss, Defense
from robustkit.errors import ParameterError, RobustkitError
from robustkit.hookspecs import Register, hookimpl
from robustkit.params import Param

ATANH_SHRINK = 0.999999  # atanh((2x - 1) * 0.999999): finite for pixels at exactly 0 or 1, as in the reference
LEAK = 0.2  # tf.nn.leaky_relu's default slope, used by every hidden layer of the reference


# --- the generator network ------------------------------------------------------------------------


class Generator(nn.Module):
    """G(grad, x, y): the reference's perturbation generator, adapted to any C x H x W input and K classes.

    The reference (``models/PGN.py``), for a square H x H input::

        one-hot y -> Dense 1024, lrelu -> concat y -> Dense 128 * (H/4)^2, lrelu -> reshape H/4 x H/4 x 128
        -> concat tiled y -> ConvT 128 3x3 stride 2, lrelu -> concat tiled y -> ConvT 128 3x3 stride 2, lrelu
        -> concat [grad, 2x - 1] -> Conv 128 3x3, lrelu -> Conv C 3x3 (linear): the perturbation in tanh space.

    At 32 x 32 this is the paper's Table 1 (an 8 x 8 x 128 base, Dense 8192). Adaptation here: the
    base is ceil(H/4) x ceil(W/4) (the reference's H//4 only works when 4 divides H, and only for
    square images), the two stride-2 transposed convolutions give 4*ceil(H/4) x 4*ceil(W/4), and the
    map is cropped to H x W (top-left; at most 3 rows and columns go) before the image and gradient
    are concatenated. So 1 x 8 x 8 uses a 2 x 2 base, 1 x 28 x 28 a 7 x 7 base, 3 x 96 x 96 a 24 x 24 base.
    The widths are the reference's by default (``width`` 128 channels, ``dense`` 1024 units) whatever
    the input; the second dense layer grows with the image (Dense 73,728 at 96 x 96: about 76M weights).

    Transposed convolutions follow TensorFlow's ``padding='same'`` exactly: a full stride-2
    transposed convolution (2n + 1 outputs) keeps its first 2n rows and columns. Initialization
    is the reference's He normal (``VarianceScaling(2.0, 'untruncated_normal')``, fan-in), zero biases.

    :param in_channels: C of the images (the output has C channels too).
    :param image_size: ``(H, W)``.
    :param num_classes: K.
    :param width: channels of every hidden convolution (reference 128).
    :param dense: units of the first dense layer (reference 1024).
    """

    def __init__(self, in_channels: int, image_size: Sequence[int], num_classes: int, *, width: int = 128,
                 dense: int = 1024):
        super().__init__()
        height, width_px = (int(s) for s in image_size)
        self.in_channels, self.image_size, self.num_classes = int(in_channels), (height, width_px), int(num_classes)
        self.base = (math.ceil(height / 4), math.ceil(width_px / 4))
        self.width, self.dense = int(width), int(dense)
        k = self.num_classes
        self.fc1 = nn.Linear(k, dense)
        self.fc2 = nn.Linear(dense + k, width * self.base[0] * self.base[1])
        self.up1 = nn.ConvTranspose2d(width + k, width, 3, stride=2)
        self.up2 = nn.ConvTranspose2d(width + k, width, 3, stride=2)
        self.conv = nn.Conv2d(width + 2 * self.in_channels, width, 3, padding=1)
        self.out = nn.Conv2d(width, self.in_channels, 3, padding=1)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = nn.init._calculate_fan_in_and_fan_out(module.weight)[0]
                nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_in))
                nn.init.zeros_(module.bias)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, *self.image_size)

    def architecture(self) -> dict[str, Any]:
        """What rebuilds this network: ``Generator(**g.architecture())``."""
        return {"in_channels": self.in_channels, "image_size": list(self.image_size),
                "num_classes": self.num_classes, "width": self.width, "dense": self.dense}

    def forward(self, grad: torch.Tensor, x: torch.Tensor, y_onehot: torch.Tensor) -> torch.Tensor:
        """The perturbation in tanh space (``N x C x H x W``, unbounded); see :func:`perturbed`."""
        n = x.shape[0]
        h0, w0 = self.base
        y = y_onehot.to(x.dtype)
        tiled = y.view(n, -1, 1, 1)
        out = F.leaky_relu(self.fc1(y), LEAK)
        out = F.leaky_relu(self.fc2(torch.cat([out, y], 1)), LEAK).view(n, self.width, h0, w0)
        out = self.up1(torch.cat([out, tiled.expand(-1, -1, h0, w0)], 1))
        out = F.leaky_relu(out[..., : 2 * h0, : 2 * w0], LEAK)
        out = self.up2(torch.cat([out, tiled.expand(-1, -1, 2 * h0, 2 * w0)], 1))
        out = F.leaky_relu(out[..., : self.image_size[0], : self.image_size[1]], LEAK)
        out = F.leaky_relu(self.conv(torch.cat([out, grad.to(x.dtype), 2 * x - 1], 1)), LEAK)
        return self.out(out)


def perturbed(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """x_adv = (tanh(atanh((2x - 1) * 0.999999) + g) + 1) / 2: in [0, 1] for every g, no clipping needed."""
    return (torch.tanh(torch.atanh((2 * x - 1) * ATANH_SHRINK) + g) + 1) / 2


def true_class_probability_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, *,
                                    divide_by: int | None = None, create_graph: bool = False,
                                    keep_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient w.r.t. x of the summed true-class softmax probability divided by ``divide_by`` (default: the
    batch size, i.e. the batch mean, as the reference), and the logits of that clean forward.

    :param create_graph: make the gradient differentiable (double backprop).
    :param keep_graph: keep the clean forward's graph (to backpropagate through the logits later).
    """
    x = x.detach().requires_grad_(True)
    logits = model(x)
    prob = logits.softmax(1).gather(1, labels.view(-1, 1)).sum() / (divide_by or x.shape[0])
    (grad,) = torch.autograd.grad(prob, x, create_graph=create_graph, retain_graph=create_graph or keep_graph)
    return grad, logits


# --- the defense ----------------------------------------------------------------------------------


class PGN(Defense):
    """Adversarial training with a perturbation generator network (PGN): classifier and generator compete.

    Paper: H. Lee, S. Han, J. Lee, "Adversarial Training with Perturbation Generator Networks", ICLR 2020
    submission (OpenReview S1xXiREKDB; the PDF is anonymous); reference code ATPGN/ATPGN (TF1 + cleverhans).

    Each batch (x, y), with the model in training mode as the loop hands it over:

    1. grad = grad_x of the batch-mean true-class softmax probability (one clean forward+backward);
    2. x_adv = (tanh(atanh((2x - 1) * 0.999999) + G(grad, x, y)) + 1) / 2, delta = x_adv - x
       (always in [0, 1]; :class:`Generator` is the reference's network adapted to the input);
    3. classifier loss: adv_coeff * CE(f(x_adv), y) + (1 - adv_coeff) * CE(f(x), y) (the paper:
       adv_coeff = 1, adversarial examples only); this is the returned loss, which the loop minimizes;
    4. generator loss: -CE(f(x_adv), y) + c_L * mean_i ||delta_i||_2^2, from the same forward pass,
       minimized here, inside :meth:`batch_loss`, by the generator's own Adam (one step per batch),
       followed by the generator's moving-average update.

    Both gradients are taken at the same parameters (the reference computes both, then applies
    both). They never leak: the generator's gradient is computed with ``torch.autograd.grad`` for
    G's parameters only (the classifier's ``.grad`` stays untouched), and the returned loss's graph
    does not reach G's parameters (double backprop runs through a detached copy of them), so the
    loop's backward and step change only the classifier.

    Double backprop (``detach_grad=false``, the reference): the classifier's gradient includes the
    path through x_adv, G and the gradient input grad, which depends on the classifier (a
    second-order term). ``detach_grad=true`` treats x_adv as a constant for the classifier (cheaper,
    and works for models without double-backward support).

    Params:

    - ``c_L``: the price of the squared L2 norm of the perturbation; the trade-off knob (higher: smaller
      perturbations, higher clean accuracy, less robustness). Default 50, the paper's (Table 2);
      the reference's ``main.py`` defaults to 70.
    - ``gen_lr``: the generator's Adam learning rate (reference 5e-4; the reference's classifier uses the
      same optimizer settings: give the loop ``lr=5e-4`` with Adam to match).
    - ``ema_decay``: decay of the moving averages of the classifier (after every loop step) and of
      the generator (after every generator step); reference 0.998. The ``pgn`` attack uses the
      generator's average by default.
    - ``ema_warmup``: use decay min(ema_decay, (1 + t) / (10 + t)) at step t (TensorFlow's
      ``ExponentialMovingAverage`` with ``num_updates``). **Choice**, default on: with a constant
      0.998, a short CPU-scale run (a few hundred steps) would publish mostly the random initial
      weights; ``false`` gives the constant decay.
    - ``ema_classifier``: publish the classifier's moving average (validated, saved and returned by the
      loop, as the reference evaluates and saves it); ``false`` publishes the live weights.
    - ``detach_grad``: drop the double-backprop path (see above).
    - ``adv_coeff``: weight of the adversarial term of the classifier loss (reference flag, default 1).
    - ``gen_width``: channels of the generator's hidden convolutions, with 8 * gen_width units in its
      first dense layer (reference 128 and 1024); smaller is cheaper on small images (8 x 8 digits).

    EMA: as in the reference, moving averages of the classifier's parameters and of the generator are
    kept, and the classifier's average is what the loop validates, saves and returns (buffers such
    as batch-norm statistics are taken live). The live weights stay in the checkpoint's training
    state, so a resumed run continues from them.

    Logged per epoch (batch means): ``delta_l2`` (mean ||delta||_2), ``gen_loss`` and
    ``train_clean_acc`` (accuracy on the clean batch; ``train_acc`` is on x_adv).

    The generator's initial weights come from the global random stream when :meth:`setup` runs
    (right after the model is built: seed before building the model for a repeatable run).

    Cost: cost() returns 3 forward+backward passes of the classifier per batch with ``detach_grad``
    and 5 with double backprop: the ratios to natural training measured (CPU) at the paper's setting,
    ConvPool-CNN on 32 x 32 x 3 images with 100 classes and the reference-sized generator. The passes:
    a clean forward+backward for grad, the adversarial forward, a backward to x_adv for the
    generator, the loop's backward, and the generator's forward and backward (plus, with double
    backprop, the second-order backward through grad). The paper reports 6.3x (51.8 s vs 8.2 s per
    epoch) for the reference. The generator's share is larger next to a small classifier (LeNet on
    8 x 8 digits: 45-70x natural with gen_width 128, 6-8x with gen_width 16).
    """

    name = "pgn"
    reference = {"title": "Adversarial Training with Perturbation Generator Networks",
                 "authors": "Hyeungill Lee, Sungyeob Han, Jungwoo Lee",
                 "venue": "ICLR 2020 submission (OpenReview)", "link": "https://openreview.net/forum?id=S1xXiREKDB"}
    knob = "c_L"
    cheap_params = {"gen_width": 4}
    passes_per_batch = 5.0  # with the default (double backprop); cost() reads the actual parameters
    params = (
        Param("c_L", float, 50.0, "price of the perturbation's squared L2 norm in the generator loss", low=0.0),
        Param("gen_lr", float, 5e-4, "the generator's Adam learning rate", low=0.0, low_open=True, high=1.0),
        Param("ema_decay", float, 0.998, "decay of the classifier's and the generator's moving averages",
              low=0.0, high=1.0),
        Param("ema_warmup", bool, True, "decay min(ema_decay, (1+t)/(10+t)) at step t, as TensorFlow's num_updates"),
        Param("ema_classifier", bool, True, "publish the classifier's moving average instead of its live weights"),
        Param("detach_grad", bool, False, "no double backprop: x_adv is a constant for the classifier"),
        Param("adv_coeff", float, 1.0, "weight of CE(x_adv) in the classifier loss; the rest goes to CE(x)",
              low=0.0, high=1.0),
        Param("gen_width", int, 128, "channels of the generator's convolutions (dense layer: 8x as many units)",
              low=1, high=4096),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        if self.config["ema_decay"] >= 1:
            raise ParameterError(f"{self.display_name()}: parameter 'ema_decay' must be < 1, "
                                 f"got {self.config['ema_decay']}")
        self.generator: Generator | None = None
        self.generator_ema: Generator | None = None
        self.gen_optimizer: torch.optim.Optimizer | None = None
        self.steps = 0
        self.classifier_ema: dict[str, torch.Tensor] | None = None
        self.classifier_steps = 0
        self._device = torch.device("cpu")

    def cost(self) -> float:
        return 3.0 if self.config["detach_grad"] else 5.0

    # --- owning the generator ---

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """A fresh generator, its moving average and its Adam, on ``device``, sized from the model's dataset.

        A model without ``spec.dataset`` (not built by :func:`robustkit.models.build_model`) gets its
        generator at the first batch, sized from the images and the logits.
        """
        self._device = torch.device(device)
        self.generator = self.generator_ema = self.gen_optimizer = None
        self.classifier_ema = ({name: p.detach().clone() for name, p in model.named_parameters()}
                               if self.config["ema_classifier"] else None)
        self.classifier_steps = 0
        info = getattr(getattr(model, "spec", None), "dataset", None)
        if info is not None:
            self._build(info.input_shape, info.num_classes)

    def _build(self, input_shape: Sequence[int], num_classes: int) -> None:
        channels, height, width = (int(s) for s in input_shape)
        gen_width = self.config["gen_width"]
        self.generator = Generator(channels, (height, width), num_classes, width=gen_width,
                                   dense=8 * gen_width).to(self._device)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.gen_optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.config["gen_lr"])
        self.steps = 0

    def state_dict(self) -> dict[str, Any] | None:
        """The generator, its moving average and its optimizer (and the shapes they were built for)."""
        if self.generator is None:
            return None
        return {
            "architecture": self.generator.architecture(),
            "steps": self.steps,
            "generator": dict(self.generator.state_dict()),
            "generator_ema": dict(self.generator_ema.state_dict()),
            "optimizer": self.gen_optimizer.state_dict(),
            **({"classifier_ema": dict(self.classifier_ema), "classifier_steps": self.classifier_steps}
               if self.classifier_ema is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (from a checkpoint: tensors on the CPU, tuples as lists)."""
        try:
            arch = state["architecture"]
            shape, classes = (int(arch["in_channels"]), *(int(s) for s in arch["image_size"])), int(arch["num_classes"])
            if self.generator is None or self.generator.input_shape != shape or self.generator.num_classes != classes:
                self._build(shape, classes)
            self.generator.load_state_dict(state["generator"])
            self.generator_ema.load_state_dict(state["generator_ema"])
            optim_state = copy.copy(state["optimizer"])
            optim_state["param_groups"] = [
                {**group, **({"betas": tuple(group["betas"])} if isinstance(group.get("betas"), list) else {})}
                for group in optim_state["param_groups"]]
            self.gen_optimizer.load_state_dict(optim_state)
            self.steps = int(state.get("steps", 0))
            if self.classifier_ema is not None:
                saved = state["classifier_ema"]
                if set(saved) != set(self.classifier_ema):
                    raise ValueError("the classifier's moving average has other parameters than the model")
                self.classifier_ema = {name: saved[name].to(self.classifier_ema[name]) for name in self.classifier_ema}
                self.classifier_steps = int(state.get("classifier_steps", 0))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RobustkitError(f"pgn: the saved generator state does not fit ({detail}); start a new run "
                                 "(--no-resume)") from None

    # --- one batch ---

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        double = not self.config["detach_grad"]
        c_adv, c_l = self.config["adv_coeff"], self.config["c_L"]
        x = images.detach()
        grad, logits_clean = true_class_probability_gradient(model, x, labels, create_graph=double,
                                                             keep_graph=c_adv < 1)
        if self.generator is None:  # setup() could not size it (a model without spec.dataset)
            self._device = x.device
            self._build(x.shape[1:], logits_clean.shape[1])
        generator = self.generator
        if generator.input_shape != tuple(x.shape[1:]) or generator.num_classes != logits_clean.shape[1]:
            raise RobustkitError(f"pgn: the generator was built for {'x'.join(map(str, generator.input_shape))} "
                                 f"images and {generator.num_classes} classes, the batch has "
                                 f"{'x'.join(map(str, x.shape[1:]))} images and {logits_clean.shape[1]} classes")
        y_onehot = F.one_hot(labels, generator.num_classes).to(x.dtype)

        live = dict(generator.named_parameters())
        # Double backprop: the classifier's loss must reach theta through G, but never G's parameters (and the
        # generator step below must not change tensors that loss still needs): run G on a copy of them.
        params = {k: p.detach().clone().requires_grad_(True) for k, p in live.items()} if double else live
        raw = torch.func.functional_call(generator, params, (grad if double else grad.detach(), x, y_onehot))
        x_adv = perturbed(x, raw)
        delta = x_adv - x
        x_in = x_adv.detach().requires_grad_(True)
        logits = model(x_in)
        ce_adv = F.cross_entropy(logits, labels)
        (dce_dx,) = torch.autograd.grad(ce_adv, x_in, retain_graph=True)  # no parameter's .grad is touched

        # Generator: minimize -CE(x_adv) + c_L mean ||delta||^2 over G's parameters only.
        sq_norm = delta.pow(2).flatten(1).sum(1)
        gen_objective = -(dce_dx * x_adv).sum() + c_l * sq_norm.mean()  # same gradient in G as the loss
        gen_grads = torch.autograd.grad(gen_objective, list(params.values()), retain_graph=double)
        self._generator_step(gen_grads)

        loss = c_adv * ce_adv
        if c_adv < 1:
            loss = loss + (1 - c_adv) * F.cross_entropy(logits_clean, labels)
        if double and c_adv > 0:
            # d CE(f(x_adv(theta)))/d theta = the direct term (through x_in) + dCE/dx_adv . d x_adv/d theta;
            # this zero-valued term adds the second one (through G and grad) to the loop's backward.
            through_g = c_adv * (dce_dx * x_adv).sum()
            loss = loss + (through_g - through_g.detach())
        with torch.no_grad():
            metrics = {"delta_l2": float(sq_norm.sqrt().mean()),
                       "gen_loss": float(-ce_adv + c_l * sq_norm.mean()),
                       "train_clean_acc": float((logits_clean.argmax(1) == labels).float().mean())}
        return BatchLoss(loss, logits, metrics)

    def _generator_step(self, grads: Sequence[torch.Tensor]) -> None:
        for p, g in zip(self.generator.parameters(), grads):
            p.grad = g.detach()
        self.gen_optimizer.step()
        self.gen_optimizer.zero_grad(set_to_none=True)
        decay = self._decay(self.steps)
        with torch.no_grad():
            for avg, p in zip(self.generator_ema.parameters(), self.generator.parameters()):
                avg.lerp_(p, 1.0 - decay)
        self.steps += 1

    def _decay(self, step: int) -> float:
        decay = self.config["ema_decay"]
        return min(decay, (1 + step) / (10 + step)) if self.config["ema_warmup"] else decay

    # --- the classifier's moving average ---

    def after_step(self, model: nn.Module) -> None:
        if self.classifier_ema is None:
            return
        decay = self._decay(self.classifier_steps)
        with torch.no_grad():
            for name, p in model.named_parameters():
                self.classifier_ema[name].lerp_(p.detach(), 1.0 - decay)
        self.classifier_steps += 1

    def published_weights(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        if self.classifier_ema is None:
            return None
        return {**model.state_dict(), **self.classifier_ema}


# --- the attack -----------------------------------------------------------------------------------


def load_generator(path: str | Path, *, use_ema: bool = True) -> tuple[Generator, dict[str, Any]]:
    """The generator saved with a ``pgn`` training run's checkpoint, on the CPU in eval mode.

    :param path: the checkpoint (its directory, stem, or any of its files).
    :param use_ema: load the moving average (default) rather than the last weights.
    :return: ``(generator, facts)``; ``facts`` has the run's ``batch_size``, ``defense`` and ``epoch``.
    :raises RobustkitError: (one line) when the checkpoint is not a pgn run or holds no generator.
    """
    meta_path = CheckpointPaths.of(path).meta
    meta = read_metadata(meta_path)
    defense = meta.get("defense") if isinstance(meta.get("defense"), dict) else {}
    if defense.get("name") != "pgn":
        found = defense.get("name") or "none recorded"
        raise RobustkitError(f"{meta_path} is not a pgn training run (defense: {found}); give the checkpoint of a "
                             "run trained with --defense pgn")
    state = load_training_state(meta_path)
    if not isinstance(state, dict) or "generator" not in state:
        raise RobustkitError(f"{meta_path} holds no generator (its resume state has no pgn defense state); "
                             "retrain with --defense pgn")
    key = "generator_ema" if use_ema else "generator"
    try:
        arch = state["architecture"]
        generator = Generator(int(arch["in_channels"]), tuple(arch["image_size"]), int(arch["num_classes"]),
                              width=int(arch["width"]), dense=int(arch["dense"]))
        generator.load_state_dict(state[key])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RobustkitError(f"the generator saved in {meta_path} cannot be loaded ({detail}); retrain it") from None
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    facts = {"batch_size": training.get("batch_size"), "defense": defense, "epoch": meta.get("epoch")}
    return generator.eval().requires_grad_(False), facts


class PGNAttack(Attack):
    """PGN attack: the perturbation generator of a pgn training run, applied to any model (white-box).

    x_adv = (tanh(atanh((2x - 1) * 0.999999) + G(grad, x, y)) + 1) / 2, where grad is the gradient of
    the attacked model's true-class softmax probability w.r.t. x. One forward and backward of the
    model per batch, then one forward of G (the paper's Figure 3 uses a generator trained against
    a fixed classifier; here G comes from a pgn run, so it was trained alongside that run's classifier).

    The perturbation has no fixed budget: G learned a trade-off between the classifier's loss and
    the squared L2 norm (the run's ``c_L``), so compare attacks by distortion (``goal`` is
    minimal-distortion; ``threat_models`` unbounded).

    Gradient scale: in training, grad is the gradient of the *batch mean* (divided by the training
    batch size). The attack divides the summed probability by the run's training ``batch_size``
    (recorded in the checkpoint), so G sees gradients of the scale it was trained on, and an image's
    result does not depend on the size of the batch it is attacked in.

    Arguments:
        checkpoint (str): a training run's checkpoint (folder, ``last.json`` or stem) whose defense is pgn.
        use_ema (bool): use the generator's moving average (the reference evaluates the averages). (Default: True)
    """

    name = "pgn"
    threat_models = ("unbounded",)
    knowledge = "white-box"
    goal = "minimal-distortion"
    supports_targeted = False
    contract_skip = "it needs the checkpoint of a pgn training run; its own tests train one and attack with it"
    params = (
        Param("checkpoint", str, None, "checkpoint of a pgn training run (folder or last.json)", optional=True),
        Param("use_ema", bool, True, "use the generator's moving average rather than its last weights"),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        if not self.config["checkpoint"]:
            raise ParameterError("pgn: give checkpoint=PATH, the checkpoint of a run trained with --defense pgn")
        self.generator, self.facts = load_generator(self.config["checkpoint"], use_ema=self.config["use_ema"])

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor | None = None) -> AttackResult:
        generator = self.generator.to(images.device)
        if tuple(images.shape[1:]) != generator.input_shape:
            raise RobustkitError(f"pgn: the generator in {self.config['checkpoint']} was trained on "
                                 f"{'x'.join(map(str, generator.input_shape))} images, not "
                                 f"{'x'.join(map(str, images.shape[1:]))}")
        grad, logits = true_class_probability_gradient(model, images, labels,
                                                       divide_by=self.facts.get("batch_size") or images.shape[0])
        if logits.shape[1] != generator.num_classes:
            raise RobustkitError(f"pgn: the generator in {self.config['checkpoint']} was trained for "
                                 f"{generator.num_classes} classes, the model has {logits.shape[1]}")
        with torch.no_grad():
            y_onehot = F.one_hot(labels, generator.num_classes).to(images.dtype)
            adversarial = perturbed(images, generator(grad, images, y_onehot))
        return AttackResult(adversarial=adversarial)


@hookimpl
def register_defenses(register: Register) -> None:
    """Register the ``pgn`` defense."""
    register("pgn", PGN, threat_models=("l2",))


@hookimpl
def register_attacks(register: Register) -> None:
    """Register the ``pgn`` attack (a trained generator)."""
    register(PGNAttack.name, PGNAttack)
