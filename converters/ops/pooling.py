"""MaxPool, AveragePool -> MAX_POOL_2D / AVERAGE_POOL_2D; GlobalAveragePool -> MEAN; LpPool -> MULs,
AVERAGE_POOL_2D and the root."""

from __future__ import annotations

import numpy as np
import onnx

from edgecnn.converters.int8_forms import conditional, island
from edgecnn.converters.lowering import LoweringContext, pad_spatial, spatial_padding
from edgecnn.converters.ops import lower
from edgecnn.errors import ConversionError


def _pool(ctx: LoweringContext, node: onnx.NodeProto, op: str) -> None:
    _, _, h, w = ctx.shape(node.input[0])
    kernel = tuple(ctx.attr(node, "kernel_shape"))
    strides = tuple(ctx.attr(node, "strides", [1, 1]))
    if tuple(ctx.attr(node, "dilations", [1, 1])) != (1, 1):
        _dilated_pool(ctx, node, op)
        return
    ceil = int(ctx.attr(node, "ceil_mode", 0))
    out_hw = tuple(ctx.shape(node.output[0])[2:])
    count_pad = op == "AVERAGE_POOL_2D" and bool(int(ctx.attr(node, "count_include_pad", 0)))
    _, declared = spatial_padding(ctx, node, (h, w), kernel, strides, allow_same=False)
    padding, explicit = spatial_padding(ctx, node, (h, w), kernel, strides,
                                        out_hw=out_hw if ceil else None,
                                        allow_same=not count_pad)
    x = ctx.value(node.input[0]).tensor
    factors = None
    if any(p != (0, 0) for p in explicit):
        if op == "AVERAGE_POOL_2D":
            factors = _average_factors((h, w), kernel, strides, declared, out_hw, count_pad)
            if factors is not None and not np.all(np.isfinite(factors)):
                raise ConversionError(f"{ctx.graph.source}: AveragePool {node.name!r} has a "
                                      "window that holds no counted cell (ceil mode past the "
                                      "padding); ONNX divides it by zero")
        # max-pooling pads with the lowest value so that padding never wins the max
        lowest = float(np.finfo(np.float32).min) if op == "MAX_POOL_2D" else None
        x = pad_spatial(ctx, x, explicit, node.output[0] + "/pad", fill=lowest)
    if factors is not None:
        _average_by_counts(ctx, node, x, kernel, strides, factors)
        return
    fused, out_name = ctx.fuse_activation(node)
    options = ctx.options("Pool2DOptions", padding=0 if padding == "SAME" else 1,
                          strideH=strides[0], strideW=strides[1], filterHeight=kernel[0],
                          filterWidth=kernel[1], fusedActivationFunction=fused)
    if out_name != node.output[0]:  # the fused activation's output replaces ours
        node = onnx.helper.make_node(node.op_type, node.input, [out_name])
    ctx.same_params_output(node, op, [x], options)


def _taps(ctx: LoweringContext, node: onnx.NodeProto, x: int, kernel: tuple[int, ...],
          strides: tuple[int, ...], dilations: tuple[int, ...],
          out_hw: tuple[int, ...]) -> list[int]:
    """Every kernel tap of a dilated pooling window over the padded NHWC ``x``: one
    STRIDED_SLICE each, the (N, OH, OW, C) map of the cells that tap reads."""
    n, _, _, c = ctx.builder.tensor_shape(x)
    name, quant = node.output[0], ctx.builder.tensor_quant(x)
    taps = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            begin = [0, i * dilations[0], j * dilations[1], 0]
            end = [0, begin[1] + (out_hw[0] - 1) * strides[0] + 1,
                   begin[2] + (out_hw[1] - 1) * strides[1] + 1, 0]
            tap = ctx.scratch(f"{name}/tap{i}_{j}", (n, *out_hw, c), quant)
            ctx.add_op("STRIDED_SLICE", [x, ctx.int_const(f"{name}/tap{i}_{j}/begin", begin),
                                         ctx.int_const(f"{name}/tap{i}_{j}/end", end),
                                         ctx.int_const(f"{name}/tap{i}_{j}/strides",
                                                       [1, *strides, 1])],
                       [tap], options=ctx.options("StridedSliceOptions", beginMask=0b1001,
                                           endMask=0b1001))
            taps.append(tap)
    return taps


def _combine(ctx: LoweringContext, taps: list[int], op: str, name: str) -> int:
    """MAXIMUM or ADD of every tap, pairwise in order (MAXIMUM keeps int8 parameters)."""
    current = taps[0]
    for i, tap in enumerate(taps[1:]):
        out = ctx.scratch(f"{name}/{op.lower()}{i}", ctx.builder.tensor_shape(tap),
                          ctx.builder.tensor_quant(tap))
        options = (ctx.options("AddOptions", fusedActivationFunction=0) if op == "ADD"
                   else None)
        ctx.add_op(op, [current, tap], [out], options=options)
        current = out
    return current


