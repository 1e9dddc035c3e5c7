"""Models nobody on the team wrote: torchvision CNNs saved with torch.export, and a third-party
style ONNX file (TorchScript exporter, opset 11, dynamic H/W, computed pads, two outputs).

A representative subset within CI's budget (smaller variants, 96x96 inputs); the whole
torchvision table is ``scripts/coverage.py`` -> docs/coverage.md. Random weights only.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, unavailable

from edgecnn.api import ConvertConfig, convert
from edgecnn.checks.int8_self_check import compare_layers, first_unexplained, pinned_identical_share
from edgecnn.cli import cli
from edgecnn.files.model_files import tflite_metadata
from edgecnn.files.torch_files import load_torch_model
from edgecnn.inspection import inspect_model
from edgecnn.runtimes.sessions import OnnxSession, open_session, predict_all, reference_session

sys.path.insert(0, str(ROOT / "scripts"))
import torchvision_zoo  # noqa: E402  (scripts/ is not a package)

SIZE = 96  # every model below accepts it; a quarter of the 224x224 cost
# float32 rounds each op to 2^-24 relative; summation order differs between PyTorch, onnxruntime
# and XNNPACK, and through ~50 layers with cancellation the error relative to the largest output
# stays below 1e-4 (the bound; measured 1e-7..1e-6 in docs/coverage.md)
FP32_RTOL = 1e-4
SUBSET = ["mobilenet_v3_small",   # SE blocks, hard-swish/-sigmoid, depthwise
          "shufflenet_v2_x0_5",   # channel shuffle (the one real TRANSPOSE), Split
          "resnet18",             # residuals, AdaptiveAvgPool as ReduceMean
          "squeezenet1_1",        # ceil-mode MaxPool, Concat
          "convnext_tiny",        # permutes, LayerNorm, GELU, Linear on channels-last
          "lraspp_mobilenet_v3_large"]  # bilinear Resize, a dict output


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    try:
        torchvision_zoo.models()
    except ImportError as exc:
        unavailable(str(exc))
    folder = tmp_path_factory.mktemp("torchvision")
    return {name: torchvision_zoo.export(name, folder, size=SIZE) for name in SUBSET}


def _relative_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return max(float(np.abs(g - w).max()) / max(float(np.abs(w).max()), 1e-30)
               for g, w in zip(got, want, strict=True))


def _transposes(path: Path) -> int:
    return sum(op["count"] for op in inspect_model(path).ops if op["op"] == "TRANSPOSE")


def _shuffles(onnx_path: Path) -> int:
    """Channel shuffles: the 5-D Transposes of (N, groups, C/groups, H, W)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    return sum(1 for n in model.graph.node if n.op_type == "Transpose"
               and len(next(a.ints for a in n.attribute if a.name == "perm")) == 5)


@pytest.mark.parametrize("name", SUBSET)
def test_torchvision_fp32_matches_pytorch_without_transposes(exports, tmp_path, name):
    export = exports[name]
    onnx_path = convert(export.path, tmp_path / "m.onnx", ConvertConfig("onnx")).path
    tflite = convert(export.path, tmp_path / "m.tflite", ConvertConfig("tflite")).path
    x = np.random.default_rng(0).standard_normal((2, *export.input_shape[1:])).astype(np.float32)
    model = load_torch_model(export.path)
    want = [np.concatenate(parts) for parts in zip(*(model.outputs(x[i:i + 1])
                                                     for i in range(len(x))), strict=True)]
    got = predict_all(open_session(tflite, "litert"), x)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert _relative_error(got, want) <= FP32_RTOL
    assert _transposes(tflite) == _shuffles(onnx_path)  # zero in every CNN but ShuffleNet


