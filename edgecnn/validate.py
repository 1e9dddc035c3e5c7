"""The parity report: every artefact on labelled data, compared with a reference, gating CI.

For each (artefact, runtime): top-1 accuracy, its change against the reference in percentage
points with a paired 95 % confidence interval, argmax agreement, logit differences, and the
classes that lost most. Thresholds turn the report into a pass/fail with exit status 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edgecnn.card import ModelCard
from edgecnn.data import Dataset
from edgecnn.errors import BadInputError
from edgecnn.runtimes import model_format, open_session, predict, runtimes_for

Z_95 = 1.959964


@dataclass(frozen=True)
class Thresholds:
    """Limits that fail the report; None disables a check."""

    max_drop_pp: float | None = None  # accuracy loss vs the reference, percentage points
    min_agreement_pct: float | None = None  # argmax agreement with the reference

    def __post_init__(self) -> None:
        if self.max_drop_pp is not None and self.max_drop_pp < 0:
            raise ValueError("--max-drop must be >= 0")
        if self.min_agreement_pct is not None and not 0 <= self.min_agreement_pct <= 100:
            raise ValueError("--min-agreement must be within 0..100")


@dataclass
class ParityRow:
    artefact: str
    format: str
    runtime: str
    top1_pct: float
    delta_pp: float
    ci95_pp: tuple[float, float]
    agreement_pct: float
    identical_pct: float  # images whose whole logit vector equals the reference's
    max_abs_dlogit: float
    mean_abs_dlogit: float
    worst_classes: list[str]
    passed: bool = True
    failures: list[str] = field(default_factory=list)


@dataclass
class ParityReport:
    reference: str
    images: int
    data: str
    thresholds: Thresholds
    rows: list[ParityRow]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def table_rows(self) -> list[dict[str, Any]]:
        return [{"artefact": r.artefact, "runtime": r.runtime, "top1 %": r.top1_pct,
                 "Δ pp": r.delta_pp, "95% CI pp": f"[{r.ci95_pp[0]:+.2f}, {r.ci95_pp[1]:+.2f}]",
                 "agree %": r.agreement_pct, "identical %": r.identical_pct,
                 "max|Δlogit|": r.max_abs_dlogit,
                 "mean|Δlogit|": r.mean_abs_dlogit, "worst classes": ", ".join(r.worst_classes),
                 "status": "ok" if r.passed else "FAIL: " + "; ".join(r.failures)}
                for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "images": self.images, "data": self.data,
                "thresholds": asdict(self.thresholds), "passed": self.passed,
                "rows": [asdict(r) for r in self.rows]}


def run_logits(path: Path, runtime: str, data: Dataset, card: ModelCard,
               batch_size: int = 500, **torch_options: Any) -> np.ndarray:
    """All logits of ``path`` on ``data`` through ``runtime``, batched, with a progress bar."""
    session = open_session(path, runtime, None, **(torch_options if runtime == "torch" else {}))
    outputs = []
    with tqdm(total=len(data), desc=f"{path.name} [{runtime}]", unit="img", disable=None,
              leave=False) as bar:
        for x, _ in data.batches(card.input, batch_size):
            outputs.append(predict(session, x))
            bar.update(len(x))
    return np.concatenate(outputs).astype(np.float32)


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
    pred, ref_pred = logits.argmax(1), ref_logits.argmax(1)
    correct, ref_correct = pred == labels, ref_pred == labels
    delta, low, high = paired_ci(correct, ref_correct)
    diff = np.abs(logits - ref_logits)
    row = ParityRow(name, "", runtime, 100 * correct.mean(), delta, (low, high),
                    100 * (pred == ref_pred).mean(), 100 * float((diff <= 1e-6).all(1).mean()),
                    float(diff.max()), float(diff.mean()),
                    worst_classes(pred, ref_pred, labels, card.labels))
    if thresholds.max_drop_pp is not None and -delta > thresholds.max_drop_pp:
        row.failures.append(f"drop {-delta:.2f} pp > {thresholds.max_drop_pp}")
    if thresholds.min_agreement_pct is not None and row.agreement_pct < thresholds.min_agreement_pct:
        row.failures.append(f"agreement {row.agreement_pct:.2f}% < {thresholds.min_agreement_pct}%")
    row.passed = not row.failures
    return row


def validate(artefacts: list[Path], data: Dataset, card: ModelCard, *,
             reference: Path | None = None, thresholds: Thresholds = Thresholds(),
             runtime: str | None = None, batch_size: int = 500,
             **torch_options: Any) -> ParityReport:
    """Run every artefact on every installed runtime for it and compare with the reference;
    ``torch_options`` (trust_pickle, arch) apply to PyTorch files."""
    if not artefacts:
        raise BadInputError("validate needs at least one model")
    data.check_fits(card.input)
    reference = reference or artefacts[0]
    ref_runtime = runtimes_for(reference)[0]
    ref_logits = run_logits(reference, ref_runtime, data, card, batch_size, **torch_options)
    rows = []
    for path in dict.fromkeys([reference, *artefacts]):
        only = runtime if runtime and model_format(path) != "pytorch" else None
        for name in runtimes_for(path, only):
            logits = (ref_logits if (path, name) == (reference, ref_runtime)
                      else run_logits(path, name, data, card, batch_size, **torch_options))
            row = compare(path.name, name, logits, ref_logits, data.labels, card, thresholds)
            row.format = model_format(path)
            rows.append(row)
    return ParityReport(f"{reference.name} [{ref_runtime}]", len(data), data.source, thresholds,
                        rows)
