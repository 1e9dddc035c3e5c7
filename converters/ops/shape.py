"""Layout ops: Reshape/Flatten/Squeeze/Unsqueeze, Transpose, Concat, Split, Slice, Gather, Pad,
and Identity (left in a quantised graph only as a requantisation).

Each maps its axes through the input's stored layout (``Value.perm``, see
:mod:`edgecnn.converters.lowering`) instead of assuming NCHW -> NHWC.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import onnx

from edgecnn.converters.lowering import (
    NCHW_TO_NHWC,
    BatchAxisMoved,
    LoweringContext,
    Value,
    batch_free,
    blocks_to_move,
    default_perm,
    fill_constant,
    merged_transpose,
    permuted,
)
from edgecnn.converters.ops import lower
from edgecnn.converters.tflite_builder import QuantParams
from edgecnn.errors import ConversionError

DENSE_OPS = {"Gemm", "MatMul"}
MAX_SEARCHED_AXES = 6  # output layouts tried by _one_transpose_layout: 720 at most


def _dense_column_order(ctx: LoweringContext, node: onnx.NodeProto,
                        source: Value) -> np.ndarray | None | bool:
    """For a flatten that only fully-connected layers read, the ONNX flat index of each stored
    column (None when they agree); False when the flatten must be computed for real."""
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if (source.column_order is not None or len(out_shape) != 2 or len(in_shape) < 3
            or source.perm[0] != 0
            or out_shape[0] != in_shape[0] or node.output[0] in ctx.graph.output_names):
        return False
    if not _read_by_dense_layers(ctx, node.output[0]):
        return False
    features = in_shape[1:]
    order = np.arange(int(np.prod(features))).reshape(features).transpose(
        [a - 1 for a in source.perm[1:]]).ravel()
    return None if np.array_equal(order, np.arange(order.size)) else order


def _read_by_dense_layers(ctx: LoweringContext, name: str) -> bool:
    """Whether only fully-connected layers read ``name`` as their input, directly or through
    requantisations (the Identity an int8 -> int16 conversion leaves), which keep its columns."""
    users = ctx.graph.consumers(name)
    return bool(users) and all(
        _read_by_dense_layers(ctx, u.output[0]) if u.op_type == "Identity"
        else u.op_type in DENSE_OPS and u.input[0] == name for u in users)


def _reshape(ctx: LoweringContext, node: onnx.NodeProto, x: int, out_shape: tuple[int, ...],
             perm: tuple[int, ...], order: np.ndarray | None = None) -> None:
    stored_shape = permuted(out_shape, perm)
    new_shape = batch_free(ctx, stored_shape)
    shape = ctx.int_const(node.output[0] + "/shape", new_shape)
    ctx.same_params_output(node, "RESHAPE", [x, shape],
                           ctx.options("ReshapeOptions", newShape=new_shape), perm=perm)
    if order is not None:
        value = ctx.values[node.output[0]]
        ctx.values[node.output[0]] = Value(value.tensor, perm, order)


def _groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Pair the shortest runs of non-batch, non-unit axes of ``a`` and ``b`` with equal sizes.

    A reshape only merges or splits neighbouring axes: each pair is one such merge/split.
    """
    ia = [i for i, d in enumerate(a) if d != 1 and i > 0]
    ib = [i for i, d in enumerate(b) if d != 1 and i > 0]
    groups, i, j = [], 0, 0
    while i < len(ia) and j < len(ib):
        ga, gb = [ia[i]], [ib[j]]
        pa, pb = a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(ia):
                ga.append(ia[i])
                pa, i = pa * a[ia[i]], i + 1
            elif pb < pa and j < len(ib):
                gb.append(ib[j])
                pb, j = pb * b[ib[j]], j + 1
            else:
                return None
        groups.append((ga, gb))
    return groups if i == len(ia) and j == len(ib) else None


