"""LayerNormalization, InstanceNormalization, GroupNormalization -> MEAN, SUB, MUL, RSQRT, ADD:
the arithmetic, in the stored layout; LRN -> LOCAL_RESPONSE_NORMALIZATION.

TFLite has no layer-norm builtin, so it is written out as the arithmetic it is. The normalised
axes must be the stored tensor's last ones (ConvNeXt normalises channels after a permute to
NHWC, which the layout pass makes free); otherwise one TRANSPOSE moves them there. Float only:
onnxruntime's QDQ quantiser leaves LayerNormalization's statistics float.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgecnn.converters.int8_forms import island
from edgecnn.converters.lowering import LoweringContext, reshape
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
    gamma = np.asarray(ctx.const(node, 1), np.float32)
    beta = (np.asarray(ctx.const(node, 2), np.float32) if len(node.input) > 2 and node.input[2]
            else None)
    out = ctx.output_value(node.output[0], perm=stored.perm)
    _normalise(ctx, node.output[0], stored.tensor, list(range(axis, rank)),
               float(ctx.attr(node, "epsilon", 1e-5)), gamma, beta, out.tensor)


def _normalise(ctx: LoweringContext, name: str, x: int, axes: list[int], epsilon: float,
               gamma: np.ndarray | None, beta: np.ndarray | None, out: int) -> None:
    """``(x - mean) * rsqrt(var + eps) * gamma + beta`` with the statistics over ``axes`` of the
    stored tensor ``x``, written into ``out``: MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL (MUL, ADD).
    The arithmetic ONNX's normalisations define, so exact to float rounding; ``gamma`` and
    ``beta`` broadcast against the stored layout (None: left out)."""
    stored_shape = ctx.builder.tensor_shape(x)
    reduced = tuple(1 if i in axes else d for i, d in enumerate(stored_shape))
    axes_tensor = ctx.int_const(name + "/axes", axes)
    keep = ctx.options("ReducerOptions", keepDims=True)
    no_act = {"fusedActivationFunction": 0}

    def tensor(tag: str, dims: tuple[int, ...]) -> int:
        return ctx.scratch(f"{name}/{tag}", dims, None)

    mean, diff = tensor("mean", reduced), tensor("centred", stored_shape)
    ctx.add_op("MEAN", [x, axes_tensor], [mean], options=keep)
    ctx.add_op("SUB", [x, mean], [diff], options=ctx.options("SubOptions", **no_act))
    square = tensor("squared", stored_shape)
    ctx.add_op("MUL", [diff, diff], [square], options=ctx.options("MulOptions", **no_act))
    var, shifted, inv = tensor("var", reduced), tensor("var_eps", reduced), tensor("rstd", reduced)
    ctx.add_op("MEAN", [square, axes_tensor], [var], options=keep)
    eps = ctx.builder.add_constant(name + "/eps", np.array([epsilon], np.float32))
    ctx.add_op("ADD", [var, eps], [shifted], options=ctx.options("AddOptions", **no_act))
    ctx.add_op("RSQRT", [shifted], [inv])
    if gamma is None and beta is None:
        ctx.add_op("MUL", [diff, inv], [out], options=ctx.options("MulOptions", **no_act))
        return
    current = tensor("normalised", stored_shape)
    ctx.add_op("MUL", [diff, inv], [current], options=ctx.options("MulOptions", **no_act))
    _affine(ctx, name, current, gamma, beta, out)


def _affine(ctx: LoweringContext, name: str, x: int, gamma: np.ndarray | None,
            beta: np.ndarray | None, out: int) -> None:
    """``x * gamma + beta`` into ``out`` (either left out when None)."""
    steps = [(op, c) for op, c in (("MUL", gamma), ("ADD", beta)) if c is not None]
    if not steps:
        reshape(ctx, x, ctx.builder.tensor_shape(x), out, name + "/copy_shape")
        return
    current = x
    for i, (op, constant) in enumerate(steps):
        target = (out if i == len(steps) - 1
                  else ctx.scratch(f"{name}/{op.lower()}", ctx.builder.tensor_shape(x), None))
        options = ctx.options("MulOptions" if op == "MUL" else "AddOptions",
                              fusedActivationFunction=0)
        ctx.add_op(op, [current, ctx.builder.add_constant(f"{name}/{op.lower()}_by",
                                                          np.ascontiguousarray(constant))],
                   [target], options=options)
        current = target

def _image(ctx: LoweringContext, node: onnx.NodeProto) -> tuple[int, int, int, int]:
    """The NCHW shape of ``node``'s 4-D input (stored NHWC); other ranks are refused."""
    shape = ctx.shape(node.input[0])
    if len(shape) != 4:
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} normalises a "
                              f"{len(shape)}-D tensor; edgecnn lowers it for 4-D NCHW maps only")
    n, c, h, w = shape
    return n, c, h, w


