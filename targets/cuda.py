"""CUDA GPUs, measured the way GPUs are deployed.

PyTorch files get one row per placement (:mod:`edgecnn.runtimes.placements`): eager fp32, fp16 and bf16;
``tuned`` (channels_last with cuDNN autotuning) and ``graph`` (tuned, captured once and replayed
as a CUDA graph: no Python or launch overhead). ONNX files, fp32 or QDQ int8 (the files the CPU
and TFLite paths use), get onnxruntime-gpu's CUDA and TensorRT providers.

Every row is first checked against the CPU reference on the same input (a fast wrong row fails
with exit 1), warmed up until its latency is steady (clocks up, autotuner settled), then timed
by host wall clock (launch to synchronize) and, for PyTorch, by CUDA events on the GPU. GPU
memory (peak allocated and reserved) and the GPU clocks before and after go into the record.
torch.cuda and onnxruntime-gpu are probed only here: a machine without them never pays for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import CheckFailedError, TargetUnavailableError
from edgecnn.runtimes.placements import (
    TOLERANCE,
    Placement,
    backend_flags,
    bf16_native,
    require_parity,
)
from edgecnn.runtimes.sessions import match_runtimes, named_exactly
from edgecnn.targets.base import BenchConfig, BenchResult, Target
from edgecnn.targets.cpu import model_input
from edgecnn.targets.support import runner
from edgecnn.targets.support.nvidia import gpu_clocks, nvidia_smi
from edgecnn.targets.support.ort_device import DeviceBoundOnnx

WARMUP_CEILING_S = 20.0  # a row whose latency never settles is timed after this much warm-up
ORT_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
DEFAULT_PLACEMENTS = tuple(f"torch-cuda:{precision}{mode}" for mode in ("", ":tuned", ":graph")
                           for precision in ("fp32", "fp16", "bf16"))
OPTIONAL_PLACEMENTS = ("torch-cuda:tf32", "torch-cuda:tf32:tuned", "torch-cuda:tf32:graph")
# TensorRT builds fp32 engines with TF32 allowed; QDQ int8 on a GPU rounds where the kernels do,
# so it is held to the reference's decisions (top-1) and a loose relative bound, not to bits
ORT_TOLERANCE = {"CUDAExecutionProvider": TOLERANCE["fp32"],
                 "TensorrtExecutionProvider": TOLERANCE["tf32"], "int8": 5e-2}
def select_runtimes(available: list[str], asked: str | None) -> list[str]:
    """``runtime`` narrows the rows (the one grammar: names or globs, ``torch-cuda:*:graph``)."""
    if asked is None:
        return [name for name in available if name not in OPTIONAL_PLACEMENTS]
    chosen = match_runtimes(asked, available)
    if not chosen:
        raise TargetUnavailableError(f"cuda: runtime={asked!r} matches none of "
                                     f"{', '.join(available)}", parameters=("runtime",))
    return chosen


class CUDATarget(Target):
    name = "cuda"
    # GPU time and memory, and the parity pre-check against the CPU fp32 reference
    columns = ("model", "runtime", "batch", "p50 µs", "p90 µs", "p99 µs", "min µs", "GPU p50 µs",
               "img/s", "GPU alloc MB", "GPU reserved MB", "peak RSS MB", "max rel err",
               "speed-up")
    wide_columns = (*columns[:-1], "load ms", "first ms", "warm-up runs", "speed-up")

    def probe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"torch_cuda": False, "onnxruntime_providers": []}
        try:
            import torch
            info["torch"] = torch.__version__
            info["torch_cuda"] = bool(torch.cuda.is_available())
            if info["torch_cuda"]:
                props = torch.cuda.get_device_properties(0)
                info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                            memory_gib=round(props.total_memory / 2**30, 1),
                            cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                            bf16=bf16_native(),
                            driver=nvidia_smi(("driver_version",)).get("driver_version"))
        except ImportError:
            pass
        try:
            import onnxruntime as ort
            info["onnxruntime"] = ort.__version__
            info["onnxruntime_providers"] = [p for p in ort.get_available_providers()
                                             if p in ORT_GPU_PROVIDERS]
        except ImportError:
            pass
        return info

    def runtimes(self, model: Path, info: dict[str, Any]) -> list[str]:
        """Every row this machine can give ``model``, or one line saying what is missing."""
        suffix = model.suffix.lower()
        if suffix in (".pt", ".pt2"):
            if not info["torch_cuda"]:
                raise TargetUnavailableError("cuda: no CUDA device for PyTorch (torch.cuda."
                                             "is_available() is False: no GPU or a CPU-only "
                                             "torch)")
            return [name for name in (*DEFAULT_PLACEMENTS, *OPTIONAL_PLACEMENTS)
                    if info.get("bf16") or ":bf16" not in name]
        if suffix == ".onnx":
            if not info["onnxruntime_providers"]:
                raise TargetUnavailableError(_no_provider_message())
            return [f"onnxruntime:{p}" for p in info["onnxruntime_providers"]]
        raise TargetUnavailableError(f"cuda: cannot run {suffix} files; TFLite runs on cpu and "
                                     "rpi")

    def run(self, model: Path, config: BenchConfig) -> list[BenchResult]:
        info = self.probe()
        names = select_runtimes(self.runtimes(model, info), config.runtime)
        x = model_input(model, config.batch or 1, config.image_shape)
        reference = _reference(model, x)
        results, failed_before = [], len(self.failures)
        named = named_exactly(config.runtime)
        for name in names:
            try:
                results.append(self._row(model, name, config, x, reference, info))
            except TargetUnavailableError as exc:
                if name in named:
                    raise  # asked for by name, not by a glob: it must run
                self.notes.append(f"skipped: {exc}")
            except CheckFailedError as exc:  # fast but wrong: not timed, and bench exits 1
                self.failures.append(str(exc))
        if not results and len(self.failures) == failed_before:
            skipped = self.notes[-len(names):]
            raise TargetUnavailableError(f"cuda: none of the {len(names)} rows could run "
                                         f"{model.name}; first: {skipped[0].removeprefix('skipped: ')}")
        return results

    def _row(self, model: Path, name: str, config: BenchConfig, x: np.ndarray,
             reference: dict[str, list[np.ndarray]], info: dict[str, Any]) -> BenchResult:
        if name.startswith("onnxruntime:"):
            return _onnx_row(model, name.partition(":")[2], config, x, reference, info)
        return _torch_row(model, Placement.parse(name), config, x, reference["fp32"], info)


def _no_provider_message() -> str:
    """Why onnxruntime has no GPU provider, with the fix: onnxruntime and onnxruntime-gpu share
    one import name, and whichever pip wrote last wins."""
    from importlib import metadata

    try:
        metadata.version("onnxruntime-gpu")
    except metadata.PackageNotFoundError:
        return ("cuda: onnxruntime has no CUDA or TensorRT provider; install edgecnn[cuda] "
                "(onnxruntime-gpu) on a machine with a GPU")
    return ("cuda: onnxruntime-gpu is installed but the CPU onnxruntime's files shadow it; run "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")


def _reference(model: Path, x: np.ndarray) -> dict[str, list[np.ndarray]]:
    """CPU outputs on the bench input: fp32, and for a QDQ file its int8 reference reading."""
    from edgecnn.runtimes.sessions import open_session, predict_all, reference_session

    if model.suffix.lower() != ".onnx":
        from edgecnn.files.torch_files import load_torch_model

        return {"fp32": load_torch_model(model).outputs(x)}
    from edgecnn.converters import qdq
    from edgecnn.files.model_files import load_onnx

    if qdq.is_qdq(load_onnx(model)):
        return {"int8": predict_all(reference_session(model), x)}
    return {"fp32": predict_all(open_session(model, "onnxruntime"), x)}


def _timed(launch: Callable[[], None], sync: Callable[[], None], config: BenchConfig,
           events: bool) -> tuple[list[float], list[float], int]:
    """Warm up until steady, then time single-stream invokes: host wall seconds (launch to
    sync) and, with ``events``, GPU seconds between two CUDA events around the launch, read
    after each invoke's wall time is taken (the read is not part of what a caller waits for)."""
    gpu_s: list[float] = []
    after: Callable[[], None] | None = None
    if events:
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def invoke() -> None:
            start.record()
            launch()
            end.record()
            end.synchronize()

        def after() -> None:
            gpu_s.append(start.elapsed_time(end) / 1e3)
    else:
        def invoke() -> None:
            launch()
            sync()
    started = time.perf_counter()
    warm = runner.warm_until_steady(invoke, config.warmup,
                                    min(config.max_time / 2, WARMUP_CEILING_S))
    left = config.max_time - (time.perf_counter() - started)  # --max-time holds warm-up too
    wall = runner.measure(invoke, 0, config.runs, min(config.min_time, left), left, after=after)
    return wall, gpu_s, warm


