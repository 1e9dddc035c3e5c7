"""converters/quantize.py: the settings it hands onnxruntime, read back from the QDQ model and
compared with onnxruntime's published MinMax formula, and its calibration-data decisions.

Written for the survivors of ``python scripts/mutation_test.py --target quantize``
(docs/testing.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.converters.quantize import (
    CALIBRATION_METHODS,
    QuantConfig,
    _op_coverage,
    quantize_onnx,
    refuse_test_images,
    require_calibration,
)
from edgecnn.errors import ConversionError, DataError
from edgecnn.files.card import InputSpec, ModelCard
from edgecnn.files.data import Dataset

MEAN, STD = 0.4, 0.25  # preprocessing: x = (pixel / 255 - MEAN) / STD, so x in [-1.6, 2.4]


def _float_model(batch: int | str = "N", metadata: dict[str, str] | None = None
                 ) -> onnx.ModelProto:
    """Conv(3x3, 4 -> 3 channels) -> Relu -> Sigmoid: one op onnxruntime quantises, one it
    passes through (Relu is folded into the Conv's output range) and one it quantises too."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [batch, 2, 4, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [batch, 3, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def _card() -> ModelCard:
    return ModelCard("q", 0, InputSpec((2, 4, 4), pixel_scale=1 / 255, mean=(MEAN,), std=(STD,)),
                     tuple("0123456789"))


def _data(n: int) -> Dataset:
    images = np.random.default_rng(5).integers(1, 255, (n, 4, 4, 2), dtype=np.uint8)
    images[0, 0, 0, 0], images[-1, 0, 0, 1] = 0, 255  # the full pixel range is seen
    return Dataset(images, np.zeros(n, np.int64), "random")


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


# -- QuantConfig --------------------------------------------------------------------------
def test_quant_config_checks_method_and_batch_size():
    assert CALIBRATION_METHODS == ("minmax", "entropy", "percentile", "mse")
    for method in CALIBRATION_METHODS:
        QuantConfig(method=method)
    QuantConfig(batch_size=1)  # the smallest batch
    with pytest.raises(ValueError, match="calibration method 'kl'; choose from minmax, entropy, "
                                         "percentile, mse"):
        QuantConfig(method="kl")
    with pytest.raises(ValueError, match="calibration batch size must be at least 1"):
        QuantConfig(batch_size=0)


# -- what quantize_onnx writes --------------------------------------------------------------
def test_minmax_activations_follow_onnxruntimes_formula():
    """MinMax over [-1.6, 2.4] with asymmetric int8 (onnxruntime's compute_scale_zp):
    scale = (rmax - rmin) / (127 - -128), zero point = round(-128 - rmin / scale)."""
    report = quantize_onnx(_float_model(), _card(), _data(20))
    inits = _inits(report.model)
    rmin, rmax = (0 - 255 * MEAN) / (255 * STD), (255 - 255 * MEAN) / (255 * STD)
    scale = (rmax - rmin) / 255
    # the calibrator sees float32 inputs, so the range is exact to float32 precision
    assert float(inits["x_scale"]) == pytest.approx(scale, rel=1e-6)
    assert int(inits["x_zero_point"]) == round(-128 - rmin / scale)  # -26
    assert inits["x_zero_point"].dtype == np.int8  # QInt8 activations, asymmetric


@pytest.mark.parametrize("per_channel", [True, False])
def test_weights_are_symmetric_int8_per_channel_or_per_tensor(per_channel):
    model = quantize_onnx(_float_model(), _card(), _data(10),
                          QuantConfig(per_channel=per_channel)).model
    inits = _inits(model)
    assert inits["w_quantized"].dtype == np.int8
    assert inits["w_zero_point"].dtype == np.int8 and not inits["w_zero_point"].any()
    assert inits["w_scale"].size == (3 if per_channel else 1)
    w = numpy_helper.to_array(next(t for t in _float_model().graph.initializer if t.name == "w"))
    # symmetric: scale = max|w| / 127 over the channel (or the tensor); the largest weight
    # of each channel becomes +-127
    bound = np.abs(w).reshape(3, -1).max(1) if per_channel else np.abs(w).max().reshape(1)
    np.testing.assert_allclose(inits["w_scale"].ravel(), bound / 127, rtol=1e-6)
    # int32 bias at input scale x weight scale (the TFLite int8 spec)
    np.testing.assert_allclose(inits["b_quantized_scale"].ravel(),
                               float(inits["x_scale"]) * inits["w_scale"].ravel(), rtol=1e-6)


def test_report_counts_ops_images_and_records_the_settings():
    report = quantize_onnx(_float_model(metadata={"edgecnn.card": "{}", "mine": "kept"}), _card(),
                           _data(30), QuantConfig(method="minmax", max_images=25))
    assert report.calibration_images == 25  # max_images caps the set
    assert report.quantized_ops == {"Conv": 1, "Sigmoid": 1} and report.float_ops == {}
    meta = _metadata(report.model)
    assert meta["edgecnn.quantization"] == ("int8 QDQ, minmax, per-channel weights, "
                                            "25 calibration images")
    assert meta["mine"] == "kept" and meta["edgecnn.card"] == "{}"
    assert len(report.model.metadata_props) == len(meta)  # one entry per key
    per_tensor = quantize_onnx(_float_model(), _card(), _data(7),
                               QuantConfig(per_channel=False, max_images=None))
    assert _metadata(per_tensor.model)["edgecnn.quantization"] == (
        "int8 QDQ, minmax, per-tensor weights, 7 calibration images")


@pytest.mark.parametrize("fixed,count,used", [(4, 10, 8), (4, 4, 4), (3, 11, 9), (1, 5, 5)])
def test_a_fixed_batch_model_is_fed_whole_batches(fixed, count, used):
    """A model exported at batch ``fixed`` gets the largest multiple of it."""
    report = quantize_onnx(_float_model(batch=fixed), _card(), _data(count))
    assert report.calibration_images == used


def _observe_batch_sizes(monkeypatch) -> list[int]:
    """The size of every calibration batch, appended as the reader's real ``get_next`` runs."""
    import edgecnn.converters.quantize as quantize

    seen: list[int] = []
    real = quantize.DatasetCalibrationReader.get_next

    def observed(self):
        batch = real(self)
        if batch is not None:
            seen.append(len(next(iter(batch.values()))))
        return batch

    monkeypatch.setattr(quantize.DatasetCalibrationReader, "get_next", observed)
    return seen


def test_calibration_batch_is_bounded_by_image_size(monkeypatch):
    """Batches hold at most CALIBRATION_BATCH_ELEMENTS (2**19) values: 3x64x64 images go 42 to
    a batch (524288 // 12288), and every image is seen once. The reader is only observed: its
    real ``get_next`` runs unchanged."""
    seen = _observe_batch_sizes(monkeypatch)
    w = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["N", 3, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    card = ModelCard("big", 0, InputSpec((3, 64, 64)), tuple("0123456789"))
    images = np.random.default_rng(0).integers(0, 256, (100, 64, 64, 3), dtype=np.uint8)
    quantize_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), card,
                  Dataset(images, np.zeros(100, np.int64), "random"))
    from edgecnn.converters.quantize import CALIBRATION_BATCH_ELEMENTS

    assert CALIBRATION_BATCH_ELEMENTS == 1 << 19
    assert seen == [42, 42, 16]


