"""Inference sessions over every artefact edgecnn produces, one adapter per runtime.

Validation and benchmarks both run models through these, so a model is fed (layout, quantisation,
batch) the same way everywhere. Heavy runtimes are imported only when asked for: a missing
tflite-runtime never breaks the ONNX path.
"""

from __future__ import annotations

import fnmatch
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgecnn.errors import BadInputError, ParameterError, TargetUnavailableError
from edgecnn.quiet import native_stderr_muted, onnxruntime_log_severity
from edgecnn.registry import Registry
from edgecnn.runtimes.batching import join_outputs, run_in_batches, split_batch
from edgecnn.runtimes.tflite_io import quantize_input


class Session(Protocol):
    """A loaded model: bind an input once, invoke many times, read the float outputs.

    ``outputs()`` lists every output in the model's order; ``output()`` is the first (the
    logits a classifier's accuracy is measured on).
    """

    runtime: str

    def bind(self, x: np.ndarray) -> None: ...

    def invoke(self) -> None: ...

    def output(self) -> np.ndarray: ...

    def outputs(self) -> list[np.ndarray]: ...


def predict(session: Session, x: np.ndarray) -> np.ndarray:
    session.bind(x)
    session.invoke()
    return session.output()


def predict_all(session: Session, x: np.ndarray) -> list[np.ndarray]:
    session.bind(x)
    session.invoke()
    return session.outputs()


@dataclass(frozen=True)
class Runtime:
    name: str
    suffixes: tuple[str, ...]
    module: str  # import name that must be present
    open: Callable[..., Session]
    opt_in: bool = False  # run only when named (a PyTorch placement such as torch-cuda:fp16)

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


RUNTIMES: Registry[Runtime] = Registry("runtime")
QDQ_REFERENCE = "qdq-reference"  # onnxruntime with optimisations off: int8 semantics
# TFLite files up to this size are read whole and unpacked (read_tflite: indices, then the
# verifier); bigger (float VGG-class) files get the verifier alone, on the mapped file, which
# checks the same indices and copies nothing.
STRUCTURE_CHECK_BYTES = 64 << 20


def model_format(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".pt": "pytorch", ".pt2": "pytorch", ".onnx": "onnx", ".tflite": "tflite"}.get(
        suffix, "unknown")


RUNTIME_GRAMMAR = ("comma-separated runtime names or globs, e.g. onnxruntime,litert or "
                   "'torch-cuda:*:graph'")


def match_runtimes(asked: str, names: Iterable[str]) -> list[str]:
    """The ``runtime`` choice, one grammar wherever a runtime is chosen (validate, and bench on
    every target): comma-separated names or globs, matched against ``names`` in their order."""
    patterns = [p.strip() for p in asked.split(",") if p.strip()]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def named_exactly(asked: str | None) -> set[str]:
    """The runtimes ``asked`` names without a glob: those must run, not be skipped."""
    return {p.strip() for p in (asked or "").split(",") if p.strip() and not set(p) & set("*?[")}


def runtimes_for(path: Path, asked: str | None = None) -> list[str]:
    """Installed runtimes that read ``path``'s format, or those of them ``asked`` chooses
    (:data:`RUNTIME_GRAMMAR`; opt-in runtimes only when chosen)."""
    every = [n for n, r in RUNTIMES.items() if path.suffix.lower() in r.suffixes]
    if not every:
        raise BadInputError(f"{path}: unknown model format {path.suffix!r}; use .pt, .pt2, "
                            ".onnx or .tflite")
    if asked is None:
        names = [n for n in every if not RUNTIMES.get(n).opt_in]
    else:
        names = match_runtimes(asked, every)
        if not names:
            raise ParameterError(f"{path}: runtime={asked!r} matches none of the runtimes for "
                                 f"{path.suffix} files ({', '.join(every)})", "runtime")
    ready = [n for n in names if RUNTIMES.get(n).available()]
    if not ready:
        raise TargetUnavailableError(f"{path}: no installed runtime for {path.suffix}; install "
                                     f"one of {', '.join(RUNTIMES.get(n).module for n in names)}")
    return ready


def open_session(path: Path, runtime: str, threads: int | None = None, **options: Any) -> Session:
    """Open ``path`` with ``runtime``; ``options`` go to the session (e.g. ONNX providers)."""
    opener = RUNTIMES.get(runtime).open
    return opener(path, threads, **options) if options else opener(path, threads)


