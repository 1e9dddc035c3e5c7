"""The model and data edgecnn ships, found as package data wherever edgecnn is installed.

The repository's ``models/`` folder is the package ``edgecnn.models`` (pyproject's package-dir),
so a regular install, an editable install and a source checkout all reach the same files through
:mod:`importlib.resources`; nothing here is a path relative to the source tree. A shipped model can
be named without a path (``edgecnn inspect lenet5``): :func:`resolve_model` turns the short name
into the installed file, and a file of that name in the working folder still wins.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from importlib import resources
from pathlib import Path

_PACKAGE = "edgecnn.models"
_MODEL_SUFFIX = ".pt"


def _materialise() -> Path:
    """The shipped folder on disk: a zip import is unpacked once, for this process's life."""
    root = resources.files(_PACKAGE)
    if isinstance(root, Path):
        return root
    if sys.version_info < (3, 12):  # as_file() takes folders from 3.12 on
        raise ImportError("edgecnn's shipped data is inside a zip archive, which Python "
                          f"{sys.version_info.major}.{sys.version_info.minor} cannot unpack as a "
                          "folder; install edgecnn as files (pip install, not a zipapp)")
    stack = contextlib.ExitStack()
    atexit.register(stack.close)
    return Path(stack.enter_context(resources.as_file(root)))


SHIPPED_ROOT = _materialise()
SHIPPED_DATA = SHIPPED_ROOT / "data"
SHIPPED_TEST_SET = SHIPPED_DATA / "mnist"  # the 10,000 MNIST test images, IDX .gz
SHIPPED_CALIBRATION_SET = SHIPPED_DATA / "mnist-calib.npz"  # 1,000 MNIST training images


def shipped_models() -> dict[str, Path]:
    """Short name -> file of every trained model that ships (``lenet5`` -> .../lenet5.pt)."""
    return {path.stem: path for path in sorted(SHIPPED_ROOT.glob(f"*{_MODEL_SUFFIX}"))}


def resolve_model(model: str | Path) -> Path:
    """A model argument as a path: a string naming no file and holding no folder separator may
    be a shipped model's short name; a :class:`~pathlib.Path` is always taken as a path, so a
    resolved argument resolves to itself.

    A name that is neither an existing path nor a shipped model stays as given, so the loader
    reports it as missing in its own words.
    """
    path = Path(model)
    if not isinstance(model, str) or path.exists() or any(sep in model for sep in ("/", os.sep)):
        return path
    shipped = shipped_models().get(path.name.removesuffix(_MODEL_SUFFIX))
    return shipped if shipped is not None else path


def is_shipped(path: Path) -> bool:
    """True for a file inside the installed package data (never a place to write beside)."""
    try:
        return path.resolve().is_relative_to(SHIPPED_ROOT.resolve())
    except OSError:
        return False

