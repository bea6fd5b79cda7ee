"""Device choice and seeding."""

from __future__ import annotations

import contextlib
import os
import platform
import random
from typing import Any, Iterator

import numpy as np
import torch

from robustkit.errors import RobustkitError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda:N`` is checked to exist.

    A CUDA device also switches cuDNN to deterministic kernels (:func:`deterministic_cuda`).
    """
    device = _resolve(spec)
    if device.type == "cuda":
        deterministic_cuda()
    return device


def deterministic_cuda() -> None:
    """Deterministic cuDNN kernels, so a seeded GPU run repeats bit for bit and a resumed run equals an
    uninterrupted one (cuDNN's fastest convolution backward sums with atomics, in a varying order).

    Seen on an H100: without it, two runs of one benchmark spec and seed exported different leaderboards.
    ``ROBUSTKIT_DETERMINISTIC=0`` keeps torch's defaults (faster, not repeatable).
    """
    if os.environ.get("ROBUSTKIT_DETERMINISTIC", "1") != "0":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _resolve(spec: str | torch.device | None) -> torch.device:
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RobustkitError(f"--device {spec}: no CUDA GPU is visible here; use --device cpu or auto")
        try:
            device = torch.device(spec)
        except RuntimeError:
            raise RobustkitError(f"--device {spec}: not a device name; use auto, cpu, cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RobustkitError(
                f"--device {spec}: only {torch.cuda.device_count()} GPU(s) are visible; use cuda:0..."
            )
        return device
    raise RobustkitError(f"--device {spec}: unknown device; use auto, cpu, cuda or cuda:N")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    # torch.manual_seed also queues lazy seeding for every accelerator backend (capturing a stack trace
    # each time, ~0.6 ms); seed the CPU generator and only the CUDA devices that exist.
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op CPU threads (None: leave as is).

    CPU results depend on the thread count (reductions are split differently), so a benchmark fixes it
    for every cell however the cells are scheduled.
    """
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def device_name(device: torch.device) -> str:
    """What ``device`` is, for records: the GPU's name, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def numeric_environment(device: torch.device, threads: int) -> dict[str, Any]:
    """What, besides the settings, decides a run's numbers: device kind, CPU threads, default dtype, torch
    version; on the CPU, the instruction set torch's kernels use (``cpu_capability``: kernels for other vector
    instructions round differently, and adversarial training amplifies it into other models); on CUDA, the GPU's
    name and whether cuDNN ran its deterministic kernels."""
    env: dict[str, Any] = {"device": device.type, "threads": int(threads), "torch": torch.__version__,
                           "dtype": str(torch.get_default_dtype()).removeprefix("torch.")}
    if device.type == "cuda":
        env["cudnn_deterministic"] = bool(torch.backends.cudnn.deterministic)
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return env


def environment_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first field in which two numeric environments differ, as ``field a vs b`` (None: they agree). A field
    only one of them states (records made before it was recorded) is not a difference."""
    for key in sorted(set(a) & set(b)):
        if a.get(key) != b.get(key):
            return f"{key} {a.get(key)} vs {b.get(key)}"
    return None
