"""The scale case: VGG19 (143.7 M parameters) through ONNX and TFLite, fp32 parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecnn import zoo
from edgecnn.api import ConvertConfig, convert
from edgecnn.files.torch_files import default_card
from edgecnn.runtimes.sessions import OnnxSession, open_session, predict
from edgecnn.train import save_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vgg19(tmp_path_factory):
    out = tmp_path_factory.mktemp("vgg19")
    torch.manual_seed(0)
    module = zoo.build("vgg19")
    save_model(module, default_card("vgg19"), out / "vgg19.pt")
    x = np.random.default_rng(0).random((4, 3, 224, 224), dtype=np.float32)
    with torch.inference_mode():
        want = module(torch.from_numpy(x)).numpy()
    del module
    return out, x, want


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_vgg19_onnx_and_tflite_match_pytorch(vgg19):
    out, x, want = vgg19
    onnx_path = convert(out / "vgg19.pt", out / "vgg19.onnx", ConvertConfig("onnx")).path
    assert _relative(predict(OnnxSession(onnx_path, None), x), want) <= 1e-4
    tflite = convert(onnx_path, out / "vgg19.tflite", ConvertConfig("tflite")).path
    assert _relative(predict(open_session(tflite, "litert"), x), want) <= 1e-4
