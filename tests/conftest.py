"""Shared fixtures: real MNIST from ../shared/data/mnist, the shipped model, converted artefacts.

Conversions are session-scoped so each artefact is built once per test run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecnn.files.data import SHIPPED_TEST_SET, load_dataset

ROOT = Path(__file__).resolve().parent.parent
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
LENET = ROOT / "models" / "lenet5.pt"


ON_CI = os.environ.get("CI") == "true"


def unavailable(reason: str) -> None:
    """Skip locally with ``reason``; on CI (CI=true) fail, so a whole area never silently
    goes untested there."""
    if ON_CI:
        pytest.fail(f"CI cannot run this area: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_mnist() -> Path:
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        unavailable(f"full MNIST not found at {SHARED_MNIST} (the shared data folder)")
    return SHARED_MNIST


@pytest.fixture(scope="session")
def test_set():
    return load_dataset(SHIPPED_TEST_SET)


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory) -> dict[str, Path]:
    """LeNet-5 converted to every format once: onnx, onnx int8, tflite, tflite int8."""
    from edgecnn.api import ConvertConfig, convert

    out = tmp_path_factory.mktemp("artefacts")
    specs = {"onnx": ConvertConfig("onnx"), "onnx_int8": ConvertConfig("onnx", int8=True),
             "tflite": ConvertConfig("tflite"),
             "tflite_int8": ConvertConfig("tflite", int8=True)}
    suffix = {"onnx": ".onnx", "tflite": ".tflite"}
    paths = {}
    for name, config in specs.items():
        paths[name] = convert(LENET, out / f"lenet5_{name}{suffix[config.to]}", config).path
    return paths


@pytest.fixture
def cli_runner() -> CliRunner:
    return CliRunner()


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


# -- a real OpenSSH server on loopback (the remote-Pi tests) ---------------------------------
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if SSHD is None:
        unavailable("no OpenSSH server (sshd): apt-get install openssh-server")
    if os.geteuid() != 0:
        unavailable("the loopback sshd fixture logs in as the current user and needs root")
    base = tmp_path_factory.mktemp("sshd")
    _keygen(base / "host_key")
    _keygen(base / "client_key")
    _keygen(base / "stranger_key")
    (base / "authorized_keys").write_text((base / "client_key.pub").read_text())
    port = _free_port()
    config = base / "sshd_config"
    config.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {base / 'host_key'}
AuthorizedKeysFile {base / 'authorized_keys'}
PidFile {base / 'sshd.pid'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel ERROR
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    host_pub = (base / "host_key.pub").read_text().split()
    (base / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (base / "empty_known_hosts").write_text("")
    yield {"port": port, "base": base, "user": os.environ.get("USER", "root")}
    proc.terminate()
    proc.wait(timeout=10)


# -- CUDA: tests marked ``gpu`` run only where torch sees a GPU ------------------------------
def cuda_unavailable_reason() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    build = "a CPU-only torch build" if torch.version.cuda is None else "no GPU visible"
    return f"needs a CUDA GPU: torch.cuda.is_available() is False ({build}, torch {torch.__version__})"


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    reason = cuda_unavailable_reason() if gpu_items else None
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))
