"""Checks on an ONNX graph before anything builds, folds or runs it: sane names and types, a
bounded number of nodes, and a bounded size for every tensor it will compute.

A 262 KB file can make onnxruntime ask for 57 GB: ConstantOfShape, Pad, Resize, Range, Expand and
Tile take their output sizes from values, not from the size of the file. ONNX shape inference
reads those values and says how big every tensor will be without computing one, so it runs here
first. It runs twice: without data propagation, which sizes constant-fed ops and cannot be made to
materialise anything, then with it (``Shape -> Mul -> ConstantOfShape``) on a copy without Range
nodes, because propagating a Range materialises its whole output (``Range(0, 1e10)`` exhausts
memory inside ``infer_shapes``). A Range whose limits are computed from shapes is therefore sized
by onnxruntime when it runs, and refused there as an allocation failure.

Names and types are checked here too, because onnxruntime, ``onnx.reference`` and numpy answer a
dangling input or a scale of data type 99 with an error that names neither the node nor the fix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import helper

from edgecnn.errors import ModelLoadError
from edgecnn.files.limits import check_allocation

# ResNet-152 has ~500 nodes, the largest CNN exports a few thousand; a million Identity nodes in
# a 30 MB file otherwise takes onnxruntime past 2.5 GB before it fails natively.
MAX_NODES = int(os.environ.get("EDGECNN_MAX_NODES", 100_000))
# Integer constants up to this many elements go into the sizing model as values (shape
# arithmetic reads them); anything bigger goes in as a typed, shaped input, copied by shape only.
_SHAPE_CONSTANT_ELEMENTS = 1 << 16
_SMALL_ELEMENTS = 4096  # Resize scales, Pad values: small float constants go in as values too
_VALID_TYPES = {v for v in onnx.TensorProto.DataType.values() if v != onnx.TensorProto.UNDEFINED}
_FIX = "the model cannot run in a bounded amount of memory: re-export it with smaller sizes"


def check_onnx_graph(model: onnx.ModelProto, path: Path | str, batch: int | None = None) -> None:
    """Every check of this module, in the order that keeps each one cheap and safe."""
    check_node_count(model, path)
    check_names_and_types(model, path)
    check_tensor_sizes(model, path, batch)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for graph in attribute.graphs:
                    yield from _all_nodes(graph)


def check_node_count(model: onnx.ModelProto, path: Path | str) -> None:
    count = sum(1 for _ in _all_nodes(model.graph))
    if count > MAX_NODES:
        raise ModelLoadError(f"{path}: has {count:,} nodes, over edgecnn's {MAX_NODES:,} limit "
                             "(raise EDGECNN_MAX_NODES if the model is real)")


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or (node.output[0] if node.output else '?')!r}"


def check_names_and_types(model: onnx.ModelProto, path: Path | str) -> None:
    """Every value defined once (IR < 4 files may list an initializer among the inputs too),
    every node input defined somewhere, every constant of a real ONNX data type."""
    graph = model.graph
    initializers: set[str] = set()
    for tensor in graph.initializer:
        if tensor.name in initializers:
            raise ModelLoadError(f"{path}: initializer {tensor.name!r} is defined twice; "
                                 "re-export the model")
        initializers.add(tensor.name)
        if tensor.data_type not in _VALID_TYPES:
            raise ModelLoadError(f"{path}: initializer {tensor.name!r} has data type "
                                 f"{tensor.data_type}, not an ONNX type; the file is corrupt: "
                                 "re-export it")
    defined = initializers | {i.name for i in graph.input}
    for node in graph.node:  # in any order: onnxruntime sorts a graph, and names a cycle itself
        for out in node.output:
            if out and out in defined:
                raise ModelLoadError(f"{path}: {_label(node)} writes {out!r}, which is already "
                                     "defined; re-export the model")
        defined.update(o for o in node.output if o)
    for node in graph.node:
        missing = next((i for i in node.input if i and i not in defined), None)
        if missing is not None:
            raise ModelLoadError(f"{path}: {_label(node)} reads {missing!r}, which no input, "
                                 "initializer or node defines; re-export the model")
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and value.data_type not in _VALID_TYPES:
                raise ModelLoadError(f"{path}: {_label(node)} holds data type "
                                     f"{value.data_type}, not an ONNX type; the file is corrupt: "
                                     "re-export it")


def _elements(tensor: onnx.TensorProto) -> int:
    return math.prod(int(d) for d in tensor.dims)


def _sizing_model(model: onnx.ModelProto, batch: int | None,
                  drop_ops: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """A copy for shape inference only: concrete image inputs, integer constants as values,
    weights as typed inputs (nothing large is copied)."""
    graph = model.graph
    listed = {i.name for i in graph.input}
    values, typed = [], []
    for tensor in graph.initializer:
        integer = tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        small = _elements(tensor) <= (_SHAPE_CONSTANT_ELEMENTS if integer else _SMALL_ELEMENTS)
        if small:
            values.append(tensor)
        elif tensor.name not in listed:
            typed.append(helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                       list(tensor.dims)))
    inputs = []
    for value in graph.input:
        concrete = onnx.ValueInfoProto()
        concrete.CopyFrom(value)
        for axis, dim in enumerate(concrete.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                dim.dim_value = batch if (axis == 0 and batch) else 1
        inputs.append(concrete)
    nodes = [n for n in graph.node if n.op_type not in drop_ops]
    sizing = helper.make_graph(nodes, graph.name or "sizing", inputs + typed,
                               list(graph.output), values)
    return helper.make_model(sizing, opset_imports=model.opset_import, ir_version=max(
        model.ir_version, 4))


def _inferred(model: onnx.ModelProto, data_prop: bool) -> list[onnx.ValueInfoProto]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
    except Exception:  # inference errors are reported, with their node, by the code that runs it
        return []
    return [*inferred.graph.value_info, *inferred.graph.output]


def check_tensor_sizes(model: onnx.ModelProto, path: Path | str, batch: int | None = None,
                       fix: str = _FIX) -> None:
    """Refuse a graph any of whose tensors, sized by shape inference at ``batch`` (the batch
    it will run at; symbolic sizes count as 1), would exceed the one-array memory limit."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for value in model.graph.input:
        _check_value(value, path, None, "input", batch, fix)
    for data_prop, drop in ((False, frozenset()), (True, frozenset({"Range"}))):
        for value in _inferred(_sizing_model(model, batch, drop), data_prop):
            _check_value(value, path, producers.get(value.name), "tensor", batch, fix)


def _check_value(value: onnx.ValueInfoProto, path: Path | str, producer: onnx.NodeProto | None,
                 kind: str, batch: int | None, fix: str) -> None:
    tensor_type = value.type.tensor_type
    dims = tensor_type.shape.dim
    if not tensor_type.HasField("shape"):
        return
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
             (batch or 1) if axis == 0 else 1 for axis, d in enumerate(dims)]
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 4
    where = f" (output of {_label(producer)})" if producer is not None else ""
    check_allocation(f"{path}: {kind} {value.name!r}{where}", shape, itemsize, fix)
