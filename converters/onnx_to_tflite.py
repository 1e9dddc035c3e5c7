"""ONNX (float or int8 QDQ) -> TFLite flatbuffer, written by edgecnn itself: no TensorFlow.

The graph is read into a float view with quantisation annotations (:mod:`onnx_graph`), checked
for unsupported ops all at once, lowered node by node through the op registry
(:mod:`edgecnn.converters.ops`), and serialised with the official LiteRT schema. Inside the model
every feature map is NHWC; the only TRANSPOSE ever written is the optional one for NCHW input.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgecnn.converters import qdq
from edgecnn.converters.islands import lower_float_island, needs_float
from edgecnn.converters.lowering import (
    BatchAxisMoved,
    LoweringContext,
    Value,
    default_perm,
    reshape,
    to_tflite_shape,
)
from edgecnn.converters.onnx_graph import Graph, load_graph, unsupported
from edgecnn.converters.ops import LOWERINGS
from edgecnn.converters.tflite_builder import QuantParams, TFLiteBuilder
from edgecnn.converters.tflite_schema import min_runtime_for
from edgecnn.errors import ConversionError, ParameterError, UnsupportedOpsError
from edgecnn.files import metadata

IO_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8}
# what an int8 file is written for (--for): cpu keeps float islands where an int8 kernel is
# inexact or slower (the fastest CPU file); npu and mcu write every op integer-only, as NPU
# compilers (Vela) and FPU-less microcontrollers need, or refuse the op in one line
INT8_TARGETS = ("cpu", "npu", "mcu")


@dataclass(frozen=True)
class TFLiteConfig:
    """Interface choices; the graph inside is always NHWC and, for QDQ input, full-integer."""

    io_dtype: str | None = None  # None: float32 for float models, int8 for int8 models
    nchw_input: bool = False
    target: str = "cpu"  # INT8_TARGETS

    def __post_init__(self) -> None:
        if self.io_dtype is not None and self.io_dtype not in IO_DTYPES:
            raise ParameterError(f"io_dtype={self.io_dtype!r}; choose from "
                                 f"{', '.join(IO_DTYPES)}", "io_dtype")
        if self.target not in INT8_TARGETS:
            raise ParameterError(f"int8_for={self.target!r}; choose from "
                                 f"{', '.join(INT8_TARGETS)}", "int8_for")

    @property
    def integer_only(self) -> bool:
        return self.target != "cpu"


@dataclass(frozen=True)
class TFLiteModel:
    data: bytes
    ops: list[tuple[str, int]]
    min_runtime: str | None
    quantized: bool
    input_quant: QuantParams | None
    output_quant: QuantParams | None


def supported_ops() -> list[str]:
    """Every ONNX op type a model may contain: the lowerings plus what clean-up removes."""
    return sorted([*LOWERINGS, "Dropout", "Identity"])


def convert_onnx_to_tflite(model: onnx.ModelProto, source: str,
                           config: TFLiteConfig = TFLiteConfig(),
                           weights_dir: Path | None = None) -> TFLiteModel:
    """Lower ``model`` to TFLite bytes; raises ConversionError naming what cannot convert.
    ``weights_dir``: where the side files of a model saved with external data are."""
    # a file declaring a batch above 1 keeps it while shapes are inferred: a Flatten over the
    # batch axis then shows as one, where at batch 1 it would look like a batch-free reshape
    graph = load_graph(model, source, batch=_inferred_batch(model), weights_dir=weights_dir)
    missing = unsupported(graph, LOWERINGS)
    if missing:
        listed = "; ".join(f"{op} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
                           for op, names in sorted(missing.items()))
        raise UnsupportedOpsError(f"{source}: no TFLite lowering for {listed}; supported: "
                                  f"{', '.join(supported_ops())}")
    # an int8 graph whose first or last layer was kept float (an accuracy budget), or int16,
    # has float I/O
    float_io = graph.quantized and any(
        name not in graph.act_quant or graph.act_quant[name].int16
        for name in [graph.input_name, *graph.output_names])
    io_dtype = config.io_dtype or ("int8" if graph.quantized and not float_io else "float32")
    if io_dtype != "float32" and any(graph.act_quant[name].int16 for name in [
            graph.input_name, *graph.output_names] if name in graph.act_quant):
        raise ConversionError(f"{source}: the model's input or output is int16 (a 16x8 layer); "
                              f"io_dtype={io_dtype} needs it 8-bit: drop io_dtype",
                              parameters=("io_dtype",))
    if not graph.quantized and io_dtype != "float32":
        raise ConversionError(f"{source}: io_dtype={io_dtype} needs an int8 model; add int8=True",
                              parameters=("io_dtype", "int8"))
    moved: str | None = None
    try:
        ctx, input_quant, output_quant = _lower(graph, source, config, io_dtype, fixed_batch=False)
    except BatchAxisMoved as exc:
        moved = str(exc)  # outside this block the failed pass's builder is freed
    if moved is not None:
        if graph.declared_batch is None:  # a free batch: a fixed-batch file would be another model
            raise ConversionError(f"{moved}; export the model with a fixed batch of 1 "
                                  "(torch.export with a batch-1 example) to convert it for "
                                  "that batch")
        # a fixed-batch export (batch 1: ViT's attention; or the batch the file declares):
        # written for that batch, where no axis is special
        ctx, input_quant, output_quant = _lower(graph, source, config, io_dtype, fixed_batch=True)
    builder = ctx.builder
    card = next((p.value for p in model.metadata_props if p.key == metadata.ONNX_CARD), None)
    if card:
        builder.metadata[metadata.TFLITE_CARD] = card.encode()
    if graph.quantized:  # validate finds this file's QDQ reference by the fingerprint
        builder.metadata[metadata.TFLITE_QDQ_FINGERPRINT] = qdq.fingerprint(model, str(weights_dir or "")).encode()
        builder.metadata[metadata.TFLITE_INPUT_QUANTIZATION] = json.dumps(
            {"dtype": io_dtype, "scale": input_quant.scale[0] if input_quant else None,
             "zero_point": input_quant.zero_point[0] if input_quant else None}).encode()
        builder.metadata[metadata.TFLITE_LAYOUTS] = _stored_layouts(ctx)
    graph.constants.clear()  # the weights the lowering read: the builder holds what it wrote
    graph.constants.lazy.clear()
    int16 = builder.int16()  # before serialize releases the tensors
    data = builder.serialize(release=True)
    return TFLiteModel(data, builder.used_ops(), min_runtime_for(builder.used_ops(), int16),
                       graph.quantized, input_quant, output_quant)


def _inferred_batch(model: onnx.ModelProto) -> int:
    """The batch shapes are inferred at: the one the image input declares when above 1, else 1
    (the file is still written with a free batch unless an op moves it)."""
    from edgecnn.converters.onnx_passes import declared_batch

    try:
        declared = declared_batch(model)
    except StopIteration:  # no image input: load_graph refuses it in its own words
        return 1
    return declared if declared is not None and declared > 1 else 1


def _lower(graph: Graph, source: str, config: TFLiteConfig, io_dtype: str, *,
           fixed_batch: bool) -> tuple[LoweringContext, QuantParams | None, QuantParams | None]:
    """Write every node of ``graph`` into a new builder: the lowering pass itself."""
    builder = TFLiteBuilder(f"edgecnn: {source}")
    builder.fixed_batch = fixed_batch
    ctx = LoweringContext(graph, builder)
    ctx.integer_only = ctx.int8 and config.integer_only
    input_quant = _add_input(ctx, io_dtype, config.nchw_input)
    for node in graph.nodes:
        if id(node) in ctx.skipped:
            continue
        lowering = LOWERINGS.get(node.op_type)
        if ctx.int8 and needs_float(ctx, node):
            lower_float_island(ctx, node, lowering)
        else:
            lowering(ctx, node)
    return ctx, input_quant, _add_outputs(ctx, io_dtype)


def _stored_layouts(ctx: LoweringContext) -> bytes:
    """How each activation whose TFLite tensor keeps its ONNX name is stored, where that is not
    the default (NHWC at rank 4, the ONNX order otherwise): the layer check
    (:mod:`edgecnn.checks.int8_self_check`) reads it to compare and feed integers in the same order. A
    flattened value's column order is zlib-compressed (it is a few regular runs)."""
    layouts: dict[str, dict[str, object]] = {}
    for name, value in ctx.values.items():
        if value.tensor >= len(ctx.builder.tensors) or ctx.builder.tensors[value.tensor].name != name:
            continue
        if value.perm == default_perm(len(value.perm)) and value.column_order is None:
            continue
        entry: dict[str, object] = {"perm": list(value.perm)}
        if value.column_order is not None:
            packed = zlib.compress(np.asarray(value.column_order, "<u4").tobytes(), 9)
            entry["columns"] = base64.b64encode(packed).decode()
        layouts[name] = entry
    return json.dumps(layouts, separators=(",", ":")).encode()


