"""What an op lowering needs: values in TFLite layout, constants, quantisation, and helpers.

Layout is tracked per value rather than fixed per rank. Each ONNX value is stored as a TFLite
tensor equal to the ONNX tensor transposed by ``Value.perm``: rank-4 feature maps default to
NHWC, everything else to the ONNX order. Layout-agnostic lowerings (Transpose, Reshape, Squeeze,
elementwise ops, Concat, Split, Slice, Reduce, Softmax) map their axes through ``perm`` and pass a
layout on, so an ONNX Transpose costs nothing and a permute/flatten/permute chain lands in NHWC
without a TRANSPOSE op. A TRANSPOSE is written only where a consumer needs an order the data is
not in (:meth:`LoweringContext.in_layout`), e.g. the reshape that closes a channel shuffle.

A 2-D value produced by folding a flatten keeps ``column_order`` (the NCHW flat index of each
NHWC column) so that the next fully-connected layer permutes its weight columns instead of the
graph transposing data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx

from edgecnn.converters.onnx_graph import Graph, WeightQuant, attr, node_label
from edgecnn.converters.tflite_builder import QuantParams, TFLiteBuilder
from edgecnn.errors import ConversionError

FUSED_NONE, FUSED_RELU, FUSED_RELU_N1_TO_1, FUSED_RELU6 = 0, 1, 2, 3
NCHW_TO_NHWC = (0, 2, 3, 1)


@dataclass(frozen=True)
class Value:
    """An ONNX value materialised as a TFLite tensor: ``tensor == onnx_value.transpose(perm)``."""

    tensor: int
    perm: tuple[int, ...]
    column_order: np.ndarray | None = None  # for flattened values, see module docstring

    @property
    def nhwc(self) -> bool:
        return self.perm == NCHW_TO_NHWC


def default_perm(rank: int) -> tuple[int, ...]:
    """The layout a value of this rank takes unless a lowering chooses another."""
    return NCHW_TO_NHWC if rank == 4 else tuple(range(rank))


def permuted(shape: tuple[int, ...], perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[i] for i in perm)


def to_tflite_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return permuted(tuple(shape), default_perm(len(shape)))


def storage_axis(perm: tuple[int, ...], axis: int) -> int:
    """Where ONNX axis ``axis`` lies in a tensor stored with ``perm``."""
    return perm.index(axis)


class LoweringContext:
    """State shared by the lowerings while one graph is written."""

    def __init__(self, graph: Graph, builder: TFLiteBuilder) -> None:
        self.graph = graph
        self.builder = builder
        self.int8 = graph.quantized
        self.island = False  # lowering a float island inside an int8 graph (converters/islands)
        self.integer_only = False  # an int8 file for an NPU or MCU: no float op anywhere
        self.values: dict[str, Value] = {}
        self.skipped: set[int] = set()

    # -- reading the ONNX side ------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.graph.shapes:
            raise ConversionError(f"{self.graph.source}: shape of {name!r} is unknown after shape "
                                  "inference; export with static image dimensions")
        return self.graph.shapes[name]

    def is_const(self, name: str) -> bool:
        return name in self.graph.constants

    def const(self, node: onnx.NodeProto, index: int) -> np.ndarray:
        name = node.input[index]
        if name not in self.graph.constants:
            raise ConversionError(f"{self.graph.source}: {node_label(node)} input {index} "
                                  f"({name!r}) must be a constant for TFLite")
        return np.asarray(self.graph.constants[name])

    def weight_quant(self, name: str) -> WeightQuant | None:
        return self.graph.weight_quant.get(name)

    def quant(self, name: str) -> QuantParams | None:
        """Activation quantisation of ``name``; int8 graphs must have it for every activation."""
        if self.island:
            return None  # islands compute in float; their outputs are quantised afterwards
        params = self.graph.act_quant.get(name)
        if self.int8 and params is None:
            producer = self.graph.producer(name)
            origin = f" (output of {node_label(producer)})" if producer is not None else ""
            raise ConversionError(f"{self.graph.source}: tensor {name!r}{origin} has no Q/DQ "
                                  "pair, so the QDQ model leaves it float; a full-integer TFLite "
                                  "model needs every activation quantised: convert in float")
        return params

    attr = staticmethod(attr)

    def stored(self, name: str) -> Value:
        """``name`` in whatever layout it was written (for layout-aware lowerings)."""
        if name not in self.values:
            raise ConversionError(f"{self.graph.source}: {name!r} is used before it is produced")
        return self.values[name]

    def feature_map(self, node: onnx.NodeProto, name: str) -> Value:
        """``name`` in its stored layout, for ops that index its axes: a flattened feature map
        (whose columns a dense layer will permute) has no axes left to index."""
        stored = self.stored(name)
        if stored.column_order is not None:
            raise ConversionError(f"{self.graph.source}: {node.op_type} {node.name!r} reads a "
                                  "flattened feature map; apply it before flattening")
        return stored

    def value(self, name: str) -> Value:
        """``name`` in its rank's default layout (NHWC for rank 4), transposed there if needed."""
        stored = self.stored(name)
        if stored.column_order is not None:
            return stored
        return self.in_layout(name, default_perm(len(stored.perm)))

    def in_layout(self, name: str, perm: tuple[int, ...]) -> Value:
        """``name`` stored with ``perm``: one TRANSPOSE (cached per layout) when it is not."""
        stored = self.stored(name)
        perm = tuple(perm)
        if stored.perm == perm:
            return stored
        key = f"{name}@{','.join(map(str, perm))}"
        if key not in self.values:
            onnx_shape = self.shape(name)
            moved = transpose_tensor(self, stored.tensor, permuted(onnx_shape, stored.perm),
                                     tuple(stored.perm.index(a) for a in perm), key)
            self.values[key] = Value(moved, perm)
        return self.values[key]

    # -- writing the TFLite side ----------------------------------------------------------
    @property
    def act_dtype(self) -> type:
        return np.int8 if self.int8 else np.float32

    def dtype_for(self, quant: QuantParams | None) -> type:
        """An activation's TFLite type: int8, or int16 where the QDQ graph quantises it to
        16 bits (TFLite's 16x8 mode); float32 outside int8 graphs."""
        if not self.int8:
            return np.float32
        return quant.dtype if quant is not None else np.int8

    def new_value(self, name: str, shape: tuple[int, ...], quant: QuantParams | None,
                  perm: tuple[int, ...] | None = None,
                  column_order: np.ndarray | None = None) -> Value:
        """Create the TFLite tensor for ONNX value ``name`` (shape given in TFLite layout)."""
        index = self.builder.add_tensor(name, shape, self.dtype_for(quant), quant=quant,
                                        dynamic_batch=True)
        value = Value(index, tuple(perm) if perm is not None else default_perm(len(shape)),
                      column_order)
        self.values[name] = value
        return value

    def output_value(self, name: str, *, quant: QuantParams | None = None,
                     column_order: np.ndarray | None = None,
                     perm: tuple[int, ...] | None = None) -> Value:
        """The tensor for ONNX output ``name``, stored with ``perm`` (default: its rank's)."""
        q = quant if quant is not None else self.quant(name)
        shape = self.shape(name)
        perm = tuple(perm) if perm is not None else default_perm(len(shape))
        return self.new_value(name, permuted(shape, perm), q, perm=perm,
                              column_order=column_order)

    def scratch(self, name: str, shape: tuple[int, ...], quant: QuantParams | None) -> int:
        """An intermediate tensor: int8, or int16 (a 16x8 layer's), where it has quantisation
        parameters, float32 where it has none (a float island's, in an int8 file)."""
        dtype = self.dtype_for(quant) if quant is not None else np.float32
        return self.builder.add_tensor(name, shape, dtype, quant=quant, dynamic_batch=True)

    def add_op(self, op: str, inputs: list[int], outputs: list[int], *,
               options: object = None) -> None:
        """Emit builtin ``op``; its version follows from its tensors (converters/op_versions.py)."""
        self.builder.add_operator(op, inputs, outputs, options=options)

    def options(self, name: str, **fields: object) -> object:
        if name in ("AddOptions", "SubOptions"):
            # int16 ADD/SUB with any scales, as QDQ graphs choose them; the schema's default
            # (true) expects power-of-two scales. int8 kernels ignore the field
            fields.setdefault("potScaleInt16", False)
        return self.builder.options(name, **fields)

    def int_const(self, name: str, values: npt.ArrayLike) -> int:
        return self.builder.add_constant(name, np.asarray(values, np.int32))

    # -- fusion and requantisation --------------------------------------------------------
    def fuse_activation(self, node: onnx.NodeProto) -> tuple[int, str]:
        """If ``node``'s only consumer is Relu/Relu6-like, absorb it: (fused code, output name)."""
        out = node.output[0]
        users = self.graph.consumers(out)
        if len(users) != 1 or out in self.graph.output_names:
            return FUSED_NONE, out
        user = users[0]
        code = self.activation_code(user)
        if code is None:
            return FUSED_NONE, out
        self.skipped.add(id(user))
        return code, user.output[0]

    def activation_code(self, node: onnx.NodeProto) -> int | None:
        if node.op_type == "Relu":
            return FUSED_RELU
        if node.op_type == "Clip":
            low, high = self.clip_bounds(node)
            codes: dict[tuple[float | None, float | None], int] = {
                (0.0, 6.0): FUSED_RELU6, (-1.0, 1.0): FUSED_RELU_N1_TO_1, (0.0, None): FUSED_RELU}
            return codes.get((low, high))
        return None

    def clip_bounds(self, node: onnx.NodeProto) -> tuple[float | None, float | None]:
        def bound(index: int, attr_name: str) -> float | None:
            if len(node.input) > index and node.input[index]:
                return float(self.const(node, index))
            value = attr(node, attr_name)
            return None if value is None else float(value)
        return bound(1, "min"), bound(2, "max")

    def requantize(self, source: int, name: str, target: QuantParams) -> int:
        """``source`` moved to ``target`` parameters, as the QDQ graph does it (see below)."""
        out = self.scratch(name, self.builder.tensor_shape(source), target)
        self.requantize_into(source, out)
        return out

    def requantize_into(self, source: int, out: int) -> None:
        """int8 -> int8 as DEQUANTIZE + QUANTIZE, not one int8 -> int8 QUANTIZE (but for an
        integer-only file).

        The QDQ graph requantises by dequantising to float and rounding x / scale. LiteRT's
        XNNPACK runs an int8 -> int8 QUANTIZE with an 8-bit fixed-point multiplier (scale
        ratio 0.4292 becomes 110/256, 0.1 % off), which moved 2 % of ShuffleNet's concatenated
        values by a step; the float round trip reproduces the QDQ arithmetic.
        """
        if self.integer_only:  # an NPU takes no float tensor: one int8 -> int8 QUANTIZE,
            # within a step of the above (int8 <-> int16 too: LiteRT, TFLite Micro and Vela
            # run it; tflite-runtime 2.14 cannot take int8 to int16)
            self.add_op("QUANTIZE", [source], [out])
            return
        shape = self.builder.tensor_shape(source)
        real = self.builder.add_tensor(self.builder.tensors[out].name + "/float", shape,
                                       np.float32, dynamic_batch=True)
        self.add_op("DEQUANTIZE", [source], [real])
        self.add_op("QUANTIZE", [real], [out])

    def with_params(self, tensor: int, params: QuantParams | None, name: str) -> int:
        """``tensor`` itself if it already has ``params``, else a requantised copy."""
        if not self.int8 or params is None or params.same_as(self.builder.tensor_quant(tensor)):
            return tensor
        return self.requantize(tensor, name, params)

    def fixed_output(self, node: onnx.NodeProto, op: str, inputs: list[int], fixed: QuantParams,
                     options: object = None, *, output: int = 0,
                     perm: tuple[int, ...] | None = None) -> None:
        """Emit ``op`` whose int8 kernel demands fixed output parameters, then requantise to the
        parameters the QDQ model chose, so the rest of the graph sees them unchanged."""
        name = node.output[output]
        wanted = self.quant(name)
        if not self.int8 or fixed.same_as(wanted):
            out = self.output_value(name, quant=fixed if self.int8 else None, perm=perm)
            self.add_op(op, inputs, [out.tensor], options=options)
            return
        shape = self.shape(name)
        tmp = self.scratch(name + "/fixed", permuted(shape, perm or default_perm(len(shape))),
                           fixed)
        self.add_op(op, inputs, [tmp], options=options)
        out = self.output_value(name, perm=perm)
        self.requantize_into(tmp, out.tensor)

    def same_params_output(self, node: onnx.NodeProto, op: str, inputs: list[int],
                           options: object = None, *,
                           perm: tuple[int, ...] | None = None) -> None:
        """Emit an op whose int8 kernel keeps its input's parameters (pooling, reshape, pad)."""
        source_q = self.builder.tensor_quant(inputs[0]) if self.int8 else None
        if source_q is None:
            out = self.output_value(node.output[0], perm=perm)
            self.add_op(op, inputs, [out.tensor], options=options)
            return
        self.fixed_output(node, op, inputs, source_q, options, perm=perm)


