"""Hostile input: archives that would run code, SSH words that would become options, outputs
that would replace inputs, links or devices. Each refusal is exit 2 with one stderr line, leaves
no file behind, changes no input and runs no payload."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from edgecnn.cli import cli
from tests.conftest import LENET


class _Payload:
    """Unpickling this runs ``touch MARKER``: the marker proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickled_payload(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)
    return buffer.getvalue()


def _rewrite_archive(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """Copy a zip archive, replacing members whose names end with a key of ``replace``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            zout.writestr(info, data)
    return dst


def _evil_sample_inputs(tmp_path: Path, marker: Path) -> Path:
    """torch.export.load falls back to a full unpickler when sample inputs fail weights-only."""
    return _rewrite_archive(LENET, tmp_path / "evil_inputs.pt",
                            {"data/sample_inputs/model.pt": _pickled_payload(marker)})


def _evil_pickled_weight(tmp_path: Path, marker: Path) -> Path:
    """A weight whose config says use_pickle: torch unpickles it with weights_only=False."""
    with zipfile.ZipFile(LENET) as archive:
        name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(archive.read(name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    return _rewrite_archive(LENET, tmp_path / "evil_weight.pt", {
        "model_weights_config.json": json.dumps(config).encode(),
        f"data/weights/{first['path_name']}": _pickled_payload(marker)})


ARCHIVES = {"sample inputs": _evil_sample_inputs, "use_pickle weight": _evil_pickled_weight}


def _assert_refused(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("archive", sorted(ARCHIVES))
@pytest.mark.parametrize("command", ["inspect", "convert", "validate", "validate --reference",
                                     "bench"])
def test_export_archive_payload_never_runs(cli_runner, tmp_path, archive, command):
    marker = tmp_path / "MARKER"
    evil = ARCHIVES[archive](tmp_path, marker)
    before = evil.read_bytes()
    args = {"inspect": ["inspect", str(evil)],
            "convert": ["convert", str(evil), "--to", "onnx", "-o", str(tmp_path / "o.onnx")],
            "validate": ["validate", str(evil), "--limit", "10"],
            "validate --reference": ["validate", str(LENET), "--reference", str(evil),
                                     "--limit", "10"],
            "bench": ["bench", str(evil), "--runs", "1", "--min-time", "0"]}[command]
    result = cli_runner.invoke(cli, args)
    _assert_refused(result, str(evil), "--trust-pickle")
    assert not marker.exists() and evil.read_bytes() == before
    assert not (tmp_path / "o.onnx").exists()


def test_trust_pickle_is_the_only_way_in(cli_runner, tmp_path):
    """The payload is real: with the explicit opt-in, loading runs it (and says so first)."""
    marker = tmp_path / "MARKER"
    evil = _evil_sample_inputs(tmp_path, marker)
    result = cli_runner.invoke(cli, ["inspect", str(evil), "--trust-pickle"])
    assert marker.exists()
    assert "--trust-pickle lets torch.export.load unpickle" in result.stderr


def test_shipped_archive_still_loads(cli_runner):
    result = cli_runner.invoke(cli, ["inspect", str(LENET)])
    assert result.exit_code == 0 and "torch.export" in result.output


# -- SSH ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("option,value", [
    ("--remote-python", "-oProxyCommand=touch {marker}"),
    ("--identity", "-oProxyCommand=touch {marker}"),
    ("--known-hosts", "-F{marker}"),
    ("--ssh-config", "-oProxyCommand=touch {marker}"),
    ("--host", "-oProxyCommand=touch {marker}"),
])
def test_ssh_words_are_never_options(cli_runner, tmp_path, sshd, option, value):
    from tests.test_bench import _ssh_args

    marker = tmp_path / "MARKER"
    args = _ssh_args(sshd, **{option: value.format(marker=marker), "--timeout": "10"})
    result = cli_runner.invoke(cli, ["bench", str(LENET), *args, "--runs", "1"])
    _assert_refused(result, option)
    assert not marker.exists()


def test_remote_command_after_the_host_is_not_an_ssh_option(tmp_path, sshd):
    """Even a word that slipped through reaches the remote shell as a command, not ssh."""
    from edgecnn.errors import RemoteError
    from edgecnn.targets.support.ssh import SSHClient, SSHConfig

    marker = tmp_path / "MARKER"
    client = SSHClient(SSHConfig("root@127.0.0.1", sshd["port"], sshd["base"] / "client_key",
                                 sshd["base"] / "known_hosts", timeout=10))
    args = client.base_args()
    assert args[-2:] == ["--", "root@127.0.0.1"]
    with pytest.raises(RemoteError, match="status 127"):  # the remote shell: no such command
        client.run([f"-oProxyCommand=touch {marker}"])
    assert not marker.exists()


# -- outputs -----------------------------------------------------------------------------------
def _onnx_copy(tmp_path: Path, artefacts) -> Path:
    copy = tmp_path / "m.onnx"
    copy.write_bytes(artefacts["onnx"].read_bytes())
    copy.chmod(0o644)
    return copy


def test_output_onto_a_device_node_is_refused(cli_runner, tmp_path, artefacts):
    result = cli_runner.invoke(cli, ["convert", str(artefacts["onnx"]), "--to", "onnx",
                                     "-o", "/dev/null"])
    _assert_refused(result, "/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_output_onto_a_symlink_is_refused(cli_runner, tmp_path, artefacts):
    target = tmp_path / "kept.txt"
    target.write_text("keep me")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    result = cli_runner.invoke(cli, ["convert", str(artefacts["onnx"]), "--to", "onnx",
                                     "-o", str(link)])
    _assert_refused(result, "symbolic link")
    assert link.is_symlink() and target.read_text() == "keep me"


@pytest.mark.parametrize("where", ["/proc/self/x.onnx", "/sys/x.onnx"])
def test_output_under_system_trees_is_refused(cli_runner, artefacts, where):
    result = cli_runner.invoke(cli, ["convert", str(artefacts["onnx"]), "--to", "onnx",
                                     "-o", where])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_convert_never_defaults_onto_or_writes_over_its_input(cli_runner, tmp_path, artefacts):
    model = _onnx_copy(tmp_path, artefacts)
    before = model.read_bytes()
    result = cli_runner.invoke(cli, ["convert", str(model), "--to", "onnx", "-o", str(model)])
    _assert_refused(result, "also an input")
    result = cli_runner.invoke(cli, ["convert", str(model), "--to", "onnx"])
    assert result.exit_code == 0, result.stderr
    assert model.read_bytes() == before and stat.S_IMODE(model.stat().st_mode) == 0o644
    assert (tmp_path / "m.converted.onnx").exists()


@pytest.mark.parametrize("option", ["--json", "--csv", "--markdown"])
def test_validate_report_onto_a_model_is_refused(cli_runner, tmp_path, artefacts, option):
    model = _onnx_copy(tmp_path, artefacts)
    before = model.read_bytes()
    result = cli_runner.invoke(cli, ["validate", str(model), "--limit", "10", option, str(model)])
    _assert_refused(result, "also an input")
    assert model.read_bytes() == before


def test_bench_plot_onto_a_model_is_refused(cli_runner, tmp_path, artefacts):
    model = _onnx_copy(tmp_path, artefacts)
    result = cli_runner.invoke(cli, ["bench", str(model), "--runs", "1", "--plot", str(model)])
    _assert_refused(result, "also an input")


def test_new_files_get_the_usual_mode_and_replaced_files_keep_theirs(cli_runner, tmp_path,
                                                                      artefacts):
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.onnx"
        assert cli_runner.invoke(cli, ["convert", str(artefacts["onnx"]), "--to", "onnx",
                                       "-o", str(fresh)]).exit_code == 0
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
        kept = tmp_path / "kept.onnx"
        kept.write_bytes(b"old")
        kept.chmod(0o640)
        assert cli_runner.invoke(cli, ["convert", str(artefacts["onnx"]), "--to", "onnx",
                                       "-o", str(kept)]).exit_code == 0
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_bytes() != b"old"
    finally:
        os.umask(old)


# -- bounded memory: a catalogue run as real processes under RLIMIT_AS ---------------------------
MEMORY_LIMIT = 2 << 30  # a blow-up fails the test, not the machine


def _gzip_bomb(tmp_path: Path) -> Path:
    """An IDX header for 10,000 28x28 images over 200 MB of zeros: 200 KB on disk."""
    import gzip
    import struct

    folder = tmp_path / "bomb"
    folder.mkdir()
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb", compresslevel=9) as out:
        out.write(struct.pack(">4B3I", 0, 0, 8, 3, 10000, 28, 28))
        for _ in range(200):
            out.write(bytes(1 << 20))
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as out:
        out.write(struct.pack(">4BI", 0, 0, 8, 1, 10000) + bytes(10000))
    return folder


def _npz_declaring_1e9_images(tmp_path: Path) -> Path:
    import numpy as np

    path = tmp_path / "huge.npz"
    np.savez(path, x=np.zeros((4, 28, 28), np.uint8), y=np.zeros(4, np.int64))
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    header = members["x.npy"]
    members["x.npy"] = header.replace(b"(4, 28, 28)", b"(1000000000, 28, 28)")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _npz_zip_bomb(tmp_path: Path) -> Path:
    import numpy as np

    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((400_000, 28, 28), np.uint8), y=np.zeros(4, np.int64))
    return path


def _pt_zip_bomb(tmp_path: Path) -> Path:
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data/0", bytes(300 << 20))
        archive.writestr("bomb/data.pkl", b"\x80\x02}q\x00.")
    return path


def _png_bomb(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "images" / "0"
    folder.mkdir(parents=True)
    Image.new("L", (20000, 20000)).save(folder / "big.png", optimize=True)
    return tmp_path / "images"


def _onnx_with(tmp_path: Path, artefacts, edit) -> Path:
    import onnx

    model = onnx.load(artefacts["onnx"])
    edit(model)
    path = tmp_path / "edited.onnx"
    onnx.save(model, path)
    return path


def _constant_of_shape(model) -> None:
    import numpy as np
    from onnx import helper, numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(np.array([30000, 30000]), "shape"))
    model.graph.node.append(helper.make_node("ConstantOfShape", ["shape"], ["unused"],
                                             name="big"))


def _huge_initializer(model) -> None:
    tensor = model.graph.initializer[0]
    del tensor.dims[:]
    tensor.dims.extend([1000000, 1000000])


def _no_graph_input(model) -> None:
    import numpy as np
    from onnx import numpy_helper

    name = model.graph.input[0].name
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 1, 28, 28), np.float32),
                                                           name))


def _broken_tflite(tmp_path: Path, artefacts, edit) -> Path:
    import flatbuffers

    from edgecnn.converters.tflite_schema import schema

    fb = schema()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(artefacts["tflite_int8"].read_bytes(), 0))
    edit(model)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "broken.tflite"
    path.write_bytes(bytes(builder.Output()))
    return path


def _opcode_out_of_range(model) -> None:
    model.subgraphs[0].operators[0].opcodeIndex = 99


def _no_subgraphs(model) -> None:
    model.subgraphs = []


def _metadata_out_of_range(model) -> None:
    model.metadata[0].buffer = 9999


def _model_with_card(tmp_path: Path, shape) -> Path:
    model = tmp_path / "m.pt"
    model.write_bytes(LENET.read_bytes())
    card = json.loads((LENET.parent / "lenet5.json").read_text())
    card["input"]["shape"] = shape
    (tmp_path / "m.json").write_text(json.dumps(card))
    return model


def _checkpoint_arch_list(tmp_path: Path) -> Path:
    from edgecnn import zoo

    path = tmp_path / "ckpt.pt"
    torch.save({"arch": ["lenet5"], "state_dict": zoo.build("lenet5").state_dict()}, path)
    return path


def _labels_beyond_classes(tmp_path: Path) -> Path:
    import numpy as np

    path = tmp_path / "eleven.npz"
    np.savez(path, x=np.zeros((20, 28, 28), np.uint8), y=np.full(20, 11))
    return path


def _relu_model(tmp_path: Path, name: str, shape, opset: int = 18, fp16: bool = False,
                cycle: bool = False) -> Path:
    import onnx
    from onnx import TensorProto, helper

    dtype = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    nodes = ([helper.make_node("Add", ["x", "y"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
             if cycle else [helper.make_node("Relu", ["x"], ["y"])])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, shape)],
                              [helper.make_tensor_value_info("y", dtype, shape)])
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def _int8_convert(path: Path) -> list[str]:
    return ["convert", str(path), "--to", "onnx", "--int8", "-o", str(path.with_name("o.onnx"))]


CATALOGUE = {  # name -> (make files -> CLI args, what the one line must name)
    "int8 of a 3-D input": (lambda t, a: _int8_convert(_relu_model(t, "in3d", [1, 28, 28])),
                            "4-D image input"),
    "int8 of a 5-D input": (lambda t, a: _int8_convert(_relu_model(t, "in5d", [1, 1, 1, 28, 28])),
                            "4-D image input"),
    "int8 of opset 30": (lambda t, a: _int8_convert(_relu_model(t, "op30", [1, 1, 28, 28], 30)),
                         "opset 30"),
    "int8 of a float16 input": (lambda t, a: _int8_convert(
        _relu_model(t, "fp16", [1, 1, 28, 28], fp16=True)), "float16"),
    "int8 of a cyclic graph": (lambda t, a: _int8_convert(
        _relu_model(t, "cycle", [1, 1, 28, 28], cycle=True)), "not acyclic"),
    "TFLite opcode index out of range": (
        lambda t, a: ["bench", str(_broken_tflite(t, a, _opcode_out_of_range)), "--runs", "1"],
        "opcode 99"),
    "TFLite without subgraphs": (
        lambda t, a: ["inspect", str(_broken_tflite(t, a, _no_subgraphs))], "no subgraphs"),
    "TFLite metadata buffer out of range": (
        lambda t, a: ["inspect", str(_broken_tflite(t, a, _metadata_out_of_range))],
        "metadata uses buffer"),
    'card shape "abc"': (lambda t, a: ["inspect", str(_model_with_card(t, "abc"))],
                         "model card"),
    "card shape negative": (lambda t, a: ["inspect", str(_model_with_card(t, [1, -28, 28]))],
                            "model card"),
    "card shape 10^6 x 10^6": (lambda t, a: ["inspect", str(_model_with_card(
        t, [1, 1000000, 1000000]))], "model card"),
    "checkpoint arch is a list": (lambda t, a: ["inspect", str(_checkpoint_arch_list(t))],
                                  "'arch' is a list"),
    "labels beyond the classes": (lambda t, a: ["validate", str(a["onnx"]), "--data",
                                                str(_labels_beyond_classes(t))], "classes"),
    "validate --limit -1": (lambda t, a: ["validate", str(a["onnx"]), "--limit", "-1"],
                            "--limit"),
    "convert --calib without --int8": (lambda t, a: ["convert", str(a["onnx"]), "--to", "onnx",
                                                     "--calib", str(a["onnx"]), "-o",
                                                     str(t / "o.onnx")], "--calib"),
    "train --batch-size 0": (lambda t, a: ["train", "lenet5", "--data", str(t / "none"),
                                           "--batch-size", "0", "-o", str(t / "m.pt")],
                             "--batch-size"),
    "download-mnist into a file": (lambda t, a: ["download-mnist", str(a["onnx"])],
                                   "is a file"),
    "download-mnist under /proc": (lambda t, a: ["download-mnist", "/proc/edgecnn-mnist"],
                                   "/proc/edgecnn-mnist"),
    "bench --timeout -1 (rpi)": (lambda t, a: ["bench", str(a["tflite_int8"]), "--target", "rpi",
                                               "--host", "pi@127.0.0.1", "--timeout", "-1"],
                                 "--timeout"),
    "IDX .gz bomb (validate)": (lambda t, a: ["validate", str(LENET), "--data", str(_gzip_bomb(t))],
                                "t10k-images-idx3-ubyte.gz"),
    ".npz declaring 1e9 images": (lambda t, a: ["validate", str(LENET), "--data",
                                                str(_npz_declaring_1e9_images(t)), "--limit", "10"],
                                  "huge.npz"),
    ".npz zip bomb": (lambda t, a: ["validate", str(LENET), "--data", str(_npz_zip_bomb(t)),
                                    "--limit", "10"], "bomb.npz"),
    ".pt zip bomb": (lambda t, a: ["inspect", str(_pt_zip_bomb(t))], "zip bomb"),
    "20000x20000 PNG": (lambda t, a: ["validate", str(LENET), "--data", str(_png_bomb(t))],
                        "big.png"),
    "ConstantOfShape 30000^2": (lambda t, a: ["bench", str(_onnx_with(t, a, _constant_of_shape)),
                                              "--runs", "1"], "ConstantOfShape"),
    "initializer declaring 10^12": (lambda t, a: ["bench", str(_onnx_with(t, a, _huge_initializer)),
                                                  "--runs", "1"], "declares dims"),
    "ONNX without a graph input": (lambda t, a: ["bench", str(_onnx_with(t, a, _no_graph_input)),
                                                 "--runs", "1"], "no input"),
    "bench --batch 1000000": (lambda t, a: ["bench", str(a["onnx"]), "--batch", "1000000"],
                              "--batch"),
    "bench --runs 10^9": (lambda t, a: ["bench", str(a["onnx"]), "--runs", "1000000000"],
                          "--runs"),
    "bench --min-time > --max-time": (lambda t, a: ["bench", str(a["onnx"]), "--min-time", "10",
                                                     "--max-time", "1"], "--max-time"),
    "bench --threads -3": (lambda t, a: ["bench", str(a["onnx"]), "--threads", "-3"], "--threads"),
    "validate --max-drop nan": (lambda t, a: ["validate", str(a["onnx"]), "--max-drop", "nan"],
                                "--max-drop"),
}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_hostile_catalogue(tmp_path, artefacts, case):
    import resource
    import subprocess
    import sys

    make, needle = CATALOGUE[case]
    args = make(tmp_path, artefacts)
    inputs = {p: (p.read_bytes() if p.is_file() else None, p.stat().st_mode)
              for p in map(Path, args) if p.exists()}

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    done = subprocess.run([sys.executable, "-m", "edgecnn", *args], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit_memory, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert needle in lines[0], lines[0]
    for path, (data, mode) in inputs.items():
        assert path.stat().st_mode == mode and (data is None or path.read_bytes() == data)
    assert not [p for p in tmp_path.rglob("*.part")]


def test_plot_without_matplotlib_is_refused_before_any_work(cli_runner, tmp_path, artefacts,
                                                           monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = cli_runner.invoke(cli, ["bench", str(artefacts["onnx"]), "--plot",
                                     str(tmp_path / "p.png")])
    _assert_refused(result, "edgecnn[plot]")


def test_convert_of_a_broken_onnx_graph_writes_nothing(cli_runner, tmp_path, artefacts):
    import onnx

    model = onnx.load(artefacts["onnx"])
    model.graph.node[0].input[0] = "missing_tensor"
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    out = tmp_path / "out.onnx"
    result = cli_runner.invoke(cli, ["convert", str(broken), "--to", "onnx", "-o", str(out)])
    _assert_refused(result, "broken.onnx")
    assert not out.exists()


def test_sigterm_mid_conversion_leaves_no_temporary_files(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "out.tflite"
    proc = subprocess.Popen([sys.executable, "-m", "edgecnn", "convert", str(LENET), "--to",
                             "tflite", "--int8", "-o", str(out)],
                            env={**os.environ, "TMPDIR": str(scratch)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while (not list(scratch.glob("edgecnn-*")) and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.02)  # until the conversion has made its first temporary directory
    assert proc.poll() is None, "the conversion ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    assert not list(scratch.glob("edgecnn-*")) and not out.exists()  # torch's caches may stay
    assert not list(tmp_path.glob("*.part"))


# -- hostile input, round two: errors named in one line -------------------------------------
def test_a_card_nested_thousands_deep_is_named(cli_runner, tmp_path):
    model = tmp_path / "lenet5.pt"
    model.write_bytes(LENET.read_bytes())
    (tmp_path / "lenet5.json").write_text("[" * 100_000 + "]" * 100_000)
    result = cli_runner.invoke(cli, ["inspect", str(model)])
    _assert_refused(result, "nested too deeply")


def test_an_npz_with_a_bad_crc_is_named(cli_runner, tmp_path):
    import numpy as np

    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 28, 28), np.uint8), y=np.zeros(4, np.int64))
    raw = bytearray(data.read_bytes())
    raw[200] ^= 0xFF  # inside the first member's stored array: its CRC-32 no longer matches
    data.write_bytes(bytes(raw))
    result = cli_runner.invoke(cli, ["validate", str(LENET), "--data", str(data)])
    _assert_refused(result, "not a readable .npz archive", "re-save it with np.savez")


@pytest.mark.parametrize("name, needle", [("-", "never to standard output"),
                                          ("x" * 300 + ".onnx", "longer than this file system")])
def test_output_names_no_file_can_have_are_refused(cli_runner, tmp_path, monkeypatch, name,
                                                   needle):
    monkeypatch.chdir(tmp_path)
    result = cli_runner.invoke(cli, ["convert", "lenet5", "--to", "onnx", "-o", name])
    _assert_refused(result, needle)
    assert list(tmp_path.iterdir()) == []


def test_a_card_field_of_the_wrong_type_is_named(cli_runner, tmp_path):
    model = tmp_path / "lenet5.pt"
    model.write_bytes(LENET.read_bytes())
    card = json.loads((LENET.parent / "lenet5.json").read_text())
    card["sha256"] = 12345
    (tmp_path / "lenet5.json").write_text(json.dumps(card))
    result = cli_runner.invoke(cli, ["inspect", str(model)])
    _assert_refused(result, "'sha256' must be str or null, not int")


def test_per_axis_scales_along_an_axis_the_weight_lacks_are_named(cli_runner, tmp_path,
                                                                    artefacts):
    import onnx

    model = onnx.load(artefacts["onnx_int8"])
    weight_dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear"
                     and any(i.name == n.input[0] for i in model.graph.initializer)
                     and any(a.name == "axis" for a in n.attribute) or (
                         n.op_type == "DequantizeLinear"
                         and n.input[0].endswith("_quantized")))
    for attribute in weight_dq.attribute:
        if attribute.name == "axis":
            attribute.i = 9
            break
    else:
        weight_dq.attribute.append(onnx.helper.make_attribute("axis", 9))
    bad = tmp_path / "axis9.onnx"
    onnx.save(model, bad)
    result = cli_runner.invoke(cli, ["convert", str(bad), "--to", "tflite", "--int8",
                                     "-o", str(tmp_path / "x.tflite")])
    _assert_refused(result, "along axis 9", "re-quantise the model")
