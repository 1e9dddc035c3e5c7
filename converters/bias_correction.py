"""Bias correction (Nagel et al. 2019; AIMET's empirical form): remove the mean shift int8 puts
into every convolution and fully connected layer.

Rounding weights and clipping inputs do not only add noise: per output channel they move the
mean, ``E[W x] - E[W_q Q(x)]``, and a moved mean passes through every later layer (a depthwise
convolution's few weights per channel round with a large relative error). The shift is measured
here on calibration images, each layer fed the float model's own input (so the corrections are
independent and one pass computes them all), quantised by that layer's own QuantizeLinear:

    shift[o] = sum_i  W[o, i] E[x_i]  -  W_q[o, i] E[Q(x)_i]     (over kernel taps too)

and added to the layer's int32 bias in the QDQ model itself. The ONNX and TFLite files are both
written from that model, so they carry the same corrected integers.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

CORRECTED_OPS = ("Conv", "Gemm")


@dataclass(frozen=True)
class Layer:
    node: str
    op: str
    activation: str  # the float tensor the layer reads, as the float model names it
    act_scale: float
    act_zero: int
    act_range: tuple[int, int]
    weight: np.ndarray  # dequantised int8 weights
    float_weight: np.ndarray
    bias_name: str  # the int32 initializer
    bias_scale: np.ndarray
    group: int
    trans_b: bool
    weight_name: str = ""  # the int8 initializer (AdaRound rewrites it)
    weight_scale: np.ndarray | None = None
    weight_axis: int = 0
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _layers(float_model: onnx.ModelProto, qdq: onnx.ModelProto) -> list[Layer]:
    """The Conv/Gemm layers whose weights and bias the QDQ model stores as int8/int32
    initializers and whose input comes through a QuantizeLinear of a float tensor."""
    inits = {t.name: t for t in qdq.graph.initializer}
    producers = {o: n for n in qdq.graph.node for o in n.output}
    float_inits = {t.name: t for t in float_model.graph.initializer}
    float_nodes = {n.name: n for n in float_model.graph.node if n.name}
    layers = []
    for node in qdq.graph.node:
        original = float_nodes.get(node.name)
        if node.op_type not in CORRECTED_OPS or len(node.input) < 3 or original is None:
            continue
        act_dq, w_dq, b_dq = (producers.get(i) for i in node.input[:3])
        act_q = producers.get(act_dq.input[0]) if act_dq is not None else None
        if (act_q is None or act_q.op_type != "QuantizeLinear" or w_dq is None
                or b_dq is None or w_dq.input[0] not in inits or b_dq.input[0] not in inits
                or original.input[1] not in float_inits):
            continue
        zero_tensor = inits.get(act_q.input[2]) if len(act_q.input) > 2 else None
        if zero_tensor is not None and zero_tensor.data_type == onnx.TensorProto.INT16:
            continue  # an int16 input (a 16x8 layer): 256 times finer, no int8 mean shift
        activation = _float_source(act_q, producers)
        weight = _dequantised(w_dq, inits)
        scale = numpy_helper.to_array(inits[act_q.input[1]]).astype(np.float64)
        zero = int(numpy_helper.to_array(zero_tensor)) if zero_tensor is not None else 0
        bounds = (0, 255) if zero_tensor is not None and zero_tensor.data_type == 2 else (-128, 127)
        layers.append(Layer(
            node.name, node.op_type, activation, float(scale), zero, bounds, weight,
            numpy_helper.to_array(float_inits[original.input[1]]).astype(np.float64),
            b_dq.input[0], numpy_helper.to_array(inits[b_dq.input[1]]).astype(np.float64),
            _attr(node, "group", 1), bool(_attr(node, "transB", 0)), w_dq.input[0],
            numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float64),
            _attr(w_dq, "axis", 1), _ints(node, "strides"), _ints(node, "pads"),
            _ints(node, "dilations")))
    return layers


def _float_source(q: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> str:
    """The float tensor ``q`` rounds: its input, or, where ``q`` converts a value already
    quantised (``Q1 -> DQ1 -> q``, int16 -> int8 after a 16x8 layer), what Q1 rounds."""
    dq = producers.get(q.input[0])
    first = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" \
        else None
    return first.input[0] if first is not None and first.op_type == "QuantizeLinear" \
        else q.input[0]


def _ints(node: onnx.NodeProto, name: str) -> tuple[int, ...]:
    return next((tuple(int(v) for v in a.ints) for a in node.attribute if a.name == name), ())


def _dequantised(dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray:
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64)
            if len(dq.input) > 2 and dq.input[2] in inits else np.zeros_like(scale))
    axis = _attr(dq, "axis", 1)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    return (q - zero.reshape(shape)) * scale.reshape(shape)


def float_activations(float_model: onnx.ModelProto, names: list[str], x: np.ndarray
                      ) -> dict[str, np.ndarray]:
    """The float model's tensors ``names`` on the preprocessed images ``x`` (the QDQ reference
    session, so every CPU computes the same)."""
    from edgecnn.runtimes.sessions import predict_all, reference_session

    probe = onnx.ModelProto()
    probe.CopyFrom(float_model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in known)
    order = [o.name for o in probe.graph.output]
    with tempfile.TemporaryDirectory(prefix="edgecnn-activations-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, path)
        outputs = dict(zip(order, predict_all(reference_session(path), x), strict=True))
    return {n: outputs[n] for n in names}


def _channel_means(float_model: onnx.ModelProto, layers: list[Layer], x: np.ndarray
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per input channel, the mean of each layer's float input and of its int8 reading."""
    names = list(dict.fromkeys(layer.activation for layer in layers))
    outputs = float_activations(float_model, names, x)
    floats, quantised = {}, {}
    by_name = {layer.activation: layer for layer in layers}
    for name in names:
        value = outputs[name].astype(np.float64)
        layer = by_name[name]
        q = np.clip(np.rint(value / layer.act_scale) + layer.act_zero, *layer.act_range)
        read = (q - layer.act_zero) * layer.act_scale
        axes = (0, *range(2, value.ndim)) if value.ndim > 2 else (0,)
        floats[name], quantised[name] = value.mean(axes), read.mean(axes)
    return floats, quantised


