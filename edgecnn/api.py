"""The Python API: everything the CLI does, as functions returning typed results.

    from edgecnn import api
    from edgecnn.files.shipped import SHIPPED_TEST_SET
    result = api.convert("lenet5", output="lenet5_int8.tflite",
                         config=api.ConvertConfig("tflite", int8=True))
    report = api.validate(["lenet5", result.path], data=SHIPPED_TEST_SET)

A model argument is a path or the short name of a shipped model (``lenet5``, see
:mod:`edgecnn.files.shipped`).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecnn.checks.budget import Budget, BudgetResult
from edgecnn.checks.int8_cost import Int8Cost
from edgecnn.checks.layer_table import LayerReport
from edgecnn.checks.validate import ParityReport, Thresholds
from edgecnn.checks.validate import validate as _validate
from edgecnn.errors import BadInputError, ConversionError, ParameterError
from edgecnn.files.card import ModelCard
from edgecnn.files.data import SHIPPED_CALIBRATION_SET, Dataset, TensorDataset, load_dataset
from edgecnn.files.model_files import card_or_default, load_onnx
from edgecnn.files.outputs import atomic_path, check_output_path
from edgecnn.files.shipped import is_shipped, resolve_model
from edgecnn.inspection import ModelInfo, inspect_model
from edgecnn.memory import release_memory

if TYPE_CHECKING:
    import onnx

    from edgecnn.bench import BenchReport

TARGET_FORMATS = ("onnx", "tflite")
# TFLite int8 vs the QDQ reference, in output steps. A correct lowering differs only by rounding:
# LiteRT/XNNPACK requantise in float like the reference (0 steps but for ties), TFLite's builtin
# kernels in fixed point (at most 1 step per requantisation, and a step in one layer can move the
# next layer's output by a step too). A wrong lowering (layout, scale, zero point) is tens of
# steps off, but a kernel whose arithmetic is subtly not the reference's may be 2 (issue 22): on
# LiteRT any difference at the outputs has the layers checked (self_check_tflite); tflite-runtime
# only beyond 3 steps (its fixed-point kernels are a step off by design, and in 2.14 the preserved
# copy of an int8 ADD's input read 88 steps off on a correct file: a false culprit).
INT8_SELF_CHECK_STEPS = {"litert": 0, "tflite-runtime": 3}
INT8_COST_IMAGES = 256  # calibration images compared at the outputs, int8 against fp32
SELF_CHECK_IMAGES = 32  # real calibration images, plus 8 seeded random ones
LAYER_CHECK_IMAGES = 1  # every activation is kept for the layer check (and exports are often batch 1)


@dataclass(frozen=True)
class ConvertConfig:
    """One conversion request, validated here once."""

    to: str = "onnx"
    int8: bool = False
    calib: Path | None = None
    calib_method: str = "minmax"
    per_channel: bool = True
    io_dtype: str | None = None
    nchw_input: bool = False
    opset: int = 18
    trust_pickle: bool = False
    arch: str | None = None
    onnx_int8_encoding: str = "u8s8"  # how the ONNX file stores int8: see converters/qdq.py
    input_shape: tuple[int, ...] | None = None  # fixes an ONNX input's symbolic dims
    # preprocessing recorded as the card: x = (pixels * pixel_scale - mean) / std
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pixel_scale: float | None = None
    # keep the fewest layers float so int8 meets it, after trying the post-training methods of
    # Budget.methods (cross-layer equalisation, mse ranges, bias correction; () for none)
    budget: Budget | None = None
    budget_data: Path | None = None  # labelled images the budget is measured on
    # what an int8 TFLite file is written for: cpu (float islands where they are faster), npu
    # or mcu (integer-only: every op int8, or refused in one line); converters/islands.py
    int8_for: str = "cpu"
    bias_correction: bool = False  # remove int8's mean shift per layer (opt-in: see README)
    adaround: bool = False  # learn each weight's rounding (opt-in: see README)
    # equalise consecutive layers' weight ranges before calibrating (opt-in: see
    # docs/int8-accuracy.md for where it helps)
    cross_layer_equalization: bool = False
    # ONNX node names computed with int16 activations and int8 weights (TFLite's 16x8 mode):
    # for the few layers int8 hurts most (`edgecnn layers` ranks them), where float costs more
    int16_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from edgecnn.converters.qdq import ONNX_INT8_ENCODINGS

        if self.int16_layers and not self.int8:
            raise ParameterError("`int16_layers` are layers of an int8 model; add int8=True",
                                 "int16_layers", "int8")

        if self.calib is not None and not self.int8:
            raise ParameterError("`calib` only applies with int8=True; add int8=True or drop `calib`",
                                 "calib", "int8")
        if (self.budget is not None or self.budget_data is not None) and not self.int8:
            raise ParameterError("an accuracy budget (`max_drop_pp` or `min_agreement_pct`, "
                                 "measured on `budget_data`) chooses which layers of an int8 model stay "
                                 "float; add int8=True", "max_drop_pp", "min_agreement_pct",
                                 "budget_data", "int8")
        if self.budget_data is not None and self.budget is None:
            raise ParameterError("`budget_data` is what an accuracy budget is measured on; add "
                                 "`max_drop_pp` or `min_agreement_pct`, or drop `budget_data`",
                                 "budget_data", "max_drop_pp", "min_agreement_pct")

        if self.to not in TARGET_FORMATS:
            raise ParameterError(f"to={self.to!r}; choose from {', '.join(TARGET_FORMATS)}", "to")
        if self.onnx_int8_encoding not in ONNX_INT8_ENCODINGS:
            raise ParameterError(f"onnx_int8_encoding={self.onnx_int8_encoding!r}; choose from "
                                 f"{', '.join(ONNX_INT8_ENCODINGS)}", "onnx_int8_encoding")
        from edgecnn.converters.onnx_to_tflite import INT8_TARGETS

        if self.int8_for not in INT8_TARGETS:
            raise ParameterError(f"int8_for={self.int8_for!r}; choose from "
                                 f"{', '.join(INT8_TARGETS)}", "int8_for")
        if self.int8_for != "cpu" and (self.to != "tflite" or not self.int8):
            raise ParameterError(f"int8_for={self.int8_for} writes an integer-only int8 TFLite "
                                 "file; add to=tflite int8=True", "int8_for", "to", "int8")
        if self.int8_for != "cpu" and self.io_dtype == "float32":
            raise ParameterError(f"int8_for={self.int8_for} writes int8 (or uint8) I/O: float I/O "
                                 "would add a float QUANTIZE and DEQUANTIZE; drop io_dtype=float32",
                                 "int8_for", "io_dtype")
        if self.int8_for != "cpu" and self.budget is not None and self.budget.keep == "float":
            raise ParameterError(f"an accuracy budget with keep=float keeps layers float, which "
                                 f"int8_for={self.int8_for} cannot hold; keep them int16 "
                                 "(keep=int16) or convert with int8_for=cpu", "int8_for", "keep")
        if (self.bias_correction or self.adaround or self.cross_layer_equalization) \
                and not self.int8:
            raise ParameterError("`bias_correction`, `adaround` and `cross_layer_equalization` change "
                                 "int8 layers; add int8=True", "bias_correction", "adaround",
                                 "cross_layer_equalization", "int8")
        if self.io_dtype not in (None, "float32") and not self.int8:
            raise ParameterError(f"io_dtype={self.io_dtype} needs int8=True", "io_dtype", "int8")
        if self.to == "onnx" and (self.io_dtype or self.nchw_input):
            raise ParameterError("`io_dtype` and `nchw_input` apply to to=tflite only", "io_dtype",
                                 "nchw_input", "to")
        if self.input_shape is not None and (
                len(self.input_shape) != 4 or not all(1 <= d <= 16384 for d in self.input_shape)):
            raise ParameterError(f"input_shape={','.join(map(str, self.input_shape))}: give four "
                                 "sizes N,C,H,W, each 1..16384 (e.g. 1,3,224,224)", "input_shape")

    def with_preprocessing(self, card: ModelCard) -> ModelCard:
        """``card`` with --mean/--std/--pixel-scale applied (checked like any card)."""
        if self.mean is None and self.std is None and self.pixel_scale is None:
            return card
        spec = card.input
        try:
            spec = replace(spec, mean=self.mean if self.mean is not None else spec.mean,
                           std=self.std if self.std is not None else spec.std,
                           pixel_scale=(self.pixel_scale if self.pixel_scale is not None
                                        else spec.pixel_scale))
        except ValueError as exc:
            raise ParameterError(f"`mean`/`std`/`pixel_scale`: {exc}", "mean", "std",
                                 "pixel_scale") from None
        return replace(card, input=spec)


@dataclass
class ConvertResult:
    path: Path
    format: str
    int8: bool
    size_bytes: int
    seconds: float
    checks: dict[str, Any] = field(default_factory=dict)
    budget: BudgetResult | None = None  # what an accuracy budget chose, when one was given
    int8_cost: Int8Cost | None = None  # int8 against fp32 at the outputs, when quantised here

    def __repr__(self) -> str:
        kind = self.format + (" int8" if self.int8 else "")
        check = next((f"{k}: {v}" for k, v in self.checks.items() if "max|Δ|" in k
                      and "torch" not in k), "")
        cost = f", int8 vs fp32: {self.checks['int8 vs fp32']}" if self.int8_cost else ""
        return (f"<ConvertResult {self.path} ({kind}, {self.size_bytes / 1024:,.1f} KiB, "
                f"{self.seconds:.1f} s{', ' + check if check else ''}{cost})>")

    def run(self, x: Any, runtime: str | None = None) -> list[np.ndarray]:
        """Run the converted file on ``x`` (float (N, C, H, W), an array or a tensor) through
        ``runtime`` (the first installed for its format by default): every output, NCHW."""
        from edgecnn.files.data import _as_array
        from edgecnn.runtimes.sessions import open_session, predict_all, runtimes_for

        batch = np.ascontiguousarray(_as_array(x, "x"), np.float32)
        return predict_all(open_session(self.path, runtime or runtimes_for(self.path)[0]), batch)

    def rows(self) -> list[dict[str, Any]]:
        return [{"output": str(self.path), "format": self.format + (" int8" if self.int8 else ""),
                 "size KiB": round(self.size_bytes / 1024, 1), "seconds": round(self.seconds, 2),
                 **self.checks}]


def default_output(source: Path, config: ConvertConfig) -> Path:
    suffix = ".onnx" if config.to == "onnx" else ".tflite"
    tag = "_int8" if config.int8 else ""
    stem = source.stem.removesuffix("_int8")
    folder = Path.cwd() if is_shipped(source) else source.parent  # never into site-packages
    default = folder / f"{stem}{tag}{suffix}"
    if default.name == source.name:  # never default onto the input
        default = folder / f"{stem}{tag}.converted{suffix}"
    return default


def convert(model: str | Path | Any, output: str | Path | None = None,
            config: ConvertConfig = ConvertConfig(), *, example_inputs: Any = None,
            calibration: Any = None, card: ModelCard | None = None) -> ConvertResult:
    """Convert a model to ONNX or TFLite (optionally int8), check the result, write it.

    ``model`` is a .pt/.pt2/.onnx file, a shipped model's name, or a ``torch.nn.Module`` in
    memory: then ``example_inputs`` (a tensor, or a tuple holding one (N, C, H, W) tensor) is
    what ``torch.export`` traces it with, the batch left free. ``calibration`` is a data path,
    a :class:`~edgecnn.files.data.Dataset`, or an iterable of preprocessed float (N, C, H, W) arrays
    or tensors, or (x, y) pairs: a DataLoader (``config.calib`` names a path the same way).
    ``card`` describes an in-memory module's input preprocessing and labels."""
    from edgecnn.converters import qdq
    from edgecnn.converters.quantize import (
        QuantConfig,
        quantize_onnx,
        refuse_test_images,
        require_calibration,
    )
    from edgecnn.converters.torch_to_onnx import save_external
    from edgecnn.files.torch_files import TorchModel, torch_model_from_module

    started = time.perf_counter()
    torch_model: TorchModel | None = None
    if isinstance(model, (str, Path)):
        if example_inputs is not None or card is not None:
            raise BadInputError("example_inputs and card describe a torch.nn.Module given in "
                                "memory; a model file carries its own")
        source = resolve_model(model)
    else:
        torch_model = torch_model_from_module(model, example_inputs, card)
        source = torch_model.path
    if calibration is not None and not isinstance(calibration, Dataset):
        if isinstance(calibration, (str, Path)):
            config = replace(config, calib=Path(calibration))
            calibration = None
        else:
            calibration = TensorDataset.from_batches(calibration)
    if calibration is not None and not config.int8:
        raise BadInputError("calibration data is for int8; set int8=True in the ConvertConfig")
    out = check_output_path(Path(output) if output else default_output(source, config),
                            inputs=(source, config.calib))
    checks: dict[str, Any] = {}
    budget: BudgetResult | None = None
    int8_cost: Int8Cost | None = None
    onnx_model, card = _onnx_of(source, config, checks, torch_model)
    del torch_model
    release_memory()  # the PyTorch model is gone: give its memory back before the next step
    already_int8 = qdq.is_qdq(onnx_model)
    calib = None
    if config.int8 and not already_int8:
        if calibration is not None:
            calib = calibration
        else:
            calib = load_dataset(require_calibration(config.calib, SHIPPED_CALIBRATION_SET),
                                 split="train")
        refuse_test_images(calib)
        with tempfile.TemporaryDirectory(prefix="edgecnn-") as tmp:
            float_path = Path(tmp) / "float.onnx"
            int16_nodes = _int16_nodes(onnx_model, config.int16_layers, source)
            save_external(onnx_model, float_path)
            del onnx_model  # the float model is on disk: keep peak memory at one copy
            release_memory()
            # the ONNX file's encoding decides its weights' width (7 bits for u8s7, which keeps
            # onnxruntime's u8s8 kernels exact on x86 without VNNI); TFLite keeps all 8
            bits = qdq.weight_bits(config.onnx_int8_encoding) if config.to == "onnx" else 8
            quant_config = QuantConfig(config.calib_method, config.per_channel, weight_bits=bits,
                                       bias_correction=config.bias_correction,
                                       adaround=config.adaround,
                                       cross_layer_equalization=config.cross_layer_equalization,
                                       int16_nodes=int16_nodes)
            if config.budget is not None:
                budget = _search_budget(float_path, card, calib, config, quant_config)
                report = budget.report
                checks["int8 budget"] = budget.summary()
            else:
                report = quantize_onnx(float_path, card, calib, quant_config)
            int8_cost = measure_int8_cost(float_path, report.model, card, calib)
        onnx_model = report.model
        checks["calibration images"] = report.calibration_images
        checks["int8 vs fp32"] = int8_cost.summary()
        if (warning := int8_cost.warning()) is not None:
            warnings.warn(warning, stacklevel=2)
        if report.float_ops:
            checks["float ops"] = ", ".join(f"{k} x{v}" for k, v in report.float_ops.items())
    elif already_int8 and config.budget is not None:
        raise BadInputError(f"{source}: is already int8; an accuracy budget needs the float model")
    elif already_int8 and not config.int8 and config.to == "tflite":
        raise BadInputError(f"{source}: is an int8 QDQ model; add int8=True to write int8 TFLite",
                            parameters=("int8",))
    if config.to == "onnx":
        if qdq.is_qdq(onnx_model):
            stored = qdq.storage_encoding(onnx_model, config.onnx_int8_encoding)
            qdq.reencode(onnx_model, stored)
            qdq.record_encoding(onnx_model, stored)
            checks["int8 encoding"] = stored if stored == config.onnx_int8_encoding else (
                f"{stored} (the weights use 8 bits; {config.onnx_int8_encoding} needs them "
                "quantised within 7: convert from the float model)")
        if source.suffix.lower() == ".onnx":  # exports were checked against PyTorch already
            data = onnx_model.SerializeToString()
            _check_onnx_bytes(data, source)
            with atomic_path(out) as tmp:
                tmp.write_bytes(data)
            size = len(data)
        else:  # written weight by weight: the file is never in memory beside the proto
            from edgecnn.converters.onnx_writer import save_model

            with atomic_path(out) as tmp:
                size = save_model(onnx_model, tmp, release=True)
    else:
        if calib is None and config.int8:
            calib = _self_check_images(config.calib, card)
        with tempfile.TemporaryDirectory(prefix="edgecnn-tflite-") as weights, \
                atomic_path(out) as tmp:  # checked from the file: its bytes are not held twice
            # the weights go to a side file and the proto holding them is freed (protobuf keeps
            # its arena until then): the lowering reads each weight from the file once, and
            # the self-check's reference runs the same file
            onnx_path = Path(weights) / "m.onnx"
            save_external(onnx_model, onnx_path)
            del onnx_model
            release_memory()
            size = _to_tflite(onnx_path, source, card, config, checks, calib, tmp)
    return ConvertResult(out, config.to, config.int8, size, time.perf_counter() - started,
                         checks, budget, int8_cost)