def test_vision_transformer_converts_for_its_batch(tmp_path):
    """torchvision's VisionTransformer (vit_b_16's class, two small layers): its attention moves
    the batch axis of a batch-1 export, so the file is written for batch 1 (no -1 in its
    shapes), with BATCH_MATMUL for the two activation products; fp32 and int8 both hold."""
    zoo = torchvision_zoo.models()
    torch.manual_seed(0)
    module = zoo.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                   hidden_dim=64, mlp_dim=128, num_classes=10).eval()
    torch.nn.init.normal_(module.heads.head.weight, std=0.02)  # torchvision zero-inits it
    pt2 = tmp_path / "vit.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(1, 3, 32, 32),)), pt2)
    tflite = convert(pt2, tmp_path / "vit.tflite", ConvertConfig("tflite")).path
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        want = np.concatenate([module(torch.from_numpy(x[i:i + 1])).numpy() for i in range(3)])
    for runtime in ("litert", "tflite-runtime"):
        try:
            session = open_session(tflite, runtime)
        except Exception as exc:  # noqa: BLE001  (a runtime missing here is a skip, not a pass)
            pytest.skip(f"{runtime}: {exc}")
        got = predict_all(session, x)[0]  # fed image by image: the file takes batch 1
        assert _relative_error([got], [want]) <= FP32_RTOL
    assert session.fixed_batch == 1
    ops = {op["op"] for op in inspect_model(tflite).ops}
    assert "BATCH_MATMUL" in ops and "GELU" in ops
    images = np.clip(np.random.default_rng(1).random((16, 32, 32, 3)) * 255, 0, 255)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=images.astype(np.uint8), y=np.zeros(16, np.int64))
    qdq = convert(pt2, tmp_path / "q.onnx", ConvertConfig("onnx", int8=True, calib=calib)).path
    quantized = convert(qdq, tmp_path / "q.tflite", ConvertConfig("tflite", int8=True)).path
    layers = compare_layers(qdq, quantized, images[:2].astype(np.float32).transpose(0, 3, 1, 2)
                            / 255.0)
    assert all(d.pinned_max_steps is not None and d.pinned_max_steps <= 1 for d in layers)
    assert sum(d.pinned_off_tie or 0 for d in layers) <= 1e-3 * sum(d.values for d in layers)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """Smooth random 96x96 RGB images (8x8 blocks): no real data ships for ImageNet models."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (64, SIZE // 8, SIZE // 8, 3), dtype=np.uint8)
    images = blocks.repeat(8, axis=1).repeat(8, axis=2)
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, x=images, y=np.zeros(len(images), np.int64))
    return path


def test_torchvision_int8_matches_its_qdq_reference(exports, calibration, tmp_path):
    """resnet18 through the README's int8 path: one quantisation, and LiteRT's integers equal
    the QDQ graph's reference semantics wherever no rounding tie intervenes."""
    export = exports["resnet18"]
    qdq = convert(export.path, tmp_path / "q.onnx",
                  ConvertConfig("onnx", int8=True, calib=calibration)).path
    tflite = convert(qdq, tmp_path / "q.tflite", ConvertConfig("tflite", int8=True)).path
    x = np.load(calibration)["x"][:1].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    layers = compare_layers(qdq, tflite, x)
    assert len(layers) > 20  # every block's activations were compared
    stem = layers[1]  # after the quantised input: conv1 + relu
    # The stem sees identical integers on both sides. The reference requantises in float32 and
    # LiteRT in fixed point or float with another summation order, so they part only where the
    # exact value lies within float error of a rounding tie: one step, on a vanishing share.
    assert stem.inputs_identical and stem.max_steps <= 1 and stem.differing <= 0.001
    # Deeper down a tie's step feeds later layers, where it crosses further ties (random-weight
    # ResNets amplify it; docs/coverage.md). Every layer whose inputs are still identical
    # integers must stay within one tie, wherever it is: no wrong lowering anywhere.
    assert first_unexplained(layers) is None
    # at least the stem and its input: the same QUANTIZE of the same floats feeds the stem
    assert sum(d.inputs_identical for d in layers) >= 2
    # Fed the integers LiteRT computed before it, every layer of the reference agrees with
    # LiteRT except where its real value sits within float error of a rounding half.
    assert all(d.pinned_max_steps is not None and d.pinned_max_steps <= 1 for d in layers)
    assert sum(d.pinned_off_tie or 0 for d in layers) <= 1e-5 * sum(d.values for d in layers)
    assert pinned_identical_share(layers) >= 0.9999


def test_wrong_calibration_size_is_refused_in_one_line(exports, cli_runner):
    result = cli_runner.invoke(cli, ["convert", str(exports["resnet18"].path), "--to", "tflite",
                                     "--int8"])
    assert result.exit_code == 2
    assert "3x96x96" in result.output and "\n" not in result.output.strip()


