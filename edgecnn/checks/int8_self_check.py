"""An int8 TFLite file against its QDQ graph, layer by layer.

Deep int8 networks rarely match their QDQ reference bit for bit at the output: where a value
lies within float error of a rounding tie the two implementations can land one step apart, and
that step is the next layer's input, where it moves other values across ties. How far that
spreads depends on the weights (a random-weight ResNet amplifies it, and a classifier head can
multiply one input step by hundreds of output steps), so an output bound alone cannot tell
tie noise from a wrong lowering.

The layer check can: a layer whose inputs are identical integers on both sides must produce
outputs within one step of the reference (one tie), whatever its depth. A wrong scale, layout or
zero point breaks that at the first layer it touches, and that layer is named.

Two readings make every layer such a layer:

* *end to end*: the reference runs on the image alone, as a user would compare outputs;
* *pinned*: every quantised activation of the reference graph is fed the integers LiteRT
  computed for it, so each layer of the reference starts from exactly the inputs its TFLite
  counterpart had. The pinned reading judges each layer on its own, at any depth, and is the
  share of identical integers the lowering itself is responsible for.
"""

from __future__ import annotations

import base64
import importlib
import json
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper

from edgecnn.converters.onnx_passes import declared_batch
from edgecnn.converters.qdq import reference_inference_session
from edgecnn.files import metadata

TIE_STEPS = 1  # one rounding tie: the most a layer with identical inputs may differ


@dataclass(frozen=True)
class LayerDiff:
    tensor: str
    max_steps: int
    differing: float  # share of values not identical
    inputs_identical: bool  # every int8 input of the producing op matched exactly
    pinned_max_steps: int | None = None  # fed TFLite's own input integers (None: not pinned)
    pinned_differing: float | None = None
    values: int = 0  # integers compared
    pinned_off_tie: int | None = None  # pinned values that differ where no rounding tie was
    # an int16 activation (a 16x8 layer): TFLite's 16x8 kernels requantise with a 16-bit
    # multiplier (MultiplyByQuantizedMultiplier on int64), a step off beside ties by design
    int16: bool = False


def _canonical_inputs(model: onnx.ModelProto) -> dict[str, list[str] | None]:
    """For each quantised tensor, the quantised tensors its op chain reads (None: unknown)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    weights = {t.name for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input} - weights

    def sources(node: onnx.NodeProto, seen: set[int]) -> list[str] | None:
        found: list[str] = []
        for name in node.input:
            if not name or name in weights:
                continue
            if name in graph_inputs:
                found.append(name)
                continue
            parent = producer.get(name)
            if parent is None or id(parent) in seen:
                return None
            if parent.op_type == "DequantizeLinear":
                if parent.input[0] in weights:
                    continue  # a weight
                q = producer.get(parent.input[0])
                if q is None or q.op_type != "QuantizeLinear":
                    return None
                found.append(q.input[0])
            elif parent.op_type == "QuantizeLinear":
                return None
            else:  # a float op between quantised tensors (a fused activation, an island)
                deeper = sources(parent, seen | {id(parent)})
                if deeper is None:
                    return None
                found += deeper
        return found

    result: dict[str, list[str] | None] = {}
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        if q.input[0] in weights:
            continue
        parent = producer.get(q.input[0])
        result[q.input[0]] = [] if parent is None else sources(parent, {id(parent)})
    return result


def _tflite_activations(tflite_path: Path, x: np.ndarray,
                        interpreter_module: str) -> tuple[dict[str, np.ndarray], str]:
    """Every int8 and int16 tensor LiteRT (or tflite-runtime) computes for ``x`` (NCHW), by
    name, and the name its quantised input carries."""
    from edgecnn.runtimes.isolation import probe_tflite, runtime_of
    from edgecnn.runtimes.tflite_io import quantize_input

    shape = [len(x), *x.shape[2:], x.shape[1]]
    # verified, then run once in a child process at this shape (edgecnn.runtimes.isolation)
    probe_tflite(tflite_path, runtime_of(interpreter_module), shape, preserve_all_tensors=True)
    with warnings.catch_warnings():  # LiteRT warns that keeping every tensor is for debugging
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        interpreter = importlib.import_module(interpreter_module).Interpreter(
            model_path=str(tflite_path), experimental_preserve_all_tensors=True)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()
    scale, zero = detail["quantization"]
    data = x.transpose(0, 2, 3, 1)
    interpreter.set_tensor(detail["index"], quantize_input(data, detail))
    interpreter.invoke()
    found = {}
    for tensor in interpreter.get_tensor_details():
        if tensor["dtype"] not in (np.int8, np.int16):
            continue
        try:
            found[tensor["name"]] = interpreter.get_tensor(tensor["index"])
        except ValueError:  # a tensor no op wrote (the interpreter kept no buffer for it)
            continue
    return found, detail["name"]


def _stored_layouts(tflite_path: Path) -> dict[str, dict]:
    """The converter's record of activations stored in a non-default order (empty for files
    written by other tools, whose rank-4 tensors are taken as NHWC)."""
    from edgecnn.files.model_files import tflite_metadata

    recorded = tflite_metadata(Path(tflite_path), metadata.TFLITE_LAYOUTS)
    return json.loads(recorded) if recorded else {}


def _onnx_order(stored: np.ndarray, layout: dict | None) -> np.ndarray:
    """A TFLite tensor back in the ONNX value's axis (and, for a flatten, column) order."""
    if layout is None:
        return stored.transpose(0, 3, 1, 2) if stored.ndim == 4 else stored
    value = stored.transpose(np.argsort(layout["perm"])) if stored.ndim == len(
        layout["perm"]) else stored
    if "columns" in layout:
        order = np.frombuffer(zlib.decompress(base64.b64decode(layout["columns"])), "<u4")
        if value.ndim != 2 or value.shape[1] != order.size:
            return value
        restored = np.empty_like(value)
        restored[:, order] = value
        value = restored
    return value


