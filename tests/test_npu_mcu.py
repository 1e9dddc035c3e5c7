"""Integer-only targets: Arm's Vela compiler (bench --target ethos-u) and TFLite Micro's
interpreter (bench --target mcu, validate --runtime tflite-micro), both real, both checked
against what the tools themselves say when run by hand."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecnn.api import ConvertConfig, convert
from edgecnn.cli import cli
from tests.conftest import ROOT, unavailable


@pytest.fixture(scope="module")
def vela() -> None:
    if importlib.util.find_spec("ethosu") is None:
        unavailable("Arm's Vela is not installed (pip install -c constraints.txt -e '.[test]')")


@pytest.fixture(scope="module")
def micro() -> None:
    if importlib.util.find_spec("tflite_micro") is None:
        unavailable("TFLite Micro is not installed (pip install -c constraints.txt -e '.[test]')")


@pytest.fixture(scope="module")
def se_int8(tmp_path_factory) -> Path:
    """The shipped MobileNetV3-style model in int8: HARD_SWISH and hard-sigmoid float islands."""
    out = tmp_path_factory.mktemp("se") / "mobile_se_int8.tflite"
    return convert(ROOT / "models" / "mobile_se_outlier.pt", out,
                   ConvertConfig("tflite", int8=True)).path


def _vela_by_hand(model: Path, accel: str, folder: Path) -> tuple[str, dict[str, str]]:
    done = subprocess.run([sys.executable, "-m", "ethosu.vela", str(model), "--accelerator-config",
                           accel, "--output-dir", str(folder)], capture_output=True, text=True,
                          timeout=600)
    table = next(folder.glob("*_summary_*.csv"))
    with open(table, newline="") as handle:
        return done.stdout, next(csv.DictReader(handle))


@pytest.mark.parametrize("npu, accel", [("U55-128", "ethos-u55-128"), ("u85-256", "ethos-u85-256")])
def test_ethos_u_compiles_lenet5_whole_and_reports_what_vela_says(vela, artefacts, cli_runner,
                                                                  tmp_path, npu, accel):
    report = tmp_path / "npu.json"
    result = cli_runner.invoke(cli, ["bench", str(artefacts["tflite_int8"]), "--target",
                                     "ethos-u", "--npu", npu, "--json", str(report)])
    assert result.exit_code == 0, result.output
    row = json.loads(report.read_text())["results"][0]
    log, summary = _vela_by_hand(artefacts["tflite_int8"], accel, tmp_path / "by-hand")
    assert "NPU operators = 7 (100.0%)" in log and "CPU operators = 0" in log
    assert row["runtime"] == f"vela:{accel}"
    columns = row["columns"]
    assert columns["NPU ops %"] == 100.0 and columns["CPU ops"] == ""
    assert columns["est. µs"] == pytest.approx(1e6 * float(summary["inference_time"]), abs=0.1)
    assert columns["SRAM KiB"] == pytest.approx(float(summary["sram_memory_used"]), abs=0.01)
    assert columns["MACs"] == int(float(summary["nn_macs"])) > 300_000  # Vela counts its own way
    assert columns["compiler"] == "default"


def test_ethos_u_refusal_fails_the_bench_and_names_the_op(vela, se_int8, cli_runner, tmp_path):
    """Float islands: Vela's default compiler refuses the file (exit 1, its reason in one line);
    U55's legacy core places the islands on the Cortex-M and the row names them; U85 has no
    legacy core, so it has no row."""
    report = tmp_path / "npu.json"
    result = cli_runner.invoke(cli, ["bench", str(se_int8), "--target", "ethos-u", "--npu",
                                     "U55-128,U85-256", "--json", str(report)])
    assert result.exit_code == 1, result.output
    refusals = [line for line in result.output.splitlines() if "Vela refuses it" in line]
    assert len(refusals) == 2
    assert all("HARD_SWISH" in line and "IFM has to be 8bit" in line for line in refusals)
    assert "Traceback" not in result.output
    rows = json.loads(report.read_text())["results"]
    assert [r["runtime"] for r in rows] == ["vela:ethos-u55-128"]
    legacy = rows[0]["columns"]
    assert legacy["compiler"] == "legacy core" and 0 < legacy["NPU ops %"] < 100
    assert "HARD_SWISH x" in legacy["CPU ops"]


def test_ethos_u_names_its_configurations_and_refuses_others_in_one_line(vela, artefacts,
                                                                         cli_runner):
    result = cli_runner.invoke(cli, ["bench", str(artefacts["tflite_int8"]), "--target",
                                     "ethos-u", "--npu", "U99-1"])
    assert result.exit_code == 2
    assert "--npu 'U99-1': choose from U55-32" in result.output and "U85-2048" in result.output
    onnx = cli_runner.invoke(cli, ["bench", str(artefacts["onnx_int8"]), "--target", "ethos-u"])
    assert onnx.exit_code == 2 and "compiles int8 .tflite files" in onnx.output


def test_a_missing_extra_is_one_line(artefacts, cli_runner, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ethosu" else real(name, *a))
    result = cli_runner.invoke(cli, ["bench", str(artefacts["tflite_int8"]), "--target",
                                     "ethos-u"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "edgecnn: error: Arm's Vela compiler is not installed: pip install 'edgecnn[npu]' "
        "(ethos-u-vela)")


# -- TFLite Micro ---------------------------------------------------------------------------
def test_mcu_arena_is_the_smallest_tflite_micro_runs_in(micro, artefacts, cli_runner, tmp_path):
    from tflite_micro import runtime

    report = tmp_path / "mcu.json"
    result = cli_runner.invoke(cli, ["bench", str(artefacts["tflite_int8"]), "--target", "mcu",
                                     "--runs", "5", "--min-time", "0", "--json", str(report)])
    assert result.exit_code == 0, result.output
    row = json.loads(report.read_text())["results"][0]
    arena = round(row["columns"]["arena KiB"] * 1024)

    def runs(size: int) -> bool:  # TFLite Micro's own API, nothing of edgecnn's
        try:
            interpreter = runtime.Interpreter.from_file(str(artefacts["tflite_int8"]),
                                                        arena_size=size)
            detail = interpreter.get_input_details(0)
            interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
            interpreter.invoke()
        except RuntimeError:
            return False
        return True

    assert runs(arena) and not runs(arena - 64)
    assert 8 * 1024 < arena < 16 * 1024  # LeNet-5's largest activations fit in a few KiB
    assert row["columns"]["steps vs LiteRT ref"] <= 1 and row["columns"]["agree %"] == 100.0
    assert row["columns"]["parity on"].startswith("100 images of mnist")


def test_mcu_outputs_match_tflite_micro_run_by_hand(micro, artefacts, test_set):
    """MicroSession (quantise, NHWC, one image per invoke, dequantise) against TFLite Micro's
    own API fed the same integers by hand."""
    from tflite_micro import runtime

    from edgecnn.files.torch_files import default_card
    from edgecnn.runtimes.sessions import open_session, predict

    x = default_card("lenet5").input.preprocess(test_set.images[:20])
    ours = predict(open_session(artefacts["tflite_int8"], "tflite-micro"), x)
    interpreter = runtime.Interpreter.from_file(str(artefacts["tflite_int8"]))
    detail, out = interpreter.get_input_details(0), interpreter.get_output_details(0)
    scale, zero = detail["quantization_parameters"]["scales"][0], detail["quantization_parameters"]["zero_points"][0]
    o_scale, o_zero = out["quantization_parameters"]["scales"][0], out["quantization_parameters"]["zero_points"][0]
    by_hand = []
    for image in x:
        q = np.clip(np.round(image.transpose(1, 2, 0) / scale) + zero, -128, 127).astype(np.int8)
        interpreter.set_input(q[None], 0)
        interpreter.invoke()
        by_hand.append((interpreter.get_output(0).astype(np.float32) - o_zero) * o_scale)
    np.testing.assert_array_equal(ours, np.concatenate(by_hand))


def test_validate_scores_tflite_micro_against_the_qdq_reference(micro, artefacts, cli_runner,
                                                                tmp_path):
    report = tmp_path / "v.json"
    result = cli_runner.invoke(cli, ["validate", str(artefacts["onnx_int8"]),
                                     str(artefacts["tflite_int8"]), "--runtime", "tflite-micro",
                                     "--limit", "500", "--max-steps", "2", "--json", str(report)])
    assert result.exit_code == 0, result.output
    rows = {r["runtime"]: r for r in json.loads(report.read_text())["rows"]}
    micro_row, reference = rows["tflite-micro"], rows["qdq-reference"]
    assert micro_row["qdq_max_steps"] <= 1 and micro_row["agreement_pct"] >= 99.8
    assert abs(micro_row["top1_pct"] - reference["top1_pct"]) <= 0.2


def test_mcu_matches_litert_reference_kernels_where_xnnpack_parts(micro, se_int8, cli_runner,
                                                                   tmp_path):
    """The outlier model's SE blocks: XNNPACK's float requantisation lands several steps from
    the fixed-point kernels, but TFLite Micro and LiteRT's reference kernels agree exactly."""
    report = tmp_path / "mcu.json"
    result = cli_runner.invoke(cli, ["bench", str(se_int8), "--target", "mcu", "--runs", "2",
                                     "--min-time", "0", "--json", str(report)])
    assert result.exit_code == 0, result.output
    columns = json.loads(report.read_text())["results"][0]["columns"]
    assert columns["steps vs LiteRT ref"] == 0 and columns["agree %"] == 100.0


