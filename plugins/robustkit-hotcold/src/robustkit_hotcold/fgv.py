"""FGV: the raw loss gradient as direction, searched for the closest quantized adversarial."""

from __future__ import annotations

from robustkit_hotcold.line_search import LineSearchAttack, loss_gradient


class FGV(LineSearchAttack):
    r"""Fast gradient value: the raw loss gradient with a line search for the smallest adversarial step.

    FGV in the paper 'Adversarial Diversity and Hard Positive Generation' (Rozsa et al., 2016)
    [https://arxiv.org/abs/1605.01775]: ``d = grad_x J(x, y)`` (cross-entropy, not its sign), scaled
    so that its largest pixel moves one grey level per step, then the smallest step ``s`` with
    ``f(Q(x + s d)) != y`` on the integer grid [0, 255]. Images are returned quantized to ``k / 255``.
    A model so confident that the gradient vanishes entirely yields no adversarial (``found`` false).

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
        >>> attack = make_host().attacks.create("fgv", {"pass_threshold": 0.9})
        >>> result = attack(model, images, labels)
        >>> result.extra["success"], result.extra["s"]
    """

    name = "fgv"
    params = LineSearchAttack.common_params

    def directions(self, model, images, labels):
        return loss_gradient(model, images, labels), {}
