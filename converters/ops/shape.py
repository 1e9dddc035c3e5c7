"""Flatten/Reshape, Concat and Pad, with the NCHW -> NHWC bookkeeping they need."""

from __future__ import annotations

import numpy as np
import onnx
from edgecnn.converters.lowering import NCHW_TO_NHWC, LoweringContext, Value, fill_constant
from edgecnn.converters.ops import lower

from edgecnn.errors import ConversionError

DENSE_OPS = {"Gemm", "MatMul"}


def _nhwc_column_order(c: int, h: int, w: int) -> np.ndarray:
    """For each column of an NHWC-flattened tensor, its index in the NCHW flattening."""
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()


def _flatten_4d(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """4-D -> 2-D: a RESHAPE whose column order the next fully-connected layer absorbs."""
    n, c, h, w = ctx.shape(node.input[0])
    source = ctx.value(node.input[0])
    users = ctx.graph.consumers(node.output[0])
    order = None
    x = source.tensor
    if c > 1 and h * w > 1:
        folds = (users and node.output[0] not in ctx.graph.output_names
                 and all(u.op_type in DENSE_OPS and u.input[0] == node.output[0] for u in users))
        if folds:
            order = _nhwc_column_order(c, h, w)
        else:  # someone needs the NCHW element order itself: transpose once, here only
            perm = ctx.int_const(node.output[0] + "/perm", [0, 3, 1, 2])
            x = ctx.scratch(node.output[0] + "/nchw", (n, c, h, w), ctx.builder.tensor_quant(x))
            ctx.add_op("TRANSPOSE", [source.tensor, perm], [x], version=ctx.op_version(1, 2))
    shape = ctx.int_const(node.output[0] + "/shape", [-1, c * h * w])
    node_out = onnx.helper.make_node("Reshape", [node.input[0]], node.output)
    _reshape(ctx, node_out, x, shape, (n, c * h * w), order)


def _reshape(ctx: LoweringContext, node: onnx.NodeProto, x: int, shape_tensor: int,
             out_shape: tuple[int, ...], order: np.ndarray | None) -> None:
    options = ctx.options("ReshapeOptions", newShape=[-1, *out_shape[1:]])
    ctx.same_params_output(node, "RESHAPE", [x, shape_tensor], 1, options)
    if order is not None:
        value = ctx.values[node.output[0]]
        ctx.values[node.output[0]] = Value(value.tensor, False, order)


@lower("Flatten", "Reshape")
def lower_reshape(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    in_shape = ctx.shape(node.input[0])
    out_shape = ctx.shape(node.output[0])
    if len(in_shape) == 4 and len(out_shape) == 2 and out_shape[0] == in_shape[0]:
        _flatten_4d(ctx, node)
        return
    if len(in_shape) == 4 or len(out_shape) == 4:
        spatial_trivial = (len(out_shape) == 4 and out_shape[2] * out_shape[3] == 1) or (
            len(in_shape) == 4 and in_shape[1] == 1 and len(out_shape) != 4)
        if not spatial_trivial:
            raise ConversionError(
                f"{ctx.graph.source}: Reshape {node.name!r} from {list(in_shape)} to "
                f"{list(out_shape)} reorders NCHW data; only flattening to (N, C*H*W) converts")
    source = ctx.value(node.input[0])
    tflite_shape = ([out_shape[i] for i in NCHW_TO_NHWC] if len(out_shape) == 4
                    else list(out_shape))
    shape = ctx.int_const(node.output[0] + "/shape", [-1, *tflite_shape[1:]])
    _reshape(ctx, node, source.tensor, shape, tuple(tflite_shape), None)


@lower("Concat")
def lower_concat(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    rank = len(ctx.shape(node.output[0]))
    axis = int(ctx.attr(node, "axis"))
    axis = axis + rank if axis < 0 else axis
    if rank == 4:
        axis = NCHW_TO_NHWC.index(axis)
    out_q = ctx.quant(node.output[0])
    inputs = []
    for i, name in enumerate(node.input):
        if ctx.is_const(name):
            raise ConversionError(f"{ctx.graph.source}: Concat {node.name!r} joins a constant; "
                                  "only activations convert")
        source = ctx.value(name)
        if source.column_order is not None:
            raise ConversionError(f"{ctx.graph.source}: Concat {node.name!r} joins flattened "
                                  "feature maps; concatenate before flattening")
        # TFLite's int8 CONCATENATION needs every input at the output's parameters
        inputs.append(ctx.with_params(source.tensor, out_q, f"{node.output[0]}/in{i}"))
    out = ctx.output_value(node.output[0])
    ctx.add_op("CONCATENATION", inputs, [out.tensor], version=ctx.op_version(1, 2),
               options=ctx.options("ConcatenationOptions", axis=axis))


@lower("Pad")
def lower_pad(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    mode = ctx.attr(node, "mode", "constant")
    if mode != "constant":
        raise ConversionError(f"{ctx.graph.source}: Pad {node.name!r} mode {mode!r}; only "
                              "constant padding converts")
    pads = ctx.const(node, 1).astype(np.int64) if len(node.input) > 1 else np.asarray(
        ctx.attr(node, "pads"))
    value = float(ctx.const(node, 2).ravel()[0]) if len(node.input) > 2 and node.input[2] else 0.0
    if len(node.input) > 3 and node.input[3]:
        raise ConversionError(f"{ctx.graph.source}: Pad {node.name!r} uses axes; pad all axes")
    rank = len(pads) // 2
    pairs = [[int(pads[i]), int(pads[i + rank])] for i in range(rank)]
    if rank == 4:
        pairs = [pairs[i] for i in NCHW_TO_NHWC]
    if any(p < 0 for pair in pairs for p in pair):
        raise ConversionError(f"{ctx.graph.source}: Pad {node.name!r} crops (negative pads)")
    x = ctx.value(node.input[0]).tensor
    paddings = ctx.int_const(node.output[0] + "/paddings", pairs)
    if value == 0.0:
        ctx.same_params_output(node, "PAD", [x, paddings], ctx.op_version(1, 2))
        return
    quant = ctx.builder.tensor_quant(x) if ctx.int8 else None
    fill = fill_constant(ctx, value, quant, node.output[0] + "/fill")
    ctx.same_params_output(node, "PADV2", [x, paddings, fill], ctx.op_version(1, 2))