def _channel_constant(ctx: LoweringContext, node: onnx.NodeProto, index: int,
                      channels: int) -> np.ndarray | None:
    """Per-channel scale or bias input ``index`` (None when absent)."""
    if len(node.input) <= index or not node.input[index]:
        return None
    values = np.asarray(ctx.const(node, index), np.float32).ravel()
    if values.size not in (1, channels):
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} input {index} "
                              f"has {values.size} values for {channels} channels")
    return values


@lower("InstanceNormalization", int8=island())
def lower_instance_norm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Statistics per image and channel over every axis after the channels, in the stored
    layout (NHWC's 1 and 2 for a map; the last axis of the (N, G, C/G*H*W) view through which
    PyTorch exports GroupNorm at every opset, both exporters); scale and bias on the channels."""
    shape = ctx.shape(node.input[0])
    if len(shape) < 3:
        raise ConversionError(f"{ctx.graph.source}: InstanceNormalization {node.name!r} takes a "
                              f"{len(shape)}-D tensor; ONNX needs (N, C, ...)")
    stored = ctx.feature_map(node, node.input[0])
    perm = stored.perm
    axes = sorted(perm.index(a) for a in range(2, len(shape)))
    channel_shape = [1] * len(shape)
    channel_shape[perm.index(1)] = shape[1]

    def per_channel(index: int) -> np.ndarray | None:
        values = _channel_constant(ctx, node, index, shape[1])
        return None if values is None else np.broadcast_to(values.reshape(-1),
                                                           (shape[1],)).reshape(channel_shape)

    out = ctx.output_value(node.output[0], perm=perm)
    _normalise(ctx, node.output[0], stored.tensor, axes, float(ctx.attr(node, "epsilon", 1e-5)),
               per_channel(1), per_channel(2), out.tensor)


@lower("GroupNormalization", int8=island())
def lower_group_norm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """GroupNorm channels-last: the NHWC map [N, H, W, C] viewed as [N, H*W, G, C/G] (a RESHAPE,
    no data moves), the statistics over axes 1 and 3 (each image's group, ONNX's mean and
    variance, epsilon inside the square root), back to [N, H, W, C], then scale and bias on the
    channels. The node :func:`~edgecnn.converters.fusions.fuse_group_norm` makes of PyTorch's
    Reshape -> InstanceNormalization -> Reshape (scale and bias left out), or ONNX's own op
    (scale and bias per channel, or per group before opset 21)."""
    n, c, h, w = _image(ctx, node)
    groups = int(ctx.attr(node, "num_groups"))
    if groups < 1 or c % groups:
        raise ConversionError(f"{ctx.graph.source}: GroupNormalization {node.name!r} has "
                              f"num_groups={groups} for {c} channels; ONNX needs a divisor")
    x = ctx.in_layout(node.input[0], (0, 2, 3, 1)).tensor
    name = node.output[0]

    def per_channel(index: int) -> np.ndarray | None:
        if len(node.input) <= index or not node.input[index]:
            return None
        values = np.asarray(ctx.const(node, index), np.float32).ravel()
        if values.size == groups:  # opset 18: per group
            values = np.repeat(values, c // groups)
        if values.size != c:
            raise ConversionError(f"{ctx.graph.source}: GroupNormalization {node.name!r} input "
                                  f"{index} has {values.size} values for {c} channels")
        return values

    grouped_shape = (n, h * w, groups, c // groups)
    grouped = ctx.scratch(name + "/grouped", grouped_shape, None)
    reshape(ctx, x, grouped_shape, grouped, name + "/grouped_shape")
    normalised = ctx.scratch(name + "/normalised", grouped_shape, None)
    _normalise(ctx, name, grouped, [1, 3], float(ctx.attr(node, "epsilon", 1e-5)), None, None,
               normalised)
    out = ctx.output_value(name)
    gamma, beta = per_channel(1), per_channel(2)
    if gamma is None and beta is None:
        reshape(ctx, normalised, (n, h, w, c), out.tensor, name + "/ungrouped_shape")
        return
    ungrouped = ctx.scratch(name + "/ungrouped", (n, h, w, c), None)
    reshape(ctx, normalised, (n, h, w, c), ungrouped, name + "/ungrouped_shape")
    _affine(ctx, name, ungrouped, gamma, beta, out.tensor)


@lower("LRN", int8=island())
def lower_lrn(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """LOCAL_RESPONSE_NORMALIZATION over NHWC's channels. ONNX sums ``size`` channels,
    floor((size-1)/2) before and ceil((size-1)/2) after, and divides alpha by size; TFLite sums
    ``radius`` each side and takes alpha as is. So an odd size maps exactly (radius (size-1)/2,
    alpha/size); an even one is lopsided, which TFLite's symmetric window cannot express: it is
    written as ONNX's arithmetic (:func:`_lopsided_lrn`)."""
    _image(ctx, node)
    size = int(ctx.attr(node, "size"))
    if size < 1:
        raise ConversionError(f"{ctx.graph.source}: LRN {node.name!r} has size={size}; ONNX "
                              "needs a window of at least one channel")
    alpha = float(ctx.attr(node, "alpha", 1e-4))
    bias, beta = float(ctx.attr(node, "bias", 1.0)), float(ctx.attr(node, "beta", 0.75))
    x = ctx.value(node.input[0]).tensor
    out = ctx.output_value(node.output[0])
    if size % 2 == 0:
        _lopsided_lrn(ctx, node.output[0], x, out.tensor, size, alpha, bias, beta)
        return
    options = ctx.options("LocalResponseNormalizationOptions", radius=(size - 1) // 2,
                          bias=bias, alpha=float(np.float32(alpha) / np.float32(size)),
                          beta=beta)
    ctx.add_op("LOCAL_RESPONSE_NORMALIZATION", [x], [out.tensor], options=options)


