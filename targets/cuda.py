"""CUDA GPUs: PyTorch (fp32, fp16) and onnxruntime's CUDA / TensorRT providers.

torch.cuda and onnxruntime-gpu are probed only here, so a machine without them never pays for
this module; without a device the target says exactly what is missing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import numpy as np
from edgecnn.targets import runner
from edgecnn.targets.base import BenchConfig, BenchResult, Target
from edgecnn.targets.cpu import bench_in_process, model_input

from edgecnn.errors import TargetUnavailableError

ORT_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class CUDATarget(Target):
    name = "cuda"

    def probe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"torch_cuda": False, "onnxruntime_providers": []}
        try:
            import torch
            info["torch_cuda"] = bool(torch.cuda.is_available())
            if info["torch_cuda"]:
                info["device"] = torch.cuda.get_device_name(0)
                info["cuda"] = torch.version.cuda
        except ImportError:
            pass
        try:
            import onnxruntime as ort
            info["onnxruntime_providers"] = [p for p in ort.get_available_providers()
                                             if p in ORT_GPU_PROVIDERS]
        except ImportError:
            pass
        return info

    def run(self, model: Path, config: BenchConfig) -> list[BenchResult]:
        info = self.probe()
        suffix = model.suffix.lower()
        if suffix in (".pt", ".pt2") and not info["torch_cuda"]:
            raise TargetUnavailableError("cuda: no CUDA device for PyTorch (torch.cuda."
                                         "is_available() is False: no GPU or a CPU-only torch)")
        if suffix == ".onnx" and not info["onnxruntime_providers"]:
            raise TargetUnavailableError("cuda: onnxruntime has no CUDA or TensorRT provider; "
                                         "install onnxruntime-gpu on a machine with a GPU")
        if suffix not in (".pt", ".pt2", ".onnx"):
            raise TargetUnavailableError(f"cuda: cannot run {suffix} files; TFLite runs on cpu "
                                         "and rpi")
        x = model_input(model, config.batch, config.image_shape)
        if suffix == ".onnx":
            return [self._onnx(model, config, x, p, info) for p in info["onnxruntime_providers"]]
        return [self._torch(model, config, x, dtype, info) for dtype in ("float32", "float16")]

    def _onnx(self, model: Path, config: BenchConfig, x: np.ndarray, provider: str,
              info: dict[str, Any]) -> BenchResult:
        result = bench_in_process(model, "onnxruntime", config, self.name, x,
                                  {"providers": [provider]})
        result.runtime, result.device = f"onnxruntime:{provider}", info
        return result

    def _torch(self, model: Path, config: BenchConfig, x: np.ndarray, dtype: str,
               info: dict[str, Any]) -> BenchResult:
        import torch

        from edgecnn.loading import load_torch_model
        started = time.perf_counter()
        module = cast(torch.nn.Module, load_torch_model(model).module)
        module = module.to("cuda", getattr(torch, dtype))
        data = torch.from_numpy(x).to("cuda", getattr(torch, dtype))
        torch.cuda.synchronize()
        load_ms = (time.perf_counter() - started) * 1e3

        def invoke() -> None:
            with torch.inference_mode():
                module(data)
            torch.cuda.synchronize()

        started = time.perf_counter()
        invoke()
        first_ms = (time.perf_counter() - started) * 1e3
        samples = runner.measure(invoke, config.warmup, config.runs, config.min_time,
                              config.max_time)
        return BenchResult(model.name, self.name, f"torch-cuda:{dtype}", config.batch,
                           model.stat().st_size / 1024, load_ms, first_ms,
                           runner.latency_stats(samples, config.batch),
                           torch.cuda.max_memory_allocated() / 2**20, [s * 1e6 for s in samples],
                           info)


TARGET = CUDATarget
