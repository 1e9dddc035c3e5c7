"""int16 layers in a QDQ model: TFLite's 16x8 mode (int16 activations, int8 weights) for the
few layers whose range int8 cannot hold, asked of onnxruntime's quantiser.

onnxruntime does the work: per-tensor overrides ask for symmetric int16 on the chosen layers'
outputs, and its mixed-precision fixer (written for Qualcomm's QNN, generic in fact) completes
them so every op reads and writes one type, with ``Q -> DQ -> Q -> DQ`` conversions where an
int8 value meets an int16 layer. ONNX's own QuantizeLinear takes int16 from opset 21, so the
float model is moved there first; the QDQ file stays standard ONNX.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from edgecnn.errors import ConversionError

INT16_OPSET = 21  # the first ONNX opset whose QuantizeLinear writes int16


def opset_for_int16(src: Path, dst: Path, model: onnx.ModelProto
                     ) -> tuple[Path, onnx.ModelProto]:
    """The float model at ``src`` in opset 21 or later, where ONNX's own Q/DQ take int16 (the
    QDQ file stays standard ONNX, not onnxruntime's com.microsoft ops): its file (``dst``) and
    graph, without weights."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= INT16_OPSET:
        return src, model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(onnx.load(src), INT16_OPSET)
    except Exception as exc:  # onnx raises its own errors, and RuntimeError from C++
        detail = " ".join(str(exc).split())[:200]
        raise ConversionError(f"int16 activations need ONNX opset {INT16_OPSET} and onnx could "
                              f"not convert this opset {opset} model ({detail}); export it at "
                              f"opset {INT16_OPSET}") from None
    onnx.save(converted, dst)
    del converted.graph.initializer[:]  # only the graph is read from here
    return dst, converted


def outputs_of(model: onnx.ModelProto, nodes: tuple[str, ...]) -> list[str]:
    """The values ``nodes`` write (names that survive an opset conversion; node names and op
    types may not)."""
    by_name = {n.name: n for n in model.graph.node}
    missing = [name for name in nodes if name not in by_name]
    if missing:
        raise ConversionError(f"int16 node {missing[0]!r} is not in the model; `edgecnn layers` "
                              "lists its layers")
    return [out for name in nodes for out in by_name[name].output if out]



def int16_overrides(model: onnx.ModelProto,
                     outputs: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Overrides that quantise ``outputs`` to symmetric int16 (TFLite's 16x8 activations have
    zero point 0), completed by onnxruntime's mixed-precision fixer: the inputs
    of those nodes and of the nodes that read their outputs become int16 too, with int8 <-> int16
    conversions (``Q -> DQ -> Q -> DQ``) wherever an int8 value meets an int16 layer."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.execution_providers.qnn.mixed_precision_overrides_utils import (
        MixedPrecisionTensorQuantOverridesFixer,
    )
    from onnxruntime.quantization.tensor_quant_overrides import TensorQuantOverridesHelper

    initial: dict[str, list[dict[str, Any]]] = {
        out: [{"quant_type": QuantType.QInt16, "symmetric": True}] for out in outputs}
    helper = TensorQuantOverridesHelper(initial)
    fixer = MixedPrecisionTensorQuantOverridesFixer.create_from_model(helper, model,
                                                                      QuantType.QInt8)
    fixer.apply(QuantType.QInt8, default_activation_symmetric=False)
    # the fixer carries each request's symmetry into the types it adds and converts to
    return helper.get_dict()
