"""The op lowerings (converters/ops/*.py) on the attribute values and layouts that the per-op
cases of tests/test_tflite.py do not reach, each checked against onnxruntime (the ONNX
definition of the op) on the same input, and the refusals with their messages.

Written for the survivors of ``python scripts/mutation_test.py --target ops``
(docs/testing.md).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter
from onnx import TensorProto, helper, numpy_helper

from edgecnn.converters import qdq
from edgecnn.converters.onnx_to_tflite import TFLiteConfig, convert_onnx_to_tflite
from edgecnn.converters.quantize import QuantConfig, quantize_onnx
from edgecnn.errors import ConversionError
from edgecnn.files.card import InputSpec, ModelCard
from edgecnn.files.data import Dataset

RNG = np.random.default_rng(7)
# float32 TFLite kernels and onnxruntime sum in different orders; over the few dozen products
# of these small graphs the difference stays within a few float32 ulps of values of order 10
FLOAT_ATOL = 1e-4


def _w(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes: list, inits: list, out_shape: list | None = None, in_shape: tuple = (1, 3, 5, 5),
           opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _tflite(model: onnx.ModelProto) -> tuple[bytes, list[tuple[str, int]]]:
    converted = convert_onnx_to_tflite(model, "m.onnx")
    return converted.data, converted.ops


def _run_tflite(data: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=data)
    feed = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], feed.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ascontiguousarray(feed))
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out


def _run_onnx(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _check(model: onnx.ModelProto, x: np.ndarray | None = None) -> list[tuple[str, int]]:
    """Convert, run both, compare; return the TFLite ops for structural assertions."""
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.standard_normal(shape).astype(np.float32) * 2 if x is None else x
    data, ops = _tflite(model)
    want = _run_onnx(model, x)
    got = _run_tflite(data, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=FLOAT_ATOL, rtol=0)
    return ops


def _refused(model: onnx.ModelProto, needle: str) -> None:
    with pytest.raises(ConversionError, match=needle):
        convert_onnx_to_tflite(model, "m.onnx")


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


# -- activations ------------------------------------------------------------------------------
@pytest.mark.parametrize("low,high,op", [(0.0, 6.0, ("RELU6", 1)), (-1.0, 1.0, ("RELU_N1_TO_1", 1)),
                                         (0.0, None, ("RELU", 1))])
def test_clips_that_are_activations(low, high, op):
    inits = [_init("lo", np.float32(low))] + ([_init("hi", np.float32(high))] if high else [])
    node = helper.make_node("Clip", ["x", "lo", "hi" if high else ""], ["y"])
    assert _check(_model([node], inits), RNG.uniform(-8, 8, (1, 3, 5, 5)).astype(np.float32)) \
        == [op]


@pytest.mark.parametrize("low,high,ops", [(-0.5, None, [("MAXIMUM", 1)]),
                                          (None, 0.7, [("MINIMUM", 1)]),
                                          (-0.3, 2.5, [("MAXIMUM", 1), ("MINIMUM", 1)])])
def test_arbitrary_clips_in_float(low, high, ops):
    inits = [_init(n, np.float32(v)) for n, v in (("lo", low), ("hi", high)) if v is not None]
    node = helper.make_node("Clip", ["x", "lo" if low is not None else "",
                                     "hi" if high is not None else ""], ["y"])
    got = _check(_model([node], inits))
    assert all(op in got for op in ops)  # the layout pass may add its own ops around them


@pytest.mark.parametrize("op,kernel", [("Sigmoid", ("LOGISTIC", 1)), ("Tanh", ("TANH", 1))])
def test_float_sigmoid_and_tanh(op, kernel):
    """Float kernels are version 1; the int8 ones (version 2) are tested below."""
    assert _check(_model([helper.make_node(op, ["x"], ["y"])], [])) == [kernel]


def test_leaky_relu_default_alpha_is_0_01():
    ops = _check(_model([helper.make_node("LeakyRelu", ["x"], ["y"])], []))
    assert ops == [("LEAKY_RELU", 1)]


@pytest.mark.parametrize("axis", [1, -3])
def test_softmax_over_nchw_channels(axis):
    node = helper.make_node("Softmax", ["x"], ["y"], axis=axis)
    assert _check(_model([node], [])) == [("SOFTMAX", 1)]


@pytest.mark.parametrize("axis", [2, -1])
def test_softmax_over_the_nchw_height_and_width_axes(axis):
    """Softmax over H or W (the layout pass moves that axis last); before it, W was lowered as
    a softmax over C."""
    _check(_model([helper.make_node("Softmax", ["x"], ["y"], axis=axis)], []))


def test_softmax_of_a_matrix_over_its_last_axis():
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Softmax", ["f"], ["y"], axis=1)]
    _check(_model(nodes, [], in_shape=(1, 6, 1, 1)))
    nodes[1] = helper.make_node("Softmax", ["f"], ["y"], axis=0)
    # over the batch: a model with a free batch is refused, a batch-1 export is written for
    # batch 1 (no -1 in its shapes), where the batch is an axis like any other
    _refused(_model(nodes, [], in_shape=("N", 6, 1, 1)), "would move the batch axis.*fixed batch")
    data, _ = _tflite(_model(nodes, [], in_shape=(1, 6, 1, 1)))
    assert _check(_model(nodes, [], in_shape=(1, 6, 1, 1)))
    assert -1 not in Interpreter(model_content=data).get_input_details()[0]["shape_signature"]


def test_hard_sigmoid_defaults_are_0_2_and_0_5():
    x = np.linspace(-4, 4, 75, dtype=np.float32).reshape(1, 3, 5, 5)  # both saturations
    ops = _check(_model([helper.make_node("HardSigmoid", ["x"], ["y"])], []), x)
    assert all(op in ops for op in [("MUL", 1), ("ADD", 1), ("MINIMUM", 1), ("MAXIMUM", 1)])


# -- conv -------------------------------------------------------------------------------------
def _conv(x: str, out: str, cin: int, cout: int, k: int = 3, bias: bool = True, **attrs):
    group = attrs.get("group", 1)
    inits = [_init(out + "_w", _w(cout, cin // group, k, k))]
    inputs = [x, out + "_w"]
    if bias:
        inits.append(_init(out + "_b", _w(cout)))
        inputs.append(out + "_b")
    return helper.make_node("Conv", inputs, [out], kernel_shape=[k, k], **attrs), inits


def test_depthwise_with_a_channel_multiplier_and_dilation():
    node, inits = _conv("x", "y", 3, 6, group=3, dilations=[2, 2], pads=[2, 2, 2, 2])
    assert _check(_model([node], inits)) == [("DEPTHWISE_CONV_2D", 2)]  # dilated: version 2
    node, inits = _conv("x", "y", 3, 6, group=3, pads=[1, 1, 1, 1])
    assert _check(_model([node], inits)) == [("DEPTHWISE_CONV_2D", 1)]


def test_grouped_conv_without_bias_and_with_stride():
    node, inits = _conv("x", "y", 4, 6, bias=False, group=2, strides=[2, 2], pads=[1, 0, 0, 1])
    ops = _check(_model([node], inits, in_shape=(1, 4, 6, 6)))
    assert set(ops) == {("PAD", 1), ("SPLIT", 1), ("CONV_2D", 1), ("CONCATENATION", 1)}


def test_conv_with_different_strides_and_dilations_per_axis():
    node, inits = _conv("x", "y", 3, 4, strides=[1, 2], dilations=[2, 1], pads=[2, 1, 2, 1])
    _check(_model([node], inits, in_shape=(1, 3, 7, 6)))


def test_conv_with_same_upper_relu6_fused():
    node, inits = _conv("x", "c", 3, 4, auto_pad="SAME_UPPER", strides=[2, 2])
    inits += [_init("lo", np.float32(0)), _init("hi", np.float32(6))]
    clip = helper.make_node("Clip", ["c", "lo", "hi"], ["y"])
    assert _check(_model([node, clip], inits), RNG.uniform(-9, 9, (1, 3, 5, 5)).astype(
        np.float32)) == [("CONV_2D", 1)]


def test_conv_with_computed_weights_is_refused():
    """A Conv whose filter is the graph input's own data (not a constant)."""
    nodes = [helper.make_node("Conv", ["x", "x"], ["y"], name="cv")]
    _refused(_model(nodes, [], in_shape=(1, 1, 3, 3)), "Conv 'cv' weights are computed at run time")