def test_op_coverage_counts_ops_reading_dequantized_values():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "xd"], ["y"])]
    graph = helper.make_graph(nodes, "g", [], [])
    done, left = _op_coverage(helper.make_model(graph))
    assert done == {"Conv": 1, "Add": 1} and left == {"Relu": 1}


# -- calibration data ----------------------------------------------------------------------
def test_require_calibration_paths(tmp_path):
    default = tmp_path / "calib.npz"
    with pytest.raises(DataError, match="the default .*calib.npz is missing"):
        require_calibration(None, default)
    default.write_bytes(b"")
    assert require_calibration(None, default) == default
    assert require_calibration(str(tmp_path / "mine.npz"), default) == tmp_path / "mine.npz"
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: is a test set"):
        require_calibration(tmp_path / "t10k-images-idx3-ubyte.gz", default)


def test_test_images_in_calibration_data_are_refused(test_set):
    mixed = Dataset(np.concatenate([test_set.images[:3],
                                    np.zeros((2, 28, 28, 1), np.uint8) + 7]),
                    np.zeros(5, np.int64), Path("mixed.npz"))
    with pytest.raises(DataError, match="mixed.npz: 3 of its 5 images are MNIST test images"):
        refuse_test_images(mixed)
    refuse_test_images(Dataset(np.zeros((2, 28, 28, 1), np.uint8) + 7, np.zeros(2, np.int64),
                               Path("clean.npz")))


