"""Gemm and MatMul(+Add) with a constant weight -> FULLY_CONNECTED; MatMul of two activations
(attention) -> BATCH_MATMUL.

When the input is a flattened NHWC tensor, the weight columns are permuted into NHWC order here,
which is what keeps TRANSPOSE ops out of the graph.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgecnn.converters.int8_forms import conditional
from edgecnn.converters.lowering import LoweringContext, reshape
from edgecnn.converters.ops import lower
from edgecnn.converters.ops.conv import _bias
from edgecnn.converters.tflite_builder import QuantParams
from edgecnn.errors import ConversionError


def _fully_connected(ctx: LoweringContext, node: onnx.NodeProto, weight_name: str,
                     transposed: bool, bias_node: onnx.NodeProto, out_node: onnx.NodeProto,
                     alpha: float = 1.0) -> None:
    """Write FULLY_CONNECTED for ``y = x @ W.T + b`` (``W`` given as [out, in] if transposed)."""
    source = ctx.stored(node.input[0])
    shape = ctx.shape(weight_name)
    out_features = shape[0] if transposed else shape[1]
    rank = len(source.perm)
    if rank > 2 and source.perm[-1] != rank - 1:  # the contracted axis must be stored last
        source = ctx.in_layout(node.input[0],
                               (*[a for a in source.perm if a != rank - 1], rank - 1))
    order = source.column_order
    fused, out_name = ctx.fuse_activation(out_node)
    out = ctx.output_value(out_name, perm=source.perm)
    if ctx.int8:
        wq = ctx.weight_quant(weight_name)
        if wq is None or wq.values.dtype != np.int8 or np.any(wq.zero_point != 0):
            raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} weights are not "
                                  "symmetric int8 QDQ constants; quantise it with edgecnn (int8=True)",
                                  parameters=("int8",))
        values = wq.values if transposed else wq.values.T
        if order is not None:
            values = values[:, order]
        per_channel = wq.scale.size > 1
        params = QuantParams(tuple(float(s) for s in wq.scale.ravel()), (0,) * wq.scale.size,
                             0 if per_channel else None)
        wt = ctx.builder.add_constant(weight_name, np.ascontiguousarray(values), params)
    else:
        weight = ctx.graph.constants[weight_name]
        w = weight if transposed else weight.T  # -> [out, in]
        if alpha != 1.0:
            w = w * np.float32(alpha)
        if order is not None:
            w = w[:, order]
        wt = ctx.builder.add_constant(weight_name, np.ascontiguousarray(w, np.float32))
    bias = _bias(ctx, bias_node, slice(0, out_features), source.tensor, wt, out_name + "/bias")
    options = ctx.options("FullyConnectedOptions", fusedActivationFunction=fused)
    if rank == 2:
        ctx.add_op("FULLY_CONNECTED", [source.tensor, wt, bias], [out.tensor],
                   options=options)
        return
    # A Linear on (N, ..., K): FULLY_CONNECTED flattens the leading axes itself; a RESHAPE
    # restores them (keep_num_dims needs a newer runtime than the rest of the model)
    stored_out = ctx.builder.tensor_shape(out.tensor)
    flat = ctx.scratch(out_name + "/2d", (int(np.prod(stored_out[:-1])), out_features),
                       ctx.builder.tensor_quant(out.tensor))
    ctx.add_op("FULLY_CONNECTED", [source.tensor, wt, bias], [flat],
               options=options)
    reshape(ctx, flat, stored_out, out.tensor, out_name + "/shape")


@lower("Gemm", int16=True)
def lower_gemm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if int(ctx.attr(node, "transA", 0)):
        raise ConversionError(f"{ctx.graph.source}: Gemm {node.name!r} has transA=1; only "
                              "x @ W (+ b) converts")
    alpha = float(ctx.attr(node, "alpha", 1.0))
    beta = float(ctx.attr(node, "beta", 1.0))
    if ctx.int8 and (alpha != 1.0 or beta != 1.0):
        raise ConversionError(f"{ctx.graph.source}: int8 Gemm {node.name!r} has alpha/beta != 1")
    if not ctx.is_const(node.input[1]):
        raise ConversionError(f"{ctx.graph.source}: Gemm {node.name!r} B is computed at run "
                              "time; TFLite fully-connected layers need constant weights")
    shape = ctx.shape(node.input[1])
    bias_node = node
    if len(node.input) > 2 and node.input[2] and not ctx.int8:
        bias = np.broadcast_to(ctx.const(node, 2) * np.float32(beta),
                               (shape[0 if ctx.attr(node, "transB", 0) else 1],))
        ctx.graph.constants[node.output[0] + "/gemm_bias"] = np.ascontiguousarray(bias)
        bias_node = onnx.helper.make_node("Gemm", [node.input[0], node.input[1],
                                                   node.output[0] + "/gemm_bias"], node.output)
    _fully_connected(ctx, node, node.input[1], bool(ctx.attr(node, "transB", 0)), bias_node,
                     node, alpha)


def _batch_matmul(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Activation x activation (attention's Q @ K^T and weights @ V) -> BATCH_MATMUL.

    BATCH_MATMUL multiplies the last two stored axes and can read either operand transposed
    (adj_x / adj_y), so an operand stored with its two matrix axes swapped costs nothing. The
    batch axes keep the first operand's stored order; the second is moved to it if it differs."""
    a_name, b_name = node.input[:2]
    rank = len(ctx.shape(node.output[0]))
    if ctx.is_const(a_name) or len(ctx.shape(a_name)) != rank or len(ctx.shape(b_name)) != rank \
            or rank < 3:
        raise ConversionError(f"{ctx.graph.source}: MatMul {node.name!r} of shapes "
                              f"{list(ctx.shape(a_name))} and {list(ctx.shape(b_name))}: edgecnn "
                              "converts x @ constant weights, or two activations of one rank >= 3")
    rows, cols = rank - 2, rank - 1
    batch = tuple(a for a in ctx.stored(a_name).perm if a < rows)

    def operand(name: str) -> tuple[int, bool]:
        stored = ctx.feature_map(node, name)
        if stored.perm == (*batch, rows, cols):
            return stored.tensor, False
        if stored.perm == (*batch, cols, rows):
            return stored.tensor, True
        return ctx.in_layout(name, (*batch, rows, cols)).tensor, False

    (a, adj_x), (b, adj_y) = operand(a_name), operand(b_name)
    out = ctx.output_value(node.output[0], perm=(*batch, rows, cols))
    ctx.add_op("BATCH_MATMUL", [a, b], [out.tensor],
               options=ctx.options("BatchMatMulOptions", adjX=adj_x, adjY=adj_y))