def _order_of(groups: list[tuple[list[int], list[int]]], side: int,
              axes: list[int]) -> list[int] | None:
    """Group indices in the order ``axes`` visits them, if each group's axes are contiguous and
    ascending there (the only way a RESHAPE of that storage order expresses the merge/split)."""
    order, k = [], 0
    while k < len(axes):
        index = next((g for g, pair in enumerate(groups) if pair[side][0] == axes[k]), None)
        if index is None or axes[k:k + len(groups[index][side])] != groups[index][side]:
            return None
        order.append(index)
        k += len(groups[index][side])
    return order


def _complete(rank: int, ordered: list[int]) -> tuple[int, ...]:
    """A full permutation: batch, the ordered axes, then the remaining (unit) axes."""
    return (0, *ordered, *[a for a in range(1, rank) if a not in ordered])


def _non_unit(perm: tuple[int, ...], shape: tuple[int, ...]) -> list[int]:
    return [a for a in perm if a != 0 and shape[a] != 1]


def reshape_layouts(in_shape: tuple[int, ...], in_perm: tuple[int, ...],
                    out_shape: tuple[int, ...],
                    candidates: list[tuple[int, ...]] | None = None,
                    free_batch: bool = True, prefer: tuple[int, ...] | None = None,
                    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input layout, output layout) in which a RESHAPE computes this ONNX Reshape.

    The input's own layout is kept when it allows it (then no TRANSPOSE is needed); otherwise the
    input is moved to the layout that gives the output the first of ``candidates`` (by default
    its rank's default layout, NHWC for rank 4, then the ONNX order) that expresses it, unless
    that takes a TRANSPOSE of more than 4 merged axes (``free_batch``: axis 0 stays apart).
    ``prefer`` (the layout a later op will want) wins over them when its TRANSPOSE is no larger.
    """
    groups = _groups(in_shape, out_shape)
    if groups is None:
        raise ValueError("the sizes do not pair up")
    out_rank = len(out_shape)
    if candidates is None:
        candidates = [default_perm(out_rank), tuple(range(out_rank))]
    order = _order_of(groups, 0, _non_unit(in_perm, in_shape))
    if order is not None:
        wanted = [a for g in order for a in groups[g][1]]
        for perm in candidates:
            if _non_unit(perm, out_shape) == wanted:
                return in_perm, perm
        return in_perm, _complete(out_rank, wanted)
    solved = [(layout, perm) for perm in candidates
              if (layout := _input_layout(groups, in_shape, out_shape, perm)) is not None]
    if prefer is not None and solved:
        layout = _input_layout(groups, in_shape, out_shape, prefer)
        if layout is not None and (_transposes(in_shape, in_perm, layout, free_batch)
                                   <= _transposes(in_shape, in_perm, solved[0][0],
                                                      free_batch)):
            return layout, prefer
    if solved and _transposes(in_shape, in_perm, solved[0][0], free_batch) <= 1:
        return solved[0]
    # another output layout only when one TRANSPOSE then does it: measured on mobilevitv2_050,
    # fewer block moves at the reshape in a layout the later ops do not want cost more (60 -> 72)
    fewer = _one_transpose_layout(groups, in_shape, in_perm, out_shape, free_batch)
    if fewer is not None:
        return fewer
    if solved:
        return solved[0]
    raise ValueError("no layout expresses it")


def _input_layout(groups: list[tuple[list[int], list[int]]], in_shape: tuple[int, ...],
                  out_shape: tuple[int, ...], out_perm: tuple[int, ...]) -> tuple[int, ...] | None:
    """The input layout a RESHAPE needs to write the output in ``out_perm``, if one does."""
    order = _order_of(groups, 1, _non_unit(out_perm, out_shape))
    if order is None:
        return None
    return _complete(len(in_shape), [a for g in order for a in groups[g][0]])


def _transposes(shape: tuple[int, ...], stored: tuple[int, ...], wanted: tuple[int, ...],
                free_batch: bool) -> int:
    """How many TRANSPOSE ops moving a value from layout ``stored`` to ``wanted`` takes: none,
    one of at most 4 merged axes, or one per block moved (:func:`blocks_to_move`)."""
    merged, perm = merged_transpose(permuted(shape, stored),
                                    tuple(stored.index(a) for a in wanted), free_batch)
    if perm == tuple(range(len(perm))):
        return 0
    return 1 if len(merged) <= 4 else len(blocks_to_move(perm))


def _one_transpose_layout(groups: list[tuple[list[int], list[int]]], in_shape: tuple[int, ...],
                          in_perm: tuple[int, ...], out_shape: tuple[int, ...], free_batch: bool,
                          ) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """When the usual output layouts both need a TRANSPOSE of more than 4 merged axes (several
    TRANSPOSEs once split into block moves), the first other output layout that one TRANSPOSE
    of at most 4 axes gives; those that keep the last axis last first (a token tensor's
    channels, which its LayerNorms and dense layers want last).

    MobileViT's unfold (composed by :mod:`edgecnn.converters.reshape_chains`) reads NHWC as
    (nh, ph, nw, pw, C): [P, N, C] needs 5 axes moved, [N, P, C] one 4-D TRANSPOSE."""
    axes = [a for a in range(1, len(out_shape)) if out_shape[a] != 1]
    if len(axes) > MAX_SEARCHED_AXES:
        return None
    for ordered in sorted(itertools.permutations(axes), key=lambda o: o[-1] != axes[-1]):
        out_perm = _complete(len(out_shape), list(ordered))
        layout = _input_layout(groups, in_shape, out_shape, out_perm)
        if layout is not None and _transposes(in_shape, in_perm, layout, free_batch) <= 1:
            return layout, out_perm
    return None


def _fixed_batch_layouts(in_shape: tuple[int, ...], in_perm: tuple[int, ...],
                         out_shape: tuple[int, ...], prefer: tuple[int, ...] | None = None,
                         ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """:func:`reshape_layouts` for a file with a fixed batch, where axis 0 is an axis like any
    other (ViT's attention reshapes (L, 1, 3, E) to (1, L, 1, 3, E)): solved with a unit axis
    put in front of both shapes as the batch, then taken off again. The output layouts offered
    are those of its real rank: a rank-3 output [P, N, C] given rank 4's NHWC would be stored
    [N, C, P], and its next dense layer would move C last again (MobileViT's ``view_3``)."""
    rank = len(out_shape)
    candidates = [_lead(default_perm(rank)), tuple(range(rank + 1))]
    lead_in, lead_out = reshape_layouts((1, *in_shape), _lead(in_perm),
                                        (1, *out_shape), candidates, free_batch=False,
                                        prefer=None if prefer is None else _lead(prefer))
    if lead_in[0] != 0 or lead_out[0] != 0:
        raise ValueError("no layout expresses it")
    return tuple(a - 1 for a in lead_in[1:]), tuple(a - 1 for a in lead_out[1:])


def _lead(perm: tuple[int, ...]) -> tuple[int, ...]:
    """``perm`` with a unit axis put in front (see :func:`_fixed_batch_layouts`)."""
    return (0, *[a + 1 for a in perm])


def _residual_layout(ctx: LoweringContext, name: str) -> tuple[int, ...] | None:
    """The stored layout of the residual stream that ``name`` joins through a dense layer
    (MatMul with a constant weight, its bias Add, then an Add with a stored activation).

    A fully-connected layer keeps its input's layout, so a reshape that writes this one makes
    the residual ADD free (MobileViT's heads merge, ``view_3``, 9 TRANSPOSEs a model)."""
    rank, current = len(ctx.shape(name)), name
    for _ in range(3):
        users = ctx.graph.consumers(current)
        if len(users) != 1 or users[0].op_type not in ("MatMul", "Add"):
            return None
        user = users[0]
        others = [i for i in user.input if i != current]
        if len(others) != 1 or (user.op_type == "MatMul" and user.input[0] != current):
            return None
        if not ctx.is_const(others[0]):
            if user.op_type != "Add" or others[0] not in ctx.values \
                    or len(ctx.shape(others[0])) != rank:
                return None
            stream = ctx.stored(others[0])
            keeps_last = stream.perm[-1] == rank - 1 and stream.column_order is None
            return stream.perm if keeps_last else None
        current = user.output[0]
    return None


@lower("Flatten", "Reshape", "Squeeze", "Unsqueeze", int16=True)
def lower_reshape(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """One RESHAPE in whichever layout expresses the merge/split of axes; a TRANSPOSE before it
    only when the data's order has to change (a channel shuffle)."""
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    stored = ctx.feature_map(node, node.input[0])
    if in_shape[0] != out_shape[0] and not ctx.builder.fixed_batch:
        raise BatchAxisMoved(f"{ctx.graph.source}: {node.op_type} {node.name!r} from "
                              f"{list(in_shape)} to {list(out_shape)} changes the batch axis; "
                              "TFLite models keep the batch first")
    order = _dense_column_order(ctx, node, stored)
    if order is not False:  # the dense layer's weight columns absorb the stored order
        _reshape(ctx, node, stored.tensor, tuple(out_shape), (0, 1),
                 order if isinstance(order, np.ndarray) else None)
        return
    try:
        prefer = _residual_layout(ctx, node.output[0])
        if ctx.builder.fixed_batch:
            in_perm, out_perm = _fixed_batch_layouts(tuple(in_shape), stored.perm,
                                                     tuple(out_shape), prefer)
        else:
            in_perm, out_perm = reshape_layouts(tuple(in_shape), stored.perm, tuple(out_shape),
                                                prefer=prefer)
    except ValueError as exc:
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} from "
                              f"{list(in_shape)} to {list(out_shape)}: {exc}") from None
    source = ctx.in_layout(node.input[0], in_perm)
    _reshape(ctx, node, source.tensor, tuple(out_shape), out_perm)


@lower("Transpose", int16=True)
def lower_transpose(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """No op at all: the output is the same data in a different layout (``Value.perm``)."""
    stored = ctx.stored(node.input[0])
    rank = len(stored.perm)
    onnx_perm = list(ctx.attr(node, "perm", list(range(rank))[::-1]))
    if stored.column_order is not None:
        raise ConversionError(f"{ctx.graph.source}: Transpose {node.name!r} by {onnx_perm} moves "
                              "a flattened map; transpose before flattening")
    if onnx_perm[0] != 0 and not ctx.builder.fixed_batch:
        raise BatchAxisMoved(f"{ctx.graph.source}: Transpose {node.name!r} by {onnx_perm} moves "
                             "the batch axis; TFLite models keep the batch first")
    inverse = [onnx_perm.index(a) for a in range(rank)]
    perm = tuple(inverse[a] for a in stored.perm)
    tensor = ctx.with_params(stored.tensor, ctx.quant(node.output[0]) if ctx.int8 else None,
                             node.output[0] + "/requantized")
    ctx.values[node.output[0]] = Value(tensor, perm)


def _normalized_axis(ctx: LoweringContext, node: onnx.NodeProto, rank: int,
                     default: int | None = None) -> int:
    axis = int(ctx.attr(node, "axis", default))
    return axis + rank if axis < 0 else axis


def _constant_in_layout(ctx: LoweringContext, name: str, array: np.ndarray,
                        perm: tuple[int, ...], quant: QuantParams | None) -> int:
    """A constant operand stored like the activations it meets (int8 at their parameters)."""
    array = np.ascontiguousarray(array.reshape((1,) * (len(perm) - array.ndim) + array.shape)
                                 .transpose(perm), np.float32)
    if quant is None:
        return ctx.builder.add_constant(name, array)
    info = np.iinfo(quant.dtype)
    values = np.clip(np.round(array / quant.scale[0]) + quant.zero_point[0], info.min, info.max)
    return ctx.builder.add_constant(name, values.astype(quant.dtype), quant)


@lower("Identity", int16=True)
def lower_identity(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """The value itself; in a quantised graph the requantisation a ``Q1 -> DQ1 -> Q2 -> DQ2``
    chain means (onnxruntime's conversion between int8 and int16 layers,
    :func:`..onnx_graph._fold_activation_qdq`), as DEQUANTIZE and QUANTIZE, the QDQ arithmetic."""
    source = ctx.stored(node.input[0])
    params = ctx.quant(node.output[0])
    if params is None or params.same_as(ctx.builder.tensor_quant(source.tensor)):
        ctx.values[node.output[0]] = source
        return
    out = ctx.new_value(node.output[0], ctx.builder.tensor_shape(source.tensor), params,
                        perm=source.perm, column_order=source.column_order)
    ctx.requantize_into(source.tensor, out.tensor)


@lower("Concat", int16=True)
def lower_concat(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """CONCATENATION in the first activation's layout; constants (ViT's class token) join too."""
    rank = len(ctx.shape(node.output[0]))
    axis = _normalized_axis(ctx, node, rank)
    out_q = ctx.quant(node.output[0])
    first = next((n for n in node.input if not ctx.is_const(n)), None)
    if first is None:
        raise ConversionError(f"{ctx.graph.source}: Concat {node.name!r} joins only constants "
                              "and should have been folded")
    perm = ctx.stored(first).perm
    inputs = []
    for i, name in enumerate(node.input):
        if ctx.is_const(name):
            inputs.append(_constant_in_layout(ctx, f"{node.output[0]}/in{i}",
                                              np.asarray(ctx.graph.constants[name]), perm, out_q))
            continue
        if ctx.stored(name).column_order is not None:
            raise ConversionError(f"{ctx.graph.source}: Concat {node.name!r} joins flattened "
                                  "feature maps; concatenate before flattening")
        source = ctx.in_layout(name, perm)
        # TFLite's int8 CONCATENATION needs every input at the output's parameters
        inputs.append(ctx.with_params(source.tensor, out_q, f"{node.output[0]}/in{i}"))
    out = ctx.output_value(node.output[0], perm=perm)
    ctx.add_op("CONCATENATION", inputs, [out.tensor],
               options=ctx.options("ConcatenationOptions", axis=perm.index(axis)))


def _same_params_outputs(ctx: LoweringContext, node: onnx.NodeProto, op: str,
                         inputs: list[int], source: Value, options: object,
                         perm: tuple[int, ...]) -> None:
    """An op with several outputs that keep the input's int8 parameters (SPLIT, SPLIT_V)."""
    in_q = ctx.builder.tensor_quant(source.tensor) if ctx.int8 else None
    outs = []
    for name in node.output:
        if in_q is None or in_q.same_as(ctx.quant(name)):
            outs.append(ctx.output_value(name, quant=in_q, perm=perm).tensor)
        else:
            outs.append(ctx.scratch(f"{name}/split", permuted(ctx.shape(name), perm), in_q))
    ctx.add_op(op, inputs, outs, options=options)
    for name, tensor in zip(node.output, outs, strict=True):
        if name not in ctx.values:  # requantise to the parameters the QDQ model chose
            out = ctx.output_value(name, perm=perm)
            ctx.requantize_into(tensor, out.tensor)


@lower("Split", int16=True)
def lower_split(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """SPLIT (equal parts) or SPLIT_V, on the split axis wherever the layout stores it."""
    source = ctx.feature_map(node, node.input[0])
    shape = ctx.shape(node.input[0])
    axis = _normalized_axis(ctx, node, len(shape), 0)
    sizes = [ctx.shape(name)[axis] for name in node.output]
    stored_axis = source.perm.index(axis)
    axis_tensor = ctx.int_const(node.output[0] + "/axis", np.int32(stored_axis))
    if len(set(sizes)) == 1:
        _same_params_outputs(ctx, node, "SPLIT", [axis_tensor, source.tensor], source,
                             ctx.options("SplitOptions", numSplits=len(sizes)), source.perm)
    else:
        size_tensor = ctx.int_const(node.output[0] + "/sizes", sizes)
        _same_params_outputs(ctx, node, "SPLIT_V", [source.tensor, size_tensor, axis_tensor],
                             source, ctx.options("SplitVOptions", numSplits=len(sizes)),
                             source.perm)


def _slice_spec(ctx: LoweringContext, node: onnx.NodeProto,
                rank: int) -> list[tuple[int, int, int, int]]:
    """(axis, start, end, step) per sliced axis, from inputs (opset 10+) or attributes."""
    if len(node.input) > 1:
        starts = ctx.const(node, 1).ravel()
        ends = ctx.const(node, 2).ravel()
        axes = (ctx.const(node, 3).ravel() if len(node.input) > 3 and node.input[3]
                else np.arange(len(starts)))
        steps = (ctx.const(node, 4).ravel() if len(node.input) > 4 and node.input[4]
                 else np.ones(len(starts), np.int64))
    else:
        starts, ends = ctx.attr(node, "starts"), ctx.attr(node, "ends")
        axes = ctx.attr(node, "axes", list(range(len(starts))))
        steps = [1] * len(starts)
    return [(int(a) % rank, int(b), int(e), int(s))
            for a, b, e, s in zip(axes, starts, ends, steps, strict=True)]


def _reaches_batch_matmul(ctx: LoweringContext, name: str) -> bool:
    """``name`` is read only by a MatMul of two activations, directly or through a scale
    (Mul or Div by a constant) and reshapes/transposes: it is wanted in its ONNX order, or with
    its last two axes swapped, which BATCH_MATMUL reads through adj_x/adj_y. CoaT's k goes
    through a Softmax over tokens and its v into a convolution: those want other layouts."""
    for _ in range(6):
        users = ctx.graph.consumers(name)
        if not users:
            return False
        if all(u.op_type == "MatMul" and not any(ctx.is_const(i) for i in u.input[:2])
               for u in users):
            return True
        if len(users) != 1:
            return False
        user = users[0]
        scale = user.op_type in ("Mul", "Div") and user.input[0] == name \
            and ctx.is_const(user.input[1])
        if not scale and user.op_type not in ("Reshape", "Transpose", "Squeeze"):
            return False
        name = user.output[0]
    return False


def _unbound_axis(ctx: LoweringContext, name: str) -> int | None:
    """The axis ``name`` is unbound along (torch's ``unbind``/``chunk``: a Slice per index of
    one axis, each squeezed), when that is all that reads it."""
    users = ctx.graph.consumers(name)
    rank = len(ctx.shape(name))
    axes = set()
    for user in users:
        if user.op_type != "Slice" or user.input[0] != name:
            return None
        spec = _slice_spec(ctx, user, rank)
        squeezes = ctx.graph.consumers(user.output[0])
        if len(spec) != 1 or len(squeezes) != 1 or squeezes[0].op_type != "Squeeze" \
                or not _reaches_batch_matmul(ctx, squeezes[0].output[0]):
            return None
        axes.add(spec[0][0])
    if len(axes) != 1 or len(users) < 2:
        return None
    axis = axes.pop()
    return axis if ctx.shape(name)[axis] == len(users) else None


def _unbind_layout(ctx: LoweringContext, name: str, stored: Value) -> tuple[int, ...] | None:
    """For a tensor unbound into several parts (attention's q, k, v), the layout that stores
    each part in ONNX order (what BATCH_MATMUL reads, K through adj_y), if one TRANSPOSE of at
    most 4 merged axes gives it: the whole tensor moves once instead of each part after its
    Slice (MobileViT: 3 TRANSPOSEs a layer -> 1)."""
    axis = _unbound_axis(ctx, name)
    if axis is None:
        return None
    others = [a for a in range(len(stored.perm)) if a != axis]
    first = 0 if ctx.builder.fixed_batch else 1
    layouts = [(*others[:at], axis, *others[at:]) for at in range(first, len(others) + 1)]
    if stored.perm in layouts or stored.column_order is not None:
        return None
    shape = ctx.shape(name)
    for perm in layouts:
        merged, _ = merged_transpose(permuted(shape, stored.perm),
                                     tuple(stored.perm.index(a) for a in perm),
                                     not ctx.builder.fixed_batch)
        if len(merged) <= 4:
            return perm
    return None


@lower("Slice", int16=True)
def lower_slice(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """STRIDED_SLICE with constant bounds, in the stored layout (ONNX's clamping rules)."""
    source = ctx.feature_map(node, node.input[0])
    unbind = _unbind_layout(ctx, node.input[0], source)
    if unbind is not None:
        source = ctx.in_layout(node.input[0], unbind)
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    begin, end, strides = [0] * rank, [0] * rank, [1] * rank
    end_mask = (1 << rank) - 1  # unsliced axes (the batch among them) run to their end
    for axis, start, stop, step in _slice_spec(ctx, node, rank):
        if axis == 0 and not ctx.builder.fixed_batch:
            if start == 0 and step == 1 and stop >= 2**31 - 1:
                continue  # the whole batch (a Slice without axes lists every leading axis)
            raise BatchAxisMoved(f"{ctx.graph.source}: Slice {node.name!r} slices the batch "
                                 "axis; TFLite models keep the batch")
        if step == 0:
            raise ConversionError(f"{ctx.graph.source}: Slice {node.name!r} has step 0")
        first, last, stride = slice(start, stop, step).indices(shape[axis])
        k = source.perm.index(axis)
        begin[k], end[k], strides[k] = first, last, stride
        if last >= 0:  # else a negative step runs through index 0: "to the end" in TFLite
            end_mask &= ~(1 << k)
    inputs = [source.tensor, ctx.int_const(node.output[0] + "/begin", begin),
              ctx.int_const(node.output[0] + "/end", end),
              ctx.int_const(node.output[0] + "/strides", strides)]
    ctx.same_params_output(node, "STRIDED_SLICE", inputs,
                           ctx.options("StridedSliceOptions", endMask=end_mask),
                           perm=source.perm)


@lower("Gather")
def lower_gather(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """GATHER with constant indices on an activation (a class token ``x[:, 0]``, a channel pick).
    A scalar index drops the axis, so the output layout is the input's without it."""
    source = ctx.stored(node.input[0])
    if ctx.is_const(node.input[0]) or source.column_order is not None:
        raise ConversionError(f"{ctx.graph.source}: Gather {node.name!r} needs an unflattened "
                              "activation as data and constant indices")
    shape = ctx.shape(node.input[0])
    axis = _normalized_axis(ctx, node, len(shape), 0)
    if axis == 0 and not ctx.builder.fixed_batch:
        raise BatchAxisMoved(f"{ctx.graph.source}: Gather {node.name!r} gathers along the batch "
                             "axis; TFLite models keep the batch")
    indices = ctx.const(node, 1).astype(np.int64)
    if indices.ndim > 1:
        raise ConversionError(f"{ctx.graph.source}: Gather {node.name!r} with {indices.ndim}-D "
                              "indices; only a scalar or a list of indices converts")
    indices = np.where(indices < 0, indices + shape[axis], indices).astype(np.int32)
    index_tensor = ctx.builder.add_constant(node.output[0] + "/indices", indices)
    if indices.ndim == 0:
        perm = tuple(a - (a > axis) for a in source.perm if a != axis)
    else:
        perm = source.perm
    ctx.same_params_output(node, "GATHER", [source.tensor, index_tensor],
                           ctx.options("GatherOptions", axis=source.perm.index(axis)), perm=perm)


PAD_INDICES = {  # mode -> the source index of each padded position (i from -before on)
    "reflect": lambda i, n: np.abs((i + (n - 1)) % (2 * n - 2) - (n - 1)) if n > 1 else 0 * i,
    "edge": lambda i, n: np.clip(i, 0, n - 1),
    "wrap": lambda i, n: i % n,
}


def _pad_by_gathers(ctx: LoweringContext, node: onnx.NodeProto, x: int,
                    pairs: list[list[int]], index_of: Any) -> None:
    """reflect, edge and wrap padding copy input cells: one GATHER per padded axis with the
    source index of every output position, exact in float and int8 (same parameters)."""
    padded = [axis for axis, pair in enumerate(pairs) if any(pair)]
    if 0 in padded:
        raise ConversionError(f"{ctx.graph.source}: Pad {node.name!r} pads the batch axis; "
                              "TFLite models keep the batch")
    mode = ctx.attr(node, "mode")
    if mode == "reflect" and any(max(pairs[a]) >= ctx.builder.tensor_shape(x)[a] for a in padded):
        raise ConversionError(f"{ctx.graph.source}: Pad {node.name!r} reflects by as many cells "
                              "as the axis holds; ONNX needs fewer")
    if not padded:
        ctx.same_params_output(node, "RESHAPE", [x, ctx.int_const(
            node.output[0] + "/shape", [-1, *ctx.builder.tensor_shape(x)[1:]])])
        return
    current, shape = x, list(ctx.builder.tensor_shape(x))
    for step, axis in enumerate(padded):
        before, after = pairs[axis]
        indices = index_of(np.arange(-before, shape[axis] + after), shape[axis])
        shape[axis] += before + after
        index = ctx.int_const(f"{node.output[0]}/gather{axis}", indices.astype(np.int32))
        options = ctx.options("GatherOptions", axis=axis, batchDims=0)
        if step == len(padded) - 1:
            ctx.same_params_output(node, "GATHER", [current, index],
                                   options)
            return
        moved = ctx.scratch(f"{node.output[0]}/padded{axis}", tuple(shape),
                            ctx.builder.tensor_quant(x))
        ctx.add_op("GATHER", [current, index], [moved], options=options)
        current = moved


def _pads_on_all_axes(rank: int, pads: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Opset 18's Pad names the axes its pads are for (negative counts from the end); the
    others get none."""
    full = np.zeros(2 * rank, np.int64)
    for i, axis in enumerate(int(a) % rank for a in axes):
        full[axis], full[axis + rank] = pads[i], pads[i + len(axes)]
    return full


@lower("Pad", int16=True)
def lower_pad(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    mode = ctx.attr(node, "mode", "constant")
    if mode not in ("constant", *PAD_INDICES):
        raise ConversionError(f"{ctx.graph.source}: Pad {node.name!r} mode {mode!r}; constant, "
                              "reflect, edge and wrap convert")
    pads = ctx.const(node, 1).astype(np.int64) if len(node.input) > 1 else np.asarray(
        ctx.attr(node, "pads"))
    value = float(ctx.const(node, 2).ravel()[0]) if len(node.input) > 2 and node.input[2] else 0.0
    if len(node.input) > 3 and node.input[3]:
        pads = _pads_on_all_axes(len(ctx.shape(node.input[0])), pads,
                                 ctx.const(node, 3).astype(np.int64).ravel())
    rank = len(pads) // 2
    pairs = [[int(pads[i]), int(pads[i + rank])] for i in range(rank)]
    if rank == 4:
        pairs = [pairs[i] for i in NCHW_TO_NHWC]
    if any(p < 0 for pair in pairs for p in pair):
        raise ConversionError(f"{ctx.graph.source}: Pad {node.name!r} crops (negative pads)")
    x = ctx.value(node.input[0]).tensor
    if mode != "constant":
        _pad_by_gathers(ctx, node, x, pairs, PAD_INDICES[mode])
        return
    paddings = ctx.int_const(node.output[0] + "/paddings", pairs)
    if value == 0.0:
        ctx.same_params_output(node, "PAD", [x, paddings])
        return
    quant = ctx.builder.tensor_quant(x) if ctx.int8 else None
    fill = fill_constant(ctx, value, quant, node.output[0] + "/fill")
    ctx.same_params_output(node, "PADV2", [x, paddings, fill])
