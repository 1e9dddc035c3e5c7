"""ai-edge-quantizer (Google's LiteRT quantizer) as a peer for int16 activations (issue 23): its
static A16W8 recipe (``recipe.static_wi8_ai16``: int16 activations, int8 weights, TFLite's
16x8 mode) on edgecnn's fp32 TFLite file of the trained models, calibrated on the same images
as scripts/int8_accuracy.py, read on LiteRT against fp32 (agreement, SQNR, accuracy where
there are labels), beside edgecnn's int16 layers (scripts/int16_layers.py).

ai-edge-quantizer lives in litert-torch's peer venv, never beside edgecnn:

    .peers/litert-torch/bin/python scripts/peer_ai_edge_quantizer.py --child \\
        --tflite m_fp32.tflite --calib m_calib.npy --out m_a16w8.tflite

Side by side (from edgecnn's venv; ``--latency`` adds LiteRT's time against edgecnn's plain
int8 TFLite file, 1 thread, batch 1, interleaved):

    .venv/bin/python scripts/peer_ai_edge_quantizer.py --models mobile_se_outlier \\
        efficientnet_lite0 --latency
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".peers" / "litert-torch" / "bin" / "python"
READING = "ai-edge-quantizer A16W8 (LiteRT)"


def quantize_child(fp32: Path, calib: Path, out: Path, expand: bool = False) -> None:
    """Run in the peer's venv: ai-edge-quantizer's static A16W8 recipe on ``fp32``, calibrated
    on ``calib`` (float32 NCHW images, fed NHWC one at a time), written to ``out``."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    images = np.load(calib).astype(np.float32).transpose(0, 2, 3, 1)
    fp32 = with_signature(fp32, out.with_suffix(".signed.tflite"), expand)
    signatures = Interpreter(model_path=str(fp32)).get_signature_list()
    key, names = next(iter(signatures.items()))
    input_name = names["inputs"][0]
    q = quantizer.Quantizer(str(fp32))
    q.load_quantization_recipe(recipe.static_wi8_ai16())
    data = {key: [{input_name: images[i:i + 1]} for i in range(len(images))]}
    result = q.calibrate(data, num_threads=2)
    q.quantize(result).export_model(str(out), overwrite=True)


ELEMENTWISE = ("MAXIMUM", "MINIMUM", "ADD", "SUB", "MUL", "DIV")


def expand_constants(model: Any) -> int:
    """Give each one-element constant operand of an elementwise op its output's rank ([1] ->
    [1, 1, 1, 1]: the same broadcast, the same data); how many. ai-edge-quantizer 0.10 refuses
    a rank-1 constant beside a rank-4 output in ops sharing their output's scale."""
    from ai_edge_litert.tools import flatbuffer_utils

    graph, changed = model.subgraphs[0], 0
    for op in graph.operators:
        if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) not in ELEMENTWISE:
            continue
        rank = len(graph.tensors[op.outputs[0]].shape)
        for index in op.inputs:
            tensor = graph.tensors[index]
            constant = tensor.buffer and model.buffers[tensor.buffer].data is not None
            if constant and int(np.prod(tensor.shape)) == 1 and len(tensor.shape) < rank:
                tensor.shape = np.ones(rank, np.int32)
                tensor.shapeSignature = None
                changed += 1
    return changed


