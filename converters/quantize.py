"""Static post-training int8 quantisation of ONNX models with onnxruntime, QDQ format.

The QDQ model is the single record of the quantisation: the TFLite writer reads its scales and
zero points and reuses them unchanged, so the int8 ONNX and int8 TFLite models are one model in
two containers. Settings follow the TFLite 8-bit spec, so nothing has to be re-derived there:
symmetric int8 weights with zero point 0 (per output channel by default), asymmetric int8
activations, int32 biases at input scale x weight scale.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from edgecnn.converters.int16_layers import (
    INT16_OPSET,
    int16_overrides,
    opset_for_int16,
    outputs_of,
)
from edgecnn.errors import ConversionError, DataError
from edgecnn.files.card import ModelCard
from edgecnn.files.data import Dataset
from edgecnn.memory import release_memory
from edgecnn.quiet import quiet

# mse: per-tensor ranges by error minimisation over a histogram (converters/range_setting.py)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "mse")
EXTERNAL_DATA_BYTES = 64 << 20
MSE_HISTOGRAM_BINS = 2048
# entropy calibration as TensorRT defines it: a 2048-bin histogram, thresholds searched down to
# the 128 levels a side of int8 (Migacz, "8-bit inference with TensorRT", 2017)
ENTROPY_HISTOGRAM_BINS, ENTROPY_LEVELS = 2048, 128
MIXED_RANGE_RATIO = 32  # inputs of one output Concat this far apart in range keep it float
ADAROUND_IMAGES = 64  # calibration images whose layer inputs AdaRound fits
CLE_IMAGES = 256  # calibration images whose pre-activation minimums bound absorbed biases
BIAS_CORRECTION_IMAGES = 500  # calibration images the mean shifts are measured on  # 8 bins per int8 step over the observed range
CALIBRATION_BATCH_ELEMENTS = 1 << 19  # MNIST: batches of 100; 224x224x3: batches of 3


@dataclass(frozen=True)
class QuantConfig:
    """How to quantise: validated once here, not scattered across call sites."""

    method: str = "minmax"
    per_channel: bool = True
    batch_size: int = 100
    max_images: int | None = 1000
    float_nodes: tuple[str, ...] = ()  # node names kept in float (an accuracy budget's choice)
    # node names computed with int16 activations and int8 weights (TFLite's 16x8 mode): their
    # inputs and outputs, and the ops that read those outputs, are int16, converted from and
    # back to int8 around them (onnxruntime's mixed-precision overrides); ONNX opset 21
    int16_nodes: tuple[str, ...] = ()
    # calibrated ranges: read when the file exists, written when it does not. They do not depend
    # on which nodes stay float, so an accuracy budget calibrates once for all its candidates
    calibration_cache: Path | None = None
    # 7: weights within [-64, 64] (onnxruntime's reduce_range), so its u8s8 kernels cannot
    # saturate on x86 without VNNI (converters/qdq.py, encoding u8s7); activations keep 8 bits
    weight_bits: int = 8
    # remove each Conv/Gemm's int8 mean shift from its bias (converters/bias_correction.py)
    bias_correction: bool = False
    # learn each Conv/Gemm weight's rounding, up or down (converters/adaround.py)
    adaround: bool = False
    # equalise consecutive Conv/Gemm weight ranges and absorb high biases in the float model
    # before calibration (converters/cross_layer_equalization.py)
    cross_layer_equalization: bool = False

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method {self.method!r}; choose from "
                             f"{', '.join(CALIBRATION_METHODS)}")
        if self.weight_bits not in (7, 8):
            raise ValueError(f"weight bits {self.weight_bits}; choose 7 or 8")
        if self.batch_size < 1:
            raise ValueError("calibration batch size must be at least 1")
        both = sorted(set(self.float_nodes) & set(self.int16_nodes))
        if both:
            raise ValueError(f"node {both[0]!r} is asked to stay float and to be int16; "
                             "choose one")


class DatasetCalibrationReader:
    """onnxruntime's CalibrationDataReader over a preprocessed dataset, with a progress bar."""

    def __init__(self, data: Dataset, card: ModelCard, input_name: str, batch_size: int) -> None:
        self._batches = data.batches(card.input, batch_size)
        self._input_name = input_name
        self._bar = tqdm(total=len(data), desc="calibrating", unit="img", disable=None,
                         leave=False)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            self._bar.close()
            return None
        self._bar.update(len(batch[0]))
        return {self._input_name: batch[0]}

    def rewind(self) -> None:  # part of the interface; a reader is used once here
        pass


