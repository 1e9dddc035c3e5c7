"""Exit statuses and the exceptions that map onto them.

Every failure a user can cause is an :class:`EdgecnnError` carrying a one-line message that names
the thing at fault (file, op, node, shape) and how to fix it. The CLI turns these into exit codes in
one place (:func:`edgecnn.cli.main`), the way httpie's ``status.py`` does, so library code never
calls ``sys.exit`` and Python callers can catch precise types.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes of the ``edgecnn`` command."""

    OK = 0
    CHECK_FAILED = 1  # a parity / accuracy threshold was broken
    BAD_INPUT = 2  # bad usage, bad file, unsupported model, unavailable target
    INTERRUPTED = 130


class EdgecnnError(Exception):
    """Base class: a problem the user can fix, reported as one line."""

    exit_status: ExitStatus = ExitStatus.BAD_INPUT


class BadInputError(EdgecnnError):
    """A file, dataset or argument that edgecnn cannot use as given."""


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
