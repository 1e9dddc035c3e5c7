"""`edgecnn inspect`: what a model file is, what it takes and returns, and what it is made of."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import BadInputError, ModelLoadError
from edgecnn.files import metadata
from edgecnn.files.model_files import load_onnx, read_tflite, tflite_metadata

ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16"}


@dataclass
class TensorInfo:
    name: str
    shape: list[int | str]
    dtype: str
    layout: str = ""
    quantization: str = ""


@dataclass
class ModelInfo:
    path: str
    format: str
    parameters: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    ops: list[dict[str, Any]]  # op, count (and version for TFLite)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fixed_batch(path: Path) -> int | None:
    """The batch ``path`` was exported for, when it has one (a batch-1 torch.export program, an
    ONNX input with a numeric batch, a TFLite input without a free batch); None when any batch
    runs. Pickled .pt modules take any batch."""
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        from edgecnn.files.torch_files import load_torch_model

        return load_torch_model(path).static_batch
    if suffix in (".onnx", ".tflite"):
        inputs = inspect_model(path).inputs
        batch = inputs[0].shape[0] if inputs and inputs[0].shape else None
        return batch if isinstance(batch, int) and batch > 0 else None
    return None


def inspect_model(path: str | Path, *, trust_pickle: bool = False,
                  arch: str | None = None) -> ModelInfo:
    """Describe any model file; ``trust_pickle`` and ``arch`` apply to PyTorch files."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pt2"):
        return _inspect_torch(path, trust_pickle, arch)
    if suffix == ".onnx":
        return _inspect_onnx(path)
    if suffix == ".tflite":
        return _inspect_tflite(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such model file")
    raise BadInputError(f"{path}: unknown model format {path.suffix!r}; use .pt, .pt2, .onnx "
                        "or .tflite")


def _inspect_torch(path: Path, trust_pickle: bool, arch: str | None) -> ModelInfo:
    from edgecnn.files.torch_files import load_torch_model

    model = load_torch_model(path, trust_pickle=trust_pickle, arch=arch)
    spec = model.card.input
    ops: Counter[str] = Counter()
    if model.exported is not None:
        for node in model.exported.graph.nodes:
            if node.op == "call_function":
                ops[str(node.target).replace("aten.", "").split(".")[0]] += 1
    elif hasattr(model.module, "graph"):
        for node in model.module.graph.nodes():
            ops[node.kind().replace("aten::", "")] += 1
    elif hasattr(model.module, "modules"):
        for module in model.module.modules():
            if not list(module.children()):
                ops[type(module).__name__] += 1
    inputs = [TensorInfo("input", ["batch", *spec.shape], spec.dtype, spec.layout,
                         f"x = (pixels * {spec.pixel_scale:.6g} - {list(spec.mean)}) / "
                         f"{list(spec.std)}")]
    outputs = [TensorInfo("logits", ["batch", len(model.card.labels)], "float32")]
    return ModelInfo(str(path), f"pytorch ({model.format})", model.card.parameters, inputs,
                     outputs, [{"op": k, "count": v} for k, v in ops.most_common()],
                     {"card": model.card.to_dict()})


def _onnx_tensor(value: Any) -> TensorInfo:
    t = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return TensorInfo(value.name, shape, ONNX_DTYPES.get(t.elem_type, str(t.elem_type)),
                      "NCHW" if len(shape) == 4 else "")


def _inspect_onnx(path: Path) -> ModelInfo:
    from onnx import numpy_helper


    model = load_onnx(path)
    inits = {t.name for t in model.graph.initializer}
    params, overhead = _onnx_parameters(model)
    ops = Counter(n.op_type for n in model.graph.node)
    inputs = [_onnx_tensor(i) for i in model.graph.input if i.name not in inits]
    outputs = [_onnx_tensor(o) for o in model.graph.output]
    quant = next((p.value for p in model.metadata_props if p.key == metadata.ONNX_QUANTIZATION), "")
    if not quant and ops.get("QuantizeLinear"):
        quant = "QDQ int8"
    if quant:
        for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
            if q.input[0] == inputs[0].name:
                consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
                          if t.name in q.input[1:]}
                scale = consts.get(q.input[1]) if len(q.input) > 1 else None
                zero = consts.get(q.input[2]) if len(q.input) > 2 else None
                if scale is None or scale.size != 1 or (zero is not None and zero.size != 1):
                    inputs[0].quantization = "quantised inside (computed scale)"
                    continue  # a scale computed by the graph: onnxruntime checks it when run
                inputs[0].quantization = (f"quantised inside: scale {float(scale.ravel()[0]):.6g}"
                                          f", zero point "
                                          f"{int(zero.ravel()[0]) if zero is not None else 0}")
    opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return ModelInfo(str(path), "onnx" + (" int8 QDQ" if quant else " fp32"), params, inputs,
                     outputs, [{"op": k, "count": v} for k, v in ops.most_common()],
                     {"opset": opset, "quantization": quant, "producer": model.producer_name,
                      "int8 encoding": _encoding_line(model),
                      "quantisation parameters": overhead})


def _encoding_line(model: Any) -> str:
    """The int8 encoding and what running it exactly in onnxruntime takes (converters/qdq.py)."""
    from edgecnn.converters import qdq

    name = qdq.encoding(model)
    note = qdq.ENCODING_NOTES.get(name or "")
    return f"{name} ({note})" if note else (name or "none")