def _fresh_gpu_memory() -> tuple[int, int]:
    """Free what earlier rows left (an exported module sits in a reference cycle: ``del`` alone
    keeps its weights on the GPU), reset the peaks, and return the baseline."""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()


def _torch_row(model: Path, placement: Placement, config: BenchConfig, x: np.ndarray,
               reference: list[np.ndarray], info: dict[str, Any]) -> BenchResult:
    import torch

    from edgecnn.runtimes.placements import PlacedModel

    allocated, reserved = _fresh_gpu_memory()
    started = time.perf_counter()
    placed = PlacedModel(model, placement)
    with backend_flags(placement), placed.failing_in_one_line():
        placed.bind(x)  # graph mode captures here
        placed.synchronize()
        load_ms = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        placed.launch()
        outputs = placed.outputs()
        first_ms = (time.perf_counter() - started) * 1e3
        check = require_parity(model.name, placement.name, outputs, reference,
                               placement.tolerance)
        clocks_before = gpu_clocks()
        wall, gpu, warm = _timed(placed.launch, placed.synchronize, config, events=True)
    memory = {"allocated": (torch.cuda.max_memory_allocated() - allocated) / 2**20,
              "reserved": (torch.cuda.max_memory_reserved() - reserved) / 2**20}
    device = {**info, "clocks_before": clocks_before, "clocks_after": gpu_clocks()}
    del placed
    return BenchResult(model.name, "cuda", placement.name, len(x), model.stat().st_size / 1024,
                       load_ms, first_ms, runner.latency_stats(wall, len(x)), runner.peak_rss_mb(),
                       [s * 1e6 for s in wall], device,
                       gpu_stats=runner.latency_stats(gpu, len(x)), gpu_memory_mb=memory,
                       parity=check.record(), warmup_runs=warm).with_gpu_columns()