def test_mcu_parity_gate_fails_when_a_kernel_computes_something_else(micro, artefacts, cli_runner,
                                                                     monkeypatch):
    """The gate, watched failing: TFLite Micro's outputs moved by 5 steps on one value (as a
    kernel with another rounding or a wrong multiplier would) fail the bench with one line."""
    from edgecnn.runtimes.tflm import MicroSession

    read = MicroSession._read

    def off_by_five(self, index, detail, nhwc):  # type: ignore[no-untyped-def]
        y = read(self, index, detail, nhwc)
        y.flat[0] += 5 * detail["quantization"][0]
        return y

    monkeypatch.setattr(MicroSession, "_read", off_by_five)
    result = cli_runner.invoke(cli, ["bench", str(artefacts["tflite_int8"]), "--target", "mcu",
                                     "--runs", "2", "--min-time", "0"])
    assert result.exit_code == 1, result.output
    assert "TFLite Micro is 5 output steps from LiteRT's reference kernels" in result.output
    assert "Traceback" not in result.output


# -- integer-only files (convert --for npu|mcu) ---------------------------------------------
class _DeadSE(torch.nn.Module):
    """A squeeze-excite block whose excitation is nearly dead (weights 1e-9): the hard-sigmoid
    input gets a scale near 1e-11, where beta / (scale x alpha / 127) overflows an int32 bias."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc1, self.fc2 = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(4, 8, 1)
        self.head = torch.nn.Linear(8, 10)
        with torch.no_grad():
            self.fc2.weight.mul_(1e-9)
            self.fc2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.hardswish(self.conv(x))
        s = self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True))))
        return self.head((y * torch.nn.functional.hardsigmoid(s)).mean((2, 3)))


class _TwoScales(torch.nn.Module):
    """Two branches ten times apart in range, concatenated: their int8 inputs need requantising."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), 10 * torch.relu(self.b(x))], 1)
        return self.head(y.mean((2, 3)))


