"""The ONNX graph as the TFLite writer sees it: float ops, static shapes, quantisation as data.

A QDQ model is read once into this form: every ``Q -> DQ`` pair on an activation becomes that
tensor's :class:`QuantParams`, every ``DQ`` of an initializer becomes a constant with its integer
data kept beside it. The lowerings then handle float and int8 models with the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from edgecnn.converters.onnx_passes import declared_batch
from edgecnn.converters.qdq import QDQ_OPS, as_int8, to_int8
from edgecnn.converters.tflite_builder import QuantParams
from edgecnn.errors import ConversionError


@dataclass(frozen=True)
class WeightQuant:
    """Integer data of a quantised constant and its per-tensor or per-axis parameters."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None

    def params(self, axis_map: int | None = None) -> QuantParams:
        axis = self.axis if axis_map is None else axis_map
        return QuantParams(tuple(float(s) for s in self.scale.ravel()),
                           tuple(int(z) for z in self.zero_point.ravel()),
                           axis if self.scale.size > 1 else None)


class Constants(dict):
    """name -> array; dequantised weights are computed on first use only.

    An int8 conversion reads the integers directly, so VGG19's 575 MB of float weights are
    never materialised for it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lazy: dict[str, tuple[Callable[[], np.ndarray], tuple[int, ...]]] = {}

    def defer(self, name: str, make: Callable[[], np.ndarray], shape: tuple[int, ...]) -> None:
        self.lazy[name] = (make, shape)

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self.lazy

    def __missing__(self, name: str) -> np.ndarray:
        if name not in self.lazy:
            raise KeyError(name)
        make, _ = self.lazy.pop(name)
        value = self[name] = make()
        return value

    def shapes(self) -> dict[str, tuple[int, ...]]:
        found = {k: tuple(np.shape(v)) for k, v in self.items()}
        found.update({k: shape for k, (_, shape) in self.lazy.items()})
        return found


@dataclass
class Graph:
    """Float view of an ONNX graph with static shapes and quantisation annotations."""

    source: str
    nodes: list[onnx.NodeProto]
    constants: Constants
    shapes: dict[str, tuple[int, ...]]
    input_name: str
    output_names: list[str]
    weight_quant: dict[str, WeightQuant] = field(default_factory=dict)
    act_quant: dict[str, QuantParams] = field(default_factory=dict)
    opset: int = 13
    # the model itself declares this batch size (a batch-1 export), rather than a symbolic one
    declared_batch: int | None = None

    @property
    def quantized(self) -> bool:
        return bool(self.act_quant)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if name in n.input]

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.nodes if name in n.output), None)


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def node_label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def load_graph(model: onnx.ModelProto, source: str, batch: int = 1,
               weights_dir: Path | None = None) -> Graph:
    """Fix the batch size, fold Q/DQ into annotations, fold constants and infer static shapes.

    ``weights_dir`` holds the side files of a model saved with external data: its weights are
    read from there, so they are in memory once, not in the proto and as arrays."""
    constants = Constants()
    for tensor in model.graph.initializer:
        constants[tensor.name] = numpy_helper.to_array(tensor, str(weights_dir or ""))
    declared = _declared_batch(model)  # before the batch is fixed below
    model = _with_static_batch(model, source, batch)
    nodes = list(model.graph.node)
    graph = Graph(source, nodes, constants, {}, model.graph.input[0].name,
                  [o.name for o in model.graph.output],
                  opset=next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                             13), declared_batch=declared)
    for node in [n for n in nodes if n.op_type == "Constant"]:
        graph.constants[node.output[0]] = numpy_helper.to_array(attr(node, "value"))
        nodes.remove(node)
    _prequantize_constants(graph)
    _fold_weight_dequantize(graph)
    _fold_activation_qdq(graph)
    graph.shapes = _infer_shapes(model, graph)
    _fold_constant_nodes(graph)
    from edgecnn.converters.fusions import (  # they use Graph
        fold_identity_gather,
        fuse_gelu,
        fuse_group_norm,
    )

    fuse_gelu(graph)
    fuse_group_norm(graph)
    fold_identity_gather(graph)
    return graph


def _declared_batch(model: onnx.ModelProto) -> int | None:
    weights = {t.name for t in model.graph.initializer}
    return declared_batch(model) if any(i.name not in weights for i in model.graph.input) else None


def _with_static_batch(model: onnx.ModelProto, source: str, batch: int) -> onnx.ModelProto:
    """A copy of the graph without its weights, the batch dimension fixed to ``batch``."""
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise ConversionError(f"{source}: has {len(inputs)} graph inputs; edgecnn converts models "
                              "with one image input")
    graph = onnx.helper.make_graph(list(model.graph.node), model.graph.name or "main", inputs,
                                   list(model.graph.output))
    model = onnx.helper.make_model(graph, opset_imports=list(model.opset_import),
                                   ir_version=model.ir_version)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        shape = [d.dim_value or d.dim_param for d in dims]
        raise ConversionError(f"{source}: input {inputs[0].name!r} has shape {shape}; TFLite "
                              "conversion needs a 4-D image input (N, C, H, W)")
    if any(not d.HasField("dim_value") for d in dims[1:]):
        raise ConversionError(f"{source}: input {inputs[0].name!r} has symbolic C/H/W dims; export "
                              "the model with a fixed image size")
    dims[0].Clear()
    dims[0].dim_value = batch
    return model


def _prequantize_constants(graph: Graph) -> None:
    """A QuantizeLinear of a float constant (AIMET's and other fake-quantisation exports write
    weights as float -> Q -> DQ) becomes the integers it computes, so the DequantizeLinear after
    it reads an integer constant like every other exporter's weight: ONNX's rounding, half to
    even, of x / scale, plus the zero point, saturated to the zero point's type."""
    for node in [n for n in graph.nodes if n.op_type == "QuantizeLinear"]:
        inputs = [name for name in node.input if name]
        if not all(name in graph.constants for name in inputs):
            continue
        values = np.asarray(graph.constants[node.input[0]], np.float32)
        scale = np.asarray(graph.constants[node.input[1]], np.float32)
        zp = (np.asarray(graph.constants[node.input[2]]) if len(inputs) > 2
              else np.zeros(scale.shape, np.uint8))
        shape = [1] * values.ndim
        if scale.size > 1:
            axis = int(attr(node, "axis", 1))
            shape[axis % values.ndim] = -1
        info = np.iinfo(zp.dtype)
        integers = np.rint(values / scale.reshape(shape)) + zp.reshape(shape).astype(np.float32)
        graph.constants[node.output[0]] = np.clip(integers, info.min, info.max).astype(zp.dtype)
        graph.nodes.remove(node)


