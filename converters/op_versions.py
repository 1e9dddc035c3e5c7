"""Which version of a builtin op a file declares: one table, decided from the op and its
tensors' types the way TensorFlow Lite's ``op_version.cc`` decides it, never a number at each
call site.

A version is what an interpreter checks before it runs an op (an old runtime refuses a version
it does not know), so it must say exactly what the op needs: an int8 CONV_2D with per-channel
weights is version 3, the same op in float version 1. ``tflite_schema.MIN_RUNTIME`` then names
the oldest runtime for each (op, version) the file holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

INTEGER = (np.dtype(np.int8), np.dtype(np.uint8))


@dataclass(frozen=True)
class OpFacts:
    """What decides a version: the types of the op's tensors (None for an omitted optional
    input) and its options."""

    inputs: Sequence[np.dtype | None]
    outputs: Sequence[np.dtype]
    options: Any = None

    def integer(self, index: int = 0) -> bool:
        """Input ``index`` (the op's data input) is int8 or uint8."""
        return index < len(self.inputs) and self.inputs[index] in INTEGER

    def int16(self, index: int = 0) -> bool:
        """Input ``index`` is int16: an activation of TFLite's 16x8 mode."""
        return index < len(self.inputs) and self.inputs[index] == np.dtype(np.int16)


def _on_input(int8_version: int, data_input: int = 0,
              int16: int = 1) -> Callable[[OpFacts], int]:
    """Version 1 in float, ``int8_version`` when the data input is 8-bit, ``int16`` when it is
    int16 (op_version.cc gives several 16x8 kernels no version of their own: CONV_2D,
    DEPTHWISE_CONV_2D and FULLY_CONNECTED with int8 weights stay 1)."""
    def rule(facts: OpFacts) -> int:
        if facts.int16(data_input):
            return int16
        return int8_version if facts.integer(data_input) else 1
    return rule


def _add_sub(int16_general: int) -> Callable[[OpFacts], int]:
    """ADD and SUB: int8 2; int16 with general scales (pot_scale_int16 false, as edgecnn
    writes them) ``int16_general``, with power-of-two scales 1."""
    def rule(facts: OpFacts) -> int:
        if facts.int16():
            general = not getattr(facts.options, "potScaleInt16", True)
            return int16_general if general else 1
        return 2 if facts.integer() else 1
    return rule


def _dequantize(facts: OpFacts) -> int:
    return 3 if facts.int16() else 2


def _depthwise(facts: OpFacts) -> int:
    if facts.integer():
        return 3  # int8 with per-channel weights
    options = facts.options
    dilated = options is not None and (getattr(options, "dilationWFactor", 1) != 1
                                       or getattr(options, "dilationHFactor", 1) != 1)
    return 2 if dilated else 1


def _resize(facts: OpFacts) -> int:
    if facts.int16():
        return 4
    options = facts.options
    if getattr(options, "halfPixelCenters", False) or (
            type(options).__name__.startswith("ResizeNearest")
            and getattr(options, "alignCorners", False)):
        return 3  # half-pixel centres, and a nearest-neighbour resize's aligned corners
    return 2 if facts.integer() else 1


def _transpose_conv(facts: OpFacts) -> int:
    # inputs: output shape, weights, data, [bias]; a bias is version 3 in float and int8 alike
    if len(facts.inputs) > 3 and facts.inputs[3] is not None:
        return 3
    return 2 if facts.integer(2) else 1


# op -> its version rule; an op not listed has one version. Int8 forms per TFLite's own
# op_version.cc: most ops' int8 kernel is version 2; CONV_2D (per-channel) 3, FULLY_CONNECTED 4.
VERSION_RULES: dict[str, Callable[[OpFacts], int]] = {
    "ADD": _add_sub(3), "SUB": _add_sub(5), "MUL": _on_input(2, int16=4),
    "AVERAGE_POOL_2D": _on_input(2, int16=3), "MAX_POOL_2D": _on_input(2, int16=3),
    "CONCATENATION": _on_input(2, int16=3), "CONV_2D": _on_input(3),
    "DEPTHWISE_CONV_2D": _depthwise, "FULLY_CONNECTED": _on_input(4),
    "BATCH_MATMUL": _on_input(2, int16=3), "GATHER": _on_input(2, int16=4),
    "GELU": _on_input(2), "LEAKY_RELU": _on_input(2, int16=2),
    "LOGISTIC": _on_input(2, int16=3), "TANH": _on_input(2, int16=3),
    "SOFTMAX": _on_input(2, int16=3), "MAXIMUM": _on_input(2, int16=4),
    "MINIMUM": _on_input(2, int16=4), "MEAN": _on_input(2, int16=3),
    "REDUCE_MAX": _on_input(2, int16=3), "SUM": _on_input(2), "REDUCE_MIN": _on_input(2, int16=3),
    "PAD": _on_input(2, int16=3), "PADV2": _on_input(2, int16=3),
    "RELU": _on_input(2, int16=3), "RELU6": _on_input(2, int16=3),
    "SPACE_TO_DEPTH": _on_input(2), "SPLIT": _on_input(2, data_input=1, int16=4),
    "SPLIT_V": _on_input(2), "STRIDED_SLICE": _on_input(2), "TRANSPOSE": _on_input(2, int16=5),
    "TILE": _on_input(3), "RESIZE_BILINEAR": _resize, "RESIZE_NEAREST_NEIGHBOR": _resize,
    "TRANSPOSE_CONV": _transpose_conv,
    # conversions between float and integers: int8 or int16 on the integer side (v2; a
    # DEQUANTIZE of int16 v3); TFLite's v1 is uint8 only, which edgecnn never needs
    "QUANTIZE": lambda facts: 2, "DEQUANTIZE": _dequantize,
}


def version_of(op: str, facts: OpFacts) -> int:
    """The version of builtin ``op`` with these tensors and options."""
    rule = VERSION_RULES.get(op)
    return rule(facts) if rule is not None else 1
