"""Activations that were not fused into the op before them, and Softmax."""

from __future__ import annotations

import numpy as np
import onnx

from edgecnn.converters.int8_forms import fixed_output, island
from edgecnn.converters.lowering import (
    FUSED_RELU,
    FUSED_RELU6,
    FUSED_RELU_N1_TO_1,
    LoweringContext,
    Value,
)
from edgecnn.converters.ops import lower
from edgecnn.converters.tflite_builder import QuantParams
from edgecnn.errors import ConversionError

# the output parameters TFLite's int8 kernels demand, which the quantiser gives the QDQ graph
LOGISTIC_INT8 = QuantParams.per_tensor(1.0 / 256.0, -128)
TANH_INT8 = QuantParams.per_tensor(1.0 / 128.0, 0)
SOFTMAX_INT8 = QuantParams.per_tensor(1.0 / 256.0, -128)
FIXED_NOTE = ("int8 kernel (the quantiser gives its output {op}'s {params}); float island in QDQ "
              "files with other output parameters")


def _unary(ctx: LoweringContext, node: onnx.NodeProto, op: str, *,
           options: object = None) -> None:
    source = ctx.stored(node.input[0])  # elementwise: any layout will do
    out = ctx.output_value(node.output[0], column_order=source.column_order, perm=source.perm)
    ctx.add_op(op, [source.tensor], [out.tensor], options=options)