def _lopsided_lrn(ctx: LoweringContext, name: str, x: int, out: int, size: int, alpha: float,
                  bias: float, beta: float) -> None:
    """x / (bias + alpha / size * window sum of x**2) ** beta, ONNX's formula: the squares'
    window sums as a 1x1 CONV_2D whose filter is 1 on each output channel's window and 0
    elsewhere (the zeros add exact zeros), then MUL, ADD, POW, DIV."""
    shape = ctx.builder.tensor_shape(x)
    channels = shape[3]
    before, after = (size - 1) // 2, size // 2
    band = np.zeros((channels, 1, 1, channels), np.float32)
    for c in range(channels):
        band[c, 0, 0, max(0, c - before):min(channels, c + after + 1)] = 1.0
    no_act = {"fusedActivationFunction": 0}

    def tensor(tag: str) -> int:
        return ctx.scratch(f"{name}/{tag}", shape, None)

    square, window, scaled, shifted, power = (tensor(t) for t in
                                              ("square", "window", "scaled", "base", "power"))
    ctx.add_op("MUL", [x, x], [square], options=ctx.options("MulOptions", **no_act))
    ctx.add_op("CONV_2D", [square, ctx.builder.add_constant(name + "/window", band),
                           ctx.builder.add_constant(name + "/no_bias",
                                                    np.zeros(channels, np.float32))],
               [window], options=ctx.options("Conv2DOptions", padding=1, strideH=1, strideW=1,
                                             dilationHFactor=1, dilationWFactor=1, **no_act))
    ctx.add_op("MUL", [window, ctx.builder.add_constant(
        name + "/alpha", np.array([np.float32(alpha) / np.float32(size)], np.float32))],
               [scaled], options=ctx.options("MulOptions", **no_act))
    ctx.add_op("ADD", [scaled, ctx.builder.add_constant(name + "/bias",
                                                        np.array([bias], np.float32))],
               [shifted], options=ctx.options("AddOptions", **no_act))
    ctx.add_op("POW", [shifted, ctx.builder.add_constant(name + "/beta",
                                                         np.array([beta], np.float32))], [power])
    ctx.add_op("DIV", [x, power], [out], options=ctx.options("DivOptions", **no_act))
