"""The built-in training recipes (``robustkit train --list-recipes``), each with its source and published figures.

- ``cifar10-pgd-at-rice2020``: PGD adversarial training of PreActResNet-18 on CIFAR-10 as Rice, Wong and
  Kolter ran it to show robust overfitting, with their remedy: the best epoch by validation PGD accuracy.
- ``mnist-madry``: Madry et al.'s MNIST PGD adversarial training of their CNN, with an eps warm-up.

Registered through the ``register_recipes`` hook exactly as a plugin registers its own.
"""

from __future__ import annotations

from robustkit.hookspecs import Register, hookimpl
from robustkit.recipes import Published, Recipe

RICE2020 = Recipe(
    name="cifar10-pgd-at-rice2020",
    description="PGD-AT, PreActResNet-18 on CIFAR-10, linf 8/255, 200 epochs, best epoch by validation PGD "
                "(Rice et al. 2020)",
    model="preact-resnet18", dataset="cifar10",
    defense="pgd-at", defense_params={"norm": "linf", "eps": 8 / 255, "steps": 10, "step_size": 2 / 255,
                                      "rand_init": True, "attack_mode": "train"},
    training={
        "epochs": 200, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
        "schedule": "step", "milestones": (100, 150), "gamma": 0.1,
        "augment": "crop:4:reflect,flip",
        "select": "best", "val_examples": 1000, "val_eps": 8 / 255, "val_steps": 10, "val_step_size": 2 / 255,
    },
    source="L. Rice, E. Wong, J. Z. Kolter, \"Overfitting in adversarially robust deep learning\", ICML 2020; "
           "code: github.com/locuslab/robust_overfitting (train_cifar.py)",
    link="https://arxiv.org/abs/2002.11569",
    published=(
        Published("PGD robust accuracy of the best checkpoint (PGD-10, linf 8/255), about", 0.53,
                  "Table 1, as robust test error of about 47%"),
        Published("clean accuracy of the best checkpoint, about", 0.82, "Figure 1 / Table 1"),
        Published("robust accuracy lost by training to epoch 200 instead of stopping early, about", 0.08,
                  "the repository's README: early stopping improves robust test error by 8%"),
    ),
    notes="The paper's code: SGD 0.1 (momentum 0.9, weight decay 5e-4), batch 128, 200 epochs with the rate divided "
          "by 10 after epochs 100 and 150 (it changes it per batch; here between epochs, the same epochs), PGD-10 of "
          "2/255 from a uniform start within 8/255 crafted in training mode, random 32x32 crops of images padded by "
          "4 pixels with reflection (cifar10-fast's pad) and horizontal flips. Its --val mode holds out 1,000 "
          "training images and keeps the epoch with the best validation PGD accuracy, as this recipe does; the "
          "paper's headline numbers pick the best epoch by test accuracy, so expect ours to be at most about as "
          "good. The figures are approximate, read from the paper and its repository; check them against Table 1 "
          "before quoting a difference.",
)

MADRY_MNIST = Recipe(
    name="mnist-madry",
    description="PGD-AT, Madry CNN on MNIST, linf 0.3, 40 steps of 0.01, Adam 1e-4, eps warm-up (Madry et al. 2018)",
    model="madry-cnn", dataset="mnist",
    defense="pgd-at", defense_params={"norm": "linf", "eps": 0.3, "steps": 40, "step_size": 0.01, "rand_init": True},
    training={
        "epochs": 83, "batch_size": 50, "optimizer": "adam", "lr": 1e-4, "schedule": "constant",
        "augment": "none", "eps_warmup": 5,
        "select": "best", "val_examples": 1000, "val_eps": 0.3, "val_steps": 40, "val_step_size": 0.01,
    },
    source="A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, \"Towards Deep Learning Models Resistant to "
           "Adversarial Attacks\", ICLR 2018; code: github.com/MadryLab/mnist_challenge",
    link="https://arxiv.org/abs/1706.06083",
    published=(
        Published("clean accuracy", 0.988, "Table 1 (MNIST), natural test images"),
        Published("PGD-40 accuracy, 1 restart, white-box", 0.932, "Table 1 (MNIST), source A"),
        Published("PGD-100 accuracy, 20 restarts, white-box", 0.893, "Table 1 (MNIST), source A"),
    ),
    notes="The paper trains 100,000 steps of batch 50 (about 83 epochs of MNIST's 60,000 images) with Adam 1e-4 "
          "against PGD of 40 steps of 0.01 from a uniform start in the linf ball of 0.3, and keeps the last model. "
          "Two additions: the eps rises linearly over the first 5 epochs (robustkit's eps warm-up; from scratch at "
          "full eps the CNN can stay at chance), and the best epoch by validation PGD-40 accuracy on 1,000 held-out "
          "training images is kept (on MNIST it is usually one of the last).",
)


@hookimpl
def register_recipes(register: Register) -> None:
    """Register ``cifar10-pgd-at-rice2020`` and ``mnist-madry``."""
    for recipe in (RICE2020, MADRY_MNIST):
        register(recipe.name, lambda recipe=recipe: recipe, description=recipe.description, params=(),
                 source=recipe.link)