def test_one_dimensional_conv_is_the_two_dimensional_one_over_a_height_of_one():
    """ECA's channel attention (issue 22; 1-D Convs were refused); 3-D ones still are."""
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Conv", ["r", "w"], ["y"], name="c1")]
    ops = _check(_model(nodes, [_init("s", np.array([1, 4, 5], np.int64)),
                                _init("w", _w(2, 4, 3))], in_shape=(1, 1, 4, 5)))
    assert ("CONV_2D", 1) in ops
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Conv", ["r", "w"], ["y"], name="c3")]
    _refused(_model(nodes, [_init("s", np.array([1, 1, 1, 4, 5], np.int64)),
                            _init("w", _w(2, 1, 1, 3, 3))], in_shape=(1, 1, 4, 5)),
             "Conv 'c3' is 3-D")


# -- dense ------------------------------------------------------------------------------------
def _flat(nodes: list) -> list:
    return [helper.make_node("Flatten", ["x"], ["f"]), *nodes]


@pytest.mark.parametrize("trans_b,alpha,beta,bias_shape", [
    (0, 0.5, 2.0, (4,)), (1, 1.0, 1.0, (1,)), (1, 2.0, 0.25, (4,)), (0, 1.0, 1.0, None)])
def test_gemm_attributes(trans_b, alpha, beta, bias_shape):
    w = _w(*((4, 12) if trans_b else (12, 4)))
    inits = [_init("w", w)]
    inputs = ["f", "w"]
    if bias_shape:
        inits.append(_init("b", _w(*bias_shape)))
        inputs.append("b")
    node = helper.make_node("Gemm", inputs, ["y"], transB=trans_b, alpha=alpha, beta=beta)
    ops = _check(_model(_flat([node]), inits, in_shape=(1, 3, 2, 2)))
    assert ops == [("RESHAPE", 1), ("FULLY_CONNECTED", 1)]  # the flatten folds into the weights


def test_gemm_refusals():
    node = helper.make_node("Gemm", ["f", "w"], ["y"], transA=1, name="g")
    _refused(_model(_flat([node]), [_init("w", _w(12, 4))], in_shape=(1, 3, 2, 2)),
             "Gemm 'g' has transA=1")
    node = helper.make_node("Gemm", ["f", "f2"], ["y"], name="g", transB=1)
    nodes = _flat([helper.make_node("Relu", ["f"], ["f2"]), node])
    _refused(_model(nodes, [], in_shape=(1, 3, 2, 2)), "B is computed at run time")


def test_matmul_with_and_without_a_bias_add():
    inits = [_init("w", _w(12, 4)), _init("b", _w(4)), _init("b_wrong", _w(1, 1))]
    plain = _model(_flat([helper.make_node("MatMul", ["f", "w"], ["y"])]), inits[:1],
                   in_shape=(1, 3, 2, 2))
    assert _check(plain) == [("RESHAPE", 1), ("FULLY_CONNECTED", 1)]
    fused = _model(_flat([helper.make_node("MatMul", ["f", "w"], ["m"]),
                          helper.make_node("Add", ["b", "m"], ["y"])]), inits[:2],
                   in_shape=(1, 3, 2, 2))
    assert _check(fused) == [("RESHAPE", 1), ("FULLY_CONNECTED", 1)]  # bias on either side
    broadcast = _model(_flat([helper.make_node("MatMul", ["f", "w"], ["m"]),
                              helper.make_node("Add", ["m", "b_wrong"], ["y"])]),
                       [inits[0], inits[2]], in_shape=(1, 3, 2, 2))
    assert _check(broadcast) == [("RESHAPE", 1), ("FULLY_CONNECTED", 1), ("ADD", 1)]
    two_users = _model(_flat([helper.make_node("MatMul", ["f", "w"], ["m"]),
                              helper.make_node("Add", ["m", "b"], ["a"]),
                              helper.make_node("Add", ["a", "m"], ["y"])]), inits[:2],
                       in_shape=(1, 3, 2, 2))
    _check(two_users)  # m is used twice: its bias Add must stay an ADD