def _io_params(params: QuantParams, dtype: str) -> QuantParams:
    if dtype == "uint8":
        return QuantParams(params.scale, tuple(z + 128 for z in params.zero_point))
    return params


def _add_input(ctx: LoweringContext, io_dtype: str, nchw: bool) -> QuantParams | None:
    name = ctx.graph.input_name
    nchw_shape = ctx.shape(name)
    nhwc_shape = to_tflite_shape(nchw_shape)
    quant = ctx.quant(name) if name in ctx.graph.act_quant or not ctx.int8 else None
    if ctx.int8 and quant is None and io_dtype != "float32":
        raise ConversionError(f"{ctx.graph.source}: input {name!r} is float in the QDQ graph "
                              f"(its first layer is kept float); drop io_dtype={io_dtype}",
                              parameters=("io_dtype",))
    io_quant = _io_params(quant, io_dtype) if quant is not None else None
    outer_shape = nchw_shape if nchw else nhwc_shape
    outer_quant = io_quant if io_dtype != "float32" else None  # float input: quantised inside
    tensor = ctx.builder.add_tensor(name, outer_shape, IO_DTYPES[io_dtype], quant=outer_quant,
                                    dynamic_batch=True)
    ctx.builder.inputs.append(tensor)
    if nchw:
        perm = ctx.int_const(name + "/to_nhwc", [0, 2, 3, 1])
        moved = ctx.builder.add_tensor(name + "/nhwc", nhwc_shape, IO_DTYPES[io_dtype],
                                       quant=outer_quant, dynamic_batch=True)
        ctx.add_op("TRANSPOSE", [tensor, perm], [moved])
        tensor = moved
    if ctx.int8 and io_dtype != "int8" and quant is not None:
        inner = ctx.scratch(name + "/int8", nhwc_shape, quant)
        ctx.add_op("QUANTIZE", [tensor], [inner])
        tensor = inner
    ctx.values[name] = Value(tensor, default_perm(len(nchw_shape)))
    return io_quant


