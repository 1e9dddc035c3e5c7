"""What the detector and segmenter coverage run (scripts/detector_coverage.py, issue 22) found,
each pinned by a small case.

* segmentation-models-pytorch's FPN merges its pyramid as ``torch.stack(xs).sum(dim=0)``, which
  exports as Unsqueeze(0) of each map, Concat(axis 0) and ReduceSum(axes [0], keepdims 0). The
  lowering read the stack's first axis as the batch and refused the sum ("ReduceSum 'node_sum_1'
  reduces over the batch axis; TFLite models keep the batch"), so every smp FPN failed. The ONNX
  clean-up now writes it as a chain of Add, the same sum.
* YOLOv8-pose exported through torch.export ends in cat([cat([boxes, scores]), keypoints]).
  int8 keeps an output Concat float when its inputs' ranges differ over 32x, but here the boxes
  and scores met in the inner Concat, one int8 scale of 1.9 for pixels and scores: every score
  read 0. (Ultralytics' own ONNX has one Concat, and its int8 output was float.) The clean-up
  now merges a same-axis Concat into the output Concat it alone feeds.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgecnn.api import ConvertConfig, convert
from edgecnn.converters import onnx_passes


def _stack_sum_model(terms: int = 3, opset: int = 18) -> onnx.ModelProto:
    """x -> ``terms`` 1x1 convolutions -> torch.stack(...).sum(0), as the dynamo exporter
    writes it (axes as inputs)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    nodes, stacked = [], []
    for i in range(terms):
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32),
                                             f"w{i}"))
        nodes.append(helper.make_node("Conv", ["x", f"w{i}"], [f"c{i}"], name=f"conv{i}"))
        nodes.append(helper.make_node("Unsqueeze", [f"c{i}", "axis0"], [f"u{i}"],
                                      name=f"unsqueeze{i}"))
        stacked.append(f"u{i}")
    nodes.append(helper.make_node("Concat", stacked, ["stack"], name="node_stack", axis=0))
    nodes.append(helper.make_node("ReduceSum", ["stack", "axis0"], ["sum"], name="node_sum_1",
                                  keepdims=0))
    nodes.append(helper.make_node("Relu", ["sum"], ["y"], name="relu"))
    graph = helper.make_graph(
        nodes, "stack_sum", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_stack_sum_becomes_a_chain_of_add():
    model = _stack_sum_model()
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = _run(model, x)
    assert onnx_passes.stack_sum_to_add(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "ReduceSum" not in ops and "Concat" not in ops and "Unsqueeze" not in ops
    assert ops.count("Add") == 2
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, x), want, rtol=1e-6, atol=1e-6)


def test_stack_sum_over_another_axis_or_kept_dims_is_left_alone():
    model = _stack_sum_model()
    node = next(n for n in model.graph.node if n.op_type == "ReduceSum")
    node.attribute[0].i = 1  # keepdims: the 5-D result is not a plain sum of the maps
    assert onnx_passes.stack_sum_to_add(model) == 0


def test_fpn_style_stack_sum_converts_to_tflite(tmp_path):
    """The whole path: the file converts (it was refused) and LiteRT matches onnxruntime."""
    from ai_edge_litert.interpreter import Interpreter

    model = _stack_sum_model(terms=4)
    source = tmp_path / "fpn_merge.onnx"
    onnx.save(model, source)
    result = convert(source, tmp_path / "fpn_merge.tflite", ConvertConfig("tflite"))
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    interpreter = Interpreter(model_path=str(result.path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), _run(model, x), rtol=1e-5, atol=1e-5)


def _nested_output_concat_model() -> onnx.ModelProto:
    """x -> boxes (0..~300) and scores (sigmoid, 0..1) -> cat(axis 1), then with keypoints
    (0..~300) -> cat(axis 1): the torch.export form of YOLOv8-pose's decoded output."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 1, 1)).astype(np.float32), n)
             for n, c in (("wb", 4), ("ws", 1), ("wk", 6))]
    inits.append(numpy_helper.from_array(np.array(100.0, np.float32), "pixels"))
    make = helper.make_node
    nodes = [make("Conv", ["x", "wb"], ["b0"], name="boxes_conv"),
             make("Mul", ["b0", "pixels"], ["boxes"], name="boxes"),
             make("Conv", ["x", "ws"], ["s0"], name="scores_conv"),
             make("Sigmoid", ["s0"], ["scores"], name="scores"),
             make("Conv", ["x", "wk"], ["k0"], name="kpts_conv"),
             make("Mul", ["k0", "pixels"], ["kpts"], name="kpts"),
             make("Concat", ["boxes", "scores"], ["det"], name="node_cat_17", axis=1),
             make("Concat", ["det", "kpts"], ["y"], name="node_cat_19", axis=1)]
    graph = helper.make_graph(
        nodes, "pose_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 11, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def test_output_concat_takes_the_inner_concats_inputs():
    model = _nested_output_concat_model()
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = _run(model, x)
    assert onnx_passes.flatten_output_concat(model) == 1
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    assert len(concats) == 1 and list(concats[0].input) == ["boxes", "scores", "kpts"]
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(_run(model, x), want)


def test_inner_concat_used_elsewhere_is_kept():
    model = _nested_output_concat_model()
    model.graph.node.append(helper.make_node("Relu", ["det"], ["det_relu"], name="other_use"))
    model.graph.output.append(helper.make_tensor_value_info("det_relu", TensorProto.FLOAT,
                                                            [1, 5, 8, 8]))
    assert onnx_passes.flatten_output_concat(model) == 0


def test_int8_pose_style_output_keeps_scores(tmp_path):
    """End to end: the int8 file's output is float and the scores keep their precision
    (within a few 1/256 steps of the float model), not one shared scale with the pixels."""
    from ai_edge_litert.interpreter import Interpreter

    model = _nested_output_concat_model()
    source = tmp_path / "pose_head.onnx"
    onnx.save(model, source)
    rng = np.random.default_rng(3)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8),
             y=np.zeros(32, np.int64))
    result = convert(source, tmp_path / "pose_head_int8.tflite",
                     ConvertConfig("tflite", int8=True, calib=calib))
    interpreter = Interpreter(model_path=str(result.path))
    interpreter.allocate_tensors()
    out = interpreter.get_output_details()[0]
    assert out["dtype"] == np.float32  # kept float: pixels and scores in one tensor
    images = rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    inp = interpreter.get_input_details()[0]
    x = images.astype(np.float32) / 255
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale + zero), -128, 127)
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    got = interpreter.get_tensor(out["index"]).transpose(0, 3, 1, 2)
    want = _run(model, (images.astype(np.float32) / 255).transpose(0, 3, 1, 2))
    assert np.abs(got[:, 4] - want[:, 4]).max() < 4 / 256  # the scores
