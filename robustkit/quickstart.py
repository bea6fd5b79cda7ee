"""The main job on the embedded default: natural vs PGD adversarial training, attacked, on a leaderboard.

Small enough for a laptop CPU in a few minutes, and it touches every layer a bigger benchmark uses:
the essential datasets and models, the shared training loop with two defenses, the native PGD attack,
evaluation, and the leaderboard file, so the core alone runs it. ``robustkit bench`` generalizes it to
accuracy-matched sweeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from robustkit.devices import resolve_device, seed_everything
from robustkit.evaluation import EvaluationResult, evaluate
from robustkit.leaderboard import leaderboard_entry, write_leaderboard
from robustkit.models import build_model, normalization_of
from robustkit.training import TrainConfig, train


@dataclass
class QuickstartSettings:
    """What the quickstart trains and how it attacks.

    :param model: registered model (the Madry/localized-AT MNIST CNN, adapted to 8x8 digits).
    :param dataset: registered dataset.
    :param eps: linf budget of training and evaluation, in [0, 1] pixel units.
    :param epochs: training epochs per defense.
    :param train_steps: PGD steps inside adversarial training.
    :param attack_steps: PGD steps of the evaluation attack (more than training, to avoid overrating).
    :param n_examples: test images to evaluate (None: all 450).
    """

    model: str = "madry-cnn"
    dataset: str = "digits"
    eps: float = 0.1
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    train_steps: int = 7
    attack_steps: int = 20
    n_examples: int | None = None
    seed: int = 0
    device: str = "auto"

    def defenses(self) -> list[tuple[str, dict[str, Any]]]:
        return [("natural", {}),
                ("pgd-at", {"norm": "linf", "eps": self.eps, "steps": self.train_steps,
                            "step_size": 2.5 * self.eps / self.train_steps})]

    def attack(self) -> tuple[str, dict[str, Any]]:
        return "pgd", {"eps": self.eps, "step_size": 2.5 * self.eps / self.attack_steps,
                       "steps": self.attack_steps, "random_start": True}


@dataclass
class QuickstartRow:
    defense: str
    evaluation: EvaluationResult
    train_seconds: float
    checkpoint: Path | None


def run_quickstart(host: Any, settings: QuickstartSettings, out_dir: Path,
                   say: Callable[[str], None] = print) -> tuple[list[QuickstartRow], Path]:
    """Train each defense, attack it, write ``leaderboard.json``; reruns resume finished work."""
    device = resolve_device(settings.device)
    dataset = host.datasets.create(settings.dataset, {}, root=None)
    attack_name, attack_params = settings.attack()
    attacks = {attack_name: host.attacks.create(attack_name, attack_params)}  # validated before training
    rows: list[QuickstartRow] = []
    entries = []
    plan = settings.defenses()
    for i, (defense_name, params) in enumerate(plan, start=1):
        defense = host.defenses.create(defense_name, params)
        say(f"[{i}/{len(plan)}] {defense_name}: training {settings.model} on {settings.dataset} "
            f"for {settings.epochs} epochs on {device}")
        seed_everything(settings.seed)
        model = build_model(host, settings.model, dataset.info)
        config = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                             seed=settings.seed, device=str(device), val_eps=settings.eps,
                             out_dir=out_dir / defense_name)
        tick = time.perf_counter()
        trained = train(model, dataset, defense, config, host=host)
        train_seconds = time.perf_counter() - tick
        say(f"[{i}/{len(plan)}] {defense_name}: attacking with {attack_name} (eps={settings.eps})")
        result = evaluate(trained.model, dataset, attacks, n_examples=settings.n_examples, device=device,
                          seed=settings.seed)
        rows.append(QuickstartRow(defense_name, result, train_seconds, trained.checkpoint))
        ref = type(defense).reference
        entries.append(leaderboard_entry(
            result, defense=defense_name, model=settings.model, dataset=settings.dataset, eps=settings.eps,
            threat_model="linf", attack_suite=f"{attack_name}-{settings.attack_steps}",
            name=ref.get("title") or None, link=ref.get("link", ""), authors=ref.get("authors", ""),
            venue=ref.get("venue", ""), plugin_versions=host.plugin_versions(),
            normalization=normalization_of(trained.model).to_json(),
        ))
    path = out_dir / "leaderboard.json"
    write_leaderboard(path, entries)
    return rows, path
