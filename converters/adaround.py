"""AdaRound (Nagel et al. 2020): round each weight up or down so the layer's output, not the
weight, is closest to float.

Rounding to nearest minimises each weight's own error; a layer's output error is a sum over many
weights, and a learned mix of ups and downs can cancel what nearest rounding lets add up. Per
Conv/Gemm layer, with the grid (scale per output channel) fixed by the quantiser, a continuous
variable ``V`` per weight picks between ``floor`` and ``floor + 1`` through the rectified
sigmoid ``h(V)``; Adam minimises

    || layer(x, W) - layer(x, s * clip(floor(W / s) + h(V))) ||^2
        + lambda * sum(1 - |2 h(V) - 1| ^ beta)

on the layer's float inputs from calibration images, with ``beta`` annealed from 20 to 2 so the
regulariser pushes every ``h`` to 0 or 1; then ``h >= 0.5`` rounds up. The result replaces the
int8 weights in the QDQ model, so ONNX and TFLite carry the same integers.

Why it scales: a Conv/Gemm is a matrix product of its weights with the input patches (the rows
of the im2col problem), so the output error is a quadratic form of the weight error,
``mean ||dW x||^2 = trace(dW S dW^T)`` with ``S = E[x x^T]`` per group. ``S`` is accumulated
once per layer from a bounded random sample of output positions (``ROWS``, drawn evenly over
the images, as AIMET samples a fixed number of activation rows per layer), streaming the images
in chunks so no network's activations are held at once; it is kept as the factor
``sqrt(eigenvalue) * eigenvector`` of its leading eigenpairs (all but 1e-4 of its trace: dead
and redundant channels drop out). Each Adam step is then one product of the weights with that
factor: the whole objective over the sampled rows, no minibatch noise, whatever the image size
(a 224x224 network costs what its weights cost, not what its activations cost). Opt-in: about
2 minutes on EfficientNet-Lite0 on 2 cores (docs/int8-accuracy.md), and at 8 bits nearest
rounding is often close already.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgecnn.converters.bias_correction import Layer, _layers, float_activations

log = logging.getLogger(__name__)
ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch
ITERATIONS = 400  # full-objective Adam steps per layer (exact gradients: no sampling noise)
REGULARISATION = 0.01
ROWS = 16384  # output positions (im2col rows) sampled per layer, over all images
CHUNK = 8  # images whose activations are held at once
DROPPED = 1e-4  # the share of each S's trace its smallest eigenpairs may leave out


@dataclass
class Moments:
    """``sum x x^T`` per group over the sampled rows of one layer, and their count."""

    gram: np.ndarray  # (groups, K, K), float64
    rows: int = 0


def _supported(layer: Layer) -> bool:
    """A 2-D Conv with explicit pads, or a Gemm (what the im2col rows below express)."""
    if layer.op != "Conv":
        return True
    return layer.float_weight.ndim == 4 and len(layer.pads) in (0, 4)


def _patches(layer: Layer, x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random rows of ``layer``'s im2col problem on inputs ``x``: (rows, groups, K),
    K the inputs one output of a group reads, in the weight's own order (channel, ky, kx)."""
    if layer.op != "Conv":
        rows = x.reshape(len(x), -1)
        pick = rng.choice(len(rows), min(count, len(rows)), replace=False)
        return rows[pick][:, None, :]
    kh, kw = layer.float_weight.shape[2:]
    top, left, bottom, right = layer.pads or (0, 0, 0, 0)
    sh, sw = layer.strides or (1, 1)
    dh, dw = layer.dilations or (1, 1)
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    total = len(x) * out_h * out_w
    flat = rng.choice(total, min(count, total), replace=False)
    image, rest = np.divmod(flat, out_h * out_w)
    oy, ox = np.divmod(rest, out_w)
    iy = oy[:, None] * sh + np.arange(kh)[None, :] * dh  # (rows, kh)
    ix = ox[:, None] * sw + np.arange(kw)[None, :] * dw  # (rows, kw)
    taps = padded[image[:, None, None], :, iy[:, :, None], ix[:, None, :]]  # (rows, kh, kw, C)
    taps = taps.transpose(0, 3, 1, 2)  # (rows, C, kh, kw)
    return taps.reshape(len(flat), layer.group, -1)


def _accumulate(moments: Moments, patches: np.ndarray) -> None:
    """Add the rows' ``x x^T`` per group (float32 products in torch's batched matmul, summed
    into float64 per call: numpy's stacked float64 matmul was the slowest step)."""
    import torch

    p = torch.from_numpy(np.ascontiguousarray(patches, np.float32)).transpose(0, 1)
    moments.gram += (p.transpose(1, 2) @ p).double().numpy()
    moments.rows += patches.shape[0]


def _factor(moments: Moments) -> np.ndarray:
    """``F`` (groups, M, K) with ``F^T F ~ S`` (the mean of x x^T over the sampled rows): the
    leading eigenpairs of each group's ``S``, as many as leave out at most ``DROPPED`` of its
    trace. A weight error spread evenly over ``S``'s directions loses that share of its output
    error, and each Adam step costs M instead of K per weight."""
    s = moments.gram / max(moments.rows, 1)
    values, vectors = np.linalg.eigh(s)  # ascending, per group
    values = np.clip(values, 0, None)
    share = np.cumsum(values, axis=1) / np.maximum(values.sum(axis=1, keepdims=True), 1e-300)
    keep = max(1, int((share > DROPPED).sum(axis=1).max()))
    values, vectors = values[:, -keep:], vectors[:, :, -keep:]
    return (np.sqrt(values)[:, :, None] * vectors.transpose(0, 2, 1)).astype(np.float32)


