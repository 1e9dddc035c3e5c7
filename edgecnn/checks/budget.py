"""An accuracy budget for int8: keep the fewest layers in float so the budget holds.

Before any layer is kept float, activation ranges by error minimisation (``mse``) are tried.
Then the layer table of :mod:`edgecnn.checks.layer_table` orders the candidates by their own error (the
worst first); the prefix with every candidate float is tried at once, so a budget that cannot be
met is said after three quantisations, with the best found. Otherwise a binary search finds the
shortest prefix that meets it (log2 of the layer count quantisations: 6 for 47 layers, 7 for 80,
where one per layer took 14 minutes), and a short kept set is pruned layer by layer, so the
set that remains is minimal. Every candidate is quantised by onnxruntime
with those nodes excluded and measured as its QDQ reference, the arithmetic the ONNX and TFLite
files share; the TFLite file then carries the same layers as float islands.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgecnn.checks.accuracy_limits import AccuracyLimits
from edgecnn.converters.quantize import QuantConfig, QuantReport, quantize_onnx
from edgecnn.errors import ParameterError
from edgecnn.files.card import ModelCard
from edgecnn.files.data import Dataset
from edgecnn.quiet import onnxruntime_log_severity

# Ops whose int8 form only moves or selects values already on a grid: keeping them float saves
# nothing, so they are never candidates.
PASS_THROUGH = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                "Identity", "Concat", "Split", "Slice", "Gather", "Relu", "input"}
# images for the layer table that orders the candidates: it only orders them, and it runs
# three sessions with every tensor an output (EfficientNet-Lite0 with swish, 96 crops at
# batch 1: 108 s of a 4-minute search; 32 crops: 21 s, the same layers kept)
LAYER_IMAGES = 32
SUMMARY_LAYERS = 8  # kept-float layers named in the one-line summary
PRUNE_UP_TO = 12  # kept sets this small are pruned layer by layer (one quantisation each)


@dataclass(frozen=True)
class Budget(AccuracyLimits):
    """The accuracy an int8 model may give up against its float model: one of the limits that
    ``validate`` checks (accuracy points on labelled images, or argmax agreement in percent),
    and optionally a cap on the layers kept float."""

    max_float_layers: int | None = None  # keep at most this many layers float (latency, size)

    def __post_init__(self) -> None:
        if self.max_float_layers is not None and self.max_float_layers < 0:
            raise ParameterError(f"max_float_layers={self.max_float_layers}: give a count >= 0",
                                 "max_float_layers")
        if (self.max_drop_pp is None) == (self.min_agreement_pct is None):
            raise ParameterError("give one budget: `max_drop_pp` or `min_agreement_pct`",
                                 "max_drop_pp", "min_agreement_pct")
        super().__post_init__()

    def met(self, trial: Trial) -> bool:
        return not self.broken_by(trial.drop_pp, trial.agreement_pct)


@dataclass(frozen=True)
class Trial:
    float_nodes: tuple[str, ...]
    accuracy_pct: float
    drop_pp: float  # float accuracy minus this one
    agreement_pct: float  # argmax agreement with the float model
    met: bool
    calib_method: str = "minmax"


@dataclass
class BudgetResult:
    budget: Budget
    float_accuracy_pct: float
    report: QuantReport  # the chosen model (the best found when the budget is not met)
    chosen: Trial
    trials: list[Trial] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict)  # node -> layer name, for reports
    float_weights: int = 0  # weights the kept layers hold in float32 instead of int8
    latency_us: tuple[float, float] | None = None  # host p50, all int8 -> chosen (onnxruntime)

    @property
    def met(self) -> bool:
        return self.chosen.met

    def summary(self) -> str:
        names = [self.layers.get(n, n) for n in self.chosen.float_nodes]
        kept = ", ".join(names[:SUMMARY_LAYERS]) or "none"
        if len(names) > SUMMARY_LAYERS:  # every name is in to_dict() (--json)
            kept = f"{len(names)} layers: {kept}, ... ({len(names) - SUMMARY_LAYERS} more)"
        if self.float_weights:  # float32 instead of int8: 3 more bytes each
            kept += f" ({self.float_weights:,} weights, +{3 * self.float_weights / 1024:.1f} KiB"
            if self.latency_us is not None:
                kept += (f"; host p50 {self.latency_us[0]:,.0f} -> {self.latency_us[1]:,.0f} µs, "
                         "onnxruntime, 1 thread, batch 1")
            kept += ")"
        verdict = "met" if self.met else "NOT met (best found)"
        measured = (f"int8 {self.chosen.accuracy_pct:.2f} % vs float "
                    f"{self.float_accuracy_pct:.2f} % ({-self.chosen.drop_pp:+.2f} pp), "
                    if self.budget.max_drop_pp is not None else "")  # labels unused otherwise
        ranges = ("; activation ranges by error minimisation (mse)"
                  if self.chosen.calib_method == "mse" else "")
        return (f"{self.budget.describe()} {verdict}: {measured}agreement "
                f"{self.chosen.agreement_pct:.2f} %; kept in float: {kept}{ranges}; "
                f"{len(self.trials)} candidates tried")

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget.describe(), "met": self.met,
                "float accuracy %": self.float_accuracy_pct,
                "kept in float": [{"node": n, "layer": self.layers.get(n, n)}
                                  for n in self.chosen.float_nodes],
                "float weights": self.float_weights,
                "host p50 µs (all int8, chosen)": self.latency_us,
                "trials": [vars(t) for t in self.trials]}


def _predictions(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    from edgecnn.runtimes.sessions import predict, reference_session

    with tempfile.TemporaryDirectory(prefix="edgecnn-budget-") as tmp:
        path = Path(tmp) / "m.onnx"
        if isinstance(model, Path):
            path = model
        else:
            onnx.save(model, path)
        session = reference_session(path)
        return np.argmax(predict(session, x), axis=1)


def search(float_path: Path, card: ModelCard, calibration: Dataset, images: Dataset,
           budget: Budget, config: QuantConfig = QuantConfig(), progress: Any = None
           ) -> BudgetResult:
    """Quantise ``float_path`` with the fewest float layers that meet ``budget`` on ``images``."""

    with tempfile.TemporaryDirectory(prefix="edgecnn-budget-") as tmp:
        config = replace(config, calibration_cache=Path(tmp) / "ranges.json")
        return _search(float_path, card, calibration, images, budget, config, progress)


def _search(float_path: Path, card: ModelCard, calibration: Dataset, images: Dataset,
            budget: Budget, config: QuantConfig, progress: Any) -> BudgetResult:
    from edgecnn.checks.layer_table import layer_errors, worst_first

    images.check_fits(card.input)
    x = images.preprocessed(card.input)
    labels = images.labels
    reference = _predictions(float_path, x)
    float_accuracy = 100 * float(np.mean(reference == labels))
    trials: list[Trial] = []
    chosen: dict[str, Any] = {}  # only the best model is held: each one is a whole network

    def trial(nodes: tuple[str, ...], keep_if: Any, settings: QuantConfig | None = None
              ) -> Trial:
        used = settings or config
        report = quantize_onnx(float_path, card, calibration, replace(used, float_nodes=nodes))
        predicted = _predictions(report.model, x)
        accuracy = 100 * float(np.mean(predicted == labels))
        result = Trial(nodes, accuracy, float_accuracy - accuracy,
                       100 * float(np.mean(predicted == reference)), False, used.method)
        result = replace(result, met=budget.met(result))
        trials.append(result)
        if not chosen or keep_if(result):
            chosen.update(trial=result, report=report)
        if progress is not None:
            best = chosen["trial"]
            if hasattr(progress, "set_postfix_str"):
                progress.set_postfix_str(f"best: {len(best.float_nodes)} float, agreement "
                                         f"{best.agreement_pct:.1f} %, drop {best.drop_pp:.2f} pp")
            progress.update(1)
        return result

    trial((), None)
    all_int8 = chosen["report"].model  # its host latency is the baseline of the cost
    if not chosen["trial"].met and config.method == "minmax":  # better ranges before float
        mse = replace(config, method="mse",
                      calibration_cache=config.calibration_cache.with_name("mse.json")
                      if config.calibration_cache else None)
        if trial((), lambda t: t.met or _better(t, chosen["trial"], budget),
                 mse).met:
            config = mse
    if chosen["trial"].met:
        return _result(budget, float_accuracy, chosen, trials, {}, all_int8, x)
    errors = layer_errors(onnx.load(float_path), chosen["report"].model, x[:LAYER_IMAGES])
    names = {e.tensor.node: e.layer for e in errors if e.tensor.node}
    ranked = list(dict.fromkeys(e.tensor.node for e in worst_first(errors)
                                if e.tensor.node and e.tensor.op not in PASS_THROUGH))
    ranked = ranked[:budget.max_float_layers]
    keep_better = lambda t: t.met or _better(t, chosen["trial"], budget)  # noqa: E731
    if not ranked or not trial(tuple(ranked), keep_better).met:
        # even every candidate float misses: say so now, with the best it can do
        return _result(budget, float_accuracy, chosen, trials, names, all_int8, x)
    # the fewest of the worst-first layers that meet it: a binary search over the prefix
    # length, log2(layers) quantisations instead of one per layer
    low, high = 0, len(ranked)  # ranked[:low] misses, ranked[:high] meets
    while high - low > 1:
        middle = (low + high) // 2
        if trial(tuple(ranked[:middle]), lambda t: t.met and len(t.float_nodes) < len(
                chosen["trial"].float_nodes)).met:
            high = middle
        else:
            low = middle
    if len(chosen["trial"].float_nodes) <= PRUNE_UP_TO:
        # drop what the budget does not need, the last added first
        tried = {t.float_nodes for t in trials}
        for node in reversed(chosen["trial"].float_nodes):
            fewer = tuple(n for n in chosen["trial"].float_nodes if n != node)
            if fewer not in tried:
                trial(fewer, lambda t: t.met)
    return _result(budget, float_accuracy, chosen, trials, names, all_int8, x)


def _result(budget: Budget, float_accuracy: float, chosen: dict[str, Any], trials: list[Trial],
            names: dict[str, str], all_int8: onnx.ModelProto, x: np.ndarray) -> BudgetResult:
    kept_nodes = chosen["trial"].float_nodes
    latency = None
    if kept_nodes:  # measured in turns, the better of two each: the first run of a process
        # (caches, clocks) is not charged to either model
        pair = (all_int8, chosen["report"].model)
        runs = [_host_latency_us(model, x[:1]) for _ in range(2) for model in pair]
        latency = (min(runs[0], runs[2]), min(runs[1], runs[3]))
    return BudgetResult(budget, float_accuracy, chosen["report"], chosen["trial"], trials, names,
                        _float_weights(chosen["report"].model, kept_nodes), latency)


def _host_latency_us(model: onnx.ModelProto, x: np.ndarray) -> float:
    """Median single-image latency in onnxruntime (its fused int8 kernels, one thread): what
    keeping layers float costs on this host, measured in about a second."""
    import onnxruntime as ort

    from edgecnn.runtimes.isa import exact_int8_options
    from edgecnn.targets.support.runner import measure

    options = exact_int8_options(ort.SessionOptions())
    options.intra_op_num_threads = 1
    options.log_severity_level = onnxruntime_log_severity()
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)}
    samples = measure(lambda: session.run(None, feed), warmup=5, runs=50, min_time=0.5,
                      max_time=5.0)
    return 1e6 * float(np.median(samples))


def _float_weights(model: onnx.ModelProto, nodes: tuple[str, ...]) -> int:
    """How many float weights the kept nodes read (their initializers, left float)."""
    floats = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer
              if t.data_type == onnx.TensorProto.FLOAT}
    kept = set(nodes)
    return sum(floats.get(i, 0) for n in model.graph.node if n.name in kept for i in n.input)


def _better(new: Trial, old: Trial, budget: Budget) -> bool:
    if budget.max_drop_pp is not None:
        return new.drop_pp < old.drop_pp
    return new.agreement_pct > old.agreement_pct