def measure_int8_cost(float_path: Path, quantised: Any, card: ModelCard, images: Dataset
                      ) -> Int8Cost:
    """int8 (the QDQ reference reading of ``quantised``) against the float model at ``float_path``
    on the first :data:`INT8_COST_IMAGES` real images: what the user gives up, label-free."""
    from edgecnn.checks.int8_cost import measure
    from edgecnn.converters.torch_to_onnx import save_external
    from edgecnn.runtimes.sessions import predict_all, reference_session

    x = images.preprocessed(card.input, 0, INT8_COST_IMAGES)
    with tempfile.TemporaryDirectory(prefix="edgecnn-cost-") as tmp:
        int8_path = Path(tmp) / "int8.onnx"
        copy = type(quantised)()
        copy.CopyFrom(quantised)
        save_external(copy, int8_path)
        floats = predict_all(reference_session(float_path), x)
        int8s = predict_all(reference_session(int8_path), x)
    names = [o.name for o in quantised.graph.output]
    return measure(floats, int8s, names)


def _search_budget(float_path: Path, card: ModelCard, calib: Dataset, config: ConvertConfig,
                   quant_config: Any) -> BudgetResult:
    """Quantise keeping the fewest layers float (int16 in an integer-only file) that meet
    ``config.budget``, after the post-training methods that help (see :mod:`edgecnn.checks.budget`), measured on ``--data``
    (default: the shipped MNIST test set)."""
    from tqdm import tqdm

    from edgecnn.checks.budget import search
    from edgecnn.files.data import SHIPPED_TEST_SET

    assert config.budget is not None
    budget = config.budget
    if budget.keep is None:  # an integer-only file cannot hold a float layer; int16 it can
        budget = replace(budget, keep="float" if config.int8_for == "cpu" else "int16")
    images = load_dataset(config.budget_data or SHIPPED_TEST_SET, split="test")
    with tqdm(desc="int8 budget", unit="candidate", leave=False) as bar:
        return search(float_path, card, calib, images, budget, quant_config, bar)


