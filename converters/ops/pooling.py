"""MaxPool, AveragePool -> MAX_POOL_2D / AVERAGE_POOL_2D; GlobalAveragePool -> MEAN."""

from __future__ import annotations

import numpy as np
import onnx
from edgecnn.converters.int8_forms import conditional
from edgecnn.converters.lowering import LoweringContext, pad_spatial, spatial_padding
from edgecnn.converters.ops import lower

from edgecnn.errors import ConversionError


def _pool(ctx: LoweringContext, node: onnx.NodeProto, op: str) -> None:
    _, _, h, w = ctx.shape(node.input[0])
    kernel = tuple(ctx.attr(node, "kernel_shape"))
    strides = tuple(ctx.attr(node, "strides", [1, 1]))
    dilations = tuple(ctx.attr(node, "dilations", [1, 1]))
    if dilations != (1, 1):
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} is dilated; "
                              "TFLite pooling has no dilation")
    ceil = int(ctx.attr(node, "ceil_mode", 0))
    out_hw = ctx.shape(node.output[0])[2:] if ceil else None
    count_pad = op == "AVERAGE_POOL_2D" and bool(int(ctx.attr(node, "count_include_pad", 0)))
    padding, explicit = spatial_padding(ctx, node, (h, w), kernel, strides, out_hw=out_hw,
                                        allow_same=not count_pad)
    x = ctx.value(node.input[0]).tensor
    if any(p != (0, 0) for p in explicit):
        if op == "AVERAGE_POOL_2D" and not count_pad:
            raise ConversionError(f"{ctx.graph.source}: AveragePool {node.name!r} pads "
                                  f"{explicit} without counting the padding; TFLite expresses "
                                  "only SAME or VALID for that")
        # max-pooling pads with the lowest value so that padding never wins the max
        lowest = float(np.finfo(np.float32).min) if op == "MAX_POOL_2D" else None
        x = pad_spatial(ctx, x, explicit, node.output[0] + "/pad", fill=lowest)
    fused, out_name = ctx.fuse_activation(node)
    options = ctx.options("Pool2DOptions", padding=0 if padding == "SAME" else 1,
                          strideH=strides[0], strideW=strides[1], filterHeight=kernel[0],
                          filterWidth=kernel[1], fusedActivationFunction=fused)
    if out_name != node.output[0]:  # the fused activation's output replaces ours
        node = onnx.helper.make_node(node.op_type, node.input, [out_name])
    ctx.same_params_output(node, op, [x], ctx.op_version(1, 2), options)


@lower("MaxPool")
def lower_max_pool(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _pool(ctx, node, "MAX_POOL_2D")


def _halves_common(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """AVERAGE_POOL_2D divides the integer sum and rounds halves away from zero, the reference
    to even: with an even divisor (2x2 windows, or windows cut by uncounted padding or ceil
    mode) exact halves are common and 12 % of values differ by a step."""
    kernel = ctx.attr(node, "kernel_shape")
    padded = any(ctx.attr(node, "pads", [0, 0, 0, 0])) or ctx.attr(
        node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID")
    whole_windows = not int(ctx.attr(node, "ceil_mode", 0)) and (
        not padded or int(ctx.attr(node, "count_include_pad", 0)))
    return int(np.prod(kernel)) % 2 == 0 or not whole_windows


@lower("AveragePool", int8=conditional(_halves_common, "int8 kernel for odd windows of counted "
                                       "cells; float island for even windows (2x2), uncounted "
                                       "padding or ceil mode, where halves are common"))
def lower_average_pool(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _pool(ctx, node, "AVERAGE_POOL_2D")


@lower("GlobalAveragePool")
def lower_global_average_pool(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x = ctx.value(node.input[0]).tensor
    axes = ctx.int_const(node.output[0] + "/axes", [1, 2])
    out = ctx.output_value(node.output[0])
    ctx.add_op("MEAN", [x, axes], [out.tensor], version=ctx.op_version(1, 2),
               options=ctx.options("ReducerOptions", keepDims=True))
