"""Detectors and segmenters through edgecnn, onnx2tf and litert-torch in one run (issue 22).

Models, built offline with random weights (BatchNorm statistics and affine parameters
re-randomised so no branch is left at identity, as docs/coverage.md's other tables):

* Ultralytics YOLOv8n detect, -seg, -pose and -cls from their yaml files, their heads in
  Ultralytics' export mode (one decoded output tensor, as its ONNX has), exported twice: as a
  ``torch.export`` archive (``.pt2``, edgecnn's path) and by Ultralytics' own
  ``export(format="onnx", opset=17, simplify=True)``. Ultralytics initialises the class
  branches' last biases so that every score is about 1e-4 before training; they are re-drawn
  from U(-2, 2) so that the scores span (0, 1) and their int8 precision can be judged;
* segmentation-models-pytorch 0.6.0 U-Net (resnet18), FPN (efficientnet-b0) and DeepLabV3+
  (resnet18), 21 classes, exported as ``.pt2``; the ONNX file onnx2tf reads is edgecnn's own fp32
  export of it (``edgecnn convert X.pt2 --to onnx``).

For each, every tool that applies:

* **edgecnn** on the .pt2 and (YOLO) on Ultralytics' ONNX: fp32 TFLite (max |Δ| against
  PyTorch over 2 random images, relative to the largest output; TRANSPOSE ops) and int8
  (``--to onnx --int8 --calib C`` then ``--to tflite --int8``): does LiteRT run it, max output
  steps against the QDQ reference (onnxruntime, optimisations off) on 4 calibration images,
  edgecnn's own self-check verdict (exit status and its last line), and the pinned per-layer
  check (each reference layer fed LiteRT's own input integers: identical share, largest
  difference in steps, values off a rounding half);
* **onnx2tf** (``--onnx2tf-python``) on the ONNX file: fp32 and full-integer int8 (its
  ``-oiqt`` with the same calibration images);
* **litert-torch** (``--litert-torch-python``) on the same ``.pt2`` program: fp32 and its PT2E
  int8;
* for every int8 file that runs: max |int8 − PyTorch fp32| relative to the largest output,
  the one measure all three tools share.

Each conversion runs in its own process. ``--docs`` fills the detector section of
docs/coverage.md and the ``detectors`` key of docs/coverage.json::

    pip install -c constraints.txt ultralytics segmentation-models-pytorch==0.6.0
    bash scripts/setup_peers.sh onnx2tf litert-torch
    python scripts/detector_coverage.py --onnx2tf-python .peers/onnx2tf/bin/python \\
        --litert-torch-python .peers/litert-torch/bin/python --docs      # ~30 min on 2 cores
    python scripts/detector_coverage.py --models yolov8n --size 160     # one model, edgecnn only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))

# name -> (library, what to build)
MODELS: dict[str, tuple[str, ...]] = {
    "yolov8n": ("ultralytics", "yolov8n.yaml"),
    "yolov8n-seg": ("ultralytics", "yolov8n-seg.yaml"),
    "yolov8n-pose": ("ultralytics", "yolov8n-pose.yaml"),
    "yolov8n-cls": ("ultralytics", "yolov8n-cls.yaml"),
    "yolo11n": ("ultralytics", "yolo11n.yaml"),  # C3k2 blocks and C2PSA attention
    "unet-resnet18": ("smp", "Unet", "resnet18"),
    "fpn-efficientnet-b0": ("smp", "FPN", "efficientnet-b0"),
    "deeplabv3plus-resnet18": ("smp", "DeepLabV3Plus", "resnet18"),
}
# the rows of a YOLO output that hold box coordinates (pixels) and class scores (0..1)
BOXES, SCORES = slice(0, 4), {"yolov8n": slice(4, 84), "yolov8n-seg": slice(4, 84),
                              "yolov8n-pose": slice(4, 5), "yolo11n": slice(4, 84)}
TIMEOUT_S = 900
CALIBRATION_IMAGES = 32
START, END = "<!-- detectors:start -->", "<!-- detectors:end -->"
HEADING = """## Detectors and segmenters: edgecnn, onnx2tf and litert-torch in one run

