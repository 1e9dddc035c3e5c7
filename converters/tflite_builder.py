"""Build a TFLite flatbuffer from tensors and builtin operators, with the official schema.

A deliberately small surface: tensors (with optional constant data and quantisation), operators
with their options, graph inputs and outputs. Operator codes are deduplicated per (op, version)
and written with both the deprecated int8 code and the int32 code, so old and new runtimes read
them; constant buffers are 16-byte aligned as the TFLite converter aligns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flatbuffers
import numpy as np

from edgecnn.converters.op_versions import OpFacts, version_of
from edgecnn.converters.tflite_schema import MIN_RUNTIME, min_runtime_for, op_name, schema

BUFFER_ALIGNMENT = 16
TFLITE_FILE_ID = b"TFL3"
TENSOR_TYPES: dict[np.dtype, str] = {np.dtype(np.float32): "FLOAT32", np.dtype(np.int8): "INT8",
                np.dtype(np.uint8): "UINT8", np.dtype(np.int32): "INT32",
                np.dtype(np.int64): "INT64", np.dtype(np.int16): "INT16"}


@dataclass(frozen=True)
class QuantParams:
    """Affine quantisation ``real = scale * (q - zero_point)``; per-axis when ``axis`` is set."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    # an activation of TFLite's 16x8 mode: int16, zero point 0 (int8 weights beside it)
    int16: bool = False

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int, int16: bool = False) -> QuantParams:
        return cls((float(scale),), (int(zero_point),), int16=int16)

    @property
    def dtype(self) -> type:
        """The integer type of an activation with these parameters."""
        return np.int16 if self.int16 else np.int8

    def same_as(self, other: QuantParams | None) -> bool:
        return (other is not None and self.zero_point == other.zero_point
                and self.int16 == other.int16
                and np.allclose(self.scale, other.scale, rtol=1e-6, atol=0))


