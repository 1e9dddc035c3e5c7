"""ONNX -> TFLite: per-op parity driven by the lowering registry, zoo parity, int8, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.api import ConvertConfig, convert
from edgecnn.checks.int8_self_check import compare_layers
from edgecnn.converters import onnx_passes
from edgecnn.converters.int8_forms import int8_form
from edgecnn.converters.ops import LOWERINGS
from edgecnn.errors import ConversionError, UnsupportedOpsError
from edgecnn.files.card import InputSpec, ModelCard
from edgecnn.files.torch_files import default_card
from edgecnn.inspection import inspect_model
from edgecnn.runtimes.sessions import (
    RUNTIMES,
    OnnxSession,
    open_session,
    predict,
    reference_session,
)
from tests.conftest import LENET, unavailable

TFLITE_RUNTIMES = [n for n in ("litert", "tflite-runtime")]
RNG = np.random.default_rng(0)


def _w(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _build(op: str, name: str):
    """Build a case with freshly seeded weights, so results never depend on test order."""
    global RNG
    RNG = np.random.default_rng(0)
    return OP_CASES[op][name]()


def _conv(name, x, out, cin, cout, k=3, **attrs):
    group = attrs.get("group", 1)
    inits = [numpy_helper.from_array(_w(cout, cin // group, k, k), name + "_w"),
             numpy_helper.from_array(_w(cout), name + "_b")]
    return helper.make_node("Conv", [x, name + "_w", name + "_b"], [out], name=name,
                            kernel_shape=[k, k], **attrs), inits


def _head(x, channels, hw, out="y"):
    """Flatten + Gemm so every case ends in logits like a classifier."""
    inits = [numpy_helper.from_array(_w(10, channels * hw * hw, scale=0.05), "fc_w"),
             numpy_helper.from_array(_w(10), "fc_b")]
    return [helper.make_node("Flatten", [x], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], [out], transB=1)], inits


def _case(body, inits, c_out, hw, in_shape=(1, 4, 8, 8)):
    head, head_inits = _head("z", c_out, hw)
    graph = helper.make_graph(body + head, "case",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["N", *in_shape[1:]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              inits + head_inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _unary(op, **attrs):
    def build():
        conv, inits = _conv("c", "x", "a", 4, 4, pads=[1, 1, 1, 1])
        return _case([conv, helper.make_node(op, ["a"], ["z"], **attrs)], inits, 4, 8)
    return build


def _const_input(op, name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))


def _conv_case(**attrs):
    def build():
        cin, cout = 4, attrs.pop("cout", 4) if "cout" in attrs else 4
        conv, inits = _conv("c", "x", "z", cin, cout, **attrs)
        hw = _out_hw(8, 3, attrs)
        return _case([conv], inits, cout, hw)
    return build


def _out_hw(size, k, attrs):
    s = attrs.get("strides", [1, 1])[0]
    d = attrs.get("dilations", [1, 1])[0]
    if attrs.get("auto_pad") == "SAME_UPPER":
        return -(-size // s)
    p = attrs.get("pads", [0, 0, 0, 0])
    return (size + p[0] + p[2] - ((k - 1) * d + 1)) // s + 1


def _pool(op, **attrs):
    def build():
        conv, inits = _conv("c", "x", "a", 4, 4, pads=[1, 1, 1, 1])
        node = helper.make_node(op, ["a"], ["z"], **attrs)
        k = attrs.get("kernel_shape", [8, 8])[0]
        hw = 1 if op.startswith("Global") else _out_hw(8, k, attrs)
        if attrs.get("ceil_mode"):
            hw = -(-(8 + sum(attrs.get("pads", [0] * 4)[::2]) - k) // attrs["strides"][0]) + 1
        return _case([conv, node], inits, 4, hw)
    return build


def _reduce(op, axes, keepdims=1, before=None):
    """A reduction after a conv (and ``before``, e.g. Sigmoid for a log's positive input); axes
    as an input (opset 18), as the dynamo exporter writes."""
    def build():
        conv, inits = _conv("c", "x", "a", 4, 4, pads=[1, 1, 1, 1])
        nodes = [conv] + ([helper.make_node(before, ["a"], ["b"])] if before else [])
        axes_init = numpy_helper.from_array(np.asarray(axes, np.int64), "axes")
        node = helper.make_node(op, [nodes[-1].output[0], "axes"], ["z"], keepdims=keepdims)
        reduced = {a % 4 for a in axes}
        channels, hw = (1 if 1 in reduced else 4), (1 if 2 in reduced else 8)
        return _case(nodes + [node], inits + [axes_init], channels, hw)
    return build


def _global_average_pool_7x7():
    """A 2x2 conv without padding (8x8 -> 7x7), then AveragePool over the whole odd map, as
    older classifiers end: written as MEAN (the trained-model case that AVERAGE_POOL_2D got
    wrong is test_ops_from_exporters' whole-map AveragePool on mobile_se_outlier)."""
    conv, inits = _conv("c", "x", "a", 4, 4, k=2)
    return _case([conv, helper.make_node("AveragePool", ["a"], ["z"], kernel_shape=[7, 7])],
                 inits, 4, 1)


def _split_attention_sum():
    """ResNeSt's split attention: the radix splits summed over a 5-D view, keepdims=0, so
    the 4-D result is in ONNX's order, not NHWC (issue 22: LiteRT could not prepare it)."""
    conv, inits = _conv("c", "x", "a", 4, 4, pads=[1, 1, 1, 1])
    shape = numpy_helper.from_array(np.array([-1, 2, 2, 8, 8], np.int64), "split_shape")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [conv, helper.make_node("Reshape", ["a", "split_shape"], ["s"]),
             helper.make_node("ReduceSum", ["s", "axes"], ["z"], keepdims=0)]
    return _case(nodes, inits + [shape, axes], 2, 8)


def _binary(op):
    def build():
        c1, i1 = _conv("c1", "x", "a", 4, 4, pads=[1, 1, 1, 1])
        c2, i2 = _conv("c2", "x", "b", 4, 4, pads=[1, 1, 1, 1])
        const = numpy_helper.from_array(_w(4, 1, 1) + 1, "k")
        return _case([c1, c2, helper.make_node(op, ["a", "b"], ["ab"]),
                      helper.make_node(op, ["ab", "k"], ["z"])], i1 + i2 + [const], 4, 8)
    return build


def _scaled_operands(op, ratio):
    """Two activations whose int8 scales differ by ``ratio`` (one conv's weights divided by it),
    as a detector's box decode adds anchor points to distances (issue 22): an int8 ADD/SUB
    whose small-scale operand's multiplier could lose precision."""
    def build():
        c1, i1 = _conv("c1", "x", "a", 4, 4, pads=[1, 1, 1, 1])
        c2, i2 = _conv("c2", "x", "b", 4, 4, pads=[1, 1, 1, 1])
        for init in i2:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) / ratio,
                                                  init.name))
        return _case([c1, c2, helper.make_node(op, ["a", "b"], ["z"])], i1 + i2, 4, 8)
    return build


