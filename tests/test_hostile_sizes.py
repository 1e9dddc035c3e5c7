"""Hostile input, round two: sizes decided at run time, graphs whose names or types lie, and
errors that used to reach the CLI's safety net unnamed. Each case runs the real CLI in a child
under a 2 GiB address-space cap: a blow-up fails the test, not the machine. Every refusal is
exit 2 with one stderr line naming the node, tensor or value, and no traceback."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import LENET

MEMORY_LIMIT = 2 << 30


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run([sys.executable, "-m", "edgecnn", *args], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit_memory, cwd=cwd,
                          env={**os.environ, **(env or {})})


def _refused(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _image_model(tmp_path: Path, name: str, nodes: list, inits: list | None = None) -> Path:
    """A one-input graph on an MNIST-sized image whose nodes end in ``y``."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits or [])
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _int64(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _constant(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
        np.array(value, np.int64)))


RUN_TIME_SIZES: dict[str, tuple[Callable[[Path], Path], str]] = {
    # ConstantOfShape fed by a Constant's value_ints: the form the declared-size check missed
    "ConstantOfShape of value_ints": (lambda t: _image_model(t, "cos", [
        helper.make_node("Constant", [], ["s"], value_ints=[50000, 50000]),
        helper.make_node("ConstantOfShape", ["s"], ["c"], name="big"),
        helper.make_node("Add", ["x", "c"], ["y"])]), "ConstantOfShape node 'big'"),
    "ConstantOfShape of a computed shape": (lambda t: _image_model(t, "shape_mul", [
        helper.make_node("Shape", ["x"], ["s"]), _constant("m", [1, 1, 10000, 10000]),
        helper.make_node("Mul", ["s", "m"], ["s2"]),
        helper.make_node("ConstantOfShape", ["s2"], ["c"], name="computed"),
        helper.make_node("Add", ["x", "c"], ["y"])]), "ConstantOfShape node 'computed'"),
    "Range of 10^10": (lambda t: _image_model(t, "range", [
        _constant("a", 0), _constant("b", 10**10), _constant("d", 1),
        helper.make_node("Range", ["a", "b", "d"], ["r"], name="long"),
        helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "rf"], ["y"])]), "Range node 'long'"),
    "Pad by 10^5": (lambda t: _image_model(t, "pad", [
        helper.make_node("Pad", ["x", "p"], ["y"], name="wide")],
        [_int64("p", [0, 0, 0, 0, 0, 0, 100000, 100000])]), "Pad node 'wide'"),
    "Resize by 20000": (lambda t: _image_model(t, "resize", [
        helper.make_node("Resize", ["x", "", "sc"], ["y"], name="up")],
        [numpy_helper.from_array(np.array([1, 1, 20000, 20000], np.float32), "sc")]),
        "Resize node 'up'"),
    "Tile by 10^5": (lambda t: _image_model(t, "tile", [
        helper.make_node("Tile", ["x", "p"], ["y"], name="tiles")],
        [_int64("p", [1, 1, 100000, 100000])]), "Tile node 'tiles'"),
    "Expand to 10^5 x 10^4": (lambda t: _image_model(t, "expand", [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[3], keepdims=1),
        helper.make_node("Expand", ["m", "p"], ["y"], name="broad")],
        [_int64("p", [1, 100000, 28, 10000])]), "Expand node 'broad'"),
}


@pytest.mark.parametrize("case", list(RUN_TIME_SIZES))
@pytest.mark.parametrize("command", ["convert", "validate"])
def test_sizes_computed_at_run_time_are_refused_before_anything_runs(tmp_path, case, command):
    make, needle = RUN_TIME_SIZES[case]
    model = make(tmp_path)
    args = (["convert", str(model), "--to", "onnx", "-o", str(tmp_path / "out.onnx")]
            if command == "convert" else ["validate", str(model), "--limit", "8"])
    _refused(_run(args, tmp_path), needle, "1.0 GiB limit")
    assert not (tmp_path / "out.onnx").exists()  # convert never writes what it cannot check


