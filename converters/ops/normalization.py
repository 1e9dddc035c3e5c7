"""LayerNormalization -> MEAN, SUB, MUL, RSQRT, ADD: the arithmetic, in the stored layout.

TFLite has no layer-norm builtin, so it is written out as the arithmetic it is. The normalised
axes must be the stored tensor's last ones (ConvNeXt normalises channels after a permute to
NHWC, which the layout pass makes free); otherwise one TRANSPOSE moves them there. Float only:
onnxruntime's QDQ quantiser leaves LayerNormalization's statistics float.
"""

from __future__ import annotations

import numpy as np
import onnx
from edgecnn.converters.int8_forms import island
from edgecnn.converters.lowering import LoweringContext
from edgecnn.converters.ops import lower

from edgecnn.errors import ConversionError


@lower("LayerNormalization", int8=island())
def lower_layer_norm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if len(node.output) > 1 and any(node.output[1:]):
        raise ConversionError(f"{ctx.graph.source}: LayerNormalization {node.name!r} exports its "
                              "mean/inverse std (a training graph); export in eval mode")
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    axis = int(ctx.attr(node, "axis", -1)) % rank
    if axis == 0:
        raise ConversionError(f"{ctx.graph.source}: LayerNormalization {node.name!r} normalises "
                              "over the batch axis")
    normalised = tuple(range(axis, rank))
    stored = ctx.feature_map(node, node.input[0])
    if stored.perm[axis:] != normalised:
        stored = ctx.in_layout(node.input[0], (*[a for a in stored.perm if a < axis],
                                               *normalised))
    perm, x = stored.perm, stored.tensor
    name = node.output[0]
    stored_shape = ctx.builder.tensor_shape(x)
    reduced = (*stored_shape[:axis], *([1] * len(normalised)))
    axes = ctx.int_const(name + "/axes", list(range(axis, rank)))
    keep = ctx.options("ReducerOptions", keepDims=True)
    no_act = {"fusedActivationFunction": 0}

    def tensor(tag: str, dims: tuple[int, ...]) -> int:
        return ctx.scratch(f"{name}/{tag}", dims, None)

    mean, diff = tensor("mean", reduced), tensor("centred", stored_shape)
    ctx.add_op("MEAN", [x, axes], [mean], options=keep)
    ctx.add_op("SUB", [x, mean], [diff], options=ctx.options("SubOptions", **no_act))
    square = tensor("squared", stored_shape)
    ctx.add_op("MUL", [diff, diff], [square], options=ctx.options("MulOptions", **no_act))
    var, shifted, inv = tensor("var", reduced), tensor("var_eps", reduced), tensor("rstd", reduced)
    ctx.add_op("MEAN", [square, axes], [var], options=keep)
    eps = ctx.builder.add_constant(name + "/eps",
                                   np.array([ctx.attr(node, "epsilon", 1e-5)], np.float32))
    ctx.add_op("ADD", [var, eps], [shifted], options=ctx.options("AddOptions", **no_act))
    ctx.add_op("RSQRT", [shifted], [inv])
    current = tensor("normalised", stored_shape)
    ctx.add_op("MUL", [diff, inv], [current], options=ctx.options("MulOptions", **no_act))
    gamma = np.asarray(ctx.const(node, 1), np.float32)
    beta = (np.asarray(ctx.const(node, 2), np.float32) if len(node.input) > 2 and node.input[2]
            else None)
    out = ctx.output_value(name, perm=perm)
    scaled = tensor("scaled", stored_shape) if beta is not None else out.tensor
    ctx.add_op("MUL", [current, ctx.builder.add_constant(name + "/gamma", gamma)], [scaled],
               options=ctx.options("MulOptions", **no_act))
    if beta is not None:
        ctx.add_op("ADD", [scaled, ctx.builder.add_constant(name + "/beta", beta)], [out.tensor],
                   options=ctx.options("AddOptions", **no_act))
