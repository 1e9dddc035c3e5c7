"""int8 that is right on every CPU: the QDQ reference, the uint8 ONNX encoding, validate's step
columns and gate, bad quantisation parameters, and an emulated AVX2-only CPU (qemu -cpu Haswell).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgecnn.converters import qdq
from onnx import numpy_helper

from edgecnn.api import ConvertConfig, convert
from edgecnn.cli import cli
from edgecnn.loading import default_card
from tests.conftest import LENET, unavailable

QEMU = shutil.which("qemu-x86_64-static")


def _reference(path: Path, x: np.ndarray) -> np.ndarray:
    """The QDQ graph's float reading, written out here independently of edgecnn.runtimes."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _logits_step(path: Path) -> float:
    model = onnx.load(path)
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    scale = next(t for t in model.graph.initializer if t.name == last.input[1])
    return float(numpy_helper.to_array(scale))


@pytest.fixture(scope="module")
def int8_encoding(artefacts, tmp_path_factory) -> Path:
    """The same LeNet-5 int8 ONNX stored with int8 integers (the saturating kind on AVX2)."""
    out = tmp_path_factory.mktemp("s8") / "lenet5_s8.onnx"
    return convert(artefacts["onnx_int8"], out,
                   ConvertConfig("onnx", int8=True, onnx_int8_encoding="int8")).path


def test_default_onnx_is_uint8_and_int8_encoding_is_the_same_quantisation(
        artefacts, int8_encoding, test_set):
    u8, s8 = onnx.load(artefacts["onnx_int8"]), onnx.load(int8_encoding)
    assert qdq.encoding(u8) == "uint8" and qdq.encoding(s8) == "int8"
    # same integers moved by 128, same scales: q - z is unchanged tensor by tensor
    s8_tensors = {t.name: numpy_helper.to_array(t) for t in s8.graph.initializer}
    for tensor in qdq.eight_bit_tensors(u8):
        moved = numpy_helper.to_array(tensor).astype(np.int16) - 128
        np.testing.assert_array_equal(moved, s8_tensors[tensor.name].astype(np.int16))
    assert qdq.fingerprint(u8) == qdq.fingerprint(s8)
    x = default_card("lenet5").input.preprocess(test_set.images[:1000])
    np.testing.assert_array_equal(_reference(artefacts["onnx_int8"], x), _reference(int8_encoding, x))


def test_int8_tflite_records_its_qdq_fingerprint(artefacts):
    from edgecnn.inspection import tflite_metadata

    recorded = tflite_metadata(artefacts["tflite_int8"], "edgecnn_qdq_fingerprint")
    assert recorded is not None
    assert recorded.decode() == qdq.fingerprint(onnx.load(artefacts["onnx_int8"]))


