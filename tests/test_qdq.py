"""converters/qdq.py against hand-built QDQ graphs: the checks, the encodings, the fingerprint.

Written for the survivors of ``python scripts/mutation_test.py --target qdq`` (docs/testing.md).
Every expectation is derived here by hand or with numpy from the ONNX QDQ definition
(``real = (q - zero_point) * scale``), never by calling the function under test twice.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.converters import qdq
from edgecnn.errors import ConversionError

OPSET = [helper.make_opsetid("", 18)]


def _model(*, act: int = TensorProto.UINT8, act_zp: int = 128, w_zp: int = 0,
           w_values: np.ndarray | None = None, w_scale: np.ndarray | None = None,
           x_scale: float = 0.02, y_scale: float = 0.05, y_zp: int = 120,
           constant_scale: bool = False) -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(1x1, 2 channels, int8 weights per channel) -> Q/DQ -> y.

    ``act`` is the activations' integer type; weights are int8, stored as uint8 (+128) when the
    activations are uint8, as edgecnn's default ONNX encoding does. ``constant_scale`` feeds the
    input's scale from a Constant node instead of an initializer.
    """
    w = np.array([[[[3]]], [[[-5]]]], np.int8) if w_values is None else w_values
    ws = np.array([0.1, 0.25], np.float32) if w_scale is None else w_scale
    act_dtype = np.uint8 if act == TensorProto.UINT8 else np.int8
    w_dtype = np.uint8 if act == TensorProto.UINT8 else np.int8
    shift = 128 if act == TensorProto.UINT8 else 0
    inits = [
        numpy_helper.from_array(np.array(act_zp, act_dtype), "x_zp"),
        numpy_helper.from_array((w.astype(np.int16) + shift).astype(w_dtype), "w_q"),
        numpy_helper.from_array(ws, "w_scale"),
        numpy_helper.from_array(np.full(ws.shape, w_zp + shift, w_dtype), "w_zp"),
        numpy_helper.from_array(np.array(y_scale, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(y_zp, act_dtype), "y_zp"),
    ]
    nodes = []
    if constant_scale:
        nodes.append(helper.make_node("Constant", [], ["x_scale"],
                                      value=numpy_helper.from_array(np.array(x_scale, np.float32))))
    else:
        inits.append(numpy_helper.from_array(np.array(x_scale, np.float32), "x_scale"))
    nodes += [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="qx"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dqx"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dqw",
                         axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zp"], ["c_q"], name="qy"),
        helper.make_node("DequantizeLinear", ["c_q", "y_scale", "y_zp"], ["y"], name="dqy"),
    ]
    graph = helper.make_graph(nodes, "qdq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
                              inits)
    return helper.make_model(graph, opset_imports=OPSET)


def _set(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(value, name))
    return model


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), qdq.reference_session_options(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


# -- is_qdq, check_quant_params, check_pairs ------------------------------------------------
def test_is_qdq_only_with_a_quantize_node():
    assert qdq.is_qdq(_model())
    float_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "f",
                                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert not qdq.is_qdq(helper.make_model(float_graph, opset_imports=OPSET))


@pytest.mark.parametrize("act", [TensorProto.UINT8, TensorProto.INT8])
def test_valid_parameters_pass_including_the_range_ends(act):
    """0..255 (uint8) and -128..127 (int8) are the whole ranges: their end points are valid."""
    low, high = (0, 255) if act == TensorProto.UINT8 else (-128, 127)
    for zp in (low, high):
        qdq.check_quant_params(_model(act=act, act_zp=zp, y_zp=zp), "m.onnx")
    qdq.check_quant_params(_model(act=act, constant_scale=True), "m.onnx")


@pytest.mark.parametrize("name,value,shown", [
    ("x_scale", np.array(0.0, np.float32), "scale 0.0"),
    ("y_scale", np.array(-0.5, np.float32), "scale -0.5"),
    ("y_scale", np.array(np.nan, np.float32), "scale nan"),
    ("x_scale", np.array(np.inf, np.float32), "scale inf"),
    ("w_scale", np.array([0.1, -2.0], np.float32), "scale -2.0"),  # the bad one is shown
    ("w_scale", np.zeros(0, np.float32), "scale empty"),
])
def test_bad_scales_are_refused_naming_node_and_value(name, value, shown):
    model = _set(_model(), name, value)
    with pytest.raises(ConversionError, match=shown) as err:
        qdq.check_quant_params(model, "m.onnx")
    message = str(err.value)
    assert message.startswith("m.onnx: ") and " node " in message and "finite and > 0" in message


def test_bad_scale_from_a_constant_node_is_refused():
    with pytest.raises(ConversionError, match="QuantizeLinear node 'qx' has scale 0.0"):
        qdq.check_quant_params(_model(x_scale=0.0, constant_scale=True), "m.onnx")


def test_computed_scale_and_missing_zero_point_are_left_to_the_runtime():
    """A scale computed by another node is not a constant: nothing to check before run time."""
    model = _model()
    model.graph.node.insert(0, helper.make_node("Identity", ["y_scale"], ["y_scale_copy"]))
    qy = next(n for n in model.graph.node if n.name == "qy")
    qy.input[1] = "y_scale_copy"
    qdq.check_quant_params(model, "m.onnx")
    del qy.input[2]  # no zero point: 0 of the default type
    qdq.check_quant_params(model, "m.onnx")


def _without_zero_points(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every Q/DQ node reduced to two inputs: zero point 0 of the default type (uint8 for
    QuantizeLinear's output, the data's type for DequantizeLinear), a valid form that
    onnxruntime's quantiser never writes."""
    for node in model.graph.node:
        if node.op_type in qdq.QDQ_OPS:
            del node.input[2:]
    return model


def test_two_input_nodes_are_checked_without_a_zero_point():
    model = _without_zero_points(_model(act=TensorProto.INT8, act_zp=0, y_zp=0))
    qdq.check_quant_params(model, "m.onnx")
    qdq.check_pairs(model, "m.onnx")
    assert [t.name for t in qdq.eight_bit_tensors(model)] == ["w_q"]  # the data only
    paired = _model(act=TensorProto.INT8, act_zp=0, y_zp=0)
    del next(n for n in paired.graph.node if n.name == "dqy").input[2:]
    qdq.check_pairs(paired, "m.onnx")  # a DQ's default zero point has its data's type: int8
    _set(model, "y_scale", np.array(0.0, np.float32))
    with pytest.raises(ConversionError, match="QuantizeLinear node 'qy' has scale 0.0"):
        qdq.check_quant_params(model, "m.onnx")


def test_zero_point_from_a_constant_node_is_checked_as_a_value():
    """A Constant-node zero point has no initializer type to compare against; its count is
    still checked."""
    model = _model()
    model.graph.node.insert(0, helper.make_node(
        "Constant", [], ["w_zp_const"], value=numpy_helper.from_array(np.full(2, 128, np.uint8))))
    next(n for n in model.graph.node if n.name == "dqw").input[2] = "w_zp_const"
    qdq.check_quant_params(model, "m.onnx")
    model.graph.node[0].attribute[0].t.CopyFrom(
        numpy_helper.from_array(np.full(3, 128, np.uint8)))
    with pytest.raises(ConversionError, match="3 zero points for 2 scales"):
        qdq.check_quant_params(model, "m.onnx")


def test_zero_point_count_must_be_one_or_one_per_scale():
    one = _set(_model(), "w_zp", np.array(128, np.uint8))  # one zero point for two scales: ok
    qdq.check_quant_params(one, "m.onnx")
    three = _set(_model(), "w_zp", np.full(3, 128, np.uint8))
    with pytest.raises(ConversionError, match="DequantizeLinear node 'dqw' has 3 zero points "
                                              "for 2 scales"):
        qdq.check_quant_params(three, "m.onnx")


def test_dequantize_data_and_zero_point_of_different_types_is_refused():
    model = _set(_model(), "w_zp", np.zeros(2, np.int8))  # uint8 weights, int8 zero points
    with pytest.raises(ConversionError, match="dequantises uint8 data with int8 zero points"):
        qdq.check_quant_params(model, "m.onnx")


def test_a_pair_must_share_its_integer_type():
    model = _model()
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int8), "s8_zp"))
    next(n for n in model.graph.node if n.name == "dqy").input[2] = "s8_zp"
    with pytest.raises(ConversionError, match="QuantizeLinear node 'qy' has a uint8 zero point "
                                              "but DequantizeLinear node 'dqy' reads it with a "
                                              "int8 one"):
        qdq.check_pairs(model, "m.onnx")
    with pytest.raises(ConversionError, match="qy"):
        qdq.check_quant_params(model, "m.onnx")
    qdq.check_pairs(_model(), "m.onnx")  # matching types pass


