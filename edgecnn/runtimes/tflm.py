"""TensorFlow Lite Micro run on the host: the microcontroller runtime's own kernels and memory
planner, through its Python interpreter (``pip install tflite-micro``, the ``mcu`` extra).

TFLite Micro is not LiteRT made small: it has its own reference kernels (fixed-point
requantisation, as tflite-runtime's builtin ones), no XNNPACK, no tensor resizing (batch 1,
the file's own shape) and one static arena that every tensor must fit in. A file that runs and
agrees here runs on the board with the same kernels; what it cannot tell is the board's speed.
The arena a file needs is found by bisection on the arena size, the way it is sized for a
board; the host's 64-bit build needs a little more than a 32-bit MCU (wider pointers in the
interpreter's structures), so the figure is an upper bound there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import BadInputError, TargetUnavailableError
from edgecnn.quiet import native_stderr_muted

RUNTIME = "tflite-micro"
ARENA_STEP = 16  # TFLite Micro aligns arena allocations to 16 bytes
MAX_ARENA = 1 << 30  # bisection ceiling: no microcontroller holds more
PROBE_ARENA = 16 << 20  # the child's first run: this plus 16 bytes a byte of the file


def _interpreter_module() -> Any:
    try:
        from tflite_micro import runtime
    except ImportError:
        raise TargetUnavailableError("TFLite Micro is not installed: pip install "
                                     "'edgecnn[mcu]' (tflite-micro)") from None
    return runtime


def _details(detail: dict[str, Any]) -> dict[str, Any]:
    """TFLite Micro's tensor details in the form LiteRT's take (``quantization``: scale, zero)."""
    params = detail.get("quantization_parameters") or {}
    scales, zeros = params.get("scales"), params.get("zero_points")
    scale = float(scales[0]) if scales is not None and len(scales) else 0.0
    zero = int(zeros[0]) if zeros is not None and len(zeros) else 0
    return {"dtype": detail["dtype"], "shape": tuple(int(d) for d in detail["shape"]),
            "quantization": (scale, zero)}


def _probe(path: Path, arena_size: int) -> None:
    """Open and invoke the file once in a child process (edgecnn.runtimes.isolation): a crash of TFLite
    Micro's kernels is one line. The bisection's smaller arenas then run in-process: there
    TFLite Micro's planner only fails to fit tensors, before any kernel runs."""
    from edgecnn.runtimes.isolation import probe_tflite

    _interpreter_module()  # one line when tflite-micro is missing
    probe_tflite(path, RUNTIME, arena_size=min(arena_size, MAX_ARENA))


def _open(path: Path, arena_size: int | None) -> Any:
    runtime = _interpreter_module()
    with native_stderr_muted():  # an arena too small is reported on fd 2 before it raises
        return runtime.Interpreter.from_file(str(path), arena_size=arena_size)


def _allocates_in(path: Path, arena_size: int) -> bool:
    """Whether TFLite Micro plans every tensor into ``arena_size`` bytes (it does so when the
    interpreter is built: nothing is allocated at invoke)."""
    try:
        _open(path, arena_size)
    except RuntimeError:
        return False
    return True


def _first_complaint(path: Path, arena_size: int) -> str:
    """What TFLite Micro says when it cannot open or run ``path`` (its first line), e.g. the
    op it has no kernel for."""
    from edgecnn.quiet import native_stderr_captured

    runtime = _interpreter_module()
    with native_stderr_captured() as log:
        try:
            interpreter = runtime.Interpreter.from_file(str(path), arena_size=arena_size)
            detail = _details(interpreter.get_input_details(0))
            interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
            interpreter.invoke()
            error = ""
        except RuntimeError as exc:
            error = str(exc)
    lines = [line.strip() for line in ("".join(log) + "\n" + error).splitlines() if line.strip()]
    return lines[0][:200] if lines else "no message"


def _runs_with(path: Path, arena_size: int) -> bool:
    try:
        interpreter = _open(path, arena_size)
        detail = _details(interpreter.get_input_details(0))
        interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
        with native_stderr_muted():
            interpreter.invoke()
    except RuntimeError:
        return False
    return True


