"""Activation ranges by error minimisation: per tensor, the clipping range whose int8 grid
loses least, measured on the calibration images' histogram.

Min/max ranges let one outlier stretch a tensor's grid: every other value then falls on a few
steps. Entropy (TensorRT's KL) and percentile clip, but by a rule that ignores the rounding error
a clip saves. Here each candidate range ``[lo, hi]`` is scored by the squared error it causes over
the observed distribution, as AIMET's and Nagel et al.'s MSE range setting do:

    error(lo, hi) = sum over values below lo of (v - lo)^2 + above hi of (v - hi)^2
                    + (values inside) * step^2 / 12,     step = (hi - lo) / 255

the first two terms the clipping, the last the rounding of a uniform grid (Widrow's model). The
candidates shrink min and max independently by a grid of factors, so a one-sided outlier is
clipped on its own side only; a tensor that never goes below 0 (after ReLU) keeps lo = 0.

The ranges are written as onnxruntime's calibration cache, so quantize_static computes scales and
zero points from them exactly as from its own: the ONNX and TFLite files share them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LEVELS = 255  # an 8-bit activation grid
SHRINK = np.linspace(0.05, 1.0, 96)  # candidate fractions of the observed min and max


def mse_range(counts: np.ndarray, edges: np.ndarray, low: float, high: float
              ) -> tuple[float, float]:
    """The ``(lo, hi)`` minimising the expected squared int8 error of values distributed as
    ``counts`` over ``edges``, within the observed ``[low, high]``; 0 stays inside."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low <= 0:
        return low, high
    centres = (edges[:-1] + edges[1:]).astype(np.float64) / 2
    weights = counts.astype(np.float64)
    # prefix sums of n, n*v, n*v^2 give each candidate's clipping error in O(1)
    n0 = np.concatenate([[0.0], np.cumsum(weights)])
    n1 = np.concatenate([[0.0], np.cumsum(weights * centres)])
    n2 = np.concatenate([[0.0], np.cumsum(weights * centres ** 2)])
    los = low * SHRINK if low < 0 else np.zeros(1)
    his = high * SHRINK if high > 0 else np.zeros(1)
    b = np.searchsorted(centres, los, side="left")[:, None]  # bins below lo: [0, b)
    a = np.searchsorted(centres, his, side="right")[None, :]  # bins above hi: [a, end)
    lo, hi = los[:, None], his[None, :]
    below = lo ** 2 * n0[b] - 2 * lo * n1[b] + n2[b]
    above = (n2[-1] - n2[a]) - 2 * hi * (n1[-1] - n1[a]) + hi ** 2 * (n0[-1] - n0[a])
    inside = n0[a] - n0[b]
    step = (hi - lo) / LEVELS
    error = below + above + inside * step ** 2 / 12
    i, j = np.unravel_index(int(np.argmin(error)), error.shape)
    return float(los[i]), float(his[j])


def mse_tensors_data(histograms: dict[str, Any], method: Any) -> Any:
    """onnxruntime ``TensorsData`` of MSE ranges from its histogram collector's
    ``histogram_dict`` (``hist, edges, min, max[, threshold]`` per tensor), labelled with the
    calibration ``method`` quantize_static is then called with (it checks the cache's)."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    ranges = {}
    for name, (counts, edges, low, high, *_) in histograms.items():
        lo, hi = mse_range(np.asarray(counts), np.asarray(edges), float(low), float(high))
        ranges[name] = TensorData(lowest=np.float32(lo), highest=np.float32(hi))
    return TensorsData(method, ranges)
