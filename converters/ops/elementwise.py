"""Binary elementwise ops (Add, Sub, Mul, Div, Min, Max, Pow by a constant) and PRelu, with
constants brought into the activation's layout (NHWC, flattened column order)."""

from __future__ import annotations

import numpy as np
import onnx

from edgecnn.converters.int8_forms import Int8Form, island
from edgecnn.converters.lowering import NCHW_TO_NHWC, LoweringContext, default_perm
from edgecnn.converters.ops import lower
from edgecnn.errors import ConversionError

# TFLite's int8 ADD/SUB rescales both operands to one fixed-point domain before adding; LiteRT
# rounds the sum as the QDQ reference does for operand scale ratios of 1 to 10,000 (a box
# decode's anchors plus distances, a residual's tiny branch): 0 values off beyond ties
ADD_SUB_INT8 = Int8Form(note="int8 kernel (exact for operand scale ratios up to 10,000; "
                             "tests/test_int8_add_scales.py)")


def _constant_operand(ctx: LoweringContext, node: onnx.NodeProto, name: str,
                      perm: tuple[int, ...], order: np.ndarray | None) -> int:
    array = np.asarray(ctx.graph.constants[name], np.float32)
    rank = len(perm)
    if perm != tuple(range(rank)):  # broadcasting is positional: align to ONNX order, permute
        array = array.reshape((1,) * (rank - array.ndim) + array.shape).transpose(perm)
    if order is not None and array.ndim >= 1 and array.shape[-1] == order.size:
        array = array[..., order]
    if not ctx.int8:
        return ctx.builder.add_constant(node.output[0] + "/" + name, np.ascontiguousarray(array))
    wq = ctx.weight_quant(name)  # islands.needs_float sends every other constant to float
    assert wq is not None and wq.scale.size == 1 and wq.values.dtype == np.int8
    params = wq.params()  # the QDQ graph's own integers, recovered exactly from its floats
    values = np.clip(np.round(array / params.scale[0]) + params.zero_point[0], -128, 127)
    return ctx.builder.add_constant(node.output[0] + "/" + name,
                                    np.ascontiguousarray(values.astype(np.int8)), params)


def _binary(ctx: LoweringContext, node: onnx.NodeProto, op: str,
            options_name: str | None) -> None:
    rank = len(ctx.shape(node.output[0]))
    activations = [i for i in node.input if not ctx.is_const(i)]
    if not activations:
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} has only "
                              "constant inputs and should have been folded")
    # work in the first operand's stored layout when every operand can take it (no TRANSPOSE
    # for a Linear's bias on a channels-last tensor); otherwise in the default layout
    stored = ctx.stored(activations[0])
    same_rank = all(len(ctx.shape(a)) == rank for a in activations)
    perm = stored.perm if same_rank and stored.column_order is None else default_perm(rank)
    order = stored.column_order
    inputs = []
    for name in node.input:
        if ctx.is_const(name):
            inputs.append(_constant_operand(ctx, node, name, perm, order))
        else:
            value = ctx.stored(name) if order is not None else (
                ctx.in_layout(name, perm) if len(ctx.shape(name)) == rank else ctx.value(name))
            if (value.column_order is None) != (order is None) or (
                    order is not None and not np.array_equal(value.column_order, order)):
                raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} mixes "
                                      "flattened and unflattened tensors")
            inputs.append(value.tensor)
    if options_name is None:  # MINIMUM, MAXIMUM: no fused activation
        out = ctx.output_value(node.output[0], column_order=order, perm=perm)
        ctx.add_op(op, inputs, [out.tensor])
        return
    fused, out_name = ctx.fuse_activation(node)
    out = ctx.output_value(out_name, column_order=order, perm=perm)
    ctx.add_op(op, inputs, [out.tensor],
               options=ctx.options(options_name, fusedActivationFunction=fused))