def _fold_weight_dequantize(graph: Graph) -> None:
    for node in [n for n in graph.nodes if n.op_type == "DequantizeLinear"]:
        if node.input[0] not in graph.constants:
            continue
        values = graph.constants[node.input[0]]
        scale = np.asarray(graph.constants[node.input[1]], np.float32)
        zp = (np.asarray(graph.constants[node.input[2]]) if len(node.input) > 2 and node.input[2]
              else np.zeros_like(scale, dtype=values.dtype))
        values, zp = as_int8(values, zp)  # the uint8 ONNX encoding is the same quantisation
        axis = int(attr(node, "axis", 1)) if scale.size > 1 else None
        if axis is not None and axis < 0:
            axis += values.ndim
        if axis is not None and not (0 <= axis < values.ndim
                                     and values.shape[axis] == scale.size
                                     and zp.size in (1, scale.size)):
            raise ConversionError(f"{graph.source}: DequantizeLinear {node.name!r} has "
                                  f"{scale.size} scales along axis {attr(node, 'axis', 1)} of a "
                                  f"{list(values.shape)} weight; per-axis scales need one per "
                                  "slice of a real axis: re-quantise the model")
        shape = [1] * values.ndim
        if axis is not None:
            shape[axis] = -1

        def dequantize(v: np.ndarray = values, z: np.ndarray = zp, s: np.ndarray = scale,
                       b: list[int] = shape) -> np.ndarray:
            return ((v.astype(np.float32) - z.reshape(b).astype(np.float32))
                    * s.reshape(b)).astype(np.float32)

        graph.constants.defer(node.output[0], dequantize, tuple(values.shape))
        graph.weight_quant[node.output[0]] = WeightQuant(values, scale, zp, axis)
        graph.nodes.remove(node)


def _rename(graph: Graph, old: str, new: str) -> None:
    for node in graph.nodes:
        for field_ in (node.input, node.output):
            for i, name in enumerate(field_):
                if name == old:
                    field_[i] = new


def _fold_activation_qdq(graph: Graph) -> None:
    """Every ``Q -> DQ`` pair on an activation becomes that value's parameters.

    A pair reading a value already quantised (``Q1 -> DQ1 -> Q2 -> DQ2``, onnxruntime's
    conversion between an int8 and an int16 layer) is a requantisation: it stays in the graph
    as an Identity whose output carries the second pair's parameters, which its lowering writes
    as TFLite's DEQUANTIZE and QUANTIZE (:mod:`.ops.shape`)."""
    dequantized = {n.output[0] for n in graph.nodes if n.op_type == "DequantizeLinear"}
    pairs = [n for n in graph.nodes if n.op_type == "QuantizeLinear"]
    # first the pairs on computed values, then conversions of values those pairs quantise
    for q in sorted(pairs, key=lambda n: n.input[0] in dequantized):
        src, qout = q.input[0], q.output[0]
        users = graph.consumers(qout)
        if not users or any(u.op_type != "DequantizeLinear" for u in users) or qout in graph.output_names:
            raise ConversionError(f"{graph.source}: {node_label(q)} is not followed by "
                                  "DequantizeLinear only; TFLite needs Q->DQ pairs (QDQ format)")
        params = _activation_params(graph, q)
        graph.nodes.remove(q)
        if src in graph.act_quant and not params.same_as(graph.act_quant[src]):
            for dq in users:  # a conversion: src requantised into the DQ's output
                at = graph.nodes.index(dq)
                graph.nodes[at] = onnx.helper.make_node("Identity", [src], [dq.output[0]],
                                                        name=f"{dq.output[0]}/requantize")
                graph.act_quant[dq.output[0]] = params
            continue
        canonical = src
        for dq in users:
            graph.nodes.remove(dq)
            if dq.output[0] in graph.output_names:
                _rename(graph, canonical, dq.output[0])
                if canonical == graph.input_name:
                    raise ConversionError(f"{graph.source}: graph input feeds the output directly")
                canonical = dq.output[0]
            else:
                _rename(graph, dq.output[0], canonical)
        graph.act_quant[canonical] = params
    left = [n for n in graph.nodes if n.op_type in QDQ_OPS]
    if left:
        raise ConversionError(f"{graph.source}: {node_label(left[0])} is not part of a Q->DQ pair "
                              "TFLite can express")


