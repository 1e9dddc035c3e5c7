"""`edgecnn bench` on the host CPU, CUDA's refusal without a GPU, and the Pi over a real sshd."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgecnn.cli import cli
from edgecnn.targets.support import runner
from tests.conftest import _free_port

STAT_FIELDS = {"mean_us", "std_us", "p50_us", "p90_us", "p99_us", "min_us", "max_us",
               "throughput_ips"}


def _bench_json(cli_runner, tmp_path, args):
    out = tmp_path / "bench.json"
    result = cli_runner.invoke(cli, ["bench", *args, "--runs", "50", "--min-time", "0.05",
                                     "--warmup", "5", "--json", str(out)])
    return result, (json.loads(out.read_text()) if out.exists() else None)


def test_cpu_bench_reports_every_runtime_with_stats(cli_runner, tmp_path, artefacts):
    plot, csv_path = tmp_path / "lat.png", tmp_path / "b.csv"
    result, report = _bench_json(cli_runner, tmp_path, [
        str(artefacts["tflite"]), str(artefacts["tflite_int8"]), str(artefacts["onnx_int8"]),
        "--plot", str(plot), "--csv", str(csv_path)])
    assert result.exit_code == 0, result.output
    runtimes = [(Path(r["model"]).suffix, r["runtime"]) for r in report["results"]]
    assert (".tflite", "litert") in runtimes and (".onnx", "onnxruntime") in runtimes
    first_p50 = report["results"][0]["stats"]["p50_us"]
    for r in report["results"]:
        assert STAT_FIELDS <= set(r["stats"]) and r["stats"]["runs"] >= 50
        # every statistic recomputed from the raw samples the report carries
        samples = np.asarray(r["samples_us"])
        assert len(samples) == r["stats"]["runs"]
        assert r["stats"]["p50_us"] == pytest.approx(np.median(samples))
        assert r["stats"]["p99_us"] == pytest.approx(np.percentile(samples, 99))
        assert r["stats"]["min_us"] == pytest.approx(samples.min())
        assert r["stats"]["throughput_ips"] == pytest.approx(r["batch"] * 1e6 / samples.mean())
        assert r["p50_ratio"] == pytest.approx(r["stats"]["p50_us"] / first_p50, rel=1e-3)
        model = next(a for a in artefacts.values() if a.name == r["model"])
        assert r["file_size_kib"] == pytest.approx(model.stat().st_size / 1024)
        assert r["peak_rss_mb"] > 0 and r["load_ms"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert csv_path.read_text().startswith("model,")


def test_a_fixed_batch_model_is_benched_at_its_batch(cli_runner, tmp_path):
    """A batch-1 torch.export program (what most people write) and the ONNX file it converts
    to: benched at batch 1 by default; another --batch is one line, exit 2."""
    import torch

    from edgecnn import zoo

    torch.manual_seed(0)
    module = zoo.build("lenet5").eval()
    pt2 = tmp_path / "mine.pt2"
    torch.export.save(torch.export.export(module, (torch.zeros(1, 1, 28, 28),)), pt2)
    onnx_file = tmp_path / "mine.onnx"
    assert cli_runner.invoke(cli, ["convert", str(pt2), "--to", "onnx", "-o",
                                   str(onnx_file)]).exit_code == 0
    result, report = _bench_json(cli_runner, tmp_path, [str(pt2), str(onnx_file)])
    assert result.exit_code == 0, result.output
    assert {r["batch"] for r in report["results"]} == {1}
    for model in (pt2, onnx_file):
        refused = cli_runner.invoke(cli, ["bench", str(model), "--batch", "8"])
        assert refused.exit_code == 2
        assert refused.output.strip().splitlines() == [
            f"edgecnn: error: {model}: exported for a fixed batch of 1; bench it with --batch 1 "
            "(or leave --batch out), or re-export it with a free batch"]


def test_latency_statistics_by_hand():
    """Four runs of 1, 2, 3 and 4 µs at batch 2: mean 2.5, sample sd sqrt(5/3), median 2.5,
    p90 by linear interpolation 3.7, 800,000 images per second."""
    stats = runner.latency_stats([1e-6, 2e-6, 3e-6, 4e-6], batch=2)
    assert stats["mean_us"] == pytest.approx(2.5) and stats["p50_us"] == pytest.approx(2.5)
    assert stats["std_us"] == pytest.approx((5 / 3) ** 0.5)
    assert stats["p90_us"] == pytest.approx(3.7) and stats["p99_us"] == pytest.approx(3.97)
    assert (stats["min_us"], stats["max_us"], stats["runs"]) == (pytest.approx(1.0),
                                                                 pytest.approx(4.0), 4)
    assert stats["throughput_ips"] == pytest.approx(800_000)


def test_latency_statistics_of_one_and_two_runs():
    """One run has no spread to estimate (sd 0); two runs of 1 and 3 µs: sd sqrt(2)."""
    assert runner.latency_stats([2e-6], batch=1)["std_us"] == 0.0
    assert runner.latency_stats([1e-6, 3e-6], batch=1)["std_us"] == pytest.approx(2 ** 0.5)


def test_measure_honours_min_time_and_times_each_run():
    samples = runner.measure(lambda: time.sleep(0.005), warmup=0, runs=1, min_time=0.1)
    assert sum(samples) >= 0.09 and len(samples) >= 10
    assert all(0.004 <= s < 0.5 for s in samples)  # each sample is one invoke's own duration


def test_measure_stops_at_max_time_and_takes_at_least_runs():
    calls = []
    samples = runner.measure(lambda: calls.append(time.sleep(0.01)), warmup=2, runs=5,
                             min_time=0.0)
    assert len(samples) == 5 and len(calls) == 7  # 2 warm-up + 5 timed
    started = time.perf_counter()
    samples = runner.measure(lambda: time.sleep(0.01), warmup=1000, runs=10**9, min_time=0.0,
                             max_time=0.2)
    assert time.perf_counter() - started < 2.0 and len(samples) >= 1


def test_measure_reads_after_each_run_outside_its_time():
    """How the GPU rows read their CUDA events: once per timed run, not counted in it."""
    reads = []
    samples = runner.measure(lambda: time.sleep(0.001), warmup=3, runs=5, min_time=0.0,
                             after=lambda: reads.append(time.sleep(0.1)))
    assert len(reads) == len(samples) == 5
    assert max(samples) < 0.09  # 1 ms invokes; each 100 ms read falls outside


def test_cuda_without_a_device_exits_2_with_one_line(cli_runner, artefacts):
    result = cli_runner.invoke(cli, ["bench", str(artefacts["onnx"]), "--target", "cuda"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "cuda" in result.stderr


# -- a real OpenSSH server on loopback ------------------------------------------------------
def _ssh_args(sshd, **overrides):
    base = sshd["base"]
    values = {"--host": "root@127.0.0.1", "--port": str(sshd["port"]),
              "--identity": str(base / "client_key"), "--known-hosts": str(base / "known_hosts"),
              "--remote-python": sys.executable, "--timeout": "20", **overrides}
    args = ["--target", "rpi"]
    for key, value in values.items():
        args += [key, value]
    return args


def _leftover_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("edgecnn.*")}


def test_rpi_over_ssh_returns_the_cpu_fields(cli_runner, tmp_path, sshd, artefacts):
    before = _leftover_dirs()
    weird = tmp_path / "my model; $(touch PWNED) 'q'.tflite"
    shutil.copy(artefacts["tflite_int8"], weird)
    result, report = _bench_json(cli_runner, tmp_path, [str(weird), *_ssh_args(sshd)])
    assert result.exit_code == 0, result.output + result.stderr
    runtimes = {r["runtime"] for r in report["results"]}
    assert runtimes == {"litert", "tflite-runtime"}
    for r in report["results"]:
        assert STAT_FIELDS <= set(r["stats"]) and r["device"]["machine"]
        assert r["device"]["host"] == "root@127.0.0.1" and "governor" in r["device"]
    assert not list(Path.home().glob("PWNED")) and not Path("PWNED").exists()
    assert _leftover_dirs() == before


class _SilentServer:
    """Accepts TCP connections and never speaks: an SSH handshake that times out."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self):
        try:
            while True:
                self.conns.append(self.sock.accept()[0])
        except OSError:
            pass

    def __exit__(self, *exc):
        self.sock.close()
        for c in self.conns:
            c.close()


