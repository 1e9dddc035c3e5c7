"""Convert an ONNX file with onnx2tf, a peer of edgecnn, and report the result as one JSON line.

Run it with the peer's own interpreter, never with edgecnn's venv (``scripts/setup_peers.sh``
makes ``.peers/onnx2tf``)::

    .peers/onnx2tf/bin/python scripts/peer_onnx2tf.py --onnx MODEL.onnx --out DIR \
        [--int8 --calib CALIB.npz]
    .peers/onnx2tf/bin/python scripts/peer_onnx2tf.py --onnx A.onnx B.onnx ... --out DIR
        # several models in one call: one JSON line each, in order, as each finishes
    .peers/onnx2tf-tf/bin/python scripts/peer_onnx2tf.py --onnx MODEL.onnx --out DIR \
        --int8 --calib CALIB.npz --int8-backend tf_converter

Why it is built the way it is:

* onnx2tf **overwrites its input .onnx** with the simplified graph, so every conversion works on
  a copy in a temporary folder (with the ``.onnx.data`` external-data files the graph names: the
  dynamo exporter writes them for larger models).
* onnx2tf shells out to ``onnxsim`` and silently skips simplification when it is not on ``PATH``,
  so the venv's ``bin/`` goes first on the child's ``PATH``.
* It runs as a child process, so that wall time and peak RSS are those of the conversion alone
  (``os.wait4`` reports the child's peak RSS together with that of the children it reaped), a
  crash or a hang cannot take this script down, and a timeout can kill the whole process group.
* Its default ``flatbuffer_direct`` backend needs no TensorFlow. Its int8 is strict, though: in
  2.6.9 it refuses graphs with ops it cannot quantize (PADV2 from ResNet's padded max-pool,
  RELU_0_TO_1 from MobileNetV3's hard-sigmoid). ``--backend``/``--int8-backend tf_converter``
  selects the TensorFlow Lite Converter path instead, which needs the ``onnx2tf[tensorflow]``
  venv (``.peers/onnx2tf-tf``); its int8 run also writes float16, dynamic-range and
  int16-activation variants, and its time includes them.
* Both backends make full-integer int8 from ``-oiqt`` plus ``-cind NAME NPY MEAN STD``: NPY holds
  float32 samples in the *converted* (NHWC) layout, which onnx2tf normalises as
  ``(x - MEAN) / STD``. edgecnn's calibration sets are uint8 images whose preprocessing is
  ``x / 255``, so we pass ``x / 255`` with MEAN 0 and STD 1. Without ``-cind`` the tf_converter
  path would download a sample set from the internet. The full-integer model has int8 input and
  output (onnx2tf's default ``-iqd``/``-oqd``).
* The .tflite files are read with the flatbuffer schema that ships in ``ai_edge_litert`` (a
  dependency of onnx2tf), not with edgecnn, so the peer's numbers do not depend on our code.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TOOL = "onnx2tf"
TIMEOUT_S = 900.0
BACKENDS = ("flatbuffer_direct", "tf_converter")
# onnx2tf names its outputs <stem>_<variant>.tflite.
VARIANT_FILES = {"fp32": "float32", "int8": "full_integer_quant"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b(:.*)?$")


@dataclass(frozen=True)
class RunStats:
    """What one onnx2tf child process cost and how it ended."""

    returncode: int | None  # None: killed at the timeout
    seconds: float
    peak_rss_mb: float
    log: Path


def tool_version() -> str:
    """The installed onnx2tf version, read from package metadata (importing onnx2tf is slow)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnx2tf")
    except PackageNotFoundError:
        return "not installed"