def with_signature(fp32: Path, target: Path, expand: bool = False) -> Path:
    """``fp32``, or a copy of it with a SignatureDef where it has none: ai-edge-quantizer
    calibrates through signature runners only, and edgecnn's TFLite files carry no signature
    (a copy with ``serving_default`` naming subgraph 0's inputs and outputs; no op changes).
    ``expand``: the copy's one-element constants take their op's rank (``expand_constants``)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(fp32))
    if expand:
        print(f"constants given their op's rank: {expand_constants(model)}", file=sys.stderr)
    elif model.signatureDefs:
        return fp32
    graph = model.subgraphs[0]
    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs, signature.outputs = [], []
    for kind, indices in (("input", graph.inputs), ("output", graph.outputs)):
        for k, index in enumerate(indices):
            entry = schema.TensorMapT()
            entry.name, entry.tensorIndex = f"{kind}_{k}", int(index)
            getattr(signature, kind + "s").append(entry)
    model.signatureDefs = model.signatureDefs or [signature]
    flatbuffer_utils.write_model(model, str(target))
    return target


def run_child(fp32: Path, calib: np.ndarray, out: Path, expand: bool = False,
              timeout_s: int = 3600) -> str | None:
    """The peer's file made in its own venv; None, or the error's last line."""
    if not PEER_PYTHON.is_file():
        return f"no peer venv at {PEER_PYTHON}"
    calib_path = out.with_suffix(".calib.npy")
    np.save(calib_path, calib.astype(np.float32))
    out.unlink(missing_ok=True)
    done = subprocess.run([str(PEER_PYTHON), __file__, "--child", "--tflite", str(fp32),
                           "--calib", str(calib_path), "--out", str(out)]
                          + ["--expand-constants"] * expand,
                          capture_output=True, text=True, timeout=timeout_s)
    calib_path.unlink(missing_ok=True)
    if done.returncode != 0 or not out.is_file():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit {done.returncode}, no file"
    return None


def op_types(path: Path) -> dict[str, dict[str, int]]:
    """Each op kind of ``path`` with the count of its outputs' element types."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    kinds: dict[str, dict[str, int]] = {}
    for op in interpreter._get_ops_details():  # noqa: SLF001  (no public op listing)
        types = "/".join(sorted({dtypes.get(int(i), "?") for i in op["outputs"]}))
        counts = kinds.setdefault(op["op_name"], {})
        counts[types] = counts.get(types, 0) + 1
    return kinds


def runs_on(path: Path, runtime: str, x: np.ndarray) -> str:
    """'ok', or the runtime's one-line refusal, on a few images."""
    from edgecnn.runtimes.sessions import open_session, predict

    try:
        y = predict(open_session(path, runtime, threads=2), x[:4])
        return "ok" if np.all(np.isfinite(y)) else "ran, non-finite outputs"
    except Exception as exc:  # a missing kernel or a refused file: its first line
        return " ".join(str(exc).split())[:200]


