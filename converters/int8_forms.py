"""How an ONNX op is written in an int8 TFLite file, declared where its lowering is registered.

One declaration per op answers every int8 question the converter, the quantiser and the docs
ask, so adding an op stays one place (``@lower("HardSwish", int8=island(...))``):

- **kernel** (the default): TFLite's int8 kernel rounds as the QDQ graph does; always int8.
- **island**: no int8 kernel computes the QDQ arithmetic, so the CPU file runs the op in float
  between DEQUANTIZE and QUANTIZE (:mod:`edgecnn.converters.islands`); ``integer_only`` says an
  NPU/MCU file (``--for npu|mcu``) may write an int8 form within one step per layer instead.
- **conditional**: an int8 kernel except where ``inexact(ctx, node)`` says that form of the op
  rounds a step away on some values; there the CPU file takes an island, and an integer-only
  file the kernel (within one step, measured layer by layer in tests/test_tflite.py).
- ``fixed_output``: the output (scale, zero point) the int8 kernel demands (LOGISTIC, TANH,
  SOFTMAX); the quantiser gives the QDQ graph those parameters (:mod:`.quantize`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Predicate = Callable[[Any, Any], bool]  # (LoweringContext, onnx.NodeProto) -> bool


@dataclass(frozen=True)
class Int8Form:
    kind: str = "kernel"  # kernel | island | conditional
    integer_only: bool = True  # an NPU/MCU file can hold it without a float op
    inexact: Predicate | None = None  # conditional: when the int8 kernel rounds a step away
    fixed_output: tuple[float, int] | None = None
    note: str = ""  # what docs/ops.md says of its int8 form

    def describe(self) -> str:
        if self.kind == "kernel":
            return self.note or "int8 kernel"
        text = self.note or "float island"
        if "--for" in text:
            return text
        return text + ("; --for npu|mcu: int8" if self.integer_only else "; --for npu|mcu: refused")


KERNEL = Int8Form()


def island(note: str = "float island", *, integer_only: bool = False) -> Int8Form:
    """An op the CPU file runs in float; ``integer_only`` when an NPU/MCU form exists."""
    return Int8Form("island", integer_only, note=note)


def conditional(inexact: Predicate, note: str) -> Int8Form:
    """An int8 kernel but where ``inexact`` holds; there an island in the CPU file."""
    return Int8Form("conditional", True, inexact, note=note)


def fixed_output(scale: float, zero_point: int, note: str) -> Int8Form:
    """An int8 kernel whose output parameters are fixed by TFLite's spec."""
    return Int8Form("kernel", True, fixed_output=(scale, zero_point), note=note)


# op type -> its declaration; filled by ``converters.ops.lower`` as each lowering registers
INT8_FORMS: dict[str, Int8Form] = {}
# op types whose lowering also writes TFLite's 16x8 form (int16 activations, int8 weights)
INT16_KERNELS: set[str] = set()


def int16_kernel(op_type: str) -> bool:
    """Whether ``op_type`` has a 16x8 form; without one, an int16 node runs as a float island."""
    import edgecnn.converters.ops  # noqa: F401  (registration side effects)

    return op_type in INT16_KERNELS


def int8_form(op_type: str) -> Int8Form:
    """The declared int8 form of ``op_type`` (every lowering module imported first)."""
    import edgecnn.converters.ops  # noqa: F401  (registration side effects)

    return INT8_FORMS.get(op_type, KERNEL)


def fixed_output_params() -> dict[str, tuple[float, int]]:
    """Op type -> the output parameters its int8 kernel demands."""
    import edgecnn.converters.ops  # noqa: F401  (registration side effects)

    return {op: form.fixed_output for op, form in INT8_FORMS.items() if form.fixed_output}