def _pinned_reference(model: onnx.ModelProto, x: np.ndarray, pins: dict[str, np.ndarray]
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Run the QDQ graph with each QuantizeLinear output in ``pins`` replaced by the given
    integers (already in the reference's encoding and layout); return what each of those
    QuantizeLinear nodes computed itself, with the real value it rounded (in steps)."""
    outputs = {o.name for o in model.graph.output}
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    fed: dict[str, tuple[str, str]] = {}
    quantizers = {}
    for node in model.graph.node:
        name = node.output[0] if node.op_type == "QuantizeLinear" else None
        if name in pins and name not in outputs and node.input[1] in constants:
            quantizers[name] = node
            node.output[0] = name + "/reference"
            fed[name] = (node.output[0], node.input[0])
    del model.graph.output[:]
    for name, (ours, real) in fed.items():
        kind = {np.dtype(np.uint8): onnx.TensorProto.UINT8,
                np.dtype(np.int16): onnx.TensorProto.INT16}.get(pins[name].dtype,
                                                                onnx.TensorProto.INT8)
        model.graph.output.extend([onnx.helper.make_tensor_value_info(ours, kind, None),
                                   onnx.helper.make_tensor_value_info(
                                       real, onnx.TensorProto.FLOAT, None)])
        model.graph.input.append(onnx.helper.make_tensor_value_info(name, kind,
                                                                    pins[name].shape))
    session = reference_inference_session(model)
    feeds = {session.get_inputs()[0].name: x, **{name: pins[name] for name in fed}}
    names = [n for pair in fed.values() for n in pair]
    values = dict(zip(names, session.run(names, feeds), strict=True))
    result = {}
    for name, (ours, real) in fed.items():
        node = quantizers[name]
        scale = constants[node.input[1]].astype(np.float64)
        zero = constants[node.input[2]].astype(np.float64) if len(node.input) > 2 else 0.0
        if scale.ndim == 1 and values[real].ndim > 1:  # per-axis: along the node's axis
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * values[real].ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
        result[name] = (values[ours], values[real] / scale + zero)
    return result


TIE_TOLERANCE = 1e-4  # steps: a real value this close to a half is a tie float error decides


def compare_layers(qdq_path: Path, tflite_path: Path, x: np.ndarray,
                   interpreter_module: str = "ai_edge_litert.interpreter",
                   pinned: bool = True) -> list[LayerDiff]:
    """Every quantised activation of the TFLite file against the QDQ reference, in order, end
    to end and (``pinned``) with each reference layer fed TFLite's own input integers. A model
    exported for a fixed batch is compared batch by batch."""
    from edgecnn.runtimes.batching import split_batch

    fixed = declared_batch(onnx.load(str(qdq_path), load_external_data=False))
    if fixed and len(x) > fixed:  # whole batches only: a remainder is left out, not refused
        x = x[:len(x) - len(x) % fixed]
    chunks = [_compare_batch(qdq_path, tflite_path, batch, interpreter_module, pinned)
              for batch in split_batch(x, fixed, qdq_path)]
    return chunks[0] if len(chunks) == 1 else [_merged(parts)
                                                for parts in zip(*chunks, strict=True)]


def _merged(parts: tuple[LayerDiff, ...]) -> LayerDiff:
    """One layer's readings over several batches."""
    total = sum(p.values for p in parts)

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        if len(known) != len(values):
            return None
        return float(sum(v * p.values for v, p in zip(known, parts, strict=True))) / max(total, 1)

    pinned_steps = [p.pinned_max_steps for p in parts]
    off_ties = [p.pinned_off_tie for p in parts]
    return LayerDiff(
        parts[0].tensor, max(p.max_steps for p in parts),
        mean([p.differing for p in parts]) or 0.0, all(p.inputs_identical for p in parts),
        None if None in pinned_steps else max(s for s in pinned_steps if s is not None),
        mean([p.pinned_differing for p in parts]), total,
        None if None in off_ties else sum(o for o in off_ties if o is not None),
        parts[0].int16)


def _compare_batch(qdq_path: Path, tflite_path: Path, x: np.ndarray, interpreter_module: str,
                   pinned: bool) -> list[LayerDiff]:
    model = onnx.load(str(qdq_path))
    weights = {t.name for t in model.graph.initializer}
    quantize = [n for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in weights]
    zero_types = {t.name: t.data_type for t in model.graph.initializer}
    encoding = {n.output[0]: zero_types.get(n.input[2], onnx.TensorProto.UINT8)
                for n in quantize}  # int8, or the uint8 (+128) encoding of converters/qdq.py
    inputs = _canonical_inputs(model)
    # a conversion (Q1 -> DQ1 -> Q2 -> DQ2, int8 <-> int16) is named in the file after DQ2
    converted = {n.input[0]: n.output[0] for n in model.graph.node
                 if n.op_type == "DequantizeLinear"}
    pristine = onnx.ModelProto()
    if pinned:
        pristine.CopyFrom(model)
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, kind, None)
                              for name, kind in encoding.items() if name not in known)
    session = reference_inference_session(model)
    del model
    reference = dict(zip([o.name for o in session.get_outputs()],
                         session.run(None, {session.get_inputs()[0].name: x}), strict=True))
    del session
    tensors, _ = _tflite_activations(tflite_path, x, interpreter_module)

    layouts = _stored_layouts(tflite_path)

    def as_reference(ours: np.ndarray, stored: str, node: onnx.NodeProto) -> np.ndarray:
        """TFLite's integers of tensor ``stored`` (``node``'s input) in the reference's encoding
        and ONNX layout."""
        value = _onnx_order(ours, layouts.get(stored))
        if encoding[node.output[0]] == onnx.TensorProto.UINT8:
            return (value.astype(np.int16) + 128).astype(np.uint8)
        return value

    matched: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # Q output -> (ours, theirs), NCHW
    for node in quantize:
        name = node.input[0]
        # a float graph input is quantised by the file's first op, into "<name>/int8"
        stored = next((n for n in (name, name + "/int8", converted[node.output[0]])
                       if n in tensors), None)
        theirs = reference[node.output[0]]
        if stored is None or _onnx_order(tensors[stored], layouts.get(stored)).shape != theirs.shape:
            continue
        matched[node.output[0]] = (as_reference(tensors[stored], stored, node), theirs)
    del reference, tensors
    pinned_values = (_pinned_reference(pristine, x, {k: v[0] for k, v in matched.items()})
                     if pinned and matched else {})
    steps: dict[str, np.ndarray] = {}
    diffs = []
    for node in quantize:
        if node.output[0] not in matched:
            continue
        name = node.input[0]
        ours, theirs = (v.astype(np.int32) for v in matched[node.output[0]])
        step = np.abs(ours - theirs)
        steps[name] = step
        sources = inputs.get(name)
        exact = sources is not None and all(s in steps and not steps[s].any() for s in sources)
        pinned_reading = pinned_values.get(node.output[0])
        pinned_step, off_tie = (None, None) if pinned_reading is None else _pinned_steps(
            ours, *pinned_reading, _lowest(encoding[node.output[0]]))
        diffs.append(LayerDiff(
            name, int(step.max()), float((step > 0).mean()), exact,
            None if pinned_step is None else int(pinned_step.max()),
            None if pinned_step is None else float((pinned_step > 0).mean()), int(step.size),
            off_tie, encoding[node.output[0]] == onnx.TensorProto.INT16))
    return diffs


