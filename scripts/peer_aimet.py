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
- ``seq_mse``: ``apply_seq_mse`` choosing each weight's range by layer-output MSE, on AIMET's
  min-max scheme (which it requires) for the activations.
- ``adaround``: ``ptq`` with ``apply_adaround`` (``--adaround-iterations`` steps a layer; AIMET
  recommends 10,000, which takes hours a model on 2 CPU cores).

Batch-norm folding is not a recipe step: edgecnn's float ONNX has its BatchNorms folded already.

Side by side, in one run per model (from edgecnn's venv; the trained models, images and
measures of scripts/int8_accuracy.py; fills docs/int8-accuracy-aimet.md):

    .venv/bin/python scripts/peer_aimet.py --compare --models lenet5 mobile_se_outlier \\
        mnist_detector efficientnet_lite0 --out docs/int8-accuracy-aimet
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
    fixed = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value  # 0: a free batch
    batch = fixed or CALIBRATION_BATCH
    batches = [{input_name: calib[i:i + batch]}
               for i in range(0, len(calib) // batch * batch, batch)]
    config = Path(config_dir).parent / "default_config_per_channel.json"
    # sequential MSE searches the weight ranges itself and asserts AIMET's plain min-max scheme
    scheme = (QuantScheme.min_max if recipe == "seq_mse"
              else QuantScheme.post_training_tf_enhanced)
    sim = QuantizationSimModel(model, quant_scheme=scheme,
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


# edgecnn's int8 recipes beside AIMET's: ConvertConfig fields
EDGECNN_RECIPES: dict[str, dict[str, bool]] = {
    "edgecnn minmax (default)": {},
    "edgecnn CLE + bias correction": {"cross_layer_equalization": True, "bias_correction": True},
    "edgecnn AdaRound + bias correction": {"adaround": True, "bias_correction": True},
}


def compare(models: list[str], recipes: list[str], folder: Path, adaround_iterations: int,
            reuse: bool = False) -> tuple[list[object], dict[str, str]]:
    """Every model's fp32 file, edgecnn's recipes, onnxruntime's quantize_static and AIMET's
    ``recipes``, each read on the model's evaluation images as int8_accuracy.py reads them.
    ``reuse``: take a model's rows from an earlier run in ``folder`` where there are any."""
    import json

    import int8_accuracy as acc

    from edgecnn.api import ConvertConfig, convert

    rows: list[object] = []
    notes: dict[str, str] = {}
    for name in models:
        saved = folder / name / "rows.json"
        if reuse and saved.is_file():  # measured by an earlier run: its rows as they were
            record = json.loads(saved.read_text())
            notes[name] = record["note"]
            rows += [acc.Row(r["model"], r["reading"], {
                k: tuple(v) if isinstance(v, list) else v for k, v in r["cells"].items()})
                for r in record["rows"]]
            continue
        began = time.perf_counter()
        case = acc.build_case(name)
        work = folder / name
        work.mkdir(parents=True, exist_ok=True)
        in_memory = not isinstance(case.source, Path)
        import torch

        example = {"example_inputs": torch.from_numpy(case.calib[:1])} if in_memory else {}
        files = {"fp32": convert(case.source, work / "fp32.onnx", ConvertConfig("onnx"),
                                 **example).path}
        batches = [case.calib[i:i + 32] for i in range(0, len(case.calib), 32)]
        for reading, options in EDGECNN_RECIPES.items():
            target = work / (reading.split(" ", 1)[1].replace(" ", "_").replace("+", "") + ".onnx")
            files[reading + " (QDQ reference)"] = convert(
                files["fp32"], target, ConvertConfig("onnx", int8=True, **options),
                calibration=batches).path
        files["onnxruntime quantize_static"] = acc.ort_quantize_static(
            files["fp32"], case.calib, "minmax", work / "ort_int8.onnx")
        for recipe in recipes:
            made = aimet_int8(files["fp32"], case.calib, recipe, work / f"aimet_{recipe}.onnx",
                              adaround_iterations)
            if made is not None:
                files[f"AIMET {recipe}"] = made
        outputs = {reading: acc.read(path, reading, case.evaluation)
                   for reading, path in files.items()}
        f = outputs["fp32"]
        f_dets = acc.detections(f) if case.kind == "detector" else []
        measured = []
        for reading, q in outputs.items():
            cells = (acc.classifier_cells(f, q, case.labels, reading == "fp32")
                     if case.kind == "classifier" else
                     acc.detector_cells(f, q, case.boxes or [], f_dets, reading == "fp32"))
            measured.append(acc.Row(case.name, reading, cells))
        rows += measured
        notes[name] = f"{case.images_note}; measured in {time.perf_counter() - began:.0f} s"
        saved.write_text(json.dumps({"note": notes[name], "rows": [vars(r) for r in measured]},
                                    default=float))
        print(f"{name}: done", file=sys.stderr)
    return rows, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", action="store_true",
                        help="side by side on int8_accuracy.py's trained models (edgecnn venv)")
    parser.add_argument("--models", nargs="+", default=["lenet5", "mobile_se_outlier",
                                                         "mnist_detector", "efficientnet_lite0"])
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=["ptq", "cle", "seq_mse"])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "aimet")
    parser.add_argument("--out", type=Path, help="docs/int8-accuracy-aimet: write .md and .json")
    parser.add_argument("--reuse", action="store_true",
                        help="--compare: take a model's rows from the last run in --work")
    parser.add_argument("--onnx", type=Path, help="the float ONNX file")
    parser.add_argument("--calib", type=Path, help=".npz with x: NCHW float32")
    parser.add_argument("--recipe", choices=RECIPES, default="ptq")
    parser.add_argument("--adaround-iterations", type=int, default=1000)
    args = parser.parse_args()
    if args.compare:
        sys.path.insert(0, str(ROOT / "scripts"))
        import int8_accuracy as acc

        rows, notes = compare(args.models, args.recipes, args.work, args.adaround_iterations,
                              args.reuse)
        text = acc.report(rows, notes, "scripts/peer_aimet.py --compare " + " ".join(
            sys.argv[2:]))  # type: ignore[arg-type]
        print(text)
        if args.out:
            import json

            args.out.with_suffix(".md").write_text(
                "# int8 beside AIMET (issue 23)\n\n" + __doc__.split("\n\n")[0] + "\n\n" + text)
            args.out.with_suffix(".json").write_text(json.dumps(
                {"notes": notes, "rows": [vars(r) for r in rows]}, indent=1, default=float))
        return 0
    if args.onnx is None or args.calib is None or args.out is None:
        parser.error("give --onnx, --calib and --out (or --compare)")
    with np.load(args.calib) as data:
        calib = data["x"].astype(np.float32)
    quantize_child(args.onnx, calib, args.recipe, args.out, args.adaround_iterations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
