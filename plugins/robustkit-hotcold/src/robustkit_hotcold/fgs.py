"""FGS: the fast gradient sign direction, searched for the closest quantized adversarial."""

from __future__ import annotations

from robustkit_hotcold.line_search import LineSearchAttack, loss_gradient


class FGS(LineSearchAttack):
    r"""Fast gradient sign direction with a line search for the smallest adversarial step.

    FGS in the paper 'Explaining and Harnessing Adversarial Examples' (Goodfellow et al., 2015),
    searched as in 'Adversarial Diversity and Hard Positive Generation' (Rozsa et al., 2016)
    [https://arxiv.org/abs/1605.01775]: ``d = sign(grad_x J(x, y))``, then the smallest step
    ``s`` (grey levels, images on the integer grid [0, 255]) with ``f(Q(x + s d)) != y``.
    Images are returned quantized to ``k / 255``.

    Distance Measure : unbounded (minimal-distortion along ``d``; no eps)

    Arguments:
        scale (float): hard-positive factor Y, output ``Q(x + Y s* d)``. (Default: 1.0)
        pass_threshold (float or None): keep an adversarial only if PASS >= this. (Default: None)
        report_pass (bool): compute PASS of every candidate into ``extra['pass']``. (Default: True)

    Shape:
        images: (N, C, H, W) in [0, 1]; labels: (N,) class indices.
        output: adversarial images of the same shape; the clean image where the attack failed.
        extra: per image ``s`` (step s*), ``found``, ``pass``, ``success``.

    Examples::
        >>> attack = make_host().attacks.create("fgs", {"scale": 1.05})
        >>> result = attack(model, images, labels)
        >>> result.adversarial, result.extra["pass"]
    """

    name = "fgs"
    params = LineSearchAttack.common_params

    def directions(self, model, images, labels):
        return loss_gradient(model, images, labels).sign(), {}