FLOAT_TYPES = (1, 10, 11, 16)  # ONNX float, float16, double, bfloat16


def _onnx_parameters(model: Any) -> tuple[int, int]:
    """The float model's parameter count, whatever the encoding: weights (float or 8-bit) and
    biases (float or int32), never shape constants; scales and zero points counted apart."""
    roles = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            roles.update({name: "quant" for name in node.input[1:3]})
            roles.setdefault(node.input[0], "data")
    params = overhead = 0
    for t in model.graph.initializer:
        size = int(np.prod(t.dims)) if t.dims else 1
        if roles.get(t.name) == "quant":
            overhead += size
        elif t.data_type in FLOAT_TYPES or roles.get(t.name) == "data" and t.data_type in (2, 3, 6):
            params += size
    return params, overhead


def _tflite_parameters(model: Any, graph: Any, fb: Any) -> tuple[int, int]:
    """As :func:`_onnx_parameters`, for TFLite: constant weights and int32 bias slots."""
    from edgecnn.converters.tflite_schema import op_name

    bias_slots = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}
    biases = set()
    for op in graph.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        slot = bias_slots.get(op_name(max(code.builtinCode, code.deprecatedBuiltinCode)))
        if slot is not None and op.inputs is not None and len(op.inputs) > slot:
            biases.add(int(op.inputs[slot]))
    weight_types = (fb.TensorType.FLOAT32, fb.TensorType.FLOAT16, fb.TensorType.INT8,
                    fb.TensorType.UINT8)
    params = overhead = 0
    for index, t in enumerate(graph.tensors or []):
        data = model.buffers[t.buffer].data
        if data is None or not len(data):
            continue
        if t.type in weight_types or (t.type == fb.TensorType.INT32 and index in biases):
            params += int(np.prod(t.shape))
            q = t.quantization
            if q is not None and q.scale is not None:
                overhead += len(q.scale) + len(q.zeroPoint if q.zeroPoint is not None else [])
    return params, overhead


def _inspect_tflite(path: Path) -> ModelInfo:
    from edgecnn.converters.tflite_schema import MIN_RUNTIME, min_runtime_for, op_name, schema

    model, _ = read_tflite(path)
    fb = schema()
    type_names = {v: k.lower() for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    graph = model.subgraphs[0]

    def tensor(index: int, output: bool = False) -> TensorInfo:
        t = graph.tensors[index]
        shape = list(t.shapeSignature if t.shapeSignature is not None else t.shape)
        shape = ["batch" if (i == 0 and d == -1) else int(d) for i, d in enumerate(shape)]
        q = t.quantization
        quant = ""
        if q is not None and q.scale is not None and len(q.scale):
            quant = f"scale {q.scale[0]:.6g}, zero point {q.zeroPoint[0]}"
        # TFLite feature maps are NHWC; only an input written with --nchw-input is NCHW
        layout = ("" if len(shape) != 4 else "NHWC" if output
                  else "NHWC" if shape[-1] in (1, 3) and shape[1] not in (1, 3) else "NCHW")
        name = t.name.decode(errors="replace") if isinstance(t.name, bytes) else t.name
        return TensorInfo(name, shape, type_names.get(t.type, str(t.type)), layout, quant)

    counts: Counter[tuple[str, int]] = Counter()
    islands: Counter[str] = Counter()
    float_type = fb.TensorType.FLOAT32
    quantised = any(t.quantization is not None and t.quantization.scale is not None
                    and len(t.quantization.scale) and t.type != float_type for t in graph.tensors)
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = op_name(max(code.builtinCode, code.deprecatedBuiltinCode))
        counts[(name, code.version)] += 1
        if quantised and name not in ("DEQUANTIZE", "QUANTIZE") and any(
                graph.tensors[i].type == float_type and graph.tensors[i].buffer == 0
                for i in op.outputs):
            islands[name] += 1  # an int8 model computing this op in float
    used = list(counts)
    params, overhead = _tflite_parameters(model, graph, fb)
    inputs = [tensor(i) for i in graph.inputs]
    recorded = tflite_metadata(path, metadata.TFLITE_INPUT_QUANTIZATION)
    if recorded and inputs[0].dtype == "float32":  # float I/O: the first op quantises
        try:
            inner = json.loads(recorded)
            inputs[0].quantization = (f"quantised inside: scale {inner['scale']:.6g}, zero point "
                                      f"{inner['zero_point']}")
        except (ValueError, KeyError, TypeError):
            pass
    return ModelInfo(
        str(path), "tflite", params, inputs,
        [tensor(o, output=True) for o in graph.outputs],
        [{"op": op, "version": v, "count": n,
          "min_runtime": MIN_RUNTIME.get((op, v), "unknown")} for (op, v), n in counts.items()],
        {"oldest_runtime": min_runtime_for(used, any(
            t.type == fb.TensorType.INT16 for t in graph.tensors))
         or "unknown (op not in TFLite's version table)",
         "schema_version": model.version, "transpose_ops": counts_of(counts, "TRANSPOSE"),
         "quantisation parameters": overhead,
         **({"float islands": ", ".join(f"{op} x{n}" for op, n in islands.items())}
            if islands else {})})


def counts_of(counts: Counter[tuple[str, int]], op: str) -> int:
    return sum(n for (name, _), n in counts.items() if name == op)
