"""Cross-layer equalisation and high-bias absorption (converters/cross_layer_equalization.py): a
hand-computed pair, the float function kept on a depthwise-separable network, ReLU6 pairs left
alone, and a quantisation with the flag, where per-tensor weights gain from it."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecnn.converters.cross_layer_equalization import (
    equalize,
    input_ranges,
    output_ranges,
)


def _conv(name: str, x: str, y: str, weight: np.ndarray, bias: np.ndarray | None,
          inits: list[onnx.TensorProto], **attrs: object) -> onnx.NodeProto:
    inits.append(numpy_helper.from_array(weight.astype(np.float32), f"{name}.w"))
    inputs = [x, f"{name}.w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), f"{name}.b"))
        inputs.append(f"{name}.b")
    return helper.make_node("Conv", inputs, [y], name=name, **attrs)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], channels: int,
           side: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "cle", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", channels, side, side])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


# -- a pair by hand -----------------------------------------------------------------------
def _pair(between: str) -> onnx.ModelProto:
    """1x1 conv (2 -> 2 channels, output ranges 4 and 1) -> ``between`` -> 1x1 conv (input
    ranges 1 and 4)."""
    inits: list[onnx.TensorProto] = []
    w1 = np.array([[4.0, -2.0], [0.5, -1.0]]).reshape(2, 2, 1, 1)
    w2 = np.array([[1.0, -4.0], [0.5, 2.0]]).reshape(2, 2, 1, 1)
    nodes = [_conv("a", "x", "h", w1, np.array([2.0, 3.0]), inits)]
    if between == "Clip":  # ReLU6 as exporters write it
        inits += [numpy_helper.from_array(np.array(v, np.float32), n)
                  for n, v in (("lo", 0.0), ("hi", 6.0))]
        nodes.append(helper.make_node("Clip", ["h", "lo", "hi"], ["r"]))
    else:
        nodes.append(helper.make_node(between, ["h"], ["r"]))
    nodes.append(_conv("b", "r", "y", w2, np.array([0.25, 0.5]), inits))
    return _model(nodes, inits, 2, 3)


def test_the_scales_are_the_hand_computed_ones():
    model = _pair("Relu")
    report = equalize(model)
    assert report.equalized == [("a", "b")]
    w = _weights(model)
    # s = sqrt(r1 / r2) = sqrt(4 / 1), sqrt(1 / 4) = 2, 0.5: both ranges become sqrt(4 * 1) = 2
    np.testing.assert_allclose(w["a.w"].reshape(2, 2), [[2.0, -1.0], [1.0, -2.0]])
    np.testing.assert_allclose(w["a.b"], [1.0, 6.0])
    np.testing.assert_allclose(w["b.w"].reshape(2, 2), [[2.0, -2.0], [1.0, 1.0]])
    np.testing.assert_allclose(w["b.b"], [0.25, 0.5])  # the second bias is not scaled


def test_a_relu6_pair_is_left_alone_and_named():
    model = _pair("Clip")
    before = _weights(model)
    report = equalize(model)
    assert report.equalized == []
    assert report.skipped == [("a", "b", "Clip between them")]
    after = _weights(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


# -- a depthwise-separable network --------------------------------------------------------
def _separable(seed: int = 0) -> onnx.ModelProto:
    """stem conv 3 -> 8, ReLU, depthwise 3x3, ReLU, pointwise 8 -> 16, ReLU, MaxPool, pointwise
    16 -> 4: the depthwise channels' ranges spread over 1000x (batch norm folded into them,
    the stem carrying the inverse), the pointwise biases high."""
    rng = np.random.default_rng(seed)
    spread = 10.0 ** rng.uniform(-2, 1, 8)
    inits: list[onnx.TensorProto] = []
    nodes = [
        _conv("stem", "x", "s", rng.normal(0, 0.5, (8, 3, 3, 3)) / spread[:, None, None, None],
              rng.normal(0, 0.1, 8) / spread, inits, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["s_r"]),
        _conv("dw", "s_r", "d", rng.normal(0, 0.5, (8, 1, 3, 3)) * spread[:, None, None, None],
              rng.normal(0, 0.1, 8), inits, group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["d_r"]),
        _conv("pw", "d_r", "p", rng.normal(0, 0.3, (16, 8, 1, 1)), rng.uniform(2, 4, 16),
              inits),
        helper.make_node("Relu", ["p"], ["p_r"]),
        helper.make_node("MaxPool", ["p_r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
        _conv("head", "m", "y", rng.normal(0, 0.3, (4, 16, 1, 1)), rng.normal(0, 0.1, 4), inits),
    ]
    return _model(nodes, inits, 3, 8)


def _images(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (count, 3, 8, 8)).astype(np.float32)


def test_the_float_function_is_kept_and_the_ranges_equalised():
    model = _separable()
    x = _images(32)
    want = _run(model, x)
    spread_before = np.ptp(np.log(output_ranges(model.graph.node[2], _weights(model)["dw.w"])))
    report = equalize(model)
    assert report.equalized == [("stem", "dw"), ("dw", "pw"), ("pw", "head")]
    got = _run(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    w = _weights(model)
    nodes = {n.name: n for n in model.graph.node}
    for first, second in report.equalized:  # each pair's shared channels span alike
        np.testing.assert_allclose(output_ranges(nodes[first], w[f"{first}.w"]),
                                   input_ranges(nodes[second], w[f"{second}.w"]), rtol=1e-3)
    spread_after = np.ptp(np.log(output_ranges(nodes["dw"], w["dw.w"])))
    assert spread_after < spread_before / 2


def test_high_biases_are_absorbed_where_a_relu_and_no_padding_allow():
    model = _separable()
    x = _images(32)
    want = _run(model, x)
    equalized = _separable()
    equalize(equalized)
    report = equalize(model, x)
    # pw -> ReLU -> MaxPool -> head (1x1, unpadded); dw reads padding, so stem -> dw keeps its
    assert report.absorbed == [("dw", "pw"), ("pw", "head")]
    np.testing.assert_allclose(_run(model, x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # c = each pw channel's least pre-activation over x, where positive: out of pw's bias,
    # into head's through head's weights (1x1, so c times the weight)
    probe = onnx.ModelProto()
    probe.CopyFrom(equalized)
    probe.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, None))
    import onnxruntime as ort

    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    c = np.maximum(session.run(["p"], {"x": x})[0].min(axis=(0, 2, 3)), 0).astype(np.float64)
    assert 0 < np.count_nonzero(c) < len(c)  # some channels go below 0: those keep their bias
    before, after = _weights(equalized), _weights(model)
    np.testing.assert_allclose(after["pw.b"], before["pw.b"] - c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after["head.b"], before["head.b"] + before["head.w"][:, :, 0, 0] @ c,
                               rtol=1e-5, atol=1e-6)
    assert "2 high biases absorbed" in report.summary()


# -- through quantize_onnx ----------------------------------------------------------------
def _quantize(model: onnx.ModelProto, x: np.ndarray, **config: object) -> onnx.ModelProto:
    from edgecnn.converters.quantize import QuantConfig, quantize_onnx
    from edgecnn.files.card import InputSpec, ModelCard
    from edgecnn.files.data import TensorDataset

    card = ModelCard("cle", 0, InputSpec((3, 8, 8)), tuple("0123"))
    data = TensorDataset(x, np.full(len(x), -1, np.int64), "random")
    return quantize_onnx(model, card, data, QuantConfig(**config)).model  # type: ignore[arg-type]


def _sqnr(want: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2)))


def test_quantize_with_the_flag_equalises_first(tmp_path):
    from edgecnn.converters import qdq

    calib, x = _images(64, seed=2), _images(64, seed=3)
    want = _run(_separable(), x)

    def sqnr(model: onnx.ModelProto) -> float:
        return _sqnr(want, qdq.reference_inference_session(model).run(None, {"x": x})[0])

    cache = tmp_path / "ranges.json"
    plain = _quantize(_separable(), calib, per_channel=False, calibration_cache=cache)
    equalized = _quantize(_separable(), calib, per_channel=False, calibration_cache=cache,
                          cross_layer_equalization=True)
    # the equalised model's ranges are cached apart from the plain model's, not read for it
    assert cache.exists() and (tmp_path / "ranges-cle.json").exists()
    meta = {p.key: p.value for p in equalized.metadata_props}
    assert "cross-layer-equalised (3 pairs, 2 high biases absorbed)" in meta[
        "edgecnn.quantization"]
    # per-tensor weights: the depthwise layer's small channels round to nothing without it
    assert sqnr(equalized) > sqnr(plain) + 6, (sqnr(equalized), sqnr(plain))
    assert cache.read_bytes() != (tmp_path / "ranges-cle.json").read_bytes()


def test_the_tflite_file_of_an_equalised_model_reads_as_its_qdq_model(tmp_path):
    """Equalised before calibration, the model has one set of scales: the TFLite file written
    from the QDQ model computes what the QDQ reference computes."""
    from edgecnn.converters import qdq
    from edgecnn.converters.onnx_to_tflite import TFLiteConfig, convert_onnx_to_tflite
    from edgecnn.runtimes.sessions import open_session, predict

    quantized = _quantize(_separable(), _images(64, seed=2), cross_layer_equalization=True)
    x = _images(16, seed=3)
    want = qdq.reference_inference_session(quantized).run(None, {"x": x})[0]
    path = tmp_path / "cle.tflite"
    path.write_bytes(convert_onnx_to_tflite(quantized, "cle", TFLiteConfig(io_dtype="float32"))
                     .data)
    got = predict(open_session(path, "litert"), x)
    step = float(_weights(quantized)["y_scale"])  # the output's int8 step
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= step * 1.001  # a rounding tie at most


def test_convert_takes_it_as_a_flag_and_records_it(cli_runner, tmp_path):
    from edgecnn.cli import cli

    out = tmp_path / "lenet5_cle.onnx"
    result = cli_runner.invoke(cli, ["convert", "lenet5", "--to", "onnx", "--int8",
                                     "--cross-layer-equalization", "-o", str(out)])
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert "cross-layer-equalised (3 pairs" in meta["edgecnn.quantization"]
    refused = cli_runner.invoke(cli, ["convert", "lenet5", "--to", "onnx",
                                      "--cross-layer-equalization"])
    assert refused.exit_code == 2 and "add --int8" in refused.output
