"""Reading pickle-based data files (CIFAR's python batches) without running code from them.

``pickle.load`` calls whatever a file names, so a crafted data file runs arbitrary code. Data files need
only dicts, lists, strings, numbers and NumPy arrays: :func:`load_data_pickle` builds those and refuses
every other global in one line, before anything is called.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from robustkit.errors import RobustkitError

#: The globals a pickled NumPy array needs (NumPy 1 and 2 spell the module differently), and the one
#: Python 3 uses for bytes at protocol 2 (``_codecs.encode(text, "latin1")``: pure data conversion).
ALLOWED = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class DataUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data and NumPy arrays and refuses any other class or function."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a data file has no need for")


def load_data_pickle(path: str | Path, encoding: str = "latin1") -> Any:
    """Unpickle the data file ``path`` safely (``encoding`` as for :func:`pickle.load`: latin1 reads Python 2's
    CIFAR files the way torchvision does).

    :raises RobustkitError: when the file asks for anything but plain data and NumPy arrays.
    """
    try:
        with open(path, "rb") as handle:
            return DataUnpickler(handle, encoding=encoding).load()
    except pickle.UnpicklingError as err:
        if "no need for" in str(err):
            raise RobustkitError(f"{path} is not a plain data file: {err}; nothing in it was run. Replace it with "
                                 "the dataset's original files") from None
        raise
