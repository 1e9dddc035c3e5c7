"""The structural verifier every .tflite file passes before any interpreter reads it.

LiteRT and tflite-runtime load a file in-process and trust far more than its indices: that the
operators come in execution order (a tensor read before any operator writes it corrupts the
arena planner: tflite-runtime aborts with "double free or corruption", LiteRT returns garbage),
that no graph input is a constant (the image would be written over read-only weights), that a
constant's bytes cover its shape, and that the custom kernels their resolvers carry
(``TFLite_Detection_PostProcess``...) get the inputs they assume (both segfault otherwise).
LiteRT's own flatbuffer verifier checks offsets only. This module checks those facts on the
flatbuffer's lazy accessors, so nothing is unpacked: a 500 MB float file costs milliseconds and
no copy (it is read through ``mmap``). Each refusal is one line naming the file, the subgraph,
the operator or tensor, and the fix: re-convert the model. A file that passes may still crash
a kernel; :mod:`edgecnn.runtimes.isolation` runs such files once in a child process first.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import EdgecnnError, ModelLoadError

MAX_SUBGRAPHS = 1024
MAX_OPERATORS = 100_000  # in all subgraphs; the largest CNNs edgecnn meets hold about 1,000
MAX_TENSORS = 1_000_000
MAX_RANK = 16
CUSTOM = 32
# ops whose options name other subgraphs (control flow, StableHLO regions) or hand the graph to
# a delegate: edgecnn writes none, and the interpreters trust those indices
SUBGRAPH_OPS = {"CALL", "IF", "WHILE", "CALL_ONCE", "DELEGATE", "STABLEHLO_WHILE",
                "STABLEHLO_CASE", "STABLEHLO_REDUCE", "STABLEHLO_REDUCE_WINDOW",
                "STABLEHLO_SCATTER", "STABLEHLO_SORT", "STABLEHLO_COMPOSITE"}
# the one custom op edgecnn produces: Vela's Ethos-U command stream (targets/ethos_u.py); no
# host interpreter has a kernel for it (LiteRT stops cleanly: "unresolved custom op"), and its
# scratch inputs are workspace that no operator writes
KNOWN_CUSTOM = {"ethos-u"}
# bytes per element of each TensorType; the packed types hold several elements per byte
ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 15: 4,
            16: 2, 18: 2, 21: 1, 22: 1}
PER_BYTE = {17: 2, 19: 4, 20: 2}  # INT4, INT2, UINT4


def verify_tflite(path: Path, buf: Any = None) -> None:
    """Refuse ``path`` (or its bytes ``buf``) unless it is a well-formed, runnable graph."""
    if buf is not None:
        _verify(path, buf)
        return
    with _mapped(path) as data:
        _verify(path, data)


@contextmanager
def _mapped(path: Path) -> Iterator[Any]:
    with open(path, "rb") as handle:
        try:
            data: Any = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # an empty file, a pipe
            data = handle.read()
        try:
            yield data
        finally:
            if isinstance(data, mmap.mmap):
                data.close()


def _verify(path: Path, buf: Any) -> None:
    from edgecnn.converters.tflite_schema import schema

    if len(buf) < 8 or bytes(buf[4:8]) != b"TFL3":
        raise ModelLoadError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        _Checker(path, buf, schema().Model.GetRootAs(buf, 0)).run()
    except EdgecnnError:
        raise
    except Exception:  # struct.error, IndexError...: an offset that leaves the file
        raise ModelLoadError(f"{path}: TFLite flatbuffer is corrupt or truncated") from None


def _ints(table: Any, field: str) -> np.ndarray:
    """An int vector field of a lazy flatbuffer table; empty when absent."""
    if getattr(table, f"{field}IsNone")():
        return np.zeros(0, np.int64)
    return np.asarray(getattr(table, f"{field}AsNumpy")(), np.int64)


def _text(raw: Any) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")


class _Checker:
    """One pass over a lazy ``Model``: counts first, then each subgraph's tensors and ops."""

    def __init__(self, path: Path, buf: Any, model: Any) -> None:
        from edgecnn.converters.tflite_schema import schema

        self.path, self.buf, self.model = path, buf, model
        self.names = {v: k for k, v in vars(schema().BuiltinOperator).items()
                      if not k.startswith("_")}

    def fail(self, where: str, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path}: TFLite {where} {what}; re-convert the model")

    def run(self) -> None:
        model = self.model
        graphs, codes, buffers = (model.SubgraphsLength(), model.OperatorCodesLength(),
                                  model.BuffersLength())
        if graphs > MAX_SUBGRAPHS:
            raise self.fail("file", f"has {graphs:,} subgraphs (edgecnn takes at most "
                                    f"{MAX_SUBGRAPHS:,})")
        if model.ExternalBuffersLength():
            raise self.fail("file", "keeps tensors in external buffers, which edgecnn never "
                                    "reads")
        self.codes = [self._opcode(i) for i in range(codes)]
        self.buffers = [self._buffer(model.Buffers(i)) for i in range(buffers)]
        operators = sum(model.Subgraphs(g).OperatorsLength() for g in range(graphs))
        tensors = sum(model.Subgraphs(g).TensorsLength() for g in range(graphs))
        if operators > MAX_OPERATORS or tensors > MAX_TENSORS:
            raise self.fail("file", f"has {operators:,} operators and {tensors:,} tensors "
                                    f"(edgecnn takes at most {MAX_OPERATORS:,} and "
                                    f"{MAX_TENSORS:,})")
        for g in range(graphs):
            _Graph(self, g, model.Subgraphs(g)).run()

    def _opcode(self, index: int) -> tuple[int, str]:
        code = self.model.OperatorCodes(index)
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        return builtin, _text(code.CustomCode()) if builtin == CUSTOM else ""

    def _buffer(self, buffer: Any) -> int:
        """The bytes a buffer holds (-1 for none): inline, or at (offset, size) in the file."""
        if buffer is None:
            return -1
        offset, size = int(buffer.Offset()), int(buffer.Size())
        if offset > 1:
            if offset + size > len(self.buf):
                raise self.fail("file", f"has a buffer at bytes {offset:,}+{size:,}, past its "
                                        f"end ({len(self.buf):,})")
            return size
        return -1 if buffer.DataIsNone() or not buffer.DataLength() else int(buffer.DataLength())


