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

# edgecnn.bench and edgecnn.checks.validate name modules, which win over __getattr__ once imported:
# those two functions are edgecnn.api.bench and edgecnn.api.validate
_API = ("convert", "layers", "inspect", "ConvertConfig", "Thresholds")


def __getattr__(name: str) -> object:
    """``edgecnn.convert(...)`` and the rest of :mod:`edgecnn.api` above, imported on first
    use (the CLI's start-up never pays for torch and onnxruntime it does not need)."""
    if name in _API:
        from edgecnn import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgecnn' has no attribute {name!r}")
