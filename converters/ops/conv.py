"""Conv -> CONV_2D, DEPTHWISE_CONV_2D, or SPLIT + CONV_2D per group + CONCATENATION;
ConvTranspose -> TRANSPOSE_CONV (per group, with a zero-dilated filter where needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from edgecnn.converters.int8_forms import island
from edgecnn.converters.lowering import (
    NCHW_TO_NHWC,
    LoweringContext,
    Value,
    pad_spatial,
    reshape,
    spatial_padding,
)
from edgecnn.converters.onnx_graph import WeightQuant
from edgecnn.converters.ops import lower
from edgecnn.converters.tflite_builder import QuantParams
from edgecnn.errors import ConversionError


def _weights(ctx: LoweringContext, node: onnx.NodeProto, layout: tuple[int, ...],
             quant_axis: int, name: str) -> int:
    """Filter tensor in TFLite layout; int8 with per-channel scales when the model is int8."""
    wq = ctx.weight_quant(node.input[1])
    if ctx.int8:
        if wq is None or wq.values.dtype != np.int8:
            raise ConversionError(f"{ctx.graph.source}: Conv {node.name!r} weights are not int8 "
                                  "QDQ constants; quantise the model with edgecnn (int8=True)",
                                  parameters=("int8",))
        if np.any(wq.zero_point != 0):
            raise ConversionError(f"{ctx.graph.source}: Conv {node.name!r} weights have non-zero "
                                  "zero points; TFLite int8 weights are symmetric")
        data = wq.values.transpose(layout)
        return ctx.builder.add_constant(name, data, wq.params(quant_axis))
    return ctx.builder.add_constant(name, ctx.const(node, 1).transpose(layout).astype(np.float32))


def _bias(ctx: LoweringContext, node: onnx.NodeProto, channels: slice, input_tensor: int,
          weight_tensor: int, name: str) -> int:
    """Float bias, or an integer bias at input scale x weight scale as the int8 kernels require:
    int32, or int64 beside int16 activations (TFLite's 16x8 spec)."""
    count = channels.stop - channels.start
    has_bias = len(node.input) > 2 and bool(node.input[2])
    real = ctx.const(node, 2)[channels].astype(np.float64) if has_bias else np.zeros(count)
    if not ctx.int8:
        return ctx.builder.add_constant(name, real.astype(np.float32))
    in_quant = ctx.builder.tensor_quant(input_tensor)
    assert in_quant is not None
    in_scale = in_quant.scale[0]
    dtype = np.int64 if in_quant.int16 else np.int32
    w_scale = np.asarray(ctx.builder.tensor_quant(weight_tensor).scale)
    scale = in_scale * w_scale * np.ones(count)
    bq = ctx.weight_quant(node.input[2]) if has_bias else None
    if (bq is not None and bq.values.dtype == np.int32
            and np.allclose(np.broadcast_to(bq.scale, (bq.values.size,))[channels], scale,
                            rtol=1e-6)):
        values = bq.values[channels].astype(dtype)  # the QDQ model's integers, unchanged
    else:
        info = np.iinfo(np.int32)  # onnxruntime's bias integers are int32 at both widths
        values = np.clip(np.round(real / scale), info.min, info.max).astype(dtype)
    if w_scale.size == 1:  # per-tensor weights take a per-tensor bias (XNNPACK insists)
        return ctx.builder.add_constant(name, values, QuantParams.per_tensor(scale[0], 0))
    return ctx.builder.add_constant(name, values, QuantParams(
        tuple(float(v) for v in scale), (0,) * count, 0 if count > 1 else None))


@lower("Conv", int16=True)
def lower_conv(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    in_shape = ctx.shape(node.input[0])
    if len(in_shape) == 3:
        _conv1d(ctx, node)
        return
    if len(in_shape) != 4:
        raise ConversionError(f"{ctx.graph.source}: Conv {node.name!r} is {len(in_shape) - 2}-D; "
                              "1-D and 2-D convolutions convert")
    n, c, h, w = in_shape
    if not ctx.is_const(node.input[1]):
        raise ConversionError(f"{ctx.graph.source}: Conv {node.name!r} weights are computed at run "
                              "time; TFLite needs constant filters")
    weight_shape = ctx.shape(node.input[1])
    if len(weight_shape) != 4:
        raise ConversionError(f"{ctx.graph.source}: Conv {node.name!r} is "
                              f"{len(weight_shape) - 2}-D; only 2-D convolutions convert")
    out_ch, _, kh, kw = weight_shape
    group = int(ctx.attr(node, "group", 1))
    strides = tuple(ctx.attr(node, "strides", [1, 1]))
    dilations = tuple(ctx.attr(node, "dilations", [1, 1]))
    padding, explicit = spatial_padding(ctx, node, (h, w), (kh, kw), strides, dilations)
    x = ctx.value(node.input[0]).tensor
    if any(p != (0, 0) for p in explicit):
        x = pad_spatial(ctx, x, explicit, node.output[0] + "/pad")
    fused, out_name = ctx.fuse_activation(node)
    out = ctx.output_value(out_name)
    common = dict(padding=0 if padding == "SAME" else 1, strideH=strides[0], strideW=strides[1],
                  dilationHFactor=dilations[0], dilationWFactor=dilations[1],
                  fusedActivationFunction=fused)
    if group == 1:
        wt = _weights(ctx, node, (0, 2, 3, 1), 0, node.input[1])
        b = _bias(ctx, node, slice(0, out_ch), x, wt, node.output[0] + "/bias")
        ctx.add_op("CONV_2D", [x, wt, b], [out.tensor],
                   options=ctx.options("Conv2DOptions", **common))
    elif group == c:
        wt = _weights(ctx, node, (1, 2, 3, 0), 3, node.input[1])
        b = _bias(ctx, node, slice(0, out_ch), x, wt, node.output[0] + "/bias")
        ctx.add_op("DEPTHWISE_CONV_2D", [x, wt, b], [out.tensor],
                   options=ctx.options("DepthwiseConv2DOptions", depthMultiplier=out_ch // c,
                                       **common))
    else:
        _grouped(ctx, node, x, out.tensor, group, common)


def _conv1d(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """A 1-D Conv (ECA's channel attention, audio front ends) is the 2-D one over a height of
    1: (N, C, L) stored as (N, L, C) is NHWC (N, 1, L, C) by a RESHAPE (no data moves), the
    filter gains a unit height, and the output, NHWC (N, 1, L', C'), is the ONNX (N, C', L')
    stored as (N, L', C'). The 2-D lowering writes it, int8 included."""
    n, c, length = ctx.shape(node.input[0])
    _, c_out, out_length = ctx.shape(node.output[0])
    name = node.output[0]
    x_name, w_name, y_name = name + "/as_2d_in", name + "/as_2d_w", name + "/as_2d"
    stored = ctx.in_layout(node.input[0], (0, 2, 1))
    x4 = ctx.scratch(x_name, (n, 1, length, c), ctx.builder.tensor_quant(stored.tensor))
    reshape(ctx, stored.tensor, (n, 1, length, c), x4, x_name + "/shape")
    ctx.values[x_name] = Value(x4, NCHW_TO_NHWC)
    graph = ctx.graph
    graph.shapes[x_name], graph.shapes[y_name] = (n, c, 1, length), (n, c_out, 1, out_length)
    for one_d, two_d in ((node.input[0], x_name), (node.output[0], y_name)):
        if one_d in graph.act_quant:
            graph.act_quant[two_d] = graph.act_quant[one_d]
    weight = ctx.const(node, 1)
    graph.constants[w_name] = weight[:, :, None, :]
    graph.shapes[w_name] = tuple(graph.constants[w_name].shape)
    quant = ctx.weight_quant(node.input[1])
    if quant is not None:
        graph.weight_quant[w_name] = WeightQuant(quant.values[:, :, None, :], quant.scale,
                                                 quant.zero_point, quant.axis)
    lifted: dict[str, Any] = {"kernel_shape": [1, int(weight.shape[2])],
                                 "group": int(ctx.attr(node, "group", 1))}
    for key, unit in (("strides", 1), ("dilations", 1)):
        lifted[key] = [unit, int(ctx.attr(node, key, [1])[0])]
    pads = list(ctx.attr(node, "pads", [0, 0]))
    lifted["pads"] = [0, int(pads[0]), 0, int(pads[1])]
    auto_pad = ctx.attr(node, "auto_pad", "NOTSET")
    if auto_pad != "NOTSET":
        lifted["auto_pad"] = auto_pad
    two_d = onnx.helper.make_node("Conv", [x_name, w_name, *node.input[2:]], [y_name],
                                  name=node.name, **lifted)
    lower_conv(ctx, two_d)
    out = ctx.output_value(name, perm=(0, 2, 1))
    reshape(ctx, ctx.values[y_name].tensor, (n, out_length, c_out), out.tensor, name + "/shape")


def _grouped(ctx: LoweringContext, node: onnx.NodeProto, x: int, out: int, group: int,
             common: dict) -> None:
    """Grouped conv as SPLIT -> one CONV_2D per group -> CONCATENATION (runs on every runtime)."""
    out_ch = ctx.shape(node.input[1])[0]
    per_out = out_ch // group
    n, h, w, c = ctx.builder.tensor_shape(x)
    axis = ctx.int_const(node.output[0] + "/split_axis", [3])
    parts = [ctx.scratch(f"{node.output[0]}/in{g}", (n, h, w, c // group),
                         ctx.builder.tensor_quant(x)) for g in range(group)]
    ctx.add_op("SPLIT", [axis, x], parts, options=ctx.options("SplitOptions", numSplits=group))
    out_shape = ctx.builder.tensor_shape(out)
    out_q = ctx.builder.tensor_quant(out)
    results = []
    wq = ctx.weight_quant(node.input[1])
    for g in range(group):
        sl = slice(g * per_out, (g + 1) * per_out)
        name = f"{node.output[0]}/g{g}"
        if ctx.int8:
            assert wq is not None
            scales = wq.scale.ravel()[sl] if wq.scale.size > 1 else wq.scale.ravel()
            params = QuantParams(tuple(float(v) for v in scales), (0,) * scales.size,
                                 0 if scales.size > 1 else None)
            wt = ctx.builder.add_constant(name + "/w", wq.values[sl].transpose(0, 2, 3, 1), params)
        else:
            weight = ctx.const(node, 1)
            wt = ctx.builder.add_constant(name + "/w",
                                          weight[sl].transpose(0, 2, 3, 1).astype(np.float32))
        b = _bias(ctx, node, sl, parts[g], wt, name + "/bias")
        res = ctx.scratch(name, (*out_shape[:3], per_out), out_q)
        ctx.add_op("CONV_2D", [parts[g], wt, b], [res],
                   options=ctx.options("Conv2DOptions", **common))
        results.append(res)
    ctx.add_op("CONCATENATION", results, [out], options=ctx.options("ConcatenationOptions", axis=3))



def _transpose_conv_begin_pads(ctx: LoweringContext, node: onnx.NodeProto,
                               full: tuple[int, int], out: tuple[int, int]) -> list[int]:
    """Rows/columns ONNX crops from the start of the full transposed convolution."""
    auto_pad = ctx.attr(node, "auto_pad", "NOTSET")
    output_padding = list(ctx.attr(node, "output_padding", [0, 0]))
    if auto_pad != "NOTSET" or ctx.attr(node, "output_shape") is not None:
        totals = [f + op - o for f, op, o in zip(full, output_padding, out, strict=True)]
        upper = auto_pad == "SAME_UPPER"  # the ONNX rule: otherwise the odd row goes first
        return [t // 2 if upper else t - t // 2 for t in totals]
    pads = list(ctx.attr(node, "pads", [0, 0, 0, 0]))
    return pads[:2]


def _dilated(weight: np.ndarray, dilations: tuple[int, int]) -> np.ndarray:
    """A (cin, cout, kh, kw) filter with ``d - 1`` zero rows/columns between its taps: a
    dilated transposed convolution is the plain one with it (the zeros add exact zeros)."""
    dh, dw = dilations
    cin, cout, kh, kw = weight.shape
    out = np.zeros((cin, cout, (kh - 1) * dh + 1, (kw - 1) * dw + 1), weight.dtype)
    out[:, :, ::dh, ::dw] = weight
    return out


def _batch_shape(ctx: LoweringContext, x: int, hwc: tuple[int, int, int], name: str) -> int:
    """TRANSPOSE_CONV's output-shape input: the batch of ``x`` at run time (SHAPE), then
    ``hwc``; so any batch size runs."""
    shape_of_x = ctx.builder.add_tensor(name + "/in_shape", (4,), np.int32)
    ctx.add_op("SHAPE", [x], [shape_of_x], options=ctx.options("ShapeOptions", outType=2))
    batch = ctx.builder.add_tensor(name + "/batch", (1,), np.int32)
    ctx.add_op("STRIDED_SLICE", [shape_of_x, ctx.int_const(name + "/b0", [0]),
                                 ctx.int_const(name + "/b1", [1]), ctx.int_const(name + "/b2", [1])],
               [batch], options=ctx.options("StridedSliceOptions"))
    out_shape = ctx.builder.add_tensor(name + "/out_shape", (4,), np.int32)
    ctx.add_op("CONCATENATION", [batch, ctx.int_const(name + "/hwc", list(hwc))], [out_shape],
               options=ctx.options("ConcatenationOptions", axis=0))
    return out_shape


def _crop(ctx: LoweringContext, wide: int, out: int, begin: list[int], size: tuple[int, int],
          name: str) -> None:
    ctx.add_op("STRIDED_SLICE", [wide, ctx.int_const(name + "/crop_begin", [0, *begin, 0]),
                                 ctx.int_const(name + "/crop_end", [0, size[0] + begin[0],
                                                                    size[1] + begin[1], 0]),
                                 ctx.int_const(name + "/crop_strides", [1, 1, 1, 1])],
               [out], options=ctx.options("StridedSliceOptions", beginMask=0b1001, endMask=0b1001))


def _general_transpose_conv(ctx: LoweringContext, node: onnx.NodeProto, group: int,
                            dilations: tuple[int, int], begin: list[int],
                            full: tuple[int, int]) -> None:
    """Grouped, dilated, or reaching past the full output (output_padding): per group a VALID
    TRANSPOSE_CONV of the (zero-dilated) filter without bias, CONCATENATION, zero PAD at the
    end, the crop, then the bias: ONNX's sums, in float."""
    if ctx.int8:
        raise ConversionError(f"{ctx.graph.source}: ConvTranspose {node.name!r} is grouped, "
                              "dilated or padded past its full output, which edgecnn writes in "
                              "float only; convert with int8_for=cpu (a float island)",
                              parameters=("int8_for",))
    name = node.output[0]
    _, cout, oh, ow = ctx.shape(node.output[0])
    sh, sw = tuple(ctx.attr(node, "strides", [1, 1]))
    weight = _dilated(np.asarray(ctx.const(node, 1), np.float32), dilations)
    x = ctx.value(node.input[0]).tensor
    n, _, _, cin = ctx.builder.tensor_shape(x)
    per_in, per_out = cin // group, cout // group
    parts = [x]
    if group > 1:
        parts = [ctx.scratch(f"{name}/in{g}", (n, *ctx.builder.tensor_shape(x)[1:3], per_in),
                             None) for g in range(group)]
        ctx.add_op("SPLIT", [ctx.int_const(name + "/split_axis", [3]), x], parts,
                   options=ctx.options("SplitOptions", numSplits=group))
    options = ctx.options("TransposeConvOptions", padding=1, strideH=sh, strideW=sw)
    results = []
    for g, part in enumerate(parts):
        filters = weight[g * per_in:(g + 1) * per_in].transpose(1, 2, 3, 0)
        w_tensor = ctx.builder.add_constant(f"{name}/w{g}", np.ascontiguousarray(filters))
        res = ctx.scratch(f"{name}/g{g}", (n, *full, per_out), None)
        ctx.add_op("TRANSPOSE_CONV", [_batch_shape(ctx, part, (*full, per_out), f"{name}/g{g}"),
                                      w_tensor, part], [res], options=options)
        results.append(res)
    current = results[0]
    if group > 1:
        current = ctx.scratch(name + "/groups", (n, *full, cout), None)
        ctx.add_op("CONCATENATION", results, [current],
                   options=ctx.options("ConcatenationOptions", axis=3))
    extra = [max(b + o - f, 0) for b, o, f in zip(begin, (oh, ow), full, strict=True)]
    if any(extra):
        current = pad_spatial(ctx, current, [(0, extra[0]), (0, extra[1])], name + "/pad_end")
    has_bias = len(node.input) > 2 and bool(node.input[2])
    out = ctx.output_value(name)
    cropped = ctx.scratch(name + "/cropped", (n, oh, ow, cout), None) if has_bias else out.tensor
    _crop(ctx, current, cropped, begin, (oh, ow), name)
    if has_bias:
        bias = ctx.builder.add_constant(name + "/bias", ctx.const(node, 2).astype(np.float32))
        ctx.add_op("ADD", [cropped, bias], [out.tensor],
                   options=ctx.options("AddOptions", fusedActivationFunction=0))


@lower("ConvTranspose", int8=island("float island (TRANSPOSE_CONV's int8 requantisation is "
                                     "coarse)", integer_only=True))
def lower_conv_transpose(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """TRANSPOSE_CONV: VALID or SAME when they crop what ONNX's pads crop, else VALID and a
    STRIDED_SLICE. The output shape is built from the input's at run time (SHAPE), so any
    batch size runs. Grouped, dilated and output-padded forms: :func:`_general_transpose_conv`."""
    n, c, h, w = ctx.shape(node.input[0])
    if not ctx.is_const(node.input[1]) or len(ctx.shape(node.input[1])) != 4:
        raise ConversionError(f"{ctx.graph.source}: ConvTranspose {node.name!r} needs constant "
                              "2-D filters")
    cin, per_group, kh, kw = ctx.shape(node.input[1])
    group = int(ctx.attr(node, "group", 1))
    dh, dw = tuple(ctx.attr(node, "dilations", [1, 1]))
    kh, kw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    sh, sw = tuple(ctx.attr(node, "strides", [1, 1]))
    _, cout, oh, ow = ctx.shape(node.output[0])
    full = ((h - 1) * sh + kh, (w - 1) * sw + kw)
    begin = _transpose_conv_begin_pads(ctx, node, full, (oh, ow))
    if any(b < 0 for b in begin):
        raise ConversionError(f"{ctx.graph.source}: ConvTranspose {node.name!r} has negative pads")
    if group != 1 or (dh, dw) != (1, 1) or any(
            b + o > f for b, o, f in zip(begin, (oh, ow), full, strict=True)):
        _general_transpose_conv(ctx, node, group, (dh, dw), begin, full)
        return
    # TFLite derives the input size back from the output shape: VALID takes exactly the full
    # transposed convolution, SAME an output of ceil(output / stride) == input rows, cropping
    # half the excess before and the rest after. Anything else is the full VALID output cropped.
    same_begin = [max(f - o, 0) // 2 for f, o in zip(full, (oh, ow), strict=True)]
    fits_same = all(-(-o // s) == i for o, s, i in zip((oh, ow), (sh, sw), (h, w), strict=True))
    if begin == [0, 0] and (oh, ow) == full:
        padding, made = 1, (oh, ow)  # VALID, nothing cropped
    elif begin == same_begin and fits_same:
        padding, made = 0, (oh, ow)  # SAME
    else:
        padding, made = 1, full  # VALID, then slice [begin, begin + output)
    x = ctx.value(node.input[0]).tensor
    weights = _weights(ctx, node, (1, 2, 3, 0), 0, node.input[1])
    name = node.output[0]
    out_shape = _batch_shape(ctx, x, (*made, cout), name)
    has_bias = len(node.input) > 2 and bool(node.input[2])
    inputs = [out_shape, weights, x]
    if has_bias:
        inputs.append(_bias(ctx, node, slice(0, cout), x, weights, name + "/bias"))
    options = ctx.options("TransposeConvOptions", padding=padding, strideH=sh, strideW=sw)
    if made == (oh, ow):
        out = ctx.output_value(name)
        ctx.add_op("TRANSPOSE_CONV", inputs, [out.tensor], options=options)
        return
    wide = ctx.scratch(name + "/uncropped", (n, *made, cout), ctx.quant(name))
    ctx.add_op("TRANSPOSE_CONV", inputs, [wide], options=options)
    out = ctx.output_value(name)
    _crop(ctx, wide, out.tensor, begin, (oh, ow), name)
