"""The lowering core (converters/lowering.py) and the QDQ reading (converters/onnx_graph.py)
against hand-computed values: TensorFlow's SAME padding formula, the ONNX QDQ definition, the
TFLite int8 rounding rule.

Written for the survivors of ``python scripts/mutation_test.py --target lowering``
(docs/testing.md).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.converters.lowering import (
    FUSED_NONE,
    FUSED_RELU,
    FUSED_RELU6,
    FUSED_RELU_N1_TO_1,
    LoweringContext,
    fill_constant,
    pad_spatial,
    spatial_padding,
    to_tflite_shape,
)
from edgecnn.converters.onnx_graph import WeightQuant, load_graph
from edgecnn.converters.tflite_builder import QuantParams, TFLiteBuilder
from edgecnn.errors import ConversionError
from tests.test_qdq import _model as qdq_model

OPSET = [helper.make_opsetid("", 18)]


def _float_model(nodes: list, inits: list, out_shape: list, opset: int = 18,
                 in_shape: tuple = ("N", 2, 4, 4), outputs: tuple = ("y",)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, out_shape) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ctx(model: onnx.ModelProto) -> LoweringContext:
    return LoweringContext(load_graph(model, "m.onnx"), TFLiteBuilder("t"))


def _data(ctx: LoweringContext, tensor: int) -> np.ndarray:
    t = ctx.builder.tensors[tensor]
    return np.asarray(ctx.builder.buffers[t.buffer].data)


# -- layout and padding ---------------------------------------------------------------------
def test_only_rank_4_shapes_move_to_nhwc():
    assert to_tflite_shape((1, 2, 3, 4)) == (1, 3, 4, 2)
    assert to_tflite_shape((5, 6)) == (5, 6)
    assert to_tflite_shape((1, 2, 3)) == (1, 2, 3)
    assert to_tflite_shape((1, 2, 3, 4, 5)) == (1, 2, 3, 4, 5)


def _conv_node(**attrs) -> onnx.NodeProto:
    return helper.make_node("Conv", ["x", "w"], ["y"], **attrs)


# TensorFlow's SAME: out = ceil(in / s); total = max((out - 1) * s + (k - 1) * d + 1 - in, 0);
# before = total // 2, the odd pixel after (SAME_UPPER); SAME_LOWER puts it before.
@pytest.mark.parametrize("attrs,in_hw,kernel,strides,dilations,out_hw,want", [
    ({}, (8, 8), (3, 3), (1, 1), (1, 1), None, ("VALID", [(0, 0), (0, 0)])),
    ({"pads": [1, 1, 1, 1]}, (8, 8), (3, 3), (1, 1), (1, 1), None, ("SAME", [(0, 0), (0, 0)])),
    # s2, k3, in 8: out 4, total 1 -> SAME is (0, 1); (1, 0) on W is not SAME
    ({"pads": [0, 1, 1, 0]}, (8, 8), (3, 3), (2, 2), (1, 1), None,
     ("VALID", [(0, 1), (1, 0)])),
    ({"pads": [0, 0, 1, 1]}, (8, 8), (3, 3), (2, 2), (1, 1), None, ("SAME", [(0, 0), (0, 0)])),
    # k3 dilated 2: effective 5, total 4 -> (2, 2) is SAME; (1, 1) is not
    ({"pads": [2, 2, 2, 2]}, (8, 8), (3, 3), (1, 1), (2, 2), None, ("SAME", [(0, 0), (0, 0)])),
    ({"pads": [1, 1, 1, 1]}, (8, 8), (3, 3), (1, 1), (2, 2), None,
     ("VALID", [(1, 1), (1, 1)])),
    # in 7, k2, s3: out 3, total max(6 + 2 - 7, 0) = 1 -> (0, 1)
    ({"pads": [0, 0, 1, 1]}, (7, 7), (2, 2), (3, 3), (1, 1), None, ("SAME", [(0, 0), (0, 0)])),
    ({"auto_pad": "SAME_UPPER"}, (8, 8), (4, 4), (1, 1), (1, 1), None,
     ("SAME", [(0, 0), (0, 0)])),
    ({"auto_pad": "VALID"}, (8, 8), (3, 3), (1, 1), (1, 1), None, ("VALID", [(0, 0), (0, 0)])),
    # k4, s1: total 3 -> SAME_UPPER (1, 2), SAME_LOWER (2, 1)
    ({"auto_pad": "SAME_LOWER"}, (8, 8), (4, 4), (1, 1), (1, 1), None,
     ("VALID", [(2, 1), (2, 1)])),
    ({"auto_pad": "SAME_LOWER"}, (8, 9), (3, 4), (1, 1), (1, 1), None,
     ("VALID", [(1, 1), (2, 1)])),
    # H and W differ: in (8, 6), k (3, 1), pads H (1, 1), W (0, 0) -> W not SAME for k1? total
    # for k1 is 0, so (0, 0) is SAME on W and (1, 1) on H: SAME overall
    ({"pads": [1, 0, 1, 0]}, (8, 6), (3, 1), (1, 1), (1, 1), None, ("SAME", [(0, 0), (0, 0)])),
    # ceil_mode: in 8, k3, s2, pads 1: floor gives 4, ceil wants 5 -> the end pad grows to 2
    ({"pads": [1, 1, 1, 1]}, (8, 8), (3, 3), (2, 2), (1, 1), (5, 5),
     ("VALID", [(1, 2), (1, 2)])),
    # ceil_mode where floor already gives the size: pads unchanged, and never SAME-folded
    ({"pads": [1, 1, 1, 1]}, (8, 8), (3, 3), (1, 1), (1, 1), (8, 8),
     ("VALID", [(1, 1), (1, 1)])),
    ({}, (8, 8), (3, 3), (2, 2), (1, 1), (4, 4), ("VALID", [(0, 1), (0, 1)])),
    # begin pads count too: in 8, k3, s2, pads (2, 0): floor 4, ceil 5 -> end pad 1
    ({"pads": [2, 2, 0, 0]}, (8, 8), (3, 3), (2, 2), (1, 1), (5, 5),
     ("VALID", [(2, 1), (2, 1)])),
])
def test_spatial_padding_by_the_tensorflow_formula(attrs, in_hw, kernel, strides, dilations,
                                                   out_hw, want):
    got = spatial_padding(None, _conv_node(**attrs), in_hw, kernel, strides, dilations, out_hw)
    assert (got[0], [tuple(p) for p in got[1]]) == want


def _relu_model() -> onnx.ModelProto:
    return _float_model([helper.make_node("Relu", ["x"], ["y"])], [], ["N", 2, 4, 4])


def test_fill_constant_in_float_and_in_the_int8_grid():
    ctx = _ctx(_relu_model())
    f = fill_constant(ctx, -2.5, None, "f")
    assert _data(ctx, f).dtype == np.float32 and _data(ctx, f).tolist() == [-2.5]
    q = QuantParams.per_tensor(0.5, -3)
    # TFLite int8: q = round(real / scale) + zero_point, saturated to -128..127
    for value, want in [(10.0, 17), (-1.0, -5), (0.0, -3), (1000.0, 127), (-1000.0, -128),
                        (62.0, 121), (65.0, 127), (-62.5, -128), (float(np.finfo(np.float32).min),
                                                                  -128)]:
        t = fill_constant(ctx, value, q, "q")
        assert _data(ctx, t).dtype == np.int8 and _data(ctx, t).tolist() == [want], value
        assert ctx.builder.tensor_quant(t) == q


def test_pad_spatial_shapes_and_ops():
    ctx = _ctx(_relu_model())
    x = ctx.builder.add_tensor("in", (1, 5, 6, 3), np.float32)
    out = pad_spatial(ctx, x, [(1, 2), (3, 1)], "p")
    assert ctx.builder.tensor_shape(out) == (1, 8, 10, 3)
    assert ctx.builder.tensors[out].shapeSignature == [-1, 8, 10, 3]  # batch stays dynamic
    paddings = ctx.builder.operators[-1].inputs[1]
    assert _data(ctx, paddings).tolist() == [[0, 0], [1, 2], [3, 1], [0, 0]]
    assert ctx.builder.used_ops() == [("PAD", 1)]
    pad_spatial(ctx, x, [(0, 1), (1, 1)], "p2", fill=-7.0)
    assert ctx.builder.used_ops() == [("PAD", 1), ("PADV2", 1)]
    fill = ctx.builder.operators[-1].inputs[2]
    assert _data(ctx, fill).tolist() == [-7.0]
    int8 = _ctx(qdq_model(act=TensorProto.INT8, act_zp=0, y_zp=0))
    q = QuantParams.per_tensor(0.5, -3)
    xq = int8.builder.add_tensor("in", (1, 5, 6, 3), np.int8, quant=q)
    padded = pad_spatial(int8, xq, [(1, 0), (0, 1)], "p")
    assert int8.builder.tensor_quant(padded) == q  # PAD keeps its input's grid
    pad_spatial(int8, xq, [(1, 0), (0, 1)], "p2", fill=-2.0)
    assert int8.builder.used_ops() == [("PAD", 2), ("PADV2", 2)]  # int8 kernels: version 2
    assert _data(int8, int8.builder.operators[-1].inputs[2]).tolist() == [-7]  # -2/0.5 - 3


# -- the context ----------------------------------------------------------------------------
def test_context_reading_errors_name_the_value():
    ctx = _ctx(_relu_model())
    assert ctx.shape("x") == (1, 2, 4, 4)
    with pytest.raises(ConversionError, match="shape of 'nope' is unknown"):
        ctx.shape("nope")
    with pytest.raises(ConversionError, match="'nope' is used before it is produced"):
        ctx.value("nope")
    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    with pytest.raises(ConversionError, match="Relu node 'r' input 0 \\('x'\\) must be a constant"):
        ctx.const(node, 0)
    assert not ctx.int8 and ctx.act_dtype is np.float32
    assert ctx.quant("x") is None  # float graphs have no activation quantisation


def test_int8_context_needs_every_activation_quantised():
    model = qdq_model(act=TensorProto.INT8, act_zp=0, y_zp=0)
    model.graph.node.append(helper.make_node("Relu", ["y"], ["r"], name="relu"))
    ctx = _ctx(model)
    assert ctx.int8 and ctx.act_dtype is np.int8
    assert ctx.quant("x") == QuantParams.per_tensor(np.float32(0.02), 0)
    with pytest.raises(ConversionError, match="tensor 'r' \\(output of Relu node 'relu'\\) has no "
                                              "Q/DQ pair"):
        ctx.quant("r")
    with pytest.raises(ConversionError, match="tensor 'ghost' has no Q/DQ"):
        ctx.quant("ghost")


def test_new_values_are_nhwc_only_at_rank_4():
    ctx = _ctx(_relu_model())
    assert ctx.new_value("a", (1, 4, 4, 2), None).nhwc
    assert not ctx.new_value("b", (1, 8), None).nhwc
    assert not ctx.new_value("c", (1, 4, 4, 2), None, perm=(0, 1, 2, 3)).nhwc
    out = ctx.output_value("x")
    assert ctx.builder.tensor_shape(out.tensor) == (1, 4, 4, 2)  # NCHW (1, 2, 4, 4) -> NHWC
    assert ctx.builder.tensors[out.tensor].shapeSignature == [-1, 4, 4, 2]


def _clip(low: float | None, high: float | None, opset: int = 18) -> onnx.NodeProto:
    if opset < 11:
        attrs = {k: v for k, v in (("min", low), ("max", high)) if v is not None}
        return helper.make_node("Clip", ["x"], ["y"], **attrs)
    return helper.make_node("Clip", ["x", "lo" if low is not None else "",
                                     "hi" if high is not None else ""], ["y"])


@pytest.mark.parametrize("low,high,want", [
    (0.0, 6.0, FUSED_RELU6), (-1.0, 1.0, FUSED_RELU_N1_TO_1), (0.0, None, FUSED_RELU),
    (0.0, 5.0, None), (-1.0, None, None), (None, 6.0, None), (None, None, None)])
@pytest.mark.parametrize("opset", [6, 18])
def test_activation_codes_of_clips(low, high, want, opset):
    inits = [numpy_helper.from_array(np.float32(v), n) for n, v in (("lo", low), ("hi", high))
             if v is not None and opset >= 11]
    model = _float_model([_clip(low, high, opset)], inits, ["N", 2, 4, 4], opset=opset)
    ctx = _ctx(model)
    node = ctx.graph.nodes[0]
    assert ctx.clip_bounds(node) == (low, high)
    assert ctx.activation_code(node) == want


def test_activation_codes_of_other_ops():
    ctx = _ctx(_relu_model())
    assert ctx.activation_code(helper.make_node("Relu", ["x"], ["y"])) == FUSED_RELU
    assert ctx.activation_code(helper.make_node("Sigmoid", ["x"], ["y"])) is None
    assert (FUSED_NONE, FUSED_RELU, FUSED_RELU_N1_TO_1, FUSED_RELU6) == (0, 1, 2, 3)  # schema


def _conv_relu_model(extra_user: bool = False, relu_out: str = "y") -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Relu", ["c"], [relu_out])]
    outputs = ("y",)
    if extra_user:
        nodes.append(helper.make_node("Neg", ["c"], ["n"]))
        outputs = ("y", "n")
    return _float_model(nodes, [w], ["N", 2, 4, 4], outputs=outputs)


def test_fuse_activation_takes_a_sole_relu_consumer():
    ctx = _ctx(_conv_relu_model())
    conv, relu = ctx.graph.nodes
    assert ctx.fuse_activation(conv) == (FUSED_RELU, "y")
    assert ctx.skipped == {id(relu)}
    shared = _ctx(_conv_relu_model(extra_user=True))
    assert shared.fuse_activation(shared.graph.nodes[0]) == (FUSED_NONE, "c")
    assert shared.skipped == set()
    model = _conv_relu_model()
    model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    visible = _ctx(model)  # the conv output is a graph output itself: it must stay unfused
    assert visible.fuse_activation(visible.graph.nodes[0]) == (FUSED_NONE, "c")
    negated = _float_model([helper.make_node("Conv", ["x", "w"], ["c"]),
                            helper.make_node("Neg", ["c"], ["y"])],
                           [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")],
                           ["N", 2, 4, 4])
    ctx = _ctx(negated)
    assert ctx.fuse_activation(ctx.graph.nodes[0]) == (FUSED_NONE, "c")


def test_with_params_requantises_only_when_the_parameters_differ():
    ctx = _ctx(qdq_model(act=TensorProto.INT8, act_zp=0, y_zp=0))
    q = QuantParams.per_tensor(0.5, 1)
    t = ctx.builder.add_tensor("t", (1, 2), np.int8, quant=q)
    assert ctx.with_params(t, QuantParams.per_tensor(0.5, 1), "same") == t
    assert ctx.with_params(t, None, "none") == t
    moved = ctx.with_params(t, QuantParams.per_tensor(0.25, 1), "moved")
    assert moved != t and ctx.builder.tensor_quant(moved) == QuantParams.per_tensor(0.25, 1)
    # requantised as the QDQ graph does it: DEQUANTIZE to float, QUANTIZE to the new grid
    assert _operators(ctx) == [("DEQUANTIZE", 2), ("QUANTIZE", 2)]
    dequantize, quantize = ctx.builder.operators
    assert dequantize.inputs == [t] and quantize.outputs == [moved]
    assert quantize.inputs == dequantize.outputs
    float_ctx = _ctx(_relu_model())
    f = float_ctx.builder.add_tensor("f", (1, 2), np.float32)
    assert float_ctx.with_params(f, q, "float") == f  # float graphs never requantise


# -- reading the QDQ model (onnx_graph) ------------------------------------------------------
def test_qdq_pairs_become_annotations_and_weights_stay_integer():
    model = qdq_model(act_zp=131, y_zp=118)  # uint8 encoding, as edgecnn writes ONNX
    graph = load_graph(model, "m.onnx", batch=3)
    assert [n.op_type for n in graph.nodes] == ["Conv"]
    assert graph.shapes["x"] == (3, 1, 2, 2) and graph.quantized
    # uint8 zero points 131 and 118 are the int8 ones 3 and -10
    assert graph.act_quant["x"] == QuantParams.per_tensor(np.float32(0.02), 3)
    assert graph.act_quant["y"] == QuantParams.per_tensor(np.float32(0.05), -10)
    conv = graph.nodes[0]
    assert list(conv.input) == ["x", "w_dq"] and list(conv.output) == ["y"]
    wq = graph.weight_quant["w_dq"]
    assert wq.values.dtype == np.int8 and wq.values.ravel().tolist() == [3, -5]
    assert wq.zero_point.tolist() == [0, 0] and wq.axis == 0
    np.testing.assert_array_equal(wq.scale, np.array([0.1, 0.25], np.float32))
    # real = (q - z) * s, per output channel, in float32 as the DequantizeLinear definition
    want = np.array([3 * np.float32(0.1), -5 * np.float32(0.25)], np.float32).reshape(2, 1, 1, 1)
    np.testing.assert_array_equal(graph.constants["w_dq"], want)
    assert wq.params(3) == QuantParams((float(np.float32(0.1)), 0.25), (0, 0), 3)
    assert wq.params() == QuantParams((float(np.float32(0.1)), 0.25), (0, 0), 0)


def test_weight_dequantisation_with_zero_points_and_negative_axis():
    w = np.array([[10, 20], [30, 40]], np.int8)
    inits = [numpy_helper.from_array(w, "w_q"),
             numpy_helper.from_array(np.array([0.5, 2.0], np.float32), "w_s"),
             numpy_helper.from_array(np.array([1, -2], np.int8), "w_z")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=-1),
             helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["y"])]
    model = _float_model(nodes, inits, ["N", 2], in_shape=("N", 2, 1, 1))
    graph = load_graph(model, "m.onnx")
    wq = graph.weight_quant["w"]
    assert wq.axis == 1  # -1 of a rank-2 tensor
    want = (w.astype(np.float32) - np.array([1, -2], np.float32)) * np.array([0.5, 2.0],
                                                                             np.float32)
    np.testing.assert_array_equal(graph.constants["w"], want)  # small exact products
    one = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.float32(0.5), "w_s")]
    nodes[0] = helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], axis=0)
    graph = load_graph(_float_model(nodes, one, ["N", 2], in_shape=("N", 2, 1, 1)), "m.onnx")
    assert graph.weight_quant["w"].axis is None  # one scale: per tensor, whatever the axis
    assert graph.weight_quant["w"].params() == QuantParams((0.5,), (0,), None)
    np.testing.assert_array_equal(graph.constants["w"], w.astype(np.float32) * 0.5)


def test_weight_quant_params_axis_only_when_per_channel():
    per_tensor = WeightQuant(np.zeros(3, np.int8), np.array([0.5], np.float32),
                             np.array([0], np.int8), None)
    assert per_tensor.params(3) == QuantParams((0.5,), (0,), None)
    per_axis = WeightQuant(np.zeros((2, 3), np.int8), np.array([0.5, 0.25], np.float32),
                           np.array([0, 0], np.int8), 0)
    assert per_axis.params() == QuantParams((0.5, 0.25), (0, 0), 0)
    assert per_axis.params(3) == QuantParams((0.5, 0.25), (0, 0), 3)


def test_dequantized_graph_output_keeps_its_name():
    """The output's DQ is removed and the producer's tensor takes the output's name."""
    graph = load_graph(qdq_model(), "m.onnx")
    assert graph.output_names == ["y"] and graph.nodes[0].output[0] == "y"
    assert "c" not in graph.act_quant and "y" in graph.act_quant


