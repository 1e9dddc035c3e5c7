"""Crafted TFLite files whose indices are all in range (issue 24): each is made from a real
converted LeNet-5 with the flatbuffer object API and refused, exit 2 with one stderr line,
before an interpreter sees it (edgecnn.files.tflite_verify); a file that passes the verifier but
crashes a kernel is refused by its first run in a child process (edgecnn.runtimes.isolation). Before
these gates, tflite-runtime aborted with "double free or corruption" and both interpreters
segfaulted."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecnn.converters.tflite_schema import schema
from edgecnn.errors import BadInputError, ModelLoadError

HAS_TFLITE_RUNTIME = importlib.util.find_spec("tflite_runtime") is not None


def _crafted(source: Path, tmp_path: Path, edit: Callable[[Any, Any], None],
             name: str = "crafted") -> Path:
    """``source`` unpacked, edited by ``edit(model, graph)`` and packed again."""
    import flatbuffers

    fb = schema()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(source.read_bytes(), 0))
    edit(model, model.subgraphs[0])
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(bytes(builder.Output()))
    return path


def _op_named(model: Any, graph: Any, name: str) -> Any:
    code = getattr(schema().BuiltinOperator, name)
    return next(op for op in graph.operators
                if max(model.operatorCodes[op.opcodeIndex].builtinCode,
                       model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode) == code)


def _constant(model: Any, graph: Any) -> int:
    """The first tensor whose buffer holds data (a weight)."""
    return next(i for i, t in enumerate(graph.tensors)
                if t.buffer and model.buffers[t.buffer].data is not None
                and len(model.buffers[t.buffer].data))


def _reversed(model: Any, graph: Any) -> None:
    graph.operators = list(reversed(graph.operators))


def _input_is_a_constant(model: Any, graph: Any) -> None:
    graph.inputs = [_constant(model, graph)]


def _reshape_is_detection_postprocess(model: Any, graph: Any) -> None:
    code = model.operatorCodes[_op_named(model, graph, "RESHAPE").opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = schema().BuiltinOperator.CUSTOM
    code.customCode = b"TFLite_Detection_PostProcess"


def _constant_bigger_than_its_buffer(model: Any, graph: Any) -> None:
    tensor = graph.tensors[_constant(model, graph)]
    tensor.shape = [2 * tensor.shape[0], *tensor.shape[1:]]


def _huge_activation(model: Any, graph: Any) -> None:
    tensor = graph.tensors[graph.outputs[0]]
    tensor.shape, tensor.shapeSignature = [1, 100000, 100000, 4], [-1, 100000, 100000, 4]


def _while_loop(model: Any, graph: Any) -> None:
    model.operatorCodes[_op_named(model, graph, "RESHAPE").opcodeIndex].builtinCode = (
        schema().BuiltinOperator.WHILE)


def _written_twice(model: Any, graph: Any) -> None:
    graph.operators[1].outputs = list(graph.operators[0].outputs)


def _writes_the_graph_input(model: Any, graph: Any) -> None:
    graph.operators[0].outputs = list(graph.inputs)


def _signature_beside_the_shape(model: Any, graph: Any) -> None:
    graph.tensors[graph.inputs[0]].shapeSignature = [-3, 28, 28, 1]


def _output_never_computed(model: Any, graph: Any) -> None:
    graph.operators = graph.operators[:-1]


def _stride_zero(model: Any, graph: Any) -> None:
    """Passes the verifier (it checks structure, not each op's options); tflite-runtime 2.14
    divides by the stride in CONV_2D's Prepare (SIGFPE), LiteRT refuses it."""
    conv = schema().BuiltinOperator.CONV_2D
    for op in graph.operators:
        if model.operatorCodes[op.opcodeIndex].builtinCode == conv:
            op.builtinOptions.strideW = op.builtinOptions.strideH = 0


CASES = {  # name -> (edit, command, what the one line must name)
    "operators reversed": (_reversed, "validate", "not in execution order"),
    "graph input is a constant": (_input_is_a_constant, "validate",
                                  "is a graph input and a constant"),
    "RESHAPE turned into TFLite_Detection_PostProcess": (
        _reshape_is_detection_postprocess, "validate", "custom op 'TFLite_Detection_PostProcess'"),
    "constant bigger than its buffer": (_constant_bigger_than_its_buffer, "bench",
                                        "but its buffer holds"),
    "activation of 10^10 elements": (_huge_activation, "inspect", "limit for one array"),
    "WHILE": (_while_loop, "bench", "control flow"),
    "tensor written twice": (_written_twice, "validate", "already written"),
    "operator writes the graph input": (_writes_the_graph_input, "bench", "a graph input"),
    "shape_signature of -3": (_signature_beside_the_shape, "inspect", "shape_signature"),
    "graph output never computed": (_output_never_computed, "validate", "no operator computes"),
}


def _edgecnn(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgecnn", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def _one_line(done: subprocess.CompletedProcess[str], needle: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_crafted_file_is_refused_in_one_line(tmp_path, artefacts, case):
    edit, command, needle = CASES[case]
    path = _crafted(artefacts["tflite"], tmp_path, edit)
    args = [command, str(path)] + (["--runs", "1"] if command == "bench" else [])
    done = _edgecnn(*args, cwd=tmp_path)
    _one_line(done, needle)
    assert str(path) in done.stderr and "re-convert the model" in done.stderr


@pytest.mark.parametrize("kind", ["tflite", "tflite_int8"])
def test_edgecnn_files_pass_the_verifier(artefacts, kind):
    from edgecnn.files.tflite_verify import verify_tflite

    verify_tflite(artefacts[kind])  # mapped
    verify_tflite(artefacts[kind], artefacts[kind].read_bytes())


def test_a_free_batch_written_as_tensorflow_does_passes(tmp_path, artefacts):
    """TensorFlow's converter writes shape [1, ...] and shape_signature [-1, ...] on every
    activation; that is a free batch, not a negative dimension."""
    from edgecnn.files.tflite_verify import verify_tflite
    from edgecnn.runtimes.sessions import TFLiteSession, predict

    def free_batch(model: Any, graph: Any) -> None:
        constants = {i for i, t in enumerate(graph.tensors)
                     if model.buffers[t.buffer].data is not None}
        for index, tensor in enumerate(graph.tensors):
            if index not in constants and len(tensor.shape) > 1:
                tensor.shapeSignature = [-1, *tensor.shape[1:]]

    path = _crafted(artefacts["tflite"], tmp_path, free_batch)
    verify_tflite(path)
    logits = predict(TFLiteSession(path, 1, "ai_edge_litert.interpreter", "litert"),
                     np.zeros((3, 1, 28, 28), np.float32))
    assert logits.shape == (3, 10)


def test_big_files_are_verified_on_the_mapped_file(tmp_path, artefacts, monkeypatch):
    """Files over STRUCTURE_CHECK_BYTES skip read_tflite's unpacking, not the verifier."""
    from edgecnn.runtimes import sessions as runtimes

    monkeypatch.setattr(runtimes, "STRUCTURE_CHECK_BYTES", 0)
    path = _crafted(artefacts["tflite"], tmp_path, _reversed)
    with pytest.raises(ModelLoadError, match="not in execution order"):
        runtimes.TFLiteSession(path, 1, "ai_edge_litert.interpreter", "litert")


@pytest.mark.skipif(not HAS_TFLITE_RUNTIME, reason="tflite-runtime is not installed")
def test_a_kernel_crash_the_verifier_lets_through_is_one_line(tmp_path, artefacts):
    """The child process takes tflite-runtime's SIGFPE on a stride-0 CONV_2D."""
    path = _crafted(artefacts["tflite"], tmp_path, _stride_zero)
    done = _edgecnn("bench", str(path), "--runtime", "tflite-runtime", "--runs", "1",
                    cwd=tmp_path)
    _one_line(done, "tflite-runtime crashed (SIGFPE)")
    assert str(path) in done.stderr and "child process" in done.stderr


@pytest.mark.skipif(not HAS_TFLITE_RUNTIME, reason="tflite-runtime is not installed")
def test_the_device_runner_reports_a_crash_as_its_error(tmp_path, artefacts):
    """On a Raspberry Pi the runner is the only code there: it runs the file once in a child
    of its own, and its JSON error becomes the bench's one line on the host."""
    import json

    from edgecnn.targets.support import runner

    path = _crafted(artefacts["tflite"], tmp_path, _stride_zero)
    done = subprocess.run([sys.executable, runner.__file__, str(path), "--runtime",
                           "tflite-runtime", "--runs", "1", "--min-time", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stderr[-2000:]
    assert "tflite-runtime crashed (SIGFPE)" in json.loads(done.stdout)["error"]


@pytest.mark.skipif(not HAS_TFLITE_RUNTIME, reason="tflite-runtime is not installed")
def test_the_child_catches_what_the_verifier_would(tmp_path, artefacts, monkeypatch):
    """Defence in depth: with the verifier off, reversed operators pass tflite-runtime at the
    file's own batch and crash it at the batch validate uses; the probe at that batch says so
    and this process lives on."""
    from edgecnn.files import tflite_verify
    from edgecnn.runtimes.sessions import TFLiteSession

    monkeypatch.setattr(tflite_verify, "_verify", lambda path, buf: None)
    path = _crafted(artefacts["tflite"], tmp_path, _reversed)
    session = TFLiteSession(path, 1, "tflite_runtime.interpreter", "tflite-runtime")
    with pytest.raises(BadInputError, match=r"crashed \(SIG(SEGV|ABRT)\)"):
        session.bind(np.zeros((32, 1, 28, 28), np.float32))


def test_each_file_and_shape_is_probed_once_per_process(tmp_path, artefacts, monkeypatch):
    from edgecnn.runtimes import isolation
    from edgecnn.runtimes.sessions import TFLiteSession, predict

    calls: list[Any] = []
    real = isolation._check

    def counted(request: dict[str, Any]) -> dict[str, Any]:
        calls.append(request["shape"])
        return real(request)

    monkeypatch.setattr(isolation, "_check", counted)
    monkeypatch.setattr(isolation, "_probed", set())
    path = tmp_path / "m.tflite"
    path.write_bytes(artefacts["tflite"].read_bytes())
    for _ in range(2):
        predict(TFLiteSession(path, 1, "ai_edge_litert.interpreter", "litert"),
                np.zeros((4, 1, 28, 28), np.float32))
    assert calls == [None, [4, 28, 28, 1]]  # the file's own shape, then the batch used


def test_a_fork_server_killed_from_outside_is_started_again(tmp_path, artefacts, monkeypatch):
    import os
    import signal

    from edgecnn.runtimes import isolation

    monkeypatch.setattr(isolation, "_probed", set())
    isolation.probe_tflite(artefacts["tflite"], "litert")
    server = isolation._SERVER.process
    assert server is not None and server.poll() is None
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    isolation.probe_tflite(artefacts["tflite"], "litert", [2, 28, 28, 1])
    assert isolation._SERVER.process is not None and isolation._SERVER.process.pid != server.pid
