"""Layouts chosen around Reshape and Transpose chains (issue 22): how many TRANSPOSE ops a
graph pays, that none of them has more than 4 axes, and that the file is still exact.

Each case is a small hand-built ONNX graph checked against onnxruntime in float32 and, where
it moves data only, bit for bit against its QDQ reference in int8.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter
from onnx import TensorProto, helper, numpy_helper

from edgecnn.converters import onnx_passes, qdq
from edgecnn.converters.lowering import blocks_to_move
from edgecnn.converters.onnx_to_tflite import TFLiteConfig, convert_onnx_to_tflite
from edgecnn.converters.ops.shape import _fixed_batch_layouts
from edgecnn.converters.quantize import QuantConfig, quantize_onnx
from edgecnn.converters.reshape_chains import compose_reshape_chains
from edgecnn.converters.tflite_schema import op_name, schema
from edgecnn.files.card import InputSpec, ModelCard
from edgecnn.files.data import Dataset

RNG = np.random.default_rng(22)


def _model(nodes: list, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
           shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """``nodes`` from x to y; ``shapes`` are the Reshape targets, as int64 initializers."""
    inits = [numpy_helper.from_array(np.asarray(s, np.int64), name) for name, s in shapes.items()]
    graph = helper.make_graph(
        nodes, "layouts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run_tflite(data: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out


def _transposes(data: bytes) -> list[int]:
    """The rank of every TRANSPOSE's input in the file."""
    fb = schema()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    graph = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return [len(graph.tensors[op.inputs[0]].shape) for op in graph.operators
            if op_name(codes[op.opcodeIndex]) == "TRANSPOSE"]


def _float(model: onnx.ModelProto, x: np.ndarray) -> list[int]:
    """Clean (as edgecnn's export does), convert, compare exactly with onnxruntime; the
    TRANSPOSE ranks."""
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    onnx_passes.clean(model)
    data = convert_onnx_to_tflite(model, "m.onnx").data
    np.testing.assert_array_equal(_run_tflite(data, x), want)
    return _transposes(data)