def measure(name: str, folder: Path, latency: bool) -> dict[str, Any]:
    """fp32 and the peer's A16W8 file of ``name``; where the plain file fails, the error and
    a second try on a copy whose one-element constants take their op's rank."""
    import int8_accuracy as acc
    import torch
    from int16_layers import latency_ratio  # LiteRT time, interleaved, process CPU time

    from edgecnn.api import ConvertConfig, convert

    began = time.perf_counter()
    case = acc.build_case(name)
    in_memory = not isinstance(case.source, Path)
    example = {"example_inputs": torch.from_numpy(case.calib[:1])} if in_memory else {}
    fp32 = convert(case.source, folder / f"{name}_fp32.tflite", ConvertConfig("tflite"),
                   **example).path
    result: dict[str, Any] = {"model": name, "note": case.images_note, "fp32": str(fp32),
                              "readings": []}
    f = acc.read(fp32, "fp32 TFLite (LiteRT)", case.evaluation)
    result["fp32 cells"] = acc.classifier_cells(f, f, case.labels, True)
    int8: Path | None = None
    for expand in (False, True):
        reading = READING + (", constants at op rank" if expand else "")
        peer = folder / f"{name}_a16w8{'_expanded' if expand else ''}.tflite"
        row: dict[str, Any] = {"reading": reading}
        result["readings"].append(row)
        started = time.perf_counter()
        error = run_child(fp32, case.calib, peer, expand)
        row["quantize s"] = round(time.perf_counter() - started, 1)
        if error is not None:
            row["error"] = error
            print(f"{name}: {reading} failed: {error}", file=sys.stderr)
            continue
        row["peer"] = str(peer)
        row["ops"] = op_types(peer)
        row["int16 ops"] = sorted(op for op, counts in row["ops"].items()
                                  if any("int16" in t for t in counts))
        row["runs on"] = {rt: runs_on(peer, rt, case.evaluation)
                          for rt in ("litert", "tflite-runtime")}
        if row["runs on"]["litert"] == "ok":
            q = acc.read(peer, READING, case.evaluation)
            row["cells"] = acc.classifier_cells(f, q, case.labels, False)
            if latency:
                if int8 is None:
                    batches = [case.calib[i:i + 32] for i in range(0, len(case.calib), 32)]
                    int8 = convert(case.source, folder / f"{name}_int8.tflite",
                                   ConvertConfig("tflite", int8=True), calibration=batches,
                                   **example).path
                ratio, spread = latency_ratio(int8, peer, case.evaluation)
                row["litert time peer A16W8 / edgecnn int8"] = [ratio, spread]
        break
    result["measured s"] = round(time.perf_counter() - began, 1)
    print(f"{name}: done in {result['measured s']:.0f} s", file=sys.stderr)
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| model | reading | top-1 agreement % | SQNR dB | accuracy % | int16 ops |"
             " LiteRT / tflite-runtime | LiteRT time / edgecnn int8 |", "|" + "---|" * 8]
    for r in results:
        fp32_acc = r["fp32 cells"].get("accuracy %")
        lines.append(f"| {r['model']} | fp32 TFLite (LiteRT) | - | - | "
                     f"{'-' if fp32_acc is None else f'{fp32_acc:.2f}'} | - | - | - |")
        for row in r["readings"]:
            if "error" in row:
                lines.append(f"| {r['model']} | {row['reading']} | failed: "
                             f"{row['error'][:160]} | | | | | |")
                continue
            c = row.get("cells", {})
            cell = {k: "-" if c.get(k) is None else f"{c[k]:.2f}"
                    for k in ("top-1 agreement %", "SQNR dB", "accuracy %")}
            runs = " / ".join(row["runs on"].values())
            timing = row.get("litert time peer A16W8 / edgecnn int8")
            lines.append(f"| {r['model']} | {row['reading']} | {cell['top-1 agreement %']} | "
                         f"{cell['SQNR dB']} | {cell['accuracy %']} | "
                         f"{', '.join(row['int16 ops'])} | {runs[:200]} | "
                         f"{'-' if timing is None else f'{timing[0]:.2f}x'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobile_se_outlier",
                                                         "efficientnet_lite0"])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "peer_ai_edge_quantizer")
    parser.add_argument("--latency", action="store_true",
                        help="LiteRT time against edgecnn's plain int8 TFLite file")
    parser.add_argument("--child", action="store_true", help="quantise (the peer's venv)")
    parser.add_argument("--tflite", type=Path, help="--child: the fp32 TFLite file")
    parser.add_argument("--calib", type=Path, help="--child: .npy, float32 NCHW images")
    parser.add_argument("--out", type=Path, help="--child: the quantised TFLite file")
    parser.add_argument("--expand-constants", action="store_true",
                        help="--child: one-element constants take their op's rank first")
    args = parser.parse_args()
    if args.child:
        if args.tflite is None or args.calib is None or args.out is None:
            parser.error("--child needs --tflite, --calib and --out")
        quantize_child(args.tflite, args.calib, args.out, args.expand_constants)
        return 0
    sys.path.insert(0, str(ROOT / "scripts"))
    args.work.mkdir(parents=True, exist_ok=True)
    results = [measure(name, args.work, args.latency) for name in args.models]
    print(markdown(results))
    (args.work / "results.json").write_text(json.dumps(
        {"command": "scripts/peer_ai_edge_quantizer.py " + " ".join(sys.argv[1:]),
         "results": results}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
