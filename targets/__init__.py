"""Benchmark targets, one module each, found by name and imported only when asked for.

A target is a module here whose ``TARGET`` implements :class:`~edgecnn.targets.base.Target`;
its name is the module's, with ``-`` for ``_`` (``ethos_u.py`` is ``ethos-u``). Like tinygrad's
device lookup: asking for ``cpu`` never imports what ``cuda`` or ``rpi`` need, and listing the
targets imports none of them. ``support/`` holds what targets share but is not a target.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from edgecnn.errors import BadInputError
from edgecnn.targets.base import Target

NOT_TARGETS = {"base"}


def target_names() -> list[str]:
    """Every target, by the name ``--target`` takes, in the order cpu first then by name."""
    names = [m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__)
             if not m.ispkg and m.name not in NOT_TARGETS and not m.name.startswith("_")]
    return sorted(names, key=lambda n: (n != "cpu", n))


def target_class(name: str) -> type[Target]:
    if name not in target_names():
        raise BadInputError(f"unknown target {name!r}; choose from {', '.join(target_names())}")
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    cls = getattr(module, "TARGET", None)
    if not (isinstance(cls, type) and issubclass(cls, Target)):
        raise BadInputError(f"targets/{module.__name__.rsplit('.', 1)[-1]}.py has no TARGET "
                            "class implementing Target")
    return cls


def target_options(name: str) -> list[str]:
    """The options target ``name`` takes: its constructor's keyword arguments."""
    parameters = inspect.signature(target_class(name).__init__).parameters
    return [p for p in parameters if p != "self"
            and parameters[p].kind in (inspect.Parameter.KEYWORD_ONLY,
                                       inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def get_target(name: str, **options: Any) -> Target:
    """Target ``name`` built with ``options``; an option it does not take is refused, naming
    the targets that do take it."""
    unknown = [o for o in options if o not in target_options(name)]
    if unknown:
        raise BadInputError("; ".join(
            f"{o!r} is not an option of target {name}"
            + (f" (it is for {', '.join(owners)})" if (owners := targets_taking(o, name)) else "")
            for o in unknown))
    return target_class(name)(**options)


def targets_taking(option: str, besides: str = "") -> list[str]:
    """The targets (other than ``besides``) whose constructor takes ``option``."""
    owners = []
    for name in target_names():
        try:
            if name != besides and option in target_options(name):
                owners.append(name)
        except ImportError:  # a target that cannot import here takes nothing we can see
            pass
    return owners