# -- eight_bit_tensors, encoding, reencode, to_int8 -----------------------------------------
def test_eight_bit_tensors_are_the_integers_and_zero_points_only():
    names = [t.name for t in qdq.eight_bit_tensors(_model())]
    assert names == ["x_zp", "w_q", "w_zp", "y_zp"]  # first use order; no float scales


def test_encoding_names_the_integer_type():
    assert qdq.encoding(_model(act=TensorProto.UINT8)) == "uint8"
    assert qdq.encoding(_model(act=TensorProto.INT8, act_zp=0, y_zp=-8)) == "int8"
    mixed = _set(_model(), "y_zp", np.array(-8, np.int8))
    assert qdq.encoding(mixed) == "mixed"
    float_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "f",
                                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert qdq.encoding(helper.make_model(float_graph, opset_imports=OPSET)) is None


def test_reencode_moves_every_integer_by_128_both_ways():
    s8 = _model(act=TensorProto.INT8, act_zp=-3, y_zp=-128)
    s8_values = {t.name: numpy_helper.to_array(t).astype(np.int16)
                 for t in qdq.eight_bit_tensors(s8)}
    u8 = qdq.reencode(onnx.ModelProto.FromString(s8.SerializeToString()), "uint8")
    for name, values in s8_values.items():
        got = _init(u8, name)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got.astype(np.int16), values + 128)
    assert _init(u8, "y_zp") == 0 and _init(u8, "x_zp") == 125  # -128 + 128, -3 + 128
    back = qdq.reencode(u8, "int8")
    for name, values in s8_values.items():
        assert _init(back, name).dtype == np.int8
        np.testing.assert_array_equal(_init(back, name).astype(np.int16), values)
    again = qdq.reencode(onnx.ModelProto.FromString(back.SerializeToString()), "int8")
    assert again.SerializeToString() == back.SerializeToString()  # already int8: untouched


