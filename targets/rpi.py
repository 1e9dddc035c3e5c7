"""ARM boards such as the Raspberry Pi: in-process on the board, or remotely over SSH.

Remotely, a temporary directory is made on the device, the model and the self-contained
:mod:`runner` are copied in, the runner prints JSON, and the directory is removed whatever
happened. The device needs Python, numpy and ai-edge-litert or tflite-runtime (``setup``
pip-installs a runtime into a virtual environment in the remote home); never torch or edgecnn.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from edgecnn.errors import RemoteError, TargetUnavailableError
from edgecnn.runtimes.sessions import match_runtimes, named_exactly
from edgecnn.targets.base import BenchConfig, BenchResult, Target
from edgecnn.targets.support import runner
from edgecnn.targets.support.ssh import SSHClient, SSHConfig, refuse_option_like

ARM_MACHINES = {"aarch64", "arm64", "armv7l", "armv6l"}
RUNNER_SOURCE = Path(runner.__file__)
PIP_RUNTIMES = ("ai-edge-litert", "tflite-runtime")
SETUP_VENV = ".cache/edgecnn/venv"  # relative: SSH commands start in the remote home


class RaspberryPiTarget(Target):
    name = "rpi"

    def __init__(self, host: str | None = None, port: int | None = None,
                 identity: Path | None = None, known_hosts: Path | None = None,
                 ssh_config: Path | None = None, timeout: float = 60.0, setup: bool = False,
                 remote_python: str = "python3") -> None:
        super().__init__()
        self.remote = None
        if host:
            self.remote = SSHClient(SSHConfig(host, port, identity, known_hosts, ssh_config,
                                              timeout))
        elif platform.machine() not in ARM_MACHINES:
            raise TargetUnavailableError(
                f"rpi: this machine is {platform.machine()}, not an ARM board; pass --host "
                "user@pi to benchmark a Raspberry Pi over SSH")
        refuse_option_like("--remote-python", remote_python)
        self.setup = setup
        self.python = remote_python

    def probe(self) -> dict[str, Any]:
        if self.remote is None:
            return runner.probe()
        return self._remote_session(lambda d: self._probe(d))

    def run(self, model: Path, config: BenchConfig) -> list[BenchResult]:
        if model.suffix.lower() != ".tflite":
            raise TargetUnavailableError(f"rpi: benchmarks .tflite models; convert {model.name} "
                                         "with `edgecnn convert --to tflite`")
        if not model.is_file():
            raise TargetUnavailableError(f"{model}: no such model file")
        if self.remote is None:
            from edgecnn.targets.cpu import CPUTarget
            results = CPUTarget().run(model, config)
            for r in results:
                r.target, r.device = self.name, runner.probe()
            return results
        return self._remote_session(lambda d: self._bench(d, model, config))

    # -- remote -----------------------------------------------------------------------------
    def _remote_session(self, work: Any) -> Any:
        assert self.remote is not None
        made = self.remote.run(["mktemp", "-d", "/tmp/edgecnn.XXXXXXXX"])
        directory = made.stdout.decode().strip()
        if not directory.startswith("/tmp/edgecnn."):
            raise RemoteError(f"{self.remote.config.host}: mktemp returned {directory!r}")
        try:
            self.remote.upload(RUNNER_SOURCE.read_bytes(), f"{directory}/runner.py")
            return work(directory)
        finally:
            self.remote.run(["rm", "-rf", "--", directory], check=False)

    def _runner(self, directory: str, args: list[str], extra_time: float = 0.0) -> dict[str, Any]:
        """Run the runner remotely; it kills itself when the local side stops waiting."""
        assert self.remote is not None
        host = self.remote.config.host
        wait = self.remote.config.timeout + extra_time
        done = self.remote.run([self.python, f"{directory}/runner.py", *args, "--deadline",
                                str(wait)], check=False, timeout=wait)
        if done.returncode == 127 or (done.returncode and not done.stdout.strip()):
            err = done.stderr.decode(errors="replace").strip().splitlines()
            if done.returncode == 127 or "not found" in " ".join(err):
                raise RemoteError(f"{host}: no Python at {self.python!r}; install python3 or "
                                  "pass --remote-python")
            raise RemoteError(f"{host}: runner failed ({err[-1][:200] if err else 'no output'})")
        try:
            payload = json.loads(done.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RemoteError(f"{host}: runner printed no JSON") from None
        if "error" in payload:
            raise RemoteError(f"{host}: {payload['error']}")
        return payload

    def _probe(self, directory: str) -> dict[str, Any]:
        info = self._runner(directory, ["--probe"])
        if not info["runtimes"] and self.setup:
            self._install_runtime()
            info = self._runner(directory, ["--probe"])
        if not info["runtimes"]:
            raise RemoteError(f"{self.remote.config.host}: no TFLite runtime (ai-edge-litert or "  # type: ignore[union-attr]
                              "tflite-runtime) for that Python; pass --setup to pip-install one")
        return info

    def _install_runtime(self) -> None:
        """Make a virtual environment in the remote home (Raspberry Pi OS marks its system
        Python externally managed, PEP 668) and pip-install a runtime there; use its Python."""
        assert self.remote is not None
        host = self.remote.config.host
        made = self.remote.run([self.python, "-m", "venv", "--system-site-packages", SETUP_VENV],
                               check=False)
        if made.returncode != 0:
            raise RemoteError(f"{host}: cannot create {SETUP_VENV} with {self.python} -m venv "
                              "(install python3-venv)")
        python = f"{SETUP_VENV}/bin/python"
        for package in PIP_RUNTIMES:
            done = self.remote.run([python, "-m", "pip", "install", "--quiet", "numpy<2", package],
                                   check=False)
            if done.returncode == 0:
                self.python = python
                return
        raise RemoteError(f"{host}: pip could not install {' or '.join(PIP_RUNTIMES)} into "
                          f"{SETUP_VENV}")

    def _bench(self, directory: str, model: Path, config: BenchConfig) -> list[BenchResult]:
        assert self.remote is not None
        device = self._probe(directory)
        remote_model = f"{directory}/{model.name}"
        self.remote.upload(model.read_bytes(), remote_model)
        runtimes = (match_runtimes(config.runtime, device["runtimes"]) if config.runtime
                    else device["runtimes"])
        missing = named_exactly(config.runtime) - set(runtimes)
        if missing or not runtimes:
            absent = ", ".join(sorted(missing)) or "none of its runtimes"
            raise RemoteError(f"{self.remote.config.host}: runtime={config.runtime!r}: {absent} not "
                              f"installed there (found {', '.join(device['runtimes'])})",
                              parameters=("runtime",))
        results = []
        for runtime in runtimes:
            args = [remote_model, "--runtime", runtime, "--batch", str(config.batch),
                    "--warmup", str(config.warmup), "--runs", str(config.runs),
                    "--min-time", str(config.min_time), "--max-time", str(config.max_time)]
            if config.threads:
                args += ["--threads", str(config.threads)]
            out = self._runner(directory, args, extra_time=config.max_time)
            stats = {k: out[k] for k in ("mean_us", "std_us", "p50_us", "p90_us", "p99_us",
                                         "min_us", "max_us", "runs", "throughput_ips")}
            results.append(BenchResult(model.name, self.name, runtime, config.batch,
                                       model.stat().st_size / 1024, out["load_ms"],
                                       out["first_ms"], stats, out["peak_rss_mb"],
                                       out["samples_us"], {**device,
                                                           "host": self.remote.config.host}))
        return results


TARGET = RaspberryPiTarget

