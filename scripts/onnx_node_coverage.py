"""How edgecnn's fp32 TFLite lowering fares on the ONNX backend node tests of CNN ops.

The onnx wheel carries each node test as Python (``onnx.backend.test.case.node``): a one-node
model and the inputs and outputs the ONNX reference computes. Every case of a CNN op whose
graph takes one 4-D float image (its other inputs are made initializers, the values the test
feeds) is converted by ``edgecnn.api.convert`` as a user's file would be, run on LiteRT at the
batch the test feeds, and compared with the test's own expected output. Each case is:

* **pass**: converted and within 1e-4 of the expected output (relative to its magnitude);
* **refused**: edgecnn said in one line why not (the reason is listed);
* **failed check**: converted, but edgecnn's own self-check against onnxruntime refused it;
* **silently wrong**: converted and checked, yet the output differs: a bug to fix first.

    python scripts/onnx_node_coverage.py                    # per-op table on stdout
    python scripts/onnx_node_coverage.py --ops LRN Expand   # a few op types
    python scripts/onnx_node_coverage.py --out docs/coverage.md   # fills its section (issue 22)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgecnn.report import fill_section

CNN_OPS = ("Conv", "ConvTranspose", "AveragePool", "MaxPool", "GlobalAveragePool",
           "GlobalMaxPool", "LpPool", "Resize", "Upsample", "BatchNormalization",
           "InstanceNormalization", "GroupNormalization", "LRN", "DepthToSpace", "SpaceToDepth",
           "Flatten", "Squeeze", "Unsqueeze", "Expand", "Pad", "Relu", "LeakyRelu", "PRelu",
           "Sigmoid", "HardSigmoid", "HardSwish", "Softmax", "Concat", "Add", "Mul", "Sub", "Div",
           "Clip", "Tanh", "Transpose", "Reshape")
START, END = "<!-- onnx-node:start -->", "<!-- onnx-node:end -->"
TOLERANCE = 1e-4  # of max(1, |expected|), as the converter's own self-check
HEADING = """## ONNX backend node tests of CNN ops (fp32 TFLite)

The node tests the onnx wheel defines (`onnx.backend.test.case.node`) for CNN ops, each case
whose graph takes one 4-D float image (its other inputs made initializers), converted by
`edgecnn.api.convert` as a user's file is, run on LiteRT at the test's own batch and compared
with the test's expected output (1e-4 of its magnitude). *refused*: edgecnn said why in one
line; *failed check*: edgecnn's self-check against onnxruntime refused the file; *silently
wrong*: converted, checked, and still off. `python scripts/onnx_node_coverage.py --out
docs/coverage.md` refreshes the table (issue 22). One test's expected values are rounded to
four decimals (test_averagepool_2d_ceil_last_window_starts_on_pad, 5.6e-5 off); the file
matches onnxruntime and ONNX's reference there to 1e-7.

