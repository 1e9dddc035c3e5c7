"""Whether each integer-only target takes our int8 TFLite files, and what it makes of them:
Arm's Vela (Ethos-U55-128 and U85-256: NPU share, ops left on the CPU, estimated time) and
TFLite Micro (arena, steps from LiteRT's reference kernels), for the default ``--for cpu`` file and the
integer-only ``--for npu`` file of each model, and what each costs on LiteRT's XNNPACK against
the fp32 file (one thread, interleaved in one process, process CPU time).

    python scripts/int8_targets.py                      # the torchvision mobile set + the zoo
    python scripts/int8_targets.py --models mobilenet_v3_small lenet5
    python scripts/int8_targets.py --out docs/int8-targets   # fills its measured section
    python scripts/int8_targets.py --peer .peers/litert-torch/bin/python --out docs/int8-targets

Both files come from one quantisation (the same QDQ ONNX, so the same calibration). torchvision
models carry seeded random weights and are calibrated on smooth random images (nothing
downloads here); what a compiler accepts does not depend on the weights. Runs bench's own code
(edgecnn.targets.ethos_u, edgecnn.targets.mcu), one subprocess of Vela per compile.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from edgecnn.report import fill_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

MOBILE_SET = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
              "squeezenet1_1", "resnet18", "shufflenet_v2_x1_0", "mnasnet1_0")
SHIPPED = ("lenet5", "mobile_se_outlier")
NPUS = ("ethos-u55-128", "ethos-u85-256")
START, END = "<!-- targets:start -->", "<!-- targets:end -->"


def build(name: str, folder: Path) -> tuple[dict[str, Path], Path | None]:
    """The fp32 TFLite file, the QDQ ONNX and both int8 TFLite files written from it."""
    from bench_onnx_int8 import source_and_calibration

    from edgecnn.api import ConvertConfig, convert

    source, calib = source_and_calibration(name, folder)
    qdq = convert(source, folder / f"{name}_int8.onnx",
                  ConvertConfig("onnx", int8=True, calib=calib)).path
    files = {"fp32": convert(source, folder / f"{name}_fp32.tflite", ConvertConfig("tflite")).path}
    for target in ("cpu", "npu"):
        try:
            files[target] = convert(qdq, folder / f"{name}_{target}.tflite",
                                    ConvertConfig("tflite", int8=True, calib=calib,
                                                  int8_for=target)).path
        except Exception as exc:  # a refusal is a result: the op that has no integer form
            print(f"{name} --for {target}: {exc}", file=sys.stderr)
    return files, calib


def peer_int8(python: Path, name: str, calib: Path, folder: Path) -> Path | None:
    """litert-torch's PT2E int8 file of the same network and calibration images, converted by
    scripts/peer_litert_torch.py in the peer's own venv (scripts/setup_peers.sh); None, said
    on stderr, when it fails."""
    import subprocess

    target, timing = folder / f"{name}_litert_torch.tflite", folder / "peer_timing.json"
    done = subprocess.run([str(python), str(ROOT / "scripts" / "peer_litert_torch.py"), "--child",
                           "--model", name, "--size", "224", "--out", str(folder), "--variant",
                           "int8", "--calib", str(calib), "--target", str(target), "--timing",
                           str(timing)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0 or not target.is_file():
        print(f"{name}: litert-torch failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return target


def vela_cells(path: Path) -> dict[str, object]:
    from edgecnn.targets.ethos_u import compile_with_vela

    cells: dict[str, object] = {}
    for accel in NPUS:
        short = accel.removeprefix("ethos-").upper()
        result = compile_with_vela(path, accel)
        if result.refusal is not None:
            cells[f"{short} NPU %"] = "refused"
            cells[f"{short} note"] = result.refusal
            if short.startswith("U55"):
                legacy = compile_with_vela(path, accel, legacy=True)
                if legacy.refusal is None:
                    cells[f"{short} NPU %"] = f"refused ({legacy.npu_share:.1f} legacy core)"
            continue
        cells[f"{short} NPU %"] = round(result.npu_share, 1)
        cells[f"{short} est. µs"] = round(1e6 * result.summary.get("inference_time", 0.0), 1)
        if result.cpu_op_names:
            cells[f"{short} note"] = "CPU: " + ", ".join(
                f"{op} x{n}" for op, n in result.cpu_op_names.most_common())
    return cells


def micro_cells(path: Path, calib: Path | None) -> dict[str, object]:
    from edgecnn.targets.base import BenchConfig
    from edgecnn.targets.mcu import MCUTarget

    target = MCUTarget(data=calib, images=16)
    try:
        row = target.run(path, BenchConfig(warmup=0, runs=1, min_time=0.0))[0].columns
    except Exception as exc:
        return {"TFLM": f"fails: {str(exc)[:120]}"}
    return {"TFLM arena KiB": row["arena KiB"],
            "TFLM steps vs LiteRT ref": row["steps vs LiteRT ref"],
            "TFLM agree %": row["agree %"]}


def litert_ratios(files: dict[str, Path], rounds: int = 30) -> dict[str, dict[str, object]]:
    """LiteRT (XNNPACK, one thread) latency of each int8 file against the fp32 one, the files
    interleaved round by round in this process, process CPU time, ratio of medians."""
    import time

    import numpy as np

    from edgecnn.runtimes.sessions import open_session
    from edgecnn.targets.cpu import model_input

    x = model_input(files["fp32"], 1)
    sessions = {key: open_session(path, "litert", 1) for key, path in files.items()}
    times: dict[str, list[float]] = {key: [] for key in sessions}
    for session in sessions.values():
        session.bind(x)
        for _ in range(3):
            session.invoke()
    for _ in range(rounds):
        for key, session in sessions.items():
            started = time.process_time()
            session.invoke()
            times[key].append(time.process_time() - started)
    median = {key: float(np.median(v)) for key, v in times.items()}
    return {key: {"LiteRT ms": round(1e3 * median[key], 3),
                  "LiteRT / fp32": round(median[key] / median["fp32"], 3)}
            for key in sessions if key != "fp32"}


def markdown(rows: list[dict[str, object]]) -> str:
    from edgecnn.report import markdown_table

    columns = ["model", "file", "U55-128 NPU %", "U55-128 est. µs", "U85-256 NPU %",
               "U85-256 est. µs", "TFLM arena KiB", "TFLM steps vs LiteRT ref", "TFLM agree %",
               "LiteRT ms", "LiteRT / fp32"]
    table = markdown_table([{c: r.get(c, "") for c in columns} for r in rows], columns)
    notes = [f"- {r['model']} ({r['file']}): {r[key]}" for r in rows
             for key in ("U55-128 note", "U85-256 note") if key in r]
    return table + ("\n" + "\n".join(dict.fromkeys(notes)) + "\n" if notes else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*MOBILE_SET, *SHIPPED])
    parser.add_argument("--out", type=Path, help="Write OUT.json and fill OUT.md's section.")
    parser.add_argument("--peer", type=Path, metavar="PYTHON",
                        help="litert-torch's venv python (.peers/litert-torch/bin/python): its "
                        "int8 file of each torchvision model joins the run")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"edgecnn-targets-{name}-") as tmp:
            files, calib = build(name, Path(tmp))
            if args.peer is not None and calib is not None:  # torchvision models only
                peer = peer_int8(args.peer, name, calib, Path(tmp))
                if peer is not None:
                    files["litert-torch"] = peer
            speed = litert_ratios(files)
            for target, path in files.items():
                if target == "fp32":
                    continue
                label = "litert-torch PT2E" if target == "litert-torch" else f"--for {target}"
                row = {"model": name, "file": label, **vela_cells(path),
                       **micro_cells(path, calib), **speed[target]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(markdown(rows))
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
        page = args.out.with_suffix(".md")
        page.write_text(fill_section(page.read_text() if page.exists() else "", START, END,
                                     markdown(rows)))


if __name__ == "__main__":
    main()
