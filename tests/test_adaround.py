"""AdaRound (converters/adaround.py): a layer where nearest rounding is the wrong choice, and
the option end to end."""

from __future__ import annotations

import numpy as np

from edgecnn.converters.adaround import _rounded_up
from edgecnn.converters.bias_correction import Layer


def test_rounding_that_cancels_beats_rounding_to_nearest():
    # two inputs that always move together, weights 0.55 and 0.65 steps: nearest rounds both
    # up (output 2 steps for 1.2), one up and one down gives 1 step: AdaRound must find that
    scale = 0.5
    w = np.array([[0.55 * scale, 0.65 * scale]])
    x = np.repeat(np.random.default_rng(0).uniform(-1, 1, (512, 1)), 2, axis=1)
    layer = Layer("fc", "Gemm", "x", 1.0, 0, (-128, 127), np.rint(w / scale) * scale, w, "b",
                  np.ones(1), 1, True, "w", np.array([scale]), 0)
    learned = _rounded_up(layer, x.astype(np.float32))
    assert learned is not None

    def error(integers: np.ndarray) -> float:
        return float(np.mean((x @ w.T - x @ (integers * scale).T) ** 2))

    nearest = np.rint(w / scale)
    assert nearest.sum() == 2 and learned.tolist() == [[0.0, 1.0]]
    assert error(learned) < error(nearest) / 10


def test_adaround_end_to_end(tmp_path):
    from edgecnn.api import ConvertConfig, convert

    learned = convert("lenet5", tmp_path / "ar.tflite",
                      ConvertConfig("tflite", int8=True, adaround=True))
    assert learned.checks["tflite max|Δ| vs qdq reference (steps)"] <= 1
    plain = convert("lenet5", tmp_path / "plain.onnx", ConvertConfig("onnx", int8=True))
    assert plain.int8_cost is not None and learned.int8_cost is not None
    assert learned.int8_cost.outputs[0].sqnr_db > plain.int8_cost.outputs[0].sqnr_db
