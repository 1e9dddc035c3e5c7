"""int8 LeNet-5 against its QDQ reference on every CPU class we can reach, for docs/parity.md.

Runs `edgecnn validate` natively, on an emulated AVX2-only x86 (qemu-x86_64-static -cpu Haswell)
and, for the TFLite file, on an emulated aarch64 (.arm/python from setup_arm_emulation.sh, where
only tflite-runtime runs: LiteRT and onnxruntime crash under qemu 7.2 user mode). The QDQ
reference is computed natively: it is the same on every CPU (tests/test_int8_portable.py).

    python scripts/int8_parity_by_cpu.py [--images 10000] [--out out/int8-by-cpu]

Rewrites the section between the int8-by-cpu markers of docs/parity.md and docs/int8-by-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecnn.report import fill_section

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- int8-by-cpu:start -->", "<!-- int8-by-cpu:end -->"
COLUMNS = ["artefact", "runtime", "agree %", "identical vs QDQ %", "steps vs QDQ", "top1 %"]


def edgecnn(*args: str, cpu: str | None = None) -> None:
    """``python -m edgecnn ARGS``, on an emulated ``cpu`` when given."""
    prefix = ["qemu-x86_64-static", "-cpu", cpu] if cpu else []
    subprocess.run([*prefix, sys.executable, "-m", "edgecnn", *args],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def artefacts(out: Path) -> list[Path]:
    lenet = ROOT / "models" / "lenet5.pt"
    u8, s8, tfl = out / "lenet5_int8.onnx", out / "lenet5_int8_s8.onnx", out / "lenet5_int8.tflite"
    edgecnn("convert", str(lenet), "--to", "onnx", "--int8", "-o", str(u8))
    edgecnn("convert", str(u8), "--to", "onnx", "--int8", "--onnx-int8-encoding", "int8",
            "-o", str(s8))
    edgecnn("convert", str(u8), "--to", "tflite", "--int8", "-o", str(tfl))
    return [u8, s8, tfl]


def validate_rows(models: list[Path], images: int, out: Path, cpu: str | None) -> dict:
    report = out / f"validate-{cpu or 'native'}.json"
    edgecnn("validate", *map(str, models), "--limit", str(images), "--json", str(report), cpu=cpu)
    return json.loads(report.read_text())


def arm_rows(tflite: Path, onnx_u8: Path, images: int) -> list[dict]:
    from edgecnn.files.data import SHIPPED_TEST_SET, load_dataset
    from edgecnn.files.model_files import card_or_default
    from edgecnn.runtimes.sessions import predict, reference_session

    arm_python = ROOT / ".arm" / "python"
    if not arm_python.exists():
        return []
    data = load_dataset(SHIPPED_TEST_SET, split="test").take(images)
    x = card_or_default(tflite).input.preprocess(data.images)
    want = predict(reference_session(onnx_u8), x)
    from edgecnn.converters import qdq
    from edgecnn.files.model_files import load_onnx
    step = qdq.output_steps(load_onnx(onnx_u8))[0]
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        subprocess.run([str(arm_python), str(ROOT / "targets" / "runner.py"), str(tflite),
                        "--runtime", "tflite-runtime", "--predict", f"{tmp}/x.npy", f"{tmp}/y.npy"],
                       check=True, stdout=subprocess.DEVNULL, timeout=3600)
        got = np.load(Path(tmp) / "y.npy")
    steps = np.rint(np.abs(got - want) / step)
    return [{"artefact": tflite.name, "runtime": "tflite-runtime",
             "agreement_pct": 100 * float((got.argmax(1) == want.argmax(1)).mean()),
             "qdq_identical_pct": 100 * float((steps == 0).all(1).mean()),
             "qdq_max_steps": float(steps.max()),
             "top1_pct": 100 * float((got.argmax(1) == data.labels).mean())}]


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| {r['artefact']} | {r['runtime']} | {r['agreement_pct']:.2f} | "
                     f"{r['qdq_identical_pct']:.2f} | {r['qdq_max_steps']:.0f} | "
                     f"{r['top1_pct']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "int8-by-cpu")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from edgecnn.runtimes.isa import cpu_class

    models = artefacts(args.out)
    sections, record = [], {}
    for cpu in (None, "Haswell"):
        started = time.perf_counter()
        report = validate_rows(models, args.images, args.out, cpu)
        name = report["cpu"] + (" (qemu-x86_64-static -cpu Haswell)" if cpu else " (this machine)")
        rows = [r for r in report["rows"] if r["qdq_max_steps"] is not None]
        record[name] = rows
        sections.append(f"**{name}**, {report['images']:,} images, "
                        f"{time.perf_counter() - started:.0f} s:\n\n{table(rows)}")
    arm = arm_rows(models[2], models[0], args.images)
    if arm:
        name = "aarch64 (qemu-aarch64-static, Debian python3.11, tflite-runtime 2.14)"
        record[name] = arm
        sections.append(f"**{name}**, {args.images:,} images:\n\n{table(arm)}")
    doc = ROOT / "docs" / "parity.md"
    text = doc.read_text()
    body = (f"Measured with `python scripts/int8_parity_by_cpu.py` on a host whose CPU is "
            f"{cpu_class()}.\n\n" + "\n\n".join(sections))
    doc.write_text(fill_section(text, START, END, body))
    (ROOT / "docs" / "int8-by-cpu.json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n\n".join(sections))


if __name__ == "__main__":
    main()
