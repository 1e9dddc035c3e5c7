"""VGG19 (143.7 M parameters) conversion time and peak memory, written to docs/vgg19.md.

Each conversion runs as its own `edgecnn convert` process so that its peak RSS is measured
alone (resource.getrusage(RUSAGE_CHILDREN) after each one). Calibration uses 8 seeded random
224x224 RGB images: nothing here measures accuracy, only the cost of the pipeline.
Usage: python scripts/benchmark_vgg19.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgecnn import zoo
from edgecnn.files.torch_files import default_card
from edgecnn.train import save_model

ROOT = Path(__file__).resolve().parent.parent
CASES = (("ONNX fp32", ["--to", "onnx"], ".onnx"), ("ONNX int8", ["--to", "onnx", "--int8"], ".onnx"),
         ("TFLite fp32", ["--to", "tflite"], ".tflite"),
         ("TFLite int8", ["--to", "tflite", "--int8"], ".tflite"))


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        torch.manual_seed(0)
        save_model(zoo.build("vgg19"), default_card("vgg19"), out / "vgg19.pt")
        rng = np.random.default_rng(0)
        np.savez(out / "train-calib.npz", x=rng.integers(0, 256, (8, 224, 224, 3), np.uint8),
                 y=np.zeros(8, np.int64))
        for name, flags, suffix in CASES:
            args = ["convert", str(out / "vgg19.pt"), *flags, "-o", str(out / f"m{suffix}")]
            if "--int8" in flags:
                args += ["--calib", str(out / "train-calib.npz")]
            # RUSAGE_CHILDREN keeps the maximum over all children: measure each in a fresh
            # interpreter so every figure is that conversion's own peak
            code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                    f"subprocess.run([sys.executable, '-m', 'edgecnn', *{args!r}], check=True, "
                    "capture_output=True); print(time.perf_counter() - t, "
                    "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
            done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                  text=True)
            seconds, peak = map(float, done.stdout.split())
            size = (out / f"m{suffix}").stat().st_size / 2**20
            rows.append(f"| {name} | {seconds:.1f} | {peak:,.0f} | {size:,.1f} |")
            print(rows[-1], flush=True)
    text = ["# VGG19 conversion cost", "",
            f"Written by `python scripts/benchmark_vgg19.py` on {time.strftime('%Y-%m-%d')} "
            "(x86_64, 2 cores). Each row is one `edgecnn convert vgg19.pt ...` process on a seeded random-weight VGG19 saved by edgecnn (575 MB torch.export archive): "
            "export, quantisation where asked, the self-check against PyTorch/ONNX, and the "
            "atomic write.", "",
            "| output | wall s | peak RSS MiB | file MiB |", "|---|---|---|---|", *rows, "",
            "Peak memory is kept down by exporting through a file with external data, by never "
            "holding float copies of int8 weights, by calibrating apart from quantisation, and "
            "by releasing onnxscript's reference to the exported graph.", ""]
    (ROOT / "docs" / "vgg19.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
