"""edgecnn: int8 quantisation, PyTorch -> ONNX -> TFLite conversion without TensorFlow,
parity reports and benchmarks for small CNNs on CPU, CUDA and Raspberry Pi.

The public API lives in :mod:`edgecnn.api`; the ``edgecnn`` command is a thin layer over it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__version__ = "0.1.0"

# Installed, converters/, targets/ and models/ are edgecnn.converters, edgecnn.targets and
# edgecnn.models (setuptools package-dir). Run from a source checkout (`python -m edgecnn` at the repository root), this
# edgecnn/ shadows the installed package and has no such folders: point the two names at the
# checkout's own, after every other finder (an install or an editable finder wins).
_CHECKOUT = Path(__file__).resolve().parent.parent
_SUBPACKAGES = {f"{__name__}.{name}": _CHECKOUT / name for name in ("converters", "targets", "models")}


class _CheckoutSubpackages(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        folder = _SUBPACKAGES.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])


if (_CHECKOUT / "pyproject.toml").is_file() and all(
        (folder / "__init__.py").is_file() for folder in _SUBPACKAGES.values()) and not any(
        isinstance(finder, _CheckoutSubpackages) for finder in sys.meta_path):
    sys.meta_path.append(_CheckoutSubpackages())