SCALE_RATIOS = (1, 10, 100, 1000, 10000)


def _chain(*ops, const=None, **attrs):
    """conv -> relu -> each of ``ops`` in turn (with ``const`` as a second input where given)."""
    def build():
        conv, inits = _conv("c", "x", "a", 4, 4, pads=[1, 1, 1, 1])
        nodes, current = [conv, helper.make_node("Relu", ["a"], ["r"])], "r"
        extra = [numpy_helper.from_array(np.asarray(const, np.float32), "k")] if const is not None else []
        for i, op in enumerate(ops):
            out = "z" if i == len(ops) - 1 else f"t{i}"
            inputs = [current, "k"] if const is not None else [current]
            nodes.append(helper.make_node(op, inputs, [out], **attrs))
            current = out
        return _case(nodes, inits + extra, 4, 8)
    return build


def _concat():
    c1, i1 = _conv("c1", "x", "a", 4, 4, pads=[1, 1, 1, 1])
    c2, i2 = _conv("c2", "x", "b", 4, 2, pads=[1, 1, 1, 1])
    return _case([c1, c2, helper.make_node("Concat", ["a", "b"], ["z"], axis=1)], i1 + i2, 6, 8)


def _pad():
    conv, inits = _conv("c", "x", "a", 4, 4)
    pads = numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "pads")
    return _case([conv, helper.make_node("Pad", ["a", "pads"], ["z"])], inits + [pads], 4, 9)