def copy_onnx(onnx: Path, folder: Path) -> Path:
    """Copy the model and the external-data files it names into ``folder``; return the copy.

    onnx2tf rewrites its input in place, and the graph finds its ``.onnx.data`` by a path
    relative to the .onnx, so the pair must move together.
    """
    import onnx as onnx_lib

    target = folder / onnx.name
    shutil.copy2(onnx, target)
    model = onnx_lib.load(str(onnx), load_external_data=False)
    locations = {
        entry.value
        for tensor in _tensors(model.graph)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    for location in sorted(locations):
        source = onnx.parent / location
        if not source.is_file():
            raise FileNotFoundError(f"{onnx.name} names external data {location}, not found")
        (folder / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, folder / location)
    return target


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of ``graph``: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def graph_input(onnx: Path) -> tuple[str, list[int | str]]:
    """Name and shape of the model's one real input (initializers listed as inputs excluded)."""
    import onnx as onnx_lib

    graph = onnx_lib.load(str(onnx), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"expected one graph input, found {[v.name for v in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    return inputs[0].name, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def calibration_npy(calib: Path, input_shape: list[int | str], folder: Path) -> Path:
    """Write CALIB.npz's uint8 NHWC images as float32 ``x / 255`` in a .npy, as ``-cind`` wants."""
    with np.load(calib) as data:
        images = data["x"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{calib}: x must be uint8 (N,H,W,C), got {images.dtype} {images.shape}")
    if len(input_shape) == 4 and all(isinstance(d, int) and d > 0 for d in input_shape[1:]):
        channels, height, width = input_shape[1:]
        if images.shape[1:] != (height, width, channels):
            raise ValueError(f"{calib}: images are {images.shape[1:]} (H,W,C), the model "
                             f"wants {(height, width, channels)}")
    path = folder / "calibration.npy"
    np.save(path, images.astype(np.float32) / 255.0)
    return path


def run_child(command: list[str], log: Path, cwd: Path, timeout_s: float) -> RunStats:
    """Run ``command`` in its own session, logging to ``log``; measure wall time and peak RSS.

    ``os.wait4`` rather than ``subprocess.run``: it hands back the child's rusage, whose
    ``ru_maxrss`` (KiB on Linux) also covers the grandchildren the child waited for (onnxsim).
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    with log.open("wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = start + timeout_s
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                seconds = time.perf_counter() - start
                process.returncode = os.waitstatus_to_exitcode(status)
                return RunStats(process.returncode, seconds, usage.ru_maxrss / 1024.0, log)
            if time.perf_counter() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                _, _, usage = os.wait4(process.pid, 0)
                process.returncode = -signal.SIGKILL
                return RunStats(None, time.perf_counter() - start, usage.ru_maxrss / 1024.0, log)
            time.sleep(0.1)


def failure_line(log: Path) -> str:
    """The exception lines of the log (root cause first), else its last non-blank line."""
    lines = [_ANSI.sub("", line).strip()
             for line in log.read_text(errors="replace").splitlines()]
    exceptions = list(dict.fromkeys(line for line in lines if _EXCEPTION_LINE.match(line)))
    if exceptions:
        return " <- ".join(reversed(exceptions[-3:]))
    meaningful = [line for line in lines if line and not set(line) <= set("^~-= ")]
    return meaningful[-1] if meaningful else "no output"


def inspect_tflite(path: Path) -> dict[str, Any]:
    """TRANSPOSE count, operator count, size and first input of a .tflite file.

    ``io_layout`` is NHWC when the first input's last axis holds the 3 (or 1) image channels,
    NCHW when axis 1 does; anything else is reported as ``other``.
    """
    from ai_edge_litert import schema_py_generated as schema

    buffer = path.read_bytes()
    model = schema.Model.GetRootAs(buffer, 0)
    codes = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        # The builtin code moved from an int8 field to an int32 one; writers fill either.
        codes.append(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
    transposes = operators = 0
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            operators += 1
            transposes += codes[subgraph.Operators(o).OpcodeIndex()] == schema.BuiltinOperator.TRANSPOSE
    main = model.Subgraphs(0)
    tensor = main.Tensors(main.Inputs(0))
    shape = [int(v) for v in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    output = main.Tensors(main.Outputs(0))
    if len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3):
        layout = "NHWC"
    elif len(shape) == 4 and shape[1] in (1, 3):
        layout = "NCHW"
    else:
        layout = "other"
    return {"transposes": int(transposes), "operators": operators,
            "size_bytes": path.stat().st_size, "io_layout": layout,
            "input_shape": shape, "input_dtype": type_names.get(tensor.Type(), str(tensor.Type())),
            "output_dtype": type_names.get(output.Type(), str(output.Type()))}


def convert(onnx: Path, out: Path, variant: str, calib: Path | None, backend: str,
            timeout_s: float) -> dict[str, Any]:
    """One onnx2tf run on a fresh copy of the model; the result record for ``variant``."""
    stem = onnx.name.removesuffix(".onnx")
    log = out / f"{stem}.onnx2tf.{variant}.{backend}.log"
    record: dict[str, Any] = {"ok": False, "error": None, "seconds": None, "peak_rss_mb": None,
                              "path": None, "transposes": None, "size_bytes": None,
                              "io_layout": None, "backend": backend, "log": str(log.resolve())}
    if backend == "tf_converter" and importlib.util.find_spec("tensorflow") is None:
        record["error"] = ("tf_converter needs TensorFlow, not installed beside this python: "
                           "run with .peers/onnx2tf-tf/bin/python")
        return record
    with tempfile.TemporaryDirectory(prefix=f"peer_onnx2tf_{variant}_") as temp:
        work = Path(temp)
        try:
            model = copy_onnx(onnx, work)
            command = [str(Path(sys.executable).parent / "onnx2tf"), "-i", str(model),
                       "-o", str(work / "out"), "-tb", backend, "-v", "info"]
            if variant == "int8":
                if calib is None:
                    raise ValueError("--int8 needs --calib")
                name, shape = graph_input(model)
                data = calibration_npy(calib, shape, work)
                channels = np.load(data, mmap_mode="r").shape[-1]
                zeros, ones = [[[[0.0] * channels]]], [[[[1.0] * channels]]]
                command += ["-oiqt", "-cind", name, str(data), str(zeros), str(ones)]
        except (OSError, ValueError) as error:
            record["error"] = f"{type(error).__name__}: {error}"
            return record
        stats = run_child(command, log, work, timeout_s)
        record["seconds"] = round(stats.seconds, 2)
        record["peak_rss_mb"] = round(stats.peak_rss_mb, 1)
        produced = work / "out" / f"{stem}_{VARIANT_FILES[variant]}.tflite"
        if stats.returncode is None:
            record["error"] = f"timeout after {timeout_s:.0f} s"
        elif stats.returncode != 0 or not produced.is_file():
            reason = failure_line(log)
            if stats.returncode == 0:
                reason = f"no {produced.name} produced; {reason}"
            record["error"] = f"exit {stats.returncode}: {reason}"
        else:
            target = out / f"{stem}.onnx2tf.{variant}.{backend}.tflite"
            shutil.copy2(produced, target)
            record.update(ok=True, path=str(target.resolve()), **inspect_tflite(target))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, nargs="+", required=True,
                        help="model(s) to convert (kept intact); one JSON line each")
    parser.add_argument("--out", type=Path, required=True, help="folder for .tflite and logs")
    parser.add_argument("--int8", action="store_true", help="also make full-integer int8")
    parser.add_argument("--calib", type=Path, help="npz with uint8 NHWC images x (and labels y)")
    parser.add_argument("--backend", choices=BACKENDS, default=BACKENDS[0],
                        help="onnx2tf -tb for the fp32 run (and int8, unless --int8-backend)")
    parser.add_argument("--int8-backend", choices=BACKENDS,
                        help="onnx2tf -tb for the int8 run (default: --backend)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per conversion")
    args = parser.parse_args(argv)
    if args.int8 and args.calib is None:
        parser.error("--int8 needs --calib")
    missing = [str(path) for path in args.onnx if not path.is_file()]
    if missing:
        parser.error(f"{', '.join(missing)} does not exist")
    args.out.mkdir(parents=True, exist_ok=True)
    for onnx in args.onnx:
        result: dict[str, Any] = {"tool": f"{TOOL} {tool_version()}",
                                  "model": str(onnx.resolve())}
        result["fp32"] = convert(onnx, args.out, "fp32", None, args.backend, args.timeout)
        result["int8"] = (convert(onnx, args.out, "int8", args.calib,
                                  args.int8_backend or args.backend, args.timeout)
                          if args.int8 else None)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
