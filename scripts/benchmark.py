"""LeNet-5 benchmarks on this machine, written to docs/benchmarks.md and docs/benchmarks.json.

fp32 vs int8 on LiteRT, tflite-runtime and onnxruntime, PyTorch eager; batch 1 and 64; and the
harness's own overhead against a bare ``invoke()`` loop in the same process.
Usage: python scripts/benchmark.py [--runs N] [--min-time S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecnn.api import ConvertConfig, convert
from edgecnn.bench import bench
from edgecnn.report import markdown_table
from edgecnn.targets.base import BenchConfig

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "lenet5.pt"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bare_invoke_p50(path: Path, runs: int) -> tuple[float, float]:
    """p50 of a bare timed ``invoke()`` loop, and mean of an untimed one (µs), LiteRT."""
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    interp.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    for _ in range(100):
        interp.invoke()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interp.invoke()
        samples.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(runs):
        interp.invoke()
    return float(np.median(samples) * 1e6), (time.perf_counter() - t0) / runs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--min-time", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        started = time.perf_counter()
        files = {name: convert(MODEL, out / f"lenet5{suffix}", ConvertConfig(to, int8=int8)).path
                 for name, suffix, to, int8 in (
                     ("tflite", ".tflite", "tflite", False),
                     ("tflite_int8", "_int8.tflite", "tflite", True),
                     ("onnx", ".onnx", "onnx", False), ("onnx_int8", "_int8.onnx", "onnx", True))}
        convert_s = time.perf_counter() - started
        rows, results = [], {}
        for batch in (1, 64):
            config = BenchConfig(batch=batch, runs=args.runs if batch == 1 else args.runs // 10,
                                 min_time=args.min_time)
            report = bench([files["tflite"], files["tflite_int8"], files["onnx"],
                            files["onnx_int8"], MODEL], "cpu", config)
            rows += report.rows()
            summary = report.to_dict()
            for result in summary["results"]:
                result.pop("samples_us")  # thousands of numbers; the stats are kept
            results[f"batch{batch}"] = summary
        harness = next(r for r in rows if r["model"] == "lenet5_int8.tflite"
                       and r["runtime"] == "litert" and r["batch"] == 1)["p50 µs"]
        # the bare loop runs right after the harness, in the same process
        bare_p50, bare_mean = bare_invoke_p50(files["tflite_int8"], args.runs)
    columns = ["model", "runtime", "batch", "size KiB", "load ms", "first ms", "p50 µs",
               "mean µs", "p99 µs", "img/s", "peak RSS MB", "p50 ratio"]
    overhead = harness / bare_p50 - 1
    text = [
        "# LeNet-5 benchmarks", "",
        f"Machine: {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; written by `python scripts/benchmark.py` on "
        f"{time.strftime('%Y-%m-%d')}. Default threads per runtime. Ratios are to the first row "
        "of each batch size. Peak RSS is the benchmarking process's high-water mark so far (all "
        "runtimes share one process).", "",
        markdown_table([r for r in rows if r["batch"] == 1], columns), "",
        markdown_table([r for r in rows if r["batch"] == 64], columns), "",
        "## Harness overhead (LiteRT int8, batch 1)", "",
        f"- `edgecnn bench` p50: {harness:.2f} µs",
        f"- bare timed `invoke()` loop p50, same process: {bare_p50:.2f} µs "
        f"(overhead {100 * overhead:+.1f} %)",
        f"- bare untimed loop mean: {bare_mean:.2f} µs", "",
        f"All four conversions (fp32/int8 × ONNX/TFLite) took {convert_s:.1f} s together.", ""]
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(text))
    (ROOT / "docs" / "benchmarks.json").write_text(json.dumps(
        {"results": results, "harness_p50_us": harness, "bare_p50_us": bare_p50,
         "bare_mean_us": bare_mean}, indent=1, default=float))
    print("\n".join(text))


if __name__ == "__main__":
    main()
