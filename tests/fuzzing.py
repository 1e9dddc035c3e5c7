"""edgecnn's own fuzzer: structure-aware mutants of real seed files, each run through the real
CLI in a child process under a memory cap and a timeout, judged against the README's promises.

A case is one mutated input (or hostile argument) and one command. The child is a fresh
``python -m edgecnn`` (fork and exec, so a native crash or a leak ends with the case, never with
the harness). Its outcome is one of:

- ``accepted`` (exit 0) or ``parity`` (exit 1): the tool coped;
- ``refused``: exit 2 and exactly one stderr line ``edgecnn: error: ...`` that names the problem;
- a **finding**: ``unnamed`` (the CLI's safety net answered: "... please report it"),
  ``traceback``, ``crash`` (killed by a signal, or 134/139), ``hang`` (past the timeout),
  ``memory`` (a MemoryError or the allocator failing under the cap), ``noisy`` (exit 2 but more
  than one line), ``input-changed``, ``left-behind`` (a temporary or partial file remains).

Mutators know each format: zip members of a torch.export archive (configs made deep, wrong-typed
or huge; sizes; traversal names), ONNX protobuf fields (dims, attributes, data types, node order,
names, opsets), TFLite flatbuffer tables through the object API (operator order, shapes, buffers,
opcodes, quantisation, graph inputs), IDX headers, .npz arrays, image files, sidecar cards and
command-line arguments; every format also gets byte flips, truncation and extreme 32-bit words.

``scripts/fuzz.py`` runs long campaigns; ``tests/test_fuzz.py`` runs a small seeded one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LENET = REPO / "models" / "lenet5.pt"
MNIST = REPO / "models" / "data" / "mnist"
MEMORY_CAP = 3 << 30
TIMEOUT_S = 90
EXTREMES = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 0x10000, 2**31 - 1]
BIG_DIMS = [0, -1, -7, 2**31, 2**62, 100000, 10**9]
FINDINGS = ("unnamed", "traceback", "crash", "hang", "memory", "noisy", "input-changed",
            "left-behind")


# -- seeds ---------------------------------------------------------------------------------
def make_seeds(root: Path) -> dict[str, Path]:
    """Real files of every kind edgecnn reads: LeNet-5 in each format, MNIST as IDX, .npz and
    PNG folder, and the shipped card. Built once per campaign."""
    from PIL import Image

    from edgecnn.api import ConvertConfig, convert
    from edgecnn.files.data import load_dataset

    root.mkdir(parents=True, exist_ok=True)
    seeds = {"pt": root / "lenet5.pt", "card": root / "lenet5.json"}
    shutil.copy(LENET, seeds["pt"])
    shutil.copy(LENET.with_suffix(".json"), seeds["card"])
    for name, config, suffix in (("onnx", ConvertConfig("onnx"), ".onnx"),
                                 ("onnx_int8", ConvertConfig("onnx", int8=True), ".onnx"),
                                 ("tflite", ConvertConfig("tflite"), ".tflite"),
                                 ("tflite_int8", ConvertConfig("tflite", int8=True), ".tflite")):
        seeds[name] = convert(LENET, root / f"lenet5_{name}{suffix}", config).path
    data = load_dataset(MNIST).take(32)
    idx = root / "idx"
    idx.mkdir(exist_ok=True)
    seeds["idx"] = idx / "t10k-images-idx3-ubyte.gz"
    seeds["idx"].write_bytes(gzip.compress(_idx_bytes(data.images)))
    (idx / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(data.labels)))
    seeds["npz"] = root / "mnist32.npz"
    np.savez(seeds["npz"], x=data.images, y=data.labels)
    folder = root / "images"
    for i, (image, label) in enumerate(zip(data.images[:8], data.labels[:8], strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.reshape(28, 28)).save(folder / str(label) / f"{i}.png")
    seeds["images"] = folder
    seeds["png"] = next(folder.rglob("*.png"))
    return seeds


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


# -- mutators ------------------------------------------------------------------------------
def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Byte flips, truncation, or an extreme 32-bit word (offsets, lengths, counts)."""
    buf = bytearray(data)
    kind = rng.randrange(3)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 1:
        del buf[rng.randrange(1, len(buf)):]
    else:
        at = rng.randrange(0, max(1, len(buf) - 4))
        buf[at:at + 4] = rng.choice(EXTREMES).to_bytes(4, "little")
    return bytes(buf)


