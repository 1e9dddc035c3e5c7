"""ONNX pass: a chain of Reshape/Transpose nodes composed into Reshape -> Transpose -> Reshape.

MobileViT's unfold is view -> transpose -> view -> transpose -> view: two permutations of the
same pixels with reshapes between them. Lowered node by node, each reshape pins a layout the
next transpose has to undo (3 TRANSPOSE ops an unfold, docs/coverage.md). Composed, the chain is
one permutation of the common factors of every shape in it ([1, C, nh, ph, nw, pw]): a Reshape
to those factors, one Transpose, a Reshape to the chain's output. The layout solver then sees
the whole movement at once and writes it as one TRANSPOSE (or none) in a channels-last layout.
Pure data movement, so the rewrite is exact.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

CHAIN_OPS = ("Reshape", "Transpose")


class _Atoms:
    """The input tensor split into factors ("atoms"), each a run of its row-major index.

    ``axes`` holds, for the current tensor of the chain, the atoms of each axis (major first);
    ``order`` the atoms in the input's row-major order. Splitting an atom refines both.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.size: dict[int, int] = {}
        self.axes: list[list[int]] = [[self._new(d)] if d != 1 else [] for d in shape]
        self.order = [a for axis in self.axes for a in axis]

    def _new(self, size: int) -> int:
        self.size[len(self.size)] = size
        return len(self.size) - 1

    def _split(self, atom: int, major: int) -> tuple[int, int]:
        """``atom`` as (major, minor) atoms: minor varies fastest, as in the row-major index."""
        first, second = self._new(major), self._new(self.size[atom] // major)
        for atoms in (self.order, *self.axes):
            if atom in atoms:
                at = atoms.index(atom)
                atoms[at:at + 1] = [first, second]
        return first, second

    def reshape(self, shape: tuple[int, ...]) -> bool:
        """Regroup the atoms into ``shape``'s axes; False when a size does not factor."""
        pending = [a for axis in self.axes for a in axis]
        axes: list[list[int]] = []
        for size in shape:
            axis: list[int] = []
            while size > 1:
                if not pending:
                    return False
                atom = pending[0]
                if size % self.size[atom] == 0:
                    size //= self.size[pending.pop(0)]
                    axis.append(atom)
                elif self.size[atom] % size == 0:
                    first, second = self._split(atom, size)
                    pending[0] = second
                    axis.append(first)
                    size = 1
                else:
                    return False
            axes.append(axis)
        self.axes = axes
        return not pending

    def transpose(self, perm: list[int]) -> None:
        self.axes = [self.axes[a] for a in perm]


def _merged(atoms: _Atoms, final: list[int]) -> tuple[list[int], list[int]]:
    """Input factor sizes and the permutation of them, atoms that stay neighbours merged."""
    runs: list[list[int]] = []
    for atom in final:
        if runs and atoms.order.index(atom) == atoms.order.index(runs[-1][-1]) + 1:
            runs[-1].append(atom)
        else:
            runs.append([atom])
    by_input = sorted(runs, key=lambda run: atoms.order.index(run[0]))
    sizes = [int(np.prod([atoms.size[a] for a in run])) for run in by_input]
    return sizes, [by_input.index(run) for run in runs]


def _chain_from(start: onnx.NodeProto, users: dict[str, list[onnx.NodeProto]],
                outputs: set[str]) -> list[onnx.NodeProto]:
    """``start`` and the Reshape/Transpose nodes that follow it, each its predecessor's only
    consumer (so no one else reads the tensors the rewrite removes)."""
    chain = [start]
    while True:
        name = chain[-1].output[0]
        after = users.get(name, [])
        if name in outputs or len(after) != 1 or after[0].op_type not in CHAIN_OPS \
                or after[0].input[0] != name:
            return chain
        chain.append(after[0])


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a model shape inference cannot read keeps its chains
        return {}
    shapes = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def _composed(chain: list[onnx.NodeProto], shapes: dict[str, tuple[int, ...]]
              ) -> tuple[list[int], list[int]] | None:
    """(factor sizes, permutation) that compute ``chain``; None when a shape is unknown or a
    reshape does not factor into the atoms of the ones before it."""
    names = [chain[0].input[0], *[n.output[0] for n in chain]]
    if any(name not in shapes for name in names):
        return None
    atoms = _Atoms(shapes[names[0]])
    for node, out in zip(chain, names[1:], strict=True):
        if node.op_type == "Transpose":
            rank = len(atoms.axes)
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"),
                        list(range(rank))[::-1])
            atoms.transpose(perm)
        elif not atoms.reshape(shapes[out]):
            return None
    return _merged(atoms, [a for axis in atoms.axes for a in axis])


def _rewrite(model: onnx.ModelProto, chain: list[onnx.NodeProto], sizes: list[int],
             perm: list[int], in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
    """Replace ``chain`` by Reshape to ``sizes`` (a leading 1 kept as the batch), Transpose,
    Reshape to the chain's output (each left out when it does nothing)."""
    lead = [1] if in_shape[0] == 1 else []
    sizes, perm = [*lead, *sizes], [*range(len(lead)), *[p + len(lead) for p in perm]]
    source, result = chain[0].input[0], chain[-1].output[0]
    stem = result  # a tensor name: unique in the graph
    nodes: list[onnx.NodeProto] = []
    current = source
    if tuple(sizes) != in_shape:
        current = _reshape_node(model, nodes, current, sizes, f"{stem}/factors")
    if perm != sorted(perm):
        nodes.append(helper.make_node("Transpose", [current], [f"{stem}/moved"], perm=perm,
                                      name=f"{stem}/composed"))
        current = f"{stem}/moved"
    _reshape_node(model, nodes, current, list(out_shape), f"{stem}/out")
    nodes[-1].output[0] = result
    at = list(model.graph.node).index(chain[0])
    for node in chain:
        model.graph.node.remove(node)
    for offset, node in enumerate(nodes):
        model.graph.node.insert(at + offset, node)


def _reshape_node(model: onnx.ModelProto, nodes: list[onnx.NodeProto], source: str,
                  shape: list[int], name: str) -> str:
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(shape, np.int64),
                                                           f"{name}/shape"))
    nodes.append(helper.make_node("Reshape", [source, f"{name}/shape"], [name], name=name))
    return name


def compose_reshape_chains(model: onnx.ModelProto) -> int:
    """Rewrite each chain of 4 or more Reshape/Transpose nodes with 2 or more Transposes into
    at most 3 nodes; return how many chains. Shorter chains (a channel shuffle, attention's
    head split) are already in that form and are left as they are."""
    outputs = {o.name for o in model.graph.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    chains: list[list[onnx.NodeProto]] = []
    seen: set[int] = set()
    for node in model.graph.node:
        if node.op_type not in CHAIN_OPS or id(node) in seen:
            continue
        chain = _chain_from(node, users, outputs)
        seen.update(id(n) for n in chain)
        if len(chain) >= 4 and sum(n.op_type == "Transpose" for n in chain) >= 2:
            chains.append(chain)
    if not chains:
        return 0
    shapes = _static_shapes(model)
    rewritten = 0
    for chain in chains:
        composed = _composed(chain, shapes)
        if composed is None:
            continue
        _rewrite(model, chain, *composed, shapes[chain[0].input[0]],
                 shapes[chain[-1].output[0]])
        rewritten += 1
    return rewritten
