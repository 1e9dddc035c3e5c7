"""What a converted model may give up against its reference: one concept, two uses.

``validate`` fails a report that breaks these limits (:class:`~edgecnn.checks.validate.Thresholds`
adds int8's distance from the QDQ reference); the accuracy-budget search keeps the fewest layers
float that meet them (:class:`~edgecnn.checks.budget.Budget` adds a cap on float layers). Both
validate the same way and judge a measurement with the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgecnn.errors import ParameterError


@dataclass(frozen=True)
class AccuracyLimits:
    """Accuracy points lost on labelled images, and argmax agreement with the reference in
    percent; None leaves a limit out."""

    max_drop_pp: float | None = None
    min_agreement_pct: float | None = None

    def __post_init__(self) -> None:
        if self.max_drop_pp is not None and not (math.isfinite(self.max_drop_pp)
                                                 and 0 <= self.max_drop_pp <= 100):
            raise ParameterError(f"max_drop_pp={self.max_drop_pp}: give accuracy points, 0..100",
                                 "max_drop_pp")
        if self.min_agreement_pct is not None and not (math.isfinite(self.min_agreement_pct)
                                                       and 0 <= self.min_agreement_pct <= 100):
            raise ParameterError(f"min_agreement_pct={self.min_agreement_pct}: give a "
                                 "percentage, 0..100", "min_agreement_pct")

    def broken_by(self, drop_pp: float | None, agreement_pct: float) -> list[str]:
        """What a measurement breaks, one phrase each (empty: within the limits). ``drop_pp``
        is None where the images carry no labels."""
        broken = []
        if self.max_drop_pp is not None and drop_pp is not None and drop_pp > self.max_drop_pp:
            broken.append(f"drop {drop_pp:.2f} pp > {self.max_drop_pp}")
        if self.min_agreement_pct is not None and agreement_pct < self.min_agreement_pct:
            broken.append(f"agreement {agreement_pct:.2f}% < {self.min_agreement_pct}%")
        return broken

    def describe(self) -> str:
        parts = ([f"accuracy drop <= {self.max_drop_pp} pp"] if self.max_drop_pp is not None
                 else []) + ([f"argmax agreement >= {self.min_agreement_pct} %"]
                             if self.min_agreement_pct is not None else [])
        return " and ".join(parts) or "no accuracy limit"