def _hostile_json(value: object, rng: random.Random) -> object:
    """A JSON value with one field made deep, wrong-typed, huge or non-finite."""
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        return {**value, key: _hostile_json(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.5:
        i = rng.randrange(len(value))
        return [*value[:i], _hostile_json(value[i], rng), *value[i + 1:]]
    return rng.choice([
        None, "abc", -1, 10**30, 1e308, float("nan"), [], {}, [[[[1]]]], True,
        _DEEP if rng.random() < 0.5 else "x" * 100000,
    ])


_DEEP = "\x00deep\x00"  # stands for 100,000 nested arrays, written as text (json cannot)


def mutate_card(data: bytes, rng: random.Random) -> bytes:
    try:
        card = json.loads(data)
    except ValueError:
        return mutate_bytes(data, rng)
    text = json.dumps(_hostile_json(card, rng))
    return text.replace(json.dumps(_DEEP), "[" * 100000 + "]" * 100000).encode()


def mutate_zip(data: bytes, rng: random.Random) -> bytes:
    """A torch.export archive with one member rewritten: JSON configs made hostile, payloads
    truncated or replaced, a member renamed to escape, or one added that inflates."""
    source = zipfile.ZipFile(io.BytesIO(data))
    infos = source.infolist()
    target = rng.choice(infos)
    kind = rng.randrange(5)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in infos:
            body = source.read(info.filename)
            if info is target:
                if kind == 0 and info.filename.endswith(".json"):
                    body = mutate_card(body, rng)
                elif kind == 1:
                    body = body[:rng.randrange(len(body) + 1)]
                elif kind == 2:
                    body = mutate_bytes(body, rng) if body else body
                elif kind == 3:
                    info = zipfile.ZipInfo(rng.choice(["../escape", "/abs/path",
                                                       info.filename + "/../../x"]))
            dst.writestr(info, body)
        if kind == 4:
            dst.writestr(f"{infos[0].filename.split('/')[0]}/data/999", b"\0" * (8 << 20),
                         compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def mutate_onnx(data: bytes, rng: random.Random) -> bytes:
    """One protobuf field of a real ONNX model changed to a hostile value."""
    import onnx

    model = onnx.load_from_string(data)
    graph = model.graph
    kind = rng.randrange(9)
    if kind == 0 and graph.initializer:  # dims that disagree with the bytes, or huge
        tensor = rng.choice(graph.initializer)
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice(BIG_DIMS)
    elif kind == 1:  # a declared input or output dimension
        value = rng.choice([*graph.input, *graph.output])
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[rng.randrange(len(dims))].dim_value = rng.choice(BIG_DIMS)
    elif kind == 2:  # an attribute integer
        nodes = [n for n in graph.node if any(a.ints or a.i for a in n.attribute)]
        if nodes:
            attribute = rng.choice([a for a in rng.choice(nodes).attribute if a.ints or a.i])
            if attribute.ints:
                attribute.ints[rng.randrange(len(attribute.ints))] = rng.choice(BIG_DIMS)
            else:
                attribute.i = rng.choice(BIG_DIMS)
    elif kind == 3 and graph.initializer:  # a data type
        rng.choice(graph.initializer).data_type = rng.choice([0, 2, 7, 11, 16, 99])
    elif kind == 4:  # node order
        nodes = list(graph.node)
        rng.shuffle(nodes)
        del graph.node[:]
        graph.node.extend(nodes)
    elif kind == 5:  # a name: dangling or duplicated
        node = rng.choice(graph.node)
        if node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(
                ["nowhere", graph.node[0].output[0], ""])
    elif kind == 6:  # an op type
        rng.choice(graph.node).op_type = rng.choice(["Loop", "If", "Custom", "Conv", "Reshape",
                                                     "ConstantOfShape", "Range"])
    elif kind == 7:  # the opset
        model.opset_import[0].version = rng.choice([1, 6, 7, 23, 99])
    else:
        return mutate_bytes(data, rng)
    return model.SerializeToString()


def mutate_tflite(data: bytes, rng: random.Random) -> bytes:
    """One flatbuffer table of a real TFLite model changed, written back whole so every offset
    stays valid: what a hostile file looks like after the bounds checks pass."""
    import flatbuffers

    from edgecnn.converters.tflite_schema import schema

    fb = schema()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    graph = model.subgraphs[0]
    kind = rng.randrange(8)
    if kind == 0:
        graph.operators = list(reversed(graph.operators))
    elif kind == 1:
        tensor = rng.choice(graph.tensors)
        if tensor.shape is not None and len(tensor.shape):
            shape = [int(d) for d in tensor.shape]
            shape[rng.randrange(len(shape))] = rng.choice([0, -1, 2**31 - 1, 100000])
            tensor.shape = shape
    elif kind == 2:
        buffers = [b for b in model.buffers if b.data is not None and len(b.data)]
        if buffers:
            buffer = rng.choice(buffers)
            buffer.data = bytes(buffer.data)[:rng.randrange(len(buffer.data))]
    elif kind == 3:
        code = rng.choice(model.operatorCodes)
        code.builtinCode = code.deprecatedBuiltinCode = rng.choice([32, 0, 22, 3, 127])
        if code.builtinCode == 32:
            code.customCode = b"TFLite_Detection_PostProcess"
    elif kind == 4:
        tensor = rng.choice(graph.tensors)
        if tensor.quantization is not None and tensor.quantization.scale is not None:
            tensor.quantization.scale = [rng.choice([0.0, -1.0, float("nan"), 1e38])]
    elif kind == 5:
        constants = [i for i, t in enumerate(graph.tensors)
                     if model.buffers[t.buffer].data is not None]
        if constants:
            graph.inputs = [rng.choice(constants)]
    elif kind == 6:
        tensor = rng.choice(graph.tensors)
        tensor.type = rng.choice([0, 2, 3, 9, 16, 99])
    else:
        return mutate_bytes(data, rng)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), b"TFL3")
    return bytes(builder.Output())


def mutate_idx(data: bytes, rng: random.Random) -> bytes:
    raw = gzip.decompress(data)
    header = bytearray(raw[:16])
    at = rng.choice([2, 3, 4, 8, 12])
    if at in (2, 3):
        header[at] = rng.choice([0, 1, 8, 9, 13, 255])
    else:
        header[at:at + 4] = rng.choice(EXTREMES).to_bytes(4, "big")
    body = raw[16:] if rng.random() < 0.7 else raw[16:rng.randrange(16, len(raw))]
    return gzip.compress(bytes(header) + body)


def mutate_npz(data: bytes, rng: random.Random) -> bytes:
    with np.load(io.BytesIO(data)) as archive:
        arrays = {k: archive[k] for k in archive.files}
    kind = rng.randrange(5)
    if kind == 0:
        arrays["x"] = arrays["x"].astype(rng.choice([np.float64, np.int64, np.bool_]))
    elif kind == 1:
        arrays["x"] = arrays["x"].reshape(-1)[: rng.randrange(1, arrays["x"].size)]
    elif kind == 2:
        arrays["y"] = np.full_like(arrays["y"], rng.choice([-1, 10, 255]))
    elif kind == 3:
        arrays[rng.choice(["z", "x"])] = np.array([{"a": 1}], dtype=object)  # needs pickle
    else:
        return mutate_bytes(data, rng)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def mutate_png(data: bytes, rng: random.Random) -> bytes:
    from PIL import Image

    kind = rng.randrange(3)
    if kind == 0:  # an IHDR declaring a huge image over a tiny body
        buf = bytearray(data)
        buf[16:24] = (rng.choice([60000, 2**31 - 1])).to_bytes(4, "big") * 2
        return bytes(buf)
    if kind == 1:
        out = io.BytesIO()
        mode = rng.choice(["RGBA", "I;16", "1", "CMYK", "P"])
        Image.new(mode, (rng.choice([1, 28, 3000]), rng.choice([1, 28]))).save(
            out, format="TIFF" if mode == "CMYK" else "PNG")
        return out.getvalue()
    return mutate_bytes(data, rng)


MUTATORS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "pt": mutate_zip, "card": mutate_card, "onnx": mutate_onnx, "onnx_int8": mutate_onnx,
    "tflite": mutate_tflite, "tflite_int8": mutate_tflite, "idx": mutate_idx,
    "npz": mutate_npz, "png": mutate_png,
}


