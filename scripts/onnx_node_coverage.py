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

With ``--onnx2tf-python`` the same case files go through onnx2tf (a peer, in its own venv:
``scripts/setup_peers.sh onnx2tf``) in the same run; its fp32 TFLite runs on the same LiteRT
and is held to the same tolerance: **pass**, **refused** (onnx2tf exits with an error or writes
no file), **LiteRT fails** (writes a file LiteRT cannot run: a custom op, say) or **silently
wrong** (writes a file that runs and whose output differs).
onnx2tf makes 4-D inputs and outputs NHWC (3-D NWC, 5-D NDHWC): the image is fed in whichever
layout the file declares, and an output is read back in the layout its shape shows (where both
layouts fit the shape, the closer reading counts, to onnx2tf's benefit).

    python scripts/onnx_node_coverage.py                    # per-op table on stdout
    python scripts/onnx_node_coverage.py --ops LRN Expand   # a few op types
    python scripts/onnx_node_coverage.py --out docs/coverage.md   # fills its section (issue 22)
    python scripts/onnx_node_coverage.py --onnx2tf-python .peers/onnx2tf/bin/python \
        --out docs/coverage.md                              # beside onnx2tf, same run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
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
SCRIPTS = Path(__file__).resolve().parent
JSON_KEY = "onnx_node"  # this run's part of docs/coverage.json
TOLERANCE = 1e-4  # of max(1, |expected|), as the converter's own self-check
HEADING = """## ONNX backend node tests of CNN ops (fp32 TFLite)

The node tests the onnx wheel defines (`onnx.backend.test.case.node`) for CNN ops, each case
whose graph takes one 4-D float image (its other inputs made initializers), converted by
`edgecnn.api.convert` as a user's file is, run on LiteRT at the test's own batch and compared
with the test's expected output (1e-4 of its magnitude). *refused*: edgecnn said why in one
line; *failed check*: edgecnn's self-check against onnxruntime refused the file; *silently
wrong*: converted, checked, and still off. One test's expected values are rounded to
four decimals (test_averagepool_2d_ceil_last_window_starts_on_pad, 5.6e-5 off); the file
matches onnxruntime and ONNX's reference there to 1e-7.

onnx2tf 2.6.9 (default `flatbuffer_direct` backend, its own venv) ran on the same case files in
the same run, its fp32 file on the same LiteRT (ai-edge-litert 2.3.0) against the same expected
outputs and the same tolerance: *refused* (exits with an error), *LiteRT fails* (writes a file
LiteRT cannot run: an unresolved ONNX_* custom op), *silently wrong* (the file runs and its
output differs, or has the wrong shape). onnx2tf's file takes and gives channels-last tensors;
they are fed and read back in that layout (where both layouts fit an output's shape the closer
reading counts, to onnx2tf's benefit; no pass needed it). `python scripts/onnx_node_coverage.py --onnx2tf-python .peers/onnx2tf/bin/python
--out docs/coverage.md` (per-case results in docs/coverage.json, key `onnx_node`).

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


PEER_STATUSES = ("pass", "refused", "LiteRT fails", "silently wrong")


def run_onnx2tf(python: str, selected: list[Case], folder: Path) -> dict[str, Outcome]:
    """onnx2tf on each case's .onnx (written by ``classify``), in one call of the peer
    script; each fp32 file run on LiteRT and compared as edgecnn's is."""
    out = folder / "onnx2tf"
    files = [str(folder / f"{case.name}.onnx") for case in selected]
    command = [python, str(SCRIPTS / "peer_onnx2tf.py"), "--onnx", *files, "--out", str(out),
               "--timeout", "300"]
    by_path = {str((folder / f"{case.name}.onnx").resolve()): case for case in selected}
    outcomes: dict[str, Outcome] = {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if not line.startswith("{"):
                continue
            result = json.loads(line)
            case = by_path[result["model"]]
            outcome = classify_peer(case, result["fp32"])
            outcomes[case.name] = outcome
            print(f"onnx2tf {outcome.status:15} {case.name} {short(outcome.detail, 140)}",
                  file=sys.stderr, flush=True)
    for case in selected:  # the peer died before reaching these
        outcomes.setdefault(case.name, Outcome(case.name, case.op, "refused",
                                               "no result from the peer script"))
    return outcomes


def classify_peer(case: Case, record: dict[str, Any]) -> Outcome:
    if not record.get("ok"):
        text = str(record.get("error") or "no file").replace(case.name, "…")
        return Outcome(case.name, case.op, "refused", text)
    try:
        got, readings = run_peer_tflite(Path(record["path"]), case)
    except Exception as exc:  # LiteRT refusing the file
        return Outcome(case.name, case.op, "LiteRT fails", f"LiteRT: {exc}".splitlines()[0])
    outcome = compare(case, got)
    note = "; ".join(r for r in readings if r)
    return Outcome(outcome.name, outcome.op, outcome.status,
                   "; ".join(t for t in (outcome.detail, note) if t))


# onnx2tf's layout for an ONNX tensor of each rank (channels last), as a transpose of NC...
CHANNELS_LAST = {3: (0, 2, 1), 4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}


def run_peer_tflite(path: Path, case: Case) -> tuple[list[np.ndarray], list[str]]:
    """A peer's file on LiteRT: the image fed in the layout the file declares, each output read
    back in ONNX's layout (channels last to first where its shape says so); with a note for
    each output read as declared although channels last fitted its shape too."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    detail = interpreter.get_input_details()[0]
    declared = [int(d) for d in detail["shape"]]
    nhwc = case.image.transpose(0, 2, 3, 1)
    image = case.image if declared == list(case.image.shape) and declared != list(
        nhwc.shape) else nhwc
    if list(image.shape) != declared:
        interpreter.resize_tensor_input(detail["index"], list(image.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], np.ascontiguousarray(image.astype(np.float32)))
    interpreter.invoke()
    outputs = [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]
    read = [as_onnx_layout(have, want) for have, want in zip(outputs, case.expected,
                                                               strict=False)]
    return [r[0] for r in read], [r[1] for r in read]


def as_onnx_layout(have: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, str]:
    """``have`` in ``want``'s (ONNX) layout: as is, or moved back from channels last; where
    both fit the shape, whichever is closer to ``want`` (and a note when that is as is)."""
    readings = []
    perm = CHANNELS_LAST.get(have.ndim)
    if perm is not None:
        back = np.transpose(have, np.argsort(perm))
        if back.shape == want.shape:
            readings.append((back, ""))
    if have.shape == want.shape:
        note = "output read as declared (channels first)" if readings else ""
        readings.append((have, note))
    if not readings:
        return have, ""  # compare() reports the shape
    if not want.size:
        return readings[0]
    return min(readings, key=lambda r: float(np.max(np.abs(r[0] - want))))


STATUSES = ("pass", "refused", "failed check", "silently wrong", "error")


def markdown(outcomes: list[Outcome], peer: dict[str, Outcome] | None = None,
             peer_name: str = "onnx2tf") -> str:
    """A per-op table (edgecnn, and the peer beside it when it ran), the totals, and every
    case that does not pass with its reason."""
    by_op: dict[str, Counter[str]] = {}
    peer_by_op: dict[str, Counter[str]] = {}
    for o in outcomes:
        by_op.setdefault(o.op, Counter())[o.status] += 1
        if peer is not None:
            peer_by_op.setdefault(o.op, Counter())[peer[o.name].status] += 1
    peer_head = "".join(f" {peer_name} {s} |" for s in PEER_STATUSES) if peer else ""
    lines = ["| op | cases | " + " | ".join(f"edgecnn {s}" for s in STATUSES) + " |" + peer_head,
             "|---|---:|" + "---:|" * (len(STATUSES) + (len(PEER_STATUSES) if peer else 0))]

    def peer_cells(counts: Counter[str]) -> str:
        return "".join(f" {counts[s]} |" for s in PEER_STATUSES) if peer else ""

    for op, counts in by_op.items():
        lines.append(f"| {op} | {sum(counts.values())} | "
                     + " | ".join(str(counts[s]) for s in STATUSES) + " |"
                     + peer_cells(peer_by_op.get(op, Counter())))
    total = Counter(o.status for o in outcomes)
    peer_total = Counter(o.status for o in (peer or {}).values())
    share = 100 * total["pass"] / max(len(outcomes), 1)
    lines.append(f"| **all** | {len(outcomes)} | "
                 + " | ".join(f"**{total[s]}**" for s in STATUSES) + " |"
                 + ("".join(f" **{peer_total[s]}** |" for s in PEER_STATUSES) if peer else ""))
    lines += ["", f"edgecnn: {total['pass']} of {len(outcomes)} cases pass ({share:.0f} %), "
              f"{total['silently wrong']} silently wrong."]
    if peer:
        peer_share = 100 * peer_total["pass"] / max(len(outcomes), 1)
        lines += [f"{peer_name}: {peer_total['pass']} of {len(outcomes)} pass "
                  f"({peer_share:.0f} %), {peer_total['refused']} refused, "
                  f"{peer_total['LiteRT fails']} written but not run by LiteRT, "
                  f"{peer_total['silently wrong']} silently wrong (same cases, same LiteRT, "
                  "same tolerance)."]
    lines.append("")
    left = [o for o in outcomes if o.status != "pass"]
    if left:
        lines += ["| case | edgecnn | reason |", "|---|---|---|"]
        lines += [f"| {o.name} | {o.status} | {short(o.detail)} |" for o in left]
    wrong = [o for o in (peer or {}).values() if o.status in ("silently wrong", "LiteRT fails")]
    if wrong:
        lines += ["", f"{peer_name}'s files that are wrong or do not run:", "",
                  f"| case | {peer_name} | difference |", "|---|---|---|"]
        lines += [f"| {o.name} | {o.status} | {short(o.detail, 120)} |" for o in wrong]
    refused = Counter(short(o.detail, 90) for o in (peer or {}).values()
                      if o.status == "refused")
    if refused:
        lines += ["", f"{peer_name}'s refusals, by message:", "",
                  "| cases | message |", "|---:|---|"]
        lines += [f"| {n} | {text} |" for text, n in refused.most_common()]
    return "\n".join(lines)


def short(text: str, limit: int = 200) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    text = text.split("; supported:")[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def main(argv: list[str] | None = None) -> list[Outcome]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="*", default=list(CNN_OPS))
    parser.add_argument("--case", nargs="*", default=None, help="only these case names")
    parser.add_argument("--out", type=Path, help="docs page whose section to fill "
                        "(and its .json beside it, key 'onnx_node')")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    parser.add_argument("--onnx2tf-python", help="python of the onnx2tf venv "
                        "(scripts/setup_peers.sh onnx2tf): run it on the same cases")
    parser.add_argument("--from-json", type=Path, help="re-render the tables from an earlier "
                        "run's JSON (docs/coverage.json) instead of running anything")
    args = parser.parse_args(argv)
    if args.from_json:
        outcomes, peer = from_json(args.from_json)
        table = markdown(outcomes, peer)
        print(table)
        if args.out:
            args.out.write_text(fill_section(args.out.read_text(), START, END, table))
        return outcomes
    selected = cases(tuple(args.ops))
    if args.case:
        selected = [c for c in selected if c.name in args.case]
    outcomes = []
    peer: dict[str, Outcome] | None = None
    print(f"{len(selected)} cases", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="onnx-node-") as tmp:
        for case in selected:
            outcome = classify(case, Path(tmp))
            outcomes.append(outcome)
            print(f"{outcome.status:15} {outcome.name} {short(outcome.detail, 160)}",
                  file=sys.stderr, flush=True)
        if args.onnx2tf_python:
            peer = run_onnx2tf(args.onnx2tf_python, selected, Path(tmp))
    table = markdown(outcomes, peer)
    print(table)
    rows = [{**o.__dict__, **({"onnx2tf": peer[o.name].status,
                                "onnx2tf_detail": peer[o.name].detail} if peer else {})}
            for o in outcomes]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.out:
        page = args.out.read_text() if args.out.exists() else ""
        if START not in page:
            page = page.rstrip("\n") + "\n\n" + HEADING
        args.out.write_text(fill_section(page, START, END, table))
        merge_json(args.out.with_suffix(".json"), JSON_KEY,
                   {"tolerance": TOLERANCE, "peer": peer_version(args.onnx2tf_python),
                    "cases": rows})
    return outcomes


def from_json(path: Path) -> tuple[list[Outcome], dict[str, Outcome] | None]:
    """The outcomes an earlier run wrote (``--out``'s JSON key, or ``--json``'s list)."""
    data = json.loads(path.read_text())
    rows = data[JSON_KEY]["cases"] if isinstance(data, dict) else data
    outcomes = [Outcome(r["name"], r["op"], r["status"], r["detail"]) for r in rows]
    peer = None
    if rows and "onnx2tf" in rows[0]:
        peer = {}
        for r in rows:
            status = r["onnx2tf"]
            if status == "silently wrong" and r["onnx2tf_detail"].startswith("LiteRT:"):
                status = "LiteRT fails"  # runs before the status had its own name
            peer[r["name"]] = Outcome(r["name"], r["op"], status, r["onnx2tf_detail"])
    return outcomes, peer


def peer_version(python: str | None) -> str | None:
    if not python:
        return None
    done = subprocess.run([python, "-c", "from importlib.metadata import version; "
                           "print('onnx2tf', version('onnx2tf'))"], capture_output=True,
                          text=True)
    return done.stdout.strip() or None


def merge_json(path: Path, key: str, value: Any) -> None:
    """Set ``key`` in the JSON object at ``path``, keeping the other scripts' keys."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1) + "\n")


def as_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    return [o.__dict__ for o in outcomes]


if __name__ == "__main__":
    main()