def _shift(layer: Layer, mean: np.ndarray, mean_q: np.ndarray) -> np.ndarray:
    """``E[W x] - E[W_q Q(x)]`` per output channel."""
    if layer.op == "Gemm":
        w, wq = ((layer.float_weight, layer.weight) if layer.trans_b
                 else (layer.float_weight.T, layer.weight.T))
        return w @ mean - wq @ mean_q
    out_channels = layer.weight.shape[0]
    per_group = layer.weight.shape[1]
    taps_f = layer.float_weight.sum(axis=tuple(range(2, layer.weight.ndim)))  # (O, I/g)
    taps_q = layer.weight.sum(axis=tuple(range(2, layer.weight.ndim)))
    group_of = np.arange(out_channels) // (out_channels // layer.group)
    index = group_of[:, None] * per_group + np.arange(per_group)[None, :]
    return (taps_f * mean[index]).sum(1) - (taps_q * mean_q[index]).sum(1)


def correct_biases(float_model: onnx.ModelProto, qdq: onnx.ModelProto, x: np.ndarray) -> int:
    """Add each layer's measured int8 mean shift to its int32 bias in ``qdq`` (in place), on
    preprocessed images ``x``; the number of layers corrected."""
    layers = _layers(float_model, qdq)
    if not layers:
        return 0
    floats, quantised = _channel_means(float_model, layers, x)
    inits = {t.name: t for t in qdq.graph.initializer}
    for layer in layers:
        tensor = inits[layer.bias_name]
        bias = numpy_helper.to_array(tensor).astype(np.float64) * layer.bias_scale
        shift = _shift(layer, floats[layer.activation], quantised[layer.activation])
        corrected = np.rint((bias + shift) / layer.bias_scale)
        limit = np.iinfo(np.int32)
        tensor.CopyFrom(numpy_helper.from_array(
            np.clip(corrected, limit.min, limit.max).astype(np.int32), tensor.name))
    return len(layers)
