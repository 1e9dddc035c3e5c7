"""Reading ONNX and TFLite model files, guarded, and the edgecnn card any artefact carries.

Every reader bounds what it is handed before anything parses it further (declared sizes, node
counts, tensor indices, the TFLite structure verifier): see docs/hostile-input.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import BadInputError, ModelLoadError
from edgecnn.files import metadata
from edgecnn.files.card import ModelCard, card_from_shapes


def load_onnx(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # DecodeError and friends for truncated or random bytes
        raise ModelLoadError(f"{path}: not a valid ONNX model ({type(exc).__name__}); re-export "
                             "it or check the file was copied whole") from None
    if not model.graph.node:
        raise ModelLoadError(f"{path}: ONNX file holds no graph; re-export it")
    from edgecnn.converters.qdq import check_quant_params
    from edgecnn.files.onnx_bounds import check_onnx_graph

    weights = {t.name for t in model.graph.initializer}
    if not [i for i in model.graph.input if i.name not in weights]:
        raise ModelLoadError(f"{path}: ONNX graph has no input (every graph input is a "
                             "constant); re-export it with the image as its input")
    check_declared_sizes(model, path)
    check_onnx_graph(model, path)
    check_quant_params(model, str(path))
    return model


def check_declared_sizes(model: Any, path: Path) -> None:
    """Refuse initializers whose dims disagree with their bytes, and constant-shaped tensors
    (ConstantOfShape) over the memory budget, before onnxruntime allocates them."""
    from onnx import helper, numpy_helper

    from edgecnn.files.limits import check_allocation

    for tensor in model.graph.initializer:
        if tensor.data_location == 1:  # external data: sized by its own file
            continue
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            continue
        count = int(np.prod(tensor.dims, dtype=np.float64)) if tensor.dims else 1
        if tensor.raw_data and len(tensor.raw_data) != count * itemsize:
            raise ModelLoadError(f"{path}: initializer {tensor.name!r} declares dims "
                                 f"{list(tensor.dims)} ({count * itemsize:,} bytes) but holds "
                                 f"{len(tensor.raw_data):,}; the file is corrupt: re-export it")
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: next((a.t for a in n.attribute if a.name == "value"), None)
                      for n in model.graph.node if n.op_type == "Constant"})
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or not node.input:
            continue
        shape_tensor = constants.get(node.input[0])
        if shape_tensor is None:
            continue
        shape = [int(d) for d in numpy_helper.to_array(shape_tensor).ravel()]
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        itemsize = (helper.tensor_dtype_to_np_dtype(value.data_type).itemsize
                    if value is not None else 4)
        check_allocation(f"{path}: ConstantOfShape node {node.name or node.output[0]!r}",
                         shape, itemsize, "the model cannot run in a bounded amount of memory")


def read_tflite(path: Path) -> Any:
    from edgecnn.converters.tflite_schema import schema
    from edgecnn.files.tflite_verify import verify_tflite

    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ModelLoadError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    fb = schema()
    try:
        model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(buf, 0))
    except Exception:
        raise ModelLoadError(f"{path}: TFLite flatbuffer is corrupt or truncated") from None
    check_tflite_indices(model, path)
    verify_tflite(path, buf)  # execution order, constants, shapes, custom ops: before any runtime
    return model, buf


def check_tflite_indices(model: Any, path: Path) -> None:
    """Bounds-check every index the file uses (opcodes, tensors, buffers, metadata), so neither
    edgecnn nor an interpreter ever reads past a table."""
    def bad(what: str) -> ModelLoadError:
        return ModelLoadError(f"{path}: TFLite file is corrupt ({what}); re-convert the model")

    buffers = len(model.buffers or [])
    codes = len(model.operatorCodes or [])
    if not model.subgraphs:
        raise bad("no subgraphs")
    for g, graph in enumerate(model.subgraphs):
        tensors = len(graph.tensors or [])
        for t, tensor in enumerate(graph.tensors or []):
            if not 0 <= tensor.buffer < max(buffers, 1):
                raise bad(f"tensor {t} of subgraph {g} uses buffer {tensor.buffer} of {buffers}")
        indices = [*(graph.inputs if graph.inputs is not None else []),
                   *(graph.outputs if graph.outputs is not None else [])]
        for o, op in enumerate(graph.operators or []):
            if not 0 <= op.opcodeIndex < codes:
                raise bad(f"operator {o} of subgraph {g} uses opcode {op.opcodeIndex} of {codes}")
            indices += [*(op.inputs if op.inputs is not None else []),
                        *(op.outputs if op.outputs is not None else [])]
        if any(not -1 <= int(i) < tensors for i in indices):
            raise bad(f"subgraph {g} refers to a tensor outside its {tensors}")
        if graph.inputs is None or not len(graph.inputs) or graph.outputs is None or not len(graph.outputs):
            raise bad(f"subgraph {g} has no inputs or no outputs")
    for meta in model.metadata or []:
        if not 0 <= meta.buffer < buffers:
            raise bad(f"metadata uses buffer {meta.buffer} of {buffers}")


def tflite_metadata(path: Path, name: str) -> bytes | None:
    """The bytes of one named metadata entry of a TFLite file, or None."""
    model, _ = read_tflite(path)
    for meta in model.metadata or []:
        key = meta.name.decode(errors="replace") if isinstance(meta.name, bytes) else meta.name
        if key == name and 0 <= meta.buffer < len(model.buffers or []):
            data = model.buffers[meta.buffer].data
            return bytes(data) if data is not None else b""
    return None


def read_card(path: Path, **torch_options: Any) -> ModelCard | None:
    """The edgecnn card carried by any artefact (sidecar, archive, ONNX metadata, TFLite);
    ``torch_options`` (trust_pickle, arch) apply to PyTorch files."""
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pt2"):
        from edgecnn.files.torch_files import load_torch_model
        return load_torch_model(path, **torch_options).card
    if suffix == ".onnx":
        from edgecnn.converters.torch_to_onnx import card_from_onnx
        return card_from_onnx(load_onnx(path), str(path))
    if suffix == ".tflite":
        data = tflite_metadata(path, metadata.TFLITE_CARD)
        return (ModelCard.from_json(data.decode(errors="replace"), str(path))
                if data is not None else None)
    raise BadInputError(f"{path}: unknown model format {path.suffix!r}")


def card_or_default(path: Path, shape: tuple[int, int, int] | None = None,
                    **torch_options: Any) -> ModelCard:
    card = read_card(path, **torch_options)
    if card is not None:
        return card
    if shape is None:
        raise ModelLoadError(f"{path}: carries no edgecnn card; its preprocessing is unknown")
    return card_from_shapes(path.stem, shape, derived_from="the file's input shape")