@pytest.mark.parametrize("edit,needle", [
    ("per_channel_activation", "quantises an activation per channel"),
    ("int32_activation", "quantises to int32"),
    ("q_without_dq", "is not followed by DequantizeLinear only"),
    ("q_as_output", "is not followed by DequantizeLinear only"),
    ("lonely_dq", "is not part of a Q->DQ pair"),
    ("input_to_output", "graph input feeds the output directly"),
])
def test_qdq_forms_tflite_cannot_express(edit, needle):
    model = qdq_model(act=TensorProto.INT8, act_zp=0, y_zp=0)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    if edit == "per_channel_activation":
        nodes["qy"].input[1], nodes["qy"].input[2] = "w_scale", "w_zp"
        nodes["dqy"].input[1], nodes["dqy"].input[2] = "w_scale", "w_zp"
    elif edit == "int32_activation":
        inits["y_zp"].CopyFrom(numpy_helper.from_array(np.array(0, np.int32), "y_zp"))
    elif edit == "q_without_dq":
        model.graph.node.append(helper.make_node("Relu", ["c_q"], ["z"]))
    elif edit == "q_as_output":
        model.graph.output.append(helper.make_tensor_value_info("c_q", TensorProto.INT8, None))
    elif edit == "lonely_dq":
        model.graph.node.remove(nodes["qy"])
        model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 2, 2, 2), np.int8),
                                                               "c_q"))
        nodes["dqy"].input[0] = "c_q"
        model.graph.node.remove(nodes["conv"])
        model.graph.node.remove(nodes["dqw"])
        model.graph.node.append(helper.make_node("DequantizeLinear", ["c_q2", "y_scale", "y_zp"],
                                                 ["u"]))
        model.graph.node.append(helper.make_node("Cast", ["x_dq"], ["c_q2"], to=TensorProto.INT8))
    elif edit == "input_to_output":
        del model.graph.node[2:]
        nodes["dqx"].output[0] = "y"
    with pytest.raises(ConversionError, match=needle):
        load_graph(model, "m.onnx")