def test_matmul_refusals():
    nodes = _flat([helper.make_node("MatMul", ["f", "w3"], ["y"], name="mm")])
    _refused(_model(nodes, [_init("w3", _w(2, 12, 4))], in_shape=(1, 3, 2, 2)),
             "MatMul 'mm' needs a constant 2-D weight")
    nodes = _flat([helper.make_node("Relu", ["w"], ["wr"]),
                   helper.make_node("MatMul", ["f", "wr"], ["y"], name="mm")])
    graph = _model(nodes, [], in_shape=(1, 3, 2, 2))
    graph.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [12, 4]))
    with pytest.raises(ConversionError):  # a second graph input: refused before MatMul
        convert_onnx_to_tflite(graph, "m.onnx")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    _check(_model([node], [_init("w", _w(5, 4))], in_shape=(1, 3, 5, 5)))  # over the last axis


# -- elementwise ------------------------------------------------------------------------------
@pytest.mark.parametrize("const_shape", [(3, 1, 1), (), (1, 3, 5, 5), (5,), (1, 5)])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Min", "Max"])
def test_binary_with_constants_of_every_broadcast_rank(op, const_shape):
    k = (_w(*const_shape) + (3.0 if op == "Div" else 0.0)).astype(np.float32)  # not ~0
    _check(_model([helper.make_node(op, ["x", "k"], ["y"])], [_init("k", k)]))


def test_binary_on_a_flattened_map():
    """A flatten feeding anything but a dense op is transposed to NCHW order first."""
    k = _w(12)
    nodes = _flat([helper.make_node("Add", ["f", "k"], ["a"]),
                   helper.make_node("Mul", ["a", "f"], ["m"]),
                   helper.make_node("Gemm", ["m", "w"], ["y"], transB=1)])
    _check(_model(nodes, [_init("k", k), _init("w", _w(2, 12))], in_shape=(1, 3, 2, 2)))


def test_binary_refusals():
    three = helper.make_node("Max", ["x", "x", "x"], ["y"], name="mx")
    _refused(_model([three], []), "Max 'mx' has 3 inputs")


@pytest.mark.parametrize("exponent,ops", [(2.0, [("MUL", 1)]), (0.5, [("SQRT", 1)])])
def test_pow_by_2_and_by_half(exponent, ops):
    x = RNG.uniform(0.1, 3, (1, 3, 5, 5)).astype(np.float32)
    assert _check(_model([helper.make_node("Pow", ["x", "e"], ["y"])],
                         [_init("e", np.float32(exponent))]), x) == ops


@pytest.mark.parametrize("exponent", [np.float32(3.0), np.array([2.0, 2.0], np.float32)])
def test_other_powers_are_refused(exponent):
    _refused(_model([helper.make_node("Pow", ["x", "e"], ["y"], name="p")], [_init("e", exponent)]),
             "Pow 'p' by")


def test_prelu_per_channel_and_on_a_flattened_map():
    slope = np.array([0.1, -0.5, 0.9], np.float32).reshape(3, 1, 1)
    _check(_model([helper.make_node("PRelu", ["x", "s"], ["y"])], [_init("s", slope)]))
    flat_slope = np.linspace(-1, 1, 12, dtype=np.float32)
    nodes = _flat([helper.make_node("PRelu", ["f", "s"], ["p"]),
                   helper.make_node("Gemm", ["p", "w"], ["y"], transB=1)])
    _check(_model(nodes, [_init("s", flat_slope), _init("w", _w(2, 12))], in_shape=(1, 3, 2, 2)))


def test_batch_norm_on_a_flattened_map():
    stats = [_init("g", _w(12) + 1), _init("b", _w(12)), _init("m", _w(12)),
             _init("v", np.abs(_w(12)) + 0.5)]
    nodes = _flat([helper.make_node("BatchNormalization", ["f", "g", "b", "m", "v"], ["n"]),
                   helper.make_node("Relu", ["n"], ["r"]),
                   helper.make_node("Gemm", ["r", "w"], ["y"], transB=1)])
    _check(_model(nodes, [*stats, _init("w", _w(2, 12))], in_shape=(1, 12, 1, 1)))
    # 12 channels of 1x1: C > 1 but H*W == 1, so the flatten has no column order; with a
    # 3x2x2 map the statistics are per channel, not per column: BatchNorm in 4-D instead
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"],
                              epsilon=0.1)]
    stats3 = [_init("g", _w(3) + 1), _init("b", _w(3)), _init("m", _w(3)),
              _init("v", np.abs(_w(3)) + 0.5)]
    _check(_model(nodes, stats3))


# -- pooling ----------------------------------------------------------------------------------
def test_max_pool_pads_with_the_lowest_value():
    x = -np.abs(RNG.standard_normal((1, 3, 5, 5)).astype(np.float32)) - 1  # all below zero
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                            pads=[1, 0, 0, 1])
    ops = _check(_model([node], []), x)
    assert ops == [("PADV2", 1), ("MAX_POOL_2D", 1)]


def test_average_pool_counting_the_padding():
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                            pads=[0, 1, 1, 0], count_include_pad=1)
    assert _check(_model([node], [])) == [("PAD", 1), ("AVERAGE_POOL_2D", 1)]
    # uncounted padding: a VALID pool over the zero-padded map, then a MUL by area / count per
    # output cell (issue 22; this used to be refused)
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                            pads=[0, 1, 1, 0], name="ap")
    assert _check(_model([node], [])) == [("PAD", 1), ("AVERAGE_POOL_2D", 1), ("MUL", 1)]


