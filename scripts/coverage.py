"""The coverage table: every torchvision classification CNN (plus LR-ASPP and ViT) through
edgecnn, as a user would run it, and through the peers in their own venvs.

For each model (random weights, seed 0, batch-1 ``torch.export``):

* fp32: ``edgecnn convert X.pt2 --to tflite``; max |TFLite - PyTorch| relative to the largest
  PyTorch output, on 4 random images;
* int8: ``edgecnn convert X.pt2 --to onnx --int8 --calib C`` then ``--to tflite --int8``; LiteRT
  against the QDQ reference (onnxruntime with optimisations off): the share of identical output
  integers, the largest difference in steps, top-1 agreement, and the same share for the stem
  (the first quantised activation, where no earlier rounding tie has propagated);
* TRANSPOSE ops, wall time and peak RSS of each conversion (its own process), file size;
* peers (``--peer-python``, see scripts/setup_peers.sh): onnx2tf on the same fp32 ONNX file.

Every conversion runs in a child process, so one model's memory never counts towards the
next. Results go to docs/coverage.json and docs/coverage.md with the machine they ran on::

    python scripts/coverage.py                          # all 18 models, ~1 h on 2 cores
    python scripts/coverage.py --models resnet18 vit_b_16 --peer-python .peers/onnx2tf/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import torchvision_zoo  # noqa: E402

TIMEOUT_S = 1800
CALIBRATION_IMAGES = 64


@dataclass
class Step:
    """One child process: did it work, how long, how much memory."""

    ok: bool
    seconds: float
    peak_rss_mb: float
    error: str = ""


@dataclass
class Row:
    model: str
    input: str
    parameters: int = 0
    export: Step | None = None
    fp32: Step | None = None
    fp32_rel_err: float | None = None
    fp32_transposes: int | None = None
    fp32_size_mb: float | None = None
    int8: Step | None = None
    int8_identical_pct: float | None = None
    int8_max_steps: float | None = None
    int8_top1_pct: float | None = None
    int8_stem_identical_pct: float | None = None
    int8_transposes: int | None = None
    int8_size_mb: float | None = None
    peers: dict[str, Any] = field(default_factory=dict)


def run(command: list[str], cwd: Path | None = None) -> Step:
    """Run ``command``; peak RSS from the kernel's accounting of that child alone."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=cwd)
        deadline = started + TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        err.seek(0)
        lines = [line for line in err.read().decode(errors="replace").splitlines()
                 if line.strip()]
    code = os.waitstatus_to_exitcode(status)
    return Step(code == 0, round(time.perf_counter() - started, 1),
                round(usage.ru_maxrss / 1024, 1), "" if code == 0 else (lines[-1] if lines
                                                                         else f"exit {code}"))


def edgecnn(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgecnn", *args]


def calibration_set(path: Path, side: int) -> Path:
    """Smooth random RGB images (blocks of 16 pixels): ImageNet data does not ship here, and
    white noise would calibrate ranges no real image reaches."""
    rng = np.random.default_rng(0)
    cells = -(-side // 16)
    blocks = rng.integers(0, 256, (CALIBRATION_IMAGES, cells, cells, 3), dtype=np.uint8)
    images = blocks.repeat(16, axis=1).repeat(16, axis=2)[:, :side, :side]
    np.savez(path, x=images, y=np.zeros(len(images), np.int64))
    return path


MEASURE = r'''
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1] + "/tests")
from pathlib import Path
from edgecnn.loading import load_torch_model
from edgecnn.runtimes import open_session, predict_all
from edgecnn.inspection import inspect_model
pt2, tflite, qdq, tflite_int8, calib = (Path(a) if a != "-" else None for a in sys.argv[2:7])
out = {}
def transposes(path):
    return sum(o["count"] for o in inspect_model(path).ops if o["op"] == "TRANSPOSE")
model = load_torch_model(pt2)
shape = (1, *model.card.input.shape)
out["parameters"] = model.card.parameters
if tflite is not None:
    x = np.random.default_rng(0).standard_normal((4, *shape[1:])).astype(np.float32)
    want = [np.concatenate(p) for p in zip(*(model.outputs(x[i:i + 1]) for i in range(4)))]
    got = predict_all(open_session(tflite, "litert"), x)
    out["fp32_rel_err"] = max(float(np.abs(g - w).max()) / max(float(np.abs(w).max()), 1e-30)
                              for g, w in zip(got, want))
    out["fp32_transposes"] = transposes(tflite)
if tflite_int8 is not None:
    from qdq_layers import int8_activations
    from edgecnn.runtimes import reference_session
    images = np.load(calib)["x"][:8].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    want = predict_all(reference_session(qdq), images)[0]
    got = predict_all(open_session(tflite_int8, "litert"), images)[0]
    q = inspect_model(tflite_int8).outputs[0].quantization
    scale = float(q.split(",")[0].split()[1]) if q else 1.0
    steps = np.abs(got - want) / scale
    out["int8_identical_pct"] = 100 * float((steps < 0.5).mean())
    out["int8_max_steps"] = float(steps.max())
    axis = 1
    out["int8_top1_pct"] = 100 * float((got.argmax(axis) == want.argmax(axis)).mean())
    layers = int8_activations(qdq, tflite_int8, images[:1])
    if layers:
        out["int8_stem_identical_pct"] = 100 * float((next(iter(layers.values())) == 0).mean())
    out["int8_transposes"] = transposes(tflite_int8)
print(json.dumps(out))
'''


def measure(row: Row, folder: Path, calib: Path) -> None:
    """Parity and op counts, in a child process (the PyTorch model is big)."""
    files = [folder / f"{row.model}.pt2", folder / f"{row.model}.tflite",
             folder / f"{row.model}_int8.onnx", folder / f"{row.model}_int8.tflite", calib]
    args = [str(p) if p.exists() else "-" for p in files]
    if row.int8 is None or not row.int8.ok:
        args[2] = args[3] = "-"
    if row.fp32 is None or not row.fp32.ok:
        args[1] = "-"
    done = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), *args], capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        print(f"  measuring {row.model} failed: {done.stderr.strip().splitlines()[-1:]}")
        return
    for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
        setattr(row, key, value)