def pad_spatial(ctx: LoweringContext, x: int, explicit: list[tuple[int, int]], name: str,
                fill: float | None = None) -> int:
    """PAD an NHWC tensor's H and W by ``explicit`` (before, after) pairs.

    Without ``fill`` this pads with zeros (in int8 the zero point, which PAD uses by itself);
    with ``fill`` it writes PADV2 with that real value (e.g. the lowest value for max-pooling).
    """
    n, h, w, c = ctx.builder.tensor_shape(x)
    (top, bottom), (left, right) = explicit
    quant = ctx.builder.tensor_quant(x)
    paddings = ctx.int_const(name + "/paddings", [[0, 0], [top, bottom], [left, right], [0, 0]])
    out = ctx.scratch(name, (n, h + top + bottom, w + left + right, c), quant)
    if fill is None:
        ctx.add_op("PAD", [x, paddings], [out])
        return out
    constant = fill_constant(ctx, fill, quant, name + "/fill")
    ctx.add_op("PADV2", [x, paddings, constant], [out])
    return out


def fill_constant(ctx: LoweringContext, value: float, quant: QuantParams | None, name: str) -> int:
    """PADV2's one-element fill value, in the padded tensor's type and quantisation."""
    if quant is None:
        return ctx.builder.add_constant(name, np.array([value], np.float32))
    info = np.iinfo(quant.dtype)
    q = np.clip(round(value / quant.scale[0]) + quant.zero_point[0], info.min, info.max)
    return ctx.builder.add_constant(name, np.array([q], quant.dtype), quant)


