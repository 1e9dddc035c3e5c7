"""Float islands: ops an int8 graph runs in float, between DEQUANTIZE and QUANTIZE.

In a QDQ graph every op means ``DequantizeLinear -> float op -> QuantizeLinear``. Where TFLite
has no int8 kernel for an op (LayerNorm, GELU, HardSigmoid, division, ...), or where
onnxruntime's quantiser left a tensor float, writing exactly that sequence is not an
approximation: it is the QDQ graph's own arithmetic, so the int8 file still matches its QDQ
reference. Everything else stays full-integer. ``inspect`` lists the islands.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from edgecnn.converters.lowering import LoweringContext, Value

# Lowerings written for float only: no int8 TFLite kernel, or none that computes the QDQ
# arithmetic (dequantise, float op, round) bit for bit on every runtime edgecnn targets.
FLOAT_OPS = {"Abs", "BatchNormalization", "Div", "Exp", "Gelu", "HardSigmoid", "HardSwish",
             "LayerNormalization", "Max", "Min", "Neg", "Pow", "PRelu", "Sqrt"}
ELEMENTWISE = {"Add", "Sub", "Mul"}
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def needs_float(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """Whether ``node`` of an int8 graph runs as a float island."""
    if node.op_type in FLOAT_OPS:
        return True
    if node.op_type == "Clip" and ctx.activation_code(node) is None:
        return True  # an arbitrary clip: no int8 activation expresses it
    if node.op_type in ELEMENTWISE and any(
            ctx.is_const(n) and not _int8_per_tensor(ctx, n) for n in node.input if n):
        return True  # a float (or per-channel) constant: no int8 ADD/MUL operand expresses it
    if node.op_type in WEIGHTED and len(node.input) > 1 and ctx.is_const(node.input[1]) and (
            ctx.weight_quant(node.input[1]) is None):
        return True  # float weights: the quantiser was told to leave it (an accuracy budget)
    activations = [n for n in [*node.input, *node.output] if n and not ctx.is_const(n)]
    return any(n not in ctx.graph.act_quant for n in activations)


def _int8_per_tensor(ctx: LoweringContext, name: str) -> bool:
    quant = ctx.weight_quant(name)
    return quant is not None and quant.scale.size == 1 and quant.values.dtype == np.int8


def lower_float_island(ctx: LoweringContext, node: onnx.NodeProto,
                       lowering: Callable[[LoweringContext, onnx.NodeProto], None]) -> None:
    """DEQUANTIZE the int8 inputs, run the float lowering, QUANTIZE what the QDQ graph
    quantises (outputs it left float stay float for the next island)."""
    shadowed: dict[str, Value] = {}
    for name in dict.fromkeys(n for n in node.input if n and not ctx.is_const(n)):
        value = ctx.stored(name)
        if ctx.builder.tensor_dtype(value.tensor) == np.float32:
            continue
        real = ctx.builder.add_tensor(f"{name}/float", ctx.builder.tensor_shape(value.tensor),
                                      np.float32, dynamic_batch=True)
        ctx.add_op("DEQUANTIZE", [value.tensor], [real], version=2)
        shadowed[name] = value
        ctx.values[name] = Value(real, value.perm, value.column_order)
    before = set(ctx.values)
    ctx.int8, ctx.island = False, True
    try:
        lowering(ctx, node)
    finally:
        ctx.int8, ctx.island = True, False
    produced = [k for k in ctx.values if k not in before and k in ctx.graph.shapes]
    for name, value in shadowed.items():
        ctx.values[name] = value
    for name in produced:
        params = ctx.graph.act_quant.get(name)
        if params is None:
            continue  # the QDQ graph keeps it float too
        real = ctx.values[name]
        ctx.builder.tensors[real.tensor].name = f"{name}/float"
        out = ctx.builder.add_tensor(name, ctx.builder.tensor_shape(real.tensor), np.int8,
                                     quant=params, dynamic_batch=True)
        ctx.add_op("QUANTIZE", [real.tensor], [out], version=2)
        ctx.values[name] = Value(out, real.perm, real.column_order)
