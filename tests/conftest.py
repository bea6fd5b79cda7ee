"""Settings of this suite: CPU torch on at most two threads (the fixtures come from robustkit.testing.plugin)."""

import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