def peer_onnx2tf(row: Row, folder: Path, calib: Path, python: str) -> None:
    onnx_file = folder / f"{row.model}.onnx"
    if not onnx_file.exists():
        row.peers["onnx2tf"] = {"fp32": {"ok": False, "error": "no fp32 ONNX from edgecnn"}}
        return
    out = folder / "onnx2tf"
    out.mkdir(exist_ok=True)
    done = subprocess.run([python, str(ROOT / "scripts" / "peer_onnx2tf.py"), "--onnx",
                           str(onnx_file), "--out", str(out), "--int8", "--calib", str(calib)],
                          capture_output=True, text=True, timeout=2 * TIMEOUT_S)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        row.peers["onnx2tf"] = {"fp32": {"ok": False, "error": done.stderr.strip()[-200:]}}
        return
    result = json.loads(lines[-1])
    fp32 = result.get("fp32") or {}
    if fp32.get("ok") and fp32.get("path"):  # parity of the peer's file against PyTorch
        check = subprocess.run(
            [sys.executable, "-c", MEASURE, str(ROOT), str(folder / f"{row.model}.pt2"),
             fp32["path"], "-", "-", str(calib)], capture_output=True, text=True,
            timeout=TIMEOUT_S)
        if check.returncode == 0:
            fp32["rel_err"] = json.loads(check.stdout.strip().splitlines()[-1])["fp32_rel_err"]
    row.peers["onnx2tf"] = result


def cover(name: str, work: Path, peer_python: str | None, int8: bool) -> Row:
    side = torchvision_zoo.MODELS[name][0]
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    calib = calibration_set(folder / "calib.npz", side)
    row = Row(name, f"1x3x{side}x{side}")
    pt2 = folder / f"{name}.pt2"
    row.export = run([sys.executable, "-c", "import sys, pathlib; sys.path.insert(0, sys.argv[1]);"
                      " import torchvision_zoo as z; z.export(sys.argv[2], pathlib.Path(sys.argv[3]))",
                      str(ROOT / "scripts"), name, str(folder)])
    if not row.export.ok:
        return row
    row.fp32 = run(edgecnn("convert", str(pt2), "--to", "tflite", "-o",
                           str(folder / f"{name}.tflite")))
    run(edgecnn("convert", str(pt2), "--to", "onnx", "-o", str(folder / f"{name}.onnx")))
    if int8:
        qdq = run(edgecnn("convert", str(pt2), "--to", "onnx", "--int8", "--calib", str(calib),
                          "-o", str(folder / f"{name}_int8.onnx")))
        row.int8 = qdq
        if qdq.ok:
            lowered = run(edgecnn("convert", str(folder / f"{name}_int8.onnx"), "--to", "tflite",
                                  "--int8", "-o", str(folder / f"{name}_int8.tflite")))
            row.int8 = Step(lowered.ok, round(qdq.seconds + lowered.seconds, 1),
                            max(qdq.peak_rss_mb, lowered.peak_rss_mb), lowered.error)
    for attr, suffix in (("fp32_size_mb", ".tflite"), ("int8_size_mb", "_int8.tflite")):
        path = folder / f"{name}{suffix}"
        if path.exists():
            setattr(row, attr, round(path.stat().st_size / 2**20, 2))
    measure(row, folder, calib)
    if peer_python:
        peer_onnx2tf(row, folder, calib, peer_python)
    return row


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    import onnxruntime
    import torch

    from edgecnn.cpu import cpu_class

    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_class": cpu_class(),
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1e}" if value and abs(value) < 1e-2 else f"{value:.{digits}f}"
    return str(value)