def test_average_pool_counting_same_shaped_padding():
    """count_include_pad=1 with SAME-shaped pads: the padding counts (TFLite's SAME leaves it
    out, so it must be an explicit PAD)."""
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                            count_include_pad=1)
    _check(_model([node], []), RNG.standard_normal((1, 3, 5, 5)).astype(np.float32) + 3)


def test_pool_then_relu_is_fused_and_dilation_written_as_taps():
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[1, 1]),
             helper.make_node("Relu", ["p"], ["y"])]
    assert _check(_model(nodes, [])) == [("MAX_POOL_2D", 1)]
    # dilated: the window's taps as strided slices, then MAXIMUM (issue 22; was refused)
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2],
                            name="mp")
    assert ("MAXIMUM", 1) in _check(_model([node], []))


def test_pool_with_rectangular_kernel_and_strides():
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 1], strides=[1, 2])
    _check(_model([node], [], in_shape=(1, 3, 6, 5)))


# -- reductions -------------------------------------------------------------------------------
@pytest.mark.parametrize("op,axes,keepdims", [
    ("ReduceMean", [2, 3], 0), ("ReduceSum", [1], 1), ("ReduceMax", [1, 2, 3], 0),
    ("ReduceMean", [-1], 1), ("ReduceSum", [3, 1], 1)])
def test_reductions_over_nchw_axes(op, axes, keepdims):
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)
    _check(_model([node], [_init("axes", np.array(axes, np.int64))], in_shape=(1, 3, 4, 5)))


def test_reduction_axes_as_an_attribute():
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1)
    _check(_model([node], [], opset=13, in_shape=(1, 3, 4, 5)))


def test_reduction_of_a_matrix():
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("ReduceSum", ["f", "axes"], ["y"], keepdims=1)]
    _check(_model(nodes, [_init("axes", np.array([1], np.int64))]))


@pytest.mark.parametrize("axes,attrs,needle", [
    ([], {}, "reduces over the batch axis"),
    ([], {"noop_with_empty_axes": 1}, "reduces nothing"),
    ([0, 2], {}, "reduces over the batch axis"),
])
def test_reduction_refusals(axes, attrs, needle):
    inputs = ["x", "axes"] if axes else ["x"]
    inits = [_init("axes", np.array(axes, np.int64))] if axes else []
    _refused(_model([helper.make_node("ReduceMean", inputs, ["y"], **attrs)], inits), needle)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("axes", [[1], [2], [3], [1, 3]])
def test_a_reduction_may_drop_any_axes_of_a_feature_map(op, axes):
    """keepdims=0 over channels, rows or columns of an NHWC-stored map: the output keeps the
    map's layout less the dropped axes (these were refused before issue 22's reductions)."""
    _check(_model([helper.make_node(op, ["x", "axes"], ["y"], keepdims=0)],
                  [_init("axes", np.array(axes, np.int64))]))


def test_reduction_of_a_flattened_map():
    nodes = _flat([helper.make_node("ReduceMean", ["f", "axes"], ["r"]),
                   helper.make_node("Gemm", ["r", "w"], ["y"], transB=1)])
    _check(_model(nodes, [_init("axes", np.array([1], np.int64)), _init("w", _w(2, 1))],
                  in_shape=(1, 3, 2, 2)))


# -- shape ------------------------------------------------------------------------------------
def test_flatten_feeding_a_non_dense_op():
    nodes = _flat([helper.make_node("Relu", ["f"], ["y"])])
    assert ("RELU", 1) in _check(_model(nodes, [], in_shape=(1, 3, 2, 2)))


@pytest.mark.parametrize("in_shape", [(1, 1, 3, 4), (1, 5, 1, 1)])
def test_flatten_of_one_channel_or_one_pixel_needs_no_reordering(in_shape):
    nodes = _flat([helper.make_node("Relu", ["f"], ["y"])])
    assert _check(_model(nodes, [], in_shape=in_shape)) == [("RESHAPE", 1), ("RELU", 1)]


def test_flatten_to_an_output_and_to_two_gemms():
    """A flatten that is a graph output, or also feeds a non-dense op, keeps NCHW order."""
    nodes = _flat([helper.make_node("Gemm", ["f", "w"], ["g1"], transB=1),
                   helper.make_node("Add", ["f", "f"], ["y"])])
    ops = _check(_model(nodes, [_init("w", _w(2, 12))], in_shape=(1, 3, 2, 2)))
    assert ("TRANSPOSE", 1) in ops


@pytest.mark.parametrize("in_shape,shape", [((1, 4, 1, 1), [1, 4]), ((1, 1, 3, 4), [1, 12])])
def test_reshapes_that_keep_the_element_order(in_shape, shape):
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"])]
    _check(_model(nodes, [_init("s", np.array(shape, np.int64))], in_shape=in_shape))


def test_reshape_to_a_1x1_map_and_back():
    nodes = _flat([helper.make_node("Reshape", ["f", "s"], ["r"]),
                   helper.make_node("Relu", ["r"], ["y"])])
    _check(_model(nodes, [_init("s", np.array([1, 6, 1, 1], np.int64))], in_shape=(1, 6, 1, 1)))


@pytest.mark.parametrize("shape", [[1, 5, 3, 5], [1, 3, 25]])
def test_reshape_that_reorders_nchw_data(shape):
    """The layout pass reshapes in NCHW order (with a TRANSPOSE where it must)."""
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")]
    _check(_model(nodes, [_init("s", np.array(shape, np.int64))]))


@pytest.mark.parametrize("axis", [1, -3, 2, 3, -1])
def test_concat_along_every_nchw_axis(axis):
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Concat", ["x", "r"], ["y"], axis=axis)]
    _check(_model(nodes, []))


def test_concat_with_a_constant():
    nodes = [helper.make_node("Concat", ["x", "k"], ["y"], axis=1, name="cc")]
    _check(_model(nodes, [_init("k", _w(1, 2, 5, 5))]))


