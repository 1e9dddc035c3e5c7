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
* peers (see scripts/setup_peers.sh): onnx2tf (``--peer-python``) on the same fp32 ONNX file,
  litert-torch (``--litert-torch-python``) on the same torchvision module.

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
    int8_layers_exact_inputs: int | None = None  # layers whose inputs matched exactly
    int8_layers: int | None = None
    int8_layerwise_identical_pct: float | None = None  # each layer fed TFLite's own inputs
    int8_layerwise_max_steps: int | None = None
    int8_layerwise_off_tie: int | None = None  # of those, differing where no tie was
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
    return torchvision_zoo.calibration_set(path, side, CALIBRATION_IMAGES)


MEASURE = r'''
import json, sys
import numpy as np
from pathlib import Path
from edgecnn.files.torch_files import load_torch_model
from edgecnn.runtimes.sessions import open_session, predict_all
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
    from edgecnn.checks.int8_self_check import compare_layers, pinned_identical_share
    from edgecnn.runtimes.sessions import reference_session
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
    layers = compare_layers(qdq, tflite_int8, images[:1])
    if len(layers) > 1:  # [0] is the quantised input, [1] the first layer
        out["int8_stem_identical_pct"] = 100 * (1 - layers[1].differing)
        out["int8_layers_exact_inputs"] = sum(d.inputs_identical for d in layers)
        out["int8_layers"] = len(layers)
        share = pinned_identical_share(layers)
        out["int8_layerwise_identical_pct"] = None if share is None else 100 * share
        out["int8_layerwise_max_steps"] = max((d.pinned_max_steps for d in layers
                                               if d.pinned_max_steps is not None), default=None)
        out["int8_layerwise_off_tie"] = sum(d.pinned_off_tie or 0 for d in layers)
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


def peer(row: Row, folder: Path, calib: Path, tool: str, python: str) -> None:
    """One peer on this model, in its own venv: onnx2tf on edgecnn's fp32 ONNX file (the same
    graph), litert-torch on the same torchvision module; fp32 parity against PyTorch here."""
    out = folder / tool
    out.mkdir(exist_ok=True)
    if tool == "onnx2tf":
        onnx_file = folder / f"{row.model}.onnx"
        if not onnx_file.exists():
            row.peers[tool] = {"fp32": {"ok": False, "error": "no fp32 ONNX from edgecnn"}}
            return
        command = [python, str(ROOT / "scripts" / "peer_onnx2tf.py"), "--onnx", str(onnx_file)]
    else:
        side = torchvision_zoo.MODELS[row.model][0]
        command = [python, str(ROOT / "scripts" / "peer_litert_torch.py"), "--model", row.model,
                   "--size", str(side)]
    done = subprocess.run([*command, "--out", str(out), "--int8", "--calib", str(calib)],
                          capture_output=True, text=True, timeout=2 * TIMEOUT_S)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        row.peers[tool] = {"fp32": {"ok": False, "error": done.stderr.strip()[-200:]}}
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
    row.peers[tool] = result


def cover(name: str, work: Path, peers: dict[str, str], int8: bool) -> Row:
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
    for tool, python in peers.items():
        peer(row, folder, calib, tool, python)
    return row


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    import onnxruntime
    import torch

    from edgecnn.runtimes.isa import cpu_class

    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_class": cpu_class(),
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "load_average": os.getloadavg()[0],
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
        "Command: `python scripts/coverage.py --peer-python .peers/onnx2tf/bin/python "
        "--litert-torch-python .peers/litert-torch/bin/python` "
        "(peers: `bash scripts/setup_peers.sh`).", "",
        f"**fp32: {fp32_ok} of {len(rows)}** convert with max |Δ| ≤ 1e-4 of the largest "
        f"PyTorch output. **int8: {int8_ok} of {len(rows)}** convert (QDQ ONNX and full-integer "
        "TFLite from one quantisation).", "",
        "| model | input | params | fp32 | rel. err | TRANSPOSE | s | peak MB | MB | int8 | "
        "layer-wise identical % | off-tie | output identical % | max steps | top-1 % | s | "
        "peak MB | MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, q = r.fp32, r.int8
        lines.append("| " + " | ".join([
            r.model, r.input, f"{r.parameters / 1e6:.1f} M" if r.parameters else "–",
            ("yes" if f and f.ok else f"no: {f.error[:80]}" if f else "–"),
            _fmt(r.fp32_rel_err), _fmt(r.fp32_transposes), _fmt(f.seconds if f else None, 1),
            _fmt(f.peak_rss_mb if f else None, 0), _fmt(r.fp32_size_mb, 1),
            ("yes" if q and q.ok else f"no: {q.error[:80]}" if q else "–"),
            _fmt(r.int8_layerwise_identical_pct, 3), _fmt(r.int8_layerwise_off_tie),
            _fmt(r.int8_identical_pct, 1),
            _fmt(r.int8_max_steps, 0), _fmt(r.int8_top1_pct, 0),
            _fmt(q.seconds if q else None, 1), _fmt(q.peak_rss_mb if q else None, 0),
            _fmt(r.int8_size_mb, 1)]).replace("\n", " ") + " |")
    lines += [
        "", "Columns: *rel. err* is max |TFLite − PyTorch| over the largest PyTorch output (4 "
        "random images, LiteRT). *TRANSPOSE* counts TRANSPOSE ops in the file (only channel "
        "shuffles need one). *s* and *peak MB* are the wall time and peak RSS of the conversion "
        "process (int8: both steps, QDQ ONNX then TFLite; the larger RSS). int8 is compared with "
        "the QDQ reference (onnxruntime, optimisations off) on one calibration-like image, "
        "layer by layer, and on 8 at the output. *layer-wise identical %* is the share of equal "
        "integers over every quantised activation when each reference layer is fed the integers "
        "LiteRT computed before it (`edgecnn.checks.int8_self_check`, pinned): what the lowering itself "
        "decides. *off-tie* counts the values among them that differ although the reference's "
        "real value was not on a rounding half (0 means: every difference is a tie that float "
        "error decided). *output identical %* and *max steps* are over the model's output end "
        "to end, *top-1 %* is argmax agreement.", "",
        "Why end-to-end identity falls with depth while layer-wise identity stays near 100 %: "
        "LiteRT (XNNPACK) sums a convolution exactly in int32 and the reference in float32, so "
        "a value within float error of a rounding half can land one step apart. That step is "
        "an input to the next layer, where it moves other values across halves; random-weight "
        "networks amplify it layer after layer, trained ones less. Fed the same inputs, every "
        "layer agrees on every value that is not on a half.",
        "", f"Timing note: load average {host['load_average']:.1f} on {host['cores']} cores when "
        "the table was written (other jobs ran beside it); compare times within this table only.",
    ]
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
    parser.add_argument("--litert-torch-python",
                        help="python of the litert-torch venv (scripts/setup_peers.sh)")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="replace only these models' rows in the existing coverage.json")
    parser.add_argument("--peers-only", action="store_true",
                        help="run only the peers, on the files an earlier --work run kept")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgecnn-coverage-"))
    rows = _existing(args.out) if (args.merge or args.peers_only) else []
    peers = {tool: python for tool, python in (("onnx2tf", args.peer_python),
                                               ("litert-torch", args.litert_torch_python))
             if python}
    for name in args.models:
        print(f"== {name}", flush=True)
        if args.peers_only:
            row = next(r for r in rows if r.model == name)
            for tool, python in peers.items():
                peer(row, work / name, work / name / "calib.npz", tool, python)
        else:
            row = cover(name, work, peers, not args.no_int8)
            earlier = next((r for r in rows if r.model == name), None)
            if earlier is not None:  # peers not run this time keep their earlier results
                row.peers = {**earlier.peers, **row.peers}
            rows = [r for r in rows if r.model != name] + [row]
        print("   " + json.dumps(asdict(row)), flush=True)
        if args.work is None:
            shutil.rmtree(work / name, ignore_errors=True)
        order = list(torchvision_zoo.MODELS)
        rows.sort(key=lambda r: order.index(r.model))
        write(rows, args.out)  # after every model: a long run stopped early still reports
    print(f"wrote {args.out / 'coverage.md'}")
    return 0


def _existing(out: Path) -> list[Row]:
    """The rows of an earlier run, to update in place."""
    path = out / "coverage.json"
    if not path.exists():
        return []
    rows = []
    for data in json.loads(path.read_text())["models"]:
        steps = {k: Step(**data[k]) if data.get(k) else None for k in ("export", "fp32", "int8")}
        rows.append(Row(**{**data, **steps}))
    return rows


NODE_SECTION = "<!-- onnx-node:start -->"


def write(rows: list[Row], out: Path) -> None:
    host = machine()
    out.mkdir(parents=True, exist_ok=True)
    # other scripts keep their parts of the file under their own keys (onnx_node, detectors)
    saved = out / "coverage.json"
    data = json.loads(saved.read_text()) if saved.exists() else {}
    data.update(machine=host, models=[asdict(r) for r in rows])
    saved.write_text(json.dumps(data, indent=1) + "\n")
    page = out / "coverage.md"
    # the models' part is everything above the ONNX node tests' section (onnx_node_coverage.py
    # fills that one between its markers): keep it when rewriting the rest
    kept = page.read_text() if page.exists() else ""
    start = kept.rfind("\n## ", 0, kept.find(NODE_SECTION)) + 1 if NODE_SECTION in kept else 0
    section = kept[start:] if start else ""
    page.write_text(markdown(rows, host).rstrip("\n") + ("\n\n" + section if section else "\n"))


if __name__ == "__main__":
    raise SystemExit(main())
