"""converters/tflite_builder.py read back by the TFLite runtime itself (ai-edge-litert's C++
flatbuffer reader and interpreter), so what is checked is what a device would see.

Written for the survivors of ``python scripts/mutation_test.py --target tflite_builder``
(docs/testing.md). Expected values are the ones put in, or computed with numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from edgecnn.converters.tflite_builder import BUFFER_ALIGNMENT, QuantParams, TFLiteBuilder


def _interpreter(data: bytes) -> Interpreter:
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    return interpreter


def _details(interpreter: Interpreter) -> dict[str, dict]:
    return {d["name"]: d for d in interpreter.get_tensor_details()}


def _add_model(dynamic_batch: bool = True) -> tuple[TFLiteBuilder, dict[str, int]]:
    """y = x + c in float, plus int8 constants with per-tensor and per-axis quantisation."""
    b = TFLiteBuilder("test model")
    x = b.add_tensor("x", (1, 2, 2, 3), np.float32, dynamic_batch=dynamic_batch)
    c = b.add_constant("c", np.array([0.5, -1.25, 3.0], np.float32))
    y = b.add_tensor("y", (1, 2, 2, 3), np.float32, dynamic_batch=dynamic_batch)
    per_axis = b.add_constant("w", np.arange(-3, 3, dtype=np.int8).reshape(2, 3),
                              QuantParams((0.5, 0.25), (0, 0), 0))
    per_tensor = b.add_constant("k", np.array([7, -7, 100], np.int8),
                                QuantParams.per_tensor(0.125, -3))
    b.add_operator("ADD", [x, c], [y], options=b.options("AddOptions", fusedActivationFunction=0))
    b.inputs, b.outputs = [x], [y]
    return b, {"x": x, "c": c, "y": y, "w": per_axis, "k": per_tensor}


def test_quant_params_per_tensor_and_comparison():
    q = QuantParams.per_tensor(np.float32(0.5), np.int64(-3))
    assert q == QuantParams((0.5,), (-3,), None)
    assert type(q.scale[0]) is float and type(q.zero_point[0]) is int
    assert q.same_as(QuantParams((0.5,), (-3,)))
    assert q.same_as(QuantParams((0.5 * (1 + 1e-7),), (-3,)))  # float32 round trip noise
    assert not q.same_as(None)
    assert not q.same_as(QuantParams((0.5,), (-2,)))  # one zero-point step apart
    assert not q.same_as(QuantParams((0.5 * (1 + 1e-4),), (-3,)))  # a real scale difference
    small = QuantParams.per_tensor(0.01, 0)
    assert not small.same_as(QuantParams.per_tensor(0.02, 0))  # relative, never absolute


def test_the_runtime_computes_the_written_graph():
    builder, _ = _add_model()
    interpreter = _interpreter(builder.serialize())
    x = np.random.default_rng(0).standard_normal((1, 2, 2, 3)).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    # one float32 addition per element, the same in numpy and in the kernel: exact
    np.testing.assert_array_equal(got, x + np.array([0.5, -1.25, 3.0], np.float32))


def test_tensors_read_back_with_their_shapes_types_and_data():
    builder, _ = _add_model()
    details = _details(_interpreter(builder.serialize()))
    assert list(details["x"]["shape"]) == [1, 2, 2, 3]
    assert list(details["x"]["shape_signature"]) == [-1, 2, 2, 3]  # dynamic batch
    assert details["x"]["dtype"] == np.float32 and details["w"]["dtype"] == np.int8
    assert list(details["c"]["shape_signature"]) == [3]  # constants keep their shape
    fixed, _ = _add_model(dynamic_batch=False)
    assert list(_details(_interpreter(fixed.serialize()))["x"]["shape_signature"]) == [1, 2, 2, 3]
    interpreter = _interpreter(builder.serialize())
    np.testing.assert_array_equal(interpreter.get_tensor(_details(interpreter)["k"]["index"]),
                                  np.array([7, -7, 100], np.int8))


def test_quantisation_reads_back_per_tensor_and_per_axis():
    builder, _ = _add_model()
    details = _details(_interpreter(builder.serialize()))
    w = details["w"]["quantization_parameters"]
    np.testing.assert_array_equal(w["scales"], np.array([0.5, 0.25], np.float32))
    np.testing.assert_array_equal(w["zero_points"], [0, 0])
    assert w["quantized_dimension"] == 0
    k = details["k"]["quantization_parameters"]
    np.testing.assert_array_equal(k["scales"], np.array([0.125], np.float32))
    np.testing.assert_array_equal(k["zero_points"], [-3])
    assert k["quantized_dimension"] == 0  # per-tensor: dimension 0 as the converter writes it
    assert details["k"]["quantization"] == (0.125, -3)
    assert details["x"]["quantization_parameters"]["scales"].size == 0  # float: none


def test_per_axis_dimension_other_than_zero():
    b = TFLiteBuilder("axis")
    t = b.add_constant("w", np.zeros((1, 1, 1, 2), np.int8), QuantParams((0.5, 0.25), (0, 0), 3))
    assert b.tensor_quant(t) == QuantParams((0.5, 0.25), (0, 0), 3)
    x = b.add_tensor("x", (1, 2), np.float32)
    y = b.add_tensor("y", (1, 2), np.float32)
    b.add_operator("RELU", [x], [y])
    b.inputs, b.outputs = [x], [y]
    details = _details(_interpreter(b.serialize()))
    assert details["w"]["quantization_parameters"]["quantized_dimension"] == 3


def test_tensor_quant_shape_and_dtype_accessors():
    builder, t = _add_model()
    assert builder.tensor_quant(t["x"]) is None
    assert builder.tensor_quant(t["k"]) == QuantParams((0.125,), (-3,), None)  # no axis
    assert builder.tensor_quant(t["w"]) == QuantParams((0.5, 0.25), (0, 0), 0)
    assert builder.tensor_shape(t["w"]) == (2, 3)
    for dtype in (np.float32, np.int8, np.uint8, np.int32, np.int64, np.int16):
        index = builder.add_tensor(f"t_{np.dtype(dtype).name}", (1,), dtype)
        assert builder.tensor_dtype(index) == np.dtype(dtype)


def test_constant_buffers_are_16_byte_aligned():
    """Odd-sized constants would leave the next buffer misaligned without the padding."""
    b = TFLiteBuilder("align")
    payloads = [np.array([11, 12, 13], np.int8), np.array([21, 22, 23, 24, 25], np.int8),
                np.array([31, 32, 33, 34, 35, 36, 37], np.int8)]
    for i, payload in enumerate(payloads):
        b.add_constant(f"p{i}", payload, QuantParams.per_tensor(1.0, 0))
    x = b.add_tensor("x", (1, 2), np.float32)
    y = b.add_tensor("y", (1, 2), np.float32)
    b.add_operator("RELU", [x], [y])
    b.inputs, b.outputs = [x], [y]
    data = b.serialize()
    assert data[4:8] == b"TFL3"  # the file identifier, after the root offset
    assert BUFFER_ALIGNMENT == 16
    for payload in payloads:
        at = data.find(payload.tobytes())
        assert at > 0 and at % 16 == 0, at
        assert int.from_bytes(data[at - 4:at], "little") == payload.size  # vector length prefix
    _interpreter(data)  # and the runtime accepts it


def test_operator_codes_are_shared_per_op_and_version():
    b = TFLiteBuilder("codes")
    x = b.add_tensor("x", (1, 2), np.float32)
    mids = [b.add_tensor(f"m{i}", (1, 2), np.float32) for i in range(2)]
    q = QuantParams.per_tensor(0.5, 0)
    mids += [b.add_tensor("m2", (1, 2), np.int8, quant=q)]
    b.add_operator("RELU", [x], [mids[0]])
    b.add_operator("RELU", [mids[0]], [mids[1]])
    b.add_operator("RELU", [b.add_tensor("q", (1, 2), np.int8, quant=q)], [mids[2]])  # int8: v2
    assert b.used_ops() == [("RELU", 1), ("RELU", 2)]
    assert [o.opcodeIndex for o in b.operators] == [0, 0, 1]
    b.inputs, b.outputs = [x], [mids[2]]
    model = schema.Model.GetRootAs(b.serialize(), 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    relu = schema.BuiltinOperator.RELU
    assert [(c.BuiltinCode(), c.Version(), c.DeprecatedBuiltinCode()) for c in codes] == [
        (relu, 1, relu), (relu, 2, relu)]  # codes below 127 are written in both fields
    assert model.Version() == 3 and model.Description() == b"codes"
    assert model.Subgraphs(0).Name() == b"main" and model.Subgraphs(0).OperatorsLength() == 3


def test_op_versions_follow_from_the_tensors_and_options_by_one_table():
    from edgecnn.converters.op_versions import OpFacts, version_of

    f32, i8, i32 = np.dtype(np.float32), np.dtype(np.int8), np.dtype(np.int32)
    b = TFLiteBuilder("versions")
    assert version_of("CONV_2D", OpFacts([f32, f32, f32], [f32])) == 1
    assert version_of("CONV_2D", OpFacts([i8, i8, i32], [i8])) == 3  # per-channel int8
    assert version_of("FULLY_CONNECTED", OpFacts([i8, i8, i32], [i8])) == 4
    dilated = b.options("DepthwiseConv2DOptions", dilationHFactor=2, dilationWFactor=2)
    assert version_of("DEPTHWISE_CONV_2D", OpFacts([f32, f32, f32], [f32], dilated)) == 2
    assert version_of("DEPTHWISE_CONV_2D", OpFacts([i8, i8, i32], [i8], dilated)) == 3
    assert version_of("SPLIT", OpFacts([i32, i8], [i8, i8])) == 2  # the data is input 1
    assert version_of("TRANSPOSE_CONV", OpFacts([i32, f32, f32, f32], [f32])) == 3  # a bias
    assert version_of("TRANSPOSE_CONV", OpFacts([i32, i8, i8], [i8])) == 2
    half = b.options("ResizeBilinearOptions", halfPixelCenters=True)
    assert version_of("RESIZE_BILINEAR", OpFacts([f32, i32], [f32], half)) == 3
    aligned = b.options("ResizeNearestNeighborOptions", alignCorners=True)
    assert version_of("RESIZE_NEAREST_NEIGHBOR", OpFacts([i8, i32], [i8], aligned)) == 3
    assert version_of("TRANSPOSE", OpFacts([f32, i32], [f32])) == 1  # float in an int8 file
    assert version_of("RESHAPE", OpFacts([i8, i32], [i8])) == 1 and version_of(
        "QUANTIZE", OpFacts([f32], [i8])) == 2


def test_unknown_op_version_and_option_field_are_refused(monkeypatch):
    from edgecnn.converters import op_versions

    b = TFLiteBuilder("bad")
    x = b.add_tensor("x", (1, 2), np.float32)
    monkeypatch.setitem(op_versions.VERSION_RULES, "RELU", lambda facts: 7)
    with pytest.raises(AssertionError, match="RELU v7 has no known minimum runtime"):
        b.add_operator("RELU", [x], [x])
    assert b.operators == [] and b.opcodes == {}
    with pytest.raises(AttributeError, match="AddOptions has no field strideW"):
        b.options("AddOptions", strideW=1)
    options = b.options("Conv2DOptions", strideW=2, strideH=3)
    assert (options.strideW, options.strideH) == (2, 3)


def test_metadata_and_minimum_runtime_are_written():
    builder, _ = _add_model()
    builder.metadata["edgecnn_note"] = b"hello"
    model = schema.Model.GetRootAs(builder.serialize(), 0)
    found = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        found[entry.Name().decode()] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    # ADD v1 needs TensorFlow Lite 1.5.0 (runtime_version.cc), padded to 16 bytes with NULs
    assert found["min_runtime_version"] == b"1.5.0".ljust(16, b"\0")
    assert found["edgecnn_note"] == b"hello"
    op = model.Subgraphs(0).Operators(0)
    assert op.BuiltinOptionsType() == schema.BuiltinOptions.AddOptions


def test_operator_options_reach_the_kernel():
    """A fused RELU (code 1 in the schema) written as an option must clip the sum at zero."""
    b = TFLiteBuilder("fused")
    x = b.add_tensor("x", (1, 3), np.float32)
    c = b.add_constant("c", np.array([0.5, -1.25, 3.0], np.float32))
    y = b.add_tensor("y", (1, 3), np.float32)
    b.add_operator("ADD", [x, c], [y], options=b.options("AddOptions", fusedActivationFunction=1))
    b.inputs, b.outputs = [x], [y]
    interpreter = _interpreter(b.serialize())
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                           np.array([[-1.0, 1.0, -4.0]], np.float32))
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_array_equal(got, [[0.0, 0.0, 0.0]])  # -0.5, -0.25, -1.0 clipped
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                           np.array([[1.0, 2.0, -1.0]], np.float32))
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_array_equal(got, [[1.5, 0.75, 2.0]])  # exact binary fractions
