"""`edgecnn validate`: the parity report, its files, and the exit status that gates CI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from edgecnn.checks.validate import Thresholds, compare, paired_ci, worst_classes
from edgecnn.cli import cli
from edgecnn.files.torch_files import default_card
from tests.conftest import LENET


def _litert_logits(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], [len(x), 28, 28, 1])
    interpreter.allocate_tensors()
    scale, zero = inp["quantization"]
    q = np.clip(np.round(x.transpose(0, 2, 3, 1) / scale) + zero, -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], q)
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"]).astype(np.float32)
    scale, zero = out["quantization"]
    return (y - zero) * scale


def test_report_figures_and_files(cli_runner, artefacts, tmp_path, test_set):
    out_json, out_csv, out_md = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.md"
    result = cli_runner.invoke(cli, [
        "validate", str(LENET), str(artefacts["onnx"]), str(artefacts["onnx_int8"]),
        str(artefacts["tflite"]), str(artefacts["tflite_int8"]), "--max-drop", "0.3",
        "--min-agreement", "99", "--json", str(out_json), "--csv", str(out_csv),
        "--markdown", str(out_md)])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(out_json.read_text())
    assert report["passed"] and report["images"] == 10000
    rows = {(r["artefact"], r["runtime"]): r for r in report["rows"]}
    # independent references: torch.export.load and LiteRT's own interpreter, no edgecnn code
    x = test_set.images.transpose(0, 3, 1, 2).astype(np.float32) / 255  # card: x = pixels / 255
    with torch.inference_mode(), open(LENET, "rb") as handle:  # a handle: any suffix loads
        torch_logits = torch.export.load(handle).module()(torch.from_numpy(x)).numpy()
    torch_correct = torch_logits.argmax(1) == test_set.labels
    assert rows[(LENET.name, "torch")]["top1_pct"] == pytest.approx(100 * torch_correct.mean())
    litert = _litert_logits(artefacts["tflite_int8"], x)
    int8 = rows[(artefacts["tflite_int8"].name, "litert")]
    litert_correct = litert.argmax(1) == test_set.labels
    assert int8["top1_pct"] == pytest.approx(100 * litert_correct.mean())
    assert int8["delta_pp"] == pytest.approx(100 * (litert_correct.mean() - torch_correct.mean()))
    assert int8["agreement_pct"] == pytest.approx(
        100 * (litert.argmax(1) == torch_logits.argmax(1)).mean())
    assert int8["max_abs_dlogit"] == pytest.approx(np.abs(litert - torch_logits).max(), rel=1e-5)
    onnx_fp32 = rows[(artefacts["onnx"].name, "onnxruntime")]
    # fp32 ONNX vs PyTorch: float reassociation only, ~1e-6 on logits of magnitude ~10
    assert onnx_fp32["agreement_pct"] == 100.0 and onnx_fp32["max_abs_dlogit"] < 1e-4
    assert {(artefacts["tflite"].name, "tflite-runtime"), (artefacts["tflite"].name, "litert")} <= set(rows)
    assert len(list(csv.DictReader(out_csv.open()))) == len(rows)
    assert out_md.read_text().count("\n|") >= len(rows) + 1
    assert "top1 %" in result.output and "95% CI" in result.output


def test_broken_threshold_exits_1(cli_runner, artefacts, tmp_path):
    out = tmp_path / "r.json"
    result = cli_runner.invoke(cli, ["validate", str(artefacts["onnx"]),
                                     str(artefacts["onnx_int8"]), "--min-agreement", "100",
                                     "--limit", "3000", "--json", str(out)])
    assert result.exit_code == 1
    assert "parity check failed" in result.stderr
    report = json.loads(out.read_text())  # the report is still written for the CI log
    assert not report["passed"] and report["images"] == 3000
    failing = [r for r in report["rows"] if not r["passed"]]
    assert failing and "agreement" in failing[0]["failures"][0]


def test_paired_interval_matches_a_hand_computation():
    """4 images, the new model loses one: d = [0, 0, 0, -1], mean -25 pp, sample sd 0.5,
    standard error 0.25, so the interval is -25 +- 1.959964 * 25 pp."""
    ref = np.array([True, True, True, True])
    new = np.array([True, True, True, False])
    mean, low, high = paired_ci(new, ref)
    assert mean == pytest.approx(-25.0)
    assert low == pytest.approx(-73.9991, abs=1e-4) and high == pytest.approx(23.9991, abs=1e-4)


def _synthetic(n_wrong: int, n: int = 100):
    """Reference right on all ``n`` images; the candidate wrong on the first ``n_wrong``."""
    labels = np.arange(n) % 10
    ref = np.eye(10, dtype=np.float32)[labels]
    new = ref.copy()
    new[:n_wrong] = np.roll(new[:n_wrong], 1, axis=1)
    return new, ref, labels


@pytest.mark.parametrize("limit,passes", [(2.9, False), (3.0, True), (3.1, True)])
def test_max_drop_gate_at_its_boundary(limit, passes):
    new, ref, labels = _synthetic(3)
    row = compare("m", "rt", new, ref, labels, default_card("lenet5"), Thresholds(max_drop_pp=limit))
    assert row.delta_pp == pytest.approx(-3.0) and row.passed is passes
    assert passes or row.failures == [f"drop 3.00 pp > {limit}"]


@pytest.mark.parametrize("limit,passes", [(97.1, False), (97.0, True), (96.9, True)])
def test_min_agreement_gate_at_its_boundary(limit, passes):
    new, ref, labels = _synthetic(3)
    row = compare("m", "rt", new, ref, labels, default_card("lenet5"),
                  Thresholds(min_agreement_pct=limit))
    assert row.agreement_pct == pytest.approx(97.0) and row.passed is passes


def test_max_drop_fails_the_cli_with_exit_1(cli_runner, artefacts, tmp_path):
    """The int8 model's QDQ reference (the same on every CPU) loses 0.01 pp against PyTorch on
    the 10,000 test images; --max-drop 0 must fail it, and the JSON must say which row."""
    out = tmp_path / "r.json"
    result = cli_runner.invoke(cli, ["validate", str(LENET), str(artefacts["onnx_int8"]),
                                     "--max-drop", "0", "--json", str(out)])
    assert result.exit_code == 1 and "parity check failed" in result.stderr
    rows = {(r["artefact"], r["runtime"]): r for r in json.loads(out.read_text())["rows"]}
    reference = rows[(artefacts["onnx_int8"].name, "qdq-reference")]
    assert not reference["passed"] and reference["failures"][0].startswith("drop 0.01 pp")
    assert rows[(LENET.name, "torch")]["passed"]


def test_data_of_the_wrong_shape_is_refused(cli_runner, artefacts, tmp_path):
    data = tmp_path / "rgb.npz"
    np.savez(data, x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4))
    result = cli_runner.invoke(cli, ["validate", str(artefacts["onnx"]), "--data", str(data)])
    assert result.exit_code == 2 and "3x32x32" in result.stderr


def test_worst_classes_by_hand():
    """Class 1 loses 2 of its 4 images (50 pp), class 2 one of 4 (25 pp); class 0 gains."""
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    ref = labels.copy()
    ref[0] = 5  # the reference misses one class-0 image the candidate gets right
    pred = labels.copy()
    pred[[4, 5, 8]] = 7
    names = tuple("abcdefghij")
    assert worst_classes(pred, ref, labels, names) == ["b (-50.00 pp)", "c (-25.00 pp)"]
    assert worst_classes(ref, ref, labels, names) == []


@pytest.mark.parametrize("kwargs", [{"max_drop_pp": -0.1}, {"min_agreement_pct": -1},
                                    {"min_agreement_pct": 100.5}, {"max_int8_steps": -1},
                                    {"max_drop_pp": float("nan")}])
def test_thresholds_refuse_what_cannot_be_a_budget(kwargs):
    with pytest.raises(ValueError):
        Thresholds(**kwargs)


@pytest.mark.parametrize("kwargs", [{"min_agreement_pct": 0}, {"min_agreement_pct": 100},
                                    {"max_drop_pp": 0}, {"max_int8_steps": 0}])
def test_thresholds_accept_their_end_points(kwargs):
    Thresholds(**kwargs)


def test_paired_interval_of_one_and_two_images():
    """One image: no spread to estimate, the interval is the point. Two images that both lose:
    sd 0, so the interval is the point too."""
    assert paired_ci(np.array([False]), np.array([True])) == (-100.0, -100.0, -100.0)
    mean, low, high = paired_ci(np.array([False, True]), np.array([True, True]))
    assert mean == pytest.approx(-50.0)
    assert low == pytest.approx(-50 - 1.959964 * 50) and high == pytest.approx(-50 + 1.959964 * 50)


def test_identical_pct_counts_whole_logit_vectors():
    new, ref, labels = _synthetic(0)
    new[:5, 3] += 1e-3  # five images differ in one logit each
    row = compare("m", "rt", new, ref, labels, default_card("lenet5"), Thresholds())
    assert row.identical_pct == pytest.approx(95.0)


@pytest.mark.parametrize("runtime,hint", [("qdq-reference", "comes with every int8 ONNX file"),
                                          ("tensorrt", "")])
def test_an_unknown_runtime_is_refused_in_one_line(cli_runner, artefacts, runtime, hint):
    result = cli_runner.invoke(cli, ["validate", str(artefacts["onnx_int8"]), "--runtime",
                                     runtime, "--limit", "10"])
    assert result.exit_code == 2, result.output
    assert f"--runtime {runtime!r}: choose from litert, onnxruntime, tflite-micro, tflite-runtime, torch" \
        in result.output
    assert hint in result.output and len(result.output.strip().splitlines()) == 1


def test_images_without_labels_give_agreement_and_sqnr(cli_runner, tmp_path, artefacts):
    """A third-party model's user rarely has labels: an .npz without 'y' or a folder of images
    with no class folders still gives agreement with the reference and logit SQNR."""
    from PIL import Image

    from edgecnn.files.data import SHIPPED_TEST_SET, load_dataset

    test = load_dataset(SHIPPED_TEST_SET, split="test").take(64)
    npz = tmp_path / "unlabelled.npz"
    np.savez(npz, x=test.images)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(test.images[:16]):
        Image.fromarray(image.reshape(28, 28)).save(folder / f"{i}.png")
    for data in (npz, folder):
        out = tmp_path / f"{data.stem}.json"
        result = cli_runner.invoke(cli, ["validate", str(artefacts["onnx"]),
                                         str(artefacts["tflite_int8"]), "--data", str(data),
                                         "--min-agreement", "90", "--json", str(out)])
        assert result.exit_code == 0, result.output
        rows = json.loads(out.read_text())["rows"]
        int8 = next(r for r in rows if r["artefact"].endswith(".tflite"))
        assert int8["top1_pct"] is None and int8["agreement_pct"] >= 90
        assert 15 < int8["sqnr_db"] < 80
    refused = cli_runner.invoke(cli, ["validate", str(artefacts["onnx"]), "--data", str(npz),
                                      "--max-drop", "1"])
    assert refused.exit_code == 2 and "--min-agreement" in refused.output
