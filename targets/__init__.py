"""Benchmark targets, one module each, found by name and imported only when asked for.

Like tinygrad's device lookup: asking for ``cpu`` never imports what ``cuda`` or ``rpi`` need.
"""

from __future__ import annotations

import importlib

from edgecnn.errors import BadInputError
from edgecnn.targets.base import Target

TARGET_MODULES = {"cpu": "edgecnn.targets.cpu", "cuda": "edgecnn.targets.cuda",
                  "rpi": "edgecnn.targets.rpi", "ethos-u": "edgecnn.targets.ethos_u",
                  "mcu": "edgecnn.targets.mcu"}


def get_target(name: str, **options: object) -> Target:
    if name not in TARGET_MODULES:
        raise BadInputError(f"unknown target {name!r}; choose from {', '.join(TARGET_MODULES)}")
    module = importlib.import_module(TARGET_MODULES[name])
    return module.TARGET(**options)
