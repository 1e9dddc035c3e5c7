"""ONNX op lowerings, one function per op type, registered in :data:`LOWERINGS`.

Importing this package imports every lowering module, each of which registers its functions
with ``@lower("OpType")``. A lowering receives the :class:`LoweringContext` and the ONNX node and
writes TFLite tensors and operators through the context. ``@lower("Op", int8=...)`` declares
how the op is written in an int8 file (:mod:`edgecnn.converters.int8_forms`).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from edgecnn.converters.int8_forms import INT8_FORMS, INT16_KERNELS, KERNEL, Int8Form
from edgecnn.converters.lowering import LoweringContext
from edgecnn.registry import Registry

Lowering = Callable[[LoweringContext, onnx.NodeProto], None]
LOWERINGS: Registry[Lowering] = Registry("ONNX op lowering")


def lower(*names: str, int8: Int8Form = KERNEL,
          int16: bool = False) -> Callable[[Lowering], Lowering]:
    """Register a lowering for ``names`` with its int8 form (:mod:`..int8_forms`); ``int16``:
    its int8 form is also written with int16 activations (TFLite's 16x8 kernels), exactly as
    the QDQ graph computes it. Other ops in an int16 region run as float islands."""
    register = LOWERINGS.register(*names)

    def decorate(function: Lowering) -> Lowering:
        for name in names:
            INT8_FORMS[name] = int8
            if int16:
                INT16_KERNELS.add(name)
        return register(function)

    return decorate


from edgecnn.converters.ops import (  # noqa: E402,F401  (registration side effects)
    activations,
    conv,
    dense,
    elementwise,
    normalization,
    pooling,
    rearrange,
    reduce,
    resize,
    shape,
)
