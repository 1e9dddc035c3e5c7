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
    from edgecnn.targets.ssh import SSHClient, SSHConfig

    from edgecnn.errors import RemoteError

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
