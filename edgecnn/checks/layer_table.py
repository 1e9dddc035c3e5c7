"""Where int8 loses accuracy: the error of every quantised tensor against the float model.

Two readings of the same QDQ graph, both against the float model's tensors on the same images:

* **total**: the QDQ graph run end to end, as deployed. A tensor's error is everything
  quantised before it, accumulated.
* **own**: every quantised tensor of the QDQ graph is fed the float model's value instead of
  its own (each QuantizeLinear reads the float tensor), so each layer sees exact inputs,
  rounded to its input grid, and its error is only what its own weights and output rounding
  add. The layer with the worst own error is the one to keep in float first.

The graphs run in onnxruntime with every optimisation off: the QDQ reference semantics of
:mod:`edgecnn.converters.qdq`, identical on every CPU. Statistics are accumulated batch by
batch, so memory is one batch of activations whatever the image count.

onnxruntime's ``qdq_loss_debug`` pairs tensors the same way (by name: its quantiser keeps the
float tensor names in front of each QuantizeLinear) and computes the same SQNR; it keeps every
activation of every image in memory, and has no "own" reading, hence this module. Its SQNR
function is the test's independent reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgecnn.errors import BadInputError, EdgecnnError

_RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255)}


@dataclass(frozen=True)
class QuantisedTensor:
    """One activation the QDQ graph rounds to 8 bits, with the node that makes it."""

    tensor: str
    node: str  # the producing node's name ('' for a graph input)
    op: str
    module: str  # the PyTorch module path where the exporter recorded one
    scale: float
    zero_point: int
    low: int
    high: int


@dataclass
class _Moments:
    """Running sums for SQNR, cosine similarity and the worst step, over any number of batches."""

    signal: float = 0.0  # sum f^2
    noise: float = 0.0  # sum (f - q)^2
    cross: float = 0.0  # sum f q
    quantised: float = 0.0  # sum q^2
    max_steps: float = 0.0

    def add(self, reference: np.ndarray, value: np.ndarray, scale: float) -> None:
        f, q = reference.astype(np.float64).ravel(), value.astype(np.float64).ravel()
        diff = f - q
        self.signal += float(f @ f)
        self.noise += float(diff @ diff)
        self.cross += float(f @ q)
        self.quantised += float(q @ q)
        if diff.size:
            self.max_steps = max(self.max_steps, float(np.max(np.abs(diff))) / scale)

    def sqnr_db(self) -> float:
        if self.noise == 0:
            return math.inf
        if self.signal == 0:
            return -math.inf
        return 10 * math.log10(self.signal / self.noise)

    def cosine(self) -> float:
        norm = math.sqrt(self.signal * self.quantised)
        return self.cross / norm if norm else (1.0 if self.noise == 0 else 0.0)


@dataclass
class LayerError:
    """The error of one quantised tensor, own and total, and what its grid covers."""

    depth: int  # position of its QuantizeLinear in the QDQ graph (topological order)
    tensor: QuantisedTensor
    own: _Moments = field(default_factory=_Moments)
    total: _Moments = field(default_factory=_Moments)
    float_min: float = math.inf
    float_max: float = -math.inf
    clipped: int = 0  # float values outside the grid's range
    values: int = 0

    @property
    def layer(self) -> str:
        return self.tensor.module or self.tensor.node or self.tensor.tensor

    def row(self) -> dict[str, Any]:
        t = self.tensor
        return {"depth": self.depth, "layer": self.layer, "op": t.op, "tensor": t.tensor,
                "own SQNR dB": _finite(self.own.sqnr_db()),
                "total SQNR dB": _finite(self.total.sqnr_db()),
                "own max steps": round(self.own.max_steps, 2),
                "total max steps": round(self.total.max_steps, 2),
                "total cosine": round(self.total.cosine(), 6),
                "scale": t.scale, "float min": self.float_min, "float max": self.float_max,
                "clipped %": round(100 * self.clipped / max(self.values, 1), 3)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.row(), "node": self.tensor.node, "module": self.tensor.module,
                "zero point": self.tensor.zero_point,
                "own cosine": round(self.own.cosine(), 6), **{
                    f"{kind} moments": asdict(getattr(self, kind)) for kind in ("own", "total")}}


def _finite(value: float) -> float | None:
    """JSON has no infinity: an exact tensor (no noise at all) reports None."""
    return round(value, 2) if math.isfinite(value) else None


def quantised_tensors(qdq: onnx.ModelProto, float_model: onnx.ModelProto
                      ) -> list[QuantisedTensor]:
    """Every activation the QDQ graph quantises that the float model also has, in graph order."""
    inits = {t.name: t for t in qdq.graph.initializer}
    in_float = {o for n in float_model.graph.node for o in n.output}
    float_inputs = {i.name for i in float_model.graph.input}
    # the QDQ graph's own producer: onnxruntime fuses Conv+Relu, so "relu" is the Conv's output
    producers = {o: n for n in qdq.graph.node for o in n.output}
    found: dict[str, QuantisedTensor] = {}
    for node in qdq.graph.node:
        name = node.input[0]
        if node.op_type != "QuantizeLinear" or name in inits or name in found:
            continue
        if name not in in_float and name not in float_inputs:
            continue  # a tensor the quantiser made (a requantisation): no float counterpart
        scale = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
        zero = (inits.get(node.input[2]) if len(node.input) > 2 else None)
        if scale is None or scale.size != 1:
            continue  # per-channel activations are not something onnxruntime writes
        kind = zero.data_type if zero is not None else onnx.TensorProto.UINT8
        low, high = _RANGES.get(kind, (0, 255))
        zero_point = int(numpy_helper.to_array(zero).item()) if zero is not None else 0
        producer = producers.get(name)
        found[name] = QuantisedTensor(
            name, producer.name if producer else "", producer.op_type if producer else "input",
            module_path(producer) if producer else "", float(scale.item()), zero_point, low, high)
    return list(found.values())


def module_path(node: onnx.NodeProto) -> str:
    """``features.3`` from the dynamo exporter's ``namespace`` record (``: LeNet5/features:
    Sequential/features.3: Conv2d/conv2d_1: aten.conv2d.default``); '' where it kept none."""
    namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
    scopes = [scope.split(": ", 1) for scope in namespace.split("/")]
    modules = [name.strip() for name, *kind in scopes
               if name.strip() and kind and not kind[0].startswith("aten.")]
    return modules[-1] if modules else ""


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    known = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                             for n in names if n not in known)
    return copy


def _fed_float(qdq: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The QDQ graph with every QuantizeLinear of ``names`` reading a new input ``<name>/float``
    (the "own" reading): each layer then starts from the float model's values."""
    model = _with_outputs(qdq, [n for n in names if n not in {i.name for i in qdq.graph.input}])
    wanted = set(names)
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in wanted:
            node.input[0] = node.input[0] + "/float"
    read = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.input if i.name in read]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.graph.input.extend(onnx.helper.make_tensor_value_info(n + "/float",
                                                                onnx.TensorProto.FLOAT, None)
                             for n in names)
    return model


