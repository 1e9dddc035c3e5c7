"""Resize (opset 11+) and Upsample -> RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR, or ONNX's own
sampling where no TFLite kernel samples as it does.

TFLite's two resize kernels know three coordinate mappings (asymmetric, half-pixel centres,
aligned corners) and one rounding rule each, with the scale output/input. A Resize takes a
kernel when, for its own sizes and scales, one of those mappings samples exactly where ONNX's
does on both axes: the same source index for nearest (so half_pixel with ONNX's default
round_prefer_floor converts wherever no output lands on a tie, e.g. every whole upscale), the
same source coordinate for linear.

Everything else ONNX defines per axis (other roundings and coordinate modes, fractional scales,
cubic, antialiasing, crop-and-resize) is a fixed matrix along H and one along W: ONNX's
reference implementation run on unit vectors gives them. Nearest rows copy one cell (a GATHER
per axis, exact in float and int8); weighted rows are a BATCH_MATMUL per axis, the same sums.
Refused in one line: align_corners by a scale whose output is not whole (ONNX's spec and
onnxruntime disagree there), keep_aspect_ratio_policy sizes the scale does not reproduce.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from edgecnn.converters.int8_forms import conditional
from edgecnn.converters.lowering import LoweringContext, reshape
from edgecnn.converters.ops import lower
from edgecnn.errors import ConversionError

TFLITE_OPTIONS = ((False, False), (False, True), (True, False))  # (align_corners, half_pixel)
ROUNDINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "round_prefer_floor": lambda v: np.ceil(v - 0.5),
    "round_prefer_ceil": lambda v: np.floor(v + 0.5),
    "floor": np.floor, "ceil": np.ceil}


def _linear(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """Bilinear RESIZE requantises coarsely: a step off on some values; nearest copies."""
    return ctx.attr(node, "mode", "nearest") != "nearest"


def onnx_coordinates(transform: str, size_in: int, size_out: int, scale: float,
                     dtype: type = np.float64) -> np.ndarray | None:
    """Where ONNX samples each output index along one axis (its spec, with the scale it was
    given: a scale whose output size is not whole keeps its fraction); None: no formula here."""
    x: np.ndarray = np.arange(size_out, dtype=dtype)
    s = dtype(scale)
    resized = dtype(size_in) * s  # the spec's length_resized, not the floored output size
    if transform == "half_pixel":
        return (x + dtype(0.5)) / s - dtype(0.5)
    if transform == "pytorch_half_pixel":
        return (x + dtype(0.5)) / s - dtype(0.5) if resized > 1 else np.zeros_like(x)
    if transform == "asymmetric":
        return x / s
    if transform == "tf_half_pixel_for_nn":
        return (x + dtype(0.5)) / s
    if transform == "align_corners":
        return (x * dtype(size_in - 1) / (resized - dtype(1)) if resized != 1
                else np.zeros_like(x))
    return None


def tflite_coordinates(size_in: int, size_out: int, align: bool, half: bool) -> np.ndarray:
    """Where TFLite's RESIZE kernels sample each output index (float32, as the kernels do)."""
    f32 = np.float32
    scale = (f32(size_in - 1) / f32(size_out - 1) if align and size_out > 1
             else f32(size_in) / f32(size_out))
    x = np.arange(size_out, dtype=f32)
    return (x + f32(0.5)) * scale - f32(0.5) if half else x * scale


def tflite_nearest(size_in: int, size_out: int, align: bool, half: bool) -> np.ndarray:
    f32 = np.float32
    scale = (f32(size_in - 1) / f32(size_out - 1) if align and size_out > 1
             else f32(size_in) / f32(size_out))
    value = (np.arange(size_out, dtype=f32) + f32(0.5 if half else 0)) * scale
    index = np.floor(value + f32(0.5)) if align else np.floor(value)  # halves away from 0
    return np.clip(index, 0, size_in - 1).astype(np.int64)


