"""What an int8 QDQ model means, independent of the CPU it runs on, and how it is stored.

The meaning of a QDQ graph is its float reading: dequantise, run the float op, quantise (round
half to even, saturate). That reading is the one reference every int8 check in edgecnn uses (the
convert self-check, validate's step columns, the tests); onnxruntime computes it when its graph
optimisations are off, because then no Q/DQ pair is fused into an integer kernel whose arithmetic
depends on the instruction set (see :func:`reference_session_options`).

The integers are stored in one of four encodings (``--onnx-int8-encoding``). u8s8, uint8 and
int8 hold the same numbers as the quantisation (and as the TFLite file); u8s7 narrows the
weights. Measured in docs/onnx-int8.md:

- **u8s8** (edgecnn's default for the ONNX file, and onnxruntime's own ``quantize_static``
  layout): asymmetric activations stored as uint8 (+128), symmetric int8 weights with zero point
  0. onnxruntime runs its u8s8 kernels: 0.30-0.77x our fp32 latency on the torchvision mobile
  set, exact on VNNI x86 and ARM. On x86 without VNNI those kernels use VPMADDUBSW, whose int16
  pair sums saturate on 8-bit weights (32 output steps off on LeNet-5), unless the session sets
  ``session.x64quantprecision=1``: onnxruntime then moves the weights to u8 at load and runs the
  exact u8u8 kernels. edgecnn's own sessions set it on exactly those CPUs (:mod:`edgecnn.runtimes.sessions.isa`);
  the file's metadata says so for everyone else's.
- **u8s7**: u8s8 with the weights quantised within 7 bits ([-64, 64], onnxruntime's
  ``reduce_range``), so 255 x 64 x 2 = 32640 cannot saturate and no session option is needed.
  As fast as u8s8, exact on every x86 CPU, but the weights lose a bit: LeNet-5 keeps its
  accuracy, the outlier-channel model loses 1 point per-channel and 73 per-tensor. For fleets
  whose onnxruntime sessions cannot be configured.
- **uint8**: weights moved up by 128 too: the u8u8 kernels everywhere, exact on every CPU with
  no option, 0.72-1.35x fp32 (2-2.5x slower than u8s8 on VNNI).
- **int8** (the TFLite spec's form): int8 activations too. onnxruntime leaves many of its
  convolutions and every residual Add in float on x86.

``(q + 128) - (z + 128) == q - z``: moving an integer and its zero point together keeps every
dequantised value, so u8s8, uint8 and int8 have one QDQ reference and one fingerprint. The weight
width is chosen when quantising (:func:`weight_bits`); re-encoding an existing file cannot narrow
its weights, so an 8-bit-weight file asked for as u8s7 is stored as uint8 instead.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edgecnn.errors import ConversionError
from edgecnn.files import metadata
from edgecnn.quiet import onnxruntime_log_severity

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
ONNX_INT8_ENCODINGS = ("u8s8", "u8s7", "uint8", "int8")
DEFAULT_ONNX_INT8_ENCODING = "u8s8"
SEVEN_BIT_WEIGHTS = (-64, 64)  # onnxruntime's reduce_range for symmetric int8 weights
EIGHT_BIT_RANGE: dict[int, tuple[int, int]] = {TensorProto.INT8: (-128, 127), TensorProto.UINT8: (0, 255)}


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def reference_session_options() -> Any:
    """onnxruntime session options that compute the QDQ graph's float reading.

    With every graph optimisation off, onnxruntime runs DequantizeLinear, the float op and
    QuantizeLinear one by one; nothing is fused into QLinearConv/QGemm, whose integer kernels
    differ by CPU. Float summation order can still differ in the last bit between instruction
    sets, which moves an output by one step only when a value lies within that bit of a rounding
    tie.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = onnxruntime_log_severity()
    return options