def _add_outputs(ctx: LoweringContext, io_dtype: str) -> QuantParams | None:
    io_quant = None
    for name in ctx.graph.output_names:
        value = ctx.value(name)  # outputs leave in the default layout (NHWC for rank 4)
        if value.column_order is not None:
            raise ConversionError(f"{ctx.graph.source}: output {name!r} is a flattened feature map;"
                                  " end the model with a fully-connected layer")
        tensor = value.tensor
        if ctx.builder.tensors[tensor].name != name:  # transposed at the end, or an alias
            copy = ctx.builder.add_tensor(name, ctx.builder.tensor_shape(tensor),
                                          ctx.builder.tensor_dtype(tensor),
                                          quant=ctx.builder.tensor_quant(tensor),
                                          dynamic_batch=True)
            reshape(ctx, tensor, ctx.builder.tensor_shape(tensor), copy, name + "/shape")
            tensor = copy
        real = ctx.builder.tensor_dtype(tensor) == np.float32
        if ctx.int8 and real and io_dtype != "float32":
            raise ConversionError(f"{ctx.graph.source}: output {name!r} is float in the QDQ "
                                  f"graph; io_dtype={io_dtype} needs it quantised",
                                  parameters=("io_dtype",))
        if ctx.int8 and io_dtype != "int8" and not real:
            quant = ctx.builder.tensor_quant(tensor)
            ctx.builder.tensors[tensor].name = name + "/int8"
            shape = ctx.builder.tensor_shape(tensor)
            if io_dtype == "float32":
                out = ctx.builder.add_tensor(name, shape, np.float32, dynamic_batch=True)
                ctx.add_op("DEQUANTIZE", [tensor], [out])
            else:
                io_quant = _io_params(quant, io_dtype)
                out = ctx.builder.add_tensor(name, shape, np.uint8, quant=io_quant,
                                             dynamic_batch=True)
                ctx.add_op("QUANTIZE", [tensor], [out])
            tensor = out
        elif ctx.int8:
            io_quant = ctx.builder.tensor_quant(tensor)
        ctx.builder.outputs.append(tensor)
    return io_quant
