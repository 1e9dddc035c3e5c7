"""The Raspberry Pi path on a real aarch64 Python (qemu user-mode emulation).

`scripts/setup_arm_emulation.sh` builds .arm/ (Debian arm64 python3.11 + numpy + tflite-runtime
aarch64 wheels under qemu-aarch64-static); CI runs it. LiteRT 2.3's aarch64 wheel crashes
under qemu 7.2 user-mode (SIGSEGV creating an interpreter), so ARM runs use tflite-runtime.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgecnn.cli import cli
from edgecnn.files.torch_files import default_card
from edgecnn.inspection import inspect_model
from edgecnn.runtimes.sessions import open_session, predict
from edgecnn.targets.support import runner
from tests.conftest import ROOT, nhwc, unavailable

ARM_PYTHON = ROOT / ".arm" / "python"


@pytest.fixture(autouse=True)
def arm_python() -> Path:
    if not ARM_PYTHON.exists():
        unavailable("no emulated aarch64 Python: run scripts/setup_arm_emulation.sh (needs root "
                    "and apt)")
    return ARM_PYTHON


def _arm_predict(model: Path, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    inputs, outputs = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(inputs, nhwc(x))
    done = subprocess.run([str(ARM_PYTHON), runner.__file__, str(model), "--runtime",
                           "tflite-runtime", "--predict", str(inputs), str(outputs)],
                          capture_output=True, text=True, timeout=600, check=True)
    assert json.loads(done.stdout.splitlines()[-1])["shape"] == [len(x), 10]
    return np.load(outputs)


def test_runner_reports_aarch64():
    done = subprocess.run([str(ARM_PYTHON), runner.__file__, "--probe"], capture_output=True,
                          text=True, timeout=300, check=True)
    probe = json.loads(done.stdout)
    assert probe["machine"] == "aarch64" and "tflite-runtime" in probe["runtimes"]


@pytest.mark.parametrize("kind", ["tflite", "tflite_int8"])
def test_parity_on_arm(artefacts, test_set, tmp_path, kind):
    x = default_card("lenet5").input.preprocess(test_set.images[:1000])
    on_arm = _arm_predict(artefacts[kind], x, tmp_path)
    on_x86 = predict(open_session(artefacts[kind], "tflite-runtime"), x)
    # a one-step difference flips an argmax only where the top two logits tie within a step
    assert (on_arm.argmax(1) == on_x86.argmax(1)).mean() >= 0.999
    if kind == "tflite":
        # the same float kernels with other SIMD widths: reassociation, ~1e-6 of logits ~10
        assert np.abs(on_arm - on_x86).max() <= 1e-5
    else:
        # both run TFLite's fixed-point reference arithmetic (gemmlowp rounding), which is
        # exact integer math on either ISA; only the final dequantise-to-float may differ in
        # its last bits, so the outputs stay within one step
        quant = inspect_model(artefacts[kind]).outputs[0].quantization  # "scale S, zero point Z"
        step = float(quant.split(",")[0].split()[1])
        assert np.abs(on_arm - on_x86).max() <= step * 1.001
    assert (on_arm.argmax(1) == test_set.labels[:1000]).mean() > 0.98


def test_rpi_target_over_ssh_on_arm(cli_runner, tmp_path, sshd, artefacts):
    from tests.test_bench import _ssh_args
    out = tmp_path / "arm.json"
    result = cli_runner.invoke(cli, ["bench", str(artefacts["tflite_int8"]),
                                     *_ssh_args(sshd, **{"--remote-python": str(ARM_PYTHON),
                                                         "--timeout": "120"}),
                                     "--runs", "20", "--min-time", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    rows = json.loads(out.read_text())["results"]
    assert [r["runtime"] for r in rows] == ["tflite-runtime"]
    assert rows[0]["device"]["machine"] == "aarch64" and rows[0]["stats"]["runs"] >= 20