Ultralytics YOLOv8n (detect, seg, pose, cls) and YOLO11n, built from their yaml files, and
segmentation-models-pytorch U-Net, FPN and DeepLabV3+, random weights with BatchNorm re-randomised, each converted by all
three tools in the same run (`scripts/detector_coverage.py`, whose docstring says what each
column measures).

"""


# --- building and exporting (child process, edgecnn's venv) ---------------------------------

def rerandomise(model: Any) -> None:
    """BatchNorm at identity (and Ultralytics' fused-looking defaults) leaves branches dead."""
    import torchvision_zoo

    torchvision_zoo.rerandomise_batchnorm(model)


def build_child(name: str, size: int, folder: Path) -> dict[str, Any]:
    """Build ``name``, write NAME.pt2 (and NAME.ultralytics.onnx), the PyTorch reference
    outputs on 2 random images (ref.npz) and the calibration set (calib.npz)."""
    import torch
    import torchvision_zoo

    folder = Path(folder)
    torchvision_zoo.models()  # ultralytics and smp import torchvision: without its CUDA kernels
    torch.manual_seed(0)
    spec = MODELS[name]
    yolo = None
    if spec[0] == "ultralytics":
        from ultralytics import YOLO
        from ultralytics.nn.modules.head import Classify, Detect

        yolo = YOLO(spec[1])
        model = yolo.model
        rerandomise(model)
        for module in model.modules():  # class scores that span (0, 1), not all ~1e-4
            if isinstance(module, Detect):
                with torch.no_grad():
                    for branch in module.one2many["cls_head"]:
                        branch[-1].bias.uniform_(-2.0, 2.0)
        model.eval()
        for module in model.modules():  # heads as Ultralytics' exporter sets them (decoded)
            if isinstance(module, (Detect, Classify)):
                module.export, module.format = True, "onnx"
                if isinstance(module, Detect):
                    module.dynamic = False
    else:
        import segmentation_models_pytorch as smp

        model = smp.create_model(spec[1], encoder_name=spec[2], encoder_weights=None,
                                 classes=21)
        rerandomise(model)
        model.eval()
    example = torch.rand(1, 3, size, size)
    with torch.no_grad():  # a dry run first, as Ultralytics' exporter does: the Detect head
        model(example)  # caches its anchors for this size (traced, it would keep fake tensors)
    program = torch.export.export(model, (example,))
    torch.export.save(program, folder / f"{name}.pt2")
    x = np.random.default_rng(1).random((2, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        runs = [program.module()(torch.from_numpy(x[i:i + 1])) for i in range(2)]
    leaves = [[t.numpy() for t in flatten(r)] for r in runs]
    outputs = [np.concatenate(per) for per in zip(*leaves, strict=True)]
    np.savez(folder / "ref.npz", x=x, **{f"y{i}": y for i, y in enumerate(outputs)})
    torchvision_zoo.calibration_set(folder / "calib.npz", size, CALIBRATION_IMAGES)
    info: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters()),
                            "outputs": [list(y.shape[1:]) for y in outputs]}
    if yolo is not None:
        made = yolo.export(format="onnx", imgsz=size, opset=17, simplify=True, batch=1)
        target = folder / f"{name}.ultralytics.onnx"
        Path(made).replace(target)
        info["ultralytics_onnx"] = str(target)
    return info


def flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in flatten(item)]
    return [value]


# --- running files (edgecnn's venv) -------------------------------------------------------

def run_edgecnn_file(path: Path, x: np.ndarray) -> list[np.ndarray]:
    """An edgecnn TFLite file on LiteRT through edgecnn's own session (NCHW in, the model's
    layout out), image by image."""
    from edgecnn.runtimes.sessions import open_session, predict_all

    session = open_session(path, "litert")
    runs = [predict_all(session, x[i:i + 1]) for i in range(len(x))]
    return [np.concatenate(per) for per in zip(*runs, strict=True)]


