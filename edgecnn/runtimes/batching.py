"""Feeding a file exported for a fixed batch (often 1: most exporters', onnx2tf's, a
``torch.export`` that could not leave the batch free) with more images than that batch: split
into batches of exactly its size, run each, join the outputs. One place, so that every runtime
and check splits, refuses and joins the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from edgecnn.errors import BadInputError

T = TypeVar("T")


def split_batch(x: Sequence[T] | np.ndarray, step: int | None, source: Path | str) -> list:
    """``x`` in batches of exactly ``step`` (``x`` whole when ``step`` is None or its size);
    refused in one line when the images do not split evenly."""
    if not step or len(x) == step:
        return [x]
    if len(x) % step:
        raise BadInputError(f"{source}: takes batches of exactly {step}; {len(x)} images do not "
                            "split into them")
    return [x[i:i + step] for i in range(0, len(x), step)]


def join_outputs(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Each output concatenated over the batches that made it."""
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def run_in_batches(run: Callable[[np.ndarray], list[np.ndarray]], x: np.ndarray,
                   step: int | None, source: Path | str) -> list[np.ndarray]:
    """``run`` over ``x`` in batches of ``step``, outputs joined."""
    return join_outputs([run(chunk) for chunk in split_batch(x, step, source)])
