"""MSE range setting (converters/range_setting.py): the closed-form error against a direct
sum, the choices it must make on hand-built distributions, and its effect on a real model."""

from __future__ import annotations

import numpy as np
import pytest

from edgecnn.converters.range_setting import LEVELS, SHRINK, mse_range


def _direct_error(values: np.ndarray, lo: float, hi: float) -> float:
    """Clipping error of every value plus the uniform grid's rounding error of the rest."""
    step = (hi - lo) / LEVELS
    clipped = np.where(values < lo, lo - values, np.where(values > hi, values - hi, 0.0))
    inside = np.count_nonzero((values >= lo) & (values <= hi))
    return float(np.sum(clipped ** 2) + inside * step ** 2 / 12)


def _histogram(values: np.ndarray, bins: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    t = float(np.abs(values).max())
    return np.histogram(values, bins, range=(-t, t))


def test_the_chosen_range_is_the_best_candidate_by_direct_sum():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 20000), rng.uniform(4, 12, 200)])
    counts, edges = _histogram(values)
    lo, hi = mse_range(counts, edges, values.min(), values.max())
    candidates = [(a, b) for a in values.min() * SHRINK for b in values.max() * SHRINK]
    best = min(candidates, key=lambda c: _direct_error(values, *c))
    # bin centres stand in for the values: the choice matches to the candidate grid's spacing
    assert lo == pytest.approx(best[0], rel=0.05) and hi == pytest.approx(best[1], rel=0.05)
    assert _direct_error(values, lo, hi) <= 1.01 * _direct_error(values, *best)
    assert _direct_error(values, lo, hi) < _direct_error(values, values.min(), values.max())


def test_a_heavy_tail_is_clipped_on_its_own_side_and_relu_outputs_keep_zero():
    rng = np.random.default_rng(1)
    # a Laplace tail on the right (8-bit MSE clips it near 10 scales: Banner et al. 2019), a
    # bounded uniform side on the left
    values = np.concatenate([np.abs(rng.laplace(0, 1, 200000)), rng.uniform(-1, 0, 100000)])
    counts, edges = _histogram(values)
    lo, hi = mse_range(counts, edges, values.min(), values.max())
    assert 7.5 < hi < 0.9 * values.max()  # the sparse tail is clipped
    assert lo == pytest.approx(values.min(), rel=0.02)  # the dense side is not
    relu = np.abs(rng.normal(0, 1, 20000))
    counts, edges = _histogram(relu)
    lo, hi = mse_range(counts, edges, 0.0, relu.max())
    assert lo == 0.0 and 0 < hi <= relu.max()


def test_mse_ranges_beat_min_max_on_the_outlier_model(tmp_path):
    from edgecnn.api import ConvertConfig, convert

    sqnr = {}
    for method in ("minmax", "mse"):
        result = convert("mobile_se_outlier", tmp_path / f"{method}.onnx",
                         ConvertConfig("onnx", int8=True, calib_method=method))
        assert result.int8_cost is not None
        sqnr[method] = result.int8_cost.outputs[0].sqnr_db
    assert sqnr["mse"] > sqnr["minmax"] + 1.0, sqnr  # 7.0 against 4.4 dB when written


def test_entropy_calibration_clips_a_sparse_tail_that_minmax_keeps(tmp_path):
    """--calib-method entropy searches KL thresholds over a 2048-bin histogram, as TensorRT
    does: onnxruntime's defaults (128 bins, 128 levels) gave minmax's ranges exactly on every
    model of docs/int8-accuracy.md. A ReLU output whose images are mostly small, with a few
    bright outliers: entropy's range ends well inside minmax's."""
    from onnx import TensorProto, helper, numpy_helper

    from edgecnn.converters.quantize import QuantConfig, quantize_onnx
    from edgecnn.files.card import InputSpec, ModelCard
    from edgecnn.files.data import Dataset

    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 40, (200, 8, 8, 1)).astype(np.uint8)
    pixels[::20, 0, 0, 0] = 255  # 10 bright pixels among 12,800
    card = ModelCard("m", 0, InputSpec((1, 8, 8), pixel_scale=1 / 255), ("a",))
    data = Dataset(pixels, np.zeros(200, np.int64), "tail")

    def output_scale(method: str) -> float:
        qdq = quantize_onnx(model, card, data, QuantConfig(method=method)).model
        inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
        # the activation after the input's (onnxruntime folds the Relu into the Conv's range)
        q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] != "x")
        return float(inits[q.input[1]])

    minmax, entropy = output_scale("minmax"), output_scale("entropy")
    assert minmax == pytest.approx(1.0 / 255, rel=1e-3)  # the full range 0..1 over 255 steps
    assert entropy < 0.5 * minmax  # the 10 outliers are clipped, the rest resolved finer
