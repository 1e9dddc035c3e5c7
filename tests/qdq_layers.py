"""Layer-by-layer int8 comparison of a TFLite file with the QDQ graph it was lowered from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx


def int8_activations(qdq: Path, tflite: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """|TFLite - QDQ reference| in steps for every quantised activation, in graph order."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter
    from edgecnn.converters.qdq import reference_session_options

    model = onnx.load(str(qdq))
    weights = {t.name for t in model.graph.initializer}
    quantize = [n for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in weights]
    zero_types = {t.name: t.data_type for t in model.graph.initializer}
    encoding = {n.output[0]: zero_types.get(n.input[2], onnx.TensorProto.UINT8)
                for n in quantize}  # int8 or the uint8 (+128) encoding, see converters/qdq.py
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, kind, None)
                              for name, kind in encoding.items())
    session = ort.InferenceSession(model.SerializeToString(), reference_session_options())
    reference = dict(zip([o.name for o in session.get_outputs()],
                         session.run(None, {session.get_inputs()[0].name: x}), strict=True))
    interpreter = Interpreter(model_path=str(tflite), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    scale, zero = detail["quantization"]
    interpreter.set_tensor(detail["index"], np.clip(
        np.round(x.transpose(0, 2, 3, 1) / scale) + zero, -128, 127).astype(np.int8))
    interpreter.invoke()
    tensors = {t["name"]: t["index"] for t in interpreter.get_tensor_details()}
    steps = {}
    for node in quantize:
        if node.input[0] not in tensors:
            continue
        ours = interpreter.get_tensor(tensors[node.input[0]]).astype(np.int32)
        theirs = reference[node.output[0]].astype(np.int32)
        if encoding[node.output[0]] == onnx.TensorProto.UINT8:
            theirs -= 128  # the same quantisation, stored +128
        if theirs.ndim == 4:
            theirs = theirs.transpose(0, 2, 3, 1)
        if ours.shape == theirs.shape:
            steps[node.input[0]] = np.abs(ours - theirs)
    return steps
