"""PASS and SSIM as registered image metrics (``robustkit attack --metric pass``); see :mod:`.pass_metric`.

OpenCV and scikit-image are imported when a score is computed, not when the plugin registers.
"""

from __future__ import annotations

import torch

from robustkit.image_metrics import ImageMetric
from robustkit.params import Param


class PASS(ImageMetric):
    """PASS (Rozsa et al. 2016): SSIM of the adversarial aligned onto the original by an ECC homography."""

    name = "pass"
    params = (Param("ecc_blur", int, 5, "ECC's Gaussian pre-blur size (odd; 1 for none)", low=1),)

    def score(self, adversarial: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        from robustkit_hotcold.pass_metric import pass_score

        return pass_score(adversarial, clean, ecc_blur=self.config["ecc_blur"])


class SSIM(ImageMetric):
    """SSIM (Wang et al. 2004) between the adversarial and the original, without alignment."""

    name = "ssim"

    def score(self, adversarial: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        from robustkit_hotcold.pass_metric import ssim_score

        return ssim_score(adversarial, clean)