def _pinned_steps(ours: np.ndarray, theirs: np.ndarray, real: np.ndarray,
                  lowest: int) -> tuple[np.ndarray, int]:
    """Steps between TFLite's integers and the pinned reference's, and how many of the values
    that differ were not on a rounding tie (nor clipped at the ends of the int8 range)."""
    theirs = theirs.astype(np.int32)
    step = np.abs(ours - theirs)
    near_half = np.abs(np.abs(real - np.floor(real)) - 0.5) <= TIE_TOLERANCE
    highest = lowest + (65535 if lowest == -32768 else 255)
    clipped = (np.minimum(ours, theirs) <= lowest) | (np.maximum(ours, theirs) >= highest)
    return step, int(((step > 0) & ~near_half & ~clipped).sum())


def _lowest(encoding: int) -> int:
    """The lowest integer of an activation's type: uint8, int8, or int16 (a 16x8 layer's)."""
    lowest: dict[int, int] = {onnx.TensorProto.UINT8: 0, onnx.TensorProto.INT16: -32768}
    return lowest.get(encoding, -128)


def pinned_identical_share(diffs: list[LayerDiff]) -> float | None:
    """The share of identical integers over every pinned layer (each fed TFLite's own inputs),
    weighted by size; None when no layer could be pinned."""
    pinned = [d for d in diffs if d.pinned_differing is not None]
    total = sum(d.values for d in pinned)
    if not total:
        return None
    return 1.0 - sum(d.values * (d.pinned_differing or 0.0) for d in pinned) / total