@pytest.mark.parametrize("inputs,shape,needle", [
    (2, [1, 2, 4, 4], "has 2 graph inputs"),
    (1, [1, 8], "input 'x0' has shape \\[1, 8\\]; TFLite conversion needs a 4-D image input"),
    (1, ["N", 8], "has shape \\['N', 8\\]"),
    (1, [1, 2, "H", 4], "symbolic C/H/W dims"),
    (1, [1, "C", 4, 4], "symbolic C/H/W dims"),
])
def test_inputs_tflite_cannot_take(inputs, shape, needle):
    ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, shape) for i in range(inputs)]
    graph = helper.make_graph([helper.make_node("Relu", ["x0"], ["y"])], "g", ins,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(ConversionError, match=needle):
        load_graph(helper.make_model(graph, opset_imports=OPSET), "m.onnx")


def test_weights_listed_as_inputs_are_not_image_inputs():
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    loaded = load_graph(helper.make_model(graph, opset_imports=OPSET), "m.onnx", batch=2)
    assert loaded.input_name == "x" and loaded.shapes["y"] == (2, 2, 4, 4)


def test_shape_arithmetic_is_folded_ahead_of_time():
    """Shape(x)[1:] and a Mul of constants are evaluated; Reshape then has a constant shape."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=1, end=3),
             helper.make_node("Shape", ["x"], ["whole"]),
             helper.make_node("Mul", ["two", "three"], ["six"]),
             helper.make_node("Relu", ["x"], ["y"])]
    inits = [numpy_helper.from_array(np.array(2, np.int64), "two"),
             numpy_helper.from_array(np.array(3, np.int64), "three")]
    graph = load_graph(_float_model(nodes, inits, ["N", 2, 4, 4]), "m.onnx", batch=5)
    assert [n.op_type for n in graph.nodes] == ["Relu"]
    assert graph.constants["s"].tolist() == [2, 4] and graph.shapes["s"] == (2,)
    assert graph.constants["whole"].tolist() == [5, 2, 4, 4]
    assert int(graph.constants["six"]) == 6 and graph.shapes["six"] == ()


def test_two_input_qdq_pairs_are_uint8_with_zero_point_0():
    """Q/DQ without a zero point quantise to uint8 with zero point 0 (the ONNX definition of
    QuantizeLinear; onnxruntime agrees), which is the int8 zero point -128."""
    model = qdq_model(act=TensorProto.INT8, act_zp=0, y_zp=0)
    for node in model.graph.node:
        if node.name in ("qx", "dqx"):
            del node.input[2:]
    graph = load_graph(model, "m.onnx")
    assert graph.act_quant["x"] == QuantParams.per_tensor(np.float32(0.02), -128)


def test_per_channel_weights_without_an_axis_use_axis_1():
    """DequantizeLinear's axis defaults to 1 (the ONNX definition): here one scale per column."""
    w = np.array([[10, 20], [30, 40]], np.int8)
    inits = [numpy_helper.from_array(w, "w_q"),
             numpy_helper.from_array(np.array([0.5, 2.0], np.float32), "w_s")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"]),
             helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["y"])]
    graph = load_graph(_float_model(nodes, inits, ["N", 2], in_shape=("N", 2, 1, 1)), "m.onnx")
    assert graph.weight_quant["w"].axis == 1
    np.testing.assert_array_equal(graph.constants["w"], [[5.0, 40.0], [15.0, 80.0]])


