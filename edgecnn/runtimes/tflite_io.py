"""Quantising a float input for a TFLite file with int8 (or uint8) input: one function, shared
by the LiteRT and tflite-runtime sessions, TFLite Micro and the convert self-check, so every
reader rounds and clips to the input type the same way."""

from __future__ import annotations

import numpy as np


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """``x`` as the input ``detail`` (an interpreter's input details) takes it: float as is,
    int8/uint8 rounded with its scale and zero point and clipped to that type's range."""
    dtype = detail["dtype"]
    if dtype == np.float32:
        return np.ascontiguousarray(x, np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    q = np.round(x / np.float32(scale)) + zero
    return np.ascontiguousarray(np.clip(q, info.min, info.max).astype(dtype))
