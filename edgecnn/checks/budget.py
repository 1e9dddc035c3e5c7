"""An accuracy budget for int8: keep the fewest layers in float so the budget holds.

Before any layer is kept float, the cheap post-training methods are tried, one quantisation
each (:data:`BUDGET_METHODS`, ``Budget.methods``): cross-layer equalisation where the model has
equalisable pairs, activation ranges by error minimisation (``mse``), bias correction. Each is
kept only where it measurably helps (the budget's own measure gets strictly better, by one image
at least), and the search stops as soon as the budget holds; the methods that did not help alone
are then tried together, once (on the per-tensor outlier model equalisation gives 99.5 %, mse
ranges or bias correction on top of it nothing, both together 99.6 %).
Then the layer table of :mod:`edgecnn.checks.layer_table` orders the candidates by their own error (the
worst first); the prefix with every candidate float is tried at once, so a budget that cannot be
met is said right after the methods, with the best found. Otherwise a binary search finds the
shortest prefix that meets it (log2 of the layer count quantisations: 6 for 47 layers, 7 for 80,
where one per layer took 14 minutes), and a short kept set is pruned layer by layer, so the
set that remains is minimal. Every candidate uses the methods kept and is quantised by onnxruntime
with those nodes excluded and measured as its QDQ reference, the arithmetic the ONNX and TFLite
files share; the TFLite file then carries the same layers as float islands.

``Budget.keep="int16"`` keeps the chosen layers in int16 instead of float (TFLite's 16x8: int8
weights, int16 activations), the only way out of int8 that an integer-only file (an NPU's, an
MCU's) can hold. A layer's own error includes the rounding of its inputs, so each ranked layer
brings the nodes that write its inputs, and only nodes whose ops, and their outputs' readers,
have 16x8 kernels are candidates. On a CPU, float is the better way out: as accurate, and run
by XNNPACK where TFLite's 16x8 kernels are its reference ones (docs/int8-accuracy.md).
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


# The post-training methods a budget tries before it keeps any layer float, in the order of the
# pipeline they change: the float model (equalisation), its ranges (mse), the int8 biases. Each
# costs one quantisation; bias correction reuses the ranges already calibrated. AdaRound is not
# one of them: it learns every layer's rounding (~120 s on EfficientNet-Lite0, against seconds
# for a quantisation), and a budget quantises many times; a user who asks for it
# (``adaround=True``, ``--adaround``) gets it in every candidate.
BUDGET_METHODS = ("cross-layer-equalization", "mse", "bias-correction")
# what the layers the budget takes out of int8 become (see the module docstring)
KEPT_AS = ("float", "int16")


@dataclass(frozen=True)
class Budget(AccuracyLimits):
    """The accuracy an int8 model may give up against its float model: one of the limits that
    ``validate`` checks (accuracy points on labelled images, or argmax agreement in percent),
    optionally a cap on the layers kept float, and the post-training methods to try before any
    layer is kept float (:data:`BUDGET_METHODS` by default; ``()`` keeps layers float at once)."""

    max_float_layers: int | None = None  # keep at most this many layers float (latency, size)
    methods: tuple[str, ...] = BUDGET_METHODS
    # float or int16 (KEPT_AS); None: int16 for an integer-only file, float otherwise (the API)
    keep: str | None = None

    def __post_init__(self) -> None:
        if self.keep is not None and self.keep not in KEPT_AS:
            raise ParameterError(f"keep={self.keep!r}: choose from {', '.join(KEPT_AS)}", "keep")
        if self.max_float_layers is not None and self.max_float_layers < 0:
            raise ParameterError(f"max_float_layers={self.max_float_layers}: give a count >= 0",
                                 "max_float_layers")
        unknown = [m for m in self.methods if m not in BUDGET_METHODS]
        if isinstance(self.methods, str) or unknown:
            named = self.methods if isinstance(self.methods, str) else ",".join(unknown)
            raise ParameterError(f"methods={named}: choose from {','.join(BUDGET_METHODS)} "
                                 "(comma-separated), or none", "methods")
        # a list from a caller, or a name given twice: one tuple, each method tried once
        object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))
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
    methods: tuple[str, ...] = ()  # post-training methods beyond plain minmax (methods_of)
    kept_as: str = "float"  # what float_nodes are: float, or int16 (Budget.keep)


def methods_of(config: QuantConfig) -> tuple[str, ...]:
    """The post-training methods ``config`` applies, by the names ``Budget.methods`` takes
    (and ``adaround``, which only the user turns on)."""
    applied = {"cross-layer-equalization": config.cross_layer_equalization,
               "mse": config.method == "mse", "bias-correction": config.bias_correction,
               "adaround": config.adaround}
    return tuple(name for name, on in applied.items() if on)


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

    @property
    def methods(self) -> tuple[str, ...]:
        """The post-training methods the chosen model uses."""
        return self.chosen.methods

    @property
    def methods_without_gain(self) -> tuple[str, ...]:
        """Methods the search tried and dropped: no better on the budget's measure."""
        tried = dict.fromkeys(m for t in self.trials for m in t.methods)
        return tuple(m for m in tried if m not in self.chosen.methods)

    def summary(self) -> str:
        names = [self.layers.get(n, n) for n in self.chosen.float_nodes]
        kept = ", ".join(names[:SUMMARY_LAYERS]) or "none"
        if len(names) > SUMMARY_LAYERS and self.chosen.kept_as == "float":  # every name is in to_dict() (--json)
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
        return (f"{self.budget.describe()} {verdict}: {measured}agreement "
                f"{self.chosen.agreement_pct:.2f} %; {self._methods_phrase()}kept in "
                f"{self.chosen.kept_as}: {kept}; {len(self.trials)} candidates tried")

    def _methods_phrase(self) -> str:
        """``methods: cross-layer-equalization (no gain: mse); `` or nothing where none was
        used or tried."""
        if not self.methods and not self.methods_without_gain:
            return ""
        dropped = (f" (no gain: {', '.join(self.methods_without_gain)})"
                   if self.methods_without_gain else "")
        return f"methods: {', '.join(self.methods) or 'none'}{dropped}; "

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget.describe(), "met": self.met,
                "float accuracy %": self.float_accuracy_pct,
                "methods": list(self.methods),
                "methods without gain": list(self.methods_without_gain),
                f"kept in {self.chosen.kept_as}": [{"node": n, "layer": self.layers.get(n, n)}
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
        return _Search(float_path, card, calibration, images, budget, progress).run(config)


class _Search:
    """One budget search: the trials so far and the best model found (only that one is held:
    each is a whole network)."""

    def __init__(self, float_path: Path, card: ModelCard, calibration: Dataset,
                 images: Dataset, budget: Budget, progress: Any) -> None:
        images.check_fits(card.input)
        if budget.keep is None:
            budget = replace(budget, keep="float")
        self.float_path, self.card, self.calibration = float_path, card, calibration
        self.budget, self.progress = budget, progress
        self.x = images.preprocessed(card.input)
        self.labels = images.labels
        self.reference = _predictions(float_path, self.x)
        self.float_accuracy = 100 * float(np.mean(self.reference == self.labels))
        self.trials: list[Trial] = []
        self.chosen: dict[str, Any] = {}

    def run(self, config: QuantConfig) -> BudgetResult:
        self.trial((), config, None)
        all_int8 = self.chosen["report"].model  # its host latency is the baseline of the cost
        config = self.try_methods(config)
        if self.best.met:
            return self.result({}, all_int8)
        return self.result(self.keep_layers_float(config), all_int8)

    @property
    def best(self) -> Trial:
        return self.chosen["trial"]

    def trial(self, nodes: tuple[str, ...], config: QuantConfig, keep_if: Any) -> Trial:
        """Quantise with ``nodes`` float and measure it; it becomes the chosen model where
        ``keep_if(trial)`` (the first one always)."""
        kept = ({"float_nodes": nodes} if self.budget.keep == "float"
                else {"int16_nodes": nodes})
        report = quantize_onnx(self.float_path, self.card, self.calibration,
                               replace(config, **kept))
        predicted = _predictions(report.model, self.x)
        accuracy = 100 * float(np.mean(predicted == self.labels))
        result = Trial(nodes, accuracy, self.float_accuracy - accuracy,
                       100 * float(np.mean(predicted == self.reference)), False, config.method,
                       methods_of(config), self.budget.keep or "float")
        result = replace(result, met=self.budget.met(result))
        self.trials.append(result)
        if not self.chosen or keep_if(result):
            self.chosen.update(trial=result, report=report)
        self._show_progress()
        return result

    def _show_progress(self) -> None:
        if self.progress is None:
            return
        if hasattr(self.progress, "set_postfix_str"):
            best = self.best
            self.progress.set_postfix_str(
                f"best: {len(best.float_nodes)} {best.kept_as}, agreement "
                f"{best.agreement_pct:.1f} %, drop {best.drop_pp:.2f} pp")
        self.progress.update(1)

    def try_methods(self, config: QuantConfig) -> QuantConfig:
        """``config`` with each of the budget's methods that measurably helps, tried one at a
        time on top of those kept, until the budget holds: one quantisation each. Methods that
        did not help alone are then tried together, once: equalisation can leave ranges that
        only bias correction turns into a gain."""
        keep_better = lambda t: t.met or _better(t, self.best, self.budget)  # noqa: E731
        dropped = []
        for method in self.budget.methods:
            if self.best.met:
                break
            candidate = _with_method(config, method, self.float_path)
            if candidate is None:
                continue
            if self.trial((), candidate, keep_better) is self.best:
                config = candidate
            else:
                dropped.append(method)
        if not self.best.met and len(dropped) > 1:
            together = config
            for method in dropped:
                together = _with_method(together, method, self.float_path) or together
            if self.trial((), together, keep_better) is self.best:
                config = together
        return config

    def keep_layers_float(self, config: QuantConfig) -> dict[str, str]:
        """Keep the fewest worst-first layers float that meet the budget (see the module's
        docstring); the layer names, for the reports."""
        from edgecnn.checks.layer_table import layer_errors, worst_first

        errors = layer_errors(self.float_model(config), self.chosen["report"].model,
                              self.x[:LAYER_IMAGES])
        names = {e.tensor.node: e.layer for e in errors if e.tensor.node}
        ranked = ranked_nodes(worst_first(errors))
        if self.budget.keep == "int16":
            model = self.float_model(config)
            ranked = _int16_candidates(model, ranked)
            names.update(_module_names(model, ranked, names))
        ranked = ranked[:self.budget.max_float_layers]
        keep_better = lambda t: t.met or _better(t, self.best, self.budget)  # noqa: E731
        if not ranked or not self.trial(tuple(ranked), config, keep_better).met:
            return names  # even every candidate float misses: say so now, with the best
        # the fewest of the worst-first layers that meet it: a binary search over the prefix
        # length, log2(layers) quantisations instead of one per layer
        low, high = 0, len(ranked)  # ranked[:low] misses, ranked[:high] meets
        while high - low > 1:
            middle = (low + high) // 2
            if self.trial(tuple(ranked[:middle]), config, lambda t: t.met and len(
                    t.float_nodes) < len(self.best.float_nodes)).met:
                high = middle
            else:
                low = middle
        if len(self.best.float_nodes) <= PRUNE_UP_TO:
            self._prune(config)
        return names

    def _prune(self, config: QuantConfig) -> None:
        """Drop what the budget does not need, the last added first."""
        tried = {t.float_nodes for t in self.trials if t.methods == methods_of(config)}
        for node in reversed(self.best.float_nodes):
            fewer = tuple(n for n in self.best.float_nodes if n != node)
            if fewer not in tried:
                self.trial(fewer, config, lambda t: t.met)

    def float_model(self, config: QuantConfig) -> onnx.ModelProto:
        """The float model the chosen int8 model was quantised from, for the layer table: an
        equalised model's tensors are scaled per channel, so it is compared with the equalised
        float model, built as :func:`~edgecnn.converters.quantize.quantize_onnx` builds it."""
        model = onnx.load(self.float_path)
        if config.cross_layer_equalization:
            from edgecnn.converters.cross_layer_equalization import equalize
            from edgecnn.converters.quantize import CLE_IMAGES

            equalize(model, self.calibration.take(config.max_images).preprocessed(
                self.card.input, 0, CLE_IMAGES))
        return model

    def result(self, names: dict[str, str], all_int8: onnx.ModelProto) -> BudgetResult:
        return _result(self.budget, self.float_accuracy, self.chosen, self.trials, names,
                       all_int8, self.x)


def _with_method(config: QuantConfig, method: str, float_path: Path) -> QuantConfig | None:
    """``config`` with ``method`` added, or None where it already has it (the user asked for
    it, or chose another calibration method) or it cannot apply (no equalisable pairs)."""
    if method == "mse":
        if config.method != "minmax":
            return None
        cache = config.calibration_cache
        return replace(config, method="mse",
                       calibration_cache=cache.with_name("mse.json") if cache else None)
    if method == "bias-correction":  # corrects the int8 model: the ranges stay, and the cache
        return None if config.bias_correction else replace(config, bias_correction=True)
    if config.cross_layer_equalization or not _has_equalizable_pairs(float_path):
        return None  # equalised ranges get a cache of their own (quantize._cache_path)
    return replace(config, cross_layer_equalization=True)


def ranked_nodes(worst_first: list[Any]) -> list[str]:
    """The nodes of the layer table's rows (worst own error first), once each, leaving out
    ops that only move values already on a grid (:data:`PASS_THROUGH`)."""
    return list(dict.fromkeys(e.tensor.node for e in worst_first
                              if e.tensor.node and e.tensor.op not in PASS_THROUGH))


def _int16_candidates(model: onnx.ModelProto, ranked: list[str]) -> list[str]:
    """``ranked`` (worst own error first) for int16: each layer preceded by the nodes writing its
    inputs (its own error starts with their rounding), kept where the node and every reader of
    its outputs have 16x8 kernels (an integer-only file can hold nothing else) and it writes no
    graph output (an int16 output would give the file float I/O)."""
    from edgecnn.converters.int8_forms import int16_kernel

    by_name = {n.name: n for n in model.graph.node}
    producer = {out: n for n in model.graph.node for out in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    outputs = {o.name for o in model.graph.output}

    def holds(node: onnx.NodeProto) -> bool:  # and keeps the file's int8 outputs
        return not outputs & set(node.output) and int16_kernel(node.op_type) and all(
            int16_kernel(r.op_type) for out in node.output for r in readers.get(out, []))

    found: list[str] = []
    for name in ranked:
        node = by_name.get(name)
        if node is None:
            continue
        writers = [producer[i] for i in node.input if i in producer]
        found += [n.name for n in [*writers, node] if n.name and holds(n)]
    return list(dict.fromkeys(found))


def _module_names(model: onnx.ModelProto, nodes: list[str], known: dict[str, str]
                  ) -> dict[str, str]:
    """Layer names (PyTorch module paths) of ``nodes`` the layer table did not name."""
    from edgecnn.checks.layer_table import module_path

    return {n.name: module_path(n) or n.name for n in model.graph.node
            if n.name in nodes and n.name not in known}


def _has_equalizable_pairs(float_path: Path) -> bool:
    from edgecnn.converters.cross_layer_equalization import find_pairs

    return bool(find_pairs(onnx.load(float_path, load_external_data=False))[0])


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