def _two_activations(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """BATCH_MATMUL of two int8 activations: 0.4 % of values a step off (coarse requantisation)."""
    return not ctx.is_const(node.input[1])


@lower("MatMul", int8=conditional(_two_activations, "int8 kernel with constant weights; float "
                                  "island for two activations (BATCH_MATMUL's int8 "
                                  "requantisation is coarse)"))
def lower_matmul(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if not ctx.is_const(node.input[1]):
        _batch_matmul(ctx, node)
        return
    if len(ctx.shape(node.input[1])) != 2:
        raise ConversionError(f"{ctx.graph.source}: MatMul {node.name!r} needs a constant 2-D "
                              "weight as its second input")
    out_features = ctx.shape(node.input[1])[1]
    users = ctx.graph.consumers(node.output[0])
    bias_add = None
    # the Add folds in as FULLY_CONNECTED's bias, unless an int8 graph rounds the product first
    # (then one rounding instead of the reference's two would differ by a step on many values)
    rounded_apart = ctx.int8 and node.output[0] in ctx.graph.act_quant
    if (len(users) == 1 and users[0].op_type == "Add" and not rounded_apart
            and node.output[0] not in ctx.graph.output_names):
        other = [i for i in users[0].input if i != node.output[0]]
        if other and ctx.is_const(other[0]) and np.size(ctx.graph.constants[other[0]]) == out_features:
            bias_add = users[0]
    if bias_add is None:
        _fully_connected(ctx, node, node.input[1], False,
                         onnx.helper.make_node("MatMul", node.input[:2], node.output), node)
        return
    ctx.skipped.add(id(bias_add))
    bias_name = next(i for i in bias_add.input if i != node.output[0])
    ctx.graph.constants[bias_name] = np.ravel(ctx.graph.constants[bias_name])
    combined = onnx.helper.make_node("Gemm", [node.input[0], node.input[1], bias_name],
                                     bias_add.output)
    _fully_connected(ctx, node, node.input[1], False, combined, bias_add)
