"""Fusions on the lowering view of a graph: op chains that TFLite runs as one builtin.

Each pass rewrites :class:`~edgecnn.converters.onnx_graph.Graph` nodes in place and returns how
many it fused. They run after constant folding (so scalars are constants) and only ever merge
chains whose intermediate values nobody else reads.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from edgecnn.converters.onnx_graph import Graph, attr

GELU_TOLERANCE = 1e-6  # relative, on the constants 1/sqrt(2), 1 and 1/2 a float32 export writes


def _scalar(graph: Graph, name: str) -> float | None:
    if name not in graph.constants:
        return None
    value = np.asarray(graph.constants[name])
    return float(value.ravel()[0]) if value.size == 1 else None


def _close(value: float | None, target: float) -> bool:
    return value is not None and math.isclose(value, target, rel_tol=GELU_TOLERANCE)


def _only_consumer(graph: Graph, name: str) -> onnx.NodeProto | None:
    users = graph.consumers(name)
    if len(users) != 1 or name in graph.output_names:
        return None
    return users[0]


def _feeds_only(graph: Graph, name: str, node: onnx.NodeProto) -> bool:
    """``name`` is read by ``node`` and nothing else (nor is it a graph output)."""
    user = _only_consumer(graph, name)
    return user is not None and id(user) == id(node)


def _other(node: onnx.NodeProto, name: str) -> str:
    return node.input[1] if node.input[0] == name else node.input[0]


def _gelu_at(graph: Graph, erf: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    """x * 0.5 * (1 + erf(x / sqrt(2))) around ``erf``, in the orders exporters write it:
    (input x, the nodes that compute it) or None."""
    scaled = graph.producer(erf.input[0])
    if (scaled is None or scaled.op_type not in ("Div", "Mul")
            or not _feeds_only(graph, scaled.output[0], erf)):
        return None
    x = next((i for i in scaled.input if i not in graph.constants), None)
    if x is None:
        return None
    factor = _scalar(graph, _other(scaled, x))
    if not _close(factor, math.sqrt(2) if scaled.op_type == "Div" else 1 / math.sqrt(2)):
        return None
    add = _only_consumer(graph, erf.output[0])
    if add is None or add.op_type != "Add" or not _close(
            _scalar(graph, _other(add, erf.output[0])), 1.0):
        return None
    chain, current, half, times_x = [scaled, erf, add], add.output[0], False, False
    for _ in range(2):  # two Muls: by 0.5 and by x, either order
        mul = _only_consumer(graph, current)
        if mul is None or mul.op_type != "Mul":
            return None
        other = _other(mul, current)
        if other == x and not times_x:
            times_x = True
        elif _close(_scalar(graph, other), 0.5) and not half:
            half = True
        else:
            return None
        chain.append(mul)
        current = mul.output[0]
    return x, chain


def fuse_gelu(graph: Graph) -> int:
    """The exact (erf) GELU chain -> one ``Gelu`` node (ONNX opset 20's op, lowered to GELU)."""
    fused = 0
    for erf in [n for n in graph.nodes if n.op_type == "Erf"]:
        found = _gelu_at(graph, erf)
        if found is None:
            continue
        x, chain = found
        gelu = onnx.helper.make_node("Gelu", [x], [chain[-1].output[0]],
                                     name=erf.name or chain[-1].name)
        graph.nodes[graph.nodes.index(chain[-1])] = gelu
        for node in chain[:-1]:
            graph.nodes.remove(node)
        fused += 1
    return fused


def fold_identity_gather(graph: Graph) -> int:
    """Reshape(x, [-1]) -> Gather(indices = 0, 1, 2, ... in some shape) -> one Reshape.

    torch's exporter writes ``as_strided`` that way (ConvNeXt's classifier); when the indices
    read every element in order it is only a reshape, and the flattening to 1-D (which would
    drop the batch axis) disappears with it.
    """
    folded = 0
    for gather in [n for n in graph.nodes if n.op_type == "Gather"]:
        flat = graph.producer(gather.input[0])
        if flat is None:
            continue
        if (flat.op_type != "Reshape" or gather.input[1] not in graph.constants
                or int(attr(gather, "axis", 0)) != 0
                or not _feeds_only(graph, flat.output[0], gather)):
            continue
        indices = np.asarray(graph.constants[gather.input[1]])
        size = graph.shapes.get(flat.output[0])
        if size is None or len(size) != 1 or not np.array_equal(indices.ravel(),
                                                                  np.arange(size[0])):
            continue
        shape_name = gather.output[0] + "/shape"
        graph.constants[shape_name] = np.asarray(indices.shape, np.int64)
        graph.nodes[graph.nodes.index(gather)] = onnx.helper.make_node(
            "Reshape", [flat.input[0], shape_name], list(gather.output), name=gather.name)
        graph.nodes.remove(flat)
        folded += 1
    return folded


def _all(graph: Graph, name: str, value: float) -> bool:
    return name in graph.constants and bool(np.all(np.asarray(graph.constants[name]) == value))


def fuse_group_norm(graph: Graph) -> int:
    """Reshape (N, C, H, W) -> (N, G, C/G*H*W) -> InstanceNormalization (scale 1, bias 0) ->
    Reshape back to (N, C, H, W): PyTorch's GroupNorm as both exporters write it (and ONNX's
    GroupNormalization, which the ONNX clean-up unfolds into it) -> one ``GroupNormalization``
    node without scale or bias (the exporters' Mul and Add after it stay). Its (N, G, -1) view
    merges channels with pixels, which an NHWC map cannot do without moving data; the fused
    node is lowered channels-last (converters/ops/normalization.py): the same statistics."""
    fused = 0
    for norm in [n for n in graph.nodes if n.op_type == "InstanceNormalization"]:
        grouped, back = graph.producer(norm.input[0]), _only_consumer(graph, norm.output[0])
        if (grouped is None or back is None or grouped.op_type != "Reshape"
                or back.op_type != "Reshape" or len(norm.input) < 3
                or not _feeds_only(graph, grouped.output[0], norm)):
            continue
        shape = graph.shapes.get(grouped.input[0])
        view = graph.shapes.get(grouped.output[0])
        if (shape is None or len(shape) != 4 or view is None or len(view) != 3
                or graph.shapes.get(back.output[0]) != shape):
            continue
        n, channels, height, width = shape
        groups = view[1]
        if (view[0] != n or groups < 1 or channels % groups
                or view[2] != channels // groups * height * width
                or not _all(graph, norm.input[1], 1.0) or not _all(graph, norm.input[2], 0.0)):
            continue
        node = onnx.helper.make_node(
            "GroupNormalization", [grouped.input[0]], [back.output[0]],
            name=norm.name or back.name, num_groups=groups,
            epsilon=float(attr(norm, "epsilon", 1e-5)))
        graph.nodes[graph.nodes.index(back)] = node
        graph.nodes.remove(norm)
        graph.nodes.remove(grouped)
        fused += 1
    return fused
