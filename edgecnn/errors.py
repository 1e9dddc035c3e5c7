"""Exit statuses and the exceptions that map onto them.

Every failure a user can cause is an :class:`EdgecnnError` carrying a one-line message that names
the thing at fault (file, op, node, shape) and how to fix it. The CLI turns these into exit codes in
one place (:func:`edgecnn.cli.main`), the way httpie's ``status.py`` does, so library code never
calls ``sys.exit`` and Python callers can catch precise types.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes of the ``edgecnn`` command."""

    OK = 0
    CHECK_FAILED = 1  # a parity / accuracy threshold was broken
    BAD_INPUT = 2  # bad usage, bad file, unsupported model, unavailable target
    INTERRUPTED = 130


class EdgecnnError(Exception):
    """Base class: a problem the user can fix, reported as one line.

    A message that names arguments spells them as the Python API does, ``name=value`` or a bare
    name in backticks (``max_drop_pp=-1.0``, ```int8_for```), and lists them in ``parameters``,
    so that the CLI can respell exactly those as its flags (``--max-drop -1.0``, ``--for``):
    library errors speak in API terms. Bare words are never respelled (``runtime`` is also a
    word).
    """

    exit_status: ExitStatus = ExitStatus.BAD_INPUT

    def __init__(self, *args: object, parameters: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.parameters = parameters

    def respelled(self, spell: Callable[[str], str]) -> str:
        """The message with each of ``parameters`` written as ``spell(name)``: ``name=True`` and
        ```name``` become the flag, ``name=value`` the flag and its value."""
        text = str(self)
        for name in sorted(self.parameters, key=len, reverse=True):
            flag, word = spell(name), rf"(?<![\w.-]){re.escape(name)}"
            text = text.replace(f"`{name}`", flag)
            text = re.sub(word + r"=True\b", flag, text)
            text = re.sub(word + "=", flag + " ", text)
        return text


class BadInputError(EdgecnnError):
    """A file, dataset or argument that edgecnn cannot use as given."""


class ParameterError(BadInputError, ValueError):
    """An argument that cannot be used as given (a config's validation): a ValueError to Python
    callers, exit status 2 to the CLI. Name the parameters: ``ParameterError(msg, "runs")``."""

    def __init__(self, message: str, *parameters: str) -> None:
        super().__init__(message, parameters=parameters)


class ModelLoadError(BadInputError):
    """A model file that cannot be loaded safely."""


class DataError(BadInputError):
    """A dataset that is missing, malformed or does not fit the model."""


class ConversionError(BadInputError):
    """A model that cannot be converted to the requested format."""


class UnsupportedOpsError(ConversionError):
    """The graph holds operators that the converter has no lowering for."""


class TargetUnavailableError(BadInputError):
    """A benchmark target or runtime that is not usable on this machine or device."""


class RemoteError(BadInputError):
    """A remote device that could not be reached or used (SSH)."""


class CheckFailedError(EdgecnnError):
    """A parity or accuracy threshold was broken: exit status 1."""

    exit_status = ExitStatus.CHECK_FAILED