@pytest.mark.parametrize("value", [None, 0.0, -1.5])
def test_pad_with_a_value(value):
    inputs = ["x", "p"] + (["v"] if value is not None else [])
    inits = [_init("p", np.array([0, 0, 1, 2, 0, 1, 0, 3], np.int64))]
    if value is not None:
        inits.append(_init("v", np.float32(value)))
    ops = _check(_model([helper.make_node("Pad", inputs, ["y"])], inits))
    assert ops == [("PADV2" if value else "PAD", 1)]


def test_pad_as_an_attribute_in_old_opsets():
    node = helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 0, 2, 0, 0, 1, 0], value=0.0)
    _check(_model([node], [], opset=10))


@pytest.mark.parametrize("attrs,pads,extra,needle", [
    ({"mode": "reflect"}, [0, 0, 5, 1, 0, 0, 1, 1], False, "reflects by as many cells"),
    ({}, [0, 0, -1, 0, 0, 0, 0, 0], False, "crops \\(negative pads\\)"),
])
def test_pad_refusals(attrs, pads, extra, needle):
    inits = [_init("p", np.array(pads, np.int64))]
    inputs = ["x", "p"]
    if extra:
        inits += [_init("v", np.float32(0)), _init("ax", np.array([2, 3], np.int64))]
        inputs += ["v", "ax"]
    _refused(_model([helper.make_node("Pad", inputs, ["y"], name="pd", **attrs)], inits), needle)


# -- int8 -------------------------------------------------------------------------------------
# The int8 kernels accumulate exactly and round once per op; the QDQ reference (onnxruntime,
# optimisations off) rounds the float result once. A value within float error of a rounding tie
# rounds apart: one output step. Ops whose kernel fixes its output grid (LOGISTIC, SOFTMAX) or
# keeps its input's (pooling, PAD, concat inputs) are requantised once more: one more step.
INT8_STEPS = 2


def _int8(model: onnx.ModelProto, per_channel: bool = True
          ) -> tuple[onnx.ModelProto, bytes, list[tuple[str, int]], np.ndarray]:
    """Quantise ``model`` as edgecnn does, convert it with float I/O; return the QDQ model, the
    TFLite bytes and ops, and 16 preprocessed test inputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "N"  # a dynamic batch: calibrated and checked 16 images at a time
    c, h, w = (d.dim_value for d in dims[1:])
    card = ModelCard("case", 0, InputSpec((c, h, w), pixel_scale=1 / 255, mean=(0.5,),
                                          std=(0.25,)), tuple("0123456789"))
    images = np.random.default_rng(11).integers(0, 256, (56, h, w, c), dtype=np.uint8)
    calibration = Dataset(images[:40], np.zeros(40, np.int64), "random")
    quantized = quantize_onnx(model, card, calibration, QuantConfig(per_channel=per_channel)).model
    converted = convert_onnx_to_tflite(quantized, "q.onnx", TFLiteConfig(io_dtype="float32"))
    return quantized, converted.data, converted.ops, card.input.preprocess(images[40:])


def _matches_qdq(quantized: onnx.ModelProto, data: bytes, x: np.ndarray) -> None:
    """The TFLite file (float I/O) within INT8_STEPS output steps of its QDQ reference."""
    want = qdq.reference_inference_session(quantized).run(None, {"x": x})[0]
    got = _run_tflite(data, x)
    step = qdq.output_steps(quantized)[0]
    assert step is not None and got.shape == want.shape
    assert np.abs(got - want).max() <= INT8_STEPS * step + 1e-6


def _check_int8(model: onnx.ModelProto, per_channel: bool = True
                ) -> tuple[list[tuple[str, int]], bytes]:
    quantized, data, ops, x = _int8(model, per_channel)
    _matches_qdq(quantized, data, x)
    return ops, data


def _tensor(data: bytes, name: str) -> tuple[np.ndarray, dict]:
    """A tensor's data and quantisation, found by name or, failing that, name prefix."""
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    details = interpreter.get_tensor_details()
    detail = next((d for d in details if d["name"] == name), None) or next(
        d for d in details if d["name"].startswith(name))
    return interpreter.get_tensor(detail["index"]), detail["quantization_parameters"]


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_conv_bias_is_the_spec_int32_at_input_times_weight_scale(per_channel):
    """TFLite int8 spec: bias int32, scale = input scale x weight scale (per channel), zero
    point 0; here as onnxruntime's quantiser wrote it, unchanged."""
    conv, inits = _conv("x", "y", 3, 4, pads=[1, 1, 1, 1])
    model = _model([conv], inits)
    quantized, data, ops, _ = _int8(model, per_channel)
    assert ops == [("QUANTIZE", 2), ("CONV_2D", 3), ("DEQUANTIZE", 2)]
    _check_int8(model, per_channel)
    values, params = _tensor(data, "y/bias")
    q = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    x_scale, w_scale = float(q["x_scale"]), q["y_w_scale"].ravel()
    scale = x_scale * w_scale * np.ones(4)
    assert values.dtype == np.int32
    np.testing.assert_array_equal(values, q["y_b_quantized"])
    # onnxruntime rounds b / scale to the nearest integer: within half a step of the float bias
    assert np.abs(values * scale - numpy_helper.to_array(inits[1])).max() <= 0.5 * scale.max()
    np.testing.assert_allclose(params["scales"], scale if per_channel else scale[:1], rtol=1e-6)
    assert not params["zero_points"].any()
    assert params["zero_points"].size == (4 if per_channel else 1)


def test_int8_conv_without_bias_gets_a_zero_bias():
    conv, inits = _conv("x", "y", 3, 4, bias=False, pads=[1, 1, 1, 1])
    _, data = _check_int8(_model([conv], inits))
    values, params = _tensor(data, "y/bias")
    assert values.tolist() == [0, 0, 0, 0] and params["scales"].size == 4


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_depthwise_and_grouped(per_channel):
    conv, inits = _conv("x", "y", 3, 6, group=3, pads=[1, 1, 1, 1])
    ops, data = _check_int8(_model([conv], inits), per_channel)
    assert ("DEPTHWISE_CONV_2D", 3) in ops
    _, params = _tensor(data, "y_w")
    assert params["scales"].size == (6 if per_channel else 1)
    if per_channel:
        assert params["quantized_dimension"] == 3  # NHWC-style [1, kh, kw, out]: last axis
    conv, inits = _conv("x", "y", 4, 6, group=2, pads=[1, 1, 1, 1])
    ops, data = _check_int8(_model([conv], inits, in_shape=(1, 4, 5, 5)), per_channel)
    assert {("SPLIT", 2), ("CONV_2D", 3), ("CONCATENATION", 2)} <= set(ops)
    _, params = _tensor(data, "y/g1/w")
    assert params["scales"].size == (3 if per_channel else 1)
    assert not params["zero_points"].any()


