"""onnxruntime latency of edgecnn's int8 ONNX encodings against our fp32 ONNX and against
onnxruntime's own ``quantize_static`` on the same fp32 file and calibration images.

    python scripts/bench_onnx_int8.py                       # the torchvision mobile set + zoo
    python scripts/bench_onnx_int8.py --models lenet5 --rounds 200
    python scripts/bench_onnx_int8.py --out docs/onnx-int8  # writes .md and .json

One thread, batch 1. Candidates of a model are interleaved round by round in one process and
timed in process CPU time (steadier than wall time when neighbours are busy); the table gives
the median of each and ratios of medians, and the spread (interquartile range over the median)
says how noisy a row was. torchvision models carry seeded random weights (nothing downloads
here), calibrated on smooth random images: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecnn.report import fill_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

MOBILE_SET = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
              "squeezenet1_1", "resnet18", "shufflenet_v2_x1_0", "mnasnet1_0")
SHIPPED = ("lenet5", "mobile_se_outlier")
ENCODINGS = ("u8s8", "u8s7", "uint8")
CALIBRATION_IMAGES = 16


def cpu_name() -> str:
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines()
                    if line.startswith("model name"))
        flags = "AVX-512 VNNI" if "avx512_vnni" in info else (
            "AVX-VNNI" if "avx_vnni" in info else "AVX2, no VNNI")
        return f"{name} ({flags})"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def source_and_calibration(name: str, folder: Path) -> tuple[Path, Path | None]:
    if name in SHIPPED:
        from edgecnn.files.shipped import resolve_model
        return resolve_model(name), None  # the shipped MNIST calibration set
    import torchvision_zoo

    export = torchvision_zoo.export(name, folder)
    return export.path, torchvision_zoo.calibration_set(folder / "calib.npz",
                                                        export.input_shape[-1],
                                                        CALIBRATION_IMAGES)


def quantize_static_peer(fp32: Path, calib: Path | None, out: Path) -> Path:
    """onnxruntime's own int8 as its docs recommend: ``quant_pre_process`` (symbolic shape
    inference, graph optimisation), then quantize_static with its defaults (QDQ, uint8
    activations, int8 weights), per-channel, MinMax, on the same images edgecnn calibrates with."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgecnn.files.card import read_sidecar
    from edgecnn.files.data import load_dataset
    from edgecnn.files.model_files import card_or_default
    from edgecnn.files.shipped import SHIPPED_CALIBRATION_SET

    card = read_sidecar(fp32) or card_or_default(fp32)
    data = load_dataset(calib or SHIPPED_CALIBRATION_SET, split="train").take(
        CALIBRATION_IMAGES if calib else 1000)
    input_name = onnx.load(fp32, load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = data.batches(card.input, 1)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch[0]}

    prepared = out.with_name(out.stem + "_prep.onnx")
    quant_pre_process(str(fp32), str(prepared))  # the flow onnxruntime's docs recommend
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True)
    return out


def build_candidates(name: str, folder: Path) -> dict[str, Path]:
    from edgecnn.api import ConvertConfig, convert

    source, calib = source_and_calibration(name, folder)
    fp32 = convert(source, folder / f"{name}.onnx", ConvertConfig("onnx")).path
    candidates = {"fp32": fp32}
    for encoding in ENCODINGS:
        config = ConvertConfig("onnx", int8=True, calib=calib, onnx_int8_encoding=encoding)
        candidates[f"int8 {encoding}"] = convert(source, folder / f"{name}_{encoding}.onnx",
                                                 config).path
    candidates["quantize_static"] = quantize_static_peer(fp32, calib, folder / f"{name}_qs.onnx")
    return candidates


def session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_interleaved(candidates: dict[str, Path], rounds: int) -> dict[str, list[float]]:
    sessions = {key: session(path) for key, path in candidates.items()}
    feeds = {}
    for key, sess in sessions.items():
        spec = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        feeds[key] = {spec.name: np.random.default_rng(0).random(shape, np.float32)}
        for _ in range(3):  # warm-up: first runs pack weights and allocate
            sess.run(None, feeds[key])
    times: dict[str, list[float]] = {key: [] for key in sessions}
    for _ in range(rounds):
        for key, sess in sessions.items():
            started = time.process_time()
            sess.run(None, feeds[key])
            times[key].append(time.process_time() - started)
    return times


def summarise(name: str, times: dict[str, list[float]]) -> dict[str, object]:
    median = {key: float(np.median(values)) for key, values in times.items()}
    spread = {key: float((np.percentile(v, 75) - np.percentile(v, 25)) / np.median(v))
              for key, v in times.items()}
    def ratio(a: str, b: str) -> float:
        return round(median[a] / median[b], 3)

    row: dict[str, object] = {"model": name, "fp32 ms": round(1e3 * median["fp32"], 3)}
    for encoding in ENCODINGS:
        row[f"{encoding} / fp32"] = ratio(f"int8 {encoding}", "fp32")
    row["quantize_static / fp32"] = ratio("quantize_static", "fp32")
    for encoding in ENCODINGS:
        row[f"{encoding} / quantize_static"] = ratio(f"int8 {encoding}", "quantize_static")
    row["worst spread %"] = round(100 * max(spread.values()), 1)
    return row


def markdown(rows: list[dict[str, object]], meta: dict[str, object]) -> str:
    from edgecnn.report import markdown_table

    return (f"Machine: {meta['cpu']}, onnxruntime {meta['onnxruntime']}, 1 thread, batch 1, "
            f"{meta['rounds']} interleaved rounds, process CPU time; ratios of medians "
            "(below 1: faster). Command: `python scripts/bench_onnx_int8.py --out "
            "docs/onnx-int8`.\n\n" + markdown_table(rows) + "\n")


START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*MOBILE_SET, *SHIPPED])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", type=Path, help="Write OUT.md and OUT.json.")
    args = parser.parse_args()
    import onnxruntime

    meta = {"cpu": cpu_name(), "onnxruntime": onnxruntime.__version__, "rounds": args.rounds}
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"edgecnn-bench-{name}-") as tmp:
            candidates = build_candidates(name, Path(tmp))
            rows.append(summarise(name, time_interleaved(candidates, args.rounds)))
        print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows, meta))
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
        page = args.out.with_suffix(".md")
        page.write_text(fill_section(page.read_text() if page.exists() else "", START, END,
                                     markdown(rows, meta)))


if __name__ == "__main__":
    main()
