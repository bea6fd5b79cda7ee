"""Test helpers for robustkit and for every plugin distribution: tiny models and data, and contract checks.

The pytest plugin :mod:`robustkit.testing.plugin` (entry point ``pytest11``) is active wherever robustkit is
installed: it gives each test a fresh process-wide host and a private cache folder, and provides the
fixtures documented there. A plugin distribution's tests import what they need from here::

    from robustkit.testing import labelled, small_cnn
"""

from robustkit.testing.toys import (INFO, InterruptAt, ModeRecorder, digit_like, labelled, linear_model, random_batch,
                                    robust_vs_fragile, small_cnn, small_mlp, toy_info)

__all__ = ["INFO", "InterruptAt", "ModeRecorder", "digit_like", "labelled", "linear_model", "random_batch",
           "robust_vs_fragile", "small_cnn", "small_mlp", "toy_info"]