def reference_inference_session(model: onnx.ModelProto, source: str = "the model") -> Any:
    """An in-memory onnxruntime session with :func:`reference_session_options`: the QDQ reading
    of an int8 model, the plain float reading of a float one. A graph onnxruntime refuses
    (a dropped scale, a kernel of 2^31) is refused in one line naming ``source``."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model.SerializeToString(), reference_session_options(),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's Fail, InvalidArgument, InvalidGraph...
        raise ConversionError(f"{source}: onnxruntime cannot load its reference reading "
                              f"({onnxruntime_detail(exc)}); re-export or re-quantise the "
                              "model") from None


def onnxruntime_detail(exc: BaseException) -> str:
    """onnxruntime's message on one line, without its ``[ONNXRuntimeError] : 2 : ...`` prefix."""
    import re

    detail = " ".join(str(exc).split())
    detail = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", detail)
    detail = re.sub(r"^Load model from .*? failed:", "", detail).strip()
    return detail[:240] or type(exc).__name__


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _node_label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def check_quant_params(model: onnx.ModelProto, source: str) -> None:
    """Refuse scales that are not finite and positive and zero points outside their type, naming
    the node, before anything is computed from them."""
    inits = _initializers(model)
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    check_pairs(model, source)
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        scale = _constant(node.input[1] if len(node.input) > 1 else "", inits, constants)
        if scale is None:
            continue  # a computed scale: onnxruntime checks it at run time
        if scale.size == 0 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            bad = scale.ravel()[~(np.isfinite(scale.ravel()) & (scale.ravel() > 0))]
            shown = bad[0] if bad.size else "empty"
            raise ConversionError(f"{source}: {_node_label(node)} has scale {shown}; scales must be "
                                  "finite and > 0: re-quantise the model")
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp_tensor = inits.get(zp_name)
        zero = _constant(zp_name, inits, constants)
        if zero is None:
            continue
        if zero.size not in (1, scale.size):
            raise ConversionError(f"{source}: {_node_label(node)} has {zero.size} zero points for "
                                  f"{scale.size} scales; re-quantise the model")
        low_high = EIGHT_BIT_RANGE.get(zp_tensor.data_type) if zp_tensor is not None else None
        if low_high and (zero.min() < low_high[0] or zero.max() > low_high[1]):
            raise ConversionError(f"{source}: {_node_label(node)} has a zero point outside "
                                  f"{low_high[0]}..{low_high[1]}; re-quantise the model")
        data = inits.get(node.input[0])
        if (node.op_type == "DequantizeLinear" and data is not None and zp_tensor is not None
                and data.data_type != zp_tensor.data_type):
            raise ConversionError(f"{source}: {_node_label(node)} dequantises "
                                  f"{TensorProto.DataType.Name(data.data_type).lower()} data with "
                                  f"{TensorProto.DataType.Name(zp_tensor.data_type).lower()} zero "
                                  "points; they must have one type: re-quantise the model")


def check_pairs(model: onnx.ModelProto, source: str) -> None:
    """A DequantizeLinear reading a QuantizeLinear's output must use its integer type."""
    inits = _initializers(model)
    quantized_type = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in inits:
            quantized_type[node.output[0]] = (node, inits[node.input[2]].data_type)
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in quantized_type:
            continue
        q, q_type = quantized_type[node.input[0]]
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zp is not None and zp.data_type != q_type:
            raise ConversionError(
                f"{source}: {_node_label(q)} has a {TensorProto.DataType.Name(q_type).lower()} "
                f"zero point but {_node_label(node)} reads it with a "
                f"{TensorProto.DataType.Name(zp.data_type).lower()} one; they must match: "
                "re-quantise the model")


