"""ReduceMean, ReduceMax, ReduceSum -> MEAN / REDUCE_MAX / SUM over NHWC axes.

The dynamo exporter writes AdaptiveAvgPool2d(1) as ReduceMean over H and W, which every
ResNet-, MobileNet- and EfficientNet-style classifier ends with. Axes are mapped from NCHW to
NHWC; keepdims=0 is supported where the kept axes stay in order (H and W, or all three).
"""

from __future__ import annotations

import numpy as np
import onnx

from edgecnn.converters.lowering import LoweringContext
from edgecnn.converters.ops import lower
from edgecnn.errors import ConversionError

NCHW_TO_NHWC_AXIS = (0, 3, 1, 2)


def _axes(ctx: LoweringContext, node: onnx.NodeProto, rank: int) -> list[int]:
    if len(node.input) > 1 and node.input[1]:  # opset 18: axes as an input
        axes = [int(a) for a in ctx.const(node, 1).ravel()]
    else:
        axes = list(ctx.attr(node, "axes", []))
    if not axes:
        if int(ctx.attr(node, "noop_with_empty_axes", 0)):
            raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} reduces "
                                  "nothing (noop_with_empty_axes); drop the node")
        axes = list(range(rank))
    return sorted(a % rank for a in axes)


def _reduce(ctx: LoweringContext, node: onnx.NodeProto, op: str, same_params: bool) -> None:
    value = ctx.value(node.input[0])
    rank = len(ctx.shape(node.input[0]))
    axes = _axes(ctx, node, rank)
    keep = bool(int(ctx.attr(node, "keepdims", 1)))
    if 0 in axes:
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} reduces over "
                              "the batch axis; TFLite models keep the batch")
    if value.nhwc:
        if not keep and axes not in ([2, 3], [1, 2, 3]):
            raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} drops axes "
                                  f"{axes} of an NCHW map; only H and W (or C, H, W) can be "
                                  "dropped without reordering")
        axes = sorted(NCHW_TO_NHWC_AXIS[a] for a in axes)
    elif value.column_order is not None:
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} reduces a "
                              "flattened feature map; reduce before flattening")
    axes_tensor = ctx.int_const(node.output[0] + "/axes", np.asarray(axes, np.int32))
    options = ctx.options("ReducerOptions", keepDims=keep)
    if same_params:
        ctx.same_params_output(node, op, [value.tensor, axes_tensor],
                               options)
        return
    out = ctx.output_value(node.output[0])
    ctx.add_op(op, [value.tensor, axes_tensor], [out.tensor], options=options)


@lower("ReduceMean")
def lower_reduce_mean(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _reduce(ctx, node, "MEAN", same_params=False)


@lower("ReduceMax")
def lower_reduce_max(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _reduce(ctx, node, "REDUCE_MAX", same_params=True)  # a max never leaves its input's grid


@lower("ReduceSum")
def lower_reduce_sum(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _reduce(ctx, node, "SUM", same_params=False)
