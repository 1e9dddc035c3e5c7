"""Keep third-party chatter (deprecation warnings, log lines, progress prints) off the terminal.

torch.export, the ONNX exporters and onnxruntime's quantiser all talk while they work; edgecnn
reports results itself, so their noise is muted around the calls that make it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(*loggers: str, stdout: bool = False) -> Iterator[None]:
    """Ignore warnings, raise ``loggers`` to ERROR, and optionally swallow stdout."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")
        for name in loggers:
            logging.getLogger(name).setLevel(logging.ERROR)
        if stdout:
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def native_stderr_muted() -> Iterator[None]:
    """Silence what C++ libraries write straight to file descriptor 2 (LiteRT's "INFO: Created
    TensorFlow Lite XNNPACK delegate"), which Python-level redirection cannot catch. Errors still
    reach the user as exceptions, turned into one line by the CLI."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # captured stderr (tests)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """Like :func:`native_stderr_muted`, but keep what was written (its first 64 KiB): the list
    it yields holds the text once the block has ended, so a caller can name, in its own one
    line, the library that a native runtime failed to load."""
    captured: list[str] = []
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # captured stderr (tests)
        yield captured
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield captured
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read(1 << 16).decode(errors="replace"))


def mute_onnxruntime_log() -> None:
    """Keep onnxruntime's own coloured log lines ("[W:onnxruntime:, graph.cc:1456] Duplicate
    initializer") off the terminal: whatever it refuses reaches the user as an exception, named
    in edgecnn's one line. Process-wide; the CLI calls it unless ``--traceback`` asks for
    everything."""
    import onnxruntime

    global _onnxruntime_severity
    _onnxruntime_severity = 4  # FATAL only
    onnxruntime.set_default_logger_severity(_onnxruntime_severity)


_onnxruntime_severity = 3  # errors: a library user sees them unless the CLI mutes them


def onnxruntime_log_severity() -> int:
    """The ``log_severity_level`` for every onnxruntime session edgecnn opens: its run-time
    errors ("[E:onnxruntime:, sequential_executor.cc] Non-zero status code") are logged by the
    session's own logger, which the default logger's severity does not reach."""
    return _onnxruntime_severity