def _rounded(x: np.ndarray, t: QuantisedTensor) -> np.ndarray:
    """QuantizeLinear then DequantizeLinear, by the ONNX definition (round half to even)."""
    q = np.clip(np.rint(x / np.float32(t.scale)) + t.zero_point, t.low, t.high)
    return ((q - t.zero_point) * np.float32(t.scale)).astype(np.float32)


def _batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def layer_errors(float_model: onnx.ModelProto, qdq: onnx.ModelProto, images: np.ndarray,
                 batch_size: int = 32, progress: Any = None,
                 source: str = "the int8 model") -> list[LayerError]:
    """Own and total error of every quantised tensor on ``images`` (preprocessed, NCHW);
    ``source`` names the int8 model in a refusal."""
    from edgecnn.converters.qdq import onnxruntime_detail

    try:
        return _layer_errors(float_model, qdq, images, batch_size, progress, source)
    except EdgecnnError:
        raise
    except Exception as exc:  # onnxruntime's Fail, InvalidArgument, RuntimeException at run time
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise BadInputError(f"{source}: onnxruntime cannot run the layer table on input "
                            f"{list(images.shape)} ({onnxruntime_detail(exc)})") from None


def _layer_errors(float_model: onnx.ModelProto, qdq: onnx.ModelProto, images: np.ndarray,
                  batch_size: int, progress: Any, source: str) -> list[LayerError]:
    tensors = quantised_tensors(qdq, float_model)
    if not tensors:
        raise BadInputError("the int8 model quantises no tensor of the float model; give the "
                            "float ONNX it was quantised from")
    names = [t.tensor for t in tensors]
    inputs = {i.name for i in float_model.graph.input}
    fixed = float_model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    if fixed and len(images) % fixed:
        raise BadInputError(f"{source}: its float model takes batches of exactly {fixed}; "
                            f"{len(images)} images do not split into them: give `limit` a "
                            f"multiple of {fixed}", parameters=("limit",))
    batch_size = fixed or batch_size  # an export at a fixed batch (often 1) runs in its chunks
    from edgecnn.converters.qdq import reference_inference_session

    float_session = reference_inference_session(_with_outputs(float_model, names),
                                                "the float model")
    total_session = reference_inference_session(_with_outputs(qdq, names), source)
    own_session = reference_inference_session(_fed_float(qdq, names), source)
    float_in = float_session.get_inputs()[0].name
    qdq_in = total_session.get_inputs()[0].name
    own_outputs = [o.name for o in own_session.get_outputs()]
    errors = [LayerError(depth, t) for depth, t in enumerate(tensors)]
    for batch in _batches(images.astype(np.float32), batch_size):
        floats = dict(zip([o.name for o in float_session.get_outputs()],
                          float_session.run(None, {float_in: batch}), strict=True))
        totals = dict(zip([o.name for o in total_session.get_outputs()],
                          total_session.run(None, {qdq_in: batch}), strict=True))
        owns = dict(zip(own_outputs, own_session.run(
            None, {n + "/float": (batch if n in inputs else floats[n]) for n in names}),
            strict=True))
        for error in errors:
            t = error.tensor
            f: np.ndarray = batch if t.tensor in inputs else floats[t.tensor]
            own: np.ndarray = owns.get(t.tensor, f)  # a graph input has no layer before it
            error.own.add(f, _rounded(own, t), t.scale)
            error.total.add(f, _rounded(totals.get(t.tensor, batch), t), t.scale)
            error.float_min = min(error.float_min, float(f.min()))
            error.float_max = max(error.float_max, float(f.max()))
            low = (t.low - t.zero_point) * t.scale
            high = (t.high - t.zero_point) * t.scale
            error.clipped += int(np.count_nonzero((f < low) | (f > high)))
            error.values += f.size
        if progress is not None:
            progress.update(len(batch))
    return errors