def onnx_nearest(transform: str, rounding: str, size_in: int, size_out: int,
                 scale: float) -> np.ndarray | None:
    """ONNX's source index per output index, or None where it is not one number: it must come
    out the same in float32 and float64, so no tie is decided by rounding error."""
    found = []
    for dtype in (np.float64, np.float32):
        coords = onnx_coordinates(transform, size_in, size_out, scale, dtype)
        if coords is None or rounding not in ROUNDINGS:
            return None
        found.append(np.clip(ROUNDINGS[rounding](coords), 0, size_in - 1).astype(np.int64))
    return found[0] if np.array_equal(found[0], found[1]) else None


def _scales(ctx: LoweringContext, node: onnx.NodeProto, in_hw: tuple[int, int],
            out_hw: tuple[int, int]) -> tuple[float, float]:
    """The H and W scales ONNX's coordinate formulas use: the given ones, or out/in for sizes
    (with keep_aspect_ratio_policy, the one scale it chose for both)."""
    if node.op_type == "Upsample":
        given = (ctx.const(node, 1) if len(node.input) > 1 else
                 np.asarray(ctx.attr(node, "scales"), np.float32))
        return float(given[2]), float(given[3])
    if len(node.input) > 3 and node.input[3]:
        policy = ctx.attr(node, "keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            return out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]
        sizes = _per_axis(ctx, node, ctx.const(node, 3).astype(np.float64), 1.0)
        ratios = np.asarray(sizes[2:], np.float64) / np.asarray(in_hw, np.float64)
        one = float(ratios.min() if policy == "not_larger" else ratios.max())
        return one, one
    given = _per_axis(ctx, node, np.asarray(ctx.const(node, 2), np.float32), 1.0)
    return float(given[2]), float(given[3])


def _refuse_disputed(described: str, transform: str, in_hw: tuple[int, int],
                     out_hw: tuple[int, int], scales: tuple[float, float]) -> None:
    """align_corners with a scale whose output size is not whole: ONNX's spec divides by the
    fractional length (input x scale - 1), onnxruntime by the output size - 1; which one the
    file means is not known, so neither is written."""
    fractional = any(abs(i * s - o) > 1e-6 for i, o, s in zip(in_hw, out_hw, scales,
                                                              strict=True))
    if transform == "align_corners" and fractional:
        raise ConversionError(f"{described} by scales {list(scales)}: with align_corners and an "
                              "output size that is not input x scale, ONNX's spec and "
                              "onnxruntime sample different points; give sizes instead of "
                              "scales")


def _per_axis(ctx: LoweringContext, node: onnx.NodeProto, values: np.ndarray,
              default: float) -> list[float]:
    """Scales or sizes for all four axes, from opset 18's ``axes`` where it names them."""
    axes = ctx.attr(node, "axes")
    if axes is None:
        return [float(v) for v in values.ravel()]
    full = [default] * 4
    for axis, value in zip(axes, values.ravel(), strict=False):
        full[int(axis) % 4] = float(value)
    return full


def _choose(ctx: LoweringContext, node: onnx.NodeProto, mode: str, transform: str,
            rounding: str, in_hw: tuple[int, int], out_hw: tuple[int, int],
            scales: tuple[float, float]) -> tuple[bool, bool] | None:
    """The TFLite (align_corners, half_pixel_centers) that samples exactly where ONNX does on
    both axes of these sizes, or None."""
    for align, half in TFLITE_OPTIONS:
        exact = True
        for size_in, size_out, scale in zip(in_hw, out_hw, scales, strict=True):
            if mode == "nearest":
                want = onnx_nearest(transform, rounding, size_in, size_out, scale)
                exact &= want is not None and np.array_equal(
                    want, tflite_nearest(size_in, size_out, align, half))
            else:
                coords = onnx_coordinates(transform, size_in, size_out, scale)
                got = tflite_coordinates(size_in, size_out, align, half)
                # below 0 both kernels read the first row: compare where they read
                exact &= coords is not None and bool(np.all(np.abs(
                    np.maximum(coords, 0) - np.maximum(got, 0)) <= 1e-5 * max(size_in, 1)))
        if exact:
            return align, half
    return None


@lower("Resize", "Upsample", int8=conditional(_linear, "int8 kernel for nearest; float island "
                                               "for linear"))
def lower_resize(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if len(in_shape) != 4 or tuple(in_shape[:2]) != tuple(out_shape[:2]):
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} from "
                              f"{list(in_shape)} to {list(out_shape)}; TFLite resizes H and W "
                              "of an NCHW map only")
    mode = ctx.attr(node, "mode", "nearest")
    default_transform = "asymmetric" if node.op_type == "Upsample" else "half_pixel"
    transform = ctx.attr(node, "coordinate_transformation_mode", default_transform)
    # Upsample (opset 7-9) has no rounding attribute: its nearest takes floor(x / scale)
    rounding = ctx.attr(node, "nearest_mode",
                        "floor" if node.op_type == "Upsample" else "round_prefer_floor")
    in_hw, out_hw = (in_shape[2], in_shape[3]), (out_shape[2], out_shape[3])
    described = (f"{ctx.graph.source}: {node.op_type} {node.name!r} mode={mode!r} "
                 f"coordinate_transformation_mode={transform!r} nearest_mode={rounding!r} from "
                 f"{list(in_hw)} to {list(out_hw)}")
    antialias = int(ctx.attr(node, "antialias", 0)) and any(
        o < i for i, o in zip(in_hw, out_hw, strict=True))
    if mode not in ("nearest", "linear", "cubic") or antialias and mode == "nearest":
        raise ConversionError(f"{described}: an unknown mode")
    if antialias or mode == "cubic":  # ONNX's weights, as matrices
        scales = _scales(ctx, node, in_hw, out_hw)
        _refuse_disputed(described, transform, in_hw, out_hw, scales)
        _resize_by_matrices(ctx, node, described, in_hw, out_hw, scales)
        return
    scales = _scales(ctx, node, in_hw, out_hw)
    _refuse_disputed(described, transform, in_hw, out_hw, scales)
    chosen = None
    if transform != "tf_crop_and_resize":
        chosen = _choose(ctx, node, mode, transform, rounding, in_hw, out_hw, scales)
    if chosen is None:  # ONNX's own sampling, per axis, as data movement or a matrix
        _resize_by_matrices(ctx, node, described, in_hw, out_hw, scales)
        return
    align, half = chosen
    if mode == "linear":
        op = "RESIZE_BILINEAR"
        options = ctx.options("ResizeBilinearOptions", alignCorners=align, halfPixelCenters=half)
    else:
        op = "RESIZE_NEAREST_NEIGHBOR"
        options = ctx.options("ResizeNearestNeighborOptions", alignCorners=align,
                              halfPixelCenters=half)
    x = ctx.value(node.input[0]).tensor
    size = ctx.int_const(node.output[0] + "/size", list(out_shape[2:]))
    ctx.same_params_output(node, op, [x, size], options)