def _activation_params(graph: Graph, q: onnx.NodeProto) -> QuantParams:
    """A QuantizeLinear's per-tensor parameters: int8 (uint8 moved by 128, the same
    quantisation), or int16 with zero point 0, the activations of TFLite's 16x8 mode."""
    scale = np.asarray(graph.constants[q.input[1]], np.float32)
    zp = np.asarray(graph.constants[q.input[2]]) if len(q.input) > 2 else np.zeros((), np.uint8)
    zp = to_int8(zp)  # uint8 activations: the same quantisation, moved by 128
    if scale.size != 1:
        raise ConversionError(f"{graph.source}: {node_label(q)} quantises an activation per "
                              "channel; TFLite int8 activations are per-tensor")
    int16 = zp.dtype == np.int16
    if int16 and int(zp.ravel()[0]) != 0:
        raise ConversionError(f"{graph.source}: {node_label(q)} quantises to int16 with zero "
                              f"point {int(zp.ravel()[0])}; TFLite's 16x8 activations are "
                              "symmetric (zero point 0): re-quantise them symmetric")
    if zp.dtype != np.int8 and not int16:
        raise ConversionError(f"{graph.source}: {node_label(q)} quantises to {zp.dtype}; the "
                              "TFLite int8 path needs 8-bit activations (QInt8 or QUInt8) or "
                              "symmetric int16 ones")
    return QuantParams.per_tensor(float(scale.ravel()[0]), int(zp.ravel()[0]), int16=int16)


def _infer_shapes(model: onnx.ModelProto, graph: Graph) -> dict[str, tuple[int, ...]]:
    """Static shapes of every value. Small and integer constants (shape arithmetic) go in as
    initializers; big weights only as typed, shaped inputs, so nothing large is copied."""
    small, weights = [], []
    for name, shape in graph.constants.shapes().items():
        value = dict.get(graph.constants, name)
        if value is not None and (value.size <= 4096 or value.dtype.kind in "iub"):
            small.append(numpy_helper.from_array(np.asarray(value), name))
        else:
            dtype = value.dtype if value is not None else np.dtype(np.float32)
            weights.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(dtype), list(shape)))
    float_model = onnx.helper.make_model(
        onnx.helper.make_graph(
            graph.nodes, "float", list(model.graph.input) + weights,
            [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None)
             for o in graph.output_names], small),
        opset_imports=model.opset_import)
    try:
        inferred = shape_inference.infer_shapes(float_model, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and others
        raise ConversionError(f"{graph.source}: ONNX shape inference failed ({exc})") from None
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    shapes.update(graph.constants.shapes())
    return shapes


def _fold_constant_nodes(graph: Graph) -> None:
    """Evaluate Shape-of-static-tensor and all-constant nodes (shape arithmetic) ahead of time."""
    from onnx.reference import ReferenceEvaluator

    for node in list(graph.nodes):
        if node.op_type == "Shape" and node.input[0] in graph.shapes:
            value = np.asarray(graph.shapes[node.input[0]], np.int64)
            start, end = attr(node, "start", 0), attr(node, "end", None)
            graph.constants[node.output[0]] = value[start:end]
        elif node.input and all(i in graph.constants or not i for i in node.input):
            inputs = [i for i in node.input if i]
            single = onnx.helper.make_graph(
                [node], "fold", [], [onnx.helper.make_tensor_value_info(o, 0, None)
                                     for o in node.output],
                [numpy_helper.from_array(np.asarray(graph.constants[i]), i) for i in inputs])
            try:
                outputs = ReferenceEvaluator(onnx.helper.make_model(single)).run(None, {})
            except Exception:
                continue
            for name, value in zip(node.output, outputs, strict=False):
                graph.constants[name] = np.asarray(value)
        else:
            continue
        graph.nodes.remove(node)
        for out in node.output:
            graph.shapes[out] = tuple(np.shape(graph.constants[out]))


def unsupported(graph: Graph, supported: Iterable[str]) -> dict[str, list[str]]:
    """Every op type without a lowering, with the names of its nodes."""
    known = set(supported)
    missing: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op_type not in known:
            missing.setdefault(node.op_type, []).append(node.name or node.output[0])
    return missing
