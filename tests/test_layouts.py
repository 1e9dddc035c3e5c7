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
from edgecnn.converters.quantize import QuantConfig, quantize_onnx
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