def markdown(rows: list[Row], host: dict[str, Any]) -> str:
    """docs/coverage.md: one table for edgecnn, one for the peers, and what the columns mean."""
    fp32_ok = sum(1 for r in rows if r.fp32 and r.fp32.ok and (r.fp32_rel_err or 0) <= 1e-4)
    int8_ok = sum(1 for r in rows if r.int8 and r.int8.ok)
    lines = [
        "# Coverage: torchvision CNNs through edgecnn and its peers", "",
        f"Measured {host['date']} on {host['cpu']} ({host['cores']} cores, {host['cpu_class']}), "
        f"Python {host['python']}, torch {host['torch']}, onnxruntime {host['onnxruntime']}. "
        "Random weights (seed 0), batch-1 `torch.export` archives, nothing downloaded. "
        "Command: `python scripts/coverage.py --peer-python .peers/onnx2tf/bin/python` "
        "(peers: `bash scripts/setup_peers.sh`).", "",
        f"**fp32: {fp32_ok} of {len(rows)}** convert with max |Δ| ≤ 1e-4 of the largest "
        f"PyTorch output. **int8: {int8_ok} of {len(rows)}** convert (QDQ ONNX and full-integer "
        "TFLite from one quantisation).", "",
        "| model | input | params | fp32 | rel. err | TRANSPOSE | s | peak MB | MB | int8 | "
        "stem identical % | identical % | max steps | top-1 % | s | peak MB | MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, q = r.fp32, r.int8
        lines.append("| " + " | ".join([
            r.model, r.input, f"{r.parameters / 1e6:.1f} M" if r.parameters else "–",
            ("yes" if f and f.ok else f"no: {f.error[:80]}" if f else "–"),
            _fmt(r.fp32_rel_err), _fmt(r.fp32_transposes), _fmt(f.seconds if f else None, 1),
            _fmt(f.peak_rss_mb if f else None, 0), _fmt(r.fp32_size_mb, 1),
            ("yes" if q and q.ok else f"no: {q.error[:80]}" if q else "–"),
            _fmt(r.int8_stem_identical_pct, 3), _fmt(r.int8_identical_pct, 1),
            _fmt(r.int8_max_steps, 0), _fmt(r.int8_top1_pct, 0),
            _fmt(q.seconds if q else None, 1), _fmt(q.peak_rss_mb if q else None, 0),
            _fmt(r.int8_size_mb, 1)]).replace("\n", " ") + " |")
    peer_rows = [r for r in rows if r.peers]
    if peer_rows:
        lines += ["", "## Peers on the same files", "",
                  "| model | tool | fp32 | rel. err | TRANSPOSE | s | peak MB | int8 | "
                  "TRANSPOSE | s | peak MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in peer_rows:
            for tool, result in r.peers.items():
                f, q = result.get("fp32") or {}, result.get("int8") or {}
                lines.append("| " + " | ".join([
                    r.model, result.get("tool", tool),
                    "yes" if f.get("ok") else f"no: {str(f.get('error', ''))[:80]}",
                    _fmt(f.get("rel_err")), _fmt(f.get("transposes")), _fmt(f.get("seconds"), 1),
                    _fmt(f.get("peak_rss_mb"), 0),
                    "yes" if q.get("ok") else f"no: {str(q.get('error', ''))[:80]}",
                    _fmt(q.get("transposes")), _fmt(q.get("seconds"), 1),
                    _fmt(q.get("peak_rss_mb"), 0)]).replace("\n", " ") + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(torchvision_zoo.MODELS),
                        choices=list(torchvision_zoo.MODELS), metavar="NAME")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--work", type=Path, help="keep the converted files here")
    parser.add_argument("--peer-python", help="python of the onnx2tf venv (scripts/setup_peers.sh)")
    parser.add_argument("--no-int8", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgecnn-coverage-"))
    rows = []
    for name in args.models:
        print(f"== {name}", flush=True)
        row = cover(name, work, args.peer_python, not args.no_int8)
        print("   " + json.dumps({k: v for k, v in asdict(row).items() if k != "peers"}),
              flush=True)
        rows.append(row)
        if args.work is None:
            shutil.rmtree(work / name, ignore_errors=True)
    host = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.json").write_text(json.dumps(
        {"machine": host, "models": [asdict(r) for r in rows]}, indent=1) + "\n")
    (args.out / "coverage.md").write_text(markdown(rows, host))
    print(f"wrote {args.out / 'coverage.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