def run_peer_file(path: Path, x: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """A peer's TFLite file on LiteRT: the image fed in the layout and type the file declares
    (int8 input quantised with its own parameters), each output dequantised and read back in
    PyTorch's layout (``onnx_node_coverage.as_onnx_layout``), matched to the reference outputs
    by shape."""
    from ai_edge_litert.interpreter import Interpreter
    from onnx_node_coverage import as_onnx_layout

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    declared = [int(d) for d in detail["shape"]]
    per_image: list[list[np.ndarray]] = []
    for i in range(len(x)):
        image = x[i:i + 1]
        if declared != list(image.shape):
            image = image.transpose(0, 2, 3, 1)
        if detail["dtype"] != np.float32:
            scale, zero = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            image = np.clip(np.round(image / scale + zero), info.min, info.max)
        interpreter.set_tensor(detail["index"], np.ascontiguousarray(image.astype(detail["dtype"])))
        interpreter.invoke()
        outs = []
        for out in interpreter.get_output_details():
            value = interpreter.get_tensor(out["index"]).astype(np.float32)
            scale, zero = out["quantization"]
            if out["dtype"] != np.float32 and scale:
                value = (value - zero) * scale
            outs.append(value)
        per_image.append(outs)
    outputs = [np.concatenate(per) for per in zip(*per_image, strict=True)]
    matched, free = [], list(range(len(outputs)))
    for shape in shapes:
        want = np.zeros((len(x), *shape), np.float32)
        pick = next((j for j in free if as_onnx_layout(outputs[j], want)[0].shape == want.shape),
                    None)
        if pick is None:
            raise ValueError(f"no output of shape {[len(x), *shape]} (has "
                             f"{[list(o.shape) for o in outputs]})")
        free.remove(pick)
        matched.append(outputs[pick])
    return matched


def relative_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """max |got − want| over the largest |want|, worst output; channels-last outputs read back."""
    from onnx_node_coverage import as_onnx_layout

    worst = 0.0
    for g, w in zip(got, want, strict=True):
        g = as_onnx_layout(g, w)[0]
        if g.shape != w.shape:
            raise ValueError(f"output shape {list(g.shape)}, PyTorch has {list(w.shape)}")
        worst = max(worst, float(np.abs(g - w).max()) / max(float(np.abs(w).max()), 1e-12))
    return worst


def transposes(path: Path) -> int:
    from edgecnn.api import inspect

    return sum(row["count"] for row in inspect(path).ops if row["op"] == "TRANSPOSE")


def measure_child(folder: Path, name: str, files: dict[str, str]) -> dict[str, Any]:
    """Every measurement of one model's files (child process)."""
    folder = Path(folder)
    ref = np.load(folder / "ref.npz")
    x = ref["x"]
    want = [ref[f"y{i}"] for i in range(len(ref.files) - 1)]
    shapes = [tuple(w.shape[1:]) for w in want]
    calib = np.load(folder / "calib.npz")["x"][:4].astype(np.float32).transpose(0, 3, 1, 2) / 255
    out: dict[str, Any] = {}
    for key, path in files.items():
        if key.endswith(":qdq"):
            continue  # the reference of the int8 file of that name, not a file to measure
        path = Path(path)
        record: dict[str, Any] = {}
        out[key] = record
        edgecnn_file = key.startswith("edgecnn")
        try:
            got = run_edgecnn_file(path, x) if edgecnn_file else run_peer_file(path, x, shapes)
            record["rel_err"] = relative_error(got, want)
            record["runs"] = True
            if name in SCORES:  # boxes and scores of the decoded output, each in its own unit
                from onnx_node_coverage import as_onnx_layout

                w = want[0]
                g = as_onnx_layout(got[0], w)[0]
                record["boxes_abs_err"] = float(np.abs(g[:, BOXES] - w[:, BOXES]).max())
                record["scores_abs_err"] = float(np.abs(g[:, SCORES[name]]
                                                        - w[:, SCORES[name]]).max())
                record["scores_max"] = float(w[:, SCORES[name]].max())
        except Exception as exc:  # noqa: BLE001 - a file LiteRT cannot run is a finding
            record["runs"] = False
            record["run_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        try:
            record["transposes"] = transposes(path)
        except Exception as exc:  # noqa: BLE001
            record["transposes_error"] = str(exc)[:200]
        qdq = folder / files.get(key + ":qdq", "-")
        if key.endswith("int8") and edgecnn_file and qdq.is_file() and record["runs"]:
            record.update(int8_against_qdq(qdq, path, calib))
    return out


def int8_against_qdq(qdq: Path, tflite: Path, images: np.ndarray) -> dict[str, Any]:
    """edgecnn's int8 file against its QDQ reference: output steps (quantised outputs; float
    outputs as relative error) and the pinned per-layer check on one image."""
    from ai_edge_litert.interpreter import Interpreter

    from edgecnn.checks.int8_self_check import compare_layers, pinned_identical_share
    from edgecnn.runtimes.sessions import reference_session

    reference = reference_session(qdq)
    from edgecnn.runtimes.sessions import predict_all

    want = [np.concatenate(p) for p in zip(*(predict_all(reference, images[i:i + 1])
                                             for i in range(len(images))), strict=True)]
    got = run_edgecnn_file(tflite, images)
    details = Interpreter(model_path=str(tflite)).get_output_details()
    result: dict[str, Any] = {"outputs": []}
    for g, w, d in zip(got, want, details, strict=False):
        scale = d["quantization"][0] if d["dtype"] != np.float32 else 0.0
        entry: dict[str, Any] = {"dtype": np.dtype(d["dtype"]).name, "shape": list(w.shape[1:])}
        if scale:
            steps = np.abs(g - w) / scale
            entry.update(max_steps=float(np.round(steps.max(), 2)),
                         identical_pct=100 * float((steps < 0.5).mean()), scale=float(scale))
        else:
            entry["rel_err_vs_qdq"] = float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-12))
        result["outputs"].append(entry)
    steps = [e["max_steps"] for e in result["outputs"] if "max_steps" in e]
    result["max_steps"] = max(steps) if steps else None
    layers = compare_layers(qdq, tflite, images[:1])
    share = pinned_identical_share(layers)
    result["layerwise_identical_pct"] = None if share is None else 100 * share
    result["layerwise_max_steps"] = max((d.pinned_max_steps for d in layers
                                         if d.pinned_max_steps is not None), default=None)
    result["layerwise_off_tie"] = sum(d.pinned_off_tie or 0 for d in layers)
    worst = sorted((d for d in layers if d.pinned_off_tie), key=lambda d: -(d.pinned_off_tie or 0))
    result["off_tie_layers"] = [{"tensor": d.tensor, "off_tie": d.pinned_off_tie,
                                 "values": d.values, "max_steps": d.pinned_max_steps}
                                for d in worst[:5]]
    return result


