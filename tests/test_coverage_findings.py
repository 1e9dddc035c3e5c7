"""What the detector and segmenter coverage run (scripts/detector_coverage.py, issue 22) found,
each pinned by a small case.

* segmentation-models-pytorch's FPN merges its pyramid as ``torch.stack(xs).sum(dim=0)``, which
  exports as Unsqueeze(0) of each map, Concat(axis 0) and ReduceSum(axes [0], keepdims 0). The
  lowering read the stack's first axis as the batch and refused the sum ("ReduceSum 'node_sum_1'
  reduces over the batch axis; TFLite models keep the batch"), so every smp FPN failed. The ONNX
  clean-up now writes it as a chain of Add, the same sum.
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