def test_reencode_refuses_an_unknown_encoding():
    with pytest.raises(ValueError, match="ONNX int8 encoding 'int4'; choose from u8s8, u8s7, uint8, int8"):
        qdq.reencode(_model(), "int4")


@pytest.mark.parametrize("weights, fits", [((64, -64), True), ((65, 3), False), ((3, -65), False),
                                            ((127, -127), False)])
def test_seven_bit_weights_are_those_within_onnxruntimes_reduce_range(weights, fits):
    model = _model(w_values=np.array(weights, np.int8).reshape(2, 1, 1, 1))
    assert qdq.weights_fit(model, 7) is fits and qdq.weights_fit(model, 8)
    assert qdq.storage_encoding(model, "u8s7") == ("u8s7" if fits else "uint8")
    assert qdq.storage_encoding(model, "u8s8") == "u8s8"


def test_u8s7_stores_activations_as_uint8_and_weights_as_int8_with_the_same_reading():
    u8 = _model()
    u8s7 = qdq.reencode(onnx.ModelProto.FromString(u8.SerializeToString()), "u8s7")
    assert qdq.encoding(u8s7) == "u8s7" and qdq.encoding(u8) == "uint8"
    assert _init(u8s7, "w_q").dtype == np.int8 and _init(u8s7, "w_zp").dtype == np.int8
    np.testing.assert_array_equal(_init(u8s7, "w_q"), [[[[3]]], [[[-5]]]])
    np.testing.assert_array_equal(_init(u8s7, "w_zp"), [0, 0])
    for name in ("x_zp", "y_zp"):  # activations untouched: already uint8
        assert _init(u8s7, name).dtype == np.uint8
        assert _init(u8s7, name) == _init(u8, name)
    x = np.random.default_rng(0).normal(0, 1, (1, 1, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(_run(u8, x), _run(u8s7, x))
    back = qdq.reencode(u8s7, "uint8")
    assert back.SerializeToString() == _model().SerializeToString()


def test_u8s7_is_refused_for_eight_bit_weights_and_u8s8_is_named():
    wide = _model(w_values=np.array([100, -5], np.int8).reshape(2, 1, 1, 1))
    with pytest.raises(ValueError, match="u8s7 needs weights quantised within 7 bits"):
        qdq.reencode(wide, "u8s7")
    assert qdq.encoding(qdq.reencode(wide, "u8s8")) == "u8s8"


def test_reencode_keeps_the_float_reading_exactly():
    """The reference output of both encodings equals a numpy evaluation of the QDQ definition."""
    x = np.array([[[[0.3, -0.7], [1.1, 0.02]]]], np.float32)
    u8 = _model(act_zp=131, y_zp=118)
    s8 = qdq.reencode(onnx.ModelProto.FromString(u8.SerializeToString()), "int8")

    def by_hand() -> np.ndarray:
        # uint8 form: x_zp 131, y_zp 118; weights 3 and -5 at scales 0.1 and 0.25
        xq = np.clip(np.rint(x / np.float32(0.02)) + 131, 0, 255)
        xd = (xq - 131) * np.float32(0.02)
        w = np.array([3 * 0.1, -5 * 0.25], np.float32).reshape(1, 2, 1, 1)
        conv = xd * w  # a 1x1 conv of one input channel is a per-channel product
        yq = np.clip(np.rint(conv / np.float32(0.05)) + 118, 0, 255)
        return ((yq - 118) * np.float32(0.05)).astype(np.float32)

    want = by_hand()
    # Both readings compute the same float products and round them to the same grid; a value
    # within float error of a tie could still round apart, so allow at most one output step.
    np.testing.assert_allclose(_run(u8, x), want, atol=0.05 + 1e-6, rtol=0)
    np.testing.assert_array_equal(_run(s8, x), _run(u8, x))


def test_to_int8_moves_uint8_by_128_and_leaves_others():
    got = qdq.to_int8(np.array([0, 1, 127, 128, 255], np.uint8))
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, np.array([-128, -127, -1, 0, 127], np.int8))
    s8 = np.array([-128, 5, 127], np.int8)
    assert qdq.to_int8(s8).dtype == np.int8
    np.testing.assert_array_equal(qdq.to_int8(s8), s8)
    i32 = np.array([300, -7], np.int32)
    np.testing.assert_array_equal(qdq.to_int8(i32), i32)
    values, zero = qdq.as_int8(np.array([200], np.uint8), np.array(128, np.uint8))
    assert values.tolist() == [72] and int(zero) == 0


# -- fingerprint ----------------------------------------------------------------------------
def _fingerprint_by_hand(model: onnx.ModelProto) -> str:
    """The documented digest, re-derived: for each Q/DQ node in (op type, output) order, its
    op type and output name, then its data, scale and zero point bytes, integers as int8
    values widened to int64, scales as stored."""
    inits = {t.name: t for t in model.graph.initializer}
    digest = hashlib.sha256()
    nodes = sorted((n for n in model.graph.node if n.op_type in qdq.QDQ_OPS),
                   key=lambda n: (n.op_type, n.output[0]))
    for node in nodes:
        digest.update(f"{node.op_type}:{node.output[0]}".encode())
        for name in node.input[:3]:
            if name not in inits:
                continue
            value = numpy_helper.to_array(inits[name])
            if value.dtype == np.uint8:
                value = value.astype(np.int64) - 128
            elif value.dtype == np.int8:
                value = value.astype(np.int64)
            digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:32]