# -- PyTorch ------------------------------------------------------------------------------
class TorchSession:
    runtime = "torch"

    def __init__(self, path: Path, threads: int | None, trust_pickle: bool = False,
                 arch: str | None = None) -> None:
        import torch

        from edgecnn.files.torch_files import load_torch_model

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.model = load_torch_model(path, trust_pickle=trust_pickle, arch=arch)
        self._x: Any = None
        self._y: Any = None

    def bind(self, x: np.ndarray) -> None:
        self._x = self._torch.from_numpy(np.ascontiguousarray(x, np.float32))

    def invoke(self) -> None:
        from edgecnn.files.torch_files import output_leaves

        batches = split_batch(self._x, self.model.static_batch, self.model.path)
        try:
            with self._torch.inference_mode():
                self._y = join_outputs([output_leaves(self.model.module(b)) for b in batches])
        except AssertionError as exc:  # torch.export's guards: "Guard failed: x.size()[0] <= 65536"
            raise BadInputError(f"{self.model.path}: cannot run a batch of {len(self._x)}: the "
                                f"export allows only {_guard(exc)}; use a "
                                "smaller batch or re-export it") from None
        except RuntimeError as exc:
            if "allocate" not in str(exc):
                raise
            raise BadInputError(f"{self.model.path}: a batch of {len(self._x)} does not fit in "
                                "memory; use a smaller batch") from None

    def output(self) -> np.ndarray:
        return self.outputs()[0]

    def outputs(self) -> list[np.ndarray]:
        return list(self._y)


def _guard(exc: AssertionError) -> str:
    return " ".join(str(exc).split()).removeprefix("Guard failed:").strip()[:160]


# -- onnxruntime --------------------------------------------------------------------------
class OnnxSession:
    """onnxruntime; ``reference=True`` computes an int8 QDQ model's float reading, the same on
    every CPU (see :mod:`edgecnn.converters.qdq`)."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int | None, providers: list[str] | None = None,
                 reference: bool = False) -> None:
        import onnxruntime as ort

        from edgecnn.converters.qdq import reference_session_options
        from edgecnn.runtimes.isa import exact_int8_options

        options = reference_session_options() if reference else exact_int8_options(
            ort.SessionOptions())
        if reference:
            self.runtime = QDQ_REFERENCE
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = onnxruntime_log_severity()
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BadInputError(f"{path}: onnxruntime cannot load it "
                                f"({str(exc).splitlines()[0][:200]})") from None
        self.path = path
        self.input_name = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0] if self.session.get_inputs()[0].shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self._feed: dict[str, np.ndarray] = {}
        self._y: list[np.ndarray] | None = None

    def bind(self, x: np.ndarray) -> None:
        split_batch(x, self.fixed_batch, self.path)  # refused here, before anything is timed
        self._feed = {self.input_name: np.ascontiguousarray(x, np.float32)}

    def invoke(self) -> None:
        x = self._feed[self.input_name]
        try:
            self._y = run_in_batches(lambda b: self.session.run(None, {self.input_name: b}), x,
                                     self.fixed_batch, self.path)
        except Exception as exc:  # onnxruntime's InvalidArgument, Fail, RuntimeException...
            detail = " ".join(str(exc).split())
            raise BadInputError(f"{self.path}: onnxruntime cannot run it on input "
                                f"{list(self._feed[self.input_name].shape)} "
                                f"({detail[:240]})") from None

    def output(self) -> np.ndarray:
        return self.outputs()[0]

    def outputs(self) -> list[np.ndarray]:
        assert self._y is not None
        return list(self._y)


# -- TFLite interpreters ------------------------------------------------------------------
class TFLiteSession:
    """Feeds NCHW float batches to NHWC (or NCHW) float/int8/uint8 TFLite models."""

    def __init__(self, path: Path, threads: int | None, module: str, runtime: str,
                 reference_kernels: bool = False) -> None:
        """``reference_kernels``: TFLite's builtin reference kernels, no delegate (the code
        TFLite Micro's kernels share), where the runtime offers them."""
        from edgecnn.files.model_files import read_tflite
        from edgecnn.files.tflite_verify import verify_tflite
        from edgecnn.runtimes.isolation import probe_tflite

        if not path.is_file() or path.stat().st_size <= STRUCTURE_CHECK_BYTES:
            read_tflite(path)  # verified (edgecnn.files.tflite_verify) before any interpreter reads it
        else:
            verify_tflite(path)
        self._threads, self._reference_kernels = threads, reference_kernels
        # run once in a child process first (edgecnn.runtimes.isolation): a kernel crash is one line
        probe_tflite(path, runtime, threads=threads, reference_kernels=reference_kernels)
        interpreter_module = importlib.import_module(module)
        self.runtime = runtime
        try:
            with native_stderr_muted():
                extra = ({"experimental_op_resolver_type":
                          interpreter_module.OpResolverType.BUILTIN_REF}
                         if reference_kernels else {})
                self.interpreter = interpreter_module.Interpreter(model_path=str(path),
                                                                  num_threads=threads, **extra)
        except (ValueError, RuntimeError) as exc:
            raise BadInputError(f"{path}: {runtime} cannot load it "
                                f"({str(exc).splitlines()[0][:200]})") from None
        self.path = path
        self.input = self.interpreter.get_input_details()[0]
        self.output_details = self.interpreter.get_output_details()  # the file's output order
        self.model_shape = tuple(int(d) for d in self.input["shape"])
        signature = self.input.get("shape_signature")
        # a file written for one batch size (onnx2tf's, most exporters'): fed in chunks of it
        self.fixed_batch = (int(signature[0]) if signature is not None and len(signature)
                            and int(signature[0]) > 0 else None)
        self.nhwc = True
        self._batch = -1
        self._chunks: list[np.ndarray] = []
        self._results: list[list[np.ndarray]] | None = None

    def bind(self, x: np.ndarray) -> None:
        batches = split_batch(x, self.fixed_batch, self.path)
        self._chunks = batches if len(batches) > 1 else []
        self._set(batches[0])

    def _set(self, x: np.ndarray) -> None:
        self._results = None
        if x.shape[0] != self._batch:
            self.nhwc = x.ndim == 4 and self.model_shape[1:] != tuple(x.shape[1:])
            shape = (x.shape[0], *x.shape[2:], x.shape[1]) if self.nhwc else x.shape
            if tuple(shape) != self.model_shape:  # a new batch: its own first run in a child
                from edgecnn.runtimes.isolation import probe_tflite

                probe_tflite(self.path, self.runtime, shape, threads=self._threads,
                             reference_kernels=self._reference_kernels)
            self.interpreter.resize_tensor_input(self.input["index"], list(shape))
            try:
                with native_stderr_muted():
                    self.interpreter.allocate_tensors()
            except RuntimeError as exc:
                raise BadInputError(f"{self.path}: {self.runtime} cannot prepare it "
                                    f"({str(exc).splitlines()[0][:200]})") from None
            self._batch = x.shape[0]
        data = x.transpose(0, 2, 3, 1) if self.nhwc else x
        self.interpreter.set_tensor(self.input["index"], quantize_input(data, self.input))

    def invoke(self) -> None:
        if not self._chunks:
            self._invoke()
            return
        results = []
        for chunk in self._chunks:
            self._set(chunk)
            self._invoke()
            results.append([self._read(detail) for detail in self.output_details])
        self._results = results

    def _invoke(self) -> None:
        try:
            self.interpreter.invoke()
        except (RuntimeError, ValueError) as exc:
            raise BadInputError(f"{self.path}: {self.runtime} cannot run it "
                                f"({str(exc).splitlines()[0][:200]})") from None

    def output(self) -> np.ndarray:
        return self.outputs()[0]

    def outputs(self) -> list[np.ndarray]:
        if self._results is not None:
            return join_outputs(self._results)
        return [self._read(detail) for detail in self.output_details]

    def _read(self, detail: dict) -> np.ndarray:
        y = self.interpreter.get_tensor(detail["index"])
        scale, zero = detail["quantization"]
        if detail["dtype"] != np.float32 and scale:
            y = (y.astype(np.float32) - zero) * np.float32(scale)
        return y.transpose(0, 3, 1, 2) if (y.ndim == 4 and self.nhwc) else y