# Pinned values a step off where no rounding tie explains it: the registry's kernels have none
# but for a value or two that float error puts beside a tie. A kernel whose arithmetic is not
# the reference's (a requantisation multiplier too coarse for an operand's scale) stays within
# one step yet moves a fifth of its values: more than this share names the layer.
OFF_TIE_SHARE = 0.001


def off_tie_excess(d: LayerDiff) -> bool:
    """Whether the pinned layer ``d`` rounds more values a step away than ties explain (an
    int16 layer's steps are 256 times finer, and its kernel's multiplier coarser: not judged)."""
    return not d.int16 and d.pinned_off_tie is not None and d.pinned_off_tie > max(1, OFF_TIE_SHARE * d.values)


def first_unexplained(diffs: list[LayerDiff], *, off_ties: bool = False) -> LayerDiff | None:
    """The first layer that differs by more than a tie although its inputs were identical, or
    (``off_ties``) that rounds more than :data:`OFF_TIE_SHARE` of them a step away where no tie
    was: pinned (fed TFLite's own inputs) where it could be, end to end otherwise.

    ``off_ties`` holds a CPU file run by LiteRT to the reference's float rounding; leave it off
    for tflite-runtime's builtin kernels (fixed-point requantisation, a step off beside ties by
    design) and for integer-only files (int8 -> int8 QUANTIZE, HARD_SWISH: a step by design)."""
    for d in diffs:
        if d.pinned_max_steps is not None and (
                d.pinned_max_steps > TIE_STEPS or (off_ties and off_tie_excess(d))):
            return d
        if d.pinned_max_steps is None and d.inputs_identical and d.max_steps > TIE_STEPS:
            return d
    return None


def unexplained_reason(d: LayerDiff) -> str:
    """What :func:`first_unexplained` found wrong with ``d``, for a one-line refusal."""
    if d.pinned_max_steps is not None and d.pinned_max_steps <= TIE_STEPS and off_tie_excess(d):
        share = 100 * (d.pinned_off_tie or 0) / max(d.values, 1)
        return (f"rounds {share:.1f} % of its values a step away from the QDQ reference where "
                "no rounding tie explains it, although its inputs are identical (its int8 kernel "
                "does not compute the reference's arithmetic)")
    steps = d.max_steps if d.pinned_max_steps is None else max(d.max_steps, d.pinned_max_steps)
    return f"differs from the QDQ reference by {steps} steps although its inputs are identical"