def test_fingerprint_is_the_documented_digest_for_both_encodings():
    u8 = _model()
    s8 = qdq.reencode(onnx.ModelProto.FromString(u8.SerializeToString()), "int8")
    want = _fingerprint_by_hand(u8)
    assert len(want) == 32
    assert qdq.fingerprint(u8) == want
    assert qdq.fingerprint(s8) == want  # same quantisation, other storage


def test_fingerprint_tells_every_parameter_apart():
    base = qdq.fingerprint(_model())
    changed = [
        _model(x_scale=0.021),  # a scale (both round to 0 as integers: must stay float)
        _model(y_zp=121),  # an activation zero point
        _model(w_values=np.array([[[[3]]], [[[-4]]]], np.int8)),  # one weight by one step
        _model(w_scale=np.array([0.1, 0.26], np.float32)),
    ]
    for model in changed:
        assert qdq.fingerprint(model) != base
        assert qdq.fingerprint(model) == _fingerprint_by_hand(model)


def test_fingerprint_does_not_depend_on_node_order():
    model = _model()
    shuffled = _model()
    nodes = list(shuffled.graph.node)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(reversed(nodes))
    assert qdq.fingerprint(shuffled) == qdq.fingerprint(model)


# -- output_steps ---------------------------------------------------------------------------
def test_output_steps_is_the_scale_of_each_dequantized_output():
    assert qdq.output_steps(_model(y_scale=0.05)) == [pytest.approx(0.05, rel=1e-7)]


def test_output_steps_is_none_for_float_and_per_channel_outputs():
    model = _model()
    model.graph.node.append(helper.make_node("Relu", ["y"], ["r"]))
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    model.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
    assert qdq.output_steps(model)[1:] == [None, None]  # Relu output; graph input, no producer
    per_channel = _model()
    dq = next(n for n in per_channel.graph.node if n.name == "dqy")
    dq.input[1], dq.input[2] = "w_scale", "w_zp"
    assert qdq.output_steps(per_channel) == [None]
    quantize_out = _model()
    quantize_out.graph.output[0].name = "c_q"  # produced by QuantizeLinear, not Dequantize
    assert qdq.output_steps(quantize_out) == [None]