class _Sqrt(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.relu(self.conv(x)) + 1).mean((2, 3))


def _export(module: torch.nn.Module, path: Path) -> Path:
    torch.export.save(torch.export.export(module.eval(), (torch.rand(1, 1, 28, 28),)), path)
    return path


def _tensor_types(path: Path) -> set[str]:
    from edgecnn.converters.tflite_schema import schema
    from edgecnn.files.model_files import read_tflite

    model, _ = read_tflite(path)
    names = {v: k for k, v in vars(schema().TensorType).items() if not k.startswith("_")}
    return {names[t.type] for t in model.subgraphs[0].tensors}


def _pinned_layers_within_a_step(qdq: Path, tflite: Path, test_set) -> None:
    from edgecnn.checks.int8_self_check import compare_layers, first_unexplained
    from edgecnn.files.torch_files import default_card

    x = default_card("lenet5").input.preprocess(test_set.images[:4])
    diffs = compare_layers(qdq, tflite, x)
    assert diffs and first_unexplained(diffs) is None
    assert all(d.pinned_max_steps is not None and d.pinned_max_steps <= 1 for d in diffs)


@pytest.fixture(scope="module")
def npu_se(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("npu_se")
    qdq = convert(ROOT / "models" / "mobile_se_outlier.pt", out / "se.onnx",
                  ConvertConfig("onnx", int8=True)).path
    return {"qdq": qdq, "npu": convert(qdq, out / "se_npu.tflite",
                                       ConvertConfig("tflite", int8=True, int8_for="npu")).path}


def test_npu_file_is_integer_only_and_vela_takes_it_whole(vela, npu_se, cli_runner, tmp_path):
    assert _tensor_types(npu_se["npu"]) <= {"INT8", "INT32"}  # no float tensor at all
    from edgecnn.api import inspect as inspect_file

    ops = {op["op"] for op in inspect_file(npu_se["npu"]).ops}
    assert "HARD_SWISH" in ops and not ops & {"DEQUANTIZE", "QUANTIZE", "MINIMUM", "MAXIMUM"}
    report = tmp_path / "npu.json"
    result = cli_runner.invoke(cli, ["bench", str(npu_se["npu"]), "--target", "ethos-u", "--npu",
                                     "U55-128,U85-256", "--json", str(report)])
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())["results"]
    assert [(r["columns"]["NPU ops %"], r["columns"]["compiler"]) for r in rows] == [
        (100.0, "default"), (100.0, "default")]


