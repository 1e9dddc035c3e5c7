"""AIMET (Qualcomm's AI Model Efficiency Toolkit) as a peer for int8 accuracy (issue 23): its
post-training recipes on the same float ONNX file and calibration images edgecnn uses, written
as a QDQ ONNX file so that it is read exactly as edgecnn's QDQ reference and onnxruntime's
``quantize_static`` are (scripts/int8_accuracy.py).

AIMET lives in its own venv, never beside edgecnn (it pins its own onnxruntime and torch):

    bash scripts/setup_peers.sh aimet      # .peers/aimet: aimet-onnx 2.42.0, pinned
    .peers/aimet/bin/python scripts/peer_aimet.py --onnx m.onnx --calib calib.npz \\
        --recipe cle --out m_aimet.onnx

Recipes, each AIMET's documented API (aimet_onnx 2.42) with its per-channel weight config
(``default_config_per_channel.json``, as edgecnn and TFLite quantise weights):

- ``ptq``: QuantizationSimModel with ``post_training_tf_enhanced`` (AIMET's SQNR-searched
  ranges), int8 weights and activations.
- ``cle``: ``equalize_model`` (cross-layer equalisation, Nagel et al. 2019) first, then ``ptq``.
- ``seq_mse``: ``ptq`` with ``apply_seq_mse`` choosing each weight's range by layer-output MSE.
- ``adaround``: ``ptq`` with ``apply_adaround`` (``--adaround-iterations`` steps a layer; AIMET
  recommends 10,000, which takes hours a model on 2 CPU cores).

Batch-norm folding is not a recipe step: edgecnn's float ONNX has its BatchNorms folded already.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".peers" / "aimet" / "bin" / "python"
RECIPES = ("ptq", "cle", "seq_mse", "adaround")
CALIBRATION_BATCH = 16


def quantize_child(onnx_path: Path, calib: np.ndarray, recipe: str, out: Path,
                   adaround_iterations: int) -> None:
    """Run in AIMET's venv: quantise ``onnx_path`` by ``recipe`` and write its QDQ form."""
    import onnx
    from aimet_onnx import QuantizationSimModel, apply_adaround, apply_seq_mse
    from aimet_onnx.common.defs import QuantScheme
    from aimet_onnx.common.quantsim_config import __file__ as config_dir

    model = onnx.load(str(onnx_path))
    if recipe == "cle":
        from aimet_onnx.cross_layer_equalization import equalize_model

        equalize_model(model)
    input_name = model.graph.input[0].name
    batches = [{input_name: calib[i:i + CALIBRATION_BATCH]}
               for i in range(0, len(calib), CALIBRATION_BATCH)]
    config = Path(config_dir).parent / "default_config_per_channel.json"
    sim = QuantizationSimModel(model, quant_scheme=QuantScheme.post_training_tf_enhanced,
                               param_type="int8", activation_type="int8",
                               config_file=str(config), providers=["CPUExecutionProvider"])
    if recipe == "seq_mse":
        apply_seq_mse(sim, batches)
    elif recipe == "adaround":
        apply_adaround(sim, batches, num_iterations=adaround_iterations)
    sim.compute_encodings(batches)
    onnx.save(sim.to_onnx_qdq(), str(out))


def aimet_int8(fp32: Path, calib: np.ndarray, recipe: str, out: Path,
               adaround_iterations: int = 1000, timeout_s: int = 3600) -> Path | None:
    """AIMET's int8 QDQ file of ``fp32`` by ``recipe``, made in its own venv; None (and why, on
    stderr) when that venv is absent or AIMET fails."""
    if not PEER_PYTHON.exists():
        print(f"no AIMET peer at {PEER_PYTHON} (see scripts/peer_aimet.py)", file=sys.stderr)
        return None
    calib_path = out.with_suffix(".calib.npz")
    np.savez(calib_path, x=calib)
    started = time.perf_counter()
    done = subprocess.run([str(PEER_PYTHON), __file__, "--onnx", str(fp32), "--calib",
                           str(calib_path), "--recipe", recipe, "--out", str(out),
                           "--adaround-iterations", str(adaround_iterations)],
                          capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0 or not out.exists():
        print(f"AIMET {recipe} failed on {fp32.name}: {done.stderr.strip()[-600:]}",
              file=sys.stderr)
        return None
    print(f"AIMET {recipe} on {fp32.name}: {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, required=True, help="the float ONNX file")
    parser.add_argument("--calib", type=Path, required=True, help=".npz with x: NCHW float32")
    parser.add_argument("--recipe", choices=RECIPES, default="ptq")
    parser.add_argument("--out", type=Path, required=True, help="the QDQ ONNX file to write")
    parser.add_argument("--adaround-iterations", type=int, default=1000)
    args = parser.parse_args()
    with np.load(args.calib) as data:
        calib = data["x"].astype(np.float32)
    quantize_child(args.onnx, calib, args.recipe, args.out, args.adaround_iterations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
