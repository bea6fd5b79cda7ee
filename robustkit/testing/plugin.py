"""robustkit's pytest plugin (entry point ``pytest11``): the settings and fixtures every robustkit test suite needs.

Active in any pytest session where robustkit is installed, so a plugin distribution's tests get them without a
conftest. Autouse, for every test:

- progress bars off (``ROBUSTKIT_PROGRESS=0``), so failures show plain output;
- caches (hard positives, ...) in a temporary folder, never the user's ``~/.cache``;
- a freshly built process-wide host before and after the test, so environment switches a test sets
  (``ROBUSTKIT_LOAD_PLUGINS``) and plugins it installs take effect.

Fixtures on request:

- ``one_torch_thread`` (module scope): one intra-op thread for a module of tiny tensors (two threads wait on
  each other more than they help). Use ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for the module; the previous count is restored after it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _robustkit_test_environment(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                                ) -> Iterator[None]:
    """Quiet progress, a private cache folder, and a fresh process-wide host for each test."""
    from robustkit.host import reset_host

    monkeypatch.setenv("ROBUSTKIT_PROGRESS", os.environ.get("ROBUSTKIT_PROGRESS", "0"))
    monkeypatch.setenv("ROBUSTKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "robustkit-cache"))
    reset_host()
    yield
    reset_host()
