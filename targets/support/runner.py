"""Self-contained benchmark runner: standard library + numpy + a TFLite runtime, nothing else.

Imported by the host targets for their timing loop, and copied as-is onto remote devices (the
Raspberry Pi) where neither torch nor edgecnn is installed. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Any


def latency_stats(samples_s: list[float], batch: int) -> dict[str, float]:
    """µs statistics of per-invoke latencies, and images per second."""
    import numpy as np  # imported late so that --probe works on a device without numpy

    us = np.asarray(samples_s) * 1e6
    return {"mean_us": float(us.mean()), "std_us": float(us.std(ddof=1)) if len(us) > 1 else 0.0,
            "p50_us": float(np.percentile(us, 50)), "p90_us": float(np.percentile(us, 90)),
            "p99_us": float(np.percentile(us, 99)), "min_us": float(us.min()),
            "max_us": float(us.max()), "runs": int(len(us)),
            "throughput_ips": float(batch * 1e6 / us.mean())}


def measure(invoke: Callable[[], object], warmup: int, runs: int, min_time: float,
            max_time: float = float("inf"),
            after: Callable[[], object] | None = None) -> list[float]:
    """MLPerf-style single stream: warm up, then at least ``runs`` invokes and ``min_time`` s,
    all of it stopped at ``max_time`` s (at least one timed run is always taken). ``after``
    runs after each timed invoke, outside its time (reading a GPU's event timer, say)."""
    clock = time.perf_counter
    deadline = clock() + max_time
    for _ in range(warmup):
        if clock() >= deadline:
            break
        invoke()
    samples: list[float] = []
    started = clock()
    while (len(samples) < runs or clock() - started < min_time) and (
            not samples or clock() < deadline):
        t0 = clock()
        invoke()
        samples.append(clock() - t0)
        if after is not None:
            after()
    return samples


def warm_until_steady(invoke: Callable[[], object], min_runs: int, max_time: float,
                      tolerance: float = 0.03, window_s: float = 0.05) -> int:
    """Warm up until latency stops falling: at least ``min_runs`` invokes, then windows of them
    until two windows in a row agree on the median within ``tolerance``. A GPU raises its
    clocks and cuDNN settles its algorithms only under load, so a fixed count can time a
    cold device. Stops at ``max_time`` s; returns the number of invokes run."""
    clock = time.perf_counter
    deadline = clock() + max_time
    done = 0
    for _ in range(min_runs):
        if clock() >= deadline:
            return done
        invoke()
        done += 1
    previous = None
    while clock() < deadline:
        window: list[float] = []
        started = clock()
        while (len(window) < 5 or clock() - started < window_s) and clock() < deadline:
            t0 = clock()
            invoke()
            window.append(clock() - t0)
        done += len(window)
        median = sorted(window)[len(window) // 2]
        if previous is not None and abs(median - previous) <= tolerance * previous:
            break
        previous = median
    return done


def peak_rss_mb() -> float:
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def tflite_interpreter(runtime: str, path: str, threads: int | None,
                       reference_kernels: bool = False,
                       preserve_all_tensors: bool = False) -> Any:
    """An interpreter of ``runtime`` (litert, tflite-runtime) over ``path``; the options are
    those of edgecnn's in-process sessions (builtin reference kernels, every tensor kept)."""
    if runtime == "litert":
        import ai_edge_litert.interpreter as module
    else:
        import tflite_runtime.interpreter as module
    extra: dict[str, Any] = {}
    if reference_kernels:
        extra["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_REF
    if preserve_all_tensors:
        extra["experimental_preserve_all_tensors"] = True
    return module.Interpreter(model_path=path, num_threads=threads, **extra)


# -- a first run in a child process ----------------------------------------------------------
# A malformed or hostile file can crash a kernel (tflite-runtime 2.14 dies of SIGFPE on a
# CONV_2D of stride 0). The file is first loaded, allocated and invoked once on zeros by a
# fresh Python running this file with --check, so a crash kills that child, not the caller.
# The child is started with sys.executable, never forked from a process holding threads, and
# runs this file by path without its folder on sys.path.
_CHILD = "import runpy, sys; del sys.path[0]; sys.argv = sys.argv[1:]; " \
         "runpy.run_path(sys.argv[0], run_name='__main__')"


def check_tflite(path: str, runtime: str, shape: list[int] | None = None,
                 threads: int | None = None, reference_kernels: bool = False,
                 preserve_all_tensors: bool = False, arena_size: int | None = None,
                 batch: int | None = None) -> dict[str, Any]:
    """Load ``path``, allocate it at ``shape`` (or its own shape at ``batch``, or its own
    shape) and invoke once on zeros: what the child runs. A runtime's Python exception is reported, with the stage it came
    from, as ``{"error", "stage"}``; success as ``{"ok": true}``."""
    import numpy as np

    stage = "load"
    try:
        if runtime == "tflite-micro":
            from tflite_micro import runtime as micro

            interpreter = micro.Interpreter.from_file(path, arena_size=arena_size)
            detail = interpreter.get_input_details(0)
            stage = "run"
            interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
            interpreter.invoke()
            return {"ok": True}
        interpreter = tflite_interpreter(runtime, path, threads, reference_kernels,
                                         preserve_all_tensors)
        detail = interpreter.get_input_details()[0]
        stage = "prepare"
        if batch and not shape:
            shape = [batch, *[int(d) for d in detail["shape"][1:]]]
        if shape:
            interpreter.resize_tensor_input(detail["index"], shape)
        interpreter.allocate_tensors()
        stage = "run"
        for each in interpreter.get_input_details():  # every input: none left uninitialised
            interpreter.set_tensor(each["index"], np.zeros(each["shape"], each["dtype"]))
        interpreter.invoke()
    except MemoryError:
        return {"error": "out of memory", "stage": stage, "memory": True}
    except Exception as exc:  # any Python error is a clean refusal; only a crash is not
        return {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}",
                "stage": stage}
    return {"ok": True}


def check_in_child(path: str, runtime: str, shape: list[int] | None = None,
                   threads: int | None = None, reference_kernels: bool = False,
                   preserve_all_tensors: bool = False, arena_size: int | None = None,
                   memory_limit: int | None = None, timeout: float = 300.0,
                   batch: int | None = None) -> dict[str, Any]:
    """:func:`check_tflite` in a fresh child process, its output and stderr kept from the
    user: the child's report, or ``{"crash": "SIGSEGV"}`` (a signal, or an exit status) or
    ``{"timeout": seconds}``. ``memory_limit`` caps the child's address space."""
    import subprocess

    # an emulated board's python is a wrapper script (qemu): it names itself here
    python = os.environ.get("EDGECNN_RUNNER_PYTHON") or sys.executable
    args = [python, "-c", _CHILD, os.path.abspath(__file__), path, "--check",
            "--runtime", runtime, "--deadline", str(timeout)]
    for flag, value in (("--shape", ",".join(map(str, shape or []))), ("--threads", threads),
                        ("--arena-size", arena_size), ("--memory-limit", memory_limit),
                        ("--batch", batch)):
        if value:
            args += [flag, str(value)]
    args += ["--reference-kernels"] * reference_kernels
    args += ["--preserve-all-tensors"] * preserve_all_tensors
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    if done.returncode == -getattr(signal, "SIGALRM", 0):
        return {"timeout": timeout}
    if done.returncode < 0:
        try:
            return {"crash": signal.Signals(-done.returncode).name}
        except ValueError:
            return {"crash": f"signal {-done.returncode}"}
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except ValueError:
        report = None
    if done.returncode or not isinstance(report, dict):
        return {"crash": f"exit status {done.returncode}"}
    return report


def crash_message(runtime: str, report: dict[str, Any]) -> str | None:
    """One line for a child that crashed or hung (None when it ran or raised cleanly)."""
    label = {"litert": "LiteRT", "tflite-micro": "TFLite Micro"}.get(runtime, runtime)
    if "crash" in report:
        return (f"{label} crashed ({report['crash']}) while loading and running it once in a "
                "child process; the file is malformed or hostile")
    if "timeout" in report:
        return (f"{label} did not load and run it once within {report['timeout']:g} s in a "
                "child process; the file is malformed or hostile")
    return None


def serve_checks() -> int:
    """``--serve``: a fork server for :func:`check_tflite`. It imports numpy and the runtimes
    once, then answers each JSON request line on stdin (check_tflite's arguments, plus
    ``memory_limit`` and ``timeout``) with one JSON line on stdout, from a fresh child forked
    per request: each file still meets a process of its own, at a few milliseconds instead of
    a Python start-up (0.15-0.35 s). It runs no interpreter itself and holds one thread (its
    parent sets OPENBLAS_NUM_THREADS=1), so forking it is safe; it ends at end of input. A
    runtime is imported by the first request that names it (0.1 s each)."""
    import importlib

    import numpy  # noqa: F401 - imported once, here, for every child

    modules = {"litert": "ai_edge_litert.interpreter", "tflite-micro": "tflite_micro",
               "tflite-runtime": "tflite_runtime.interpreter"}
    for line in sys.stdin:
        try:
            request = json.loads(line)
            importlib.import_module(modules.get(request.get("runtime"), "json"))
        except ImportError:
            pass  # the child says so, as a clean error
        except ValueError:
            break
        print(json.dumps(_forked_check(request)), flush=True)
    return 0


def _forked_check(request: dict[str, Any]) -> dict[str, Any]:
    """One request of :func:`serve_checks`, run and reported as :func:`check_in_child` does."""
    timeout = float(request.pop("timeout", 300.0))
    memory_limit = request.pop("memory_limit", None)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its output never reaches the server's protocol or the user
        try:
            os.close(read)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            _limit_memory(memory_limit)
            signal.alarm(max(1, math.ceil(timeout)))
            os.write(write, json.dumps(check_tflite(**request)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGALRM:
            return {"timeout": timeout}
        try:
            return {"crash": signal.Signals(number).name}
        except ValueError:
            return {"crash": f"signal {number}"}
    try:
        report = json.loads(data)
    except ValueError:
        report = None
    if os.WEXITSTATUS(status) or not isinstance(report, dict):
        return {"crash": f"exit status {os.WEXITSTATUS(status)}"}
    return report


def _shape_of(npy: str) -> list[int]:
    import numpy as np

    return [int(d) for d in np.load(npy, mmap_mode="r").shape]


def _limit_memory(limit: int | None) -> None:
    """Cap this (child) process's address space and drop core dumps: a crash is expected."""
    for kind, value in ((resource.RLIMIT_AS, limit), (resource.RLIMIT_CORE, 0)):
        if value is None:
            continue
        _, hard = resource.getrlimit(kind)
        cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (cap, hard))


def available_runtimes() -> list[str]:
    found = []
    for name, module in (("litert", "ai_edge_litert"), ("tflite-runtime", "tflite_runtime")):
        try:
            __import__(module)
            found.append(name)
        except ImportError:
            pass
    return found


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip("\0\n ")
    except OSError:
        return ""


def probe() -> dict[str, Any]:
    """What the device is: machine, Python, runtimes, board, governor, temperature."""
    info: dict[str, Any] = {"machine": platform.machine(), "python": platform.python_version(),
                            "system": platform.platform(), "cpus": os.cpu_count(),
                            "runtimes": available_runtimes(),
                            "board": _read("/proc/device-tree/model") or None,
                            "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/"
                                              "scaling_governor") or None}
    temp = _read("/sys/class/thermal/thermal_zone0/temp")
    info["temperature_c"] = int(temp) / 1000 if temp.isdigit() else None
    for key, args in (("vcgencmd_temp", "measure_temp"), ("vcgencmd_throttled", "get_throttled")):
        try:
            import subprocess
            out = subprocess.run(["vcgencmd", args], capture_output=True, text=True, timeout=5)
            info[key] = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info[key] = None
    return info


def bench_tflite(path: str, runtime: str, batch: int, threads: int | None, warmup: int,
                 runs: int, min_time: float, max_time: float = float("inf")) -> dict[str, Any]:
    import numpy as np

    t0 = time.perf_counter()
    interpreter = tflite_interpreter(runtime, path, threads)
    detail = interpreter.get_input_details()[0]
    shape = [batch, *[int(d) for d in detail["shape"][1:]]]
    interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    if detail["dtype"] == np.float32:
        data = rng.random(shape, dtype=np.float32)
    else:
        info = np.iinfo(detail["dtype"])
        data = rng.integers(info.min, info.max + 1, shape).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], data)
    t0 = time.perf_counter()
    interpreter.invoke()
    first_s = time.perf_counter() - t0
    samples = measure(interpreter.invoke, warmup, runs, min_time, max_time)
    return {"runtime": runtime, "load_ms": load_s * 1e3, "first_ms": first_s * 1e3,
            **latency_stats(samples, batch), "samples_us": [s * 1e6 for s in samples],
            "peak_rss_mb": peak_rss_mb()}


