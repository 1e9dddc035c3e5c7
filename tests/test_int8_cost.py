"""int8 against fp32 at the outputs: each measure against a hand-computed case, and the
convert reporting it (and warning) on the shipped models."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from edgecnn.checks.int8_cost import measure, sqnr_db


def test_sqnr_is_signal_over_noise_in_db():
    f = np.array([3.0, 4.0])  # signal 25
    assert sqnr_db(f, np.array([3.0, 3.5])) == pytest.approx(10 * math.log10(25 / 0.25))
    assert sqnr_db(f, f) == math.inf


def test_class_scores_get_agreement_confidence_and_top5():
    f = np.array([[9.0, 0, 0, 0, 0, 0, 0],    # confident, int8 agrees
                  [1.0, 1.1, 0, 0, 0, 0, 0],  # not confident, int8 flips to class 0
                  [0, 0, 0, 0, 0, 0, 8.0],    # confident, int8 flips, fp32's class drops out
                  [0, 0, 5.0, 0, 0, 0, 0]])   # confident, int8 flips but keeps it in top-5
    q = np.array([[8.0, 0, 0, 0, 0, 0, 0],
                  [1.2, 1.1, 0, 0, 0, 0, 0],
                  [1, 2, 3, 4, 5, 6, -1.0],
                  [0, 6.0, 5.0, 0, 0, 0, 0]])
    cost = measure([f], [q], ["logits"]).outputs[0]
    assert cost.top1_agreement_pct == 25.0
    assert cost.confident_images == 3 and cost.confident_agreement_pct == pytest.approx(100 / 3)
    assert cost.top5_contains_pct == 75.0  # rows 0, 1, 3
    assert cost.pixel_agreement_pct is None


def test_dense_maps_get_pixel_agreement_and_detector_tensors_sqnr_only():
    seg = np.zeros((1, 2, 2, 2))
    seg[0, 1, 0, 0] = 1.0  # class 1 at one pixel of four
    flipped = seg.copy()
    flipped[0, 1, 0, 0] = 0.0
    flipped[0, 0, 0, 0] = 1.0
    dense = measure([seg], [flipped], ["mask"]).outputs[0]
    assert dense.pixel_agreement_pct == 75.0 and dense.top1_agreement_pct is None
    boxes = np.random.default_rng(0).random((2, 84, 50))
    detector = measure([boxes], [boxes * 1.01], ["boxes"]).outputs[0]
    assert detector.top1_agreement_pct is None and detector.pixel_agreement_pct is None
    assert detector.sqnr_db == pytest.approx(40.0)  # an error of 1 % is 40 dB


def test_convert_reports_int8_against_fp32_and_warns_only_where_it_costs(tmp_path):
    from edgecnn.api import ConvertConfig, convert

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lenet = convert("lenet5", tmp_path / "l.tflite", ConvertConfig("tflite", int8=True))
    assert lenet.int8_cost is not None and lenet.int8_cost.images == 256
    logits = lenet.int8_cost.outputs[0]
    assert logits.top1_agreement_pct > 98 and logits.sqnr_db > 30
    assert "top-1 agreement" in lenet.checks["int8 vs fp32"]
    assert not [w for w in caught if "int8" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outlier = convert("mobile_se_outlier", tmp_path / "o.onnx",
                          ConvertConfig("onnx", int8=True))
    assert outlier.int8_cost is not None and outlier.int8_cost.outputs[0].sqnr_db < 10
    messages = [str(w.message) for w in caught if "edgecnn layers" in str(w.message)]
    assert len(messages) == 1 and "--max-drop" in messages[0], messages