def _weights(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """The float weights and their scales (one per output channel, or one), both shaped
    (groups, outputs per group, K)."""
    w = layer.float_weight if layer.op == "Conv" or layer.trans_b else layer.float_weight.T
    assert layer.weight_scale is not None
    s = layer.weight_scale.reshape(-1)
    scale = np.broadcast_to(s.reshape(-1, *[1] * (w.ndim - 1)) if s.size > 1 else s[0], w.shape)
    grouped = (layer.group, w.shape[0] // layer.group, -1)
    return w.reshape(grouped), np.ascontiguousarray(scale).reshape(grouped)


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread: each step's tensors are small (a layer's weights), and on a busy
    machine two threads spent 6x the CPU time of one on them (spinning, waiting on each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _learn(layer: Layer, factor: np.ndarray, seed: int = 0) -> np.ndarray:
    """The learned int8 weights (floor or floor + 1 of W / s) for the objective ``factor``."""
    with _one_thread():
        return _learn_on_this_thread(layer, factor, seed)


def _learn_on_this_thread(layer: Layer, factor: np.ndarray, seed: int) -> np.ndarray:
    import torch

    torch.manual_seed(seed)
    weights, scales = _weights(layer)
    shape = layer.float_weight.shape
    w, scale = torch.tensor(weights, dtype=torch.float32), torch.tensor(scales,
                                                                        dtype=torch.float32)
    f = torch.tensor(factor).transpose(1, 2)  # (groups, K, M)
    floor = torch.floor(w / scale)
    rest = ((w / scale - floor).clamp(0, 1) - GAMMA) / (ZETA - GAMMA)
    rest = rest.clamp(1e-4, 1 - 1e-4)
    v = torch.log(rest / (1 - rest)).requires_grad_(True)
    optimiser = torch.optim.Adam([v], lr=1e-2)
    outputs = w.shape[0] * w.shape[1]
    for step in range(ITERATIONS):
        beta = 20 - (20 - 2) * step / max(ITERATIONS - 1, 1)
        h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        error = scale * torch.clamp(floor + h, -128, 127) - w  # (groups, out, K)
        loss = (error @ f).pow(2).sum() / outputs + REGULARISATION * (
            1 - (2 * h - 1).abs().pow(beta)).sum() / h.numel()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        learned = torch.clamp(floor + (h >= 0.5).float(), -128, 127).numpy()
    if layer.op != "Conv" and not layer.trans_b:
        return learned.reshape(shape[::-1]).T
    return learned.reshape(shape)


def _moments(layer: Layer) -> Moments:
    k = int(np.prod(layer.float_weight.shape[1:])) if layer.op == "Conv" else (
        layer.float_weight.shape[1] if layer.trans_b else layer.float_weight.shape[0])
    return Moments(np.zeros((layer.group, k, k)))


def _rounded_up(layer: Layer, inputs: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """The learned int8 weights of ``layer`` on its float ``inputs`` (all held at once), or None
    for a layer it cannot express (a Conv other than 2-D, an auto_pad)."""
    if not _supported(layer):
        return None
    moments = _moments(layer)
    _accumulate(moments, _patches(layer, inputs, ROWS, np.random.default_rng(seed)))
    return _learn(layer, _factor(moments), seed)


def _all_moments(float_model: onnx.ModelProto, layers: list[Layer], x: np.ndarray,
                 seed: int = 0) -> dict[str, Moments]:
    """Each layer's moments over ``ROWS`` rows drawn evenly from the images in ``x``, the
    float model run on ``CHUNK`` images at a time."""
    rng = np.random.default_rng(seed)
    moments = {lay.node: _moments(lay) for lay in layers}
    names = list(dict.fromkeys(lay.activation for lay in layers))
    for start in range(0, len(x), CHUNK):
        chunk = x[start:start + CHUNK]
        inputs = float_activations(float_model, names, chunk)
        share = -(-ROWS * len(chunk) // len(x))  # this chunk's share of the rows
        for lay in layers:
            _accumulate(moments[lay.node], _patches(lay, inputs[lay.activation], share, rng))
    return moments


def adaround(float_model: onnx.ModelProto, qdq: onnx.ModelProto, x: np.ndarray) -> int:
    """Replace ``qdq``'s int8 Conv/Gemm weights (in place) by AdaRound's, learned on the
    preprocessed images ``x``; the number of layers rewritten."""
    layers = [lay for lay in _layers(float_model, qdq) if _supported(lay)]
    if not layers:
        return 0
    moments = _all_moments(float_model, layers, x)
    inits = {t.name: t for t in qdq.graph.initializer}
    for number, layer in enumerate(layers, 1):
        began = time.perf_counter()
        learned = _learn(layer, _factor(moments.pop(layer.node)))
        log.debug("AdaRound %d/%d %s %s: %.1f s", number, len(layers), layer.node,
                  layer.float_weight.shape, time.perf_counter() - began)
        tensor = inits[layer.weight_name]
        tensor.CopyFrom(numpy_helper.from_array(learned.astype(np.int8), tensor.name))
    return len(layers)