def _lenet_onnx_with(tmp_path: Path, artefact: Path, edit: Callable[[onnx.ModelProto], None],
                     name: str) -> Path:
    model = onnx.load(artefact)
    edit(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _drop_scale(model: onnx.ModelProto) -> None:
    scale = next(n for n in model.graph.node if n.op_type == "DequantizeLinear").input[1]
    kept = [t for t in model.graph.initializer if t.name != scale]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def _scale_type(data_type: int) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        scale = next(n for n in model.graph.node if n.op_type == "DequantizeLinear").input[1]
        next(t for t in model.graph.initializer if t.name == scale).data_type = data_type
    return edit


def _duplicate_initializer(model: onnx.ModelProto) -> None:
    copy = onnx.TensorProto()
    copy.CopyFrom(model.graph.initializer[0])
    model.graph.initializer.append(copy)


def _batch(size: int) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = size
    return edit


def _pool_kernel_2_31(model: onnx.ModelProto) -> None:
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    kernel = next(a for a in pool.attribute if a.name == "kernel_shape")
    kernel.ints[:] = [2**31, 2]


def _collapse_batch(model: onnx.ModelProto) -> None:
    logits = model.graph.output[0].name
    model.graph.initializer.append(_int64("axis0", [0]))
    model.graph.node.append(helper.make_node("ReduceMean", [logits, "axis0"], ["collapsed"]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("collapsed", TensorProto.FLOAT, None))


def _input_scale_from_a_node(model: onnx.ModelProto) -> None:
    """The input QuantizeLinear's scale read from a node output (fuzzing case 237)."""
    quantize = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    quantize.input[1] = gemm.input[2]


NAMED = {  # case -> (artefact, edit, command after the model, what the line must name)
    "a dropped scale (layers)": ("onnx_int8", _drop_scale, "layers",
                                 "which no input, initializer or node defines"),
    "a dropped scale (convert --int8)": ("onnx_int8", _drop_scale, "convert",
                                         "which no input, initializer or node defines"),
    "a scale of data type 0": ("onnx_int8", _scale_type(0), "inspect", "data type 0"),
    "a scale of data type 99": ("onnx_int8", _scale_type(99), "validate", "data type 99"),
    "an initializer defined twice": ("onnx", _duplicate_initializer, "convert", "defined twice"),
    "a declared batch of 100000 (layers)": ("onnx_int8", _batch(100000), "layers",
                                            "100000x6x28x28"),
    "a pooling kernel of 2^31 (layers)": ("onnx_int8", _pool_kernel_2_31, "layers",
                                          "onnxruntime cannot run the layer table"),
    "an output batch that ignores the input's": ("onnx", _collapse_batch, "validate",
                                                 "for a batch of"),
    "an input scale computed by a node (bench)": ("onnx_int8", _input_scale_from_a_node,
                                                  "bench", "onnxruntime cannot run it"),
}


@pytest.mark.parametrize("case", list(NAMED))
def test_errors_that_reached_the_safety_net_are_named(tmp_path, artefacts, case):
    artefact, edit, command, needle = NAMED[case]
    model = _lenet_onnx_with(tmp_path, artefacts[artefact], edit, "edited")
    args = {"layers": ["layers", str(artefacts["onnx"]), str(model), "--limit", "64"],
            "convert": ["convert", str(model), "--to", "tflite",
                        *(["--int8"] if artefact == "onnx_int8" else []),
                        "-o", str(tmp_path / "o.tflite")],
            "inspect": ["inspect", str(model)],
            "bench": ["bench", str(model), "--runs", "2", "--warmup", "1"],
            "validate": ["validate", str(artefacts["onnx"]), str(model), "--limit", "64"],
            }[command]
    line = _refused(_run(args, tmp_path), needle)
    assert "report it" not in line  # not the safety net's wording


@pytest.mark.parametrize("artefact", ["onnx", "tflite"])
def test_bench_refuses_a_batch_whose_activations_do_not_fit(tmp_path, artefacts, artefact):
    # the input (313 MB) fits; the first convolution's output (1.8 GiB) does not
    _refused(_run(["bench", str(artefacts[artefact]), "--batch", "100000"], tmp_path),
             "100000", "bench a smaller --batch")


def test_a_graph_of_too_many_nodes_is_refused_before_onnxruntime_sees_it(tmp_path):
    chain = [helper.make_node("Identity", ["x" if i == 0 else f"t{i - 1}"],
                              ["y" if i == 100_000 else f"t{i}"]) for i in range(100_001)]
    model = _image_model(tmp_path, "identities", chain)
    _refused(_run(["inspect", str(model)], tmp_path), "100,001 nodes", "EDGECNN_MAX_NODES")


def test_a_zip_member_inflating_past_the_array_limit_is_refused_at_any_ratio(tmp_path):
    # 12 MiB at ~3:1 under an 8 MiB limit: the ratio alone (< 100:1) lets it through
    rng = np.random.default_rng(0)
    payload = (rng.integers(0, 4, 12 << 20, dtype=np.uint8)).tobytes()
    model = tmp_path / "inflating.pt"
    with zipfile.ZipFile(LENET) as src, zipfile.ZipFile(model, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info.filename))
        dst.writestr("lenet5/data/99", payload, compress_type=zipfile.ZIP_DEFLATED)
    line = _refused(_run(["inspect", str(model)], tmp_path,
                         {"EDGECNN_MAX_ARRAY_BYTES": str(8 << 20)}), "lenet5/data/99")
    assert "limit for one array" in line


def test_onnxruntime_log_lines_never_reach_the_terminal(tmp_path, artefacts):
    def unused_initializer(model: onnx.ModelProto) -> None:  # onnxruntime warns, then copes
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "spare"))
    model = _lenet_onnx_with(tmp_path, artefacts["onnx"], unused_initializer, "spare")
    done = _run(["convert", str(model), "--to", "tflite", "-o", str(tmp_path / "o.tflite")],
                tmp_path)
    assert done.returncode == 0, done.stderr
    assert "onnxruntime" not in done.stderr and "\x1b[" not in done.stderr, done.stderr
    loud = _run(["--traceback", "convert", str(model), "--to", "tflite", "-o",
                 str(tmp_path / "o2.tflite")], tmp_path)
    assert "Removing initializer 'spare'" in loud.stderr  # the gate: --traceback shows it


def test_a_batch_beyond_the_exports_range_is_named(tmp_path):
    line = _refused(_run(["bench", str(LENET), "--batch", "100000", "--runs", "1"], tmp_path),
                    "cannot run a batch of 100000", "<= 65536")
    assert "AssertionError" not in line
