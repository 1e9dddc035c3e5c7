"""Write a large ONNX model as one file without a second copy of its weights in memory.

``ModelProto.SerializeToString()`` builds the whole file in memory next to the proto (VGG19:
575 MB twice). A protobuf message is the concatenation of its encoded fields, so the file can be
written as the model without its graph, then the graph's field (tag, total length) and the
graph's own fields, each weight encoded alone and released once written. Readers see the same
message: only the order of fields differs, which protobuf allows.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import onnx

GRAPH_FIELD = 7  # ModelProto.graph
INITIALIZER_FIELD = 5  # GraphProto.initializer
LENGTH_DELIMITED = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field: int) -> bytes:
    return _varint(field << 3 | LENGTH_DELIMITED)


def _without(message: onnx.ModelProto | onnx.GraphProto, skipped: str) -> bytes:
    """``message`` encoded without its field ``skipped`` (and without copying that field)."""
    shell = type(message)()
    for descriptor, value in message.ListFields():
        if descriptor.name == skipped:
            continue
        target = getattr(shell, descriptor.name)
        repeated = (descriptor.is_repeated if hasattr(descriptor, "is_repeated")
                    else descriptor.label == descriptor.LABEL_REPEATED)  # older protobuf
        if repeated:
            target.extend(value)
        elif descriptor.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(shell, descriptor.name, value)
    return shell.SerializeToString()


def write_model(model: onnx.ModelProto, handle: BinaryIO, release: bool = False) -> int:
    """Encode ``model`` into ``handle`` one weight at a time; the bytes written. ``release``
    drops each weight's data once written (the proto is spent afterwards)."""
    head = _without(model, "graph")
    graph = model.graph
    graph_head = _without(graph, "initializer")
    sizes = [tensor.ByteSize() for tensor in graph.initializer]
    body = len(graph_head) + sum(len(_key(INITIALIZER_FIELD)) + len(_varint(n)) + n
                                 for n in sizes)
    written = handle.write(head) + handle.write(_key(GRAPH_FIELD) + _varint(body))
    written += handle.write(graph_head)
    for tensor, size in zip(graph.initializer, sizes, strict=True):
        written += handle.write(_key(INITIALIZER_FIELD) + _varint(size))
        written += handle.write(tensor.SerializeToString())
        if release:
            tensor.ClearField("raw_data")
    return written


def save_model(model: onnx.ModelProto, path: Path, release: bool = False) -> int:
    with open(path, "wb") as handle:
        return write_model(model, handle, release)
