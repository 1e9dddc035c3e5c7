"""int16 layers (TFLite's 16x8) on trained models: what they buy against fp32, what they cost.

For each model the layer table ranks the int8 layers by their own error; the budget's int16
candidates (each ranked layer with the nodes writing its inputs, 16x8 kernels only:
``edgecnn.checks.budget._int16_candidates``) are made int16 K at a time, K = 1, 2, 4, 8. Each
reading is measured against fp32 on the same images as scripts/int8_accuracy.py (agreement,
SQNR, accuracy where there are labels), as its QDQ reference and as its TFLite file on LiteRT
(the CPU file; islands where an op reading int16 has no 16x8 kernel). Then the integer-only
(``--for npu``) files of the plain int8 and of the fewest int16 layers within 1 dB of the best
go through Vela (NPU share, its estimate), and LiteRT's latency of those two CPU files is
compared, interleaved in one process.

    .venv/bin/python scripts/int16_layers.py --models mobile_se_outlier efficientnet_lite0 \\
        --out docs/int8-accuracy.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import int8_accuracy as acc  # noqa: E402  (scripts/ on the path first)

MARKERS = "<!-- int16-layers:start -->", "<!-- int16-layers:end -->"
COUNTS = (1, 2, 4, 8)
LAYER_IMAGES = 32  # as the budget ranks layers (edgecnn.checks.budget.LAYER_IMAGES)


def ranked_int16(fp32: Path, qdq: Path, calib: np.ndarray) -> tuple[list[str], dict[str, str]]:
    """The budget's int16 candidates, worst own error first, and their layer names."""
    import onnx

    from edgecnn.checks.budget import _int16_candidates, _module_names, ranked_nodes
    from edgecnn.checks.layer_table import layer_errors, worst_first

    model = onnx.load(fp32)
    errors = layer_errors(model, onnx.load(qdq), calib[:LAYER_IMAGES])
    candidates = _int16_candidates(model, ranked_nodes(worst_first(errors)))
    return candidates, _module_names(model, candidates, {})


def latency_ratio(int8: Path, other: Path, x: np.ndarray, rounds: int = 7) -> tuple[float, float]:
    """Median ``other`` / ``int8`` process-CPU time per image on LiteRT (1 thread, batch 1),
    the two interleaved round by round; and the spread (max / min of the rounds' ratios)."""
    from edgecnn.runtimes.sessions import open_session

    sessions = [open_session(path, "litert", threads=1) for path in (int8, other)]
    for session in sessions:
        session.bind(x[:1])
        for _ in range(20):
            session.invoke()
    ratios = []
    for _ in range(rounds):
        spent = []
        for session in sessions:
            start = time.process_time()
            for _ in range(200):
                session.invoke()
            spent.append(time.process_time() - start)
        ratios.append(spent[1] / spent[0])
    return float(np.median(ratios)), float(max(ratios) / min(ratios))