def test_is_const_tells_constants_from_activations():
    ctx = _ctx(_conv_relu_model())
    assert ctx.is_const("w") and not ctx.is_const("x") and not ctx.is_const("c")


def _int8_ctx_with_input() -> tuple[LoweringContext, int, QuantParams]:
    ctx = _ctx(qdq_model(act=TensorProto.INT8, act_zp=0, y_zp=-10))
    x_q = QuantParams.per_tensor(np.float32(0.02), 0)
    x = ctx.new_value("x", (1, 2, 2, 1), x_q).tensor
    return ctx, x, x_q


def test_fixed_output_requantises_to_the_models_parameters():
    """An op whose int8 kernel fixes its output grid (LOGISTIC: 1/256, -128) writes that grid,
    then QUANTIZE to what the QDQ model chose for the tensor (here 0.05, -10)."""
    ctx, x, _ = _int8_ctx_with_input()
    conv = next(n for n in ctx.graph.nodes if n.op_type == "Conv")
    fixed = QuantParams.per_tensor(1 / 256, -128)
    ctx.fixed_output(conv, "LOGISTIC", [x], fixed)
    logistic, dequantize, quantize = ctx.builder.operators
    assert ctx.builder.used_ops() == [("LOGISTIC", 2), ("DEQUANTIZE", 2), ("QUANTIZE", 2)]
    assert ctx.builder.tensor_quant(logistic.outputs[0]) == fixed
    assert ctx.builder.tensors[logistic.outputs[0]].name == "y/fixed"
    assert dequantize.inputs == logistic.outputs and quantize.inputs == dequantize.outputs
    assert quantize.outputs == [ctx.value("y").tensor]
    assert ctx.builder.tensor_quant(ctx.value("y").tensor) == QuantParams.per_tensor(
        np.float32(0.05), -10)
    assert ctx.builder.tensor_shape(ctx.value("y").tensor) == (1, 2, 2, 2)  # NHWC of (1,2,2,2)