def _dilated_pool(ctx: LoweringContext, node: onnx.NodeProto, op: str) -> None:
    """TFLite pooling has no dilation: the window's taps as strided slices of the padded map,
    then their MAXIMUM, or their sum divided by the cells ONNX counts (float only)."""
    _, _, h, w = ctx.shape(node.input[0])
    kernel = tuple(ctx.attr(node, "kernel_shape"))
    strides = tuple(ctx.attr(node, "strides", [1, 1]))
    dilations = tuple(ctx.attr(node, "dilations", [1, 1]))
    out_hw = tuple(ctx.shape(node.output[0])[2:])
    average = op == "AVERAGE_POOL_2D"
    if average and ctx.int8:
        raise ConversionError(f"{ctx.graph.source}: AveragePool {node.name!r} is dilated, which "
                              "edgecnn writes in float only; convert with int8_for=cpu (a "
                              "float island)", parameters=("int8_for",))
    _, declared = spatial_padding(ctx, node, (h, w), kernel, strides, dilations,
                                  allow_same=False)
    _, explicit = spatial_padding(ctx, node, (h, w), kernel, strides, dilations,
                                  out_hw=out_hw, allow_same=False)
    explicit = [(b, max(a, (o - 1) * s + (k - 1) * d + 1 - size - b))
                for (b, a), o, s, k, d, size in zip(explicit, out_hw, strides, kernel, dilations,
                                                    (h, w), strict=True)]
    x = ctx.value(node.input[0]).tensor
    if any(p != (0, 0) for p in explicit):
        lowest = None if average else float(np.finfo(np.float32).min)
        x = pad_spatial(ctx, x, explicit, node.output[0] + "/pad", fill=lowest)
    taps = _taps(ctx, node, x, kernel, strides, dilations, out_hw)
    if not average:
        last = _combine(ctx, taps[:-1], "MAXIMUM", node.output[0]) if len(taps) > 1 else None
        if last is None:
            ctx.same_params_output(node, "RESHAPE", [taps[0], ctx.int_const(
                node.output[0] + "/shape", [-1, *ctx.builder.tensor_shape(taps[0])[1:]])])
            return
        ctx.same_params_output(node, "MAXIMUM", [last, taps[-1]])
        return
    count_pad = bool(int(ctx.attr(node, "count_include_pad", 0)))
    counts = [window_counts(size, k, s, p, o, count_pad, d) for size, k, s, p, o, d in
              zip((h, w), kernel, strides, declared, out_hw, dilations, strict=True)]
    area = np.outer(counts[0], counts[1]).astype(np.float64)
    if np.any(area == 0):
        raise ConversionError(f"{ctx.graph.source}: AveragePool {node.name!r} has a window that "
                              "holds no counted cell; ONNX divides it by zero")
    total = _combine(ctx, taps, "ADD", node.output[0])
    out = ctx.output_value(node.output[0])
    inverse = ctx.builder.add_constant(node.output[0] + "/inverse_count",
                                       (1.0 / area).astype(np.float32).reshape(1, *out_hw, 1))
    ctx.add_op("MUL", [total, inverse], [out.tensor],
               options=ctx.options("MulOptions", fusedActivationFunction=0))


def window_counts(size: int, kernel: int, stride: int, pads: tuple[int, int], out: int,
                  count_pad: bool, dilation: int = 1) -> np.ndarray:
    """How many cells ONNX's AveragePool divides each output's window by along one axis: those
    inside the input, plus the declared padding when count_include_pad; never the cells ceil
    mode adds past the padding."""
    low, high = (-pads[0], size + pads[1]) if count_pad else (0, size)
    cells = (np.arange(out) * stride - pads[0])[:, None] + np.arange(kernel)[None] * dilation
    return ((cells >= low) & (cells < high)).sum(axis=1)


def _average_factors(in_hw: tuple[int, int], kernel: tuple[int, ...], strides: tuple[int, ...],
                     declared: list[tuple[int, int]], out_hw: tuple[int, ...],
                     count_pad: bool) -> np.ndarray | None:
    """kernel area / ONNX's divisor per output cell (H, W), or None when every window divides
    by its full area (a VALID pool over the zero-padded map is then exact as it is)."""
    counts = [window_counts(size, k, s, p, o, count_pad)
              for size, k, s, p, o in zip(in_hw, kernel, strides, declared, out_hw, strict=True)]
    area = np.outer(counts[0], counts[1]).astype(np.float64)
    full = float(kernel[0] * kernel[1])
    if np.all(area == full):
        return None
    with np.errstate(divide="ignore"):
        return (full / area).astype(np.float32)  # inf where a window counts nothing


