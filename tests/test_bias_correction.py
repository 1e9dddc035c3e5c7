"""Bias correction (converters/bias_correction.py) on a hand-built QDQ convolution whose shift is
computed by hand, checked through onnxruntime, and end to end through convert."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.converters.bias_correction import correct_biases

W_FLOAT, W_SCALE, W_INT = 0.3, 0.25, 1  # the int8 weight reads 0.25: a 0.05 shortfall
X_SCALE, X_ZERO = 0.5, 0  # uint8 input grid; x = 0.7 reads 0.5 (rounds down), 1.2 reads 1.0
BIAS_SCALE = X_SCALE * W_SCALE


def _models() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    float_model = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], "f", [x], [y],
        [numpy_helper.from_array(np.full((1, 1, 1, 1), W_FLOAT, np.float32), "w"),
         numpy_helper.from_array(np.zeros(1, np.float32), "b")]),
        opset_imports=[helper.make_opsetid("", 17)])
    inits = [numpy_helper.from_array(np.array(X_SCALE, np.float32), "xs"),
             numpy_helper.from_array(np.array(X_ZERO, np.uint8), "xz"),
             numpy_helper.from_array(np.full((1, 1, 1, 1), W_INT, np.int8), "wq"),
             numpy_helper.from_array(np.array([W_SCALE], np.float32), "ws"),
             numpy_helper.from_array(np.array([0], np.int8), "wz"),
             numpy_helper.from_array(np.zeros(1, np.int32), "bq"),
             numpy_helper.from_array(np.array([BIAS_SCALE], np.float32), "bs"),
             numpy_helper.from_array(np.array([0], np.int32), "bz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], name="conv")]
    qdq = helper.make_model(helper.make_graph(nodes, "q", [x], [y], inits),
                            opset_imports=[helper.make_opsetid("", 17)])
    return float_model, qdq


def test_the_shift_is_the_hand_computed_one_and_removes_the_mean_error():
    import onnxruntime as ort

    images = np.array([0.7, 1.2, 0.7, 1.2] * 4, np.float32).reshape(4, 1, 2, 2)
    float_model, qdq = _models()
    assert correct_biases(float_model, qdq, images) == 1
    # E[W x] - E[W_q Q(x)] = 0.3 * 0.95 - 0.25 * 0.75 = 0.0975, in steps of 0.125: 1
    bias = numpy_helper.to_array(next(t for t in qdq.graph.initializer if t.name == "bq"))
    assert bias.tolist() == [round((W_FLOAT * 0.95 - W_SCALE * 0.75) / BIAS_SCALE)] == [1]

    def mean_output(model: onnx.ModelProto) -> float:
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return float(session.run(None, {"x": images})[0].mean())

    _, uncorrected = _models()
    want = mean_output(float_model)
    assert abs(mean_output(qdq) - want) < abs(mean_output(uncorrected) - want)
    assert mean_output(qdq) == pytest.approx(want, abs=BIAS_SCALE / 2)


def test_bias_correction_end_to_end(tmp_path):
    from edgecnn.api import ConvertConfig, convert
    from edgecnn.errors import BadInputError

    result = convert("lenet5", tmp_path / "bc.tflite",
                     ConvertConfig("tflite", int8=True, bias_correction=True))
    assert result.checks["tflite max|Δ| vs qdq reference (steps)"] <= 1
    onnx_result = convert("lenet5", tmp_path / "bc.onnx",
                          ConvertConfig("onnx", int8=True, bias_correction=True))
    meta = {p.key: p.value for p in onnx.load(onnx_result.path).metadata_props}
    assert "bias-corrected" in meta["edgecnn.quantization"]
    with pytest.raises(BadInputError, match="add int8=True"):
        ConvertConfig("onnx", bias_correction=True)