def spatial_padding(ctx: LoweringContext, node: onnx.NodeProto, in_hw: tuple[int, int],
                    kernel: tuple[int, int], strides: tuple[int, int],
                    dilations: tuple[int, int] = (1, 1),
                    out_hw: tuple[int, int] | None = None,
                    allow_same: bool = True) -> tuple[str, list[tuple[int, int]]]:
    """Map ONNX padding to TFLite's SAME/VALID, plus explicit pads when neither matches.

    Returns (padding, explicit) where ``explicit`` holds (before, after) per spatial dim, all
    zero unless a PAD op must precede a VALID op. ``allow_same=False`` always gives explicit
    pads: TFLite's SAME average pooling leaves the padding out of the count, so an ONNX
    AveragePool with count_include_pad=1 (PyTorch's default) must pad zeros for real.
    """
    auto_pad = attr(node, "auto_pad", "NOTSET")
    same = []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations, strict=False):
        effective = (k - 1) * d + 1
        out = -(-size // s)
        total = max((out - 1) * s + effective - size, 0)
        same.append((total // 2, total - total // 2))
    if auto_pad in ("SAME_UPPER",):
        if allow_same:
            return "SAME", [(0, 0), (0, 0)]
        pads = same
    elif auto_pad == "VALID":
        pads = [(0, 0), (0, 0)]
    elif auto_pad == "SAME_LOWER":
        pads = [(b + a - (b + a) // 2, (b + a) // 2) for b, a in same]  # extra pad first
    else:
        raw = list(attr(node, "pads", [0, 0, 0, 0]))
        pads = [(raw[0], raw[2]), (raw[1], raw[3])]
    if out_hw is not None:  # ceil_mode: extend the end padding until the sizes match
        for i, (size, k, s, d) in enumerate(zip(in_hw, kernel, strides, dilations, strict=False)):
            effective = (k - 1) * d + 1
            while (size + pads[i][0] + pads[i][1] - effective) // s + 1 < out_hw[i]:
                pads[i] = (pads[i][0], pads[i][1] + 1)
    if all(p == (0, 0) for p in pads):
        return "VALID", pads
    if pads == same and out_hw is None and allow_same:
        return "SAME", [(0, 0), (0, 0)]
    return "VALID", pads


class BatchAxisMoved(ConversionError):
    """The graph moves or merges its batch axis (ViT's attention: a batch-1 export transposes
    (1, L, E) to (L, 1, E)): it converts for its own fixed batch instead (a second pass)."""


def batch_free(ctx: LoweringContext, shape: tuple[int, ...]) -> list[int]:
    """A RESHAPE target that leaves the batch free (-1), unless the file has a fixed batch."""
    return [int(d) for d in shape] if ctx.builder.fixed_batch else [-1, *map(int, shape[1:])]


def merged_transpose(shape: tuple[int, ...], perm: tuple[int, ...], free_batch: bool
                     ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The same transpose on the fewest axes: size-1 axes dropped, axes that stay neighbours
    merged (a free batch stays an axis of its own: it may change at run time)."""
    kept = [a for a in perm if shape[a] != 1 or (a == 0 and free_batch)]
    runs: list[list[int]] = []
    for axis in kept:
        if runs and axis == runs[-1][-1] + 1 and (runs[-1][0] != 0 or not free_batch):
            runs[-1].append(axis)
        else:
            runs.append([axis])
    by_start = sorted(runs, key=lambda run: run[0])
    merged_shape = tuple(int(np.prod([shape[a] for a in run])) for run in by_start)
    return merged_shape, tuple(by_start.index(run) for run in runs)


def transpose_tensor(ctx: LoweringContext, tensor: int, shape: tuple[int, ...],
                     perm: tuple[int, ...], name: str) -> int:
    """TRANSPOSE ``tensor`` (of ``shape``) by ``perm``, at the lowest rank that expresses it.

    Size-1 axes are dropped and axes that stay neighbours are merged first, so the channel
    shuffle's 5-D transpose becomes a 3-D one that TRANSPOSE v1/v2 (rank <= 4) runs on every
    runtime; RESHAPEs around it cost no arithmetic. More than 4 blocks left (mobilevitv2's
    unfold) are moved a block at a time (:func:`_move_blocks`).
    """
    if perm[0] != 0 and not ctx.builder.fixed_batch:
        raise BatchAxisMoved(f"{ctx.graph.source}: {name!r} would move the batch axis; "
                             "TFLite models keep the batch first")
    out_shape = permuted(shape, perm)
    merged_shape, merged_perm = merged_transpose(shape, perm, not ctx.builder.fixed_batch)
    quant = ctx.builder.tensor_quant(tensor)
    if merged_perm == tuple(range(len(merged_perm))):  # only unit axes move: the data does not
        out = ctx.scratch(name, out_shape, quant)
        reshape(ctx, tensor, out_shape, out, name + "/shape")
        return out
    source = tensor
    if merged_shape != shape:
        source = ctx.scratch(name + "/merged", merged_shape, quant)
        reshape(ctx, tensor, merged_shape, source, name + "/merged_shape")
    moved_shape = permuted(merged_shape, merged_perm)
    if len(merged_shape) > 4:
        moved = _move_blocks(ctx, source, merged_shape, merged_perm, name)
    else:
        moved = ctx.scratch(name + "/moved", moved_shape, quant)
        ctx.add_op("TRANSPOSE", [source, ctx.int_const(name + "/perm", merged_perm)], [moved])
    if moved_shape == out_shape:
        return moved
    out = ctx.scratch(name, out_shape, quant)
    reshape(ctx, moved, out_shape, out, name + "/shape")
    return out


def blocks_to_move(perm: tuple[int, ...]) -> list[int]:
    """The blocks that, each moved to the end in turn, turn the identity order into ``perm``.

    The longest increasing prefix of ``perm`` is already in order (the batch among it when it
    stays first), so only the blocks after it move: at most ``len(perm) - 1`` moves.
    """
    kept = 1
    while kept < len(perm) and perm[kept] > perm[kept - 1]:
        kept += 1
    return list(perm[kept:])


def _move_blocks(ctx: LoweringContext, tensor: int, shape: tuple[int, ...],
                 perm: tuple[int, ...], name: str) -> int:
    """A permutation of more than 4 merged blocks as a sequence of <= 4-D TRANSPOSEs.

    TFLite's TRANSPOSE takes 4 axes on every runtime we write for (TFLM and Vela included), so
    instead of one 6-D op each block still out of place moves to the end on its own: [pre, X,
    post] -> [pre, post, X] is a 3-D transpose (4-D with a free batch kept apart). Pure data
    movement, so exact in float and int8.
    """
    order = list(range(len(perm)))
    current = tensor
    for step, block in enumerate(blocks_to_move(perm)):
        at = order.index(block)
        move = (*range(at), *range(at + 1, len(order)), at)
        current = transpose_tensor(ctx, current, shape, move, f"{name}/move{step}")
        shape, order = permuted(shape, move), [order[a] for a in move]
    if tuple(order) != tuple(perm):
        raise AssertionError(f"{name}: block moves reached {order}, not {perm}")
    return current


def reshape(ctx: LoweringContext, source: int, shape: tuple[int, ...], out: int,
            name: str) -> None:
    """RESHAPE ``source`` into the existing tensor ``out``; the batch stays free (-1)."""
    new_shape = batch_free(ctx, shape)
    ctx.add_op("RESHAPE", [source, ctx.int_const(name, new_shape)], [out],
               options=ctx.options("ReshapeOptions", newShape=new_shape))
