"""Pure data movement: DepthToSpace, SpaceToDepth -> DEPTH_TO_SPACE / SPACE_TO_DEPTH (and a
GATHER of channels for CRD order), Expand -> TILE, GlobalMaxPool -> REDUCE_MAX.

None of them computes a new value, so each is exact, and in int8 the kernel keeps its input's
parameters (:meth:`LoweringContext.same_params_output`). TFLite's DEPTH_TO_SPACE and
SPACE_TO_DEPTH order an NHWC map's channels as ONNX's DCR mode does; CRD (channel, then the
position in the block) is the same movement with the channels permuted, which one GATHER on
the channel axis writes exactly.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgecnn.converters.lowering import LoweringContext, permuted, reshape
from edgecnn.converters.ops import lower
from edgecnn.errors import ConversionError


def _blocks(ctx: LoweringContext, node: onnx.NodeProto) -> tuple[int, str]:
    """(blocksize, mode) of a 4-D DepthToSpace/SpaceToDepth; anything else refused by name."""
    if len(ctx.shape(node.input[0])) != 4:
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} takes a "
                              f"{len(ctx.shape(node.input[0]))}-D tensor; TFLite's takes 4-D")
    block = int(ctx.attr(node, "blocksize", 0))
    mode = str(ctx.attr(node, "mode", "DCR"))
    if block < 1 or mode not in ("DCR", "CRD"):
        raise ConversionError(f"{ctx.graph.source}: {node.op_type} {node.name!r} has blocksize "
                              f"{block}, mode {mode!r}; give blocksize >= 1 and DCR or CRD")
    return block, mode


def crd_order(channels: int, block: int) -> np.ndarray:
    """Where each DCR channel (block position major) lies in CRD order (channel major):
    DCR index (i * block + j) * C' + c holds CRD channel c * block**2 + i * block + j."""
    depth = channels // (block * block)
    cells = np.arange(block * block)
    return (np.arange(depth)[None, :] * block * block + cells[:, None]).ravel()


def _gather_channels(ctx: LoweringContext, x: int, order: np.ndarray, out: int,
                     name: str) -> None:
    indices = ctx.int_const(name + "/channels", order)
    ctx.add_op("GATHER", [x, indices], [out],
               options=ctx.options("GatherOptions", axis=3, batchDims=0))


@lower("DepthToSpace")
def lower_depth_to_space(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """DEPTH_TO_SPACE (ONNX's DCR order on NHWC); CRD mode: a GATHER of the channels first."""
    block, mode = _blocks(ctx, node)
    x = ctx.value(node.input[0]).tensor
    if mode == "CRD":  # channels into DCR order first, then TFLite's own movement
        channels = ctx.shape(node.input[0])[1]
        moved = ctx.scratch(node.output[0] + "/dcr", ctx.builder.tensor_shape(x),
                            ctx.builder.tensor_quant(x))
        _gather_channels(ctx, x, crd_order(channels, block), moved,
                         node.output[0])
        x = moved
    ctx.same_params_output(node, "DEPTH_TO_SPACE", [x],
                           ctx.options("DepthToSpaceOptions", blockSize=block))


@lower("SpaceToDepth")
def lower_space_to_depth(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """SPACE_TO_DEPTH (ONNX's DCR order on NHWC); CRD mode (opset 28): a GATHER of the
    channels after it."""
    block, mode = _blocks(ctx, node)
    x = ctx.value(node.input[0]).tensor
    options = ctx.options("SpaceToDepthOptions", blockSize=block)
    if mode == "DCR":
        ctx.same_params_output(node, "SPACE_TO_DEPTH", [x], options)
        return
    out_shape = ctx.shape(node.output[0])
    dcr = ctx.scratch(node.output[0] + "/dcr", permuted(out_shape, (0, 2, 3, 1)),
                      ctx.builder.tensor_quant(x))
    ctx.add_op("SPACE_TO_DEPTH", [x], [dcr], options=options)
    out = ctx.output_value(node.output[0], quant=ctx.builder.tensor_quant(x))
    _gather_channels(ctx, dcr, np.argsort(crd_order(out_shape[1], block)), out.tensor,
                     node.output[0])


@lower("Expand")
def lower_expand(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """TILE in the stored layout: every axis the input holds once is repeated to the output's
    size (ECA's ``expand_as``). The shape must be a constant, and the batch axis is never
    repeated: the file's batch is free, so a repeat count for it would be wrong at batch 2."""
    ctx.const(node, 1)  # refused in one line unless constant
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    rank = len(out_shape)
    padded = (1,) * (rank - len(in_shape)) + tuple(in_shape)
    if rank == len(in_shape) and in_shape[0] != out_shape[0]:
        raise ConversionError(f"{ctx.graph.source}: Expand {node.name!r} repeats the batch axis "
                              f"({in_shape[0]} to {out_shape[0]}); TFLite models keep a free "
                              "batch, so it cannot be a fixed repeat")
    stored = ctx.value(node.input[0])
    if stored.column_order is not None:
        raise ConversionError(f"{ctx.graph.source}: Expand {node.name!r} reads a flattened "
                              "feature map; expand before flattening")
    x = stored.tensor
    out_perm = tuple(range(rank)) if rank != 4 else (0, 2, 3, 1)
    if len(in_shape) != rank:  # ONNX aligns shapes on the right: reshape to the output's rank
        kept = [a for a in out_perm if padded[a] != 1]
        if kept != sorted(kept):
            raise ConversionError(f"{ctx.graph.source}: Expand {node.name!r} from "
                                  f"{list(in_shape)} to {list(out_shape)} would need a transpose")
        target = permuted(padded, out_perm)
        lifted = ctx.scratch(node.output[0] + "/lifted", target, ctx.builder.tensor_quant(x))
        reshape(ctx, x, target, lifted, node.output[0] + "/lifted_shape")
        x = lifted
        stored_in = target
    else:
        stored_in = permuted(padded, stored.perm)
        out_perm = stored.perm
    stored_out = permuted(tuple(out_shape), out_perm)
    multiples = [o // i for i, o in zip(stored_in, stored_out, strict=True)]
    if all(m == 1 for m in multiples):
        ctx.same_params_output(node, "RESHAPE", [x, ctx.int_const(
            node.output[0] + "/shape", [-1, *stored_out[1:]])], perm=out_perm)
        return
    ctx.same_params_output(node, "TILE", [x, ctx.int_const(node.output[0] + "/multiples",
                                                           multiples)], perm=out_perm)


@lower("GlobalMaxPool")
def lower_global_max_pool(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """REDUCE_MAX over NHWC's H and W, keeping them: the maximum is one of the inputs."""
    if len(ctx.shape(node.input[0])) != 4:
        raise ConversionError(f"{ctx.graph.source}: GlobalMaxPool {node.name!r} takes a "
                              f"{len(ctx.shape(node.input[0]))}-D tensor; edgecnn lowers 4-D")
    x = ctx.value(node.input[0]).tensor
    axes = ctx.int_const(node.output[0] + "/axes", [1, 2])
    ctx.same_params_output(node, "REDUCE_MAX", [x, axes],
                           ctx.options("ReducerOptions", keepDims=True))
