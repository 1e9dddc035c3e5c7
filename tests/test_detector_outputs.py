"""A detector's boxes and class scores in one output: int8 keeps them apart (the output Concat
stays float), so the scores are not read on the boxes' grid, and the self-check judges the
float output by its int8 layers."""

from __future__ import annotations

import numpy as np
import torch

from edgecnn.api import ConvertConfig, convert, inspect


class TinyDetector(torch.nn.Module):
    """Boxes in pixels (0..640) beside sigmoid class scores (0..1), concatenated as YOLO does."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 8, 3, 2, 1), torch.nn.ReLU())
        self.box = torch.nn.Conv2d(8, 4, 1)
        self.cls = torch.nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        boxes = torch.sigmoid(self.box(f)).flatten(2) * 640
        scores = torch.sigmoid(self.cls(f) * 4).flatten(2)
        return torch.cat([boxes, scores], 1)  # (N, 4 + classes, anchors), YOLO's output0


def _sqnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(a ** 2) / max(np.sum((a - b) ** 2), 1e-30)))


def test_boxes_and_scores_keep_their_own_precision(tmp_path):
    torch.manual_seed(0)
    net = TinyDetector().eval()
    images = torch.rand(64, 3, 32, 32)
    result = convert(net, tmp_path / "det.tflite", ConvertConfig("tflite", int8=True),
                     example_inputs=images[:1], calibration=[images])
    assert "tflite max|Δ| vs qdq reference (float output)" in result.checks
    info = inspect(result.path)
    assert "CONCATENATION" in info.details["float islands"]
    assert info.outputs[0].dtype == "float32"
    with torch.no_grad():
        want = net(images[:16]).numpy()
    got = result.run(images[:16])[0]
    # one int8 scale for both (2.5 a step) would read every score as 0 or 2.5: 0 dB or worse
    assert _sqnr(want[:, 4:], got[:, 4:]) > 25
    assert _sqnr(want[:, :4], got[:, :4]) > 25