def test_fixed_output_without_requantisation_when_the_grids_agree():
    ctx, x, _ = _int8_ctx_with_input()
    conv = next(n for n in ctx.graph.nodes if n.op_type == "Conv")
    wanted = QuantParams.per_tensor(np.float32(0.05), -10)
    ctx.fixed_output(conv, "LOGISTIC", [x], wanted)
    assert ctx.builder.used_ops() == [("LOGISTIC", 2)]
    assert ctx.builder.operators[0].outputs == [ctx.value("y").tensor]
    assert ctx.builder.tensor_quant(ctx.value("y").tensor) == wanted
    float_ctx = _ctx(_conv_relu_model())
    xf = float_ctx.new_value("x", (1, 4, 4, 2), None).tensor
    float_ctx.fixed_output(float_ctx.graph.nodes[0], "LOGISTIC", [xf],
                           QuantParams.per_tensor(1 / 256, -128))
    assert float_ctx.builder.used_ops() == [("LOGISTIC", 1)]
    assert float_ctx.builder.tensor_quant(float_ctx.value("c").tensor) is None


def test_same_params_output_keeps_the_input_grid_then_requantises():
    ctx, x, x_q = _int8_ctx_with_input()
    conv = next(n for n in ctx.graph.nodes if n.op_type == "Conv")
    ctx.same_params_output(conv, "MAX_POOL_2D", [x])
    pool, dequantize, quantize = ctx.builder.operators
    assert ctx.builder.tensor_quant(pool.outputs[0]) == x_q  # the input's grid
    assert dequantize.inputs == pool.outputs and quantize.outputs == [ctx.value("y").tensor]
    assert ctx.builder.used_ops() == [("MAX_POOL_2D", 2), ("DEQUANTIZE", 2), ("QUANTIZE", 2)]
    float_ctx = _ctx(_conv_relu_model())
    xf = float_ctx.new_value("x", (1, 4, 4, 2), None).tensor
    float_ctx.same_params_output(float_ctx.graph.nodes[0], "MAX_POOL_2D", [xf])
    assert float_ctx.builder.used_ops() == [("MAX_POOL_2D", 1)]
    assert float_ctx.builder.operators[0].outputs == [float_ctx.value("c").tensor]