def _head_steps(quantized: onnx.ModelProto) -> float:
    """Output steps one input step of the last Gemm/MatMul can cause:
    max over outputs of sum |w| * s_in / s_out (as tests/test_tflite.py's head_amplification)."""
    inits = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    producer = {n.output[0]: n for n in quantized.graph.node}
    head = [n for n in quantized.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    w_dq = producer[head.input[1]]
    weights = qdq.to_int8(inits[w_dq.input[0]]).astype(np.float64)
    scale = inits[w_dq.input[1]].astype(np.float64)
    axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
    shape = [1, 1]
    shape[axis] = -1
    rows = weights * scale.reshape(shape)  # per channel along the DequantizeLinear's axis
    if head.op_type == "MatMul":
        rows = rows.T  # (in, out) -> one row per output
    s_in = float(inits[producer[head.input[0]].input[1]])
    s_out = float(inits[producer[quantized.graph.output[0].name].input[1]])
    return float(np.abs(rows).sum(1).max() * s_in / s_out)


def test_int8_fully_connected_after_a_flatten_and_as_matmul():
    """Conv -> Flatten -> dense: the flatten's NHWC column order must be folded into the int8
    weights. One step of the conv can move the output by the head's amplification, plus the
    head's own step (the bound of tests/test_tflite.py's int8 cases)."""
    conv, inits = _conv("x", "c", 3, 2, pads=[1, 1, 1, 1])
    gemm = [conv, helper.make_node("Flatten", ["c"], ["f"]),
            helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    matmul = [*gemm[:2], helper.make_node("MatMul", ["f", "w"], ["m"]),
              helper.make_node("Add", ["m", "b"], ["y"])]
    for nodes, weights in ((gemm, [_init("w", _w(4, 50, scale=0.2))]),
                           (matmul, [_init("w", _w(50, 4, scale=0.2)), _init("b", _w(4))])):
        quantized, data, ops, x = _int8(_model(nodes, [*inits, *weights]))
        session = ort.InferenceSession(quantized.SerializeToString(),
                                       qdq.reference_session_options(),
                                       providers=["CPUExecutionProvider"])
        want = session.run(None, {"x": x})[0]
        step = qdq.output_steps(quantized)[0]
        bound = 1 + _head_steps(quantized)
        assert np.abs(_run_tflite(data, x) - want).max() <= bound * step + 1e-6
        assert ("FULLY_CONNECTED", 4) in ops and ("TRANSPOSE", 1) not in ops
        # onnxruntime rounds the MatMul's product before its bias Add: folding the Add into
        # the layer would round once where the reference rounds twice
        assert (("ADD", 2) in ops) == (nodes is matmul)


@pytest.mark.parametrize("op,attrs,kernel", [
    ("Sigmoid", {}, ("LOGISTIC", 2)), ("Softmax", {"axis": 1}, ("SOFTMAX", 2)),
    ("LeakyRelu", {"alpha": 0.2}, ("LEAKY_RELU", 1)),  # float island: see islands.py
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [1, 1]}, ("MAX_POOL_2D", 2)),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 1, 0],
                     "count_include_pad": 1}, ("AVERAGE_POOL_2D", 2)),
    ("GlobalAveragePool", {}, ("MEAN", 2)),
])
def test_int8_ops_after_a_conv(op, attrs, kernel):
    conv, inits = _conv("x", "c", 3, 4, pads=[1, 1, 1, 1])
    ops, _ = _check_int8(_model([conv, helper.make_node(op, ["c"], ["y"], **attrs)], inits))
    assert kernel in ops


def test_int8_concat_pad_and_elementwise_constants():
    c1, i1 = _conv("x", "a", 3, 4, pads=[1, 1, 1, 1])
    c2, i2 = _conv("x", "b", 3, 2, pads=[1, 1, 1, 1])
    nodes = [c1, c2, helper.make_node("Concat", ["a", "b"], ["y"], axis=1)]
    ops, _ = _check_int8(_model(nodes, i1 + i2))
    assert ("CONCATENATION", 2) in ops
    pads = _init("p", np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64))
    nodes = [c1, helper.make_node("Pad", ["a", "p", "v"], ["y"])]
    ops, _ = _check_int8(_model(nodes, [*i1, pads, _init("v", np.float32(0.75))]))
    assert ("PADV2", 2) in ops
    k = _init("k", (_w(4, 1, 1) + 1).astype(np.float32))
    for op in ("Add", "Mul"):
        nodes = [c1, helper.make_node(op, ["a", "k"], ["y"])]
        ops, _ = _check_int8(_model(nodes, [*i1, k]))
        assert (op.upper(), 2) in ops


@pytest.mark.parametrize("op", ["HardSwish", "Tanh", "Abs", "HardSigmoid"])
def test_int8_float_islands(op):
    """Ops without an exact int8 kernel run as DEQUANTIZE -> float op -> QUANTIZE or stay float,
    the QDQ graph's own arithmetic. Their input is the conv's int8 output, which may differ from
    the reference by INT8_STEPS of the conv's steps; these ops' slopes are at most 1.5
    (HardSwish near x = 3), so the output by at most 1.5 times that."""
    conv, inits = _conv("x", "c", 3, 4, pads=[1, 1, 1, 1])
    quantized, data, _, x = _int8(_model([conv, helper.make_node(op, ["c"], ["y"], name="h")],
                                         inits))
    session = ort.InferenceSession(quantized.SerializeToString(),
                                   qdq.reference_session_options(),
                                   providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]
    producer = {n.output[0]: n for n in quantized.graph.node}
    island = next(n for n in quantized.graph.node if n.name == "h")
    scale = next(t for t in quantized.graph.initializer
                 if t.name == producer[island.input[0]].input[1])
    step = float(numpy_helper.to_array(scale))
    out_step = qdq.output_steps(quantized)[0] or 0.0  # a float output has no output step
    bound = 1.5 * INT8_STEPS * step + INT8_STEPS * out_step + 1e-5
    assert np.abs(_run_tflite(data, x) - want).max() <= bound


