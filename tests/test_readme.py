"""The README, walked: its main job and every line of its CLI tour run as written, in a copy of
the repository, so the README can never drift from what works.

The venv/pip prefix of the README's commands is CI's own set-up (.ci/run runs it in a fresh
venv); these tests run what follows it. Lines that need what no test machine has are listed in
NOT_HERE with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
NOT_HERE = {
    "--host pi@raspberrypi.local": "needs a Raspberry Pi on the network (tests/test_bench.py "
                                   "drives the same code against a loopback sshd)",
    "edgecnn train ": "12 epochs take minutes; tests/test_zoo_and_loading.py trains for real",
    "pip install": "installation is CI's own set-up step",
}


def _main_job() -> str:
    line = next(text.strip() for text in README.splitlines()
                if "edgecnn convert" in text and "venv" in text)
    return line.split("&& mkdir -p out &&", 1)[1].strip()


def _tour() -> list[str]:
    block = README.split("## CLI tour", 1)[1].split("\n\n", 2)[1]
    return [re.sub(r"\s+#.*$", "", text.strip()) for text in block.splitlines() if text.strip()]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the repository as a user has it: models/ and the README's relative paths."""
    copy = tmp_path_factory.mktemp("checkout")
    shutil.copytree(ROOT / "models", copy / "models")
    (copy / "out").mkdir()
    shared, beside = ROOT.parent / "shared", copy.parent / "shared"
    if shared.exists() and not beside.exists():  # the tour reads ../shared/data/mnist
        beside.symlink_to(shared)
    return copy


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(["bash", "-c", f"set -euo pipefail; {command}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_main_job_runs_as_written(checkout):
    done = _run(_main_job(), checkout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "qdq-reference" in done.stdout


def test_cli_tour_runs_line_by_line(checkout):
    ran = []
    for line in _tour():
        if any(marker in line for marker in NOT_HERE):
            continue
        done = _run(line, checkout)
        assert done.returncode == 0, f"{line}\n{done.stdout[-1500:]}{done.stderr[-1500:]}"
        assert "Traceback" not in done.stderr, line
        ran.append(line)
    assert len(ran) >= 8 and (checkout / "out" / "latency.png").exists()


def test_python_api_block_runs_as_written(checkout):
    """The README's Python API section, dedented and run as one script in the user's copy."""
    section = README.split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = "\n".join(line[4:] for line in section.splitlines()
                     if line.startswith("    ") or not line.strip())
    script = checkout / "readme_api.py"
    script.write_text(code.replace("runs=200", "runs=20"))  # the same call, a shorter run
    done = _run(f"{sys.executable} {script}", checkout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ConvertResult" in done.stdout and "int8 vs fp32" in done.stdout
    assert (checkout / "out" / "net_int8.tflite").exists()
