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

from edgecnn.converters.int8_forms import int8_form, int16_kernel
from edgecnn.converters.lowering import LoweringContext, Value
from edgecnn.converters.tflite_builder import QuantParams
from edgecnn.errors import ConversionError

# Which ops are islands, when, and whether an integer-only file may write them in int8 is
# declared beside each lowering (converters/int8_forms.py); this module applies it.
ELEMENTWISE = {"Add", "Sub", "Mul"}
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def float_reason(ctx: LoweringContext, node: onnx.NodeProto) -> tuple[str, bool] | None:
    """Why ``node`` of an int8 graph would run in float, and whether an integer-only file may
    write its int8 kernel instead (one within a step of the QDQ reference per layer); None when
    it is an int8 op anyway."""
    form = int8_form(node.op_type)
    int16 = _int16_values(ctx, node)
    if int16 and not int16_kernel(node.op_type):
        return "it reads or writes int16 and no 16x8 TFLite kernel computes it", False
    if int16 and node.op_type in ELEMENTWISE and any(ctx.is_const(n) for n in node.input if n):
        return "a constant operand, which 16x8 ADD/MUL cannot take", False
    if form.kind == "island":
        return "no int8 TFLite kernel computes it as the QDQ graph does", form.integer_only
    if form.inexact is not None and form.inexact(ctx, node):
        return "its int8 kernel rounds a step away on some values", True
    if form.fixed_output and node.output[0] in ctx.graph.act_quant and not (
            QuantParams.per_tensor(*form.fixed_output).same_as(ctx.quant(node.output[0]))):
        # a QDQ graph from elsewhere: the int8 kernel would round to its own fixed parameters
        # and again to the graph's, one step off on many values; the island rounds once
        return "its output parameters are not the int8 kernel's", True
    if node.op_type == "Clip" and ctx.activation_code(node) is None:
        return "an arbitrary clip, which no int8 activation expresses", False
    if node.op_type in ELEMENTWISE and any(
            ctx.is_const(n) and not _int8_per_tensor(ctx, n) for n in node.input if n):
        return "a float or per-channel constant operand, which int8 ADD/MUL cannot take", False
    if node.op_type in WEIGHTED and len(node.input) > 1 and ctx.is_const(node.input[1]) and (
            ctx.weight_quant(node.input[1]) is None):
        return "float weights (an accuracy budget kept the layer float)", False
    outputs = [_fused_output(ctx, node), *node.output[1:]]
    activations = [n for n in [*node.input, *outputs] if n and not ctx.is_const(n)]
    left = next((n for n in activations if n not in ctx.graph.act_quant), None)
    if left is not None:
        return f"the QDQ graph leaves {left!r} in float", False
    return None


def _int16_values(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """Whether ``node`` reads or writes an int16 activation (a 16x8 layer)."""
    names = [*node.input, _fused_output(ctx, node), *node.output]
    return any(ctx.graph.act_quant[n].int16 for n in names if n in ctx.graph.act_quant)


def _fused_output(ctx: LoweringContext, node: onnx.NodeProto) -> str:
    """The value a Conv or Gemm writes in the int8 file: the output of the Relu or Relu6 its
    lowering fuses (``LoweringContext.fuse_activation``). AIMET's QDQ files quantise only after
    the activation, where onnxruntime's drop the activation into the Conv's own range."""
    out = node.output[0]
    if node.op_type not in ("Conv", "Gemm") or out in ctx.graph.output_names:
        return out
    users = ctx.graph.consumers(out)
    if len(users) == 1 and ctx.activation_code(users[0]) is not None:
        return users[0].output[0]
    return out


def needs_float(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """Whether ``node`` of an int8 graph runs as a float island; in an integer-only file (an
    NPU's, an MCU's) a node that has no int8 form is refused in one line instead."""
    found = float_reason(ctx, node)
    if found is None:
        return False
    reason, integer_form = found
    if not ctx.integer_only:
        return True
    if integer_form:
        return False
    raise ConversionError(f"{ctx.graph.source}: {node.op_type} node {node.name!r} has no "
                          f"integer-only form ({reason}); an NPU or MCU file cannot hold a float "
                          "op: convert with int8_for=cpu to run it as a float island",
                          parameters=("int8_for",))


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
        ctx.add_op("DEQUANTIZE", [value.tensor], [real])
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
        for moved in [k for k in ctx.values if k not in before and k.startswith(name + "@")]:
            del ctx.values[moved]  # a float copy in another layout: int8 ops must not reuse it
    for name in produced:
        params = ctx.graph.act_quant.get(name)
        if params is None:
            continue  # the QDQ graph keeps it float too
        real = ctx.values[name]
        ctx.builder.tensors[real.tensor].name = f"{name}/float"
        out = ctx.builder.add_tensor(name, ctx.builder.tensor_shape(real.tensor), params.dtype,
                                     quant=params, dynamic_batch=True)
        ctx.add_op("QUANTIZE", [real.tensor], [out])
        ctx.values[name] = Value(out, real.perm, real.column_order)