# --- driving (parent) --------------------------------------------------------------------

def child(function: str, *args: Any) -> tuple[dict[str, Any] | None, str]:
    """Run ``function(*args)`` of this module in a fresh process; (result, last stderr line)."""
    code = (f"import json, sys; sys.path.insert(0, {str(SCRIPTS)!r}); "
            "import detector_coverage as d; from pathlib import Path; "
            f"print('RESULT' + json.dumps(d.{function}(*json.loads(sys.argv[1]))))")
    serial = [str(a) if isinstance(a, Path) else a for a in args]
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(serial)], cwd=args[-1]
                              if isinstance(args[-1], Path) else ROOT, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"over {TIMEOUT_S} s"
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        return None, last_line(done.stderr)
    return json.loads(line[len("RESULT"):]), ""


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:400] if lines else "no output"


def edgecnn(*args: str | Path) -> dict[str, Any]:
    """One ``edgecnn`` CLI call: exit status, seconds, and its last stderr line."""
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "edgecnn", *map(str, args)],
                              capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT)
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        code, err = None, f"over {TIMEOUT_S} s"
    checks = [line.strip() for line in err.splitlines() if "check" in line.lower()]
    return {"ok": code == 0, "exit": code, "seconds": round(time.perf_counter() - started, 1),
            "message": "" if code == 0 else last_line(err).removeprefix("edgecnn: error: "),
            "check_lines": checks[-3:]}