def onnx_resize_matrix(node: onnx.NodeProto, axis: int, size_in: int, size_out: int,
                       scale: float, roi: tuple[float, float] | None,
                       extrapolation: float = 0.0, by_size: bool = False) -> np.ndarray:
    """The (size_out, size_in) matrix ONNX's Resize applies along one axis: ONNX's reference
    implementation run on the unit vectors, with the node's own attributes and this axis's scale
    (the other axes at scale 1, which every mode leaves as they are)."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    keep = ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
            "exclude_outside", "antialias")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in keep}
    if node.op_type == "Upsample":
        attrs.setdefault("coordinate_transformation_mode", "asymmetric")
        attrs.setdefault("nearest_mode", "floor")
    shape = [size_in, 1, 1, 1]
    shape[axis] = size_in
    scales = [1.0, 1.0, 1.0, 1.0]
    scales[axis] = scale
    region = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    if roi is not None:
        region[axis], region[axis + 4] = roi
    constants = [numpy_helper.from_array(np.asarray(region, np.float64), "roi"),
                 numpy_helper.from_array(np.asarray(scales, np.float32), "scales")]
    inputs = ["x", "roi", "scales"]
    if by_size:  # as the node does: ONNX derives the scale from the sizes itself
        sizes = list(shape)
        sizes[axis] = size_out
        constants[1] = numpy_helper.from_array(np.zeros(0, np.float32), "scales")
        constants.append(numpy_helper.from_array(np.asarray(sizes, np.int64), "sizes"))
        inputs.append("sizes")
    resize = helper.make_node("Resize", inputs, ["y"], extrapolation_value=extrapolation,
                              **attrs)
    graph = helper.make_graph(
        [resize], "axis", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, shape)],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    unit = np.eye(size_in, dtype=np.float64).reshape(shape)
    if extrapolation:
        unit = np.zeros_like(unit)
    outputs = list(ReferenceEvaluator(model).run(None, {"x": unit}))
    out = np.asarray(outputs[0])
    if out.shape[axis] != size_out:  # the scale floors to another size than the graph's
        return np.zeros((0, size_in))
    return np.moveaxis(out, axis, 1).reshape(size_in, size_out).T.copy()


def _resize_by_matrices(ctx: LoweringContext, node: onnx.NodeProto, described: str,
                        in_hw: tuple[int, int], out_hw: tuple[int, int],
                        scales: tuple[float, float]) -> None:
    """Where no TFLite resize samples as ONNX does: ONNX's per-axis matrices (its reference on
    unit vectors). Nearest rows pick one cell: a GATHER per axis, exact in float and int8.
    linear and cubic rows weigh cells: a BATCH_MATMUL per axis by the constant matrix, the same
    weighted sums (float only; in int8 a float island). tf_crop_and_resize's points outside the
    region take extrapolation_value: one ADD of a constant map."""
    mode = ctx.attr(node, "mode", "nearest")
    transform = ctx.attr(node, "coordinate_transformation_mode", "half_pixel")
    rois: list[tuple[float, float] | None] = [None, None]
    if transform == "tf_crop_and_resize":
        region = _per_axis_roi(ctx, node)
        rois = [(region[2], region[6]), (region[3], region[7])]
    by_size = (node.op_type == "Resize" and len(node.input) > 3 and bool(node.input[3])
               and ctx.attr(node, "keep_aspect_ratio_policy", "stretch") == "stretch")
    matrices, outside = [], []
    for axis, (size_in, size_out, scale, roi) in enumerate(
            zip(in_hw, out_hw, scales, rois, strict=True), start=2):
        matrix = onnx_resize_matrix(node, axis, size_in, size_out, scale, roi, 0.0, by_size)
        mask = (onnx_resize_matrix(node, axis, size_in, size_out, scale, roi, 1.0, by_size)
                if roi is not None else np.zeros((size_out, size_in)))
        if matrix.shape != (size_out, size_in) or matrix.shape != mask.shape:
            raise ConversionError(f"{described}: ONNX's scale gives another output size than "
                                  "its shape; give sizes")
        matrices.append(matrix)
        outside.append(mask.sum(axis=1) != 0)
    value = float(ctx.attr(node, "extrapolation_value", 0.0))
    if mode == "nearest":
        _gather_rows(ctx, node, described, matrices, any(o.any() for o in outside))
        return
    if ctx.int8:
        raise ConversionError(f"{described} weighs input cells as no TFLite resize kernel does; "
                              "edgecnn writes that in float: convert with int8_for=cpu "
                              "(a float island)", parameters=("int8_for",))
    _matmul_rows(ctx, node, matrices, outside, value)


def _per_axis_roi(ctx: LoweringContext, node: onnx.NodeProto) -> list[float]:
    roi = np.asarray(ctx.const(node, 1), np.float64).ravel()
    axes = ctx.attr(node, "axes")
    if axes is None:
        return [float(v) for v in roi]
    full = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    for i, axis in enumerate(int(a) % 4 for a in axes):
        full[axis], full[axis + 4] = float(roi[i]), float(roi[i + len(axes)])
    return full


def _gather_rows(ctx: LoweringContext, node: onnx.NodeProto, described: str,
                 matrices: list[np.ndarray], extrapolates: bool) -> None:
    """Nearest: each output row/column copies one input row/column (GATHER on NHWC's H, W)."""
    if extrapolates or any(not np.array_equal(np.sort(m, axis=1)[:, -1], np.ones(len(m)))
                           or np.count_nonzero(m) != len(m) for m in matrices):
        raise ConversionError(f"{described} takes points outside the input, which no gather "
                              "copies")
    current = ctx.value(node.input[0]).tensor
    shape = list(ctx.builder.tensor_shape(current))
    for step, (axis, matrix) in enumerate(zip((1, 2), matrices, strict=True)):
        index = ctx.int_const(f"{node.output[0]}/rows{axis}", matrix.argmax(axis=1))
        options = ctx.options("GatherOptions", axis=axis, batchDims=0)
        if step == 1:
            ctx.same_params_output(node, "GATHER", [current, index],
                                   options)
            return
        shape[axis] = len(matrix)
        moved = ctx.scratch(f"{node.output[0]}/rows", tuple(shape),
                            ctx.builder.tensor_quant(current))
        ctx.add_op("GATHER", [current, index], [moved], options=options)
        current = moved


def _matmul_rows(ctx: LoweringContext, node: onnx.NodeProto, matrices: list[np.ndarray],
                 outside: list[np.ndarray], value: float) -> None:
    """out = M_h x M_w^T on every image and channel: (N, H, W*C) by M_h, then (N*OH, W, C) by
    M_w, both BATCH_MATMULs with the constant matrix first; RESHAPEs move no data."""
    name = node.output[0]
    x = ctx.value(node.input[0]).tensor
    n, h, w, c = ctx.builder.tensor_shape(x)
    (oh, _), (ow, _) = matrices[0].shape, matrices[1].shape

    def step(source: int, rows: tuple[int, int, int], matrix: np.ndarray, tag: str) -> int:
        flat = ctx.scratch(f"{name}/{tag}_in", rows, None)
        reshape(ctx, source, rows, flat, f"{name}/{tag}_in_shape")
        weights = ctx.builder.add_constant(f"{name}/{tag}_matrix",
                                           matrix.astype(np.float32)[None])
        product = ctx.scratch(f"{name}/{tag}_out", (rows[0], len(matrix), rows[2]), None)
        ctx.add_op("BATCH_MATMUL", [weights, flat], [product],
                   options=ctx.options("BatchMatMulOptions", adjX=False, adjY=False))
        return product

    rows = step(x, (n, h, w * c), matrices[0], "rows")
    columns = step(rows, (n * oh, w, c), matrices[1], "columns")
    extra = value * (1 - np.outer(~outside[0], ~outside[1]))
    out = ctx.output_value(name)
    if not value or not extra.any():
        reshape(ctx, columns, (n, oh, ow, c), out.tensor, name + "/shape")
        return
    shaped = ctx.scratch(name + "/resized", (n, oh, ow, c), None)
    reshape(ctx, columns, (n, oh, ow, c), shaped, name + "/shape")
    ctx.add_op("ADD", [shaped, ctx.builder.add_constant(name + "/outside",
                                                        extra.astype(np.float32)[None, :, :,
                                                                                 None])],
               [out.tensor], options=ctx.options("AddOptions", fusedActivationFunction=0))