def _check_onnx_input(model: Any, source: Path) -> None:
    """A float32 image input, and a graph onnxruntime can load, before any work on it."""
    import onnx
    import onnxruntime as ort

    weights = {t.name for t in model.graph.initializer}
    image = next(i for i in model.graph.input if i.name not in weights)
    elem = image.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise ConversionError(f"{source}: input {image.name!r} is "
                              f"{onnx.TensorProto.DataType.Name(elem).lower()}; edgecnn converts "
                              "models with a float32 image input: re-export in float32")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not 7 <= opset <= newest:
        raise ConversionError(f"{source}: uses opset {opset}; edgecnn reads opsets 7..{newest} "
                              "(11 or newer recommended): re-export with another opset")
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's Fail, InvalidGraph, NotImplemented...
        detail = " ".join(str(exc).split())
        detail = detail.split("failed:", 1)[-1].strip()[:240]
        raise ConversionError(f"{source}: onnxruntime cannot load it ({detail}); re-export the "
                              "model (opset 11..21, acyclic, every tensor defined)") from None


def _check_onnx_bytes(data: bytes, source: Path) -> None:
    """The ONNX checker and an onnxruntime load, before a cleaned-up graph is written."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(data)
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # checker and onnxruntime raise many types
        detail = " ".join(str(exc).split())[:240]
        raise ConversionError(f"{source}: the converted graph does not load ({detail}); the "
                              "input model is broken or uses something edgecnn cannot keep") from None


def _int16_nodes(model: onnx.ModelProto, layers: tuple[str, ...], source: Path
                 ) -> tuple[str, ...]:
    """The ONNX nodes of ``layers``, each named as `edgecnn layers` names it (a PyTorch module
    path such as ``blocks.3.project.1``) or by its node name; ``all``: every node writing a
    float value (the whole model in 16x8, onnxruntime's A16W8)."""
    import onnx

    from edgecnn.checks.layer_table import module_path
    from edgecnn.converters.quantize import name_unnamed_nodes

    if layers:
        name_unnamed_nodes(model)  # another exporter's file may leave nodes unnamed
    if layers == ("all",):
        inferred = onnx.shape_inference.infer_shapes(model)
        floats = {v.name for v in [*inferred.graph.value_info, *inferred.graph.output]
                  if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
        return tuple(n.name for n in model.graph.node if set(n.output) & floats)
    nodes: list[str] = []
    for layer in layers:
        found = [n.name for n in model.graph.node if layer in (n.name, module_path(n))]
        if not found:
            raise ParameterError(f"{source}: no layer or node {layer!r} for int16_layers; "
                                 "`edgecnn layers` lists the model's layers", "int16_layers")
        nodes += [name for name in found if name not in nodes]
    return tuple(nodes)


def _onnx_of(source: Path, config: ConvertConfig, checks: dict[str, Any],
             torch_model: Any = None) -> tuple[Any, ModelCard]:
    """The ONNX model of ``source`` (or of ``torch_model``, a module given in memory)."""
    from edgecnn.converters import onnx_passes
    from edgecnn.converters.torch_to_onnx import card_from_onnx, export_onnx
    from edgecnn.files.torch_files import load_torch_model

    suffix = source.suffix.lower()
    if torch_model is not None or suffix in (".pt", ".pt2"):
        if config.input_shape is not None:
            raise ParameterError("`input_shape` applies to ONNX files; a PyTorch model is "
                                 "exported at the input size of its card or export", "input_shape")
        if torch_model is None:
            torch_model = load_torch_model(source, trust_pickle=config.trust_pickle,
                                           arch=config.arch)
        torch_model.card = config.with_preprocessing(torch_model.card)
        exported = export_onnx(torch_model, config.opset, release=True)
        checks["onnx max|Δ| vs torch"] = exported.max_abs_diff
        return exported.model, torch_model.card
    if suffix == ".onnx":
        from edgecnn.converters import qdq
        from edgecnn.converters.torch_to_onnx import attach_card

        model = load_onnx(source)
        if onnx_passes.drop_initializer_inputs(model):  # an IR < 4 file lists its weights too
            checks["onnx clean-up"] = "initializers listed as inputs dropped"
        fixed = onnx_passes.fix_input_shape(model, config.input_shape, str(source))
        _check_onnx_input(model, source)
        if not qdq.is_qdq(model) and (fixed or onnx_passes.computes_shapes(model)):
            model = onnx_passes.simplify(model)  # folds what the fixed shape made constant
            checks["onnx simplified"] = "onnxslim"
        passes = onnx_passes.clean(model)  # fold BatchNorm, drop Dropout/Identity, as on export
        if any(passes.values()):
            checks["onnx clean-up"] = ", ".join(f"{k} {v}" for k, v in passes.items() if v)
        card = card_from_onnx(model, str(source))
        if card is None:
            image = onnx_passes.image_input(model)
            dims = [d.dim_value or d.dim_param for d in image.type.tensor_type.shape.dim]
            if len(dims) != 4:
                raise ConversionError(f"{source}: input {image.name!r} has shape "
                                      f"{dims}; conversion needs a 4-D image input (N, C, H, W)")
            card = _card_from_onnx_shapes(source, model, tuple(dims[1:]))
        updated = config.with_preprocessing(card)
        if updated is not card or fixed:
            attach_card(model, updated)  # recorded in the ONNX and TFLite files written
        return model, updated
    if not source.exists():
        raise BadInputError(f"{source}: no such model file")
    raise BadInputError(f"{source}: cannot convert {source.suffix!r} files; give .pt, .pt2 or .onnx")


def _card_from_onnx_shapes(source: Path, model: Any, shape: tuple[int, ...]) -> ModelCard:
    """A card for an ONNX file without one: its input size, one label per class on the first
    output's axis 1 (logits or a segmentation map); a sidecar card wins when present."""
    from edgecnn.files.card import card_from_shapes, read_sidecar

    sidecar = read_sidecar(source)
    if sidecar is not None:
        return sidecar
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    try:
        return card_from_shapes(source.stem, tuple(int(d) for d in shape), dims,
                                derived_from="the ONNX file")
    except ValueError as exc:
        raise ConversionError(f"{source}: input shape {list(shape)}: {exc}") from None


def _self_check_images(calib: Path | None, card: ModelCard) -> Dataset | None:
    """Real images for checking an already-quantised model: --calib, else the shipped
    calibration set when it fits the model; None leaves only seeded random input."""
    from edgecnn.converters.quantize import require_calibration

    if calib is None and not SHIPPED_CALIBRATION_SET.exists():
        return None
    data = load_dataset(require_calibration(calib, SHIPPED_CALIBRATION_SET), split="train")
    if calib is None and data.image_shape != tuple(card.input.shape):
        return None
    data.check_fits(card.input)
    return data


def _to_tflite(onnx_path: Path, source: Path, card: ModelCard, config: ConvertConfig,
               checks: dict[str, Any], images: Dataset | None, out: Path) -> int:
    """Lower ``onnx_path`` (saved with external data) into ``out``, self-check it from there;
    the file's size in bytes."""
    import onnx

    from edgecnn.converters.onnx_to_tflite import TFLiteConfig, convert_onnx_to_tflite

    graph = onnx.load(str(onnx_path), load_external_data=False)
    result = convert_onnx_to_tflite(graph, source.name,
                                    TFLiteConfig(config.io_dtype, config.nchw_input,
                                                 config.int8_for),
                                    onnx_path.parent)
    out.write_bytes(result.data)
    size = len(result.data)
    result = replace(result, data=b"")  # the bytes are on disk
    checks.update(self_check_tflite(out, onnx_path, card, result.output_quant, images,
                                    integer_only=config.int8_for != "cpu"))
    checks["ops"] = ", ".join(f"{op} v{v}" for op, v in result.ops)
    checks["oldest runtime"] = result.min_runtime
    return size


def self_check_tflite(data: bytes | Path, onnx_model: Any, card: ModelCard, output_quant: Any,
                      images: Dataset | None = None, *,
                      integer_only: bool = False) -> dict[str, Any]:
    """Run the new TFLite model and its ONNX source on the same images; refuse a mismatch.
    ``data`` is the TFLite bytes or file; ``onnx_model`` a proto or a saved ONNX file.

    int8 is compared with the QDQ reference (never with onnxruntime's fused integer kernels,
    which differ by CPU), on real ``images`` where given: uniform noise alone keeps most
    activations far from the ranges the model was calibrated for. Any output difference has
    the layers checked: a kernel one step off on a fifth of its values (issue 22's box decode)
    can leave the outputs within a few steps. ``integer_only``: an NPU/MCU file, whose int8
    requantisations are allowed a step beside ties.
    """
    from edgecnn.converters.torch_to_onnx import save_external
    from edgecnn.runtimes.sessions import open_session, predict_all, reference_session, runtimes_for

    x = card.input.random_batch(8 if images is not None else 16)
    if images is not None:
        x = np.concatenate([images.preprocessed(card.input, 0, SELF_CHECK_IMAGES), x])
    x = _whole_batches(x, onnx_model, card)
    with tempfile.TemporaryDirectory(prefix="edgecnn-check-") as tmp:
        onnx_path, tfl_path = Path(tmp) / "m.onnx", Path(tmp) / "m.tflite"
        if isinstance(onnx_model, Path):
            onnx_path = onnx_model  # saved already
        else:
            save_external(onnx_model, onnx_path)  # moves the weights out: the proto is done with
        if isinstance(data, Path):  # a temporary output (.part): read it through a link
            tfl_path.symlink_to(data.resolve())
        else:
            tfl_path.write_bytes(data)
        wants = predict_all(reference_session(onnx_path), x)
        runtime = runtimes_for(tfl_path)[0]
        gots = predict_all(open_session(tfl_path, runtime), x)
        if len(gots) != len(wants) or any(g.shape != w.shape
                                          for g, w in zip(gots, wants, strict=False)):
            raise ConversionError(f"TFLite outputs {[list(g.shape) for g in gots]} do not match "
                                  f"ONNX {[list(w.shape) for w in wants]}; please report this "
                                  "model")
        if output_quant is not None:
            steps = float(np.max(np.abs(gots[0] - wants[0]))) / output_quant.scale[0]
            result: dict[str, Any] = {"tflite max|Δ| vs qdq reference (steps)": round(steps, 2)}
            if steps > INT8_SELF_CHECK_STEPS.get(runtime, 3):  # ties, or a wrong lowering?
                result["layer check"] = _check_layers(onnx_path, tfl_path,
                                                      x[:LAYER_CHECK_IMAGES], runtime,
                                                      integer_only)
            return result
        worst, beyond = 0.0, None
        for i, (got, want) in enumerate(zip(gots, wants, strict=True)):
            diff = float(np.max(np.abs(got - want))) if got.size else 0.0
            if diff > 1e-4 * max(float(np.max(np.abs(want))) if want.size else 0.0, 1.0):
                beyond = i if beyond is None else beyond
            worst = max(worst, diff)
        int8 = _is_int8(onnx_path)
        if beyond is None:
            return {("tflite max|Δ| vs qdq reference (float output)" if int8
                     else "tflite max|Δ| vs onnx"): worst}
        if not int8:
            raise ConversionError(f"TFLite output {beyond} differs from ONNX by {worst:.3g}; "
                                  "please report this model")
        # an int8 model with a float output (a detector's boxes and scores kept apart): its
        # int8 layers' rounding ties reach the output unquantised; the layer check tells them
        # from a wrong lowering
        return {"tflite max|Δ| vs qdq reference (float output)": worst,
                "layer check": _check_layers(onnx_path, tfl_path, x[:LAYER_CHECK_IMAGES],
                                             runtime, integer_only)}


def _is_int8(onnx_path: Path) -> bool:
    import onnx

    from edgecnn.converters import qdq

    return qdq.is_qdq(onnx.load(str(onnx_path), load_external_data=False))


def _whole_batches(x: np.ndarray, onnx_model: Any, card: ModelCard) -> np.ndarray:
    """``x`` cut (or topped up with random images) to whole batches of a file exported for a
    fixed batch (3, 5, ...): its reference cannot run a remainder."""
    import onnx

    model = (onnx.load(str(onnx_model), load_external_data=False)
             if isinstance(onnx_model, Path) else onnx_model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
    if batch <= 1 or len(x) % batch == 0:
        return x
    if len(x) < batch:
        return np.concatenate([x, card.input.random_batch(batch - len(x), seed=1)])
    return x[:len(x) // batch * batch]


def _check_layers(onnx_path: Path, tfl_path: Path, x: np.ndarray, runtime: str,
                  integer_only: bool = False) -> str:
    """Tell tie noise from a wrong lowering (see :mod:`edgecnn.checks.int8_self_check`): every layer whose
    inputs match the QDQ reference exactly must match it within one step, and on LiteRT (float
    requantisation, as the reference) off by a step only beside a rounding tie."""
    from edgecnn.checks.int8_self_check import (
        TIE_STEPS,
        compare_layers,
        first_unexplained,
        pinned_identical_share,
        unexplained_reason,
    )

    module = {"litert": "ai_edge_litert.interpreter",
              "tflite-runtime": "tflite_runtime.interpreter"}[runtime]
    diffs = compare_layers(onnx_path, tfl_path, x, module)
    culprit = first_unexplained(diffs, off_ties=runtime == "litert" and not integer_only)
    if culprit is not None:
        raise ConversionError(f"int8 TFLite layer {culprit.tensor!r} "
                              f"{unexplained_reason(culprit)}; please report this model")
    share = pinned_identical_share(diffs)
    if share is None:
        exact = sum(d.inputs_identical for d in diffs)
        return (f"{exact} of {len(diffs)} layers had identical inputs; all within {TIE_STEPS} "
                "step (output differences are rounding ties carried through depth)")
    return (f"{len(diffs)} layers, each fed TFLite's own inputs: {100 * share:.3f} % identical, "
            f"all within {TIE_STEPS} step (output differences are rounding ties carried "
            "through depth)")


def _check_counts(**counts: int | None) -> None:
    """Image counts and batch sizes are whole numbers >= 1 (None: all, or the default)."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ParameterError(f"{name}={value}: give a number >= 1", name)


def validate(models: list[str | Path], data: str | Path | Dataset, *,
             reference: str | Path | None = None, thresholds: Thresholds = Thresholds(),
             runtime: str | None = None, limit: int | None = None,
             batch_size: int = 500, trust_pickle: bool = False,
             arch: str | None = None, placements: tuple[str, ...] = ()) -> ParityReport:
    """Parity report of ``models`` on labelled ``data`` (see :mod:`edgecnn.checks.validate`);
    ``placements`` (e.g. ``("torch-cuda:fp16",)``) add rows for each PyTorch model."""
    _check_counts(limit=limit, batch_size=batch_size)
    paths = [resolve_model(m) for m in models]
    ref = resolve_model(reference) if reference else None
    card_source = ref or next((p for p in paths if p.suffix in (".pt", ".pt2")), paths[0])
    card = card_or_default(card_source, trust_pickle=trust_pickle, arch=arch)
    dataset = data if isinstance(data, Dataset) else load_dataset(data, split="test")
    return _validate(paths, dataset.take(limit), card, reference=ref, thresholds=thresholds,
                     runtime=runtime, batch_size=batch_size,
                     placements=(placements,) if isinstance(placements, str) else tuple(placements),
                     trust_pickle=trust_pickle, arch=arch)


def bench(models: list[str | Path] | str | Path, target: str = "cpu", *,
          runtime: str | None = None, threads: int | None = None, batch: int | None = None,
          input_shape: tuple[int, ...] | None = None, warmup: int = 10, runs: int = 100,
          min_time: float = 1.0, max_time: float = 300.0, **target_options: Any) -> BenchReport:
    """Benchmark ``models`` side by side on ``target`` (see ``edgecnn.targets.target_names()``:
    cpu, cuda, ethos-u, mcu, rpi), as ``edgecnn bench`` does: the report's ``rows()`` are its
    table and ``table_columns()`` its columns. ``input_shape`` (N, C, H, W) sizes models with
    symbolic image dimensions. ``target_options`` are the target's own, its constructor's
    arguments: ``npu`` (Vela configurations) for ethos-u, ``data`` (parity images) for mcu,
    ``host``, ``port``, ``identity``, ``known_hosts``, ``ssh_config``, ``timeout``, ``setup``
    and ``remote_python`` for rpi over SSH; one the target does not take is refused."""
    from edgecnn.bench import bench as run_bench
    from edgecnn.targets.base import BenchConfig

    paths = [resolve_model(m) for m in ([models] if isinstance(models, (str, Path)) else models)]
    if input_shape is not None and batch is not None and batch != input_shape[0]:
        raise ParameterError(f"batch={batch} and input_shape={','.join(map(str, input_shape))}"
                             " disagree on the batch; give one", "batch", "input_shape")
    config = BenchConfig(runtime, threads, batch or (input_shape[0] if input_shape else None),
                         warmup, runs, min_time, max_time,
                         tuple(input_shape[1:]) if input_shape else None)
    return run_bench(paths, target, config, **target_options)


def layers(float_model: str | Path, int8_model: str | Path, data: str | Path | Dataset, *,
           limit: int | None = 300, batch_size: int = 32, trust_pickle: bool = False,
           arch: str | None = None) -> LayerReport:
    """Own and total int8 error of every quantised tensor (see :mod:`edgecnn.checks.layer_table`)."""
    from tqdm import tqdm

    from edgecnn.checks.layer_table import LayerReport, layer_errors
    from edgecnn.converters import qdq

    _check_counts(limit=limit, batch_size=batch_size)
    float_path, int8_path = resolve_model(float_model), resolve_model(int8_model)
    if int8_path.suffix.lower() != ".onnx":
        raise BadInputError(f"{int8_path}: give the int8 ONNX (QDQ) file; a .tflite is compared "
                            "with it by `edgecnn validate`")
    quantised = load_onnx(int8_path)
    if not qdq.is_qdq(quantised):
        raise BadInputError(f"{int8_path}: is not an int8 (QDQ) model; give the file written by "
                            "`edgecnn convert --to onnx --int8`")
    reference, card = _onnx_of(float_path, ConvertConfig("onnx", trust_pickle=trust_pickle,
                                                         arch=arch), {})
    if qdq.is_qdq(reference):
        raise BadInputError(f"{float_path}: is an int8 model; give the float model first")
    dataset = data if isinstance(data, Dataset) else load_dataset(data, split="test")
    dataset = dataset.take(limit)
    dataset.check_fits(card.input)
    x = dataset.preprocessed(card.input)
    with tqdm(total=len(x), desc="layers", unit="img", leave=False, disable=None) as bar:
        errors = layer_errors(reference, quantised, x, batch_size, bar, source=str(int8_path))
    return LayerReport(str(float_path), str(int8_path), str(dataset.source), len(x), errors)


def inspect(model: str | Path, *, trust_pickle: bool = False, arch: str | None = None) -> ModelInfo:
    """Format, I/O, parameters and ops of any supported model file."""
    return inspect_model(resolve_model(model), trust_pickle=trust_pickle, arch=arch)