@dataclass(frozen=True)
class QuantReport:
    model: onnx.ModelProto
    quantized_ops: dict[str, int]
    float_ops: dict[str, int]  # op types left in float (no int8 kernel in the QDQ registry)
    calibration_images: int


def quantize_onnx(model: onnx.ModelProto | Path, card: ModelCard, calibration: Dataset,
                  config: QuantConfig = QuantConfig()) -> QuantReport:
    """Quantise a float ONNX model (in memory, or a file: cheaper for big models) to int8 QDQ,
    calibrated on ``calibration``."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    onnxruntime.set_default_logger_severity(4)  # its errors reach the user as one line, below

    calibration = calibration.take(config.max_images)
    calibration.check_fits(card.input)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile,
              "mse": CalibrationMethod.Entropy}[config.method]  # mse: the entropy histogram
    with tempfile.TemporaryDirectory(prefix="edgecnn-quant-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        if isinstance(model, Path):
            src = model
            model = onnx.load(src, load_external_data=False)
            del model.graph.initializer[:]  # only the graph and metadata are needed from here
        else:
            name_unnamed_nodes(model)  # onnxruntime excludes nodes by name
            onnx.save(model, src)
        metadata_source = model
        int16_outputs = outputs_of(model, config.int16_nodes)
        if config.int16_nodes:
            # the graph onnxruntime quantises (an Upsample is a Resize from opset 10 on): the
            # overrides name its tensors
            graph: onnx.ModelProto
            src, graph = opset_for_int16(src, Path(tmp) / "opset21.onnx", model)
            model = graph
            written = {out for node in model.graph.node for out in node.output}
            lost = [name for name in int16_outputs if name not in written]
            if lost:
                raise ConversionError(f"int16 activations need ONNX opset {INT16_OPSET}, and "
                                      f"onnx's opset conversion rewrote the op writing "
                                      f"{lost[0]!r}; export the model at opset {INT16_OPSET}")
        big = src.stat().st_size + sum(p.stat().st_size for p in src.parent.glob(
            src.name + ".data")) > EXTERNAL_DATA_BYTES  # stream weights through files
        equalized = ""
        if config.cross_layer_equalization:  # before calibration: the ranges are its model's
            src, equalized = _equalized(src, Path(tmp) / "equalized.onnx", big,
                                        calibration.preprocessed(card.input, 0, CLE_IMAGES))
        input_name = model.graph.input[0].name
        # every activation of a batch is held at once: keep batch x image size bounded
        batch = max(1, min(config.batch_size, CALIBRATION_BATCH_ELEMENTS // calibration.images[0].size))
        _refuse_unquantisable_input(model, len(calibration))
        fixed = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
        if fixed:  # a model exported at a fixed batch (often 1) is fed exactly that batch
            batch = fixed
            calibration = calibration.take(max(fixed, len(calibration) // fixed * fixed))
        reader = DatasetCalibrationReader(calibration, card, input_name, batch)
        try:
            with quiet(""):  # onnxruntime logs advice on the root logger
                cache = keep = _cache_path(config)
                if cache is None or not cache.exists():
                    cache = _calibrate_apart(src, reader, method, big, Path(tmp),
                                             mse=config.method == "mse")
                    if cache is not None and keep is not None:
                        shutil.copyfile(cache, keep)
                mixed = _mixed_range_outputs(model, cache, config.float_nodes)
                quantize_static(
                    str(src), str(dst), None if cache else reader, quant_format=QuantFormat.QDQ,
                    per_channel=config.per_channel, reduce_range=config.weight_bits == 7,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method,
                    use_external_data_format=big,
                    nodes_to_exclude=[*config.float_nodes, *_gelu_chains(model), *mixed],
                    **({"calibration_cache_path": str(cache)} if cache else {}),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                   "CalibMovingAverage": False,
                                   # onnxruntime drops a Relu after a Conv when the Conv's
                                   # output grid stops at 0 (asymmetric); it does so for a
                                   # symmetric int16 override too, where negatives then pass
                                   "QDQKeepRemovableActivations": bool(int16_outputs),
                                   "TensorQuantOverrides": _overrides(model, config,
                                                                      int16_outputs)},
                )
        except _onnxruntime_errors() as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ConversionError(f"int8 quantisation failed: {detail}") from None
        quantized = onnx.load(dst)  # external data, if any, is read back in here
        if config.adaround:
            from edgecnn.converters.adaround import adaround

            adaround(onnx.load(src), quantized, calibration.preprocessed(
                card.input, 0, ADAROUND_IMAGES))
        if config.bias_correction:
            from edgecnn.converters.bias_correction import correct_biases

            correct_biases(onnx.load(src), quantized, calibration.preprocessed(
                card.input, 0, BIAS_CORRECTION_IMAGES))
    metadata = {p.key: p.value for p in quantized.metadata_props}  # one value per key
    metadata.update({p.key: p.value for p in metadata_source.metadata_props})
    metadata["edgecnn.quantization"] = (
        f"int8 QDQ, {config.method}, {'per-channel' if config.per_channel else 'per-tensor'} "
        f"{'' if config.weight_bits == 8 else '7-bit '}weights, {len(calibration)} calibration "
        "images" + (", AdaRound" if config.adaround else "")
        + (", bias-corrected" if config.bias_correction else "")
        + (f", {equalized}" if equalized else "")
        + (f", kept in float: {', '.join(config.float_nodes)}" if config.float_nodes else "")
        + (f", int16 activations: {', '.join(config.int16_nodes)}" if config.int16_nodes
           else ""))
    del quantized.metadata_props[:]
    for key, value in metadata.items():
        quantized.metadata_props.add(key=key, value=value)
    done, left = _op_coverage(quantized)
    return QuantReport(quantized, done, left, len(calibration))


def _cache_path(config: QuantConfig) -> Path | None:
    """Where this config's calibrated ranges are cached: an equalised model's ranges are
    another model's, so they get a file of their own."""
    cache = config.calibration_cache
    if cache is None or not config.cross_layer_equalization:
        return cache
    return cache.with_name(f"{cache.stem}-cle{cache.suffix}")