def _constant(name: str, inits: dict[str, onnx.TensorProto],
              constants: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    if name in inits:
        return numpy_helper.to_array(inits[name])
    if name in constants:
        for a in constants[name].attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
    return None


def eight_bit_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers that Q/DQ nodes read as 8-bit integers: quantised weights and zero points."""
    inits = _initializers(model)
    names: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            for name in (node.input[0], node.input[2] if len(node.input) > 2 else ""):
                tensor = inits.get(name)
                if tensor is not None and tensor.data_type in EIGHT_BIT_RANGE:
                    names[name] = None
    return [inits[n] for n in names]


def _weight_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the quantised weights (constant DequantizeLinear inputs) and their zero points."""
    inits = _initializers(model)
    names: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            names.update(name for name in (node.input[0], *node.input[2:3]) if name)
    return names


def weight_bits(encoding_name: str) -> int:
    """How many bits the weights of a file stored as ``encoding_name`` are quantised to."""
    return 7 if encoding_name == "u8s7" else 8


def weights_fit(model: onnx.ModelProto, bits: int) -> bool:
    """True when every quantised weight of ``model`` (int8 form) lies within ``bits`` bits."""
    low, high = SEVEN_BIT_WEIGHTS if bits == 7 else (-128, 127)
    weights = _weight_tensors(model)
    for tensor in eight_bit_tensors(model):
        if tensor.name in weights:
            values = to_int8(numpy_helper.to_array(tensor)).astype(np.int16)
            if values.size and (values.min() < low or values.max() > high):
                return False
    return True


def encoding(model: onnx.ModelProto) -> str | None:
    """``'uint8'``, ``'int8'``, ``'u8s7'``, ``'u8s8'``, ``'mixed'``, or None for a model without
    8-bit Q/DQ tensors."""
    tensors = eight_bit_tensors(model)
    kinds = {t.data_type for t in tensors}
    if not kinds:
        return None
    if len(kinds) == 1:
        return "uint8" if kinds == {TensorProto.UINT8} else "int8"
    weights = _weight_tensors(model)
    # weight zero points are 0 in both encodings' int8 form; judge by the weight values
    weight_kinds = {t.data_type for t in tensors if t.name in weights and t.dims}
    other_kinds = {t.data_type for t in tensors if t.name not in weights}
    if weight_kinds == {TensorProto.INT8} and other_kinds == {TensorProto.UINT8}:
        return "u8s7" if weights_fit(model, 7) else "u8s8"
    return "mixed"


# what a file's users must know to run it exactly, kept in its metadata beside the encoding
ENCODING_NOTES = {
    "u8s8": "on x86 CPUs without VNNI open onnxruntime sessions with "
            "session.x64quantprecision=1, or the u8s8 kernels saturate; VNNI x86 and ARM need "
            "nothing",
    "u8s7": "weights within 7 bits: exact in onnxruntime on every CPU",
    "uint8": "u8u8 kernels: exact in onnxruntime on every CPU",
    "int8": "on x86 CPUs without VNNI open onnxruntime sessions with "
            "session.x64quantprecision=1",
}


def record_encoding(model: onnx.ModelProto, stored: str) -> None:
    """Name the encoding and what running it exactly takes in the file's metadata."""
    notes = {metadata.ONNX_INT8_ENCODING: stored,
             metadata.ONNX_ONNXRUNTIME_NOTES: ENCODING_NOTES[stored]}
    kept = [p for p in model.metadata_props if p.key not in notes]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in notes.items():
        model.metadata_props.add(key=key, value=value)


def storage_encoding(model: onnx.ModelProto, requested: str) -> str:
    """The encoding ``model`` can be stored in exactly for ``requested``: u8s7 becomes uint8
    when its weights use all 8 bits (a file quantised elsewhere, or re-encoded from one)."""
    return "uint8" if requested == "u8s7" and not weights_fit(model, 7) else requested


def reencode(model: onnx.ModelProto, to: str) -> onnx.ModelProto:
    """Store the 8-bit integers of ``model`` as ``to`` in place, exactly (see the module
    docstring for the encodings; :func:`storage_encoding` picks one that fits).

    Moving data and zero point by the same 128 keeps every ``q - z``, so the dequantised values
    do not change. int8 weights that use -128 (never written by symmetric quantisation) cannot
    be shifted the other way without changing meaning and are refused by the TFLite path instead.
    """
    if to not in ONNX_INT8_ENCODINGS:
        raise ValueError(f"ONNX int8 encoding {to!r}; choose from {', '.join(ONNX_INT8_ENCODINGS)}")
    if storage_encoding(model, to) != to:
        raise ValueError("u8s7 needs weights quantised within 7 bits; these use 8 (store as uint8)")
    weights = _weight_tensors(model) if to in ("u8s7", "u8s8") else set()
    for tensor in eight_bit_tensors(model):
        unsigned = to == "uint8" or (to in ("u8s7", "u8s8") and tensor.name not in weights)
        target = TensorProto.UINT8 if unsigned else TensorProto.INT8
        if tensor.data_type == target:
            continue
        values = numpy_helper.to_array(tensor).astype(np.int16)
        shifted = values + 128 if unsigned else values - 128
        tensor.CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8 if unsigned else np.int8),
                                                tensor.name))
    return model


def to_int8(array: np.ndarray) -> np.ndarray:
    """uint8 integers (or zero points) as the int8 ones with the same meaning; others as given."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return (array.astype(np.int16) - 128).astype(np.int8)
    return array


def as_int8(values: np.ndarray, zero_point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A quantised tensor and its zero points in the int8 form the TFLite spec uses."""
    return to_int8(values), to_int8(zero_point)


def fingerprint(model: onnx.ModelProto, weights_dir: str = "") -> str:
    """A digest of the quantisation itself (scales, zero points, integer weights in int8 form),
    the same for both encodings: a TFLite file records it so validate finds its QDQ reference.
    ``weights_dir``: where a model saved with external data keeps its weights."""
    inits = _initializers(model)
    digest = hashlib.sha256()

    def int8_form(name: str) -> np.ndarray | None:
        tensor = inits.get(name)
        if tensor is None:
            return None
        values = to_int8(numpy_helper.to_array(tensor, weights_dir))
        return values.astype(np.int64) if tensor.data_type in EIGHT_BIT_RANGE else values

    for node in sorted((n for n in model.graph.node if n.op_type in QDQ_OPS),
                       key=lambda n: (n.op_type, n.output[0])):
        digest.update(f"{node.op_type}:{node.output[0]}".encode())
        for name in node.input[:3]:
            value = int8_form(name)
            if value is not None:
                digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:32]


def output_steps(model: onnx.ModelProto) -> list[float | None]:
    """The quantisation step (scale) of each graph output, None where an output is float."""
    producers = {n.output[0]: n for n in model.graph.node}
    inits = _initializers(model)
    steps: list[float | None] = []
    for output in model.graph.output:
        node = producers.get(output.name)
        scale = (inits.get(node.input[1]) if node is not None and node.op_type == "DequantizeLinear"
                 else None)
        steps.append(float(numpy_helper.to_array(scale).ravel()[0])
                     if scale is not None and numpy_helper.to_array(scale).size == 1 else None)
    return steps
