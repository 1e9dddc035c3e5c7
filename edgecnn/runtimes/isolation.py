"""Every TFLite file runs once in a child process before an interpreter loads it in-process.

The verifier (:mod:`edgecnn.files.tflite_verify`) refuses malformed structure, but a kernel can still
crash on a file it passes: tflite-runtime 2.14 dies of SIGFPE on a CONV_2D of stride 0 (LiteRT
refuses it cleanly), and tflite-runtime's arena planner crashes on some graphs only once they
are resized to a larger batch. In-process, such a crash kills edgecnn without a word, or
corrupts its memory and lets it go on. So, as fast tools do, the first time a process is about
to load a file (at each input shape it will use, with the session's options) a child process
runs :func:`edgecnn.targets.support.runner.check_tflite`: load, allocate, invoke once on zeros, exit. A
crash or a hang there becomes one line and exit 2; then the file runs in-process as before, so
bench's timed loop has no IPC in it. The child's address space is capped, its core dumps are
off, its stdout and stderr never reach the user, and it is killed after a timeout.

The children are forked by a small fork server (``runner.py --serve``, started with
``sys.executable`` at the first probe, never a fork of this process, which may hold onnxruntime
or torch threads): it has numpy and the runtimes imported and runs no interpreter itself, so
each probe is a fresh address space for about 10 ms (LeNet-5) instead of a Python start-up of
0.15-0.35 s. Where it cannot run (no ``fork``), each probe starts a fresh Python.

Which files: all of them, edgecnn's own included. edgecnn's files carry an ``edgecnn_card``
metadata entry, but anyone can write one; and a file this process converted is only as sound
as the ONNX file it came from, which may be hostile too, so not even those skip it. Probes are remembered for the life of the process
by the file's sha256 (hashed once per path, size, mtime, ctime and inode), the runtime, its
options and the input shape.

Not covered: a file rewritten between its probe and its in-process load (the probe vouches for
the bytes it hashed); kernels that crash only on particular input values, not on zeros.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from edgecnn.errors import BadInputError

# a probe loads, allocates and invokes once: minutes only for a huge model at a huge batch
PROBE_TIMEOUT_S = float(os.environ.get("EDGECNN_PROBE_TIMEOUT_S", 300))
# address space of the child: Python, numpy and a runtime take about 1 GiB of it; the rest is
# the model (mapped, then packed by XNNPACK) and its activations
PROBE_MEMORY_BYTES = int(os.environ.get("EDGECNN_PROBE_MEMORY_BYTES", 6 << 30))
MODULE_RUNTIMES = {"ai_edge_litert.interpreter": "litert",
                   "tflite_runtime.interpreter": "tflite-runtime"}

_digests: dict[tuple[Any, ...], str] = {}
_probed: set[tuple[Any, ...]] = set()


def probe_tflite(path: Path, runtime: str, shape: list[int] | tuple[int, ...] | None = None,
                 *, threads: int | None = None, reference_kernels: bool = False,
                 preserve_all_tensors: bool = False, arena_size: int | None = None) -> None:
    """Refuse ``path`` in one line if ``runtime`` (litert, tflite-runtime, tflite-micro)
    crashes or hangs loading it, allocating it at ``shape`` (its own when None) and invoking
    it once, in a child process. The file is verified first (cheap, on the mapped file)."""
    from edgecnn.files.tflite_verify import verify_tflite
    from edgecnn.targets.support import runner

    path = Path(path)
    key = (_digest(path), runtime, tuple(int(d) for d in shape) if shape else None, threads,
           reference_kernels, preserve_all_tensors, arena_size)
    if key in _probed:
        return
    verify_tflite(path)
    limit = PROBE_MEMORY_BYTES + 2 * path.stat().st_size
    report = _check({"path": str(path), "runtime": runtime,
                     "shape": [int(d) for d in shape] if shape else None, "threads": threads,
                     "reference_kernels": reference_kernels,
                     "preserve_all_tensors": preserve_all_tensors, "arena_size": arena_size,
                     "memory_limit": limit, "timeout": PROBE_TIMEOUT_S})
    crashed = runner.crash_message(runtime, report)
    if crashed:
        raise BadInputError(f"{path}: {crashed}: re-convert the model from its source")
    if report.get("memory"):
        raise BadInputError(f"{path}: {runtime} needs more than {limit / (1 << 30):.1f} GiB of "
                            f"address space to run it once{_at(shape)}; raise "
                            "EDGECNN_PROBE_MEMORY_BYTES if the model is that large")
    _probed.add(key)  # ran, or raised a clean error that the in-process session reports


def _check(request: dict[str, Any]) -> dict[str, Any]:
    """:func:`edgecnn.targets.support.runner.check_tflite` in a child forked by the fork server, or in
    a fresh Python where there is no fork server."""
    from edgecnn.targets.support import runner

    report = _SERVER.check(request) if hasattr(os, "fork") else None
    if report is not None:
        return report
    request = dict(request)
    path, runtime = request.pop("path"), request.pop("runtime")
    return runner.check_in_child(path, runtime, **request)


class _ForkServer:
    """``runner.py --serve`` (:func:`edgecnn.targets.support.runner.serve_checks`), started by the first
    probe and kept for the life of the process: it has numpy and the runtimes imported, so a
    probe is a fork, a load and an invoke (milliseconds), not a Python start-up. It ends when
    this process closes its input (at exit, or when this process dies)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def check(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The report, or None when the server cannot be started or dies twice."""
        with self.lock:
            for _ in range(2):  # a server killed from outside is started again, once
                process = self.process or self._start()
                if process is None:
                    return None
                line = self._ask(process, request)
                if line is None:
                    return {"timeout": request["timeout"]}
                try:
                    report = json.loads(line) if line else None
                except ValueError:
                    report = None
                if isinstance(report, dict):
                    return report
                self.close()
        return None

    def _ask(self, process: subprocess.Popen[bytes], request: dict[str, Any]) -> bytes | None:
        """The server's answer line (b"" when it died); None when it did not answer in time."""
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.flush()
        except OSError:
            return b""
        ready, _, _ = select.select([process.stdout], [], [], request["timeout"] + 30)
        if not ready:  # the child's own alarm failed to end it: stop the server
            self.close()
            return None
        return process.stdout.readline()

    def _start(self) -> subprocess.Popen[bytes] | None:
        from edgecnn.targets.support import runner

        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", runner._CHILD, runner.__file__, "--serve"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=env)
        except OSError:
            return None
        atexit.register(self.close)
        return self.process

    def close(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:  # unsent input to a dead server
                    pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_SERVER = _ForkServer()


def runtime_of(module: str) -> str:
    """The runtime name of an interpreter module (``ai_edge_litert.interpreter``: litert)."""
    return MODULE_RUNTIMES.get(module, module)


def _at(shape: list[int] | tuple[int, ...] | None) -> str:
    return f" at input {list(shape)}" if shape else ""


def _digest(path: Path) -> str:
    """The file's sha256, hashed once per (path, size, mtime, ctime, inode) in this process."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read it ({exc.strerror})") from None
    identity = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
                stat.st_ino, stat.st_dev)
    if identity not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _digests[identity] = digest.hexdigest()
    return _digests[identity]