class TFLiteBuilder:
    """Accumulates one subgraph and serialises it to ``.tflite`` bytes."""

    def __init__(self, description: str) -> None:
        self.fb = schema()
        self.description = description
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [self.fb.BufferT()]  # buffer 0: the empty sentinel
        self.operators: list[Any] = []
        self.opcodes: dict[tuple[int, int], int] = {}
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.metadata: dict[str, bytes] = {}
        # a graph that moves its batch axis (ViT's attention) is written for its own batch only
        self.fixed_batch = False

    # -- tensors -------------------------------------------------------------------------
    def add_tensor(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type,
                   quant: QuantParams | None = None, data: np.ndarray | None = None,
                   dynamic_batch: bool = False) -> int:
        tensor = self.fb.TensorT()
        tensor.name = name
        tensor.shape = [int(d) for d in shape]
        if dynamic_batch and shape and not self.fixed_batch:
            tensor.shapeSignature = [-1, *tensor.shape[1:]]
        tensor.type = getattr(self.fb.TensorType, TENSOR_TYPES[np.dtype(dtype)])
        tensor.buffer = 0
        if data is not None:
            tensor.buffer = self._add_buffer(np.ascontiguousarray(data, dtype=dtype))
        if quant is not None:
            q = self.fb.QuantizationParametersT()
            q.scale = [float(s) for s in quant.scale]
            q.zeroPoint = [int(z) for z in quant.zero_point]
            q.quantizedDimension = quant.axis or 0
            tensor.quantization = q
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def add_constant(self, name: str, array: np.ndarray, quant: QuantParams | None = None) -> int:
        return self.add_tensor(name, tuple(array.shape), array.dtype, quant=quant, data=array)

    def tensor_shape(self, index: int) -> tuple[int, ...]:
        return tuple(self.tensors[index].shape)

    def tensor_quant(self, index: int) -> QuantParams | None:
        q = self.tensors[index].quantization
        if q is None or q.scale is None:
            return None
        return QuantParams(tuple(q.scale), tuple(q.zeroPoint),
                           q.quantizedDimension if len(q.scale) > 1 else None,
                           int16=self.tensors[index].type == self.fb.TensorType.INT16)

    def int16(self) -> bool:
        """Whether the file holds int16 activations (TFLite's 16x8 mode)."""
        return any(t.type == self.fb.TensorType.INT16 for t in self.tensors)

    def tensor_dtype(self, index: int) -> np.dtype:
        names: dict[int, np.dtype] = {getattr(self.fb.TensorType, v): k
                                      for k, v in TENSOR_TYPES.items()}
        return names[self.tensors[index].type]

    def _add_buffer(self, array: np.ndarray) -> int:
        buffer = _AlignedBuffer()
        buffer.data = array  # kept as the array: bytes are copied once, into the flatbuffer
        self.buffers.append(buffer)
        return len(self.buffers) - 1

    # -- operators -----------------------------------------------------------------------
    def add_operator(self, op: str, inputs: list[int], outputs: list[int], *,
                     options: Any = None) -> None:
        """Add builtin ``op``; its version is decided from its tensors' types and options by
        one table (converters/op_versions.py), never by the caller."""
        code = getattr(self.fb.BuiltinOperator, op)
        version = version_of(op, OpFacts([self.tensor_dtype(i) if i >= 0 else None
                                          for i in inputs],
                                         [self.tensor_dtype(i) for i in outputs], options))
        if (op, version) not in MIN_RUNTIME:
            raise AssertionError(f"{op} v{version} has no known minimum runtime")
        key = (code, version)
        if key not in self.opcodes:
            self.opcodes[key] = len(self.opcodes)
        operator = self.fb.OperatorT()
        operator.opcodeIndex = self.opcodes[key]
        operator.inputs = list(inputs)
        operator.outputs = list(outputs)
        if options is not None:
            type_name = type(options).__name__[:-1]  # Conv2DOptionsT -> Conv2DOptions
            operator.builtinOptionsType = getattr(self.fb.BuiltinOptions, type_name)
            operator.builtinOptions = options
        self.operators.append(operator)

    def options(self, name: str, **fields: Any) -> Any:
        """An options object, e.g. ``options("Conv2DOptions", strideW=1)``."""
        obj = getattr(self.fb, name + "T")()
        for key, value in fields.items():
            if not hasattr(obj, key):
                raise AttributeError(f"{name} has no field {key}")
            setattr(obj, key, value)
        return obj

    # -- serialisation -------------------------------------------------------------------
    def used_ops(self) -> list[tuple[str, int]]:
        return [(op_name(code), version) for code, version in self.opcodes]

    def serialize(self, release: bool = False) -> bytes:
        """The .tflite bytes. ``release`` drops each weight array once it is copied into the
        flatbuffer, so weights are not held twice at the peak; the builder is spent after."""
        fb = self.fb
        for buffer in self.buffers:
            buffer.release = release
        subgraph = fb.SubGraphT()
        subgraph.tensors = self.tensors
        subgraph.inputs = self.inputs
        subgraph.outputs = self.outputs
        subgraph.operators = self.operators
        subgraph.name = "main"
        model = fb.ModelT()
        model.version = 3
        model.description = self.description
        model.subgraphs = [subgraph]
        codes = sorted(self.opcodes.items(), key=lambda kv: kv[1])
        model.operatorCodes = []
        for (code, version), _ in codes:
            opcode = fb.OperatorCodeT()
            opcode.builtinCode, opcode.version = code, version
            # codes above 127 store 127 (PLACEHOLDER_FOR_GREATER_OP_CODES) in the old field
            opcode.deprecatedBuiltinCode = min(code, 127)
            model.operatorCodes.append(opcode)
        min_runtime = (min_runtime_for(self.used_ops(), self.int16()) or "").encode().ljust(
            16, b"\0")
        meta = {"min_runtime_version": min_runtime, **self.metadata}
        model.metadata = []
        model.buffers = list(self.buffers)
        for name, payload in meta.items():
            buffer = _AlignedBuffer()
            buffer.data = payload
            model.buffers.append(buffer)
            entry = fb.MetadataT()
            entry.name, entry.buffer = name, len(model.buffers) - 1
            model.metadata.append(entry)
        size = sum(0 if b.data is None else _nbytes(b.data) for b in model.buffers)
        builder = flatbuffers.Builder(size + (1 << 16))
        builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_ID)
        # one copy out of the builder's buffer (Output() slices it, and bytes() of that slice
        # would copy every weight a second time: 0.55 GB more at the peak for VGG19)
        return bytes(memoryview(builder.Bytes)[builder.Head():])


def _nbytes(data: np.ndarray | bytes) -> int:
    return data.nbytes if isinstance(data, np.ndarray) else len(data)


class _AlignedBuffer(schema().BufferT):  # type: ignore[misc]
    """A BufferT whose data vector is aligned to 16 bytes (the generated Pack aligns to 1)."""

    release = False  # drop the array once packed (serialize(release=True))
    data: np.ndarray | bytes | None

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 (flatbuffers API)
        fb = schema()
        data_offset = None
        if self.data is not None and len(self.data):
            # a byte view, not tobytes(): VGG's 411 MB classifier weight is not copied twice
            payload = (np.ascontiguousarray(self.data).data.cast("B")
                       if isinstance(self.data, np.ndarray) else self.data)
            builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
            builder.head = builder.head - len(payload)
            builder.Bytes[builder.head:builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            data_offset = builder.EndVector()
            if self.release:  # the bytes live in the flatbuffer now: let the array go
                self.data = None
        fb.BufferStart(builder)
        if data_offset is not None:
            fb.BufferAddData(builder, data_offset)
        return fb.BufferEnd(builder)