class _Graph:
    """The checks of one subgraph; ``available`` grows as the operators run in order."""

    def __init__(self, checker: _Checker, index: int, graph: Any) -> None:
        self.c, self.g, self.graph = checker, index, graph
        self.count = graph.TensorsLength()
        self.tensors = [graph.Tensors(t) for t in range(self.count)]
        self.inputs = [int(i) for i in _ints(graph, "Inputs")]
        self.outputs = [int(i) for i in _ints(graph, "Outputs")]
        self.constant: set[int] = set()
        self.variable: set[int] = set()
        self.empty: set[int] = set()  # zero elements: nothing to read, written or not

    def where(self, tensor: int | None = None) -> str:
        if tensor is None:
            return f"subgraph {self.g}"
        name = _text(self.tensors[tensor].Name()) if 0 <= tensor < self.count else ""
        return f"subgraph {self.g} tensor {tensor} ({name[:80]!r})"

    def run(self) -> None:
        for t in range(self.count):
            self.check_tensor(t)
        for kind, indices in (("input", self.inputs), ("output", self.outputs)):
            for t in indices:
                if not 0 <= t < self.count:
                    raise self.c.fail(self.where(), f"names graph {kind} {t} of "
                                                    f"{self.count} tensors")
                if t in self.constant:
                    raise self.c.fail(self.where(t), f"is a graph {kind} and a constant "
                                                     "(its buffer holds data)")
        if not self.inputs or not self.outputs:
            raise self.c.fail(self.where(), "has no inputs or no outputs")
        written = self.check_operators()
        for t in self.outputs:
            if t not in written and t not in self.inputs:
                raise self.c.fail(self.where(t), "is a graph output that no operator computes")

    # -- tensors --------------------------------------------------------------------------
    def check_tensor(self, t: int) -> None:
        from edgecnn.files.limits import check_allocation

        tensor = self.tensors[t]
        kind, shape = int(tensor.Type()), [int(d) for d in _ints(tensor, "Shape")]
        signature = [int(d) for d in _ints(tensor, "ShapeSignature")]
        if kind not in ITEMSIZE and kind not in PER_BYTE:
            raise self.c.fail(self.where(t), f"has type {kind}, which no model edgecnn runs "
                                             "uses (strings, resources, variants)")
        if tensor.Sparsity() is not None or tensor.ExternalBuffer() or (
                tensor.VariantTensorsLength()):
            raise self.c.fail(self.where(t), "is sparse, external or a variant, which edgecnn "
                                             "never writes")
        if len(shape) > MAX_RANK or any(d < 0 for d in shape):
            raise self.c.fail(self.where(t), f"has shape {shape[:MAX_RANK + 1]} (negative "
                                             f"dims or rank over {MAX_RANK})")
        if signature and (len(signature) != len(shape) or any(
                s < -1 or (s != -1 and s != d) for s, d in zip(signature, shape, strict=False))):
            raise self.c.fail(self.where(t), f"has shape_signature {signature[:MAX_RANK + 1]} "
                                             f"that does not fit its shape {shape}")
        buffer = int(tensor.Buffer())
        if not 0 <= buffer < len(self.c.buffers):
            raise self.c.fail(self.where(t), f"uses buffer {buffer} of {len(self.c.buffers)}")
        check_allocation(f"{self.c.path}: TFLite {self.where(t)}", shape,
                         ITEMSIZE.get(kind, 1), "re-convert the model")
        if tensor.IsVariable():
            self.variable.add(t)
        if not math.prod(shape):
            self.empty.add(t)
        held = self.c.buffers[buffer] if buffer else -1
        if held >= 0:
            self.check_constant(t, kind, shape, signature, held)
        self.check_quantization(t, tensor.Quantization(), shape)

    def check_constant(self, t: int, kind: int, shape: list[int], signature: list[int],
                       held: int) -> None:
        count = math.prod(shape)
        expected = ({count * ITEMSIZE[kind]} if kind in ITEMSIZE
                    else {-(-count // PER_BYTE[kind]), count})  # packed, or one per byte
        if held not in expected:
            raise self.c.fail(self.where(t), f"declares shape {shape} ({min(expected):,} bytes) "
                                             f"but its buffer holds {held:,}")
        if -1 in signature:
            raise self.c.fail(self.where(t), f"is a constant with a free dimension "
                                             f"{signature}")
        self.constant.add(t)

    def check_quantization(self, t: int, quant: Any, shape: list[int]) -> None:
        if quant is None:
            return
        scales, zeros = quant.ScaleLength(), quant.ZeroPointLength()
        if scales > 1 or zeros > 1:
            axis = int(quant.QuantizedDimension())
            if not 0 <= axis < len(shape) or scales != shape[axis] or zeros not in (0, scales):
                raise self.c.fail(self.where(t), f"has {scales} scales and {zeros} zero points "
                                                 f"on axis {axis} of shape {shape}")

    # -- operators ------------------------------------------------------------------------
    def check_operators(self) -> set[int]:
        """Walk the operators in file order, as the interpreters run them: every input must
        exist by then, and every output is written once, by one operator."""
        available = set(self.inputs) | self.constant | self.variable
        written: set[int] = set()
        for o in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(o)
            name = self.check_opcode(o, int(op.OpcodeIndex()))
            where = f"subgraph {self.g} operator {o} ({name})"
            # Vela's ethos-u op reads its scratch areas (tensors no op writes) as workspace
            workspace = name == "CUSTOM"
            for t in (int(i) for i in _ints(op, "Intermediates")):
                if not 0 <= t < self.count:
                    raise self.c.fail(where, f"names intermediate tensor {t} of {self.count}")
            for t in (int(i) for i in _ints(op, "Inputs")):
                if t == -1:
                    continue
                if not 0 <= t < self.count:
                    raise self.c.fail(where, f"reads tensor {t} of {self.count}")
                if t not in available and not workspace and t not in self.empty:
                    raise self.c.fail(where, f"reads tensor {t} before any operator writes it "
                                             "(the operators are not in execution order)")
            for t in (int(i) for i in _ints(op, "Outputs")):
                if t == -1:
                    continue
                if not 0 <= t < self.count:
                    raise self.c.fail(where, f"writes tensor {t} of {self.count}")
                if t in written or t in self.constant or t in self.inputs:
                    what = ("a graph input" if t in self.inputs else "a constant"
                            if t in self.constant else "already written by an earlier operator")
                    raise self.c.fail(where, f"writes tensor {t}, which is {what}")
                written.add(t)
                available.add(t)
        return written

    def check_opcode(self, o: int, index: int) -> str:
        if not 0 <= index < len(self.c.codes):
            raise self.c.fail(f"subgraph {self.g} operator {o}",
                              f"uses opcode {index} of {len(self.c.codes)}")
        code, custom = self.c.codes[index]
        name = self.c.names.get(code, f"BUILTIN_{code}")
        if code == CUSTOM and custom not in KNOWN_CUSTOM:
            raise ModelLoadError(
                f"{self.c.path}: TFLite subgraph {self.g} operator {o} is the custom op "
                f"{custom[:80]!r}; edgecnn runs only builtin ops (custom kernels trust their "
                "inputs): re-convert the model without it")
        if name in SUBGRAPH_OPS or code < 0:
            raise self.c.fail(f"subgraph {self.g} operator {o} ({name})",
                              "is control flow or a delegate, which edgecnn never writes and "
                              "does not run")
        return name