def smallest_arena(path: Path) -> int:
    """The smallest tensor arena (bytes, to 16) this file allocates and runs in."""
    from edgecnn.files.model_files import read_tflite

    read_tflite(path)  # verified before TFLite Micro parses it
    _probe(path, PROBE_ARENA + 16 * path.stat().st_size)
    high = max(1 << 12, 4 * path.stat().st_size)
    while not _allocates_in(path, high):
        if high >= MAX_ARENA:
            raise BadInputError(f"{path}: TFLite Micro cannot open it even in a "
                                f"{MAX_ARENA >> 20} MiB arena: {_first_complaint(path, high)}")
        high *= 2
    low = 0  # fails (or is 0)
    while high - low > ARENA_STEP:
        middle = (low + high) // 2 // ARENA_STEP * ARENA_STEP or ARENA_STEP
        if middle <= low:
            break
        if _allocates_in(path, middle):
            high = middle
        else:
            low = middle
    if not _runs_with(path, high):  # planned but not runnable: an op TFLite Micro lacks
        raise BadInputError(f"{path}: TFLite Micro plans it in {high:,} bytes but cannot run it: "
                            f"{_first_complaint(path, high)}")
    return high


class MicroSession:
    """A :class:`edgecnn.runtimes.sessions.Session` over TFLite Micro: NCHW float batches in, float
    outputs out, one image per invoke (TFLite Micro cannot resize a tensor)."""

    runtime = RUNTIME

    def __init__(self, path: Path, threads: int | None = None,
                 arena_size: int | None = None) -> None:
        from edgecnn.files.model_files import read_tflite

        model, _ = read_tflite(path)  # verified before TFLite Micro parses it
        self.path = path
        if arena_size:
            _probe(path, arena_size)
        self.arena_size = arena_size or smallest_arena(path)
        try:
            self.interpreter = _open(path, self.arena_size)
            self.input = _details(self.interpreter.get_input_details(0))
            self.output_details = [_details(self.interpreter.get_output_details(i))
                                   for i in range(len(model.subgraphs[0].outputs))]
        except (RuntimeError, ValueError) as exc:
            raise BadInputError(f"{path}: {RUNTIME} cannot load it "
                                f"({str(exc).splitlines()[0][:200]})") from None
        self.model_shape = self.input["shape"]
        self._x: np.ndarray | None = None
        self._y: list[np.ndarray] | None = None

    def bind(self, x: np.ndarray) -> None:
        self._x, self._y = x, None

    def invoke(self) -> None:
        from edgecnn.runtimes.tflite_io import quantize_input

        assert self._x is not None
        x = self._x
        nhwc = x.ndim == 4 and self.model_shape[1:] != tuple(x.shape[1:])
        images = x.transpose(0, 2, 3, 1) if nhwc else x
        per_output: list[list[np.ndarray]] = [[] for _ in self.output_details]
        for image in images:
            data = quantize_input(image[None], self.input)
            try:
                self.interpreter.set_input(data.reshape(self.model_shape), 0)
                with native_stderr_muted():
                    self.interpreter.invoke()
            except (RuntimeError, ValueError) as exc:
                raise BadInputError(f"{self.path}: {RUNTIME} cannot run it "
                                    f"({str(exc).splitlines()[0][:200]})") from None
            for index, detail in enumerate(self.output_details):
                per_output[index].append(self._read(index, detail, nhwc))
        self._y = [np.concatenate(parts) for parts in per_output]

    def _read(self, index: int, detail: dict[str, Any], nhwc: bool) -> np.ndarray:
        y = np.array(self.interpreter.get_output(index))
        scale, zero = detail["quantization"]
        if detail["dtype"] != np.float32 and scale:
            y = (y.astype(np.float32) - zero) * np.float32(scale)
        return y.transpose(0, 3, 1, 2) if (y.ndim == 4 and nhwc) else y

    def output(self) -> np.ndarray:
        return self.outputs()[0]

    def outputs(self) -> list[np.ndarray]:
        assert self._y is not None
        return list(self._y)
