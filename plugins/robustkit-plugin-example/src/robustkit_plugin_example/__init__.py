"""A template third-party robustkit plugin.

It registers one attack, ``example:uniform-noise``, and one CLI command, ``robustkit noise-demo``.
Copy this folder, rename the package and the entry point in ``pyproject.toml``, and
``pip install -e .``: robustkit finds it through the ``robustkit`` entry-point group. ``tests/`` shows
how a plugin tests itself: robustkit's pytest plugin and contract checks (:mod:`robustkit.testing`)
come with robustkit.
"""

from __future__ import annotations

import click
import torch

from robustkit import hookimpl
from robustkit.attacks import Attack, AttackResult
from robustkit.params import Param


class UniformNoise(Attack):
    """Random sign noise of size eps (a weak baseline: robust accuracy under it is an upper bound).

    Arguments:
        eps (float): linf size of the noise. (Default: 0.1)
        seed (int): seed of the noise generator. (Default: 0)

    Shape:
        images: (N, C, H, W) in [0, 1]; labels: (N,) class indices.
        output: adversarial images of the same shape.
    """

    name = "example:uniform-noise"
    threat_models = ("linf",)
    knowledge = "decision-based"
    goal = "fixed-budget"
    params = (
        Param("eps", float, 0.1, "linf size of the noise", low=0.0, high=1.0),
        Param("seed", int, 0, "seed of the noise generator"),
    )

    def perturb(self, model, images, labels, target_labels=None):
        gen = torch.Generator(device="cpu").manual_seed(self.config["seed"])
        signs = torch.randint(0, 2, images.shape, generator=gen).to(images) * 2 - 1
        return AttackResult(adversarial=(images + self.config["eps"] * signs).clamp(0, 1))


@hookimpl
def register_attacks(register):
    # The host reads the threat models, knowledge and goal from the class: state them once, there.
    register(UniformNoise.name, UniformNoise)


@hookimpl
def register_commands(cli):
    @cli.command(name="noise-demo")
    @click.option("--eps", default=0.1, show_default=True, help="linf size of the noise.")
    def noise_demo(eps):
        """Print how far uniform noise of size EPS moves a blank image (example plugin).

        Example:

            robustkit noise-demo --eps 0.2
        """
        adv = UniformNoise(eps=eps).perturb(None, torch.full((1, 1, 4, 4), 0.5), torch.zeros(1, dtype=torch.long))
        click.echo(f"max change: {float((adv.adversarial - 0.5).abs().max()):.3f}")