def worst_first(errors: list[LayerError]) -> list[LayerError]:
    """Sorted by own error, the worst (lowest own SQNR) first; depth breaks ties."""
    return sorted(errors, key=lambda e: (e.own.sqnr_db(), e.depth))


def plot_sqnr(errors: list[LayerError], path: Path, title: str) -> None:
    """SQNR along the depth of the network, own and total, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgecnn.files.outputs import atomic_path

    ordered = sorted(errors, key=lambda e: e.depth)
    depth = [e.depth for e in ordered]
    cap = max([s for e in ordered for s in (e.own.sqnr_db(), e.total.sqnr_db())
               if math.isfinite(s)] or [60.0]) + 5  # exact tensors are drawn at the top
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(ordered)), 4.0))
    for kind, style in (("own", "o-"), ("total", "s--")):
        values = [min(getattr(e, kind).sqnr_db(), cap) for e in ordered]
        ax.plot(depth, values, style, label=f"{kind} error", markersize=4)
    ax.set_xticks(depth, [e.layer for e in ordered], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("SQNR (dB, higher is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


@dataclass
class LayerReport:
    """The layer table of one int8 model against its float model."""

    float_model: str
    int8_model: str
    data: str
    images: int
    errors: list[LayerError]

    def rows(self) -> list[dict[str, Any]]:
        return [e.row() for e in worst_first(self.errors)]

    def to_dict(self) -> dict[str, Any]:
        return {"float_model": self.float_model, "int8_model": self.int8_model,
                "data": self.data, "images": self.images,
                "layers": [e.to_dict() for e in worst_first(self.errors)]}
