"""`edgecnn validate`: the parity report, its files, and the exit status that gates CI."""

from __future__ import annotations

import csv
import json

import numpy as np

from edgecnn.cli import cli
from edgecnn.validate import paired_ci
from tests.conftest import LENET


def test_report_figures_and_files(cli_runner, artefacts, tmp_path):
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
    reference = rows[(LENET.name, "torch")]
    assert reference["top1_pct"] >= 99.0 and reference["delta_pp"] == 0
    onnx_fp32 = rows[(artefacts["onnx"].name, "onnxruntime")]
    assert onnx_fp32["agreement_pct"] == 100.0 and onnx_fp32["max_abs_dlogit"] < 1e-4
    int8 = rows[(artefacts["tflite_int8"].name, "litert")]
    low, high = int8["ci95_pp"]
    assert low <= int8["delta_pp"] <= high and abs(int8["delta_pp"]) <= 0.3
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
    rng = np.random.default_rng(0)
    ref = rng.random(500) < 0.9
    new = ref.copy()
    new[:10] = ~new[:10]
    mean, low, high = paired_ci(new, ref)
    d = new.astype(float) - ref.astype(float)
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert np.isclose(mean, 100 * d.mean())
    assert np.isclose(low, 100 * (d.mean() - 1.959964 * se))
    assert np.isclose(high, 100 * (d.mean() + 1.959964 * se))


def test_data_of_the_wrong_shape_is_refused(cli_runner, artefacts, tmp_path):
    data = tmp_path / "rgb.npz"
    np.savez(data, x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4))
    result = cli_runner.invoke(cli, ["validate", str(artefacts["onnx"]), "--data", str(data)])
    assert result.exit_code == 2 and "3x32x32" in result.stderr
