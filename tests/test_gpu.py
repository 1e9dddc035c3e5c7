"""The CUDA target on a real GPU. Every test here is marked ``gpu``: where torch sees no CUDA
device (CI, this project's CPU machines) they skip with that reason (tests/conftest.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgecnn.cli import cli
from edgecnn.files.torch_files import load_torch_model
from edgecnn.runtimes.placements import (
    TOLERANCE,
    PlacedModel,
    Placement,
    backend_flags,
    bf16_native,
)
from edgecnn.targets.cuda import DEFAULT_PLACEMENTS
from tests.conftest import LENET
from tests.test_precision import overflowing_pt2  # noqa: F401  (a fixture)

pytestmark = pytest.mark.gpu
QUICK = ["--runs", "30", "--min-time", "0", "--warmup", "5"]


def _bench(cli_runner, tmp_path, *args):
    out = tmp_path / "bench.json"
    result = cli_runner.invoke(cli, ["bench", *args, "--target", "cuda", *QUICK,
                                     "--json", str(out)])
    return result, (json.loads(out.read_text()) if out.exists() else None)


def test_lenet_gets_every_default_row_with_gpu_time_memory_and_parity(cli_runner, tmp_path):
    result, report = _bench(cli_runner, tmp_path, str(LENET))
    assert result.exit_code == 0, result.output
    rows = {r["runtime"]: r for r in report["results"]}
    expected = [n for n in DEFAULT_PLACEMENTS
                if bf16_native() or ":bf16" not in n]
    assert list(rows) == expected
    for name, row in rows.items():
        samples = np.asarray(row["samples_us"])
        assert row["stats"]["p50_us"] == pytest.approx(np.median(samples))
        assert row["gpu_stats"]["runs"] == row["stats"]["runs"]
        # the GPU's own time fits inside the host's launch-to-sync time of the same invokes
        assert row["gpu_stats"]["p50_us"] <= row["stats"]["p50_us"] * 1.05
        memory = row["gpu_memory_mb"]
        assert 0 < memory["allocated"] <= memory["reserved"]
        precision = Placement.parse(name).precision
        assert row["parity"]["max_rel_error"] <= TOLERANCE[precision]
        assert row["device"]["device"] == torch.cuda.get_device_name(0)
        assert "clocks_before" in row["device"] and row["warmup_runs"] >= 5


def test_graph_replay_gives_the_eager_outputs():
    x = load_torch_model(LENET).card.input.random_batch(8)
    outputs = {}
    for mode in ("eager", "tuned", "graph"):
        placement = Placement("cuda", "fp32", mode)
        with backend_flags(placement):
            placed = PlacedModel(LENET, placement)
            placed.bind(x)
            placed.launch()
            outputs[mode] = placed.outputs()[0]
    want = load_torch_model(LENET)(x)
    for mode, got in outputs.items():
        scale = np.abs(want).max()
        assert np.abs(got - want).max() / scale <= TOLERANCE["fp32"], mode


def test_a_model_wrong_on_the_gpu_fails_with_exit_1(cli_runner, tmp_path, overflowing_pt2):  # noqa: F811
    result, _ = _bench(cli_runner, tmp_path, str(overflowing_pt2), "--input-shape", "1,1,28,28",
                       "--runtime", "torch-cuda:fp16")
    assert result.exit_code == 1 and "NaN/inf" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_fixed_batch_export_refuses_another_batch_in_one_line(cli_runner, tmp_path,
                                                               overflowing_pt2):  # noqa: F811
    result, _ = _bench(cli_runner, tmp_path, str(overflowing_pt2), "--batch", "32")
    assert result.exit_code == 2 and "fixed batch of 1" in result.stderr


def test_validate_scores_the_gpu_precisions_on_real_images(cli_runner, tmp_path):
    out = tmp_path / "v.json"
    placements = ["torch-cuda:fp32", "torch-cuda:fp16"] + (
        ["torch-cuda:bf16"] if bf16_native() else [])
    args = [a for p in placements for a in ("--placement", p)]
    result = cli_runner.invoke(cli, ["validate", str(LENET), *args, "--min-agreement", "99",
                                     "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["runtime"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(placements) <= set(rows)
    assert rows["torch-cuda:fp32"]["max_abs_dlogit"] < 1e-3


def test_onnx_rows_need_onnxruntime_gpu(cli_runner, tmp_path, artefacts):
    import onnxruntime as ort

    providers = set(ort.get_available_providers())
    if not providers & {"CUDAExecutionProvider", "TensorrtExecutionProvider"}:
        result, _ = _bench(cli_runner, tmp_path, str(artefacts["onnx"]))
        assert result.exit_code == 2 and "onnxruntime" in result.stderr
        pytest.skip("onnxruntime-gpu is not installed here: only its one-line refusal checked")
    for name in ("onnx", "onnx_int8"):
        result, report = _bench(cli_runner, tmp_path, str(artefacts[name]))
        assert result.exit_code == 0, result.output
        assert all(r["runtime"].startswith("onnxruntime:") for r in report["results"])
        assert all(r["parity"]["argmax_flips"] == 0 for r in report["results"])