def predict_tflite(path: str, runtime: str, inputs: str, outputs: str,
                   threads: int | None) -> dict[str, Any]:
    """Run float32 inputs (laid out as the model takes them) and save float32 outputs: parity on
    the device itself. Quantised I/O is (de)quantised with the tensors' own parameters."""
    import numpy as np

    x = np.load(inputs)
    interpreter = tflite_interpreter(runtime, path, threads)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    if detail["dtype"] != np.float32:
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        x = np.clip(np.round(x / np.float32(scale)) + zero, info.min, info.max)
    interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    y = interpreter.get_tensor(out["index"])
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * np.float32(scale)
    np.save(outputs, y.astype(np.float32))
    return {"runtime": runtime, "outputs": outputs, "shape": list(y.shape)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?")
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--runtime")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--max-time", type=float, default=300.0)
    parser.add_argument("--deadline", type=float, help="Kill this process after SECONDS, "
                        "whatever it is doing: a remote run never outlives the caller's wait.")
    parser.add_argument("--predict", nargs=2, metavar=("INPUTS.npy", "OUTPUTS.npy"),
                        help="Run these inputs instead of benchmarking.")
    parser.add_argument("--check", action="store_true", help="Load, allocate and invoke once "
                        "on zeros, and report (the child process of check_in_child).")
    parser.add_argument("--shape", help="With --check: the input shape, comma-separated.")
    parser.add_argument("--serve", action="store_true", help="Answer --check requests, one "
                        "JSON line each on stdin, each in a forked child (serve_checks).")
    parser.add_argument("--reference-kernels", action="store_true")
    parser.add_argument("--preserve-all-tensors", action="store_true")
    parser.add_argument("--arena-size", type=int)
    parser.add_argument("--memory-limit", type=int)
    args = parser.parse_args(argv)
    if args.deadline and hasattr(signal, "SIGALRM"):
        signal.alarm(max(1, math.ceil(args.deadline)))  # default action: terminate
    if args.serve:
        return serve_checks()
    if args.probe or not args.model:
        print(json.dumps(probe()))
        return 0
    if args.check:
        _limit_memory(args.memory_limit)
        shape = [int(d) for d in args.shape.split(",")] if args.shape else None
        print(json.dumps(check_tflite(args.model, args.runtime or "litert", shape,
                                      args.threads, args.reference_kernels,
                                      args.preserve_all_tensors, args.arena_size,
                                      args.batch)))
        return 0
    runtimes = available_runtimes()
    runtime = args.runtime or (runtimes[0] if runtimes else None)
    if runtime is None or runtime not in runtimes:
        print(json.dumps({"error": f"no TFLite runtime ({args.runtime or 'any'}) installed"}))
        return 3
    batch = args.batch or 1
    shape = _shape_of(args.predict[0]) if args.predict else None
    report = check_in_child(args.model, runtime, shape, args.threads, timeout=args.max_time,
                            batch=None if shape else batch)
    crashed = crash_message(runtime, report)
    if crashed:
        print(json.dumps({"error": crashed}))
        return 4
    try:
        if args.predict:
            inputs, outputs = args.predict
            result = predict_tflite(args.model, runtime, inputs, outputs, args.threads)
        else:
            result = bench_tflite(args.model, runtime, batch, args.threads, args.warmup,
                                  args.runs, args.min_time, args.max_time)
    except (ValueError, RuntimeError) as exc:
        print(json.dumps({"error": f"{runtime} cannot run the model: "
                                   f"{str(exc).splitlines()[0][:200]}"}))
        return 4
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