def _float_weights_match_the_qdq_graph(quantized: onnx.ModelProto, x: np.ndarray) -> None:
    """Converted with float I/O: within the int8 steps of the QDQ reference, the layer a float
    island (DEQUANTIZE, the float op, QUANTIZE)."""
    converted = convert_onnx_to_tflite(quantized, "q.onnx", TFLiteConfig(io_dtype="float32"))
    _matches_qdq(quantized, converted.data, x)
    assert ("DEQUANTIZE", 2) in converted.ops and ("QUANTIZE", 2) in converted.ops


def test_int8_conv_with_float_weights_is_a_float_island():
    """An int8 graph whose conv reads a float filter (its DequantizeLinear removed, as a
    quantiser told to leave that node float writes it): TFLite's int8 CONV_2D needs int8
    weights, so the conv runs in float between DEQUANTIZE and QUANTIZE, the QDQ arithmetic."""
    conv, inits = _conv("x", "y", 3, 4, pads=[1, 1, 1, 1])
    quantized, _, _, x = _int8(_model([conv], inits))
    dq = next(n for n in quantized.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] == "y_w_quantized")
    quantized.graph.node.remove(dq)
    quantized.graph.initializer.append(_init(dq.output[0], _w(4, 3, 3, 3)))
    _float_weights_match_the_qdq_graph(quantized, x)


def test_int8_bias_at_another_scale_is_requantised():
    """A QDQ bias whose scale is not input x weight scale (here 1.5 times it, as a hand-edited
    or foreign quantiser may write) cannot be reused as is: the kernel assumes input x weight
    scale, so the integers must be recomputed from the bias' real values."""
    conv, inits = _conv("x", "y", 3, 4, pads=[1, 1, 1, 1])
    quantized, _, _, x = _int8(_model([conv], inits))
    scale = next(t for t in quantized.graph.initializer if t.name == "y_b_quantized_scale")
    scale.CopyFrom(_init(scale.name, numpy_helper.to_array(scale) * np.float32(1.5)))
    data = convert_onnx_to_tflite(quantized, "q.onnx", TFLiteConfig(io_dtype="float32")).data
    session = ort.InferenceSession(quantized.SerializeToString(),
                                   qdq.reference_session_options(),
                                   providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]
    step = qdq.output_steps(quantized)[0]
    # the recomputed bias rounds once more (half a bias step, far below an output step)
    assert np.abs(_run_tflite(data, x) - want).max() <= INT8_STEPS * step + 1e-6


def test_int8_per_tensor_conv_with_one_output_channel():
    conv, inits = _conv("x", "y", 3, 1, pads=[1, 1, 1, 1])
    _, data = _check_int8(_model([conv], inits), per_channel=False)
    _, params = _tensor(data, "y/bias")
    assert params["scales"].size == 1


def test_int8_gemm_with_float_weights_is_a_float_island():
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["y"], transB=1, name="fc")]
    conv, inits = _conv("x", "c", 3, 2, pads=[1, 1, 1, 1])
    nodes = [conv, helper.make_node("Flatten", ["c"], ["f"]), nodes[1]]
    quantized, _, _, x = _int8(_model(nodes, [*inits, _init("w", _w(4, 50, scale=0.2))]))
    dq = next(n for n in quantized.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] == "w_quantized")
    quantized.graph.node.remove(dq)
    quantized.graph.initializer.append(_init(dq.output[0], _w(4, 50, scale=0.2)))
    _float_weights_match_the_qdq_graph(quantized, x)


def test_reduce_max_is_one_operator():
    """REDUCE_MAX keeps its input's grid (same_params_output) and is written exactly once."""
    from ai_edge_litert import schema_py_generated as schema

    node = helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=1)
    model = _model([node], [_init("axes", np.array([2, 3], np.int64))])
    _check(model)
    data, _ = _tflite(model)
    assert schema.Model.GetRootAs(data, 0).Subgraphs(0).OperatorsLength() == 1


def test_int8_float_constant_operand():
    """A constant the QDQ model left in float (its DequantizeLinear removed here, as a foreign
    quantiser may leave it) is added in float (a float island), as the QDQ graph does."""
    c1, i1 = _conv("x", "a", 3, 4, pads=[1, 1, 1, 1])
    k = (_w(4, 1, 1) + 1).astype(np.float32)
    quantized, _, _, x = _int8(_model([c1, helper.make_node("Add", ["a", "k"], ["y"])],
                                      [*i1, _init("k", k)]))
    dq = next(n for n in quantized.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0].startswith("k"))
    quantized.graph.node.remove(dq)
    quantized.graph.initializer.append(_init(dq.output[0], k))
    data = convert_onnx_to_tflite(quantized, "q.onnx", TFLiteConfig(io_dtype="float32")).data
    bound = float(np.abs(k).max())
    session = ort.InferenceSession(quantized.SerializeToString(),
                                   qdq.reference_session_options(),
                                   providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]
    step = qdq.output_steps(quantized)[0]
    # at most half a step of k if it were stored on an int8 grid of max|k| / 127
    assert np.abs(_run_tflite(data, x) - want).max() <= INT8_STEPS * step + bound / 254 + 1e-6