def _equalized(src: Path, dst: Path, big: bool, images: np.ndarray) -> tuple[Path, str]:
    """The float model at ``src`` cross-layer-equalised (converters/cross_layer_equalization.py),
    saved at ``dst``, and what was done, for the quantisation note."""
    from edgecnn.converters.cross_layer_equalization import equalize

    model = onnx.load(src)
    done = equalize(model, images)
    onnx.save(model, dst, save_as_external_data=big, location=dst.name + ".data")
    return dst, done.summary()


def name_unnamed_nodes(model: onnx.ModelProto) -> None:
    taken = {n.name for n in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name, copy = f"{node.op_type}_{index}", 0
            while name in taken:
                copy += 1
                name = f"{node.op_type}_{index}_{copy}"
            node.name = name
            taken.add(name)


def _gelu_chains(model: onnx.ModelProto) -> list[str]:
    """The nodes of each exact GELU, x * 0.5 * (1 + erf(x / sqrt(2))), as exporters decompose it.

    TFLite computes GELU as one op (converters/fusions.py), rounding once; quantised node by
    node, the QDQ graph would round four intermediate values too, and the two would part by a
    step on a few percent of values. Left float, the chain rounds once in both."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_user(node: onnx.NodeProto, op: str) -> onnx.NodeProto | None:
        users = consumers.get(node.output[0], [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    names = []
    for erf in (n for n in model.graph.node if n.op_type == "Erf"):
        scaled = producer.get(erf.input[0])
        add = only_user(erf, "Add")
        first = only_user(add, "Mul") if add is not None else None
        second = only_user(first, "Mul") if first is not None else None
        chain = [scaled, erf, add, first, second]
        if scaled is None or scaled.op_type not in ("Div", "Mul") or not all(
                node is not None and node.name for node in chain):
            continue
        names += [node.name for node in chain if node is not None]
    return names


def _mixed_range_outputs(model: onnx.ModelProto, cache: Path | None,
                         float_nodes: tuple[str, ...]) -> list[str]:
    """Concat nodes writing a graph output from inputs whose calibrated ranges differ more than
    :data:`MIXED_RANGE_RATIO` times: a detector's boxes (0..640) beside its class scores (0..1).
    One int8 scale for both reads every score below half a box step as 0, so such a Concat
    stays float (its inputs stay int8): the file's output is float32, the scores keep theirs."""
    if cache is None:
        return []
    from onnxruntime.quantization.calibrate import load_tensors_data

    ranges = load_tensors_data(cache).data
    outputs = {o.name for o in model.graph.output}
    mixed = []
    for node in model.graph.node:
        if node.op_type != "Concat" or node.output[0] not in outputs or node.name in float_nodes:
            continue
        spans = [float(ranges[i].highest) - float(ranges[i].lowest) for i in node.input
                 if i in ranges]
        if len(spans) > 1 and min(spans) > 0 and max(spans) / min(spans) > MIXED_RANGE_RATIO:
            mixed.append(node.name)
    return mixed


def _overrides(model: onnx.ModelProto, config: QuantConfig,
               int16_outputs: list[str]) -> dict[str, list[dict[str, Any]]]:
    """onnxruntime's per-tensor overrides: the int16 layers and their conversions
    (:func:`.int16_layers.int16_overrides`), then the fixed output parameters of int8
    LOGISTIC, TANH and SOFTMAX (:func:`_fixed_output_overrides`) on tensors that stay int8."""
    from onnxruntime.quantization import QuantType

    overrides = int16_overrides(model, int16_outputs) if int16_outputs else {}
    for name, [fixed] in _fixed_output_overrides(model, config.float_nodes).items():
        entry = overrides.setdefault(name, [{}])[0]
        if entry.get("quant_type") != QuantType.QInt16:  # int16 has no fixed int8 parameters
            entry.update(fixed)
    return overrides


def _fixed_output_overrides(model: onnx.ModelProto,
                             float_nodes: tuple[str, ...]) -> dict[str, list[dict[str, object]]]:
    """onnxruntime's per-tensor overrides that give each op whose TFLite int8 kernel fixes its
    output parameters (LOGISTIC, TANH, SOFTMAX: declared with their lowerings, see
    :mod:`.int8_forms`) those parameters. The TFLite file then computes these ops in one
    rounding, exactly as the reference does, instead of rounding to the kernel's parameters and
    again to calibrated ones."""
    from edgecnn.converters.int8_forms import fixed_output_params

    fixed = fixed_output_params()
    overrides = {}
    for node in model.graph.node:
        if node.op_type in fixed and node.name not in float_nodes:
            scale, zero_point = fixed[node.op_type]
            overrides[node.output[0]] = [{"scale": np.array(scale, np.float32),
                                          "zero_point": np.array(zero_point, np.int8)}]
    return overrides


def _refuse_unquantisable_input(model: onnx.ModelProto, images: int) -> None:
    """Say up front what onnxruntime would otherwise report deep inside calibration."""
    tensor_type = model.graph.input[0].type.tensor_type
    name = model.graph.input[0].name
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower()
        raise ConversionError(f"input {name!r} is {kind}; int8 quantisation starts from a float32 "
                              f"model: export it in float32")
    fixed = tensor_type.shape.dim[0].dim_value
    if fixed > images:
        raise DataError(f"{images} calibration images, but the model takes a fixed batch of "
                        f"{fixed}: give at least {fixed} as `calib`", parameters=("calib",))


def _onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """The exceptions quantize_static raises: Python's, and onnxruntime's own (Fail,
    InvalidArgument, ...), which derive from Exception directly."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    own = tuple(e for e in vars(state).values()
                if isinstance(e, type) and issubclass(e, Exception))
    return (ValueError, RuntimeError, *own)


def _calibrate_apart(src: Path, reader: DatasetCalibrationReader, method: object, big: bool,
                     tmp: Path, mse: bool = False) -> Path | None:
    """Calibrate on its own and cache the ranges, so quantisation starts with memory freed.

    quantize_static otherwise holds the model while calibrating (model, augmented model and
    session at once: 2.3 GB for VGG19). Needs an onnxruntime with ``calibration_cache_path``;
    older ones calibrate inside quantize_static as before.
    """
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        if mse:
            raise ConversionError("calibration method mse needs onnxruntime's "
                                  "calibration_cache_path (1.20 or newer); upgrade onnxruntime "
                                  "or use minmax")
        return None
    options: dict[str, Any] = {"moving_average": False}
    if mse:
        options["num_bins"] = MSE_HISTOGRAM_BINS
    elif method == CalibrationMethod.Entropy:
        # onnxruntime's defaults (128 bins, 128 quantised bins) leave the KL search no
        # threshold below the histogram's end: its entropy ranges were minmax's exactly
        options.update(num_bins=ENTROPY_HISTOGRAM_BINS, num_quantized_bins=ENTROPY_LEVELS)
    calibrator = create_calibrator(src, None, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=method, use_external_data_format=big,
                                   extra_options=options)
    calibrator.collect_data(reader)
    if mse:
        from edgecnn.converters.range_setting import mse_tensors_data

        ranges = mse_tensors_data(calibrator.collector.histogram_dict, method)
    else:
        ranges = calibrator.compute_data()
    del calibrator
    release_memory()
    cache = tmp / "ranges.json"
    save_tensors_data(ranges, cache)
    return cache


def _op_coverage(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """Which compute ops read quantised (DequantizeLinear) inputs, and which stayed float."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    done: Counter[str] = Counter()
    left: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        (done if any(i in dq_outputs for i in node.input) else left)[node.op_type] += 1
    return dict(done), dict(left)


def require_calibration(path: str | Path | None, default: Path) -> Path:
    """Resolve the calibration data path, refusing test sets and missing defaults."""
    from edgecnn.files.data import is_test_split

    if path is None:
        if not default.exists():
            raise DataError(f"`int8` needs calibration data and the default {default} is missing; "
                            "pass training images as `calib`", parameters=("int8", "calib"))
        return default
    if is_test_split(path):
        raise DataError(f"{path}: is a test set; calibrating on it would leak test data into the "
                        "model; pass training images as `calib`", parameters=("calib",))
    return Path(path)


def refuse_test_images(data: Dataset) -> None:
    """Calibration data must not contain test images, whatever its file is called."""
    from edgecnn.files.data import test_images_in

    found = test_images_in(data)
    if found:
        raise DataError(f"{data.source}: {found} of its {len(data)} images are MNIST test images; "
                        "calibrating on them would leak test data into the model; pass "
                        "training images as `calib`", parameters=("calib",))
