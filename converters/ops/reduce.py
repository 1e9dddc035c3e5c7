"""ONNX's Reduce* ops -> MEAN, REDUCE_MAX, REDUCE_MIN, SUM, REDUCE_PROD over the stored axes.

The dynamo exporter writes AdaptiveAvgPool2d(1) as ReduceMean over H and W, which every
ResNet-, MobileNet- and EfficientNet-style classifier ends with; ``F.normalize`` and
``torch.linalg.vector_norm`` become ReduceL2 (EdgeNeXt's cross-covariance attention). Axes are
mapped to the layout the input is stored in (NHWC for a feature map); with keepdims=0 the
output keeps that layout, less the reduced axes. The composite reductions (L1, L2, sum of squares, log-sum, log-sum-exp) are
written as the element-wise op, SUM, then the closing op, in float: the same arithmetic the
ONNX reference does, which no int8 kernel reproduces, so an int8 file holds them as islands.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgecnn.converters.int8_forms import island
from edgecnn.converters.lowering import LoweringContext, Value, permuted, storage_axis
from edgecnn.converters.ops import lower
from edgecnn.errors import ConversionError


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


def _reduction(ctx: LoweringContext, node: onnx.NodeProto
               ) -> tuple[Value, int, object, tuple[int, ...]]:
    """The input, its TFLite axes tensor, the reducer options and the layout the output is
    stored in: the input's layout with the reduced axes gone when they are dropped (keepdims=0),
    so a 5-D reduction to 4-D stays in ONNX's order instead of being declared NHWC."""
    value = ctx.value(node.input[0])
    rank = len(ctx.shape(node.input[0]))
    axes = _axes(ctx, node, rank)
    keep = bool(int(ctx.attr(node, "keepdims", 1)))
    if 0 in axes:
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} reduces over "
                              "the batch axis; TFLite models keep the batch")
    if value.column_order is not None:
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} reduces a "
                              "flattened feature map; reduce before flattening")
    stored_axes = sorted(storage_axis(value.perm, a) for a in axes)
    out_perm = value.perm if keep else _without(value.perm, axes)
    axes_tensor = ctx.int_const(node.output[0] + "/axes", np.asarray(stored_axes, np.int32))
    return value, axes_tensor, ctx.options("ReducerOptions", keepDims=keep), out_perm


def _without(perm: tuple[int, ...], axes: list[int]) -> tuple[int, ...]:
    """``perm`` with ``axes`` removed and the rest renumbered as the output's axes."""
    kept = [a for a in perm if a not in axes]
    return tuple(sorted(kept).index(a) for a in kept)


def _reduce(ctx: LoweringContext, node: onnx.NodeProto, op: str, same_params: bool) -> None:
    value, axes_tensor, options, out_perm = _reduction(ctx, node)
    if same_params:
        ctx.same_params_output(node, op, [value.tensor, axes_tensor], options, perm=out_perm)
        return
    out = ctx.output_value(node.output[0], perm=out_perm)
    ctx.add_op(op, [value.tensor, axes_tensor], [out.tensor], options=options)


def _composite(ctx: LoweringContext, node: onnx.NodeProto, before: str | None,
               after: str | None) -> None:
    """``after(SUM(before(x)))`` in float (an island in int8 files): ``before`` is MUL (x * x),
    ABS or EXP, ``after`` SQRT or LOG; either may be absent."""
    value, axes_tensor, options, out_perm = _reduction(ctx, node)
    name = node.output[0]
    source = value.tensor
    if before is not None:
        stored_shape = permuted(ctx.shape(node.input[0]), value.perm)
        source = ctx.scratch(f"{name}/{before.lower()}", stored_shape, None)
        operands = [value.tensor, value.tensor] if before == "MUL" else [value.tensor]
        ctx.add_op(before, operands, [source])
    out = ctx.output_value(name, perm=out_perm)
    if after is None:
        ctx.add_op("SUM", [source, axes_tensor], [out.tensor], options=options)
        return
    summed = ctx.scratch(f"{name}/sum", ctx.builder.tensor_shape(out.tensor), None)
    ctx.add_op("SUM", [source, axes_tensor], [summed], options=options)
    ctx.add_op(after, [summed], [out.tensor])


@lower("ReduceMean", int16=True)
def lower_reduce_mean(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _reduce(ctx, node, "MEAN", same_params=False)


@lower("ReduceMax")
def lower_reduce_max(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _reduce(ctx, node, "REDUCE_MAX", same_params=True)  # a max never leaves its input's grid


@lower("ReduceSum")
def lower_reduce_sum(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _reduce(ctx, node, "SUM", same_params=False)


@lower("ReduceMin")
def lower_reduce_min(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _reduce(ctx, node, "REDUCE_MIN", same_params=True)  # a min never leaves its input's grid


@lower("ReduceProd", int8=island())
def lower_reduce_prod(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _reduce(ctx, node, "REDUCE_PROD", same_params=False)


@lower("ReduceL2", int8=island())
def lower_reduce_l2(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _composite(ctx, node, "MUL", "SQRT")  # sqrt(sum(x * x)), as ONNX's reference computes it


@lower("ReduceL1", int8=island())
def lower_reduce_l1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _composite(ctx, node, "ABS", None)


@lower("ReduceSumSquare", int8=island())
def lower_reduce_sum_square(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _composite(ctx, node, "MUL", None)


@lower("ReduceLogSum", int8=island())
def lower_reduce_log_sum(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _composite(ctx, node, None, "LOG")


@lower("ReduceLogSumExp", int8=island())
def lower_reduce_log_sum_exp(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """log(sum(exp(x))) without the max shift, as ONNX's reference computes it: exact where the
    reference is, and overflowing where it does."""
    _composite(ctx, node, "EXP", "LOG")