def test_grouped_conv_declares_each_group_result_as_nhwc():
    """Each group's CONV_2D result is declared (N, H, W, out / group) in the file: LiteRT
    resizes intermediate tensors itself, but other readers take the declared shape."""
    from ai_edge_litert import schema_py_generated as schema

    node, inits = _conv("x", "y", 4, 6, group=2, pads=[1, 1, 1, 1])
    data, _ = _tflite(_model([node], inits, in_shape=(1, 4, 6, 6)))
    graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    shapes = {graph.Tensors(i).Name().decode(): graph.Tensors(i).ShapeAsNumpy().tolist()
              for i in range(graph.TensorsLength())}
    assert shapes["y/g0"] == shapes["y/g1"] == [1, 6, 6, 3]


# -- the new lowerings: ConvTranspose, LayerNormalization, Slice, Gather -----------------------
def _conv_transpose(k: int, stride: int, **attrs) -> onnx.ModelProto:
    inits = [_init("w", _w(3, 2, k, k)), _init("b", _w(2))]
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[k, k],
                            strides=[stride, stride], **attrs)
    return _model([node], inits)


# SAME_* output = input x stride (10); the full transposed conv is (5 - 1) x 2 + k wide, so k = 4
# crops 2 (1 before for both), k = 5 crops 3 (1 before for SAME_UPPER, 2 for SAME_LOWER)
@pytest.mark.parametrize("k,auto_pad", [(4, "SAME_UPPER"), (5, "SAME_UPPER"), (4, "SAME_LOWER"),
                                        (5, "SAME_LOWER")])
def test_conv_transpose_with_auto_pad(k, auto_pad):
    _check(_conv_transpose(k, 2, auto_pad=auto_pad))


def test_conv_transpose_with_an_output_shape():
    # crops 1 row and column, before: without SAME_UPPER, ONNX puts the odd one first
    _check(_conv_transpose(4, 2, output_shape=[11, 11]))


@pytest.mark.parametrize("attrs", [{"dilations": [2, 2]}, {"group": 3}])
def test_dilated_or_grouped_conv_transpose_converts(attrs):
    """Per group a TRANSPOSE_CONV of the zero-dilated filter (issue 22; they were refused)."""
    k = 3
    inits = [_init("w", _w(3, 1 if "group" in attrs else 2, k, k))]
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[k, k], **attrs)
    ops = _check(_model([node], inits))
    assert ("TRANSPOSE_CONV", 1) in ops


@pytest.mark.parametrize("attrs,gamma_shape", [({}, (5,)), ({"axis": 1}, (3, 5, 5)),
                                               ({"axis": 2, "epsilon": 0.1}, (5, 5))])
def test_layer_norm_defaults_and_axes(attrs, gamma_shape):
    """No axis: the last (-1); no epsilon: 1e-5 (the input's variance is 1e-4, so a wrong
    epsilon shows); axis 1 normalises C, H and W of an NHWC-stored map."""
    inits = [_init("g", _w(*gamma_shape) + 1), _init("bt", _w(*gamma_shape))]
    node = helper.make_node("LayerNormalization", ["x", "g", "bt"], ["y"], **attrs)
    x = (RNG.standard_normal((1, 3, 5, 5)) * 0.01).astype(np.float32)
    _check(_model([node], inits), x)


ALL = 2**63 - 1  # ONNX's "to the end", as exporters write it


@pytest.mark.parametrize("inputs,values", [
    # no axes: the first len(starts) axes, the batch among them (kept whole)
    (["x", "s", "e"], {"s": [0, 1, 0], "e": [ALL, 3, 4]}),
    (["x", "s", "e", "a"], {"s": [1], "e": [4], "a": [3]}),  # axes given: W only
    (["x", "s", "e", "", "st"], {"s": [0, 0, 0], "e": [ALL, 2, 5], "st": [1, 1, 2]}),
])
def test_slice_with_and_without_axes(inputs, values):
    inits = [_init(k, np.array(v, np.int64)) for k, v in values.items()]
    _check(_model([helper.make_node("Slice", inputs, ["y"])], inits))


@pytest.mark.parametrize("axes,steps,needle", [
    ([0], [1], "Slice '' slices the batch axis; TFLite models keep the batch.*fixed batch"),
    ([2], [0], "Slice '' has step 0"),
])
def test_slice_refusals(axes, steps, needle):
    inits = [_init("s", np.array([0], np.int64)), _init("e", np.array([1], np.int64)),
             _init("a", np.array(axes, np.int64)), _init("st", np.array(steps, np.int64))]
    _refused(_model([helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])], inits,
                    in_shape=("N", 3, 5, 5)), f"m.onnx: {needle}")


def test_float_ops_are_written_at_version_1():
    """Float kernels at their first version, readable by every runtime (int8 ones need 2)."""
    add = helper.make_node("Add", ["x", "c"], ["y"])
    assert _check(_model([add], [_init("c", _w(3, 1, 1))])) == [("ADD", 1)]
    minimum = helper.make_node("Min", ["x", "c"], ["y"])
    assert _check(_model([minimum], [_init("c", _w(3, 1, 1))])) == [("MINIMUM", 1)]
    gather = helper.make_node("Gather", ["x", "i"], ["y"], axis=3)
    assert ("GATHER", 1) in _check(_model([gather], [_init("i", np.array([4, 0], np.int64))]))


def test_int8_relu6_is_version_2():
    """A Clip(0, 6) on a conv output that another op reads too: it cannot be fused into the
    conv, so RELU6 itself, at the version that takes int8."""
    conv, inits = _conv("x", "c", 3, 3, pads=[1, 1, 1, 1])
    clip = helper.make_node("Clip", ["c", "lo", "hi"], ["r"])
    add = helper.make_node("Add", ["c", "r"], ["y"])
    inits += [_init("lo", np.float32(0.0)), _init("hi", np.float32(6.0))]
    ops, _ = _check_int8(_model([conv, clip, add], inits))
    assert ("RELU6", 2) in ops


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_grouped_conv_with_two_output_channels(per_channel):
    """Two groups of one output channel each: per-channel scales have exactly 2 entries."""
    node, inits = _conv("x", "y", 4, 2, group=2, pads=[1, 1, 1, 1])
    _check_int8(_model([node], inits, in_shape=(1, 4, 5, 5)), per_channel)
