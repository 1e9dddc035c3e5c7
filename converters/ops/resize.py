"""Resize (opset 11+) and Upsample -> RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR.

TFLite's two resize kernels know three coordinate mappings (asymmetric, half-pixel centres,
aligned corners) and one rounding rule each. An ONNX Resize converts when its
(mode, coordinate_transformation_mode, nearest_mode) computes exactly the same source index:

* linear: asymmetric, align_corners, and half_pixel / pytorch_half_pixel (TFLite clamps
  negative source coordinates to 0 as ONNX does);
* nearest: asymmetric + floor (PyTorch's ``nearest``), tf_half_pixel_for_nn + floor and
  half_pixel + round_prefer_ceil (``floor((x + 0.5) * scale)``, PyTorch's ``nearest-exact``
  rounds the same way), align_corners + round_prefer_ceil (TFLite rounds halves up).

Anything else (cubic, other roundings) is refused by name rather than approximated.
"""

from __future__ import annotations

import onnx
from edgecnn.converters.int8_forms import conditional
from edgecnn.converters.lowering import LoweringContext
from edgecnn.converters.ops import lower

from edgecnn.errors import ConversionError

LINEAR_MODES = {"asymmetric": (False, False), "align_corners": (True, False),
                "half_pixel": (False, True), "pytorch_half_pixel": (False, True)}
NEAREST_MODES = {("asymmetric", "floor"): (False, False),
                 ("tf_half_pixel_for_nn", "floor"): (False, True),
                 ("half_pixel", "round_prefer_ceil"): (False, True),
                 ("align_corners", "round_prefer_ceil"): (True, False)}


def _linear(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """Bilinear RESIZE requantises coarsely: a step off on some values; nearest copies."""
    return ctx.attr(node, "mode", "nearest") != "nearest"


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
    if mode == "linear" and transform in LINEAR_MODES:
        op, (align, half) = "RESIZE_BILINEAR", LINEAR_MODES[transform]
        options = ctx.options("ResizeBilinearOptions", alignCorners=align, halfPixelCenters=half)
    elif mode == "nearest" and (transform, rounding) in NEAREST_MODES:
        op, (align, half) = "RESIZE_NEAREST_NEIGHBOR", NEAREST_MODES[(transform, rounding)]
        options = ctx.options("ResizeNearestNeighborOptions", alignCorners=align,
                              halfPixelCenters=half)
    else:
        raise ConversionError(
            f"{ctx.graph.source}: {node.op_type} {node.name!r} mode={mode!r} "
            f"coordinate_transformation_mode={transform!r} nearest_mode={rounding!r} has no "
            "exact TFLite kernel; linear (asymmetric, half_pixel, align_corners) and nearest "
            "(asymmetric/floor, half_pixel/round_prefer_ceil, align_corners/round_prefer_ceil) "
            "convert")
    if op == "RESIZE_NEAREST_NEIGHBOR" and align:
        version = 3
    else:
        version = 3 if half else ctx.op_version(1, 2)
    x = ctx.value(node.input[0]).tensor
    size = ctx.int_const(node.output[0] + "/size", list(out_shape[2:]))
    ctx.same_params_output(node, op, [x, size], version, options)