def test_npu_file_is_within_a_step_of_its_qdq_reference_layer_by_layer(npu_se, test_set):
    _pinned_layers_within_a_step(npu_se["qdq"], npu_se["npu"], test_set)


def test_npu_hard_sigmoid_of_a_dead_excitation_keeps_its_bias_in_int32(tmp_path, test_set):
    pt2 = _export(_DeadSE(), tmp_path / "dead_se.pt2")
    calib = ROOT / "models" / "data" / "mnist-calib.npz"
    qdq = convert(pt2, tmp_path / "q.onnx", ConvertConfig("onnx", int8=True, calib=calib)).path
    npu = convert(qdq, tmp_path / "q.tflite", ConvertConfig("tflite", int8=True, calib=calib,
                                                            int8_for="npu")).path
    _pinned_layers_within_a_step(qdq, npu, test_set)


def test_npu_concat_requantises_with_one_int8_quantize(tmp_path, test_set):
    pt2 = _export(_TwoScales(), tmp_path / "two.pt2")
    calib = ROOT / "models" / "data" / "mnist-calib.npz"
    qdq = convert(pt2, tmp_path / "q.onnx", ConvertConfig("onnx", int8=True, calib=calib)).path
    files = {target: convert(qdq, tmp_path / f"{target}.tflite",
                             ConvertConfig("tflite", int8=True, calib=calib,
                                           int8_for=target)).path for target in ("cpu", "npu")}
    from edgecnn.api import inspect as inspect_file

    counts = {t: {op["op"]: op["count"] for op in inspect_file(p).ops} for t, p in files.items()}
    assert counts["cpu"].get("DEQUANTIZE", 0) >= 1  # the float round trip of the CPU file
    assert "DEQUANTIZE" not in counts["npu"] and counts["npu"]["QUANTIZE"] >= 1
    assert _tensor_types(files["npu"]) <= {"INT8", "INT32"}
    _pinned_layers_within_a_step(qdq, files["npu"], test_set)


def test_an_op_without_an_integer_form_is_refused_in_one_line(tmp_path, cli_runner):
    pt2 = _export(_Sqrt(), tmp_path / "sqrt.pt2")
    out = tmp_path / "sqrt_npu.tflite"
    result = cli_runner.invoke(cli, ["convert", str(pt2), "--to", "tflite", "--int8", "--for",
                                     "npu", "--calib", str(ROOT / "models" / "data" /
                                                           "mnist-calib.npz"), "-o", str(out)])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("edgecnn: error: ") and "Sqrt node" in line and "--for cpu" in line
    assert not out.exists() and not list(tmp_path.glob("*.part"))
    cpu = cli_runner.invoke(cli, ["convert", str(pt2), "--to", "tflite", "--int8", "--calib",
                                  str(ROOT / "models" / "data" / "mnist-calib.npz"),
                                  "-o", str(tmp_path / "sqrt_cpu.tflite")])
    assert cpu.exit_code == 0, cpu.output  # the default file keeps it as a float island


@pytest.mark.parametrize("args, message", [
    (["--to", "tflite", "--for", "npu"], "--for npu writes an integer-only int8 TFLite file"),
    (["--to", "onnx", "--int8", "--for", "mcu"], "--for mcu writes an integer-only int8 TFLite")])
def test_for_needs_an_int8_tflite_output(cli_runner, tmp_path, args, message):
    result = cli_runner.invoke(cli, ["convert", "lenet5", *args, "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("args, message", [
    (["--io-dtype", "float32"], "--for npu writes int8 (or uint8) I/O"),
    (["--max-drop", "0.5", "--budget-keep", "float"],
     "an accuracy budget with --budget-keep float keeps layers float, which --for npu cannot "
     "hold; keep them int16 (--budget-keep int16)")])
def test_npu_refuses_what_would_put_float_in_the_file(cli_runner, tmp_path, args, message):
    result = cli_runner.invoke(cli, ["convert", "lenet5", "--to", "tflite", "--int8", "--for", "npu",
                                     *args, "-o", str(tmp_path / "x.tflite")])
    assert result.exit_code == 2 and message in result.output
