"""What int8 cost against fp32, measured at the outputs on real images, without labels.

The convert self-check proves the int8 file computes what its QDQ reference computes; it says
nothing about how far that reference is from the float model. This module compares the two on
the images a conversion already holds (its calibration set), with measures that fit the output:

- every output: SQNR in dB, ``10 log10(sum f^2 / sum (f - q)^2)``, the signal-to-error ratio
  of the int8 reading ``q`` against the float one ``f`` (AIMET and the TFLite debugger report
  the same figure per layer);
- class scores ``[N, C]``: top-1 agreement, top-1 agreement where fp32 is confident (softmax
  p > 0.5), and how often fp32's top-1 stays within int8's top-5;
- dense maps ``[N, C, H, W]`` (segmentation): per-pixel agreement of the class over ``C``.

Anything else (a detector's box/score tensor) is judged by SQNR alone: argmax over axis 1 of a
``[N, 84, 8400]`` tensor measures nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

CONFIDENT = 0.5
# below these, int8 changes what a user sees: the convert warns and points to the remedies
WARN_AGREEMENT_PCT = 95.0
WARN_SQNR_DB = 20.0


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-quantisation-noise ratio of ``approximation`` against ``reference``, in dB;
    inf when they are identical."""
    f = reference.astype(np.float64)
    noise = float(np.sum((f - approximation.astype(np.float64)) ** 2))
    signal = float(np.sum(f ** 2))
    if noise == 0.0:
        return math.inf
    if not (math.isfinite(noise) and math.isfinite(signal)):
        return math.nan  # non-finite outputs: no ratio to speak of
    ratio = signal / noise
    return 10.0 * math.log10(ratio) if ratio > 0 else -math.inf


def _softmax(x: np.ndarray) -> np.ndarray:
    if np.all(x >= 0) and np.allclose(x.sum(1), 1.0, atol=1e-3):
        return x  # already probabilities
    z = np.exp(x - x.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


@dataclass
class OutputCost:
    """int8 against fp32 at one output."""

    name: str
    sqnr_db: float
    top1_agreement_pct: float | None = None
    confident_agreement_pct: float | None = None
    confident_images: int = 0
    top5_contains_pct: float | None = None
    pixel_agreement_pct: float | None = None

    def summary(self) -> str:
        parts = []
        if self.top1_agreement_pct is not None:
            parts.append(f"top-1 agreement {self.top1_agreement_pct:.1f} %")
            if self.confident_agreement_pct is not None:
                parts.append(f"{self.confident_agreement_pct:.1f} % where fp32 is confident "
                             f"({self.confident_images})")
            if self.top5_contains_pct is not None:
                parts.append(f"fp32 top-1 in int8 top-5 {self.top5_contains_pct:.1f} %")
        if self.pixel_agreement_pct is not None:
            parts.append(f"pixel agreement {self.pixel_agreement_pct:.1f} %")
        parts.append(f"SQNR {self.sqnr_db:.1f} dB")
        return ", ".join(parts)


@dataclass
class Int8Cost:
    """int8 against fp32 at every output of a model, on ``images`` real images."""

    images: int
    outputs: list[OutputCost] = field(default_factory=list)

    def summary(self) -> str:
        if len(self.outputs) == 1:
            return f"{self.outputs[0].summary()} ({self.images} calibration images)"
        return "; ".join(f"{o.name}: {o.summary()}" for o in self.outputs) + (
            f" ({self.images} calibration images)")

    def warning(self) -> str | None:
        """One line when int8 visibly changes the model's answers; None otherwise."""
        worst = min(self.outputs, key=lambda o: o.sqnr_db, default=None)
        if worst is None:
            return None
        agreements = [o.top1_agreement_pct for o in self.outputs
                      if o.top1_agreement_pct is not None]
        agreements += [o.pixel_agreement_pct for o in self.outputs
                       if o.pixel_agreement_pct is not None]
        changed = min(agreements) < WARN_AGREEMENT_PCT if agreements else False
        if not changed and worst.sqnr_db >= WARN_SQNR_DB:
            return None
        what = (f"int8 changes the answer on {100 - min(agreements):.1f} % of {self.images} "
                "images against fp32" if changed else
                f"int8 output {worst.name!r} is {worst.sqnr_db:.1f} dB from fp32")
        return (f"{what}; see which layers cost most with `edgecnn layers FLOAT.onnx "
                "INT8.onnx`, or keep the worst layers float with --max-drop/--min-agreement "
                "(--max-float-layers caps how many)")


def measure(float_outputs: list[np.ndarray], int8_outputs: list[np.ndarray],
            names: list[str]) -> Int8Cost:
    """Compare two readings of the same images, output by output."""
    images = len(float_outputs[0]) if float_outputs else 0
    cost = Int8Cost(images)
    for name, f, q in zip(names, float_outputs, int8_outputs, strict=True):
        out = OutputCost(name, sqnr_db(f, q))
        if f.ndim == 2 and f.shape[1] >= 2:
            top_f, top_q = f.argmax(1), q.argmax(1)
            out.top1_agreement_pct = 100.0 * float(np.mean(top_f == top_q))
            confident = _softmax(f.astype(np.float64)).max(1) > CONFIDENT
            out.confident_images = int(confident.sum())
            if out.confident_images:
                out.confident_agreement_pct = 100.0 * float(
                    np.mean(top_f[confident] == top_q[confident]))
            if f.shape[1] > 5:
                top5 = np.argsort(-q, axis=1)[:, :5]
                out.top5_contains_pct = 100.0 * float(np.mean(
                    (top5 == top_f[:, None]).any(1)))
        elif f.ndim == 4 and f.shape[1] >= 2:
            out.pixel_agreement_pct = 100.0 * float(np.mean(f.argmax(1) == q.argmax(1)))
        cost.outputs.append(out)
    return cost
