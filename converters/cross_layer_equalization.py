"""Cross-layer equalisation and high-bias absorption (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction"; AIMET's ``equalize_model``), applied to the
float ONNX model before calibration.

Why: a depthwise convolution trained with batch norm (folded into its weights) often holds
output channels whose weight ranges differ by 100x. One int8 grid per tensor then reads the
small channels as a few steps, and the activation they write spans a few steps of the next
layer's input grid. For two layers joined only by ops that commute with a positive per-channel
scale, ``f(s x) = s f(x)`` (ReLU, LeakyReLU, PReLU, MaxPool), channel ``i`` of the first layer's
output can be divided by ``s_i`` and the second layer's input channel ``i`` multiplied by it
without changing the float function:

    W1[i] /= s_i,   b1[i] /= s_i,   W2[:, i] *= s_i,   s_i = sqrt(r1_i / r2_i)

with ``r1_i`` the range (max |w|) of the first layer's output channel ``i`` and ``r2_i`` that
of the second layer's input channel ``i``: both then span ``sqrt(r1_i r2_i)``. Chains are swept
until the scales settle, as the paper and AIMET do.

ReLU6 (``Clip``) does not commute with a scale (``min(s x, 6) != s min(x, 6)``): such pairs are
left alone and named in the report. AIMET replaces ReLU6 by ReLU first, which changes the float
model; here the float model's outputs stay what they were.

High-bias absorption: scaling a channel down raises what its bias adds to every value, which
widens the activation's int8 range. Where a ReLU (and MaxPool) joins the pair and the second
layer reads no padding, a per-channel amount ``c_i`` that the pre-activation never goes below is
moved from ``b1`` into ``b2`` (``relu(x - c) + c = relu(x)`` for ``x >= c``):

    b1[i] -= c_i,   b2 += W2 . c

The paper takes ``c_i = max(0, beta_i - 3 gamma_i)`` from batch norm; an ONNX model's batch norm
is folded away, so here ``c_i`` is the channel's minimum over the calibration images (exact on
them; on other images only where the pre-activation stays above it, as with the paper's 3 sigma).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

LAYER_OPS = ("Conv", "Gemm")
# f(s x) = s f(x) per channel for s > 0
EQUIVARIANT_OPS = ("Relu", "LeakyRelu", "PRelu", "MaxPool", "Identity", "Dropout")
# f(x - c) + c = f(x) per channel where x >= c, with c >= 0
SHIFTABLE_OPS = ("Relu", "MaxPool", "Identity", "Dropout")
MAX_SWEEPS = 100
SETTLED = 1e-4  # a sweep whose largest |log s| is below this ends the search
ABSORB_IMAGES = 256
ABSORB_BATCH = 16


@dataclass(frozen=True)
class Pair:
    first: onnx.NodeProto
    second: onnx.NodeProto
    between: tuple[str, ...]  # op types joining them


@dataclass
class EqualizationReport:
    equalized: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # first, second, why
    absorbed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"cross-layer-equalised ({len(self.equalized)} pairs"
        if self.absorbed:
            text += f", {len(self.absorbed)} high biases absorbed"
        return text + ")"


def equalize(model: onnx.ModelProto, images: np.ndarray | None = None) -> EqualizationReport:
    """Equalise every eligible Conv/Gemm pair of ``model`` in place; with preprocessed
    ``images``, absorb high biases too. The float function is unchanged (absorption: on
    ``images``)."""
    report = EqualizationReport()
    pairs, report.skipped = find_pairs(model)
    weights = {t.name: t for t in model.graph.initializer}
    arrays = {name: numpy_helper.to_array(weights[name]).astype(np.float64)
              for pair in pairs for node in (pair.first, pair.second) for name in node.input[1:3]}
    _sweep(pairs, arrays)
    report.equalized = [(p.first.name, p.second.name) for p in pairs]
    if images is not None:
        report.absorbed = _absorb_high_biases(model, pairs, arrays, images)
    for name, value in arrays.items():
        dtype = numpy_helper.to_array(weights[name]).dtype
        weights[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
    return report


# ---------------------------------------------------------------- finding pairs

def find_pairs(model: onnx.ModelProto) -> tuple[list[Pair], list[tuple[str, str, str]]]:
    """Conv/Gemm pairs joined by one chain of scale-equivariant ops (each tensor read once,
    none a graph output), and the pairs a non-equivariant op (ReLU6's Clip) keeps apart."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    weights = {t.name for t in model.graph.initializer}
    layer = lambda n: _is_layer(n, weights, consumers)  # noqa: E731
    pairs, skipped = [], []
    for first in (n for n in model.graph.node if layer(n)):
        chain: list[str] = []
        tensor = first.output[0]
        while True:
            users = consumers.get(tensor, [])
            if len(users) != 1 or tensor in outputs:
                break
            user = users[0]
            if layer(user) and user.input[0] == tensor:
                if _channels_match(first, user, model):
                    pairs.append(Pair(first, user, tuple(chain)))
                break
            if user.op_type not in EQUIVARIANT_OPS:
                after = consumers.get(user.output[0], [])
                if len(after) == 1 and layer(after[0]):
                    skipped.append((first.name, after[0].name, f"{user.op_type} between them"))
                break
            chain.append(user.op_type)
            tensor = user.output[0]
    return pairs, skipped


def _is_layer(node: onnx.NodeProto, weights: set[str],
              consumers: dict[str, list[onnx.NodeProto]]) -> bool:
    """A Conv/Gemm whose weight and bias are initializers of its own, and a Gemm computing
    ``x W^T + b`` or ``x W + b`` with no other scaling."""
    if node.op_type not in LAYER_OPS or len(node.input) < 2:
        return False
    if any(n not in weights or len(consumers.get(n, [])) != 1 for n in node.input[1:3] if n):
        return False
    if node.op_type == "Gemm":
        floats = {a.name: a.f for a in node.attribute if a.type == onnx.AttributeProto.FLOAT}
        return (_attr(node, "transA", 0) == 0 and floats.get("alpha", 1.0) == 1.0
                and floats.get("beta", 1.0) == 1.0)
    return True


def _channels_match(first: onnx.NodeProto, second: onnx.NodeProto, model: onnx.ModelProto
                    ) -> bool:
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = _output_major_shape(first, shapes[first.input[1]])[0]
    bias_ok = len(first.input) < 3 or not first.input[2] or shapes[first.input[2]] == (out,)
    w2 = shapes[second.input[1]]
    inputs = (w2[1] * _attr(second, "group", 1) if second.op_type == "Conv"
              else _output_major_shape(second, w2)[1])
    return bias_ok and inputs == out


def _output_major_shape(node: onnx.NodeProto, shape: tuple[int, ...]) -> tuple[int, ...]:
    if node.op_type == "Gemm" and not _attr(node, "transB", 0):
        return shape[1], shape[0]
    return shape


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


# ---------------------------------------------------------------- weight views

def _output_major(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """The weight as [out, in, ...] (a Gemm without transB stores [in, out])."""
    return weight.T if node.op_type == "Gemm" and not _attr(node, "transB", 0) else weight


def _stored(node: onnx.NodeProto, output_major: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_output_major`: the weight as the node stores it."""
    return _output_major(node, output_major)


def _by_input(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """The weight as [groups, out per group, in per group, taps]: input channel ``j`` is
    ``[j // in_per_group, :, j % in_per_group, :]``."""
    w = _output_major(node, weight)
    groups = _attr(node, "group", 1) if node.op_type == "Conv" else 1
    return w.reshape(groups, w.shape[0] // groups, w.shape[1], -1)


def scale_outputs(node: onnx.NodeProto, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The weight with output channel ``i`` multiplied by ``s_i``."""
    w = _output_major(node, weight)
    return _stored(node, w * s.reshape(-1, *[1] * (w.ndim - 1)))


def scale_inputs(node: onnx.NodeProto, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The weight with input channel ``j`` multiplied by ``s_j``."""
    grouped = _by_input(node, weight)
    scaled = grouped * s.reshape(grouped.shape[0], 1, grouped.shape[2], 1)
    return _stored(node, scaled.reshape(_output_major(node, weight).shape))


def output_ranges(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """max |w| per output channel."""
    w = _output_major(node, weight)
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def input_ranges(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """max |w| per input channel (over every output channel that reads it)."""
    return np.abs(_by_input(node, weight)).max(axis=(1, 3)).reshape(-1)


def scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Nagel et al.'s ``s_i = sqrt(r1_i / r2_i)``: after ``W1[i] / s_i`` and ``W2[:, i] * s_i``
    both span ``sqrt(r1_i r2_i)``. 1 where either range is 0 (a dead channel)."""
    live = (r1 > 0) & (r2 > 0)
    return np.where(live, np.sqrt(np.where(live, r1, 1.0) / np.where(live, r2, 1.0)), 1.0)


# ---------------------------------------------------------------- equalising

def _sweep(pairs: list[Pair], arrays: dict[str, np.ndarray]) -> None:
    """Equalise each pair in graph order, again and again, until no scale moves."""
    for _ in range(MAX_SWEEPS):
        moved = 0.0
        for pair in pairs:
            s = _equalize_pair(pair, arrays)
            moved = max(moved, float(np.abs(np.log(s)).max(initial=0.0)))
        if moved < SETTLED:
            return


def _equalize_pair(pair: Pair, arrays: dict[str, np.ndarray]) -> np.ndarray:
    first, second = pair.first, pair.second
    w1, w2 = arrays[first.input[1]], arrays[second.input[1]]
    s = scales(output_ranges(first, w1), input_ranges(second, w2))
    arrays[first.input[1]] = scale_outputs(first, w1, 1 / s)
    if len(first.input) > 2 and first.input[2]:
        arrays[first.input[2]] = arrays[first.input[2]] / s
    arrays[second.input[1]] = scale_inputs(second, w2, s)
    return s


# ---------------------------------------------------------------- high-bias absorption

def _absorbable(pair: Pair) -> bool:
    """A ReLU joins them, every op between commutes with a shift, both have a bias, and the
    second layer reads no padding (a padded border would read the shifted zero)."""
    second = pair.second
    pads = next((list(a.ints) for a in second.attribute if a.name == "pads"), [])
    auto_pad = next((a.s for a in second.attribute if a.name == "auto_pad"), b"NOTSET")
    unpadded = not any(pads) and auto_pad in (b"NOTSET", b"VALID")
    biased = all(len(n.input) > 2 and n.input[2] for n in (pair.first, second))
    return ("Relu" in pair.between and all(op in SHIFTABLE_OPS for op in pair.between)
            and biased and unpadded)


def _absorb_high_biases(model: onnx.ModelProto, pairs: list[Pair],
                        arrays: dict[str, np.ndarray], images: np.ndarray
                        ) -> list[tuple[str, str]]:
    chosen = [p for p in pairs if _absorbable(p)]
    if not chosen:
        return []
    lows = _channel_minimums(model, arrays, [p.first.output[0] for p in chosen], images)
    for pair in chosen:
        c = np.maximum(lows[pair.first.output[0]], 0.0)
        arrays[pair.first.input[2]] -= c
        arrays[pair.second.input[2]] += absorbed_shift(pair.second, arrays[pair.second.input[1]], c)
    return [(p.first.name, p.second.name) for p in chosen]


def absorbed_shift(node: onnx.NodeProto, weight: np.ndarray, c: np.ndarray) -> np.ndarray:
    """What a constant input ``c`` per channel adds to each output of an unpadded layer."""
    grouped = _by_input(node, weight).sum(axis=3)  # [groups, out per group, in per group]
    return np.einsum("gop,gp->go", grouped, c.reshape(grouped.shape[0], -1)).reshape(-1)


def _channel_minimums(model: onnx.ModelProto, arrays: dict[str, np.ndarray], names: list[str],
                      images: np.ndarray) -> dict[str, np.ndarray]:
    """Per channel, the least value of each tensor ``names`` over ``images``, computed by the
    model with the equalised weights (``arrays``)."""
    from edgecnn.converters.bias_correction import float_activations

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inits = {t.name: t for t in probe.graph.initializer}
    for name, value in arrays.items():
        dtype = numpy_helper.to_array(inits[name]).dtype
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
    lows: dict[str, np.ndarray] = {}
    for start in range(0, min(len(images), ABSORB_IMAGES), ABSORB_BATCH):
        batch = float_activations(probe, names, images[start:start + ABSORB_BATCH])
        for name, value in batch.items():
            axes = (0, *range(2, value.ndim))
            low = value.min(axis=axes).astype(np.float64)
            lows[name] = np.minimum(lows[name], low) if name in lows else low
    return lows