# -- cases ---------------------------------------------------------------------------------
@dataclass
class Case:
    number: int
    kind: str  # which seed was mutated, or "args"
    mutator: str
    args: list[str]
    inputs: list[Path] = field(default_factory=list)


def _commands_for(kind: str, model: Path, data: Path, work: Path, seeds: dict[str, Path],
                  rng: random.Random) -> list[str]:
    out = str(work / rng.choice(["out.tflite", "out.onnx"]))
    suffix = Path(out).suffix[1:]
    choices = {
        "model": [["inspect", str(model)],
                  ["convert", str(model), "--to", suffix, "-o", out],
                  ["convert", str(model), "--to", "tflite", "--int8", "--calib",
                   str(seeds["npz"]), "-o", str(work / "out8.tflite")],
                  ["validate", str(model), "--limit", "16"],
                  ["bench", str(model), "--runs", "2", "--warmup", "1"]],
        "data": [["validate", str(seeds["onnx"]), "--data", str(data), "--limit", "16"],
                 ["convert", str(seeds["onnx"]), "--to", "onnx", "--int8", "--calib", str(data),
                  "-o", str(work / "q.onnx")],
                 ["layers", str(seeds["onnx"]), str(seeds["onnx_int8"]), "--data", str(data),
                  "--limit", "16"]],
    }
    if kind in ("idx", "npz", "png"):
        return rng.choice(choices["data"])
    if kind.startswith("tflite"):  # TFLite files are run and read, never converted
        return rng.choice([c for c in choices["model"] if c[0] != "convert"])
    return rng.choice(choices["model"])


