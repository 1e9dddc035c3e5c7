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
int8 weights in the QDQ model, so ONNX and TFLite carry the same integers. Opt-in: it costs
seconds per layer, and at 8 bits nearest rounding is often close already.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgecnn.converters.bias_correction import Layer, _layers, float_activations

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch
ITERATIONS = 400
REGULARISATION = 0.01
BATCH = 8  # images per step, drawn from the calibration inputs
SAMPLES = 2048  # output positions per step (conv outputs are subsampled)


def _layer_inputs(float_model: onnx.ModelProto, layers: list[Layer], x: np.ndarray
                  ) -> dict[str, np.ndarray]:
    return float_activations(float_model, list(dict.fromkeys(lay.activation for lay in layers)),
                             x)


def _rounded_up(layer: Layer, inputs: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """The learned rounding (1 = up) of ``layer``'s weights, or None for a layer it cannot
    express (a Conv other than 2-D, an auto_pad)."""
    import torch
    import torch.nn.functional as F

    conv = layer.op == "Conv"
    if conv and (layer.float_weight.ndim != 4 or len(layer.pads) not in (0, 4)):
        return None
    assert layer.weight_scale is not None
    torch.manual_seed(seed)
    shape = [1] * layer.float_weight.ndim
    shape[layer.weight_axis] = -1
    scale = torch.tensor(layer.weight_scale.reshape(shape) if layer.weight_scale.size > 1
                         else layer.weight_scale.reshape(()), dtype=torch.float32)
    w = torch.tensor(layer.float_weight, dtype=torch.float32)
    floor = torch.floor(w / scale)
    rest = (w / scale - floor).clamp(0, 1)
    v = torch.log(((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4) /
                  (1 - ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)))
    v = v.clone().requires_grad_(True)
    x = torch.tensor(inputs, dtype=torch.float32)

    def run(weight: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        if not conv:
            return x[rows] @ (weight if layer.trans_b else weight.T).T
        pads = layer.pads or (0, 0, 0, 0)
        padded = F.pad(x[rows], (pads[1], pads[3], pads[0], pads[2]))
        return F.conv2d(padded, weight, stride=layer.strides or 1,
                        dilation=layer.dilations or 1, groups=layer.group)

    with torch.no_grad():
        target = run(w)
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam([v], lr=1e-2)
    for step in range(ITERATIONS):
        beta = 20 - (20 - 2) * step / max(ITERATIONS - 1, 1)
        h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        soft = scale * torch.clamp(floor + h, -128, 127)
        rows = torch.as_tensor(rng.integers(0, len(x), min(BATCH, len(x))))
        out, want = run(soft, rows).flatten(), target[rows].flatten()
        pick = torch.as_tensor(rng.integers(0, out.numel(), min(SAMPLES, out.numel())))
        loss = F.mse_loss(out[pick], want[pick]) + REGULARISATION * (
            1 - (2 * h - 1).abs().pow(beta)).sum() / h.numel()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        return torch.clamp(floor + (h >= 0.5).float(), -128, 127).numpy()


def adaround(float_model: onnx.ModelProto, qdq: onnx.ModelProto, x: np.ndarray) -> int:
    """Replace ``qdq``'s int8 Conv/Gemm weights (in place) by AdaRound's, learned on the
    preprocessed images ``x``; the number of layers rewritten."""
    layers = _layers(float_model, qdq)
    if not layers:
        return 0
    inputs = _layer_inputs(float_model, layers, x)
    inits = {t.name: t for t in qdq.graph.initializer}
    done = 0
    for layer in layers:
        learned = _rounded_up(layer, inputs[layer.activation])
        if learned is None:
            continue
        tensor = inits[layer.weight_name]
        tensor.CopyFrom(numpy_helper.from_array(learned.astype(np.int8), tensor.name))
        done += 1
    return done
