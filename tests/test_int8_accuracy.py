"""The detection yardstick of scripts/int8_accuracy.py (issue 23): IoU, NMS and mAP50 against
cases worked by hand, and the synthetic MNIST detection set and its head decoding
(scripts/train_mnist_detector.py). numpy only: no conversion runs here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import int8_accuracy as acc  # noqa: E402  (scripts/ is not a package)
import train_mnist_detector as det  # noqa: E402


def test_iou_by_hand() -> None:
    boxes = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float64)
    # 5x10 overlap = 50 over 100 + 100 - 50
    assert acc.iou(np.array([0, 0, 10, 10.0]), boxes) == pytest.approx([1 / 3, 1.0, 0.0])


def test_nms_keeps_best_per_class() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [20, 20, 30, 30]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 1, 0])
    # box 1 overlaps box 0 by 90/110 > 0.5 in the same class: gone; box 2 is another class
    assert acc.nms(boxes, scores, classes).tolist() == [0, 2, 3]
    # a suppressed box suppresses nothing: [3..13] (IoU 7/13 with [0..10]) goes, and
    # [6..16] (IoU 1/4 with [0..10], 7/13 with the suppressed [3..13]) stays
    chain = np.array([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]], float)
    assert acc.nms(chain, scores[:3], np.zeros(3, int)).tolist() == [0, 2]


def test_average_precision_by_hand() -> None:
    # ranked TP, FP, TP over 2 truths: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    # envelope: 1 up to recall 1/2, 2/3 after -> 0.5 * 1 + 0.5 * 2/3
    assert acc.average_precision(np.array([True, False, True]), 2) == pytest.approx(5 / 6)
    assert acc.average_precision(np.array([True, True]), 4) == pytest.approx(0.5)
    assert acc.average_precision(np.array([], bool), 3) == 0.0


def _dets(rows: list[tuple[list[float], float, int]]) -> acc.Detections:
    return (np.array([r[0] for r in rows], float).reshape(-1, 4),
            np.array([r[1] for r in rows], float), np.array([r[2] for r in rows], int))


def test_map50_by_hand() -> None:
    square, far = [0, 0, 10, 10], [20, 20, 30, 30]
    truths = [(np.array([square], float), np.array([0])),
              (np.array([square, far], float), np.array([0, 1]))]
    predictions = [
        _dets([(square, 0.9, 0), ([50, 50, 60, 60], 0.8, 0)]),  # TP, FP
        _dets([([0, 0, 10, 12], 0.7, 0), (far, 0.6, 1), (far, 0.5, 1)]),  # TP (IoU 0.83), TP,
    ]  # and a duplicate (FP, after the TP: AP of class 1 stays 1)
    # class 0: TP, FP, TP over 2 -> 5/6; class 1: TP, FP over 1 -> 1
    assert acc.map50(predictions, truths) == pytest.approx(100 * (5 / 6 + 1) / 2)
    # a bootstrap sample reuses the per-image matches: image 0 twice has 2 truths of class 0,
    # ranked TP, TP, FP, FP -> AP 1; class 1 has no truth there and does not count
    scored = acc.matched(predictions, truths)
    assert scored.map50(np.array([0, 1])) == pytest.approx(scored.map50())
    assert scored.map50(np.array([0, 0])) == pytest.approx(100.0)
    # the right box with the wrong class is a false positive, and misses its truth
    wrong = [_dets([(square, 0.9, 1)]), _dets([(square, 0.9, 0), (far, 0.6, 1)])]
    assert acc.map50(wrong, truths) == pytest.approx(100 * (0.5 + 0.5) / 2)
    # IoU below 0.5 does not match: [0,0,10,25] against [0,0,10,10] is 0.4
    assert acc.map50([_dets([([0, 0, 10, 25], 0.9, 0)])], truths[:1]) == 0.0


def test_bootstrap_interval_holds_the_value() -> None:
    flips = np.array([1.0] * 90 + [0.0] * 10)
    low, high = acc.bootstrap_ci(lambda idx: float(flips[idx].mean()), len(flips), rounds=300)
    assert low < 0.9 < high and high - low < 0.2


def _block_digits() -> tuple[np.ndarray, np.ndarray]:
    """Ten 28x28 'digits': a filled block of brightness 100 + 15 k for class k, so the ink
    inside a box tells which label it should carry."""
    digits = np.zeros((10, 28, 28), np.uint8)
    for k in range(10):
        digits[k, 6:22, 8:20] = 100 + 15 * k
    return digits, np.arange(10)


def test_canvases_boxes_inside_and_labels_right() -> None:
    digits, labels = _block_digits()
    data = det.make_canvases(digits, labels, 60, seed=3)
    assert data.images.shape == (60, det.CANVAS, det.CANVAS)
    counts = [len(b) for b in data.boxes]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1
    for image, boxes, classes in zip(data.images, data.boxes, data.labels, strict=True):
        assert len(boxes) == len(classes)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= det.CANVAS).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        for (x0, y0, x1, y1), label in zip(boxes.astype(int), classes, strict=True):
            ink = image[y0:y1, x0:x1]
            assert ink.max() == pytest.approx(100 + 15 * label, abs=2)
            # tight: ink on every border of the box
            assert min(ink[0].max(), ink[-1].max(), ink[:, 0].max(), ink[:, -1].max()) > det.INK
        for a in range(len(boxes)):  # boxes never overlap
            others = np.delete(boxes, a, 0)
            assert not len(others) or acc.iou(boxes[a], others).max() == 0.0


def test_canvases_are_seeded() -> None:
    digits, labels = _block_digits()
    one, two = (det.make_canvases(digits, labels, 5, seed=7) for _ in range(2))
    assert np.array_equal(one.images, two.images)


def test_decode_inverts_the_training_targets() -> None:
    """A head that predicts exactly the targets decodes, after NMS, to the true boxes."""
    digits, labels = _block_digits()
    data = det.make_canvases(digits, labels, 20, seed=5)
    t = det.targets(data)
    assert int(t["obj"].sum()) == sum(len(b) for b in data.boxes)
    head = np.zeros((20, 5 + det.CLASSES, det.GRID, det.GRID), np.float32)
    head[:, 0] = np.where(t["obj"] > 0, 12.0, -12.0)
    offsets = np.clip(t["box"][:, :2], 1e-4, 1 - 1e-4)
    head[:, 1:3] = np.log(offsets / (1 - offsets))
    head[:, 3:5] = t["box"][:, 2:]
    for k in range(det.CLASSES):
        head[:, 5 + k] = np.where(t["cls"] == k, 12.0, 0.0)
    found = acc.detections(head)
    truths = list(zip(data.boxes, data.labels, strict=True))
    assert acc.map50(found, truths) == pytest.approx(100.0)
    for (boxes, _), truth in zip(acc.as_truth(found), data.boxes, strict=True):
        assert len(boxes) == len(truth)
        assert np.abs(np.sort(boxes, 0) - np.sort(truth, 0)).max() < 0.05