# -- a third-party ONNX file ------------------------------------------------------------------
class _SamePadConv(torch.nn.Conv2d):
    """TensorFlow-style SAME padding computed from the input size at run time."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = torch.nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0)


class _SegmentNet(torch.nn.Module):
    """PReLU, ceil-mode pooling, a transposed conv and two outputs (logits, mask)."""

    def __init__(self):
        super().__init__()
        self.stem = _SamePadConv(3, 8, 3, stride=2)
        self.act = torch.nn.PReLU(8)
        self.body = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(self.act(self.stem(x)), 3, 2, ceil_mode=True)
        mask = self.up(torch.relu(self.body(y)))
        return self.fc(mask.mean((2, 3))), torch.sigmoid(mask)


@pytest.fixture(scope="module")
def third_party(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("third_party") / "segment_op11.onnx"
    torch.onnx.export(_SegmentNet().eval(), (torch.randn(1, 3, 64, 64),), str(path),
                      dynamo=False, opset_version=11, input_names=["image"],
                      output_names=["logits", "mask"],
                      dynamic_axes={"image": {2: "height", 3: "width"}})
    return path


def test_symbolic_image_size_asks_for_input_shape(third_party, tmp_path, cli_runner):
    result = cli_runner.invoke(cli, ["convert", str(third_party), "--to", "tflite", "-o",
                                     str(tmp_path / "m.tflite")])
    assert result.exit_code == 2
    assert "--input-shape" in result.output and "'height'" in result.output
    assert not (tmp_path / "m.tflite").exists()


def test_third_party_onnx_is_benched_with_the_input_shape_convert_takes(third_party, tmp_path,
                                                                         cli_runner):
    """No card, symbolic H and W (and a fixed batch of 1): bench asks for --input-shape in one
    line, then runs at that shape, as convert does."""
    asked = cli_runner.invoke(cli, ["bench", str(third_party)])
    assert asked.exit_code == 2
    assert asked.output.strip().splitlines() == [
        f"edgecnn: error: {third_party}: input 'image' has symbolic dims [3, 'height', 'width'];"
        " give --input-shape N,C,H,W"]
    report = tmp_path / "bench.json"
    ran = cli_runner.invoke(cli, ["bench", str(third_party), "--input-shape", "1,3,48,40",
                                  "--runs", "3", "--min-time", "0", "--warmup", "1",
                                  "--json", str(report)])
    assert ran.exit_code == 0, ran.output
    assert [r["batch"] for r in json.loads(report.read_text())["results"]] == [1]
    wrong = cli_runner.invoke(cli, ["bench", str(third_party), "--input-shape", "1,1,48,40"])
    assert wrong.exit_code == 2 and "does not fit" in wrong.output


def test_third_party_onnx_converts_with_fixed_shape_and_keeps_its_outputs(third_party,
                                                                           tmp_path, cli_runner):
    out = tmp_path / "m.tflite"
    result = cli_runner.invoke(cli, ["convert", str(third_party), "--to", "tflite",
                                     "--input-shape", "1,3,64,64", "--mean", "0.485,0.456,0.406",
                                     "--std", "0.229,0.224,0.225", "-o", str(out)])
    assert result.exit_code == 0, result.output
    info = inspect_model(out)
    assert [o.name for o in info.outputs] == ["logits", "mask"]
    assert _transposes(out) == 0
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    want = predict_all(OnnxSession(third_party, None), x)  # the user's own file, as given
    got = predict_all(open_session(out, "litert"), x)
    assert [g.shape for g in got] == [(3, 5), (3, 8, 32, 32)]
    assert _relative_error(got, want) <= FP32_RTOL
    card = json.loads(tflite_metadata(out, "edgecnn_card"))
    assert card["input"]["mean"] == [0.485, 0.456, 0.406]
    assert card["input"]["std"] == [0.229, 0.224, 0.225]
    assert card["input"]["shape"] == [3, 64, 64]


def test_batch1_export_runs_any_batch(exports, tmp_path):
    """Most people export at batch 1: PyTorch, onnxruntime and TFLite sessions split a batch
    of 3 into single images, and every format agrees with PyTorch image by image."""
    export = exports["mobilenet_v3_small"]
    x = np.random.default_rng(2).standard_normal((3, *export.input_shape[1:])).astype(np.float32)
    model = load_torch_model(export.path)
    single = [model.outputs(x[i:i + 1])[0] for i in range(3)]
    want = np.concatenate(single)
    onnx_path = convert(export.path, tmp_path / "m.onnx", ConvertConfig("onnx")).path
    for path, runtime in ((export.path, "torch"), (onnx_path, "onnxruntime"),
                          (onnx_path, "qdq-reference")):
        session = reference_session(path) if runtime == "qdq-reference" else open_session(
            path, runtime)
        got = predict_all(session, x)[0]
        assert got.shape == want.shape
        assert _relative_error([got], [want]) <= FP32_RTOL
