"""Access to the official LiteRT flatbuffer schema, plus the op-version facts we rely on.

The schema is the generated object API that ships with ai-edge-litert
(``ai_edge_litert.schema_py_generated``); we never hand-roll field offsets. Minimum runtime
versions per (op, version) are TensorFlow Lite's own table (``runtime_version.cc``), restricted to
the ops edgecnn writes, so ``inspect`` can say which runtimes can run a model.
"""

from __future__ import annotations

from types import ModuleType

from edgecnn.errors import ConversionError


def schema() -> ModuleType:
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        raise ConversionError("writing TFLite needs the ai-edge-litert package (its flatbuffer "
                              "schema); pip install ai-edge-litert") from None
    return schema_py_generated


# (builtin op name, version) -> oldest TensorFlow Lite runtime that implements it.
MIN_RUNTIME = {
    ("ABS", 1): "1.13.1",
    ("ADD", 1): "1.5.0", ("ADD", 2): "1.14.0",
    ("DIV", 1): "1.6.0",
    ("EXP", 1): "1.7.0",
    ("NEG", 1): "1.9.0",
    ("PRELU", 1): "1.8.0",
    ("SQRT", 1): "1.10.0",
    ("SUB", 1): "1.6.0", ("SUB", 2): "1.14.0",
    ("AVERAGE_POOL_2D", 1): "1.5.0", ("AVERAGE_POOL_2D", 2): "1.14.0",
    ("CONCATENATION", 1): "1.5.0", ("CONCATENATION", 2): "1.14.0",
    ("CONV_2D", 1): "1.5.0", ("CONV_2D", 3): "1.14.0",
    ("DEPTHWISE_CONV_2D", 1): "1.5.0", ("DEPTHWISE_CONV_2D", 2): "1.12.0",
    ("DEPTHWISE_CONV_2D", 3): "1.14.0",
    ("DEQUANTIZE", 1): "1.13.1", ("DEQUANTIZE", 2): "1.14.0",
    ("FULLY_CONNECTED", 1): "1.5.0", ("FULLY_CONNECTED", 4): "1.14.0",
    ("HARD_SWISH", 1): "1.15.0",
    ("LEAKY_RELU", 1): "1.13.1", ("LEAKY_RELU", 2): "2.3.0",
    ("LOGISTIC", 1): "1.14.0", ("LOGISTIC", 2): "1.14.0",
    ("MAX_POOL_2D", 1): "1.5.0", ("MAX_POOL_2D", 2): "1.14.0",
    ("MAXIMUM", 1): "1.14.0", ("MAXIMUM", 2): "1.14.0",
    ("MEAN", 1): "1.6.0", ("MEAN", 2): "1.14.0",
    ("REDUCE_MAX", 1): "1.11.0", ("REDUCE_MAX", 2): "1.14.0",
    ("SUM", 1): "1.10.0", ("SUM", 2): "1.15.0",
    ("REDUCE_MIN", 1): "1.11.0", ("REDUCE_MIN", 2): "1.14.0",
    ("REDUCE_PROD", 1): "1.11.0",
    ("LOG", 1): "1.14.0",
    ("MINIMUM", 1): "1.14.0", ("MINIMUM", 2): "1.14.0",
    ("MUL", 1): "1.5.0", ("MUL", 2): "1.14.0",
    ("PAD", 1): "1.5.0", ("PAD", 2): "1.14.0",
    ("PADV2", 1): "1.9.0", ("PADV2", 2): "1.14.0",
    ("QUANTIZE", 1): "1.14.0", ("QUANTIZE", 2): "1.15.0",
    ("RELU", 1): "1.5.0", ("RELU", 2): "2.1.0",
    ("RELU6", 1): "1.5.0", ("RELU6", 2): "1.14.0",
    ("RELU_N1_TO_1", 1): "1.5.0",
    ("RESHAPE", 1): "1.5.0",
    ("SOFTMAX", 1): "1.5.0", ("SOFTMAX", 2): "1.14.0",
    ("SPLIT", 1): "1.5.0", ("SPLIT", 2): "1.14.0", ("SPLIT", 3): "1.14.0",
    ("TANH", 1): "1.14.0", ("TANH", 2): "1.14.0",
    ("TRANSPOSE", 1): "1.6.0", ("TRANSPOSE", 2): "1.14.0",
    ("SPLIT_V", 1): "1.13.1", ("SPLIT_V", 2): "2.3.0",
    ("STRIDED_SLICE", 1): "1.6.0", ("STRIDED_SLICE", 2): "1.14.0",
    ("GATHER", 1): "1.6.0", ("GATHER", 2): "1.14.0",
    ("RESIZE_BILINEAR", 1): "1.7.0", ("RESIZE_BILINEAR", 2): "1.14.0",
    ("RESIZE_BILINEAR", 3): "2.2.0",
    ("RESIZE_NEAREST_NEIGHBOR", 1): "1.13.1", ("RESIZE_NEAREST_NEIGHBOR", 2): "1.14.0",
    ("RESIZE_NEAREST_NEIGHBOR", 3): "2.3.0",
    ("TRANSPOSE_CONV", 1): "1.9.0", ("TRANSPOSE_CONV", 2): "2.2.0",
    ("TRANSPOSE_CONV", 3): "2.3.0",
    ("RSQRT", 1): "1.10.0",
    ("SHAPE", 1): "1.13.1",
    ("SQUARED_DIFFERENCE", 1): "1.13.1",
    ("BATCH_MATMUL", 1): "2.3.0", ("BATCH_MATMUL", 2): "2.3.0",
    ("GELU", 1): "2.9.0", ("GELU", 2): "2.9.0",
    ("LOCAL_RESPONSE_NORMALIZATION", 1): "1.5.0",
    ("DEPTH_TO_SPACE", 1): "2.1.0",
    ("SPACE_TO_DEPTH", 1): "1.5.0", ("SPACE_TO_DEPTH", 2): "1.14.0",
    ("TILE", 1): "1.10.1", ("TILE", 3): "2.8.0",
    ("POW", 1): "1.10.0",
    # 16x8 forms (int16 activations): runtime_version.cc's entries for op_version.cc's numbers
    ("ADD", 3): "2.4.0", ("SUB", 5): "2.4.0", ("MUL", 4): "2.3.0",
    ("AVERAGE_POOL_2D", 3): "2.3.0", ("MAX_POOL_2D", 3): "2.3.0", ("MEAN", 3): "2.4.0",
    ("CONCATENATION", 3): "2.3.0", ("SOFTMAX", 3): "2.3.0", ("LOGISTIC", 3): "2.3.0",
    ("TANH", 3): "2.3.0", ("DEQUANTIZE", 3): "1.15.0", ("PAD", 3): "2.4.0",
    ("PADV2", 3): "2.4.0", ("TRANSPOSE", 5): "2.4.0", ("RELU", 3): "2.5.0",
    ("RELU6", 3): "2.5.0", ("SPLIT", 4): "2.3.0", ("RESIZE_BILINEAR", 4): "2.5.0",
    ("RESIZE_NEAREST_NEIGHBOR", 4): "2.4.0", ("GATHER", 4): "2.4.0",
    ("REDUCE_MAX", 3): "2.5.0", ("REDUCE_MIN", 3): "2.5.0", ("MAXIMUM", 4): "2.3.0",
    ("MINIMUM", 4): "2.3.0", ("BATCH_MATMUL", 3): "2.4.0",
}


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def op_name(code: int) -> str:
    names = {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}
    return names.get(code, f"BUILTIN_{code}")


# op_version.cc leaves several 16x8 kernels at version 1 (CONV_2D, DEPTHWISE_CONV_2D,
# FULLY_CONNECTED with int8 weights), so a file with int16 activations needs at least the
# runtime of TFLite's 16x8 forms (runtime_version.cc's ADD v3, MEAN v3, PAD v3: 2.4.0)
INT16_MIN_RUNTIME = "2.4.0"


def min_runtime_for(ops: list[tuple[str, int]], int16: bool = False) -> str | None:
    """Oldest runtime that runs every (op, version), and 16x8 kernels where ``int16`` (the
    file holds int16 activations); None if an op is not in the table."""
    versions = [INT16_MIN_RUNTIME] if int16 else []
    for op in ops:
        if op not in MIN_RUNTIME:
            return None
        versions.append(MIN_RUNTIME[op])
    return max(versions, key=version_key) if versions else "1.5.0"