@lower("Sub", int8=ADD_SUB_INT8, int16=True)
def lower_sub(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _binary(ctx, node, "SUB", "SubOptions")


@lower("Div", int8=island())
def lower_div(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _binary(ctx, node, "DIV", "DivOptions")


@lower("Min", int8=island())
def lower_min(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _two_operands(ctx, node)
    _binary(ctx, node, "MINIMUM", None)


@lower("Max", int8=island())
def lower_max(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _two_operands(ctx, node)
    _binary(ctx, node, "MAXIMUM", None)


def _two_operands(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if len(node.input) != 2:
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} has "
                              f"{len(node.input)} inputs; TFLite's takes two (chain them)")


@lower("Pow", int8=island())
def lower_pow(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """x ** 2 as MUL(x, x) and x ** 0.5 as SQRT: the exponents CNNs use, exactly."""
    exponent = ctx.const(node, 1).ravel()
    if exponent.size != 1 or float(exponent[0]) not in (2.0, 0.5):
        raise ConversionError(f"{ctx.graph.source}: Pow {node.name!r} by {exponent.tolist()}; "
                              "edgecnn converts float x**2 and x**0.5")
    source = ctx.value(node.input[0])
    out = ctx.output_value(node.output[0], column_order=source.column_order)
    if float(exponent[0]) == 2.0:
        ctx.add_op("MUL", [source.tensor, source.tensor], [out.tensor],
                   options=ctx.options("MulOptions", fusedActivationFunction=0))
    else:
        ctx.add_op("SQRT", [source.tensor], [out.tensor])


@lower("PRelu", int8=island())
def lower_prelu(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    source = ctx.value(node.input[0])
    slope = np.asarray(ctx.const(node, 1), np.float32)
    if len(ctx.shape(node.output[0])) == 4:  # (C, 1, 1) -> NHWC (1, 1, C), batch left out
        slope = slope.reshape((1,) * (4 - slope.ndim) + slope.shape).transpose(NCHW_TO_NHWC)[0]
    elif source.column_order is not None and slope.shape[-1:] == source.column_order.shape:
        slope = slope[..., source.column_order]
    alpha = ctx.builder.add_constant(node.output[0] + "/alpha", np.ascontiguousarray(slope))
    out = ctx.output_value(node.output[0], column_order=source.column_order)
    ctx.add_op("PRELU", [source.tensor, alpha], [out.tensor])


@lower("Add", int8=ADD_SUB_INT8, int16=True)
def lower_add(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _binary(ctx, node, "ADD", "AddOptions")


@lower("Mul", int16=True)
def lower_mul(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _binary(ctx, node, "MUL", "MulOptions")


@lower("BatchNormalization", int8=island())
def lower_batch_norm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """A BatchNormalization that could not be folded into a Conv before it: MUL then ADD."""
    if int(ctx.attr(node, "training_mode", 0)) or any(node.output[1:]):
        raise ConversionError(f"{ctx.graph.source}: BatchNormalization {node.name!r} is in "
                              "training mode (batch statistics, running-mean outputs); "
                              "export the model in eval mode")
    gamma, beta, mean, var = (ctx.const(node, i).astype(np.float64) for i in range(1, 5))
    scale = gamma / np.sqrt(var + float(ctx.attr(node, "epsilon", 1e-5)))
    shift = beta - mean * scale
    source = ctx.value(node.input[0])
    if source.column_order is not None:
        scale, shift = scale[source.column_order], shift[source.column_order]
    shape = ctx.builder.tensor_shape(source.tensor)
    name = node.output[0]
    factor = ctx.builder.add_constant(name + "/scale", scale.astype(np.float32))
    offset = ctx.builder.add_constant(name + "/shift", shift.astype(np.float32))
    scaled = ctx.scratch(name + "/scaled", shape, None)
    ctx.add_op("MUL", [source.tensor, factor], [scaled],
               options=ctx.options("MulOptions", fusedActivationFunction=0))
    fused, out_name = ctx.fuse_activation(node)
    out = ctx.output_value(out_name, column_order=source.column_order)
    ctx.add_op("ADD", [scaled, offset], [out.tensor],
               options=ctx.options("AddOptions", fusedActivationFunction=fused))
