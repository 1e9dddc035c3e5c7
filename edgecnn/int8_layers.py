"""An int8 TFLite file against its QDQ graph, layer by layer.

Deep int8 networks rarely match their QDQ reference bit for bit at the output: where a value
lies within float error of a rounding tie the two implementations can land one step apart, and
that step is the next layer's input, where it moves other values across ties. How far that
spreads depends on the weights (a random-weight ResNet amplifies it, and a classifier head can
multiply one input step by hundreds of output steps), so an output bound alone cannot tell
tie noise from a wrong lowering.

The layer check can: a layer whose inputs are identical integers on both sides must produce
outputs within one step of the reference (one tie), whatever its depth. A wrong scale, layout or
zero point breaks that at the first layer it touches, and that layer is named.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgecnn.converters.qdq import reference_inference_session

TIE_STEPS = 1  # one rounding tie: the most a layer with identical inputs may differ


@dataclass(frozen=True)
class LayerDiff:
    tensor: str
    max_steps: int
    differing: float  # share of values not identical
    inputs_identical: bool  # every int8 input of the producing op matched exactly


def _canonical_inputs(model: onnx.ModelProto) -> dict[str, list[str] | None]:
    """For each quantised tensor, the quantised tensors its op chain reads (None: unknown)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    weights = {t.name for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input} - weights

    def sources(node: onnx.NodeProto, seen: set[int]) -> list[str] | None:
        found: list[str] = []
        for name in node.input:
            if not name or name in weights:
                continue
            if name in graph_inputs:
                found.append(name)
                continue
            parent = producer.get(name)
            if parent is None or id(parent) in seen:
                return None
            if parent.op_type == "DequantizeLinear":
                if parent.input[0] in weights:
                    continue  # a weight
                q = producer.get(parent.input[0])
                if q is None or q.op_type != "QuantizeLinear":
                    return None
                found.append(q.input[0])
            elif parent.op_type == "QuantizeLinear":
                return None
            else:  # a float op between quantised tensors (a fused activation, an island)
                deeper = sources(parent, seen | {id(parent)})
                if deeper is None:
                    return None
                found += deeper
        return found

    result: dict[str, list[str] | None] = {}
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        if q.input[0] in weights:
            continue
        parent = producer.get(q.input[0])
        result[q.input[0]] = [] if parent is None else sources(parent, {id(parent)})
    return result


def compare_layers(qdq_path: Path, tflite_path: Path, x: np.ndarray,
                   interpreter_module: str = "ai_edge_litert.interpreter") -> list[LayerDiff]:
    """Every quantised activation of the TFLite file against the QDQ reference, in order."""
    model = onnx.load(str(qdq_path))
    weights = {t.name for t in model.graph.initializer}
    quantize = [n for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in weights]
    zero_types = {t.name: t.data_type for t in model.graph.initializer}
    encoding = {n.output[0]: zero_types.get(n.input[2], onnx.TensorProto.UINT8)
                for n in quantize}  # int8, or the uint8 (+128) encoding of converters/qdq.py
    inputs = _canonical_inputs(model)
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, kind, None)
                              for name, kind in encoding.items() if name not in known)
    session = reference_inference_session(model)
    del model
    reference = dict(zip([o.name for o in session.get_outputs()],
                         session.run(None, {session.get_inputs()[0].name: x}), strict=True))
    interpreter = importlib.import_module(interpreter_module).Interpreter(
        model_path=str(tflite_path), experimental_preserve_all_tensors=True)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [len(x), *x.shape[2:], x.shape[1]])
    interpreter.allocate_tensors()
    scale, zero = detail["quantization"]
    data = x.transpose(0, 2, 3, 1)
    if detail["dtype"] != np.float32:
        data = np.clip(np.round(data / scale) + zero, -128, 127).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], data)
    interpreter.invoke()
    tensors = {t["name"]: t["index"] for t in interpreter.get_tensor_details()}
    steps: dict[str, np.ndarray] = {}
    diffs = []
    for node in quantize:
        name = node.input[0]
        # a float graph input is quantised by the file's first op, into "<name>/int8"
        index = next((tensors[n] for n in (name, name + "/int8") if n in tensors
                      and interpreter.get_tensor(tensors[n]).dtype == np.int8), None)
        if index is None:
            continue
        ours = interpreter.get_tensor(index)
        theirs = reference[node.output[0]].astype(np.int32)
        if encoding[node.output[0]] == onnx.TensorProto.UINT8:
            theirs -= 128  # the same quantisation, stored +128
        if theirs.ndim == 4:
            theirs = theirs.transpose(0, 2, 3, 1)
        if ours.shape != theirs.shape:
            continue
        step = np.abs(ours.astype(np.int32) - theirs)
        steps[name] = step
        sources = inputs.get(name)
        exact = sources is not None and all(s in steps and not steps[s].any() for s in sources)
        diffs.append(LayerDiff(name, int(step.max()), float((step > 0).mean()), exact))
    return diffs


def first_unexplained(diffs: list[LayerDiff]) -> LayerDiff | None:
    """The first layer that differs by more than a tie although its inputs were identical."""
    return next((d for d in diffs if d.inputs_identical and d.max_steps > TIE_STEPS), None)
