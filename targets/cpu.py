"""The host CPU: PyTorch eager, onnxruntime CPU, LiteRT (XNNPACK) and tflite-runtime."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import CheckFailedError, TargetUnavailableError
from edgecnn.runtimes.sessions import RUNTIMES, named_exactly, open_session, runtimes_for
from edgecnn.targets.base import BenchConfig, BenchResult, Target
from edgecnn.targets.support import runner


def model_input(model: Path, batch: int, image_shape: tuple[int, ...] | None = None
                ) -> np.ndarray:
    """A preprocessed random image batch shaped as the model's card (or input) says; a model
    with symbolic image dims (a third-party ONNX file) takes ``image_shape`` (C, H, W), as
    ``convert --input-shape`` does."""
    from dataclasses import replace

    from edgecnn.errors import BadInputError
    from edgecnn.files.model_files import card_or_default
    from edgecnn.inspection import inspect_model

    declared = inspect_model(model).inputs[0]
    shape = list(declared.shape[1:])
    if len(shape) == 3 and model.suffix == ".tflite" and shape[-1] in (1, 3):
        shape = [shape[2], shape[0], shape[1]]
    if image_shape is not None:
        if len(shape) != 3 or any(isinstance(d, int) and d != want
                                  for d, want in zip(shape, image_shape, strict=True)):
            raise BadInputError(f"{model}: input {declared.name!r} is {shape}; --input-shape "
                                f"C,H,W {list(image_shape)} does not fit it")
        shape = list(image_shape)
    if not all(isinstance(d, int) for d in shape):
        raise BadInputError(f"{model}: input {declared.name!r} has symbolic dims {shape}; give "
                            "--input-shape N,C,H,W")
    channels, height, width = (int(d) for d in shape)
    card = card_or_default(model, (channels, height, width))
    if card.input.shape != (channels, height, width):
        card = replace(card, input=replace(card.input, shape=(channels, height, width)))
    return card.input.random_batch(batch)


def bench_in_process(model: Path, runtime: str, config: BenchConfig, target: str,
                     x: np.ndarray, session_options: dict[str, Any] | None = None) -> BenchResult:
    started = time.perf_counter()
    session = open_session(model, runtime, config.threads, **(session_options or {}))
    session.bind(x)
    load_ms = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    session.invoke()
    first_ms = (time.perf_counter() - started) * 1e3
    parity = placement_parity(model, runtime, x, session.outputs())
    samples = runner.measure(session.invoke, config.warmup, config.runs, config.min_time,
                              config.max_time)
    return BenchResult(model.name, target, runtime, config.batch, model.stat().st_size / 1024,
                       load_ms, first_ms, runner.latency_stats(samples, config.batch),
                       runner.peak_rss_mb(), [s * 1e6 for s in samples], parity=parity)


def placement_parity(model: Path, runtime: str, x: np.ndarray,
                     outputs: list[np.ndarray]) -> dict[str, Any] | None:
    """A reduced-precision PyTorch row (torch-cpu:bf16) is checked against fp32 on the same
    input before it is timed: exit 1 when it is fast but wrong. Other rows: None."""
    if not RUNTIMES.get(runtime).opt_in:
        return None
    from edgecnn.files.torch_files import load_torch_model
    from edgecnn.runtimes.placements import Placement, require_parity

    return require_parity(model.name, runtime, outputs, load_torch_model(model).outputs(x),
                          Placement.parse(runtime).tolerance).record()


WARM_RUNTIMES: set[str] = set()


def warm_up_runtime(model: Path, runtime: str, threads: int | None) -> None:
    """Open one throw-away session per runtime and process, so that the first model benched
    does not pay the runtime's one-time start-up in its "load ms" (order must not matter)."""
    if runtime not in WARM_RUNTIMES:
        open_session(model, runtime, threads)
        WARM_RUNTIMES.add(runtime)


class CPUTarget(Target):
    name = "cpu"

    def probe(self) -> dict[str, Any]:
        return {"machine": platform.machine(), "processor": platform.processor(),
                "python": platform.python_version(),
                "runtimes": [n for n, r in RUNTIMES.items() if r.available()]}

    def run(self, model: Path, config: BenchConfig) -> list[BenchResult]:
        x = model_input(model, config.batch, config.image_shape)
        device = self.probe()
        results = []
        named = named_exactly(config.runtime)
        for runtime in runtimes_for(model, config.runtime):
            try:
                warm_up_runtime(model, runtime, config.threads)
                if model.suffix == ".tflite":  # its child-process probe at this batch (cached
                    # per file and shape, edgecnn.runtimes.isolation), not inside "load ms"
                    open_session(model, runtime, config.threads).bind(x)
                result = bench_in_process(model, runtime, config, self.name, x)
            except TargetUnavailableError as exc:
                if runtime in named or not config.runtime:
                    raise  # asked for by name (or by default): it must run
                self.notes.append(f"skipped {runtime}: {exc}")  # matched by a glob only
                continue
            except CheckFailedError as exc:  # fast but wrong: not timed, and bench exits 1
                self.failures.append(str(exc))
                continue
            result.device = device
            results.append(result)
        return results


TARGET = CPUTarget
