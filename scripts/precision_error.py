"""How far fp16, bf16 (and on a GPU, tf32) PyTorch moves a model's outputs from CPU fp32: the
measurement behind :data:`edgecnn.runtimes.placements.TOLERANCE`.

For each model: the same random images (the card's preprocessing) through every placement this
machine has (``torch-cpu:fp16/bf16``; with a GPU also ``torch-cuda:*``), compared with CPU fp32
by :func:`edgecnn.runtimes.placements.check_parity`: the worst output's max|y - ref| / max|ref|, NaN/inf
values, and top-1 changes on decisive images. Writes docs/precision.json and docs/precision.md::

    python scripts/precision_error.py models/lenet5.pt models/mobile_se_outlier.pt \\
        /tmp/covwork/*/*.pt2 --images 4
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def placements() -> list[str]:
    import torch

    from edgecnn.runtimes.placements import bf16_native

    names = ["torch-cpu:fp16", "torch-cpu:bf16"]
    if torch.cuda.is_available():
        names += ["torch-cuda:fp32", "torch-cuda:tf32", "torch-cuda:fp16", "torch-cuda:fp16:graph"]
        if bf16_native():
            names += ["torch-cuda:bf16"]
    return names


def measure(path: Path, images: int) -> dict[str, Any]:
    import numpy as np

    from edgecnn.files.torch_files import load_torch_model
    from edgecnn.runtimes.placements import PlacedModel, Placement, backend_flags, check_parity

    model = load_torch_model(path)
    step = model.static_batch or images
    x = model.card.input.random_batch(images)
    reference = model.outputs(x)
    row: dict[str, Any] = {"model": path.name, "parameters": model.parameter_count,
                           "output_scale": float(np.abs(reference[0]).max())}
    for name in placements():
        placement = Placement.parse(name)
        started = time.perf_counter()
        placed = PlacedModel(path, placement)
        chunks = []
        with backend_flags(placement):  # an fp32 row without TF32, as bench runs it
            for start in range(0, images, step):
                placed.bind(x[start:start + step])
                placed.launch()
                chunks.append(placed.outputs())
        outputs = [np.concatenate(parts) for parts in zip(*chunks, strict=True)]
        check = check_parity(name, outputs, reference, placement.tolerance)
        row[name] = {**check.record(), "passed": check.passed,
                     "seconds": round(time.perf_counter() - started, 2)}
        print(f"{path.name:32s} {name:24s} rel {check.max_rel_error:9.3g}  "
              f"nonfinite {check.nonfinite}  flips {check.argmax_flips}/{check.decisive_rows}",
              flush=True)
    return row


def markdown(rows: list[dict[str, Any]], machine: str) -> str:
    names = [n for n in rows[0] if n.startswith("torch-")]
    lines = ["# fp16 / bf16 output error against CPU fp32", "",
             f"Measured by `scripts/precision_error.py` on {machine}. Each cell: the worst "
             "output's max|y - ref| / max|ref| over the images; `NaN/inf` or `flip` when values "
             "overflowed or a decisive top-1 changed (the check fails such a row).", "",
             "| model | largest abs output | " + " | ".join(names) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in names) + " |"]
    for row in rows:
        cells = []
        for name in names:
            cell = row[name]
            text = f"{cell['max_rel_error']:.2e}"
            if cell["nonfinite"]:
                text += " NaN/inf"
            if cell["argmax_flips"]:
                text += f" flip {cell['argmax_flips']}/{cell['decisive_rows']}"
            cells.append(text)
        lines.append(f"| {row['model']} | {row['output_scale']:.3g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "precision")
    args = parser.parse_args()
    import torch

    rows = [measure(path, args.images) for path in args.models]
    machine = (f"{torch.cuda.get_device_name(0)}, " if torch.cuda.is_available() else "") + \
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, " \
        f"{time.strftime('%Y-%m-%d')}"
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows},
                                                        indent=1))
    args.out.with_suffix(".md").write_text(markdown(rows, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