def convert_edgecnn(source: Path, stem: str, calib: Path, int8: bool) -> dict[str, Any]:
    folder = source.parent
    record: dict[str, Any] = {"fp32": edgecnn("convert", source, "--to", "tflite", "-o",
                                              folder / f"{stem}.tflite")}
    if int8:
        qdq = edgecnn("convert", source, "--to", "onnx", "--int8", "--calib", calib, "-o",
                      folder / f"{stem}_int8.onnx")
        record["int8"] = qdq
        if qdq["ok"]:
            lowered = edgecnn("convert", folder / f"{stem}_int8.onnx", "--to", "tflite",
                              "--int8", "-o", folder / f"{stem}_int8.tflite")
            lowered["seconds"] = round(lowered["seconds"] + qdq["seconds"], 1)
            record["int8"] = lowered
    return record


def run_peer(command: list[str]) -> dict[str, Any]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3 * TIMEOUT_S,
                              cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"fp32": {"ok": False, "error": "timeout"}}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"fp32": {"ok": False, "error": last_line(done.stderr)}}
    return json.loads(lines[-1])


def cover(name: str, size: int, work: Path, peers: dict[str, str], int8: bool) -> dict[str, Any]:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"model": name, "input": f"1x3x{size}x{size}", "tools": {}}
    started = time.perf_counter()
    built, error = child("build_child", name, size, folder)
    if built is None:
        row["error"] = f"build/export failed: {error}"
        return row
    row.update(parameters=built["parameters"], outputs=built["outputs"])
    progress(name, f"built ({time.perf_counter() - started:.0f} s)")
    pt2, calib = folder / f"{name}.pt2", folder / "calib.npz"
    tools = row["tools"]
    tools["edgecnn .pt2"] = convert_edgecnn(pt2, name, calib, int8)
    progress(name, "edgecnn .pt2: " + summary(tools["edgecnn .pt2"]))
    onnx = Path(built["ultralytics_onnx"]) if "ultralytics_onnx" in built else None
    if onnx is not None:
        stem = f"{name}.ultralytics"
        tools["edgecnn Ultralytics ONNX"] = convert_edgecnn(onnx, stem, calib, int8)
        progress(name, "edgecnn Ultralytics ONNX: " + summary(tools["edgecnn Ultralytics ONNX"]))
    else:  # onnx2tf reads edgecnn's own fp32 ONNX export of the .pt2
        onnx = folder / f"{name}.onnx"
        edgecnn("convert", pt2, "--to", "onnx", "-o", onnx)
    if "onnx2tf" in peers and onnx.is_file():
        key = "onnx2tf " + ("Ultralytics ONNX" if "ultralytics" in onnx.name else "ONNX")
        command = [peers["onnx2tf"], str(SCRIPTS / "peer_onnx2tf.py"), "--onnx", str(onnx),
                   "--out", str(folder / "onnx2tf")]
        tools[key] = run_peer(command + (["--int8", "--calib", str(calib)] if int8 else []))
        progress(name, f"{key}: " + summary(tools[key]))
    if "litert-torch" in peers:
        command = [peers["litert-torch"], str(SCRIPTS / "peer_litert_torch.py"), "--pt2",
                   str(pt2), "--size", str(size), "--out", str(folder / "litert_torch")]
        tools["litert-torch .pt2"] = run_peer(command + (["--int8", "--calib", str(calib)]
                                                         if int8 else []))
        progress(name, "litert-torch .pt2: " + summary(tools["litert-torch .pt2"]))
    measure(row, folder)
    row["seconds"] = round(time.perf_counter() - started)
    progress(name, f"measured ({row['seconds']} s in all)")
    return row


def measure(row: dict[str, Any], folder: Path) -> None:
    """Measure every file the tools wrote for ``row`` (in a child process)."""
    name = row["model"]
    files: dict[str, str] = {}
    for key, result in row["tools"].items():
        if key.startswith("edgecnn"):
            stem = name if key == "edgecnn .pt2" else f"{name}.ultralytics"
            files[f"{key} fp32"] = str(folder / f"{stem}.tflite")
            files[f"{key} int8"] = str(folder / f"{stem}_int8.tflite")
            files[f"{key} int8:qdq"] = f"{stem}_int8.onnx"
            continue
        for variant in ("fp32", "int8"):
            record = result.get(variant) or {}
            if record.get("ok") and record.get("path"):
                files[f"{key} {variant}"] = record["path"]
    present = {k: v for k, v in files.items() if k.endswith(":qdq") or Path(v).is_file()}
    measured, error = child("measure_child", folder, name, present)
    row["measured"] = measured if measured is not None else {"error": error}


