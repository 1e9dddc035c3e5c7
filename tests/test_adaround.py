"""AdaRound (converters/adaround.py): a layer where nearest rounding is the wrong choice, and
the option end to end."""

from __future__ import annotations

import numpy as np

from edgecnn.converters.adaround import Moments, _accumulate, _factor, _patches, _rounded_up
from edgecnn.converters.bias_correction import Layer


def _conv(weight: np.ndarray, group: int) -> Layer:
    scale = np.abs(weight).reshape(len(weight), -1).max(1) / 127
    return Layer("conv", "Conv", "x", 1.0, 0, (-128, 127), weight, weight, "b", np.ones(1), group,
                 False, "w", scale, 0, (2, 1), (1, 0, 2, 1), (1, 2))


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


def test_sampled_rows_are_the_convolutions_own():
    # a grouped, strided, dilated, unevenly padded conv: each sampled im2col row times the
    # weights must be one output value of torch's conv2d, and the factor of their second moment
    # must give the mean squared output error of any weight change exactly
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 9, 8))
    w = rng.normal(size=(6, 2, 3, 2))
    layer = _conv(w, group=2)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 2), (0, 1)))
    want = F.conv2d(torch.tensor(padded), torch.tensor(w), stride=(2, 1), dilation=(1, 2),
                    groups=2).numpy()  # (3, 6, 5, 7)
    rows = _patches(layer, x, 10**6, np.random.default_rng(0))  # every position
    assert rows.shape == (3 * 5 * 7, 2, 2 * 3 * 2)
    got = np.einsum("rgk,gok->rgo", rows, w.reshape(2, 3, -1)).reshape(-1, 6)
    assert np.allclose(np.sort(got, axis=0), np.sort(want.transpose(0, 2, 3, 1).reshape(-1, 6),
                                                     axis=0))
    moments = Moments(np.zeros((2, 12, 12)))
    _accumulate(moments, rows)
    change = rng.normal(size=(6, 2, 3, 2))
    direct = np.mean(F.conv2d(torch.tensor(padded), torch.tensor(change), stride=(2, 1),
                              dilation=(1, 2), groups=2).numpy() ** 2)
    f = _factor(moments).astype(np.float64)
    via_factor = np.sum((change.reshape(2, 3, -1) @ f.transpose(0, 2, 1)) ** 2) / 6
    assert np.isclose(via_factor, direct, rtol=1e-4)


def test_depthwise_rounding_beats_nearest_on_its_output():
    # a depthwise 3x3 on inputs with correlated neighbours: the learned integers stay within
    # one step of W / s and give a smaller output error than rounding to nearest
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(2)
    base = rng.normal(size=(16, 4, 12, 12))
    x = base + np.roll(base, 1, axis=3)  # neighbouring taps move together
    w = rng.normal(size=(4, 1, 3, 3)) * 0.1
    layer = Layer("dw", "Conv", "x", 1.0, 0, (-128, 127), w, w, "b", np.ones(1), 4, False, "w",
                  np.full(4, 0.02), 0, (1, 1), (1, 1, 1, 1), (1, 1))
    learned = _rounded_up(layer, x.astype(np.float32))
    assert learned is not None and np.all(np.abs(learned - w / 0.02) < 1)

    def error(integers: np.ndarray) -> float:
        out = F.conv2d(torch.tensor(x), torch.tensor(w - integers * 0.02), padding=1, groups=4)
        return float(np.mean(out.numpy() ** 2))

    assert error(learned) < 0.95 * error(np.rint(w / 0.02))