def test_calibration_batch_size_one_is_honoured(monkeypatch):
    """``--calib-batch 1`` (the smallest valid size) feeds one image at a time."""
    seen = _observe_batch_sizes(monkeypatch)
    report = quantize_onnx(_float_model(), _card(), _data(3), QuantConfig(batch_size=1))
    assert seen == [1, 1, 1] and report.calibration_images == 3


# -- refusals and onnxruntime's own errors ---------------------------------------------------
def test_a_fixed_batch_larger_than_the_calibration_set_is_refused_up_front():
    """onnxruntime would fail inside calibration ("Got invalid dimensions ... Expected: 4")."""
    with pytest.raises(DataError, match=r"^3 calibration images, but the model takes a fixed "
                                        r"batch of 4: give at least 4 as `calib`$"):
        quantize_onnx(_float_model(batch=4), _card(), _data(3))


def test_a_double_input_is_refused_up_front():
    model = _float_model()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    with pytest.raises(ConversionError, match=r"^input 'x' is double; int8 quantisation starts "
                                              r"from a float32 model: export it in float32$"):
        quantize_onnx(model, _card(), _data(5))


def test_onnxruntimes_own_errors_become_one_line():
    """A Conv whose kernel has 5 input channels for a 2-channel input passes the ONNX checks
    quantize_static makes and fails when calibration runs it: onnxruntime raises its own
    ``Fail``, which is neither ValueError nor RuntimeError."""
    model = _float_model()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(
        np.ones((3, 5, 3, 3), np.float32), "w"))
    with pytest.raises(ConversionError) as caught:
        quantize_onnx(model, _card(), _data(5))
    message = str(caught.value)
    assert message.startswith("int8 quantisation failed: [ONNXRuntimeError] : 1 : FAIL")
    assert "Input channels C is not equal to kernel channels * group. C: 2 kernel channels: 5" \
        in message and "\n" not in message


def test_weights_stored_apart_count_towards_the_external_data_threshold(tmp_path, monkeypatch):
    """A model file whose weights live in ``<name>.data`` is big by the sum of both files; the
    quantiser then streams weights through files (``use_external_data_format``). quantize_static
    is only observed: the real one runs."""
    import onnxruntime.quantization

    import edgecnn.converters.quantize as quantize

    model = _float_model()
    path = tmp_path / "float.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="float.onnx.data", size_threshold=0)
    graph_bytes = path.stat().st_size
    data_bytes = (tmp_path / "float.onnx.data").stat().st_size
    assert data_bytes == (3 * 2 * 3 * 3 + 3) * 4  # the Conv's weights and bias, float32
    seen: list[bool] = []
    real = onnxruntime.quantization.quantize_static

    def observed(*args, **kwargs):
        seen.append(kwargs["use_external_data_format"])
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", observed)
    for threshold, big in ((graph_bytes + data_bytes - 1, True), (graph_bytes + data_bytes, False)):
        monkeypatch.setattr(quantize, "EXTERNAL_DATA_BYTES", threshold)
        report = quantize_onnx(path, _card(), _data(5))
        assert seen[-1] is big
        assert report.quantized_ops == {"Conv": 1, "Sigmoid": 1}


def test_a_calibration_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    """The first quantisation writes the ranges; the next one (other nodes kept float) reads
    them without running a single calibration batch, and quantises exactly the same."""
    seen = _observe_batch_sizes(monkeypatch)
    cache = tmp_path / "ranges.json"
    first = quantize_onnx(_float_model(), _card(), _data(6),
                          QuantConfig(calibration_cache=cache))
    assert cache.exists() and seen == [6]
    again = quantize_onnx(_float_model(), _card(), _data(6),
                          QuantConfig(calibration_cache=cache))
    assert seen == [6]  # no batch read the second time
    assert _inits(again.model).keys() == _inits(first.model).keys()
    for name, value in _inits(first.model).items():
        np.testing.assert_array_equal(_inits(again.model)[name], value)
    kept = quantize_onnx(_float_model(), _card(), _data(6),
                         QuantConfig(calibration_cache=cache, float_nodes=("conv",)))
    assert seen == [6] and kept.quantized_ops == {"Sigmoid": 1}