"""


@dataclass(frozen=True)
class Case:
    name: str
    op: str
    model: onnx.ModelProto
    image: np.ndarray
    expected: list[np.ndarray]


@dataclass(frozen=True)
class Outcome:
    name: str
    op: str
    status: str  # pass | refused | failed check | silently wrong | error
    detail: str = ""


def image_model(model: onnx.ModelProto, inputs: list[np.ndarray]) -> tuple[onnx.ModelProto,
                                                                           np.ndarray] | None:
    """The case's model with every input but its one 4-D float image made an initializer, or
    None when it has no such single image input (not a CNN layer's form)."""
    graph = model.graph
    images = [i for i, (value, data) in enumerate(zip(graph.input, inputs, strict=False))
              if np.asarray(data).ndim == 4 and np.asarray(data).dtype == np.float32
              and value.type.HasField("tensor_type")]
    if not images or any(np.asarray(d).dtype == object for d in inputs):
        return None
    keep = images[0]
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    constants = [numpy_helper.from_array(np.asarray(data), graph.input[i].name)
                 for i, data in enumerate(inputs) if i != keep]
    kept = graph.input[keep]
    del graph.input[:]
    graph.input.append(kept)
    graph.initializer.extend(constants)
    if any(o.type.tensor_type.elem_type != onnx.TensorProto.FLOAT for o in graph.output):
        return None
    return model, np.asarray(inputs[keep])


def cases(ops: tuple[str, ...]) -> list[Case]:
    """The node test cases of ``ops`` that take one 4-D float image."""
    from onnx.backend.test.case.node import collect_testcases

    found = []
    for case in collect_testcases():  # once: the case modules register on first import
        if case.model is None or not case.data_sets or case.kind != "node":
            continue
        op = case.model.graph.node[0].op_type if len(case.model.graph.node) == 1 else None
        if op not in ops:
            continue  # another op, or an expanded function test
        inputs, outputs = case.data_sets[0]
        made = image_model(case.model, list(inputs))
        if made is not None:
            found.append(Case(case.name, op, made[0], made[1], [np.asarray(o) for o in outputs]))
    return found


def run_tflite(path: Path, image: np.ndarray) -> list[np.ndarray]:
    """LiteRT's outputs for the NCHW ``image`` (fed NHWC, as the file takes it) at the test's
    own batch, back in ONNX (NCHW) order."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    detail = interpreter.get_input_details()[0]
    nhwc = image.transpose(0, 2, 3, 1)
    interpreter.resize_tensor_input(detail["index"], list(nhwc.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], np.ascontiguousarray(nhwc))
    interpreter.invoke()
    outputs = []
    for out in interpreter.get_output_details():
        value = interpreter.get_tensor(out["index"])
        outputs.append(value.transpose(0, 3, 1, 2) if value.ndim == 4 else value)
    return outputs


def classify(case: Case, folder: Path) -> Outcome:
    """Convert, run and compare one case."""
    from edgecnn.api import ConvertConfig, convert
    from edgecnn.errors import ConversionError, EdgecnnError

    source, target = folder / f"{case.name}.onnx", folder / f"{case.name}.tflite"
    onnx.save(case.model, str(source))
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            convert(source, target, ConvertConfig("tflite"))
    except ConversionError as exc:
        text = str(exc).replace(str(source), case.name)
        if "differs from ONNX" in text or "do not match ONNX" in text:
            return Outcome(case.name, case.op, "failed check", text)
        return Outcome(case.name, case.op, "refused", text)
    except EdgecnnError as exc:
        text = str(exc).replace(str(source), case.name)
        if "takes batches of exactly" in text:  # the self-check's batch, not the lowering
            return Outcome(case.name, case.op, "refused", self_check_batch(case, folder, text))
        return Outcome(case.name, case.op, "refused", text)
    except Exception as exc:  # a crash is a finding too
        return Outcome(case.name, case.op, "error", f"{type(exc).__name__}: {exc}")
    try:
        got = run_tflite(target, case.image)
    except Exception as exc:  # LiteRT refusing the file at the test's batch
        return Outcome(case.name, case.op, "silently wrong", f"LiteRT: {exc}".splitlines()[0])
    return compare(case, got)


def self_check_batch(case: Case, folder: Path, text: str) -> str:
    """Why a file with a fixed batch of 3 or 5 is refused: edgecnn's self-check feeds 16 (or
    40) images, which its batch-N onnxruntime reference cannot split. What the lowering alone
    writes (clean-up, convert_onnx_to_tflite, run at the test's batch) is measured too."""
    from edgecnn.converters import onnx_passes
    from edgecnn.converters.onnx_to_tflite import convert_onnx_to_tflite

    reason = "self-check: " + text.split(": ", 1)[-1]
    model = onnx.ModelProto.FromString(case.model.SerializeToString())
    onnx_passes.clean(model)  # as edgecnn.api does before lowering
    try:
        path = folder / f"{case.name}.direct.tflite"
        path.write_bytes(convert_onnx_to_tflite(model, case.name).data)
        direct = compare(case, run_tflite(path, case.image))
    except Exception as exc:  # the lowering's own refusal
        return f"{reason}; the lowering alone: {exc}"
    diff = "matches" if direct.status == "pass" else direct.detail
    return f"{reason}; the lowering alone {diff} the expected output"


def compare(case: Case, got: list[np.ndarray]) -> Outcome:
    for want, have in zip(case.expected, got, strict=False):
        if want.shape != have.shape:
            return Outcome(case.name, case.op, "silently wrong",
                           f"shape {list(have.shape)}, expected {list(want.shape)}")
        diff = float(np.max(np.abs(have - want))) if want.size else 0.0
        scale = max(1.0, float(np.max(np.abs(want))) if want.size else 0.0)
        if not diff <= TOLERANCE * scale:
            return Outcome(case.name, case.op, "silently wrong", f"max|Δ| {diff:.3g}")
    return Outcome(case.name, case.op, "pass")


STATUSES = ("pass", "refused", "failed check", "silently wrong", "error")


def markdown(outcomes: list[Outcome]) -> str:
    """A per-op table, the totals, and every case that does not pass with its reason."""
    by_op: dict[str, Counter[str]] = {}
    for o in outcomes:
        by_op.setdefault(o.op, Counter())[o.status] += 1
    lines = ["| op | cases | " + " | ".join(STATUSES) + " |",
             "|---|---:|" + "---:|" * len(STATUSES)]
    for op, counts in by_op.items():
        lines.append(f"| {op} | {sum(counts.values())} | "
                     + " | ".join(str(counts[s]) for s in STATUSES) + " |")
    total = Counter(o.status for o in outcomes)
    share = 100 * total["pass"] / max(len(outcomes), 1)
    lines.append(f"| **all** | {len(outcomes)} | "
                 + " | ".join(str(total[s]) for s in STATUSES) + " |")
    lines += ["", f"{total['pass']} of {len(outcomes)} cases pass ({share:.0f} %), "
              f"{total['silently wrong']} silently wrong.", ""]
    left = [o for o in outcomes if o.status != "pass"]
    if left:
        lines += ["| case | outcome | reason |", "|---|---|---|"]
        lines += [f"| {o.name} | {o.status} | {short(o.detail)} |" for o in left]
    return "\n".join(lines)


def short(text: str, limit: int = 200) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    text = text.split("; supported:")[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def main(argv: list[str] | None = None) -> list[Outcome]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="*", default=list(CNN_OPS))
    parser.add_argument("--case", nargs="*", default=None, help="only these case names")
    parser.add_argument("--out", type=Path, help="docs page whose section to fill")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    args = parser.parse_args(argv)
    selected = cases(tuple(args.ops))
    if args.case:
        selected = [c for c in selected if c.name in args.case]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="onnx-node-") as tmp:
        for case in selected:
            outcome = classify(case, Path(tmp))
            outcomes.append(outcome)
            print(f"{outcome.status:15} {outcome.name} {short(outcome.detail, 160)}",
                  file=sys.stderr, flush=True)
    table = markdown(outcomes)
    print(table)
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    if args.out:
        page = args.out.read_text() if args.out.exists() else ""
        if START not in page:
            page = page.rstrip("\n") + "\n\n" + HEADING
        args.out.write_text(fill_section(page, START, END, table))
    return outcomes


def as_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    return [o.__dict__ for o in outcomes]


if __name__ == "__main__":
    main()