def summary(result: dict[str, Any]) -> str:
    parts = []
    for variant in ("fp32", "int8"):
        record = result.get(variant)
        if record is not None:
            why = record.get("message") or record.get("error") or ""
            parts.append(f"{variant} {'ok' if record.get('ok') else 'no: ' + str(why)[:120]}")
    return ", ".join(parts)


def progress(name: str, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {text}", flush=True)


# --- the report --------------------------------------------------------------------------

def _e(value: Any) -> str:
    return "–" if value is None else f"{value:.1e}"


def tool_rows(row: dict[str, Any]) -> list[list[str]]:
    measured = row.get("measured") or {}
    lines = []
    for key, result in row["tools"].items():
        tool, source = key.split(" ", 1)
        version = result.get("tool", tool) if not tool.startswith("edgecnn") else "edgecnn"
        cells = [row["model"], source, version]
        for variant in ("fp32", "int8"):
            record = result.get(variant)
            m = measured.get(f"{key} {variant}") or {}
            if record is None:
                cells += ["–"] * (2 if variant == "fp32" else 4)
                continue
            if not record.get("ok"):
                why = reason(str(record.get("message") or record.get("error") or ""))
                cells += [f"refused: {clip(why)}", "–"] + (["–", "–"] if variant == "int8" else [])
                continue
            if not m.get("runs", False):
                why = reason(m.get("run_error", "not measured"))
                cells += [f"LiteRT fails: {clip(why)}", "–"]
                cells += ["–", "–"] if variant == "int8" else []
                continue
            if variant == "fp32":
                cells += [f"yes, {_e(m.get('rel_err'))}", str(m.get("transposes", "–"))]
            else:
                text = f"runs, {_e(m.get('rel_err'))}"
                if "scores_abs_err" in m:
                    text += (f"; boxes ±{m['boxes_abs_err']:.2f} px, scores "
                             f"±{m['scores_abs_err']:.3f} (max {m['scores_max']:.2f})")
                cells += [text, str(m.get("transposes", "–"))]
                if "max_steps" in m or "layerwise_identical_pct" in m:
                    steps = m.get("max_steps")
                    floats = [o for o in m.get("outputs", []) if "rel_err_vs_qdq" in o]
                    text = "–" if steps is None else f"{steps:.0f}"
                    if floats:
                        text += " (float out: " + ", ".join(_e(o["rel_err_vs_qdq"])
                                                           for o in floats) + ")"
                    cells.append(text)
                    share = m.get("layerwise_identical_pct")
                    cells.append("–" if share is None else
                                 f"{share:.4f} % / {m.get('layerwise_max_steps')} / "
                                 f"{m.get('layerwise_off_tie')}")
                else:
                    cells += ["–", "–"]
        lines.append(cells)
    return lines


def reason(text: str) -> str:
    """A tool's failure in a table cell: the root exception (the last of onnx2tf's "a <- b"
    chain) without its module path, and for a file LiteRT cannot prepare, the op first."""
    import re

    text = re.sub(r"\b(?:[a-z_]\w*\.)+(?=[A-Z]\w*(?:Error|Exception)\b)", "",
                  text.split(" <- ")[-1])
    node = re.search(r"Node number (\d+) \((\w+)\) failed to prepare", text)
    if node:
        first = re.split(r"(?<=[a-z0-9)])(?=failed to delegate|Node number)", text)[0]
        first = first.removeprefix("RuntimeError: ")
        text = f"{node.group(2)} (node {node.group(1)}) fails to prepare: {first}"
    return text


def clip(text: str, limit: int = 110) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def markdown(rows: list[dict[str, Any]], size: int, host: dict[str, Any]) -> str:
    lines = [f"Input {size}x{size}, batch 1; measured {host['date']} on {host['cpu']} "
             f"({host['cores']} cores), torch {host['torch']}. Command: `{host['command']}`.", "",
             "| model | source | tool | fp32 (rel. err vs PyTorch) | TRANSPOSE | int8 on LiteRT "
             "(rel. err vs PyTorch fp32) | TRANSPOSE | max steps vs QDQ | pinned layers: "
             "identical / max steps / off-tie |",
             "|---|---|---|---|---:|---|---:|---:|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | – | – | {clip(row['error'])} | | | | | |")
            continue
        lines += ["| " + " | ".join(cells) + " |" for cells in tool_rows(row)]
    lines += ["", "*rel. err*: max |TFLite − PyTorch| over the largest PyTorch output, worst "
              "output (2 random images; int8: the same images against the fp32 PyTorch model, "
              "the one measure all three tools share; for the YOLO detect, seg and pose "
              "outputs also the largest error of the box coordinates, in pixels, and of the "
              "class scores, whose largest value is given). *max steps vs QDQ* and the pinned layer "
              "check apply to edgecnn's int8 files, which have a QDQ reference (4 calibration "
              "images at the outputs, 1 for the layers; an output kept float is compared as "
              "relative error instead). *refused*: the tool's own one-line reason; *LiteRT "
              "fails*: the tool wrote a file that LiteRT cannot run."]
    return "\n".join(lines)


def machine(command: str) -> dict[str, Any]:
    import platform

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command,
            "load_average": os.getloadavg()[0]}


