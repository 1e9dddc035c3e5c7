"""Decompositions applied to an exported program before torch.onnx writes it.

PyTorch's own decomposition of ``adaptive_avg_pool2d`` to an output that does not divide the
input (VGG's and AlexNet's 7x7 pool on a 4x4 map, at 128x128 input) gathers every window with
GatherND, masks the short ones with Where and sums them with six-dimensional Gathers: ops no
TFLite CNN runtime takes, written for a pooling TFLite can express with slices and means. Here
each window is a Slice and a ReduceMean, one axis at a time, joined by Concat: the same windows
PyTorch averages (start = floor(i * in / out), end = ceil((i + 1) * in / out)), the mean over
rows then columns equal to the mean over the window up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Decomposition = Callable[..., torch.Tensor]


def _windows(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows along one axis."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _mean_windows(x: torch.Tensor, axis: int, out: int) -> torch.Tensor:
    size = x.shape[axis]
    if size % out == 0:  # equal windows: one reshape and one mean, not ``out`` slices
        shape = (*x.shape[:axis], out, size // out, *x.shape[axis + 1:])
        return x.reshape(shape).mean(dim=axis + 1)
    return torch.cat([x.narrow(axis, start, end - start).mean(dim=axis, keepdim=True)
                      for start, end in _windows(size, out)], dim=axis)


def adaptive_avg_pool2d(x: torch.Tensor, output_size: Any) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` as slices and means (module docstring)."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    out_h, out_w = (x.shape[-2] if o is None else int(o) for o in output_size)
    in_h, in_w = x.shape[-2], x.shape[-1]
    if (out_h, out_w) == (1, 1):  # as ATen's own adaptive_avg_pool2d: a mean (ReduceMean)
        return x.mean(dim=(-2, -1), keepdim=True)
    if in_h % out_h == 0 and in_w % out_w == 0:  # equal windows: one average pool, as ATen's
        kernel = (in_h // out_h, in_w // out_w)
        return torch.nn.functional.avg_pool2d(x, kernel, kernel)
    return _mean_windows(_mean_windows(x, x.dim() - 2, out_h), x.dim() - 1, out_w)


DECOMPOSITIONS: dict[Any, Decomposition] = {
    torch.ops.aten.adaptive_avg_pool2d.default: adaptive_avg_pool2d,
    torch.ops.aten._adaptive_avg_pool2d.default: adaptive_avg_pool2d,
}


def with_exact_decompositions(program: torch.export.ExportedProgram
                              ) -> torch.export.ExportedProgram:
    """``program`` with :data:`DECOMPOSITIONS` applied, only where it holds such an op (every
    other op is left to torch.onnx, which knows better ONNX forms for many of them)."""
    found = {node.target for node in program.graph.nodes if node.op == "call_function"}
    table = {op: fn for op, fn in DECOMPOSITIONS.items() if op in found}
    return program.run_decompositions(table) if table else program