def _onnx_row(model: Path, provider: str, config: BenchConfig, x: np.ndarray,
              reference: dict[str, list[np.ndarray]], info: dict[str, Any]) -> BenchResult:
    runtime = f"onnxruntime:{provider}"
    started = time.perf_counter()
    # fp32 means fp32: the CUDA provider's TF32 is on unless switched off
    options = {"use_tf32": "0"} if provider == "CUDAExecutionProvider" else {}
    session = DeviceBoundOnnx(model, provider, options, x)
    load_ms = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    session.invoke()
    first_ms = (time.perf_counter() - started) * 1e3
    session.check_provider()
    kind = "int8" if "int8" in reference else "fp32"
    tolerance = ORT_TOLERANCE["int8" if kind == "int8" else provider]
    check = require_parity(model.name, runtime, session.outputs(), reference[kind], tolerance)
    clocks_before = gpu_clocks()
    wall, _, warm = _timed(session.invoke, lambda: None, config, events=False)
    device = {**info, "clocks_before": clocks_before, "clocks_after": gpu_clocks()}
    return BenchResult(model.name, "cuda", runtime, len(x), model.stat().st_size / 1024,
                       load_ms, first_ms, runner.latency_stats(wall, len(x)), runner.peak_rss_mb(),
                       [s * 1e6 for s in wall], device, parity=check.record(),
                       warmup_runs=warm).with_gpu_columns()


TARGET = CUDATarget