def _int8(model: onnx.ModelProto) -> list[int]:
    """Quantise as edgecnn does, convert with float I/O; bit-exact against the QDQ reference
    on 4 images (data movement only: nothing to round differently)."""
    onnx_passes.clean(model)
    c, h, w = (d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    card = ModelCard("case", 0, InputSpec((c, h, w), pixel_scale=1 / 255, mean=(0.5,),
                                          std=(0.25,)), tuple("0123456789"))
    images = np.random.default_rng(5).integers(0, 256, (20, h, w, c), dtype=np.uint8)
    calibration = Dataset(images[:16], np.zeros(16, np.int64), "random")
    quantized = quantize_onnx(model, card, calibration, QuantConfig()).model
    data = convert_onnx_to_tflite(quantized, "q.onnx", TFLiteConfig(io_dtype="float32")).data
    reference = qdq.reference_inference_session(quantized)
    for image in card.input.preprocess(images[16:]):
        x = image[None]
        np.testing.assert_array_equal(_run_tflite(data, x), reference.run(None, {"x": x})[0])
    return _transposes(data)


@pytest.mark.parametrize("perm", list(itertools.permutations(range(5))))
def test_block_moves_reach_every_permutation(perm):
    """Moving each listed block to the end, in turn, gives the permutation: at most k-1
    moves, none when it is the identity."""
    order = list(range(5))
    moves = blocks_to_move(perm)
    for block in moves:
        order.remove(block)
        order.append(block)
    assert tuple(order) == perm
    assert len(moves) <= 4 and (moves or perm == tuple(range(5)))


def _six_d_permute() -> onnx.ModelProto:
    """mobilevitv2's unfold in miniature: a 6-D permute whose blocks no neighbour merges."""
    nodes = [helper.make_node("Reshape", ["x", "split"], ["s"]),
             helper.make_node("Transpose", ["s"], ["t"], perm=[0, 5, 3, 1, 4, 2]),
             helper.make_node("Relu", ["t"], ["r"]),
             helper.make_node("Reshape", ["r", "merge"], ["y"])]
    return _model(nodes, (1, 4, 6, 6), (1, 36, 2, 2),
                  {"split": (1, 2, 2, 6, 2, 3), "merge": (1, 36, 2, 2)})


def test_a_six_d_permute_converts_to_transposes_of_at_most_four_axes():
    """It was refused ('needs a 6-D transpose'); now each out-of-place block moves on its own,
    a TRANSPOSE of at most 4 axes each, exact in float and bit-exact in int8."""
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    ranks = _float(_six_d_permute(), x)
    assert ranks and max(ranks) <= 4
    ranks = _int8(_six_d_permute())
    assert ranks and max(ranks) <= 4


@pytest.mark.parametrize("perm", [(0, 4, 3, 2, 1), (0, 2, 4, 1, 3), (0, 3, 1, 4, 2)])
def test_a_five_d_transpose_with_a_free_batch_runs_at_another_batch(perm):
    """With the batch free, it stays an axis of its own in every block move (a 4-D TRANSPOSE
    at most: [batch, before, block, after]), so the file runs at batch 3 too."""
    from edgecnn.converters.lowering import LoweringContext, transpose_tensor
    from edgecnn.converters.onnx_graph import load_graph
    from edgecnn.converters.tflite_builder import TFLiteBuilder

    relu = _model([helper.make_node("Relu", ["x"], ["y"])], (1, 2, 4, 4), (1, 2, 4, 4), {})
    ctx = LoweringContext(load_graph(relu, "m.onnx"), TFLiteBuilder("t"))
    shape = (2, 2, 3, 4, 5)
    source = ctx.builder.add_tensor("in", shape, np.float32, dynamic_batch=True)
    ctx.builder.inputs.append(source)
    ctx.builder.outputs.append(transpose_tensor(ctx, source, shape, perm, "t"))
    data = ctx.builder.serialize()
    assert 2 <= len(_transposes(data)) <= 4 and max(_transposes(data)) <= 4
    interpreter = Interpreter(model_content=data)
    x = RNG.standard_normal((3, *shape[1:])).astype(np.float32)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_array_equal(got, x.transpose(perm))


C, NH, PH, NW, PW = 8, 3, 2, 3, 2  # a 6x6 map of 8 channels, 2x2 patches: P = 4, N = 9
P, N = PH * PW, NH * NW


def _chain(x: str, out: str, shapes: list[str], perms: list[list[int]]) -> list:
    """Reshape, Transpose, Reshape, Transpose, Reshape: the shapes are initializer names."""
    names = [x, *(f"{out}/{i}" for i in range(4)), out]
    nodes = []
    for i in range(5):
        if i % 2 == 0:
            nodes.append(helper.make_node("Reshape", [names[i], shapes[i // 2]], [names[i + 1]]))
        else:
            nodes.append(helper.make_node("Transpose", [names[i]], [names[i + 1]],
                                          perm=perms[i // 2]))
    return nodes


def _unfold(x: str, out: str) -> tuple[list, dict]:
    """MobileViT's unfold as timm exports it: [1, C, H, W] -> tokens [P, N, C], in 5 nodes."""
    return (_chain(x, out, ["u0", "u2", "u4"], [[0, 2, 1, 3], [0, 3, 2, 1]]),
            {"u0": (C * NH, PH, NW, PW), "u2": (1, C, N, P), "u4": (P, N, C)})


def _fold(x: str, out: str) -> tuple[list, dict]:
    """And back: tokens [P, N, C] -> [1, C, H, W]."""
    return (_chain(x, out, ["f0", "f2", "f4"], [[0, 3, 2, 1], [0, 2, 1, 3]]),
            {"f0": (1, P, N, C), "f2": (C * NH, NW, PH, PW), "f4": (1, C, NH * PH, NW * PW)})


def _unfold_fold() -> onnx.ModelProto:
    unfold, shapes = _unfold("x", "tokens")
    fold, more = _fold("act", "y")
    act = helper.make_node("Relu", ["tokens"], ["act"])
    return _model([*unfold, act, *fold], (1, C, 6, 6), (1, C, 6, 6), {**shapes, **more})


def test_an_unfold_and_fold_chain_is_one_transpose_each():
    """The chains are composed into Reshape -> one Transpose -> Reshape on the common factors
    and the token layout is chosen so that one 4-D TRANSPOSE does each: 2 in all (4 before),
    exact in float and bit-exact in int8."""
    x = RNG.standard_normal((1, C, 6, 6)).astype(np.float32)
    assert len(_float(_unfold_fold(), x)) == 2
    assert len(_int8(_unfold_fold())) == 2


def _block() -> onnx.ModelProto:
    """A MobileViT transformer layer in miniature: the heads split and merged around
    attention (q = k = v), a dense projection and the residual ADD, between unfold and fold."""
    heads, depth = 2, C // 2
    weights = {"w_in": RNG.standard_normal((C, C)), "w_proj": RNG.standard_normal((C, C)),
               "b_proj": RNG.standard_normal(C)}
    unfold, shapes = _unfold("x", "tokens")
    fold, more = _fold("stream", "y")
    nodes = [*unfold,
             helper.make_node("MatMul", ["tokens", "w_in"], ["q"]),
             helper.make_node("Reshape", ["q", "split"], ["q4"]),
             helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["qh"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["qh", "kt"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
             helper.make_node("MatMul", ["weights", "qh"], ["attended"]),
             helper.make_node("Transpose", ["attended"], ["merged4"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["merged4", "merge"], ["merged"]),
             helper.make_node("MatMul", ["merged", "w_proj"], ["projected"]),
             helper.make_node("Add", ["projected", "b_proj"], ["biased"]),
             helper.make_node("Add", ["tokens", "biased"], ["stream"]),
             *fold]
    model = _model(nodes, (1, C, 6, 6), (1, C, 6, 6),
                   {**shapes, **more, "split": (P, N, heads, depth), "merge": (P, N, C)})
    model.graph.initializer.extend(numpy_helper.from_array(np.float32(w) * 0.3, name)
                                   for name, w in weights.items())
    return model


def _exact_transposes(model: onnx.ModelProto) -> int:
    """Convert ``model`` as edgecnn does (clean-up passes first), check the file against
    onnxruntime on a random map, and count its TRANSPOSE ops."""
    x = RNG.standard_normal((1, C, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    onnx_passes.clean(model)
    data = convert_onnx_to_tflite(model, "m.onnx").data
    np.testing.assert_allclose(_run_tflite(data, x), want, atol=1e-4, rtol=0)
    return len(_transposes(data))


def test_a_transformer_layer_between_unfold_and_fold_moves_only_what_it_must():
    """Unfold and fold one TRANSPOSE each, the heads split and merge one each, and nothing for
    the residual stream: the merged heads are written in the stream's layout. K is still moved
    on its own (docs/coverage.md, change 5): 5 in all, 10 before."""
    assert _exact_transposes(_block()) == 5


def test_the_unfold_chain_becomes_one_transpose_of_the_common_factors():
    """5 nodes -> Reshape to [1, C, nh, ph, nw, pw], one Transpose, Reshape to [P, N, C];
    onnxruntime gives the same tensor before and after."""
    unfold, shapes = _unfold("x", "y")
    model = _model(unfold, (1, C, 6, 6), (P, N, C), shapes)
    x = RNG.standard_normal((1, C, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert compose_reshape_chains(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Reshape", "Transpose", "Reshape"]
    factors = {t.name: numpy_helper.to_array(t).tolist() for t in model.graph.initializer}
    assert factors[model.graph.node[0].input[1]] == [1, C, NH, PH, NW, PW]
    assert list(model.graph.node[1].attribute[0].ints) == [0, 3, 5, 2, 4, 1]
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_short_chains_and_shared_tensors_are_left_alone():
    """A channel shuffle is already Reshape -> Transpose -> Reshape; a chain whose middle
    tensor has another reader cannot drop it."""
    shuffle = [helper.make_node("Reshape", ["x", "g"], ["s"]),
               helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1, 3, 4]),
               helper.make_node("Reshape", ["t", "back"], ["y"])]
    model = _model(shuffle, (1, 4, 3, 3), (1, 4, 3, 3), {"g": (1, 2, 2, 3, 3),
                                                         "back": (1, 4, 3, 3)})
    assert compose_reshape_chains(model) == 0
    unfold, shapes = _unfold("x", "tokens")
    shared = _model([*unfold, helper.make_node("Add", ["tokens/2", "tokens/2"], ["y"])],
                    (1, C, 6, 6), (1, C, N, P), shapes)
    assert compose_reshape_chains(shared) == 0


def test_a_fixed_batch_reshape_offers_layouts_of_its_own_rank():
    """MobileViT's heads merge [P, N, h, hd] (stored [P, h, N, hd]) -> [P, N, C] in a batch-1
    file: solved as rank 4 it was written [N, C, P] (NHWC's order), and the dense layer after
    it moved C last again."""
    assert _fixed_batch_layouts((4, 9, 2, 4), (0, 2, 1, 3), (4, 9, 8)) == ((0, 1, 2, 3),
                                                                           (0, 1, 2))


def _unbound_block() -> onnx.ModelProto:
    """As timm writes attention: one qkv projection, reshaped to [P, N, 3, h, hd], permuted
    to [3, P, h, N, hd] and unbound into q, k, v by three Slices and Squeezes."""
    heads, depth = 2, C // 2
    unfold, shapes = _unfold("x", "tokens")
    fold, more = _fold("stream", "y")
    nodes = [*unfold, helper.make_node("MatMul", ["tokens", "w_qkv"], ["qkv"]),
             helper.make_node("Reshape", ["qkv", "split"], ["qkv5"]),
             helper.make_node("Transpose", ["qkv5"], ["qkvt"], perm=[2, 0, 3, 1, 4])]
    inits = {"split": (P, N, 3, heads, depth), "merge": (P, N, C), "axis0": (0,)}
    for i, part in enumerate("qkv"):
        inits |= {f"start{i}": (i,), f"end{i}": (i + 1,)}
        nodes += [helper.make_node("Slice", ["qkvt", f"start{i}", f"end{i}", "axis0"],
                                   [f"{part}1"]),
                  helper.make_node("Squeeze", [f"{part}1", "axis0"], [part])]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
              helper.make_node("MatMul", ["weights", "v"], ["attended"]),
              helper.make_node("Transpose", ["attended"], ["merged4"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["merged4", "merge"], ["merged"]),
              helper.make_node("MatMul", ["merged", "w_proj"], ["projected"]),
              helper.make_node("Add", ["tokens", "projected"], ["stream"]), *fold]
    model = _model(nodes, (1, C, 6, 6), (1, C, 6, 6), {**shapes, **more, **inits})
    model.graph.initializer.extend([
        numpy_helper.from_array(np.float32(RNG.standard_normal((C, 3 * C)) * 0.3), "w_qkv"),
        numpy_helper.from_array(np.float32(RNG.standard_normal((C, C)) * 0.3), "w_proj")])
    return model


def test_q_k_and_v_are_moved_once_before_they_are_unbound():
    """The [3, P, h, N, hd] tensor is moved once, as [P, 3h, N, hd], before its Slices, and
    each of q, k and v is then read by BATCH_MATMUL as it is (k through adj_y): unfold, fold,
    qkv and the heads' merge, 4 TRANSPOSEs (6 when each part moved after its Slice)."""
    assert _exact_transposes(_unbound_block()) == 4
