"""PyTorch at a chosen device, precision and execution mode, and the check that it is still right.

GPU deployments run PyTorch in fp16 or bf16, channels_last with cuDNN autotuning, and replay CUDA
graphs. Each of those is a *placement* here, named like a runtime (``torch-cuda:fp16:graph``), so
`bench` times it and `validate` scores it like any other artefact.

A fast row means nothing if its outputs moved: :func:`check_parity` compares a placement's outputs
with the CPU fp32 reference on the same input, within a relative tolerance per precision
(:data:`TOLERANCE`, measured over the zoo and 18 torchvision CNNs by
``scripts/precision_error.py``; docs/precision.md), and requires the same top-1 class wherever
the reference clearly decides (:data:`DECISIVE_MARGIN`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import BadInputError, CheckFailedError, TargetUnavailableError

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
MODES = ("eager", "tuned", "graph")  # tuned: channels_last + cuDNN autotuning; graph: + replay
# Largest accepted max|y - ref| / max|ref| per output against CPU fp32. fp32 is the 1e-4
# (cuDNN's fp32 algorithms sum in another order, nothing more). The others are 2 (bf16) to 4
# (fp16) times the worst error measured on CPU over the zoo and 18 torchvision CNNs
# (docs/precision.md): fp16/tf32 keep 10 mantissa bits, bf16 7.
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 1e-2, "bf16": 6e-2}
# The top-1 class must not change where the reference's top-1 leads its runner-up by more than
# this share of the largest |logit|: within the relative bound bf16 could still reorder such a
# clear decision (a 5 % move); fp32/fp16 cannot.
DECISIVE_MARGIN = 0.1


@dataclass(frozen=True)
class Placement:
    """Where and how a PyTorch model runs: ``torch-<device>:<precision>[:<mode>]``."""

    device: str
    precision: str
    mode: str = "eager"

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise BadInputError(f"placement device {self.device!r}: use cpu or cuda")
        if self.precision not in PRECISIONS:
            raise BadInputError(f"precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        if self.mode not in MODES:
            raise BadInputError(f"mode {self.mode!r}: use {', '.join(MODES)}")
        if self.device == "cpu" and (self.mode != "eager" or self.precision == "tf32"):
            raise BadInputError(f"{self.name}: the CPU runs eager fp32, fp16 or bf16 only")

    @property
    def name(self) -> str:
        tail = "" if self.mode == "eager" else f":{self.mode}"
        return f"torch-{self.device}:{self.precision}{tail}"

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.precision]

    @classmethod
    def parse(cls, name: str) -> Placement:
        """``torch-cuda:fp16:graph`` -> Placement("cuda", "fp16", "graph")."""
        head, _, rest = name.partition(":")
        if not head.startswith("torch-") or not rest:
            raise BadInputError(f"runtime {name!r}: a PyTorch placement reads "
                                "torch-<cpu|cuda>:<fp32|tf32|fp16|bf16>[:<eager|tuned|graph>]")
        precision, _, mode = rest.partition(":")
        return cls(head.removeprefix("torch-"), precision, mode or "eager")

    def unavailable_reason(self) -> str | None:
        """Why this placement cannot run here, or None."""
        import torch

        if self.device == "cuda":
            if not torch.cuda.is_available():
                return ("no CUDA device for PyTorch (torch.cuda.is_available() is False: no GPU "
                        "or a CPU-only torch)")
            if self.precision == "bf16" and not bf16_native():
                return f"{torch.cuda.get_device_name(0)} has no bf16"
        return None


def bf16_native() -> bool:
    """Whether the GPU computes bf16 itself (Ampere and later), not by emulation."""
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before 2.4 has no such argument and does not emulate
        return bool(torch.cuda.is_bf16_supported())


def dtype_of(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
            "bf16": torch.bfloat16}[precision]


@contextlib.contextmanager
def backend_flags(placement: Placement) -> Iterator[None]:
    """TF32 only where asked for (torch lets cuDNN use it for fp32 by default: an "fp32" row
    would silently be tf32), cuDNN autotuning for tuned and graph modes; restored after.

    Set once around a whole row, not per invoke: the flags matter when kernels are chosen, and
    setting them costs microseconds that a LeNet-sized eager row would time."""
    import torch

    backends = torch.backends
    conv = getattr(backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9's precision API
        holders = [(conv, "fp32_precision"), (backends.cuda.matmul, "fp32_precision")]
        wanted: Any = "tf32" if placement.precision == "tf32" else "ieee"
    else:
        holders = [(backends.cudnn, "allow_tf32"), (backends.cuda.matmul, "allow_tf32")]
        wanted = placement.precision == "tf32"
    holders.append((backends.cudnn, "benchmark"))
    saved = [getattr(obj, attr) for obj, attr in holders]
    for obj, attr in holders[:-1]:
        setattr(obj, attr, wanted)
    backends.cudnn.benchmark = placement.mode != "eager"
    try:
        yield
    finally:
        for (obj, attr), value in zip(holders, saved, strict=True):
            setattr(obj, attr, value)


def move_module(module: Any, device: str, dtype: Any) -> Any:
    """What ``Module.to`` leaves behind in a torch.export program: its dtype/device assertions
    (``_assert_tensor_metadata``, written for the float32 CPU tensors it was traced with) are
    dropped, and constants lifted from ``forward`` (plain tensor attributes, not parameters or
    buffers) are moved too."""
    import torch
    from torch import fx

    assertion = getattr(torch.ops.aten, "_assert_tensor_metadata", None)
    for sub in module.modules():
        if isinstance(sub, fx.GraphModule) and assertion is not None:
            checks = [n for n in sub.graph.nodes
                      if n.op == "call_function" and n.target is assertion.default]
            for node in checks:
                sub.graph.erase_node(node)
            if checks:
                sub.recompile()
        for name, value in list(vars(sub).items()):
            if isinstance(value, torch.Tensor):  # parameters and buffers live elsewhere
                setattr(sub, name, value.to(device, dtype if value.is_floating_point()
                                            else value.dtype))
    return module.to(device, dtype)


class PlacedModel:
    """A PyTorch model moved to a placement, with a static input it runs on.

    ``launch()`` enqueues one forward pass (on a GPU it returns before the work is done: the
    caller synchronises); graph mode captures the pass once as a CUDA graph and replays it.
    Run it inside ``backend_flags(placement)``. A model that cannot run there (a ``view`` of a
    channels_last activation, a dtype hard-coded in ``forward``) raises
    :class:`TargetUnavailableError` in one line.
    """

    def __init__(self, path: Path, placement: Placement, *, trust_pickle: bool = False,
                 arch: str | None = None) -> None:
        import torch

        from edgecnn.files.torch_files import load_torch_model

        reason = placement.unavailable_reason()
        if reason:
            raise TargetUnavailableError(f"{placement.name}: {reason}")
        self.placement = placement
        self.model = load_torch_model(path, trust_pickle=trust_pickle, arch=arch)
        self._torch = torch
        self._dtype = dtype_of(placement.precision)
        self._layout = (torch.channels_last if placement.mode != "eager"
                        else torch.contiguous_format)
        module = self.model.module
        if not isinstance(module, torch.nn.Module):
            raise BadInputError(f"{path}: a {self.model.format} model cannot be moved to "
                                f"{placement.name}")
        self._x: Any = None
        self._y: Any = None
        self._graph: Any = None
        with self.failing_in_one_line("cannot be moved there"):  # out of GPU memory, say
            self.module = move_module(module, placement.device, self._dtype)
            if placement.mode != "eager":
                self.module = self.module.to(memory_format=torch.channels_last)

    def to_device(self, x: np.ndarray) -> Any:
        """``x`` (float32 NCHW) as the placement's tensor: device, dtype and memory layout."""
        data = self._torch.from_numpy(np.ascontiguousarray(x, np.float32))
        data = data.to(self.placement.device, self._dtype)
        return data.contiguous(memory_format=self._layout) if data.ndim == 4 else data

    def bind(self, x: np.ndarray) -> None:
        """Copy ``x`` to the device once; a graph is (re)captured for it."""
        self._x, self._graph = self.to_device(x), None
        if self.placement.mode == "graph":
            self._capture()

    def _capture(self) -> None:
        """Warm up on a side stream (cuDNN autotunes there), then record one pass as a graph."""
        torch = self._torch
        with self.failing_in_one_line("cannot be captured as a CUDA graph"), \
                torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.module(self._x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._y = self.module(self._x)
        self._graph = graph

    def launch(self) -> None:
        """Enqueue one forward pass on the bound input."""
        if self._graph is not None:
            self._graph.replay()
            return
        self._y = self.forward(self._x)

    @contextlib.contextmanager
    def failing_in_one_line(self, what: str = "cannot run") -> Iterator[None]:
        """torch's errors from running the model there (a dtype or stride it cannot take, out of
        GPU memory) as one line."""
        try:
            yield
        except RuntimeError as exc:  # what torch raises for a model that cannot run there
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise TargetUnavailableError(f"{self.model.path.name} [{self.placement.name}] "
                                         f"{what} ({first})") from None

    def synchronize(self) -> None:
        if self.placement.device == "cuda":
            self._torch.cuda.synchronize()

    def forward(self, data: Any) -> Any:
        """One eager pass on a tensor made by :meth:`to_device`; its raw result."""
        with self._torch.inference_mode():
            return self.module(data)

    def outputs(self) -> list[np.ndarray]:
        """Every output of the last pass, as float32 numpy on the host."""
        self.synchronize()
        return host_arrays(self._y)


def host_arrays(result: Any) -> list[np.ndarray]:
    """A model's (possibly nested) result as float32 numpy arrays, flattened in the order
    :func:`edgecnn.files.torch_files.output_leaves` gives the CPU reference's."""
    import torch
    from torch.utils import _pytree

    return [leaf.detach().float().cpu().numpy() for leaf in _pytree.tree_leaves(result)
            if isinstance(leaf, torch.Tensor)]


class PlacedSession:
    """A :class:`edgecnn.runtimes.sessions.Session` over a placement, for `validate` and CPU `bench`
    rows (eager modes). Like the CPU ``torch`` session it times the forward passes only: the
    input moves to the device at ``bind``, outputs come back at ``outputs``. Fixed-batch
    exports are fed chunk by chunk."""

    def __init__(self, path: Path, threads: int | None, placement: Placement,
                 trust_pickle: bool = False, arch: str | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.runtime = placement.name
        self.placed = PlacedModel(path, placement, trust_pickle=trust_pickle, arch=arch)
        self._chunks: list[Any] = []
        self._results: list[Any] = []

    def bind(self, x: np.ndarray) -> None:
        from edgecnn.runtimes.batching import split_batch

        self._chunks = [self.placed.to_device(b) for b in
                        split_batch(x, self.placed.model.static_batch, self.placed.model.path)]
        self._results = []

    def invoke(self) -> None:
        # the flags decide GPU kernels only: entered per invoke where they matter
        flags = (backend_flags(self.placed.placement) if self.placed.placement.device == "cuda"
                 else contextlib.nullcontext())
        with flags, self.placed.failing_in_one_line():
            self._results = [self.placed.forward(chunk) for chunk in self._chunks]
            self.placed.synchronize()

    def output(self) -> np.ndarray:
        return self.outputs()[0]

    def outputs(self) -> list[np.ndarray]:
        chunks = [host_arrays(result) for result in self._results]
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


@dataclass(frozen=True)
class ParityCheck:
    """How far a fast row's outputs are from the reference, and whether that is acceptable."""

    runtime: str
    max_rel_error: float  # worst output's max|y - ref| / max|ref|
    tolerance: float
    decisive_rows: int  # rows whose reference top-1 leads by more than DECISIVE_MARGIN
    argmax_flips: int  # of those, rows whose top-1 class changed
    nonfinite: int  # NaN/inf values (fp16 overflow)

    @property
    def passed(self) -> bool:
        # a NaN or inf output makes the relative error infinite: counted apart only to say so
        return self.max_rel_error <= self.tolerance and self.argmax_flips == 0

    def record(self) -> dict[str, Any]:
        """The check as it goes into a bench record's JSON."""
        return {"reference": "cpu fp32", "max_rel_error": self.max_rel_error,
                "tolerance": self.tolerance, "decisive_rows": self.decisive_rows,
                "argmax_flips": self.argmax_flips, "nonfinite": self.nonfinite}

    def failure(self, model: str) -> str:
        return (f"{model} [{self.runtime}]: outputs disagree with the CPU fp32 reference "
                f"({self.problems()}); this row is fast but wrong, so it is not benched")

    def problems(self) -> str:
        """What broke, e.g. "3 NaN/inf values; relative error inf > 0.01"."""
        parts = []
        if self.nonfinite:
            parts.append(f"{self.nonfinite} NaN/inf values")
        if self.max_rel_error > self.tolerance:
            parts.append(f"relative error {self.max_rel_error:.3g} > {self.tolerance:g}")
        if self.argmax_flips:
            parts.append(f"top-1 class changed on {self.argmax_flips} of {self.decisive_rows} "
                         "decisive inputs")
        return "; ".join(parts)


def check_parity(runtime: str, outputs: list[np.ndarray], reference: list[np.ndarray],
                 tolerance: float) -> ParityCheck:
    """Compare every output with the reference; a 2-D first output is also checked for top-1."""
    if len(outputs) != len(reference):
        raise CheckFailedError(f"[{runtime}]: {len(outputs)} outputs where the reference has "
                               f"{len(reference)}")
    worst, nonfinite = 0.0, 0
    for y, ref in zip(outputs, reference, strict=True):
        y = np.asarray(y, np.float64).reshape(ref.shape)
        ref = np.asarray(ref, np.float64)
        nonfinite += int((~np.isfinite(y)).sum())
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        error = float(np.abs(np.nan_to_num(y - ref, nan=np.inf)).max()) if ref.size else 0.0
        worst = max(worst, error / scale if scale > 0 else (0.0 if error == 0 else np.inf))
    decisive, flips = 0, 0
    logits, ref_logits = np.asarray(outputs[0]), np.asarray(reference[0])
    if ref_logits.ndim == 2 and ref_logits.shape[1] > 1:
        top2 = np.sort(ref_logits, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        # a flip where the reference barely decides is rounding at a near-tie, not a wrong model
        rows = margin > DECISIVE_MARGIN * float(np.abs(ref_logits).max())
        decisive = int(rows.sum())
        flips = int((logits.reshape(ref_logits.shape)[rows].argmax(1)
                     != ref_logits[rows].argmax(1)).sum())
    return ParityCheck(runtime, worst, tolerance, decisive, flips, nonfinite)


def require_parity(model: str, runtime: str, outputs: list[np.ndarray],
                   reference: list[np.ndarray], tolerance: float) -> ParityCheck:
    """:func:`check_parity`, raising :class:`CheckFailedError` (exit 1) when the row is wrong."""
    check = check_parity(runtime, outputs, reference, tolerance)
    if not check.passed:
        raise CheckFailedError(check.failure(model))
    return check
