"""Shared test settings: quiet progress bars, deterministic CPU torch."""

import os

import pytest
import torch

os.environ.setdefault("ROBUSTKIT_PROGRESS", "0")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: its tensors are tiny, and two threads wait on each other (and on
    a busy machine) more than they help. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Caches (hard positives) go to a temporary folder, never to the user's ~/.cache."""
    monkeypatch.setenv("ROBUSTKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "robustkit-cache"))


@pytest.fixture(autouse=True)
def _fresh_host():
    """Each test sees a freshly built process-wide host."""
    from robustkit.host import reset_host

    reset_host()
    yield
    reset_host()
