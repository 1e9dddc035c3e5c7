"""ONNX op lowerings, one function per op type, registered in :data:`LOWERINGS`.

Importing this package imports every lowering module, each of which registers its functions
with ``@lower("OpType")``. A lowering receives the :class:`LoweringContext` and the ONNX node and
writes TFLite tensors and operators through the context.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from edgecnn.converters.lowering import LoweringContext

from edgecnn.registry import Registry

Lowering = Callable[[LoweringContext, onnx.NodeProto], None]
LOWERINGS: Registry[Lowering] = Registry("ONNX op lowering")
lower = LOWERINGS.register

from edgecnn.converters.ops import (  # noqa: E402,F401  (registration side effects)
    activations,
    conv,
    dense,
    elementwise,
    normalization,
    pooling,
    reduce,
    resize,
    shape,
)