@lower("Relu", int16=True)
def lower_relu(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _unary(ctx, node, "RELU")


@lower("Clip", int16=True)
def lower_clip(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    code = ctx.activation_code(node)
    ops = {FUSED_RELU: "RELU", FUSED_RELU6: "RELU6", FUSED_RELU_N1_TO_1: "RELU_N1_TO_1"}
    if code in ops:
        _unary(ctx, node, ops[code])
        return
    low, high = ctx.clip_bounds(node)
    source = ctx.stored(node.input[0])
    current = source.tensor
    shape = ctx.builder.tensor_shape(current)
    for op, bound, tag in (("MAXIMUM", low, "lo"), ("MINIMUM", high, "hi")):
        if bound is None:
            continue
        limit = ctx.builder.add_constant(f"{node.output[0]}/{tag}", np.array([bound], np.float32))
        nxt = ctx.scratch(f"{node.output[0]}/{tag}_out", shape, None)
        ctx.add_op(op, [current, limit], [nxt])
        current = nxt
    ctx.values[node.output[0]] = type(source)(current, source.perm, source.column_order)


@lower("LeakyRelu", int8=island("float island (LEAKY_RELU's int8 multiplier is coarse: a step "
                                   "off on 0.4-5 % of values)", integer_only=True))
def lower_leaky_relu(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    alpha = float(ctx.attr(node, "alpha", 0.01))
    _unary(ctx, node, "LEAKY_RELU", options=ctx.options("LeakyReluOptions", alpha=alpha))


@lower("HardSwish", int8=island("float island (LiteRT's XNNPACK has no int8 HARD_SWISH: the "
                                   "island keeps one delegate partition); --for npu|mcu: "
                                   "HARD_SWISH", integer_only=True))
def lower_hard_swish(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _unary(ctx, node, "HARD_SWISH")


@lower("Sigmoid", int8=fixed_output(*LOGISTIC_INT8.scale, *LOGISTIC_INT8.zero_point,
                                  FIXED_NOTE.format(op="LOGISTIC", params="1/256, -128")))
def lower_sigmoid(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    source = _elementwise_source(ctx, node.input[0])
    ctx.fixed_output(node, "LOGISTIC", [source.tensor], LOGISTIC_INT8, perm=source.perm)


@lower("Tanh", int8=fixed_output(*TANH_INT8.scale, *TANH_INT8.zero_point,
                               FIXED_NOTE.format(op="TANH", params="1/128, 0")))
def lower_tanh(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    source = _elementwise_source(ctx, node.input[0])
    ctx.fixed_output(node, "TANH", [source.tensor], TANH_INT8, perm=source.perm)


def _elementwise_source(ctx: LoweringContext, name: str) -> Value:
    """An elementwise op's input in the layout it is stored in (no TRANSPOSE to the default
    layout and back: MobileViT's SiLUs cost 18 of its TRANSPOSEs that way); a flattened
    feature map, whose column order an output cannot carry here, in the default layout."""
    stored = ctx.stored(name)
    return stored if stored.column_order is None else ctx.value(name)


@lower("Softmax", int8=fixed_output(*SOFTMAX_INT8.scale, *SOFTMAX_INT8.zero_point,
                                  FIXED_NOTE.format(op="SOFTMAX", params="1/256, -128")))
def lower_softmax(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """SOFTMAX runs over the stored tensor's last axis: bring ``axis`` there (free when the
    layout already has it last, e.g. NCHW channels stored NHWC)."""
    rank = len(ctx.shape(node.input[0]))
    axis = int(ctx.attr(node, "axis", -1))
    axis = axis + rank if axis < 0 else axis
    shape = ctx.shape(node.input[0])
    if ctx.graph.opset < 13 and any(d != 1 for d in shape[axis + 1:]):  # old: flattened from axis
        raise ConversionError(f"{ctx.graph.source}: Softmax {node.name!r} (opset "
                              f"{ctx.graph.opset}) runs over axes {axis}..{rank - 1} together; "
                              "re-export at opset 13+ or softmax over the last axis")
    stored = ctx.feature_map(node, node.input[0])
    if stored.perm[-1] == axis:
        source = stored
    else:
        source = ctx.in_layout(node.input[0], (*[a for a in stored.perm if a != axis], axis))
    ctx.fixed_output(node, "SOFTMAX", [source.tensor], SOFTMAX_INT8,
                     options=ctx.options("SoftmaxOptions", beta=1.0), perm=source.perm)


@lower("Neg", int8=island())
def lower_neg(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _unary(ctx, node, "NEG")  # float: an island in int8 graphs


@lower("Abs", int8=island())
def lower_abs(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _unary(ctx, node, "ABS")  # float: an island in int8 graphs


@lower("Sqrt", int8=island())
def lower_sqrt(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _unary(ctx, node, "SQRT")  # float: an island in int8 graphs


@lower("Exp", int8=island())
def lower_exp(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _unary(ctx, node, "EXP")  # float: an island in int8 graphs


@lower("HardSigmoid", int8=island("float island (MUL, ADD, MINIMUM, MAXIMUM in float); "
                                     "--for npu|mcu: one DEPTHWISE_CONV_2D", integer_only=True))
def lower_hard_sigmoid(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """max(0, min(1, alpha * x + beta)) as MUL, ADD, MINIMUM, MAXIMUM: every TFLite runtime has
    them (MobileNetV3's and Paddle's hard-sigmoid)."""
    alpha = float(ctx.attr(node, "alpha", 0.2))
    beta = float(ctx.attr(node, "beta", 0.5))
    if ctx.int8:  # an integer-only file (its int8 form above); islands are float
        _int8_hard_sigmoid(ctx, node, alpha, beta)
        return
    source = ctx.stored(node.input[0])
    shape = ctx.builder.tensor_shape(source.tensor)
    name = node.output[0]
    current = source.tensor
    for op, value, options in (("MUL", alpha, ctx.options("MulOptions", fusedActivationFunction=0)),
                               ("ADD", beta, ctx.options("AddOptions", fusedActivationFunction=0)),
                               ("MINIMUM", 1.0, None), ("MAXIMUM", 0.0, None)):
        constant = ctx.builder.add_constant(f"{name}/{op.lower()}", np.array([value], np.float32))
        nxt = ctx.scratch(f"{name}/{op.lower()}_out", shape, None)
        ctx.add_op(op, [current, constant], [nxt], options=options)
        current = nxt
    ctx.values[name] = type(source)(current, source.perm, source.column_order)


def _int8_hard_sigmoid(ctx: LoweringContext, node: onnx.NodeProto, alpha: float,
                      beta: float) -> None:
    """clamp(alpha * x + beta, 0, 1) in one int8 op, rounding once as the QDQ graph does: a 1x1
    DEPTHWISE_CONV_2D whose every weight is alpha and whose bias is beta (elementwise, so the
    stored layout does not matter), with a fused RELU for the clamp at 0; the clamp at 1 is
    the output's saturation, exact when its range ends at or below 1 (calibrated HardSigmoid
    outputs always do), else RELU_N1_TO_1 where the range starts at or above 0."""
    source = ctx.stored(node.input[0])
    shape = ctx.builder.tensor_shape(source.tensor)
    out_q = ctx.quant(node.output[0])
    assert out_q is not None
    low = out_q.scale[0] * (-128 - out_q.zero_point[0])
    high = out_q.scale[0] * (127 - out_q.zero_point[0])
    if len(shape) != 4 or not (np.isfinite(alpha) and np.isfinite(beta)) or alpha <= 0:
        raise ConversionError(f"{ctx.graph.source}: HardSigmoid {node.name!r} on a rank-"
                              f"{len(shape)} tensor (alpha {alpha:g}) has no integer-only form "
                              "here; convert with int8_for=cpu to run it as a float island",
                              parameters=("int8_for",))
    if high <= 1.0 + 0.5 * out_q.scale[0]:
        fused = FUSED_RELU
    elif low >= -0.5 * out_q.scale[0]:
        fused = FUSED_RELU_N1_TO_1
    else:
        raise ConversionError(f"{ctx.graph.source}: HardSigmoid {node.name!r} output range "
                              f"[{low:.3g}, {high:.3g}] spans below 0 and above 1; one int8 op "
                              "cannot clamp both: convert with int8_for=cpu",
                              parameters=("int8_for",))
    channels = shape[3]
    in_scale = ctx.builder.tensor_quant(source.tensor).scale[0]
    # the accumulator (x - z) * w + bias is exact in integers: alpha is w * weight scale, to
    # 1/254 of itself at w = 127. The bias beta / (scale_x * weight scale) must fit in int32;
    # where scale_x is tiny (a dead channel) the weight scale grows until it does, and alpha's
    # error times |x| stays below 128 * beta / 2**31 of the output, far under a step
    w_scale = max(alpha / 127.0, abs(beta) / ((2**31 - 1 - 256 * 127) * in_scale))
    w_int = int(np.clip(np.round(alpha / w_scale), 0, 127))
    weights = ctx.builder.add_constant(f"{node.output[0]}/alpha",
                                       np.full((1, 1, 1, channels), w_int, np.int8),
                                       QuantParams.per_tensor(w_scale, 0))
    bias_scale = in_scale * w_scale
    bias = ctx.builder.add_constant(
        f"{node.output[0]}/beta", np.full(channels, np.round(beta / bias_scale), np.int32),
        QuantParams.per_tensor(bias_scale, 0))
    out = ctx.output_value(node.output[0], column_order=source.column_order, perm=source.perm)
    ctx.add_op("DEPTHWISE_CONV_2D", [source.tensor, weights, bias], [out.tensor],
               options=ctx.options("DepthwiseConv2DOptions", padding=1, strideH=1, strideW=1,
                                   depthMultiplier=1, dilationHFactor=1, dilationWFactor=1,
                                   fusedActivationFunction=fused))


@lower("Gelu", int8=island())
def lower_gelu(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """GELU (erf form, or tanh with approximate="tanh"): ONNX opset 20's Gelu and the
    x * 0.5 * (1 + erf(x / sqrt(2))) chain that :mod:`edgecnn.converters.fusions` folds into it.

    Float only: onnxruntime's quantiser leaves Gelu float, and in a quantised erf chain the QDQ
    model rounds between the steps, which one int8 GELU kernel would not reproduce bit for bit.
    """
    approximate = ctx.attr(node, "approximate", "none") == "tanh"
    _unary(ctx, node, "GELU", options=ctx.options("GeluOptions", approximate=approximate))