def ort_a16w8(fp32: Path, calib: np.ndarray, out: Path) -> Path:
    """onnxruntime's own 16-bit quantisation of the whole model, A16W8: quantize_static with
    int16 activations (symmetric, as TFLite's 16x8 needs) and per-channel int8 weights, on the
    float model moved to opset 21 (ONNX's Q/DQ take int16 from there)."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    source = out.with_name(out.stem + "_fp32_opset21.onnx")
    onnx.save(version_converter.convert_version(onnx.load(fp32), 21), source)
    name = onnx.load(source, load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = (calib[i:i + 1] for i in range(len(calib)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {name: batch}

    quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt16,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return out


def vela_row(path: Path) -> dict[str, Any]:
    from edgecnn.api import bench

    return dict(bench([path], target="ethos-u").results[0].columns)


def measure(name: str, folder: Path) -> dict[str, Any]:
    import torch

    from edgecnn.api import ConvertConfig, convert

    case = acc.build_case(name)
    in_memory = not isinstance(case.source, Path)
    example = {"example_inputs": torch.from_numpy(case.calib[:1])} if in_memory else {}
    fp32 = convert(case.source, folder / f"{name}_fp32.onnx", ConvertConfig("onnx"),
                   **example).path
    batches = [case.calib[i:i + 32] for i in range(0, len(case.calib), 32)]

    def quantised(tag: str, to: str, **options: Any) -> Path:
        suffix = "onnx" if to == "onnx" else "tflite"
        return convert(fp32, folder / f"{name}_{tag}.{suffix}",
                       ConvertConfig(to, int8=True, **options), calibration=batches).path

    int8 = quantised("int8", "onnx")
    candidates, names = ranked_int16(fp32, int8, case.calib)
    f = acc.read(fp32, "fp32", case.evaluation)
    readings = [("int8", (), int8)]
    for count in COUNTS:
        if count > len(candidates) or (count > 1 and len(candidates) < count // 2 + 1):
            break
        layers = tuple(candidates[:count])
        readings.append((f"int16 x{count}", layers, quantised(f"int16x{count}", "onnx",
                                                              int16_layers=layers)))
    readings.append(("int16 all", ("all",), quantised("int16all", "onnx", int16_layers=("all",))))
    rows = []
    for label, layers, path in readings:
        q = acc.read(path, "edgecnn int8 (QDQ reference)", case.evaluation)
        tflite = quantised(label.replace(" ", ""), "tflite", int16_layers=layers)
        t = acc.read(tflite, "TFLite (LiteRT)", case.evaluation)
        cells = acc.classifier_cells(f, q, case.labels, False)
        rows.append({"reading": label, "layers": [names.get(n, n) for n in layers],
                     "qdq": cells, "litert SQNR dB": acc.classifier_cells(
                         f, t, case.labels, False)["SQNR dB"], "tflite": str(tflite)})
    # the fewest int16 layers within 1 dB of the best SQNR: what a budget would settle on
    chosen = [r for r in rows[1:] if r["reading"] != "int16 all"]
    top = max((r["qdq"]["SQNR dB"] for r in chosen), default=None)
    peer = ort_a16w8(fp32, case.calib, folder / f"{name}_ort_a16w8.onnx")
    q = acc.read(peer, "onnxruntime", case.evaluation)
    row: dict[str, Any] = {"reading": "onnxruntime quantize_static A16W8", "layers": ["all"],
                           "qdq": acc.classifier_cells(f, q, case.labels, False)}
    try:  # the same file through edgecnn: every activation int16
        tflite = convert(peer, folder / f"{name}_ort_a16w8.tflite",
                         ConvertConfig("tflite", int8=True)).path
        row["litert SQNR dB"] = acc.classifier_cells(
            f, acc.read(tflite, "TFLite (LiteRT)", case.evaluation), case.labels,
            False)["SQNR dB"]
    except Exception as exc:  # what edgecnn says of it, one line
        row["litert SQNR dB"] = None
        row["edgecnn"] = " ".join(str(exc).split())[:200]
    peer_row = row
    best = next((r for r in chosen if top is not None and r["qdq"]["SQNR dB"] >= top - 1),
                None)
    result: dict[str, Any] = {"model": name, "note": case.images_note,
                              "rows": [*rows, peer_row]}
    if best is not None:
        ratio, spread = latency_ratio(Path(rows[0]["tflite"]), Path(best["tflite"]),
                                      case.evaluation)
        result["litert time int16 / int8"] = [ratio, spread, best["reading"]]
        npu = {}
        for row in (rows[0], best, rows[-1]):  # int8, the fewest, the whole model
            layers = (("all",) if row["layers"] == ["all"] else
                      tuple(n for n in candidates if names.get(n, n) in row["layers"]))
            try:
                path = quantised(row["reading"].replace(" ", "") + "_npu", "tflite",
                                 int16_layers=layers, int8_for="npu")
                npu[row["reading"]] = vela_row(path)
            except Exception as exc:  # an op without an integer 16x8 form: say which
                npu[row["reading"]] = {"refused": " ".join(str(exc).split())[:240]}
        result["vela"] = npu
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on {platform.machine()}, "
             f"Python {platform.python_version()}, with `scripts/int16_layers.py`.", ""]
    for result in results:
        lines += [f"**{result['model']}** ({result['note']}):", "",
                  "| reading | int16 layers | top-1 agreement % | SQNR dB (QDQ) | "
                  "SQNR dB (LiteRT) | accuracy % |", "|---|---|---:|---:|---:|---:|"]
        for row in result["rows"]:
            cells = row["qdq"]
            lines.append(f"| {row['reading']} | {', '.join(row['layers']) or '-'} | "
                         f"{acc.fmt(cells.get('top-1 agreement %'))} | "
                         f"{acc.fmt(cells.get('SQNR dB'))} | {acc.fmt(row['litert SQNR dB'])} | "
                         f"{acc.fmt(cells.get('accuracy %'))} |")
        lines += [f"- {row['reading']}: edgecnn's TFLite conversion says: {row['edgecnn']}"
                  for row in result["rows"] if row.get("edgecnn")]
        if "litert time int16 / int8" in result:
            ratio, spread, label = result["litert time int16 / int8"]
            lines += ["", f"LiteRT, 1 thread, batch 1, process CPU time, interleaved: {label} "
                      f"takes {ratio:.2f}x the int8 file's time (rounds within {spread:.2f}x of "
                      "each other)."]
        for label, columns in result.get("vela", {}).items():
            if "refused" in columns:  # edgecnn's own one-line refusal, before Vela
                lines.append(f"- `--for npu` {label}: not written: {columns['refused']}")
                continue
            shown = ", ".join(f"{k} {v}" for k, v in columns.items()
                              if k in ("NPU ops %", "est. µs", "SRAM KiB"))
            lines.append(f"- `--for npu` {label}: Vela {shown}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobile_se_outlier", "efficientnet_lite0"],
                        choices=acc.MODELS)
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "int16_layers")
    parser.add_argument("--out", type=Path, help="a markdown file whose int16 section to fill")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models:
        began = time.perf_counter()
        result = measure(name, args.work)
        result["seconds"] = round(time.perf_counter() - began)
        (args.work / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
        results.append(result)
        print(f"{name}: {result['seconds']} s", file=sys.stderr)
    text = markdown(results)
    print(text)
    if args.out:
        from edgecnn.report import fill_section

        args.out.write_text(fill_section(args.out.read_text(), *MARKERS, text))


if __name__ == "__main__":
    main()