def _matmul_add():
    conv, inits = _conv("c", "x", "a", 4, 2, pads=[1, 1, 1, 1])
    flat = helper.make_node("Flatten", ["a"], ["f"], axis=1)
    mm_w = numpy_helper.from_array(_w(128, 16, scale=0.1), "mm_w")
    mm_b = numpy_helper.from_array(_w(16), "mm_b")
    nodes = [conv, flat, helper.make_node("MatMul", ["f", "mm_w"], ["m"]),
             helper.make_node("Add", ["m", "mm_b"], ["m2"]), helper.make_node("Relu", ["m2"], ["g"]),
             helper.make_node("Gemm", ["g", "g_w", "g_b"], ["y"], transB=0)]
    graph = helper.make_graph(
        nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits + [mm_w, mm_b, numpy_helper.from_array(_w(16, 10), "g_w"),
                 numpy_helper.from_array(_w(10), "g_b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _reshape_softmax():
    conv, inits = _conv("c", "x", "a", 4, 3, pads=[1, 1, 1, 1])
    shape = numpy_helper.from_array(np.array([-1, 192], np.int64), "shape")
    nodes = [conv, helper.make_node("Reshape", ["a", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["l"], transB=1),
             helper.make_node("Softmax", ["l"], ["y"], axis=-1)]
    graph = helper.make_graph(
        nodes, "sm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits + [shape, numpy_helper.from_array(_w(10, 192, scale=0.1), "fc_w"),
                 numpy_helper.from_array(_w(10), "fc_b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _clip(low, high):
    def build():
        conv, inits = _conv("c", "x", "a", 4, 4, pads=[1, 1, 1, 1])
        bounds = [numpy_helper.from_array(np.float32(low), "lo"),
                  numpy_helper.from_array(np.float32(high), "hi")]
        return _case([conv, helper.make_node("Clip", ["a", "lo", "hi"], ["z"])], inits + bounds,
                     4, 8)
    return build


def _batch_norm(after_conv: bool):
    conv, inits = _conv("c", "x", "a", 4, 4, pads=[1, 1, 1, 1])
    stats = [numpy_helper.from_array(_w(4) + 1, "g"), numpy_helper.from_array(_w(4), "b"),
             numpy_helper.from_array(_w(4), "m"), numpy_helper.from_array(np.abs(_w(4)) + 0.5, "v")]
    source = "a" if after_conv else "r"
    nodes = [conv] if after_conv else [conv, helper.make_node("Relu", ["a"], ["r"])]
    nodes.append(helper.make_node("BatchNormalization", [source, "g", "b", "m", "v"], ["z"],
                                  epsilon=1e-3))
    return _case(nodes, inits + stats, 4, 8)


def _layout_case(nodes, inits, c_out, hw, cout=4):
    """conv (4 -> ``cout``) into ``nodes`` (reading "a", ending in "z"), then the usual head."""
    conv, conv_inits = _conv("c", "x", "a", 4, cout, pads=[1, 1, 1, 1])
    extra = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    return lambda: _case([conv, *nodes], conv_inits + extra, c_out, hw)


_PERMUTE_BACK = _layout_case(  # ConvNeXt's permute -> channels-last op -> permute back
    [helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
     helper.make_node("Relu", ["t"], ["r"]),
     helper.make_node("Transpose", ["r"], ["z"], perm=[0, 3, 1, 2])], {}, 4, 8)
_PERMUTE_FLATTEN = _layout_case(  # a permute before flatten (NHWC flattening, no TRANSPOSE)
    [helper.make_node("Transpose", ["a"], ["z"], perm=[0, 2, 3, 1])], {}, 4, 8)
_CHANNEL_SHUFFLE = _layout_case(  # ShuffleNet: the one place a TRANSPOSE is real arithmetic
    [helper.make_node("Reshape", ["a", "s5"], ["g"]),
     helper.make_node("Transpose", ["g"], ["t"], perm=[0, 2, 1, 3, 4]),
     helper.make_node("Reshape", ["t", "s4"], ["z"])],
    {"s5": np.array([-1, 2, 2, 8, 8], np.int64), "s4": np.array([-1, 4, 8, 8], np.int64)}, 4, 8)
_SQUEEZE_UNSQUEEZE = _layout_case(
    [helper.make_node("GlobalAveragePool", ["a"], ["p"]),
     helper.make_node("Squeeze", ["p", "axes"], ["q"]),
     helper.make_node("Unsqueeze", ["q", "axes"], ["z"])],
    {"axes": np.array([2, 3], np.int64)}, 4, 1)
_SPLIT_EQUAL = _layout_case(
    [helper.make_node("Split", ["a"], ["s1", "s2"], axis=1, num_outputs=2),
     helper.make_node("Add", ["s1", "s2"], ["z"])], {}, 2, 8)
_SPLIT_UNEQUAL = _layout_case(
    [helper.make_node("Split", ["a", "sizes"], ["s1", "s2"], axis=1),
     helper.make_node("Concat", ["s2", "s1"], ["z"], axis=1)],
    {"sizes": np.array([1, 3], np.int64)}, 4, 8)
_SLICE_STRIDED = _layout_case(
    [helper.make_node("Slice", ["a", "b", "e", "ax", "st"], ["z"])],
    {"b": np.array([1, 0, 1], np.int64), "e": np.array([3, 8, 99], np.int64),
     "ax": np.array([1, 2, 3], np.int64), "st": np.array([1, 2, 2], np.int64)}, 2, 4)
_SLICE_REVERSED = _layout_case(  # a negative step through index 0 (end below -dim)
    [helper.make_node("Slice", ["a", "b", "e", "ax", "st"], ["z"])],
    {"b": np.array([-1], np.int64), "e": np.array([-99], np.int64),
     "ax": np.array([2], np.int64), "st": np.array([-1], np.int64)}, 4, 8)
_GATHER_LIST = _layout_case(
    [helper.make_node("Gather", ["a", "idx"], ["g"], axis=1),
     helper.make_node("Relu", ["g"], ["z"])], {"idx": np.array([3, 0, 1, -1], np.int64)}, 4, 8)
_GATHER_SCALAR = _layout_case(  # drops an axis: (N, 4, 8, 8) -> (N, 4, 8), 32 = 2 * 4 * 4
    [helper.make_node("Gather", ["a", "idx"], ["z"], axis=2)], {"idx": np.array(5, np.int64)},
    2, 4)
_SOFTMAX_CHANNELS = _layout_case([helper.make_node("Softmax", ["a"], ["z"], axis=1)], {}, 4, 8)
_SOFTMAX_WIDTH = _layout_case([helper.make_node("Softmax", ["a"], ["z"], axis=3)], {}, 4, 8)


def _resize(mode, transform, nearest_mode="round_prefer_floor", size=16):
    """8x8 -> size x size, by output sizes of H and W (opset 18 axes) and an empty roi."""
    return _layout_case(
        [helper.make_node("Resize", ["a", "", "", "sizes"], ["z"], mode=mode, axes=[2, 3],
                          coordinate_transformation_mode=transform, nearest_mode=nearest_mode)],
        {"sizes": np.array([size, size], np.int64)}, 4, size)


def _upsample_opset9():
    """Upsample, deprecated since opset 10 but still in older third-party files."""
    build = _layout_case([helper.make_node("Upsample", ["a", "scales"], ["z"], mode="nearest")],
                         {"scales": np.array([1, 1, 2, 2], np.float32)}, 4, 16)
    model = build()
    model.opset_import[0].version = 9
    return model


def _channels_last(*nodes, inits=None, cout=4):
    """ConvNeXt's block shape: permute to (N, H, W, C), ``nodes`` ("t" -> "u"), permute back."""
    return _layout_case([helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]), *nodes,
                         helper.make_node("Transpose", ["u"], ["z"], perm=[0, 3, 1, 2])],
                        inits or {}, cout, 8)


_SQRT_HALF = np.float32(1 / np.sqrt(2))
_GELU_CHAIN = _channels_last(  # what torch's exporter writes for nn.GELU() (opset 18)
    helper.make_node("Div", ["t", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
    helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["p", "half"], ["h"]),
    helper.make_node("Mul", ["t", "h"], ["u"]),
    inits={"sqrt2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)})
_LAYER_NORM = _channels_last(
    helper.make_node("LayerNormalization", ["t", "gamma", "beta"], ["u"], axis=-1,
                     epsilon=1e-6),
    inits={"gamma": np.linspace(0.5, 1.5, 4, dtype=np.float32),
           "beta": np.linspace(-0.2, 0.2, 4, dtype=np.float32)})
_ATTENTION = _layout_case(  # self-attention over the 64 positions: two activation MatMuls
    [helper.make_node("Reshape", ["a", "seq"], ["r"]),
     helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
     helper.make_node("MatMul", ["t", "r"], ["s"]),
     helper.make_node("Softmax", ["s"], ["p"], axis=-1),
     helper.make_node("MatMul", ["p", "t"], ["o"]),
     helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1]),
     helper.make_node("Reshape", ["ot", "map"], ["z"])],
    {"seq": np.array([0, 4, 64], np.int64), "map": np.array([0, 4, 8, 8], np.int64)}, 4, 8)


def _batch_one_heads() -> onnx.ModelProto:
    """ViT's attention as a batch-1 export writes it: the sequence axis goes first and the
    batch merges with the heads (torch's multi_head_attention_forward)."""
    conv, inits = _conv("c", "x", "a", 4, 4, pads=[1, 1, 1, 1])
    shapes = {"seq": [1, 4, 64], "heads": [64, 2, 2], "back": [64, 1, 4], "map": [1, 4, 8, 8]}
    nodes = [conv, helper.make_node("Reshape", ["a", "seq"], ["r"]),
             helper.make_node("Transpose", ["r"], ["l"], perm=[2, 0, 1]),  # (64, 1, 4)
             helper.make_node("Reshape", ["l", "heads"], ["h"]),
             helper.make_node("Transpose", ["h"], ["q"], perm=[1, 0, 2]),  # (2, 64, 2)
             helper.make_node("Transpose", ["q"], ["k"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "k"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "q"], ["o"]),
             helper.make_node("Transpose", ["o"], ["ob"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["ob", "back"], ["m"]),
             helper.make_node("Transpose", ["m"], ["mt"], perm=[1, 2, 0]),
             helper.make_node("Reshape", ["mt", "map"], ["z"])]
    head, head_inits = _head("z", 4, 8)
    graph = helper.make_graph(
        nodes + head, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                              [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits + head_inits + [numpy_helper.from_array(np.array(v, np.int64), k)
                              for k, v in shapes.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


_LINEAR_NHWC = _channels_last(  # nn.Linear on a channels-last map: MatMul + Add on rank 4
    helper.make_node("MatMul", ["t", "w"], ["m"]), helper.make_node("Add", ["m", "bias"], ["u"]),
    inits={"w": (np.random.default_rng(3).standard_normal((4, 6)) * 0.3).astype(np.float32),
           "bias": np.linspace(-0.1, 0.1, 6, dtype=np.float32)}, cout=6)


def _gelu_opset20(approximate):
    def build():
        model = _channels_last(helper.make_node("Gelu", ["t"], ["u"], approximate=approximate))()
        model.opset_import[0].version = 20
        return model
    return build


def _conv_transpose(k, stride, pads, output_padding=(0, 0), bias=True, cout=3):
    """ConvTranspose 4 -> ``cout`` channels on the 8x8 conv output (PyTorch's weight layout)."""
    def build():
        size = (8 - 1) * stride + k - pads[0] - pads[2] + output_padding[0]
        weights = {"wt": (np.random.default_rng(5).standard_normal((4, cout, k, k)) * 0.3)
                   .astype(np.float32)}
        inputs = ["a", "wt"]
        if bias:
            weights["bt"] = np.linspace(-0.2, 0.2, cout, dtype=np.float32)
            inputs.append("bt")
        node = helper.make_node("ConvTranspose", inputs, ["z"], kernel_shape=[k, k],
                                strides=[stride, stride], pads=list(pads),
                                output_padding=list(output_padding))
        return _layout_case([node], weights, cout, size)()
    return build


# Cases whose math needs a TRANSPOSE, and how many; every other case must have none.
EXPECTED_TRANSPOSES = {("Transpose", "channel_shuffle"): 1, ("Softmax", "width"): 1,
                       # splitting the heads and merging them back move data; the third
                       # (back to channels) is one the layout pass does not avoid yet
                       ("MatMul", "batch_one_heads"): 3,
                       # the 5-D view splits the channels: the map goes to NCHW for it
                       ("ReduceSum", "split_attention_5d"): 1}
# the activation products run as float islands in int8: the island moves its own float copy
EXPECTED_INT8_TRANSPOSES = {("MatMul", "batch_one_heads"): 4}


def _norm(op, opset=18, **attrs):
    """conv -> ``op`` with per-channel (or per-group) scale and bias inputs (issue 22)."""
    def build():
        conv, inits = _conv("c", "x", "a", 4, 4, pads=[1, 1, 1, 1])
        extra = [numpy_helper.from_array(_w(4) + 1, "g"), numpy_helper.from_array(_w(4), "b")]
        model = _case([conv, helper.make_node(op, ["a", "g", "b"], ["z"], **attrs)],
                      inits + extra, 4, 8)
        model.opset_import[0].version = opset
        return model
    return build


def _rearrange(op, c_mid, c_out, hw, **attrs):
    """conv (4 -> ``c_mid`` channels) -> DepthToSpace/SpaceToDepth (issue 22)."""
    def build():
        conv, inits = _conv("c", "x", "a", 4, c_mid, pads=[1, 1, 1, 1])
        return _case([conv, helper.make_node(op, ["a"], ["z"], **attrs)], inits, c_out, hw)
    return build


def _expand_attention():
    """ECA's channel attention: x * expand_as(sigmoid(mean over H, W)) (issue 22)."""
    conv, inits = _conv("c", "x", "a", 4, 4, pads=[1, 1, 1, 1])
    shape = numpy_helper.from_array(np.array([1, 4, 8, 8], np.int64), "shape")
    nodes = [conv, helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Sigmoid", ["g"], ["s"]),
             helper.make_node("Expand", ["s", "shape"], ["e"]),
             helper.make_node("Mul", ["a", "e"], ["z"])]
    return _case(nodes, inits + [shape], 4, 8)


def _eca():
    """ECA-Net's channel attention as timm writes it: a 1-D Conv across the channels of the
    pooled map, then sigmoid and expand_as (issue 22)."""
    conv, inits = _conv("c", "x", "a", 4, 4, pads=[1, 1, 1, 1])
    inits += [numpy_helper.from_array(np.array([-1, 1, 4], np.int64), "row"),
              numpy_helper.from_array(np.array([-1, 4, 1, 1], np.int64), "col"),
              numpy_helper.from_array(_w(1, 1, 3), "k"),
              numpy_helper.from_array(np.array([1, 4, 8, 8], np.int64), "shape")]
    nodes = [conv, helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Reshape", ["g", "row"], ["r"]),
             helper.make_node("Conv", ["r", "k"], ["k1"], pads=[1, 1]),
             helper.make_node("Sigmoid", ["k1"], ["s"]),
             helper.make_node("Reshape", ["s", "col"], ["c4"]),
             helper.make_node("Expand", ["c4", "shape"], ["e"]),
             helper.make_node("Mul", ["a", "e"], ["z"])]
    return _case(nodes, inits, 4, 8)


ROUND_TWO_CASES = {  # issue 22: ops users' files hold
    "LRN": {"size3": _chain("LRN", size=3, alpha=0.02, beta=0.75, bias=1.5),
            "size5_default": _chain("LRN", size=5)},
    "InstanceNormalization": {"affine": _norm("InstanceNormalization", epsilon=1e-3)},
    "GroupNormalization": {"groups2": _norm("GroupNormalization", opset=21, num_groups=2,
                                            epsilon=1e-3)},
    "DepthToSpace": {"dcr": _rearrange("DepthToSpace", 8, 2, 16, blocksize=2),
                     "crd": _rearrange("DepthToSpace", 8, 2, 16, blocksize=2, mode="CRD")},
    "SpaceToDepth": {"block2": _rearrange("SpaceToDepth", 4, 16, 4, blocksize=2)},
    "Expand": {"channel_attention": _expand_attention, "eca_1d_conv": _eca},
    "GlobalMaxPool": {"plain": _pool("GlobalMaxPool")},
    "LpPool": {"p2_3x3_pads": _pool("LpPool", kernel_shape=[3, 3], strides=[1, 1],
                                    pads=[1, 1, 1, 1], p=2)},
}


# Each registered lowering names the cases that exercise it; a new op without a case fails
# test_every_lowering_has_a_case.
OP_CASES = {
    "Conv": {"plain": _conv_case(), "stride2_asym_pads": _conv_case(strides=[2, 2],
                                                                     pads=[0, 1, 1, 0]),
             "same_upper": _conv_case(auto_pad="SAME_UPPER"),
             "same_as_explicit": _conv_case(pads=[1, 1, 1, 1]),
             "dilated": _conv_case(dilations=[2, 2], pads=[2, 2, 2, 2]),
             "depthwise": _conv_case(group=4, pads=[1, 1, 1, 1]),
             "grouped": _conv_case(group=2, pads=[1, 1, 1, 1])},
    "Gemm": {"transB": _unary("Relu")},
    "MatMul": {"with_add": _matmul_add, "linear_on_nhwc": _LINEAR_NHWC,
               "attention": _ATTENTION, "batch_one_heads": _batch_one_heads},
    "Relu": {"fused": _unary("Relu")},
    "Clip": {"relu6": _clip(0, 6), "arbitrary": _clip(-0.5, 0.7)},
    "LeakyRelu": {"alpha": _unary("LeakyRelu", alpha=0.2)},
    "Sigmoid": {"plain": _unary("Sigmoid")},
    "Tanh": {"plain": _unary("Tanh")},
    "HardSwish": {"plain": _unary("HardSwish")},
    "Softmax": {"last_axis": _reshape_softmax, "channels": _SOFTMAX_CHANNELS,
                "width": _SOFTMAX_WIDTH},
    "Transpose": {"permute_back": _PERMUTE_BACK, "permute_flatten": _PERMUTE_FLATTEN,
                  "channel_shuffle": _CHANNEL_SHUFFLE},
    "Squeeze": {"after_pool": _SQUEEZE_UNSQUEEZE},
    "Unsqueeze": {"after_squeeze": _SQUEEZE_UNSQUEEZE},
    "Split": {"equal": _SPLIT_EQUAL, "unequal": _SPLIT_UNEQUAL},
    "Slice": {"strided": _SLICE_STRIDED, "reversed": _SLICE_REVERSED},
    "Gather": {"index_list": _GATHER_LIST, "scalar_index": _GATHER_SCALAR},
    "Resize": {"nearest_asymmetric": _resize("nearest", "asymmetric", "floor"),
               "nearest_half_pixel": _resize("nearest", "half_pixel", "round_prefer_ceil"),
               "nearest_align_corners": _resize("nearest", "align_corners", "round_prefer_ceil",
                                                size=12),
               "linear_half_pixel": _resize("linear", "half_pixel"),
               "linear_pytorch_half_pixel_down": _resize("linear", "pytorch_half_pixel", size=6),
               "linear_align_corners": _resize("linear", "align_corners", size=13),
               "linear_asymmetric": _resize("linear", "asymmetric", size=12)},
    "Upsample": {"nearest_x2_opset9": _upsample_opset9},
    "Gelu": {"erf_chain_fused": _GELU_CHAIN, "opset20": _gelu_opset20("none"),
             "opset20_tanh": _gelu_opset20("tanh")},
    "LayerNormalization": {"channels_last": _LAYER_NORM},
    "ConvTranspose": {"k2_s2_valid": _conv_transpose(2, 2, (0, 0, 0, 0), bias=False),
                      "k4_s2_p1_same": _conv_transpose(4, 2, (1, 1, 1, 1)),
                      "k3_s2_p1_outpad1_sliced": _conv_transpose(3, 2, (1, 1, 1, 1), (1, 1)),
                      "k3_s1_p1": _conv_transpose(3, 1, (1, 1, 1, 1))},
    "MaxPool": {"2x2": _pool("MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
                "3x3_pad_ceil": _pool("MaxPool", kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[1, 1, 1, 1], ceil_mode=1)},
    "AveragePool": {"2x2": _pool("AveragePool", kernel_shape=[2, 2], strides=[2, 2]),
                    "same_excl_pad": _pool("AveragePool", kernel_shape=[3, 3], strides=[1, 1],
                                           pads=[1, 1, 1, 1]),
                    # PyTorch's AvgPool2d default: padding zeros count (Inception v3)
                    "same_incl_pad": _pool("AveragePool", kernel_shape=[3, 3], strides=[1, 1],
                                           pads=[1, 1, 1, 1], count_include_pad=1),
                    # AvgPool2d(7) as a classifier's head on a 7x7 map: MEAN, exact in int8
                    "whole_map": _global_average_pool_7x7,
                    # a large odd window: the int8 kernel where the output scale is not finer
                    "large_odd_window": _pool("AveragePool", kernel_shape=[7, 7],
                                              strides=[1, 1])},
    "GlobalAveragePool": {"plain": _pool("GlobalAveragePool")},
    "ReduceMean": {"spatial_keepdims": _reduce("ReduceMean", [2, 3]),
                   "spatial_dropped": _reduce("ReduceMean", [2, 3], keepdims=0),
                   "channels": _reduce("ReduceMean", [1])},
    "ReduceMax": {"spatial_keepdims": _reduce("ReduceMax", [2, 3]),
                  "channels_dropped": _reduce("ReduceMax", [1], keepdims=0)},
    "ReduceSum": {"spatial_keepdims": _reduce("ReduceSum", [-2, -1]),
                  "split_attention_5d": _split_attention_sum},
    "ReduceMin": {"spatial_keepdims": _reduce("ReduceMin", [2, 3])},
    "ReduceProd": {"channels": _reduce("ReduceProd", [1], before="Sigmoid")},
    "ReduceL2": {"channels": _reduce("ReduceL2", [1]),  # F.normalize (EdgeNeXt)
                 "spatial_dropped": _reduce("ReduceL2", [2, 3], keepdims=0)},
    "ReduceL1": {"channels": _reduce("ReduceL1", [1])},
    "ReduceSumSquare": {"spatial_keepdims": _reduce("ReduceSumSquare", [2, 3])},
    "ReduceLogSum": {"channels": _reduce("ReduceLogSum", [1], before="Sigmoid")},
    "ReduceLogSumExp": {"channels": _reduce("ReduceLogSumExp", [1])},
    "Flatten": {"folded_into_gemm": _unary("Relu")},
    "Reshape": {"to_2d": _reshape_softmax},
    "Add": {"activation_and_const": _binary("Add"),
            **{f"scale_ratio_{r}": _scaled_operands("Add", r) for r in SCALE_RATIOS}},
    "Sub": {"activation_and_const": _binary("Sub"),
            **{f"scale_ratio_{r}": _scaled_operands("Sub", r) for r in SCALE_RATIOS}},
    "Div": {"by_const": _chain("Div", const=np.full((4, 1, 1), 1.5, np.float32) + np.arange(4).reshape(4, 1, 1))},
    "Min": {"activation_and_const": _binary("Min")},
    "Max": {"activation_and_const": _binary("Max")},
    "Pow": {"square": _chain("Pow", const=np.float32(2.0)),
            "sqrt": _chain("Pow", const=np.float32(0.5))},
    "PRelu": {"per_channel": _chain("PRelu", const=np.linspace(-0.5, 0.5, 4).reshape(4, 1, 1))},
    "Neg": {"plain": _chain("Neg")},
    "Abs": {"plain": _unary("Abs")},
    "Sqrt": {"after_relu": _chain("Sqrt")},
    "Exp": {"plain": _unary("Exp")},
    "HardSigmoid": {"default": _unary("HardSigmoid"),
                    "paddle": _unary("HardSigmoid", alpha=1 / 6, beta=0.5)},
    "Mul": {"activation_and_const": _binary("Mul")},
    "Concat": {"channels": _concat},
    "Pad": {"asymmetric": _pad},
    "BatchNormalization": {"after_relu": lambda: _batch_norm(after_conv=False),
                           "after_conv_folded": lambda: _batch_norm(after_conv=True)},
    **ROUND_TWO_CASES,
}
CASES = [(op, name) for op, cases in OP_CASES.items() for name in cases]
# The integer kernels and the QDQ reference may round a value apart by one step where it lies
# within float error of a tie, or where a requantisation to an op's fixed/shared parameters
# rounds twice (pooling, softmax, concat). One step in the head's input moves the output by at
# most head_amplification() steps; one more step comes from the head's own requantisation.
INT8_MAX_STEPS = 2  # cases without a measurable head (uint8 activations on one Conv)


def head_amplification(qdq: onnx.ModelProto) -> float:
    """Output steps one input step of the final Gemm/MatMul can cause:
    max over outputs of sum|w| * s_in / s_out."""
    from onnx import numpy_helper as nh

    inits = {t.name: nh.to_array(t) for t in qdq.graph.initializer}
    producer = {n.output[0]: n for n in qdq.graph.node}
    head = [n for n in qdq.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    act_dq, w_dq = producer[head.input[0]], producer[head.input[1]]
    values = inits[w_dq.input[0]].astype(np.int32)
    axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
    shape = [1] * values.ndim
    shape[axis] = -1
    zero = inits[w_dq.input[2]].astype(np.int32).reshape(shape if values.ndim else ())
    weights = (values - zero) * inits[w_dq.input[1]].reshape(shape)
    if head.op_type == "MatMul":
        weights = weights.T  # (in, out) -> one row per output
    output_dq = producer[qdq.graph.output[0].name]
    s_out = inits[output_dq.input[1]]
    return float(np.abs(weights).sum(1).max() * inits[act_dq.input[1]] / s_out)


def test_every_lowering_has_a_case():
    # Identity: exporters' are cleaned away; the loader leaves one only for an int8 <-> int16
    # requantisation, which tests/test_int16.py covers
    assert set(LOWERINGS) - {"Identity"} == set(OP_CASES)


def _float_card(model):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
    return ModelCard("case", 0, InputSpec(tuple(dims), pixel_scale=1 / 255, mean=(0.5,),
                                          std=(0.25,)), tuple("0123456789"))


def _images(n=64, shape=(8, 8, 4)):
    return np.random.default_rng(1).integers(0, 256, (n, *shape), dtype=np.uint8)


def _tflite_ops(path):
    return {o["op"] for o in inspect_model(path).ops}


def _transposes(path):
    return sum(o["count"] for o in inspect_model(path).ops if o["op"] == "TRANSPOSE")


@pytest.mark.parametrize("op,name", CASES)
@pytest.mark.parametrize("runtime", TFLITE_RUNTIMES)
def test_fp32_lowering_matches_onnxruntime(tmp_path, op, name, runtime):
    if not RUNTIMES.get(runtime).available():
        unavailable(f"{runtime} is not installed: pip install -c constraints.txt -e '.[test]'")
    model = _build(op, name)
    onnx.checker.check_model(model)
    src = tmp_path / "case.onnx"
    onnx.save(model, src)
    out = convert(src, tmp_path / "case.tflite", ConvertConfig("tflite")).path
    x = _float_card(model).input.preprocess(_images())
    want = predict(OnnxSession(src, None), x)
    got = predict(open_session(out, runtime), x)
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()), rtol=0)
    assert _transposes(out) == EXPECTED_TRANSPOSES.get((op, name), 0)


# onnxruntime's quantiser writes an int32 bias DequantizeLinear, which opset 9 does not have
NOT_QUANTISABLE = {("Upsample", "nearest_x2_opset9")}


@pytest.mark.parametrize("op,name", [c for c in CASES if c not in NOT_QUANTISABLE])
def test_int8_lowering_matches_the_qdq_model(tmp_path, op, name):
    from edgecnn.converters.quantize import quantize_onnx
    from edgecnn.files.data import Dataset

    model = _build(op, name)
    onnx_passes.clean(model)  # as edgecnn does before quantising any ONNX model
    card = _float_card(model)
    calib = Dataset(_images(200), np.zeros(200, np.int64), "random")
    qdq = quantize_onnx(model, card, calib).model
    src = tmp_path / "q.onnx"
    onnx.save(qdq, src)
    out = convert(src, tmp_path / "q.tflite", ConvertConfig("tflite", int8=True)).path
    x = card.input.preprocess(_images(64))
    want = predict(reference_session(src), x)
    got = predict(open_session(out, "litert"), x)
    step = inspect_model(out).outputs[0].quantization
    scale = float(step.split(",")[0].split()[1])
    bound = 1 + head_amplification(qdq)  # see INT8_MAX_STEPS
    assert np.abs(got - want).max() <= bound * scale + 1e-6, f"{op}/{name}: bound {bound:.2f}"
    # layer by layer, each fed the integers TFLite computed before it: every layer rounds once,
    # as the reference does, so an integer may differ only where the reference's real value
    # lies on a half (2x2 averages, bilinear weights of 1/4): there float error picks the side
    for layer in compare_layers(src, out, x[:16]):
        assert layer.pinned_max_steps is not None and layer.pinned_max_steps <= 1, layer
        assert layer.pinned_off_tie is not None and layer.pinned_off_tie <= max(
            1, 0.001 * layer.values), layer
    # argmax flips need two logits within the bound of each other: rare on random weights
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
    assert _transposes(out) == EXPECTED_INT8_TRANSPOSES.get((op, name), EXPECTED_TRANSPOSES.get((op, name), 0))
    # ops without an exact int8 kernel run as float islands, and inspect names them
    islands = inspect_model(out).details.get("float islands", "")
    if int8_form(op).kind == "island" and any(n.op_type == op for n in qdq.graph.node):  # not folded away
        assert islands and "DEQUANTIZE" in _tflite_ops(out)


@pytest.mark.parametrize("op,name", [("Sigmoid", "plain"), ("Softmax", "channels")])
def test_ops_with_fixed_int8_outputs_are_quantised_to_the_kernels_parameters(tmp_path, op, name):
    """The quantiser gives LOGISTIC and SOFTMAX outputs the scale and zero point their TFLite
    int8 kernels demand, so they run full-integer and round once, as the reference. (onnxruntime
    leaves Tanh float: it runs as a float island.)"""
    from edgecnn.converters.int8_forms import fixed_output_params
    from edgecnn.converters.quantize import quantize_onnx
    from edgecnn.files.data import Dataset

    model = _build(op, name)
    onnx_passes.clean(model)
    card = _float_card(model)
    qdq = quantize_onnx(model, card, Dataset(_images(200), np.zeros(200, np.int64),
                                             "random")).model
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    produced = next(n.output[0] for n in qdq.graph.node if n.op_type == op)
    quantizer = next(n for n in qdq.graph.node
                     if n.op_type == "QuantizeLinear" and n.input[0] == produced)
    scale, zero_point = fixed_output_params()[op]
    assert float(inits[quantizer.input[1]]) == np.float32(scale)
    assert int(inits[quantizer.input[2]]) == zero_point
    src = tmp_path / "q.onnx"
    onnx.save(qdq, src)
    out = convert(src, tmp_path / "q.tflite", ConvertConfig("tflite", int8=True)).path
    assert not inspect_model(out).details.get("float islands")
    assert {"LOGISTIC", "SOFTMAX"} & set(_tflite_ops(out))


ZOO_MNIST = ["lenet5", "lenet5-3x3", "cnn4", "cnn-fc1024", "mobile-se"]


@pytest.mark.parametrize("arch", ZOO_MNIST)
@pytest.mark.parametrize("runtime", TFLITE_RUNTIMES)
def test_zoo_fp32_tflite_matches_pytorch(tmp_path, test_set, arch, runtime):
    import torch

    from edgecnn import zoo
    from edgecnn.train import save_model
    torch.manual_seed(0)
    module = zoo.build(arch)
    save_model(module, default_card(arch), tmp_path / "m.pt")
    out = convert(tmp_path / "m.pt", tmp_path / "m.tflite", ConvertConfig("tflite")).path
    x = default_card(arch).input.preprocess(test_set.images[:1000])
    with torch.inference_mode():
        want = module(torch.from_numpy(x)).numpy()
    got = predict(open_session(out, runtime), x)
    assert np.abs(got - want).max() <= 1e-5
    assert "TRANSPOSE" not in _tflite_ops(out)


@pytest.mark.parametrize("runtime", TFLITE_RUNTIMES)
def test_lenet_int8_tflite_against_int8_onnx_and_fp32(artefacts, test_set, runtime):
    x = default_card("lenet5").input.preprocess(test_set.images)
    onnx_int8 = predict(reference_session(artefacts["onnx_int8"]), x)  # the QDQ reference
    tfl_int8 = predict(open_session(artefacts["tflite_int8"], runtime), x)
    tfl_fp32 = predict(open_session(artefacts["tflite"], runtime), x)
    assert (tfl_int8.argmax(1) == onnx_int8.argmax(1)).mean() >= 0.999
    step = float(inspect_model(artefacts["tflite_int8"]).outputs[0].quantization
                 .split(",")[0].split()[1])
    # Integer kernels accumulate exactly and round once per layer; the reference sums floats.
    # Where a value lies within float error of a rounding tie the two round apart: one step in
    # that layer, which the next layer can carry on as one step (see validate.INT8_FLAG_STEPS).
    assert np.abs(tfl_int8 - onnx_int8).max() <= 2 * step + 1e-6
    acc_int8 = (tfl_int8.argmax(1) == test_set.labels).mean()
    acc_fp32 = (tfl_fp32.argmax(1) == test_set.labels).mean()
    assert abs(acc_int8 - acc_fp32) <= 0.003  # the product's int8 budget (README: 0.3 pp)


def test_nchw_input_adds_exactly_one_transpose(tmp_path, test_set):
    out = convert(LENET, tmp_path / "nchw.tflite", ConvertConfig("tflite", nchw_input=True)).path
    info = inspect_model(out)
    assert info.details["transpose_ops"] == 1 and info.inputs[0].shape == ["batch", 1, 28, 28]


@pytest.mark.parametrize("io", ["float32", "uint8"])
def test_int8_io_dtypes(tmp_path, test_set, io):
    out = convert(LENET, tmp_path / f"{io}.tflite",
                  ConvertConfig("tflite", int8=True, io_dtype=io)).path
    assert inspect_model(out).inputs[0].dtype == io
    x = default_card("lenet5").input.preprocess(test_set.images[:500])
    got = predict(open_session(out, "litert"), x)
    assert (got.argmax(1) == test_set.labels[:500]).mean() > 0.98


def test_unsupported_ops_are_all_listed(tmp_path):
    conv, inits = _conv("c", "x", "a", 4, 4, pads=[1, 1, 1, 1])
    nodes = [conv, helper.make_node("Erf", ["a"], ["e"], name="erf1"),
             helper.make_node("Cos", ["e"], ["z"], name="cos1")]
    src = tmp_path / "bad.onnx"
    onnx.save(_case(nodes, inits, 4, 8), src)
    with pytest.raises(UnsupportedOpsError) as err:
        convert(src, tmp_path / "bad.tflite", ConvertConfig("tflite"))
    message = str(err.value)
    assert "Cos (cos1)" in message and "Erf (erf1)" in message and "supported: " in message
    assert not list(tmp_path.glob("bad.tflite*"))


def test_bad_tflite_inputs_exit_2(tmp_path, cli_runner):
    from edgecnn.cli import cli
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes((LENET.parent / "lenet5.pt").read_bytes()[:100])
    flat = tmp_path / "flat.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 784])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 784])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), flat)
    cases = [([str(truncated)], "not a valid ONNX model"), ([str(flat)], "4-D image input"),
             ([str(LENET), "-o", str(tmp_path / "missing" / "x.tflite")], "does not exist")]
    for args, needle in cases:
        result = cli_runner.invoke(cli, ["convert", *args[:1], "--to", "tflite", *args[1:]])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr


def _quantize_with(tmp_path, activation_type, weight_type, **extra):
    from onnxruntime.quantization import QuantFormat, quantize_static

    src = tmp_path / "f.onnx"
    onnx.save(_build("Conv", "plain"), src)

    class Reader:
        def __init__(self):
            self.batches = iter([{"x": np.random.default_rng(0).random((8, 4, 8, 8), np.float32)}])

        def get_next(self):
            return next(self.batches, None)

    dst = tmp_path / "q.onnx"
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=activation_type, weight_type=weight_type, **extra)
    return dst


def test_uint8_activations_convert_as_the_same_int8_model(tmp_path):
    """QUInt8 activations are int8 ones moved by 128: TFLite int8 expresses them exactly."""
    from onnxruntime.quantization import QuantType

    src = _quantize_with(tmp_path, QuantType.QUInt8, QuantType.QInt8)
    out = convert(src, tmp_path / "u8.tflite", ConvertConfig("tflite", int8=True)).path
    x = _float_card(onnx.load(src)).input.preprocess(_images(64))
    want = predict(reference_session(src), x)
    got = predict(open_session(out, "litert"), x)
    step = float(inspect_model(out).outputs[0].quantization.split(",")[0].split()[1])
    assert np.abs(got - want).max() <= INT8_MAX_STEPS * step + 1e-6


def test_qdq_that_tflite_cannot_express(tmp_path):
    """Asymmetric uint8 weights (zero point != 128) have no symmetric int8 TFLite equivalent."""
    from onnxruntime.quantization import QuantType

    src = _quantize_with(tmp_path, QuantType.QUInt8, QuantType.QUInt8,
                         extra_options={"WeightSymmetric": False})
    with pytest.raises(ConversionError, match="zero points"):
        convert(src, tmp_path / "u8.tflite", ConvertConfig("tflite", int8=True))
    assert not (tmp_path / "u8.tflite").exists()


@pytest.mark.parametrize("int8", [False, True])
def test_self_check_refuses_a_wrong_lowering(tmp_path, artefacts, monkeypatch, int8):
    """A lowering bug (here: every constant's sign flipped as it is written) must stop the
    conversion at the self-check, with nothing written."""
    from edgecnn.converters.tflite_builder import TFLiteBuilder

    real = TFLiteBuilder.add_constant

    def flipped(self, name, array, quant=None):
        if array.dtype.kind == "f" or array.dtype == np.int8:
            array = (-array.astype(np.int16)).clip(-127, 127).astype(np.int8) \
                if array.dtype == np.int8 else -array
        return real(self, name, array, quant)

    monkeypatch.setattr(TFLiteBuilder, "add_constant", flipped)
    source = artefacts["onnx_int8"] if int8 else artefacts["onnx"]
    out = tmp_path / "wrong.tflite"
    # int8: the layer check names the first layer that is off although its inputs are not
    needle = "layer 'relu' differs .* although its inputs are identical" if int8 \
        else "differs from ONNX"
    with pytest.raises(ConversionError, match=needle):
        convert(source, out, ConvertConfig("tflite", int8=int8))
    assert not out.exists()


def test_int8_requantisation_is_the_qdq_arithmetic(tmp_path):
    """Concat inputs at other scales than the output are requantised as the QDQ graph does it
    (dequantise, round x / scale): every concatenated integer equals the reference's. A fused
    int8 -> int8 QUANTIZE (8-bit multiplier in XNNPACK) moved 2 % of them by a step."""
    from edgecnn.converters.quantize import quantize_onnx
    from edgecnn.files.data import Dataset


    model = _build("Concat", "channels")
    card = _float_card(model)
    qdq_model = quantize_onnx(model, card, Dataset(_images(200), np.zeros(200, np.int64),
                                                   "random")).model
    scales = {n.input[0]: n.input[1] for n in qdq_model.graph.node if n.op_type == "QuantizeLinear"}
    inits = {t.name: numpy_helper.to_array(t) for t in qdq_model.graph.initializer}
    assert inits[scales["a"]] != inits[scales["b"]]  # the case needs a requantisation
    src = tmp_path / "q.onnx"
    onnx.save(qdq_model, src)
    out = convert(src, tmp_path / "q.tflite", ConvertConfig("tflite", int8=True)).path
    layers = {d.tensor: d for d in compare_layers(src, out, card.input.preprocess(_images(1)))}
    # x / s rounded by onnxruntime and x * (1 / s) rounded by LiteRT part only where x / s lies
    # within one float ulp of a tie: none of these 384 values
    assert layers["z"].max_steps == 0


def test_fixed_batch_tflite_runs_any_batch_in_chunks(tmp_path, artefacts, test_set):
    """A TFLite file written for batch 1 (onnx2tf's, most exporters') is fed image by image;
    its outputs equal those of the same model with a dynamic batch."""
    import flatbuffers

    from edgecnn.converters.tflite_schema import schema

    fb = schema()
    model = fb.ModelT.InitFromPackedBuf(bytearray(artefacts["tflite"].read_bytes()), 0)
    for tensor in model.subgraphs[0].tensors:
        tensor.shapeSignature = None  # every shape fixed, the batch at 1
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    fixed = tmp_path / "fixed.tflite"
    fixed.write_bytes(bytes(builder.Output()))
    x = default_card("lenet5").input.preprocess(test_set.images[:5])
    session = open_session(fixed, "litert")
    assert session.fixed_batch == 1
    np.testing.assert_array_equal(predict(session, x),
                                  predict(open_session(artefacts["tflite"], "litert"), x))
