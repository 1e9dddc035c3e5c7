"""Microcontrollers: the file run by TFLite Micro's own kernels on the host (edgecnn.runtimes.tflm).

A board's speed cannot be measured here, but what decides whether a file ships to an MCU can:
that TFLite Micro has a kernel for every op, the arena the file needs (bisected, as a board's is
sized), and that its kernels agree on real images with LiteRT's builtin reference kernels, the
fixed-point code TFLite Micro's kernels descend from (XNNPACK rounds in float and parts from
both by a step per layer, 7-11 steps end to end on the outlier model). A row more than 3
output steps from the reference kernels fails the bench (exit 1). The host time per
invoke is reported for comparing files with each other, never as the board's latency.
``edgecnn validate FILE.tflite QDQ.onnx --runtime tflite-micro`` scores the same runtime against
the QDQ reference and the labels.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import BadInputError
from edgecnn.targets.base import BenchConfig, BenchResult, Target
from edgecnn.targets.support import runner

PARITY_IMAGES = 100
# against LiteRT's reference kernels TFLite Micro lands 0-1 steps away (the shipped models);
# the convert self-check's bound (edgecnn.api.INT8_SELF_CHECK_STEPS) separates that from a
# kernel computing something else, which is tens of steps off
MAX_STEPS_FROM_LITERT = 3
FLOAT_TOLERANCE = 1e-4  # a float model's outputs, relative to their largest magnitude


def parity_images(model: Path, data: Path | None, count: int) -> tuple[np.ndarray, str]:
    """Real images for the parity check: ``data``, else the shipped MNIST test set when the
    model takes 28x28 grey images, else seeded random ones (said in the row)."""
    from edgecnn.files.data import load_dataset
    from edgecnn.files.model_files import card_or_default
    from edgecnn.files.shipped import SHIPPED_TEST_SET
    from edgecnn.targets.cpu import model_input

    x = model_input(model, 1)
    card = card_or_default(model, tuple(x.shape[1:]))
    source = data or (SHIPPED_TEST_SET if tuple(x.shape[1:]) == (1, 28, 28) else None)
    if source is None:
        return card.input.random_batch(min(count, 8)), "8 random inputs (pass --data for images)"
    dataset = load_dataset(source, split="test").take(count)
    dataset.check_fits(card.input)
    return card.input.preprocess(dataset.images), f"{len(dataset)} images of {Path(str(source)).name}"


def output_step(model: Path) -> float | None:
    """The first output's quantisation step (of the tensor a float output is dequantised from)."""
    from edgecnn.files.model_files import read_tflite

    tflite, _ = read_tflite(model)
    graph = tflite.subgraphs[0]
    index = graph.outputs[0]
    producers = {o: op for op in graph.operators for o in op.outputs}
    for _ in range(2):  # the output itself, or the int8 tensor its DEQUANTIZE reads
        q = graph.tensors[index].quantization
        if q is not None and q.scale is not None and len(q.scale):
            return float(q.scale[0])
        op = producers.get(index)
        if op is None or not len(op.inputs):
            return None
        index = op.inputs[0]
    return None


class MCUTarget(Target):
    name = "mcu"
    columns = ("model", "runtime", "arena KiB", "steps vs LiteRT ref", "agree %", "parity on",
               "p50 µs", "size KiB")
    wide_columns = (*columns, "load ms", "max|Δ| vs LiteRT ref")

    def __init__(self, data: str | Path | None = None, images: int = PARITY_IMAGES) -> None:
        """``data``: labelled images for the parity check (default: the shipped MNIST test set
        for 28x28 grey models)."""
        super().__init__()  # failures: files TFLite Micro runs, but not as LiteRT does
        self.data, self.images = (Path(data) if data is not None else None), images

    def probe(self) -> dict[str, Any]:
        from edgecnn.runtimes.tflm import _interpreter_module

        _interpreter_module()  # one line when tflite-micro is missing
        from importlib.metadata import version

        return {"runtime": f"tflite-micro {version('tflite-micro')}",
                "host": platform.machine()}

    def run(self, model: Path, config: BenchConfig) -> list[BenchResult]:
        from edgecnn.runtimes.sessions import TFLiteSession, predict
        from edgecnn.runtimes.tflm import MicroSession, smallest_arena

        if model.suffix.lower() != ".tflite":
            raise BadInputError(f"{model}: --target mcu runs int8 .tflite files; write one with "
                                "`edgecnn convert MODEL --to tflite --int8`")
        device = self.probe()
        arena = smallest_arena(model)
        started = time.perf_counter()
        session = MicroSession(model, config.threads, arena_size=arena)
        load_ms = (time.perf_counter() - started) * 1e3
        x, source = parity_images(model, self.data, self.images)
        started = time.perf_counter()
        micro = predict(session, x[:1])
        first_ms = (time.perf_counter() - started) * 1e3
        micro = np.concatenate([micro, predict(session, x[1:])]) if len(x) > 1 else micro
        reference = predict(TFLiteSession(model, 1, "ai_edge_litert.interpreter", "litert",
                                          reference_kernels=True), x)
        step = output_step(model)
        worst = float(np.abs(micro - reference).max())
        steps = worst / step if step else float("nan")
        agree = 100.0 * float((micro.argmax(1) == reference.argmax(1)).mean()) \
            if micro.ndim == 2 else float("nan")
        scale = max(float(np.abs(reference).max()), 1.0)
        if (steps > MAX_STEPS_FROM_LITERT) if step else (worst > FLOAT_TOLERANCE * scale):
            off = f"{steps:.0f} output steps" if step else f"{worst:.3g} (float outputs)"
            self.failures.append(
                f"{model.name}: TFLite Micro is {off} from LiteRT's reference kernels on "
                f"{source} (argmax agreement {agree:.1f} %): one of its kernels computes "
                "something else; `edgecnn validate FILE QDQ.onnx --runtime tflite-micro` "
                "scores it against the QDQ reference and the labels")
        session.bind(x[:1])
        samples = runner.measure(session.invoke, config.warmup, config.runs, config.min_time,
                                 config.max_time)
        columns = {"arena KiB": round(arena / 1024, 2),
                   "steps vs LiteRT ref": round(steps, 2) if step else "",
                   "max|Δ| vs LiteRT ref": "" if step else round(worst, 6),
                   "agree %": round(agree, 2), "parity on": source}
        return [BenchResult(model.name, self.name, "tflite-micro", 1,
                            model.stat().st_size / 1024, load_ms, first_ms,
                            runner.latency_stats(samples, 1), runner.peak_rss_mb(),
                            [s * 1e6 for s in samples], device=device, columns=columns)]


TARGET = MCUTarget