def _bad_cases(sshd, tmp_path, artefacts):
    base = sshd["base"]
    nopython_env = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(nopython_env)], check=True)
    too_new = tmp_path / "too_new.tflite"
    _write_future_op_version(artefacts["tflite_int8"], too_new)
    return {
        "refused": ({"--port": str(_free_port())}, "connection refused", None),
        "unreachable": ({"--host": "root@no-such-host.invalid"}, "unreachable", None),
        "auth": ({"--identity": str(base / "stranger_key")}, "authentication failed", None),
        "host key": ({"--known-hosts": str(base / "empty_known_hosts")}, "host key", None),
        "no python": ({"--remote-python": "/nonexistent/python3"}, "no Python", None),
        "no runtime": ({"--remote-python": str(nopython_env / "bin" / "python")},
                       "no TFLite runtime", None),
        "op version": ({}, "cannot run the model", too_new),
    }


def _write_future_op_version(src: Path, dst: Path) -> None:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(src.read_bytes(), 0))
    model.operatorCodes[0].version = 99
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))


@pytest.mark.parametrize("case", ["refused", "unreachable", "auth", "host key", "no python",
                                  "no runtime", "op version"])
def test_rpi_bad_cases_exit_2_naming_host_and_problem(cli_runner, tmp_path, sshd, artefacts,
                                                      case):
    before = _leftover_dirs()
    overrides, needle, model = _bad_cases(sshd, tmp_path, artefacts)[case]
    started = time.monotonic()
    result = cli_runner.invoke(cli, ["bench", str(model or artefacts["tflite_int8"]),
                                     *_ssh_args(sshd, **overrides), "--runs", "5",
                                     "--min-time", "0"])
    assert result.exit_code == 2, result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "127.0.0.1" in lines[0] or (
        case == "unreachable" and "no-such-host.invalid" in lines[0])
    assert time.monotonic() - started < 25
    assert _leftover_dirs() == before


def test_rpi_timeout_is_bounded(cli_runner, sshd, artefacts):
    with _SilentServer() as silent:
        started = time.monotonic()
        result = cli_runner.invoke(cli, ["bench", str(artefacts["tflite_int8"]),
                                         *_ssh_args(sshd, **{"--port": str(silent.port),
                                                             "--timeout": "2"})])
    assert result.exit_code == 2
    assert "timed out" in result.stderr and time.monotonic() - started < 10