HOSTILE_ARGS = [
    ["bench", "{onnx}", "--batch", "100000"], ["bench", "{tflite}", "--batch", "0"],
    ["bench", "{onnx}", "--runs", "-1"], ["bench", "{onnx}", "--threads", "100000"],
    ["validate", "{onnx}", "--limit", "0"], ["validate", "{onnx}", "--batch-size", "100000000"],
    ["convert", "{onnx}", "--to", "tflite", "-o", "-"],
    ["convert", "{onnx}", "--to", "tflite", "-o", "{onnx}"],
    ["convert", "{onnx}", "--to", "tflite", "-o", "/dev/null"],
    ["convert", "{onnx}", "--to", "tflite", "-o", "{work}/" + "x" * 300 + ".tflite"],
    ["inspect", "--", "-rf"], ["inspect", "{work}/missing.onnx"], ["inspect", "{work}"],
    ["validate", "{onnx}", "--data", "/dev/zero"], ["validate", "{onnx}", "--max-drop", "inf"],
    ["convert", "{onnx}", "--to", "tflite", "--int8", "--calib", "{onnx}", "-o", "{work}/o.t"],
]


def make_case(number: int, seeds: dict[str, Path], work: Path, rng: random.Random) -> Case:
    """Case ``number`` of a campaign: a mutated copy of one seed in ``work`` and a command."""
    kind = rng.choice([*MUTATORS, "args"])
    if kind == "args":
        words = rng.choice(HOSTILE_ARGS)
        fill = {"onnx": str(seeds["onnx"]), "tflite": str(seeds["tflite_int8"]),
                "work": str(work)}
        return Case(number, kind, "args", [w.format(**fill) for w in words])
    source = seeds[kind]
    mutated = MUTATORS[kind](source.read_bytes(), rng)
    if kind == "card":  # a sidecar card beside a model of the same stem
        model = work / "lenet5.pt"
        shutil.copy(seeds["pt"], model)
        (work / "lenet5.json").write_bytes(mutated)
        return Case(number, kind, MUTATORS[kind].__name__,
                    _commands_for(kind, model, seeds["npz"], work, seeds, rng),
                    [model, work / "lenet5.json"])
    if kind == "idx":
        folder = work / "idx"
        folder.mkdir()
        path = folder / source.name
        shutil.copy(source.with_name("t10k-labels-idx1-ubyte.gz"), folder)
    elif kind == "png":
        folder = work / "images"
        shutil.copytree(seeds["images"], folder)
        path = folder / source.relative_to(seeds["images"])
    else:
        path = work / source.name
    path.write_bytes(mutated)
    data = {"idx": path, "png": work / "images", "npz": path}.get(kind, seeds["npz"])
    return Case(number, kind, MUTATORS[kind].__name__,
                _commands_for(kind, path, data, work, seeds, rng), [path])


