"""The long tail: timm architectures (random weights) through edgecnn's fp32 TFLite conversion,
each in its own process, with the reason for every failure and the TRANSPOSE count.

    pip install -c constraints.txt timm       # into the project venv (not a dependency)
    python scripts/timm_coverage.py           # ~35 models, 20-40 min on 2 cores
    python scripts/timm_coverage.py --models mobilevit_xs ecaresnet26t --docs

Each model is built with random weights (BatchNorm statistics and affine parameters
re-randomised, so no branch is left at identity: MACHINE.md), exported with ``torch.export`` at
batch 1 and the size given below, and converted with ``edgecnn convert X.pt2 --to tflite`` as a
user would; edgecnn's own self-check compares the file with the exported model. A conversion
that succeeds is checked again here: max |TFLite - PyTorch| on 2 random images, relative to
the largest output. ``--docs`` fills the timm section of docs/coverage.md: with ``--models``,
only those models' rows are replaced and the others kept.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

# name -> input side; mobile and efficient CNNs, attention and hybrid ones
MODELS: dict[str, int] = {
    "mobilenetv3_small_100": 128, "mobilenetv3_large_100": 128, "mobilenetv2_100": 128,
    "mobilenetv4_conv_small": 128, "efficientnet_b0": 128, "efficientnet_lite0": 128,
    "tf_efficientnetv2_b0": 128, "mnasnet_100": 128, "fbnetc_100": 128, "ghostnet_100": 128,
    "lcnet_050": 128, "hardcorenas_a": 128, "tinynet_e": 128, "mixnet_s": 128,
    "rexnet_100": 128, "regnetx_002": 128, "regnety_002": 128, "resnet18": 128,
    "resnet18d": 128, "seresnext26d_32x4d": 128, "ecaresnet26t": 128, "resnest14d": 128,
    "dla34": 128, "densenet121": 128, "dpn68": 128, "cspresnet50": 128, "darknet17": 128,
    "repvgg_a0": 128, "vgg11_bn": 128, "convnext_atto": 128, "edgenext_xx_small": 128,
    "mobilevit_xxs": 128, "mobilevitv2_050": 128, "efficientformer_l1": 224,
    "levit_128s": 224, "poolformer_s12": 128, "deit_tiny_patch16_224": 224,
    "coat_lite_tiny": 224, "fastvit_t8": 128,
}
TIMEOUT_S = 900


@dataclass
class Result:
    model: str
    side: int
    status: str  # converted, refused, export failed, build failed, error
    seconds: float = 0.0
    transposes: int | None = None
    max_rel_err: float | None = None
    reason: str = ""


def _child(name: str, side: int, folder: Path) -> dict[str, object]:
    """Build, export and convert one model (run in a fresh process)."""
    import numpy as np
    import torch
    import torchvision_zoo

    torchvision_zoo.models()  # timm imports torchvision: register it without its CUDA kernels
    import timm

    torch.manual_seed(0)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=100).eval()
    except Exception as exc:  # noqa: BLE001 - a report, not a library
        return {"status": "build failed", "reason": str(exc).splitlines()[0][:200]}
    torchvision_zoo.rerandomise_batchnorm(model)  # BatchNorm at identity leaves branches dead
    example = torch.rand(1, 3, side, side)
    try:
        program = torch.export.export(model, (example,))
    except Exception as exc:  # noqa: BLE001
        return {"status": "export failed", "reason": str(exc).splitlines()[0][:200]}
    path = folder / f"{name}.pt2"
    torch.export.save(program, path)
    out = folder / f"{name}.tflite"
    done = subprocess.run([sys.executable, "-m", "edgecnn", "convert", str(path), "--to",
                           "tflite", "-o", str(out)], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    if done.returncode != 0:
        line = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        return {"status": "refused" if done.returncode == 2 else "error",
                "reason": line.removeprefix("edgecnn: error: ")[:300]}
    from edgecnn.api import inspect
    from edgecnn.runtimes.sessions import open_session, predict

    ops = {row["op"]: row["count"] for row in inspect(out).ops}
    x = np.random.default_rng(1).random((2, 3, side, side), dtype=np.float32)
    with torch.no_grad():
        want = torch.cat([program.module()(torch.from_numpy(x[i:i + 1]))
                          for i in range(2)]).numpy()
    got = np.concatenate([predict(open_session(out, "litert"), x[i:i + 1]) for i in range(2)])
    error = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    return {"status": "converted", "transposes": ops.get("TRANSPOSE", 0),
            "max_rel_err": error}


def run(name: str, side: int) -> Result:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="timm-") as tmp:
        code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'scripts')!r}); "
                "import timm_coverage as t; from pathlib import Path; "
                f"print('RESULT' + json.dumps(t._child({name!r}, {side}, Path({tmp!r}))))")
        try:
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  timeout=TIMEOUT_S, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return Result(name, side, "error", TIMEOUT_S, reason=f"over {TIMEOUT_S} s")
    seconds = time.perf_counter() - started
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Result(name, side, "error", seconds, reason=tail[:300])
    return Result(name, side, seconds=seconds, **json.loads(line[len("RESULT"):]))


def _row(r: Result) -> str:
    err = f"{r.max_rel_err:.1e}" if r.max_rel_err is not None else ""
    transposes = "" if r.transposes is None else str(r.transposes)
    reason = r.reason.replace("|", "/")
    return (f"| {r.model} | {r.side} | {r.status} | {transposes} | {err} | {r.seconds:.0f} | "
            f"{reason} |")


def markdown(results: list[Result], seconds: float, kept: dict[str, str] | None = None) -> str:
    """The table; ``kept`` (model -> row) are the rows of models not run this time, left as
    they were (a run of a few models refreshes only their rows; the minutes stay the full
    run's)."""
    rows = {**{m: row for m, row in (kept or {}).items() if m},
            **{r.model: _row(r) for r in results}}
    order = [m for m in MODELS if m in rows] + [m for m in rows if m not in MODELS]
    converted = sum(rows[m].split("|")[3].strip() == "converted" for m in order)
    minutes = f"{seconds / 60:.0f} min"
    if kept and "min on the" in kept.get("", ""):
        minutes = kept[""].split(" on the 2-core")[0].rsplit("; ", 1)[-1]
    lines = [f"`python scripts/timm_coverage.py` (timm random weights, BatchNorm re-randomised, "
             f"batch 1, fp32 TFLite on LiteRT): **{converted} of {len(order)} convert**, "
             f"each through edgecnn's self-check; {minutes} on the 2-core x86 "
             "machine.", "",
             "| model | input | status | TRANSPOSE | max rel err | s | reason |",
             "|---|---:|---|---:|---:|---:|---|", *[rows[m] for m in order]]
    return "\n".join(lines)


def _documented_rows(page: str) -> dict[str, str]:
    """The timm section's rows by model, and its first line under the key ""."""
    section = page.partition("<!-- timm:start -->")[2].partition("<!-- timm:end -->")[0]
    lines = section.strip().splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines
            if line.startswith("| ") and not line.startswith("| model")}
    return {"": lines[0] if lines else "", **rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--docs", action="store_true", help="fill docs/coverage.md")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    started = time.perf_counter()
    results = []
    for name in options.models:
        result = run(name, MODELS.get(name, 128))
        print(f"{name:28} {result.status:14} {result.transposes or '':>4} "
              f"{result.max_rel_err or '':>10} {result.reason[:90]}", flush=True)
        results.append(result)
    seconds = time.perf_counter() - started
    print(markdown(results, seconds))
    if options.json:
        options.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    if options.docs:
        from edgecnn.report import fill_section

        page = ROOT / "docs" / "coverage.md"
        kept = None if set(options.models) >= set(MODELS) else _documented_rows(page.read_text())
        text = markdown(results, seconds, kept)
        page.write_text(fill_section(page.read_text(), "<!-- timm:start -->",
                                     "<!-- timm:end -->", text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