def write_docs(rows: list[dict[str, Any]], size: int, host: dict[str, Any]) -> None:
    from edgecnn.report import fill_section

    page = ROOT / "docs" / "coverage.md"
    text = page.read_text()
    if START not in text:
        text = text.rstrip("\n") + "\n\n" + HEADING
    page.write_text(fill_section(text, START, END, markdown(rows, size, host)))
    path = ROOT / "docs" / "coverage.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["detectors"] = {"machine": host, "size": size, "models": rows}
    path.write_text(json.dumps(data, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        metavar="NAME")
    parser.add_argument("--size", type=int, default=160, help="input side (multiple of 32)")
    parser.add_argument("--work", type=Path, help="keep the files here")
    parser.add_argument("--onnx2tf-python", help="python of .peers/onnx2tf")
    parser.add_argument("--litert-torch-python", help="python of .peers/litert-torch")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--docs", action="store_true",
                        help="fill docs/coverage.md's section and docs/coverage.json's key")
    parser.add_argument("--remeasure", action="store_true",
                        help="only measure again the files an earlier --work run kept (the "
                        "rows of docs/coverage.json), then --docs")
    parser.add_argument("--render", action="store_true",
                        help="only write docs/coverage.md's section again from docs/coverage.json")
    args = parser.parse_args()
    if args.render or args.remeasure:
        saved = json.loads((ROOT / "docs" / "coverage.json").read_text())["detectors"]
        rows, host = saved["models"], saved["machine"]
        if args.remeasure:
            assert args.work is not None, "--remeasure needs the --work folder of that run"
            for row in rows:
                if row["model"] in args.models and "tools" in row:
                    progress(row["model"], "measuring again")
                    measure(row, args.work / row["model"])
        write_docs(rows, saved["size"], host)
        print(markdown(rows, saved["size"], host))
        return 0
    peers = {tool: python for tool, python in (("onnx2tf", args.onnx2tf_python),
                                               ("litert-torch", args.litert_torch_python))
             if python}
    work = args.work or Path(tempfile.mkdtemp(prefix="edgecnn-detectors-"))
    command = "python scripts/detector_coverage.py " + " ".join(sys.argv[1:])
    saved = ROOT / "docs" / "coverage.json"
    earlier = json.loads(saved.read_text()).get("detectors") if saved.exists() else None
    rows = [] if earlier is None or earlier["size"] != args.size else [
        r for r in earlier["models"] if r["model"] not in args.models]  # kept, not rerun
    for name in args.models:
        progress(name, "start")
        rows = [r for r in rows if r["model"] != name]
        row = cover(name, args.size, work, peers, not args.no_int8)
        rows = sorted([*rows, row], key=lambda r: list(MODELS).index(r["model"]))
        print(json.dumps(row), flush=True)
        if args.docs:  # after every model: a run stopped early still reports
            write_docs(rows, args.size, machine(command))
    print(markdown(rows, args.size, machine(command)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