# -- transposes at the lowest rank, values in their layouts -----------------------------------
def _run_transpose(shape: tuple[int, ...], perm: tuple[int, ...], run_batch: int
                   ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]], list[list[int]]]:
    """TRANSPOSE a float tensor of ``shape`` (built at that batch) by ``perm`` with
    transpose_tensor, run it in LiteRT at ``run_batch``; (got, numpy's, ops, TRANSPOSE perms)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgecnn.converters.lowering import transpose_tensor

    ctx = _ctx(_relu_model())
    source = ctx.builder.add_tensor("in", shape, np.float32, dynamic_batch=True)
    ctx.builder.inputs.append(source)
    out = transpose_tensor(ctx, source, shape, perm, "t")
    ctx.builder.outputs.append(out)
    perms = [_data(ctx, op.inputs[1]).tolist() for op in ctx.builder.operators
             if ctx.builder.used_ops()[op.opcodeIndex][0] == "TRANSPOSE"]
    interpreter = Interpreter(model_content=ctx.builder.serialize())
    x = np.random.default_rng(0).standard_normal((run_batch, *shape[1:])).astype(np.float32)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return got, x.transpose(perm), _operators(ctx), perms


def _operators(ctx: LoweringContext) -> list[tuple[str, int]]:
    """(op, version) of every operator written, in order."""
    return [ctx.builder.used_ops()[op.opcodeIndex] for op in ctx.builder.operators]


@pytest.mark.parametrize("shape,perm,build_batch,want_perms,reshapes", [
    # nothing to merge: one 3-D TRANSPOSE, no RESHAPE
    ((2, 3, 4), (0, 2, 1), 2, [[0, 2, 1]], 0),
    # ShuffleNet's channel shuffle (N, g, C/g, H, W) -> (N, C/g, g, H, W): H and W stay
    # neighbours and merge, so a 4-D TRANSPOSE runs it, between two RESHAPEs
    ((2, 2, 3, 4, 5), (0, 2, 1, 3, 4), 2, [[0, 2, 1, 3]], 2),
    # axis 1 follows the batch but is not merged into it: the batch changes at run time
    ((2, 3, 4, 5), (0, 1, 3, 2), 2, [[0, 1, 3, 2]], 0),
    # a size-1 batch is kept as an axis (built at batch 1, run at batch 3); size-1 axis 1 goes
    ((1, 1, 3, 4), (0, 3, 1, 2), 1, [[0, 2, 1]], 2),
])
def test_transpose_tensor_merges_axes_and_keeps_the_batch(shape, perm, build_batch, want_perms,
                                                          reshapes):
    got, want, ops, perms = _run_transpose(shape, perm, run_batch=3)
    np.testing.assert_array_equal(got, want)  # a transpose moves values, exactly
    assert perms == want_perms
    assert [name for name, _ in ops].count("RESHAPE") == reshapes
    assert ("TRANSPOSE", 1) in ops  # float: version 1, readable by every runtime


@pytest.mark.parametrize("perm,needle", [
    ((1, 0, 2, 3, 4), "would move the batch axis; TFLite models keep the batch first"),
    # a 5-D one is no longer refused: tests/test_layouts.py moves its blocks one at a time
])
def test_transposes_tflite_cannot_run_are_refused(perm, needle):
    from edgecnn.converters.lowering import transpose_tensor

    ctx = _ctx(_relu_model())
    source = ctx.builder.add_tensor("in", (2, 2, 3, 4, 5), np.float32, dynamic_batch=True)
    with pytest.raises(ConversionError, match=f"m.onnx: 't' {needle}"):
        transpose_tensor(ctx, source, (2, 2, 3, 4, 5), perm, "t")


def test_value_moves_a_map_to_nhwc_once_and_keeps_flattened_columns():
    from edgecnn.converters.lowering import Value

    ctx = _ctx(_relu_model())
    stored = ctx.builder.add_tensor("x/nchw", (1, 2, 4, 4), np.float32, dynamic_batch=True)
    ctx.values["x"] = Value(stored, (0, 1, 2, 3))  # stored NCHW (after a free Transpose)
    nhwc = ctx.value("x")
    assert nhwc.perm == (0, 2, 3, 1) and nhwc.tensor != stored
    assert ctx.builder.tensor_shape(nhwc.tensor) == (1, 4, 4, 2)
    # (1, 2, 4, 4) -> (1, 4, 4, 2): H and W merge; one TRANSPOSE, cached for the next reader
    assert ctx.value("x") == nhwc
    assert _operators(ctx) == [("RESHAPE", 1), ("TRANSPOSE", 1), ("RESHAPE", 1)]
    flat = Value(stored, (0, 1), column_order=np.arange(32))
    ctx.values["f"] = flat
    assert ctx.value("f") is flat  # a dense layer permutes its columns instead
    relu = ctx.graph.nodes[0]
    with pytest.raises(ConversionError, match="Relu '' reads a flattened feature map; apply it "
                                              "before flattening"):
        ctx.feature_map(relu, "f")


def test_requantisation_keeps_the_batch_dynamic():
    ctx, x, _ = _int8_ctx_with_input()
    out = ctx.requantize(x, "r", QuantParams.per_tensor(np.float32(0.05), -10))
    real = out + 1  # the float tensor between DEQUANTIZE and QUANTIZE, written after out
    assert ctx.builder.tensors[real].name == "r/float"
    assert [ctx.builder.tensors[t].shapeSignature[0] for t in (out, real)] == [-1, -1]
    assert _operators(ctx) == [("DEQUANTIZE", 2), ("QUANTIZE", 2)]
