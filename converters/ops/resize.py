"""Resize (opset 11+) and Upsample -> RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR.

TFLite's two resize kernels know three coordinate mappings (asymmetric, half-pixel centres,
aligned corners) and one rounding rule each, with the scale output/input. Rather than a table
of attribute names, a Resize converts when, for its own sizes and scales, one of those mappings
samples exactly where ONNX's does on both axes: the same source index for nearest (so
half_pixel with ONNX's default round_prefer_floor converts wherever no output lands on a tie,
e.g. every whole upscale), the same source coordinate for linear. A scale whose output size is
not whole (ONNX keeps the fraction in its formulas, TFLite uses output/input),
pytorch_half_pixel onto one pixel, antialiased downscaling, cubic and crop-and-resize are
refused by name rather than approximated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from edgecnn.converters.int8_forms import conditional
from edgecnn.converters.lowering import LoweringContext
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
        sizes = ctx.const(node, 3).astype(np.float64)[-2:]
        ratios = sizes / np.asarray(in_hw, np.float64)
        one = float(ratios.min() if policy == "not_larger" else ratios.max())
        return one, one
    given = np.asarray(ctx.const(node, 2), np.float32)
    axes = ctx.attr(node, "axes")
    if axes is not None:
        by_axis = {int(a) % 4: float(v) for a, v in zip(axes, given, strict=False)}
        return by_axis.get(2, 1.0), by_axis.get(3, 1.0)
    return float(given[2]), float(given[3])


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
    if mode not in ("nearest", "linear") or antialias:
        raise ConversionError(f"{described}{' with antialias' if antialias else ''} has no "
                              "exact TFLite kernel: TFLite resizes by nearest or bilinear "
                              "sampling only")
    chosen = _choose(ctx, node, mode, transform, rounding, in_hw, out_hw,
                     _scales(ctx, node, in_hw, out_hw))
    if chosen is None:
        raise ConversionError(f"{described} samples where no TFLite resize does (its scale is "
                              "not output/input, or its rounding differs on these sizes); "
                              "resize by whole factors or give sizes")
    align, half = chosen
    if mode == "linear":
        op = "RESIZE_BILINEAR"
        options = ctx.options("ResizeBilinearOptions", alignCorners=align, halfPixelCenters=half)
    else:
        op = "RESIZE_NEAREST_NEIGHBOR"
        options = ctx.options("ResizeNearestNeighborOptions", alignCorners=align,
                              halfPixelCenters=half)
    if op == "RESIZE_NEAREST_NEIGHBOR" and align:
        version = 3
    else:
        version = 3 if half else ctx.op_version(1, 2)
    x = ctx.value(node.input[0]).tensor
    size = ctx.int_const(node.output[0] + "/size", list(out_shape[2:]))
    ctx.same_params_output(node, op, [x, size], version, options)