def _average_by_counts(ctx: LoweringContext, node: onnx.NodeProto, x: int,
                       kernel: tuple[int, ...], strides: tuple[int, ...],
                       factors: np.ndarray) -> None:
    """A VALID AVERAGE_POOL_2D over the zero-padded map divides every window by its area; ONNX
    divides by the cells it counts. One MUL by area / count per output cell (a constant) turns
    one into the other, exactly to float rounding. An int8 kernel has no such MUL: refused."""
    if ctx.int8:
        raise ConversionError(f"{ctx.graph.source}: AveragePool {node.name!r} divides windows "
                              "cut by padding or ceil mode by their own counts, which no int8 "
                              "kernel does; convert with int8_for=cpu (a float island)",
                              parameters=("int8_for",))
    name = node.output[0]
    shape = ctx.builder.tensor_shape(x)
    oh, ow = factors.shape
    pooled = ctx.scratch(name + "/window_mean", (shape[0], oh, ow, shape[3]), None)
    ctx.add_op("AVERAGE_POOL_2D", [x], [pooled], options=ctx.options(
        "Pool2DOptions", padding=1, strideH=strides[0], strideW=strides[1],
        filterHeight=kernel[0], filterWidth=kernel[1], fusedActivationFunction=0))
    fused, out_name = ctx.fuse_activation(node)
    out = ctx.output_value(out_name)
    scale = ctx.builder.add_constant(name + "/area_by_count", factors.reshape(1, oh, ow, 1))
    ctx.add_op("MUL", [pooled, scale], [out.tensor],
               options=ctx.options("MulOptions", fusedActivationFunction=fused))


