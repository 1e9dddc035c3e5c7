"""Convert a torchvision model with litert-torch, Google's PyTorch->LiteRT peer; one JSON line.

Run it with the peer's own interpreter (``scripts/setup_peers.sh`` makes ``.peers/litert-torch``)::

    .peers/litert-torch/bin/python scripts/peer_litert_torch.py --model resnet18 --size 224 \
        --out DIR [--int8 --calib CALIB.npz]
    .peers/litert-torch/bin/python scripts/peer_litert_torch.py --pt2 MODEL.pt2 --size 160 \
        --out DIR [--int8 --calib CALIB.npz]

Why it is built the way it is:

* The model comes from ``scripts/torchvision_zoo.py`` (random weights, ``weights=None``, seed 0,
  the same constructor arguments and ViT head fix as the edgecnn runs), so both tools convert
  the same network. That module imports only torch and torchvision, never edgecnn.
* Each conversion runs in a child process of this script (``--child``), so that wall time and
  peak RSS (``os.wait4``, via ``peer_onnx2tf.run_child``) are those of one conversion, a crash
  cannot take the report down, and a hang is killed at the timeout. ``seconds`` counts the whole
  child (imports and model build included, as for onnx2tf); ``convert_seconds`` only the
  ``litert_torch.convert`` call and the write.
* int8 uses litert-torch's documented static PT2E path: ``prepare_pt2e`` with its
  ``PT2EQuantizer`` (symmetric, per-channel), calibration on CALIB.npz's uint8 NHWC images as
  ``x / 255`` in NCHW, ``convert_pt2e``, then ``litert_torch.convert`` with that quantizer. The
  quantize/dequantize pairs at the graph's ends fold into the model's input and output, so the
  result is full-integer with int8 I/O (``input_dtype``/``output_dtype`` in the JSON).
* ``--pt2`` converts the program of a ``torch.export`` archive (``torch.export.load(...)
  .module()``) instead: models whose libraries are not installed in the peer's venv
  (Ultralytics, segmentation-models-pytorch), exactly the graph edgecnn converts. Both venvs
  run torch 2.13.0, so the archive loads unchanged.
* litert-torch keeps PyTorch's NCHW at the model's input and output.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from peer_onnx2tf import failure_line, inspect_tflite, run_child

TIMEOUT_S = 900.0
SCRIPTS = Path(__file__).resolve().parent


def tool_version() -> str:
    """The installed litert-torch version, from package metadata (importing it takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("litert-torch", "ai-edge-torch"):
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return "litert-torch not installed"


def child(model_name: str, size: int, variant: str, calib: Path | None, target: Path,
          timing: Path, pt2: Path | None = None) -> None:
    """Build, (for int8) quantize, convert and write one model; runs in the child process."""
    import litert_torch
    import torch

    if pt2 is not None:
        model = torch.export.load(str(pt2)).module()
    else:
        sys.path.insert(0, str(SCRIPTS))
        import torchvision_zoo

        model = torchvision_zoo.build(model_name)
    example = (torch.randn(1, 3, size, size),)
    start = time.perf_counter()
    if variant == "int8":
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import quantize_pt2e

        assert calib is not None
        with np.load(calib) as data:
            images = data["x"]
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
        prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, example).module(),
                                              quantizer)
        with torch.no_grad():
            for image in images:
                prepared(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0)
        quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        converted = litert_torch.convert(quantized, example,
                                         quant_config=QuantConfig(pt2e_quantizer=quantizer))
    else:
        converted = litert_torch.convert(model, example)
    converted.export(str(target))
    timing.write_text(json.dumps({"convert_seconds": time.perf_counter() - start}))


def convert(model_name: str, size: int, out: Path, variant: str, calib: Path | None,
            timeout_s: float, pt2: Path | None = None) -> dict[str, Any]:
    """One conversion in a child process; the result record for ``variant``."""
    stem = f"{pt2.stem if pt2 is not None else model_name}_{size}"
    log = out / f"{stem}.litert_torch.{variant}.log"
    target = out / f"{stem}.litert_torch.{variant}.tflite"
    target.unlink(missing_ok=True)
    record: dict[str, Any] = {"ok": False, "error": None, "seconds": None, "peak_rss_mb": None,
                              "path": None, "transposes": None, "size_bytes": None,
                              "io_layout": None, "log": str(log.resolve())}
    with tempfile.TemporaryDirectory(prefix=f"peer_litert_torch_{variant}_") as temp:
        timing = Path(temp) / "timing.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", "--size",
                   str(size), "--out", str(out), "--variant", variant, "--target", str(target),
                   "--timing", str(timing)]
        command += ["--model", model_name] if pt2 is None else []
        if calib is not None:
            command += ["--calib", str(calib.resolve())]
        if pt2 is not None:
            command += ["--pt2", str(pt2.resolve())]
        stats = run_child(command, log, Path(temp), timeout_s)
        record["seconds"] = round(stats.seconds, 2)
        record["peak_rss_mb"] = round(stats.peak_rss_mb, 1)
        if stats.returncode is None:
            record["error"] = f"timeout after {timeout_s:.0f} s"
        elif stats.returncode != 0 or not target.is_file():
            record["error"] = f"exit {stats.returncode}: {failure_line(log)}"
        else:
            record.update(ok=True, path=str(target.resolve()), **inspect_tflite(target))
            record["convert_seconds"] = round(json.loads(timing.read_text())["convert_seconds"], 2)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="torchvision model name, e.g. resnet18")
    source.add_argument("--pt2", type=Path, help="a torch.export archive to convert instead")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--out", type=Path, required=True, help="folder for .tflite and logs")
    parser.add_argument("--int8", action="store_true", help="also make a PT2E int8 model")
    parser.add_argument("--calib", type=Path, help="npz with uint8 NHWC images x (and labels y)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per conversion")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["fp32", "int8"], help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--timing", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.model, args.size, args.variant, args.calib, args.target, args.timing,
              args.pt2)
        return 0
    if args.int8 and args.calib is None:
        parser.error("--int8 needs --calib")
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.model or str(args.pt2)
    result: dict[str, Any] = {"tool": tool_version(), "model": f"{name} {args.size}"}
    result["fp32"] = convert(args.model, args.size, args.out, "fp32", None, args.timeout,
                             args.pt2)
    result["int8"] = (convert(args.model, args.size, args.out, "int8", args.calib, args.timeout,
                              args.pt2) if args.int8 else None)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
