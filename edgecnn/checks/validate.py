"""The parity report: every artefact on labelled data, compared with a reference, gating CI.

For each (artefact, runtime): top-1 accuracy, its change against the reference in percentage
points with a paired 95 % confidence interval, argmax agreement, logit differences, and the
classes that lost most. Thresholds turn the report into a pass/fail with exit status 1.

Every int8 artefact is also measured against its QDQ reference (the graph's float reading, the
same on every CPU; :mod:`edgecnn.converters.qdq`): the largest distance in output steps and the
share of images whose outputs are identical. A runtime that strays by more than
``INT8_FLAG_STEPS`` is flagged with a reason; ``--max-steps`` turns that into a failure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edgecnn.checks.accuracy_limits import AccuracyLimits
from edgecnn.checks.int8_cost import sqnr_db
from edgecnn.errors import BadInputError, ParameterError, TargetUnavailableError
from edgecnn.files import metadata
from edgecnn.files.card import ModelCard
from edgecnn.files.data import Dataset
from edgecnn.runtimes.sessions import (
    QDQ_REFERENCE,
    RUNTIME_GRAMMAR,
    RUNTIMES,
    match_runtimes,
    model_format,
    open_session,
    predict,
    reference_session,
    runtimes_for,
)

Z_95 = 1.959964
# Flag an int8 runtime beyond this many output steps from the QDQ reference. Rounding alone
# (fixed-point vs float requantisation, float summation order at a tie) moves an output by one
# step per requantisation it passes through; two steps leave room for one such step to carry
# through the next layer. Saturating kernels are tens of steps off.
INT8_FLAG_STEPS = 2.0


@dataclass(frozen=True)
class Thresholds(AccuracyLimits):
    """Limits that fail the report (accuracy drop and agreement, as the budget's), and int8's
    output distance from the QDQ reference in quantisation steps; None disables a check."""

    max_int8_steps: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_int8_steps is not None and not (math.isfinite(self.max_int8_steps)
                                                    and self.max_int8_steps >= 0):
            raise ParameterError(f"max_int8_steps={self.max_int8_steps}: give a number of steps "
                                 ">= 0", "max_int8_steps")


@dataclass
class ParityRow:
    artefact: str
    format: str
    runtime: str
    top1_pct: float | None  # None: the images carry no labels
    delta_pp: float | None
    ci95_pp: tuple[float, float] | None
    agreement_pct: float
    identical_pct: float  # images whose whole logit vector equals the reference's
    max_abs_dlogit: float
    mean_abs_dlogit: float
    worst_classes: list[str]
    qdq_max_steps: float | None = None  # int8 only: distance from the QDQ reference
    qdq_identical_pct: float | None = None
    note: str = ""  # why an int8 runtime strays, or why it has no QDQ reference
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    sqnr_db: float = math.inf  # logits against the reference's (edgecnn.checks.int8_cost)


@dataclass
class ParityReport:
    reference: str
    images: int
    data: str
    thresholds: Thresholds
    rows: list[ParityRow]
    cpu: str = ""

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def table_rows(self) -> list[dict[str, Any]]:
        return [{"artefact": r.artefact, "runtime": r.runtime, "top1 %": r.top1_pct,
                 "Δ pp": r.delta_pp, "95% CI pp": (f"[{r.ci95_pp[0]:+.2f}, {r.ci95_pp[1]:+.2f}]"
                                                   if r.ci95_pp is not None else None),
                 "agree %": r.agreement_pct, "SQNR dB": r.sqnr_db,
                 "identical %": r.identical_pct,
                 "max|Δlogit|": r.max_abs_dlogit,
                 "mean|Δlogit|": r.mean_abs_dlogit,
                 "steps vs QDQ": "" if r.qdq_max_steps is None else r.qdq_max_steps,
                 "identical vs QDQ %": "" if r.qdq_identical_pct is None else r.qdq_identical_pct,
                 "worst classes": ", ".join(r.worst_classes),
                 "status": ("ok" if r.passed else "FAIL: " + "; ".join(r.failures))
                 + (f" ({r.note})" if r.note else "")}
                for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "images": self.images, "data": self.data,
                "cpu": self.cpu,
                "thresholds": asdict(self.thresholds), "passed": self.passed,
                "rows": [asdict(r) for r in self.rows]}


def run_logits(path: Path, runtime: str, data: Dataset, card: ModelCard,
               batch_size: int = 500, **torch_options: Any) -> np.ndarray:
    """All logits of ``path`` on ``data`` through ``runtime``, batched, with a progress bar."""
    reads_torch = runtime != QDQ_REFERENCE and ".pt" in RUNTIMES.get(runtime).suffixes
    session = (reference_session(path) if runtime == QDQ_REFERENCE else
               open_session(path, runtime, None, **(torch_options if reads_torch else {})))
    outputs = []
    with tqdm(total=len(data), desc=f"{path.name} [{runtime}]", unit="img", disable=None,
              leave=False) as bar:
        for x, _ in data.batches(card.input, batch_size):
            outputs.append(_logits_of(path, runtime, predict(session, x), len(x)))
            bar.update(len(x))
    return np.concatenate(outputs).astype(np.float32)


def _logits_of(path: Path, runtime: str, y: np.ndarray, batch: int) -> np.ndarray:
    """``y`` as one row of class scores per image, or a one-line refusal: a file whose output
    batch does not follow its input's cannot be compared image by image."""
    if y.ndim == 0 or y.shape[0] != batch:
        raise BadInputError(f"{path}: returns output {list(y.shape)} for a batch of {batch} "
                            f"images [{runtime}]; its output batch must follow its input's: "
                            "re-export it with a free (or matching) batch dimension")
    return y.reshape(batch, -1)


def paired_ci(correct: np.ndarray, ref_correct: np.ndarray) -> tuple[float, float, float]:
    """Mean paired difference in pp and its normal-approximation 95 % interval."""
    d = correct.astype(np.float64) - ref_correct.astype(np.float64)
    mean = d.mean()
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    return 100 * mean, 100 * (mean - Z_95 * se), 100 * (mean + Z_95 * se)


def worst_classes(pred: np.ndarray, ref_pred: np.ndarray, labels: np.ndarray,
                  names: tuple[str, ...], top: int = 3) -> list[str]:
    drops = []
    for c in np.unique(labels):
        mask = labels == c
        drop = 100 * ((ref_pred[mask] == c).mean() - (pred[mask] == c).mean())
        if drop > 0:
            drops.append((drop, names[c] if c < len(names) else str(c)))
    return [f"{name} (-{drop:.2f} pp)" for drop, name in sorted(drops, reverse=True)[:top]]


def compare(name: str, runtime: str, logits: np.ndarray, ref_logits: np.ndarray,
            labels: np.ndarray, card: ModelCard, thresholds: Thresholds) -> ParityRow:
    if logits.shape != ref_logits.shape:
        raise BadInputError(f"{name}: returns {logits.shape[1]} scores per image [{runtime}] "
                            f"where the reference returns {ref_logits.shape[1]}; compare models "
                            "of the same classes")
    pred, ref_pred = logits.argmax(1), ref_logits.argmax(1)
    diff = np.abs(logits - ref_logits)
    agreement = 100 * float((pred == ref_pred).mean())
    identical = 100 * float((diff <= 1e-6).all(1).mean())
    if np.all(labels >= 0):
        correct, ref_correct = pred == labels, ref_pred == labels
        delta, low, high = paired_ci(correct, ref_correct)
        row = ParityRow(name, "", runtime, 100 * correct.mean(), delta, (low, high), agreement,
                        identical, float(diff.max()), float(diff.mean()),
                        worst_classes(pred, ref_pred, labels, card.labels))
    else:  # unlabelled images: agreement and logit distance with the reference only
        row = ParityRow(name, "", runtime, None, None, None, agreement, identical,
                        float(diff.max()), float(diff.mean()), [])
    row.sqnr_db = sqnr_db(ref_logits, logits)
    row.failures += thresholds.broken_by(None if row.delta_pp is None else -row.delta_pp,
                                         row.agreement_pct)
    row.passed = not row.failures
    return row


def validate(artefacts: list[Path], data: Dataset, card: ModelCard, *,
             reference: Path | None = None, thresholds: Thresholds = Thresholds(),
             runtime: str | None = None, batch_size: int = 500,
             placements: tuple[str, ...] = (), **torch_options: Any) -> ParityReport:
    """Run every artefact on every installed runtime for it and compare with the reference;
    int8 artefacts also against their QDQ reference. ``placements`` (torch-cuda:fp16, ...) add
    rows for each PyTorch file, so a GPU deployment's accuracy cost shows beside the others.
    ``torch_options`` (trust_pickle, arch) apply to PyTorch files."""
    from edgecnn.runtimes.isa import cpu_class

    if not artefacts:
        raise BadInputError("validate needs at least one model")
    data.check_fits(card.input)
    if not data.labelled and thresholds.max_drop_pp is not None:
        raise ParameterError(f"{data.source}: has no labels, so no accuracy to drop; gate on "
                             "`min_agreement_pct` (agreement with the reference model) instead",
                             "min_agreement_pct")
    if data.labelled and data.labels.max() >= len(card.labels):
        raise BadInputError(f"{data.source}: labels run {data.labels.min()}..{data.labels.max()} "
                            f"but the model has {len(card.labels)} classes (0.."
                            f"{len(card.labels) - 1}); use data labelled for this model")
    if runtime and not match_runtimes(runtime, RUNTIMES):
        extra = (f"; the {QDQ_REFERENCE} row comes with every int8 ONNX file"
                 if QDQ_REFERENCE in runtime else "")
        raise ParameterError(f"runtime={runtime!r}: choose from {', '.join(RUNTIMES)} "
                             f"({RUNTIME_GRAMMAR}){extra}", "runtime")
    reference = reference or artefacts[0]
    _check_placements(placements, [*artefacts, reference])
    paths = list(dict.fromkeys([reference, *artefacts]))
    int8 = Int8References(paths, data, card, batch_size)
    # an int8 ONNX reference means its QDQ reading, not this CPU's integer kernels
    ref_runtime = QDQ_REFERENCE if int8.is_qdq_onnx(reference) else runtimes_for(reference)[0]
    ref_logits = run_logits(reference, ref_runtime, data, card, batch_size, **torch_options)
    readers = {p for p in paths if runtime and match_runtimes(
        runtime, [n for n, r in RUNTIMES.items() if p.suffix.lower() in r.suffixes])}
    if runtime and not readers:
        suffixes = sorted({s for n in match_runtimes(runtime, RUNTIMES)
                           for s in RUNTIMES.get(n).suffixes})
        raise ParameterError(f"runtime={runtime} reads none of the models given; it reads "
                             f"{', '.join(suffixes)} files", "runtime")
    rows = []
    for path in paths:
        names = runtimes_for(path, runtime if path in readers else None)
        if int8.is_qdq_onnx(path):
            names = [QDQ_REFERENCE, *names]
        if model_format(path) == "pytorch":
            names = list(dict.fromkeys([*names, *placements]))
        for name in names:
            logits = (ref_logits if (path, name) == (reference, ref_runtime)
                      else run_logits(path, name, data, card, batch_size, **torch_options))
            row = compare(path.name, name, logits, ref_logits, data.labels, card, thresholds)
            row.format = model_format(path)
            if name in placements:
                _gate_placement(row, name, logits, ref_logits,
                                (path, ref_runtime) == (reference, "torch"))
            int8.measure(row, path, logits, thresholds)
            rows.append(row)
    return ParityReport(f"{reference.name} [{ref_runtime}]", len(data), data.source, thresholds,
                        rows, cpu_class())


def _check_placements(placements: tuple[str, ...], models: list[Path]) -> None:
    """Each placement must be a known PyTorch one that can run here: one line before any work."""
    from edgecnn.runtimes.placements import Placement
    from edgecnn.runtimes.sessions import PLACED_RUNTIMES

    for name in placements:
        if name not in PLACED_RUNTIMES:
            raise ParameterError(f"placements={name!r}: choose from "
                                 f"{', '.join(PLACED_RUNTIMES)}", "placements")
        reason = Placement.parse(name).unavailable_reason()
        if reason:
            raise TargetUnavailableError(f"placements={name}: {reason}", parameters=("placements",))
    if placements and not any(model_format(p) == "pytorch" for p in models):
        raise ParameterError("`placements` score PyTorch models; give a .pt or .pt2 file among "
                             "the models", "placements")


def _gate_placement(row: ParityRow, placement: str, logits: np.ndarray,
                    ref_logits: np.ndarray, against_own_fp32: bool) -> None:
    """A reduced-precision row is held to the check `bench` applies before timing it (the
    precision's relative tolerance, no NaN/inf, no decisive top-1 change), when the reference is
    the same model in fp32 on the CPU; against another reference it is only reported."""
    from edgecnn.runtimes.placements import Placement, check_parity

    if not against_own_fp32:
        row.note = "placement check skipped: the reference is not this model's CPU fp32"
        return
    check = check_parity(placement, [logits], [ref_logits], Placement.parse(placement).tolerance)
    if not check.passed:
        row.failures.append(f"vs CPU fp32: {check.problems()}")
        row.passed = False


class Int8References:
    """The QDQ reference of each int8 artefact: an int8 ONNX is its own; an int8 TFLite finds
    the ONNX among the artefacts whose quantisation fingerprint it records."""

    def __init__(self, paths: list[Path], data: Dataset, card: ModelCard, batch_size: int) -> None:
        from edgecnn.converters import qdq
        from edgecnn.files.model_files import load_onnx

        self._data, self._card, self._batch_size = data, card, batch_size
        self._onnx: dict[Path, tuple[str, float | None, str | None]] = {}
        for path in paths:
            if model_format(path) == "onnx":
                model = load_onnx(path)
                if qdq.is_qdq(model):
                    self._onnx[path] = (qdq.fingerprint(model), qdq.output_steps(model)[0],
                                        qdq.encoding(model))
        self._logits: dict[Path, np.ndarray] = {}

    def is_qdq_onnx(self, path: Path) -> bool:
        return path in self._onnx

    def _source(self, path: Path) -> Path | None | str:
        """The int8 ONNX holding ``path``'s QDQ reference; None for float artefacts; a note
        when ``path`` is int8 but its reference is not among the artefacts."""
        if path in self._onnx:
            return path
        if model_format(path) != "tflite":
            return None
        from edgecnn.files.model_files import tflite_metadata

        recorded = tflite_metadata(path, metadata.TFLITE_QDQ_FINGERPRINT)
        if recorded is None:
            return None if tflite_metadata(path, metadata.TFLITE_INPUT_QUANTIZATION) is None else (
                "int8 file without a quantisation fingerprint: no QDQ reference")
        match = next((p for p, (fp, _, _) in self._onnx.items() if fp == recorded.decode(errors="replace")), None)
        return match or "no QDQ reference: add the int8 .onnx it was converted from"

    def measure(self, row: ParityRow, path: Path, logits: np.ndarray,
                thresholds: Thresholds) -> None:
        """Fill ``row``'s distance from the QDQ reference; flag or fail a straying runtime."""
        from edgecnn.runtimes.isa import int8_stray_reason

        source = self._source(path)
        if source is None:
            return
        if isinstance(source, str):
            row.note = source
            return
        _, step, encoding = self._onnx[source]
        if step is None:
            return
        if source not in self._logits:
            self._logits[source] = run_logits(source, QDQ_REFERENCE, self._data, self._card,
                                              self._batch_size)
        # both sides are dequantised from the same integer grid: distances are whole steps
        steps = np.rint(np.abs(logits - self._logits[source]) / step)
        row.qdq_max_steps = float(steps.max())
        row.qdq_identical_pct = 100 * float((steps == 0).all(1).mean())
        limit = thresholds.max_int8_steps
        if row.qdq_max_steps > (INT8_FLAG_STEPS if limit is None else limit):
            row.note = int8_stray_reason(row.runtime, encoding if path == source else None)
            if limit is not None:
                row.failures.append(f"{row.qdq_max_steps:.0f} steps from the QDQ reference > "
                                    f"{limit:g}")
                row.passed = False