RUNTIMES.register("torch")(Runtime("torch", (".pt", ".pt2"), "torch", TorchSession))
# PyTorch at other precisions and devices (edgecnn.runtimes.placements), scored when asked for by name
PLACED_RUNTIMES = ("torch-cpu:fp16", "torch-cpu:bf16", "torch-cuda:fp32", "torch-cuda:tf32",
                   "torch-cuda:fp16", "torch-cuda:bf16")


def _placed_opener(name: str) -> Callable[..., Session]:
    def open_placed(path: Path, threads: int | None, **options: Any) -> Session:
        from edgecnn.runtimes.placements import PlacedSession, Placement

        return PlacedSession(path, threads, Placement.parse(name), **options)
    return open_placed


for _name in PLACED_RUNTIMES:
    RUNTIMES.register(_name)(Runtime(_name, (".pt", ".pt2"), "torch", _placed_opener(_name),
                                     opt_in=True))
def reference_session(path: Path, threads: int | None = None) -> OnnxSession:
    """The int8 reference: onnxruntime with every graph optimisation off."""
    return OnnxSession(path, threads, reference=True)


RUNTIMES.register("onnxruntime")(Runtime("onnxruntime", (".onnx",), "onnxruntime", OnnxSession))
RUNTIMES.register("litert")(Runtime(
    "litert", (".tflite",), "ai_edge_litert",
    lambda p, t: TFLiteSession(p, t, "ai_edge_litert.interpreter", "litert")))
RUNTIMES.register("tflite-runtime")(Runtime(
    "tflite-runtime", (".tflite",), "tflite_runtime",
    lambda p, t: TFLiteSession(p, t, "tflite_runtime.interpreter", "tflite-runtime")))


def _open_micro(path: Path, threads: int | None) -> Session:
    from edgecnn.runtimes.tflm import MicroSession

    return MicroSession(path, threads)


# the microcontroller runtime (edgecnn.runtimes.tflm): scored when named, e.g. validate --runtime tflite-micro
RUNTIMES.register("tflite-micro")(Runtime("tflite-micro", (".tflite",), "tflite_micro",
                                          _open_micro, opt_in=True))