def test_validate_measures_int8_against_the_qdq_reference(cli_runner, artefacts, tmp_path,
                                                           test_set):
    out = tmp_path / "r.json"
    models = [LENET, artefacts["onnx_int8"], artefacts["tflite_int8"]]
    result = cli_runner.invoke(cli, ["validate", *map(str, models), "--limit", "2000",
                                     "--json", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(out.read_text())
    rows = {(r["artefact"], r["runtime"]): r for r in report["rows"]}
    assert rows[(LENET.name, "torch")]["qdq_max_steps"] is None  # float: no int8 columns
    x = default_card("lenet5").input.preprocess(test_set.images[:2000])
    want = _reference(artefacts["onnx_int8"], x)
    step = _logits_step(artefacts["onnx_int8"])
    ref_row = rows[(artefacts["onnx_int8"].name, "qdq-reference")]
    assert ref_row["qdq_max_steps"] == 0 and ref_row["qdq_identical_pct"] == 100.0
    assert ref_row["top1_pct"] == pytest.approx(100 * (want.argmax(1) == test_set.labels[:2000]).mean())
    from edgecnn.runtimes import open_session, predict
    for runtime in ("litert", "tflite-runtime"):
        row = rows[(artefacts["tflite_int8"].name, runtime)]
        got = predict(open_session(artefacts["tflite_int8"], runtime), x)
        steps = np.rint(np.abs(got - want) / step)
        assert row["qdq_max_steps"] == steps.max()
        assert row["qdq_identical_pct"] == pytest.approx(100 * (steps == 0).all(1).mean())
    assert report["cpu"] and "steps vs QDQ" in result.output


def test_max_steps_gate_fails_on_fixed_point_kernels(cli_runner, artefacts):
    """tflite-runtime's builtin kernels requantise in fixed point, the reference in float: some
    output differs by a step on real images, so a zero-step gate must fail (exit 1) and say why."""
    result = cli_runner.invoke(cli, ["validate", str(artefacts["onnx_int8"]),
                                     str(artefacts["tflite_int8"]), "--runtime", "tflite-runtime",
                                     "--limit", "500", "--max-steps", "0"])
    assert result.exit_code == 1, result.output + result.stderr
    assert "steps from the QDQ reference > 0" in result.output and "fixed point" in result.output


def test_tflite_without_its_onnx_says_so(cli_runner, artefacts):
    result = cli_runner.invoke(cli, ["validate", str(LENET), str(artefacts["tflite_int8"]),
                                     "--runtime", "litert", "--limit", "200"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "add the int8 .onnx it was converted from" in result.output


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_max_steps_must_be_a_finite_non_negative_number(cli_runner, artefacts, value):
    result = cli_runner.invoke(cli, ["validate", str(artefacts["onnx_int8"]), "--max-steps", value])
    assert result.exit_code == 2 and "--max-steps" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _tamper(src: Path, dst: Path, name: str, value: np.ndarray) -> Path:
    model = onnx.load(src)
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(value, name))
    onnx.save(model, dst)
    return dst


BAD_PARAMS = {  # initializer -> replacement, and what the one-line error must say
    "zero scale": ("relu_scale", np.array(0.0, np.float32), "scale 0.0"),
    "negative scale": ("features.0.weight_scale", -np.ones(6, np.float32), "scale -1.0"),
    "nan scale": ("logits_scale", np.array(np.nan, np.float32), "scale nan"),
    "inf scale": ("input_scale", np.array(np.inf, np.float32), "scale inf"),
    "zero point out of 8-bit range": ("features.0.weight_zero_point", np.full(6, 300, np.int32),
                                      "int32 zero points"),
    "zero points per channel count": ("features.3.weight_zero_point",
                                      np.full(5, 128, np.uint8), "5 zero points for 16 scales"),
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
@pytest.mark.parametrize("command", ["convert", "validate"])
def test_bad_quantisation_parameters_are_refused(cli_runner, artefacts, tmp_path, case, command):
    name, value, needle = BAD_PARAMS[case]
    bad = _tamper(artefacts["onnx_int8"], tmp_path / "bad.onnx", name, value)
    before = bad.read_bytes()
    out = tmp_path / "out.tflite"
    args = (["convert", str(bad), "--to", "tflite", "--int8", "-o", str(out)]
            if command == "convert" else ["validate", str(bad), "--limit", "10"])
    result = cli_runner.invoke(cli, args)
    assert result.exit_code == 2, result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "node" in lines[0], lines
    assert not out.exists() and bad.read_bytes() == before


# -- an AVX2-only CPU, emulated ------------------------------------------------------------
def _on_haswell(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m edgecnn ARGS`` on an emulated Haswell: AVX2, no AVX-512, no VNNI."""
    if QEMU is None:
        unavailable("qemu-x86_64-static not installed (apt-get install qemu-user-static): the "
                    "AVX2-only CPU cannot be emulated here")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-m", "edgecnn", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_emulated_cpu_is_avx2_without_vnni():
    if QEMU is None:
        _on_haswell("--version")
    probe = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c",
                            "from edgecnn.cpu import cpu_class; print(cpu_class())"],
                           capture_output=True, text=True, timeout=300)
    assert probe.stdout.strip() == "x86-64 AVX2 (no VNNI)", probe.stderr[-500:]


def test_on_avx2_uint8_onnx_is_exact_and_int8_saturates(artefacts, int8_encoding, tmp_path):
    """The issue's acceptance check on 300 images: onnxruntime with default optimisations on the
    default (uint8) ONNX stays within 2 steps of the reference with >= 99.9 % argmax agreement;
    the int8 encoding saturates there, and validate flags it with the reason."""
    out = tmp_path / "haswell.json"
    done = _on_haswell("validate", str(artefacts["onnx_int8"]), str(int8_encoding),
                       "--runtime", "onnxruntime", "--limit", "300", "--max-steps", "2",
                       "--json", str(out))
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]  # int8 encoding fails
    report = json.loads(out.read_text())
    assert report["cpu"] == "x86-64 AVX2 (no VNNI)"
    rows = {(r["artefact"], r["runtime"]): r for r in report["rows"]}
    safe = rows[(artefacts["onnx_int8"].name, "onnxruntime")]
    reference = rows[(artefacts["onnx_int8"].name, "qdq-reference")]
    assert report["reference"].endswith("[qdq-reference]")
    assert safe["passed"] and safe["qdq_max_steps"] <= 2 and safe["agreement_pct"] >= 99.9
    assert abs(safe["top1_pct"] - reference["top1_pct"]) <= 0.1
    saturating = rows[(int8_encoding.name, "onnxruntime")]
    assert not saturating["passed"] and saturating["qdq_max_steps"] > 2
    assert "lacks VNNI" in saturating["note"]


def test_on_avx2_int8_tflite_conversion_self_check_passes(artefacts, tmp_path):
    """The README's failure on AVX2: the self-check compared with onnxruntime's saturating
    kernels. Against the QDQ reference the same conversion passes."""
    out = tmp_path / "haswell.tflite"
    done = _on_haswell("convert", str(artefacts["onnx_int8"]), "--to", "tflite", "--int8",
                       "-o", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_bytes()[4:8] == b"TFL3"