# -- the harness ---------------------------------------------------------------------------
@dataclass
class Outcome:
    case: Case
    verdict: str
    returncode: int
    line: str

    @property
    def finding(self) -> bool:
        return self.verdict in FINDINGS

    def to_dict(self) -> dict[str, object]:
        return {"case": self.case.number, "kind": self.case.kind, "mutator": self.case.mutator,
                "args": self.case.args, "verdict": self.verdict, "rc": self.returncode,
                "line": self.line}


def _snapshot(paths: list[Path]) -> dict[Path, tuple[str, int]]:
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in paths if p.is_file()}


def run_case(case: Case, work: Path, memory_cap: int = MEMORY_CAP,
             timeout_s: float = TIMEOUT_S) -> Outcome:
    """Run ``case`` in a fresh child: its own session (a hang is killed with all its
    children), an address-space cap, muted stdout."""
    before = _snapshot(case.inputs)
    listing = set(work.rglob("*"))

    def confine() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_cap, memory_cap))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    child = subprocess.Popen([sys.executable, "-m", "edgecnn", *case.args], cwd=work,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, preexec_fn=confine,
                             start_new_session=True, env=env)
    try:
        _, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return Outcome(case, "hang", -9, f"no answer in {timeout_s:.0f} s")
    stderr = err.decode(errors="replace")
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    line = lines[-1][:300] if lines else ""
    verdict = _verdict(child.returncode, stderr, lines)
    if verdict in ("accepted", "parity", "refused"):
        if _snapshot(case.inputs) != before:
            verdict = "input-changed"
        elif any(p.name.endswith((".part", ".tmp")) or ".edgecnn-" in p.name
                 for p in set(work.rglob("*")) - listing):
            verdict = "left-behind"
    return Outcome(case, verdict, child.returncode, line)


def _verdict(returncode: int, stderr: str, lines: list[str]) -> str:
    if returncode < 0 or returncode in (134, 136, 139):
        return "crash"
    if "MemoryError" in stderr or "bad_alloc" in stderr or "can't allocate" in stderr:
        return "memory"
    if "Traceback (most recent call last)" in stderr:
        return "traceback"
    if "please report it" in stderr:
        return "unnamed"
    if returncode == 0:
        return "accepted"
    if returncode == 1:
        return "parity"
    if returncode == 2 and len(lines) == 1 and lines[0].startswith(("edgecnn: error:",
                                                                    "Usage:", "Error:")):
        return "refused"
    if returncode == 2 and lines and lines[0].startswith("Usage:"):
        return "refused"  # click's own usage errors: "Usage: ...", "Try ...", "Error: ..."
    return "noisy"


def campaign(cases: int, seed: int, root: Path,
             progress: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """``cases`` seeded cases from fresh seeds in ``root``; the same seed gives the same cases."""
    seeds = make_seeds(root / "seeds")
    rng = random.Random(f"edgecnn-fuzz-{seed}")
    outcomes = []
    for number in range(cases):
        work = root / f"case{number}"
        work.mkdir(parents=True)
        case = make_case(number, seeds, work, rng)
        outcome = run_case(case, work)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
        if not outcome.finding:
            shutil.rmtree(work, ignore_errors=True)
    return outcomes