@lower("MaxPool", int16=True)
def lower_max_pool(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _pool(ctx, node, "MAX_POOL_2D")


def _padded(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """Whether the pool pads its map, by explicit pads or auto_pad."""
    return any(ctx.attr(node, "pads", [0, 0, 0, 0])) or ctx.attr(
        node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID")


def _covers_the_map(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """An AveragePool whose one window is the whole unpadded map: a global average."""
    _, _, h, w = ctx.shape(node.input[0])
    padded = _padded(ctx, node)
    return tuple(ctx.attr(node, "kernel_shape")) == (h, w) and not padded and tuple(
        ctx.attr(node, "dilations", [1, 1])) == (1, 1)


def _inexact_in_int8(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """AVERAGE_POOL_2D divides the integer sum and rounds halves away from zero, the reference
    to even: with an even divisor (2x2 windows, or windows cut by uncounted padding or ceil
    mode) exact halves are common and 12 % of values differ by a step. It also averages on the
    input's grid: where the QDQ graph gives the output a finer scale (a large window's average
    spans less than its input), requantising that average is off by up to half an input step,
    several output steps (4 on the shipped mobile_se_outlier's 7x7 window). A global window
    is written as MEAN, which rescales once, and is exact."""
    if _covers_the_map(ctx, node):
        return False
    kernel = ctx.attr(node, "kernel_shape")
    padded = _padded(ctx, node)
    whole_windows = not int(ctx.attr(node, "ceil_mode", 0)) and (
        not padded or int(ctx.attr(node, "count_include_pad", 0)))
    dilated = tuple(ctx.attr(node, "dilations", [1, 1])) != (1, 1)  # written in float only
    given, wanted = ctx.quant(node.input[0]), ctx.quant(node.output[0])
    finer = (given is not None and wanted is not None
             and wanted.scale[0] < given.scale[0] * (1 - 1e-6))
    return int(np.prod(kernel)) % 2 == 0 or not whole_windows or dilated or finer


@lower("AveragePool", int8=conditional(_inexact_in_int8, "int8 kernel for odd windows of "
                                       "counted cells whose output scale is not finer than the "
                                       "input's; MEAN for a window over the whole map; float "
                                       "island for even windows (2x2), uncounted padding or "
                                       "ceil mode, where halves are common, dilation, and a "
                                       "finer output scale"))
def lower_average_pool(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if _covers_the_map(ctx, node):  # a global average: MEAN, as GlobalAveragePool
        lower_global_average_pool(ctx, node)
        return
    _pool(ctx, node, "AVERAGE_POOL_2D")


@lower("GlobalAveragePool", int16=True)
def lower_global_average_pool(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x = ctx.value(node.input[0]).tensor
    axes = ctx.int_const(node.output[0] + "/axes", [1, 2])
    out = ctx.output_value(node.output[0])
    ctx.add_op("MEAN", [x, axes], [out.tensor],
               options=ctx.options("ReducerOptions", keepDims=True))


def _power(ctx: LoweringContext, x: int, p: int, name: str) -> int:
    """abs(x) ** p for a whole p >= 1 by repeated squaring (x * x is |x| ** 2) and one ABS for odd
    p: MULs, without POW's rounding."""
    shape = ctx.builder.tensor_shape(x)

    def mul(a: int, b: int, tag: str) -> int:
        out = ctx.scratch(f"{name}/{tag}", shape, None)
        ctx.add_op("MUL", [a, b], [out], options=ctx.options("MulOptions",
                                                             fusedActivationFunction=0))
        return out

    factors = []
    if p % 2:
        magnitude = ctx.scratch(name + "/abs", shape, None)
        ctx.add_op("ABS", [x], [magnitude])
        factors.append(magnitude)
    half, square, step = p // 2, x, 0
    while half:
        square = mul(square, square, f"sq{step}") if step else mul(x, x, "sq0")
        step += 1
        if half & 1:
            factors.append(square)
        half >>= 1
    result = factors[0]
    for i, factor in enumerate(factors[1:]):
        result = mul(result, factor, f"prod{i}")
    return result


def _root(ctx: LoweringContext, x: int, p: int, out: int, name: str) -> None:
    """x ** (1 / p): SQRTs where p is a power of two, else one POW."""
    shape = ctx.builder.tensor_shape(x)
    if p == 1:
        ctx.add_op("RESHAPE", [x, ctx.int_const(name + "/same", [-1, *shape[1:]])], [out])
        return
    if p & (p - 1) == 0:
        current = x
        while p > 2:
            nxt = ctx.scratch(f"{name}/sqrt{p}", shape, None)
            ctx.add_op("SQRT", [current], [nxt])
            current, p = nxt, p // 2
        ctx.add_op("SQRT", [current], [out])
        return
    exponent = ctx.builder.add_constant(name + "/inverse_p", np.array([1.0 / p], np.float32))
    ctx.add_op("POW", [x, exponent], [out])


@lower("LpPool", int8=island())
def lower_lp_pool(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """(sum over the window of abs(x) ** p) ** (1/p): the powers by MULs, zero padding (it adds
    nothing to a sum), a VALID AVERAGE_POOL_2D times the window's area (dilated: the taps'
    sum), then the root."""
    p = int(ctx.attr(node, "p", 2))
    if p < 1:
        raise ConversionError(f"{ctx.graph.source}: LpPool {node.name!r} has p={p}; ONNX needs "
                              "p >= 1")
    _, _, h, w = ctx.shape(node.input[0])
    kernel = tuple(ctx.attr(node, "kernel_shape"))
    strides = tuple(ctx.attr(node, "strides", [1, 1]))
    dilations = tuple(ctx.attr(node, "dilations", [1, 1]))
    out_hw = tuple(ctx.shape(node.output[0])[2:])
    _, explicit = spatial_padding(ctx, node, (h, w), kernel, strides, dilations,
                                  allow_same=False, out_hw=out_hw)
    name = node.output[0]
    powered = _power(ctx, ctx.value(node.input[0]).tensor, p, name + "/pow")
    if any(pad != (0, 0) for pad in explicit):
        powered = pad_spatial(ctx, powered, explicit, name + "/pad")
    if dilations != (1, 1):  # the taps' sum, then the root
        total = _combine(ctx, _taps(ctx, node, powered, kernel, strides, dilations, out_hw),
                         "ADD", name)
        _root(ctx, total, p, ctx.output_value(name).tensor, name + "/root")
        return
    n, _, _, c = ctx.builder.tensor_shape(powered)
    pooled = ctx.scratch(name + "/mean", (n, *out_hw, c), None)
    ctx.add_op("AVERAGE_POOL_2D", [powered], [pooled], options=ctx.options(
        "Pool2DOptions", padding=1, strideH=strides[0], strideW=strides[1],
        filterHeight=kernel[0], filterWidth=kernel[1], fusedActivationFunction=0))
    total = ctx.scratch(name + "/sum", (n, *out_hw, c), None)
    area = ctx.builder.add_constant(name + "/area", np.array([kernel[0] * kernel[1]], np.float32))
    ctx.add_op("MUL", [pooled, area], [total],
               options=ctx.options("MulOptions", fusedActivationFunction=0))
    _root(ctx, total, p, ctx.output_value(name).tensor, name + "/root")
