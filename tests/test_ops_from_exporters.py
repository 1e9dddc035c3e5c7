"""Ops that other exporters write (issue 22, ONNX from any exporter): LRN, InstanceNormalization (PyTorch's GroupNorm), Expand,
DepthToSpace/SpaceToDepth, GlobalMaxPool and Resize's exact sampling, each against onnxruntime
(or ONNX's reference where onnxruntime lacks the opset), and the backend node tests."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.converters.onnx_to_tflite import convert_onnx_to_tflite
from edgecnn.errors import ConversionError

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(22)


def _model(nodes: list[onnx.NodeProto], in_shape: tuple[int, ...], out_shape: tuple[int, ...],
           inits: list[onnx.TensorProto] = (), opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, list(in_shape))], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, list(out_shape))], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _tflite(model: onnx.ModelProto, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    """Convert with edgecnn, run on LiteRT (NHWC in and out), back to NCHW."""
    path = tmp_path / "m.tflite"
    path.write_bytes(convert_onnx_to_tflite(model, "m.onnx").data)
    return _run_litert(path, x)


def _via_api(model: onnx.ModelProto, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    """As a user's file converts: edgecnn.api.convert (clean-up, simplification, self-check)."""
    from edgecnn.api import ConvertConfig, convert

    onnx.save(model, tmp_path / "user.onnx")
    return _run_litert(convert(tmp_path / "user.onnx", tmp_path / "user.tflite",
                               ConvertConfig("tflite")).path, x)


def _run_litert(path: Path, x: np.ndarray) -> np.ndarray:
    """An NHWC TFLite file on LiteRT, fed and read in NCHW."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [x.shape[0], *x.shape[2:], x.shape[1]])
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    interpreter.invoke()
    y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y


def _onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _close(got: np.ndarray, want: np.ndarray, tol: float = 1e-5) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(1.0, float(np.abs(want).max())))


def _x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("size,alpha,beta,bias", [(3, 1e-2, 0.75, 1.0), (5, 2e-1, 0.5, 2.0),
                                                  (1, 1e-4, 0.75, 1.0)])
def test_lrn_matches_onnxruntime(tmp_path, size, alpha, beta, bias):
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)
    model = _model([node], (2, 7, 5, 4), (2, 7, 5, 4))
    x = _x(2, 7, 5, 4) * 3
    _close(_tflite(model, x, tmp_path), _onnxruntime(model, x))


@pytest.mark.parametrize("size", [2, 4])
def test_even_lrn_window_is_written_as_onnx_arithmetic(tmp_path, size):
    """ONNX's even window is lopsided (one channel more after than before): TFLite's LRN
    cannot hold it, so the sums are a banded 1x1 CONV_2D of the squares. onnxruntime refuses
    even sizes, and ONNX's reference loops over the batch instead of the channels (onnx
    1.23): the spec's formula, in float64, checks it."""
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.3, beta=0.6, bias=1.5)
    model = _model([node], (2, 7, 5, 4), (2, 7, 5, 4))
    x = _x(2, 7, 5, 4) * 3
    wide = x.astype(np.float64)
    sums = np.stack([(wide[:, max(0, c - (size - 1) // 2):c + size // 2 + 1] ** 2).sum(1)
                     for c in range(7)], axis=1)
    want = wide / (1.5 + 0.3 / size * sums) ** 0.6
    _close(_tflite(model, x, tmp_path), want.astype(np.float32))


def test_lrn_of_size_zero_is_refused_naming_the_node():
    node = helper.make_node("LRN", ["x"], ["y"], name="lrn0", size=0)
    model = _model([node], (1, 6, 4, 4), (1, 6, 4, 4))
    with pytest.raises(ConversionError, match="LRN 'lrn0' has size=0") as caught:
        convert_onnx_to_tflite(model, "m.onnx")
    assert "\n" not in str(caught.value)


def test_instance_norm_matches_onnxruntime(tmp_path):
    inits = [numpy_helper.from_array(_x(6) + 1, "s"), numpy_helper.from_array(_x(6), "b")]
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-3)
    model = _model([node], (2, 6, 5, 7), (2, 6, 5, 7), inits)
    x = _x(2, 6, 5, 7) * 2 + 0.5
    _close(_tflite(model, x, tmp_path), _onnxruntime(model, x))


class _Norms:
    """GroupNorm, InstanceNorm and ECA's expand_as, as PyTorch exports them."""

    @staticmethod
    def module():
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
                self.group = torch.nn.GroupNorm(2, 8)
                self.instance = torch.nn.InstanceNorm2d(8, affine=True)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = self.instance(self.group(self.conv(x)))
                return y * torch.sigmoid(y.mean((2, 3), keepdim=True)).expand_as(y)

        torch.manual_seed(0)
        net = Net().eval()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        return net


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_torch_group_norm_instance_norm_and_expand_as(tmp_path, opset):
    """torch.onnx (TorchScript exporter) writes GroupNorm as Reshape -> InstanceNormalization
    -> Reshape -> Mul -> Add at every opset, and expand_as as Shape -> Expand."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.onnx.export(_Norms.module(), (torch.zeros(1, 3, 6, 6),), buffer, dynamo=False,
                      opset_version=opset, input_names=["x"], output_names=["y"])
    model = onnx.load_from_string(buffer.getvalue())
    ops = {n.op_type for n in model.graph.node}
    assert {"InstanceNormalization", "Expand"} <= ops
    x = _x(1, 3, 6, 6)
    _close(_via_api(model, x, tmp_path), _onnxruntime(model, x))


def test_dynamo_export_of_group_norm_converts(tmp_path):
    """The exporter edgecnn itself uses (converters/torch_to_onnx.py, dynamo)."""
    import torch

    program = torch.onnx.export(_Norms.module(), (torch.zeros(1, 3, 6, 6),), None, dynamo=True,
                                opset_version=18, input_names=["x"], output_names=["y"],
                                optimize=True, verbose=False)
    model = program.model_proto
    assert "InstanceNormalization" in {n.op_type for n in model.graph.node}
    x = _x(1, 3, 6, 6)
    _close(_via_api(model, x, tmp_path), _onnxruntime(model, x))


@pytest.mark.parametrize("opset,groups", [(21, 2), (21, 4), (18, 2)])
def test_group_normalization_converts_through_its_instance_norm_form(tmp_path, opset, groups):
    """GroupNormalization (torch's dynamo exporter writes it from opset 21) is unfolded by the
    clean-up into the Reshape/InstanceNormalization form, whose shapes onnx infers; a Conv
    after it shows that later shapes are known."""
    n_scale = 8 if opset >= 21 else groups
    inits = [numpy_helper.from_array(_x(n_scale) + 1, "s"), numpy_helper.from_array(_x(n_scale), "b"),
             numpy_helper.from_array(_x(3, 8, 1, 1), "w")]
    nodes = [helper.make_node("GroupNormalization", ["x", "s", "b"], ["g"], num_groups=groups,
                              epsilon=1e-4),
             helper.make_node("Conv", ["g", "w"], ["y"])]
    model = _model(nodes, (2, 8, 5, 6), (2, 3, 5, 6), inits, opset=opset)
    x = _x(2, 8, 5, 6) * 2 + 1
    if opset >= 21:
        want = _onnxruntime(model, x)
    else:  # deprecated at 21, which onnxruntime follows: ONNX's own reference
        from onnx.reference import ReferenceEvaluator

        want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    _close(_via_api(model, x, tmp_path), want)


def test_dynamo_export_at_opset_21_writes_group_normalization_and_converts(tmp_path):
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8)).eval()
    program = torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), None, dynamo=True,
                                opset_version=21, input_names=["x"], output_names=["y"],
                                optimize=True, verbose=False)
    model = program.model_proto
    assert "GroupNormalization" in {n.op_type for n in model.graph.node}
    x = _x(1, 3, 8, 8)
    _close(_via_api(model, x, tmp_path), _onnxruntime(model, x))


@pytest.mark.parametrize("dynamo", [True, False])
def test_torch_eca_channel_attention_converts(tmp_path, dynamo):
    """timm's ECA module: a Conv1d across the pooled channels, sigmoid, expand_as."""
    import io

    import torch

    class Eca(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.conv = torch.nn.Conv1d(1, 1, 3, padding=1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.stem(x))
            y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
            return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1).expand_as(x)

    torch.manual_seed(0)
    net, example = Eca().eval(), torch.zeros(1, 3, 8, 8)
    if dynamo:
        model = torch.onnx.export(net, (example,), None, dynamo=True, opset_version=18,
                                  input_names=["x"], output_names=["y"], optimize=True,
                                  verbose=False).model_proto
    else:
        buffer = io.BytesIO()
        torch.onnx.export(net, (example,), buffer, dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["y"])
        model = onnx.load_from_string(buffer.getvalue())
    x = _x(1, 3, 8, 8)
    _close(_via_api(model, x, tmp_path), _onnxruntime(model, x))


@pytest.mark.parametrize("attrs", [{"pads": [1, 2], "strides": [2]}, {"group": 2, "dilations": [2]},
                                   {"auto_pad": "SAME_UPPER"}])
def test_one_d_conv_over_several_channels_matches_onnxruntime(tmp_path, attrs):
    """(N, C, H, W) -> (N, C, H*W) -> Conv1d -> back: the 1-D Conv's channels move too."""
    group = attrs.get("group", 1)
    inits = [numpy_helper.from_array(np.array([0, 4, -1], np.int64), "flat"),
             numpy_helper.from_array(_x(6, 4 // group, 3), "w"),
             numpy_helper.from_array(_x(6), "b")]
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["f"]),
             helper.make_node("Conv", ["f", "w", "b"], ["c"], **attrs),
             helper.make_node("Relu", ["c"], ["y"])]
    x = _x(2, 4, 3, 5)
    want = _onnxruntime(_model(nodes, (2, 4, 3, 5), ("n", "c", "l"), inits), x)
    _close(_tflite(_model(nodes, (2, 4, 3, 5), want.shape, inits), x, tmp_path), want)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_matches_onnxruntime(tmp_path, mode):
    node = helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode=mode)
    model = _model([node], (2, 12, 3, 4), (2, 3, 6, 8))
    x = _x(2, 12, 3, 4)
    np.testing.assert_array_equal(_tflite(model, x, tmp_path), _onnxruntime(model, x))


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_space_to_depth_matches_onnx_reference(tmp_path, mode):
    """SpaceToDepth's mode is opset 28, newer than onnxruntime: ONNX's reference checks it."""
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2, mode=mode)
    model = _model([node], (2, 3, 4, 6), (2, 12, 2, 3), opset=28)
    x = _x(2, 3, 4, 6)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(_tflite(model, x, tmp_path), want)


def test_expand_as_channel_attention_matches_onnxruntime(tmp_path):
    shape = numpy_helper.from_array(np.array([1, 5, 4, 6], np.int64), "shape")
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]),
             helper.make_node("Expand", ["g", "shape"], ["e"]),
             helper.make_node("Mul", ["x", "e"], ["y"])]
    model = _model(nodes, (2, 5, 4, 6), (2, 5, 4, 6), [shape])
    x = _x(2, 5, 4, 6)
    _close(_tflite(model, x, tmp_path), _onnxruntime(model, x))


def test_expand_of_the_batch_axis_is_refused_naming_the_node():
    shape = numpy_helper.from_array(np.array([3, 2, 4, 4], np.int64), "shape")
    node = helper.make_node("Expand", ["x", "shape"], ["y"], name="grow")
    model = _model([node], (1, 2, 4, 4), (3, 2, 4, 4), [shape])
    with pytest.raises(ConversionError, match="Expand 'grow' repeats the batch axis"):
        convert_onnx_to_tflite(model, "m.onnx")


def test_global_max_pool_matches_onnxruntime(tmp_path):
    model = _model([helper.make_node("GlobalMaxPool", ["x"], ["y"])], (2, 3, 5, 4), (2, 3, 1, 1))
    x = _x(2, 3, 5, 4)
    np.testing.assert_array_equal(_tflite(model, x, tmp_path), _onnxruntime(model, x))


def _resize(mode: str, transform: str, rounding: str, scales: list[float],
            name: str = "r") -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array([], np.float32), "roi"),
             numpy_helper.from_array(np.array(scales, np.float32), "scales")]
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], name=name, mode=mode,
                            coordinate_transformation_mode=transform, nearest_mode=rounding)
    out = (1, 2, int(6 * scales[2]), int(8 * scales[3]))
    return _model([node], (1, 2, 6, 8), out, inits, opset=13)


@pytest.mark.parametrize("mode,transform,rounding,scales", [
    ("nearest", "half_pixel", "round_prefer_floor", [1, 1, 2, 2]),  # ONNX's defaults, x2
    ("nearest", "asymmetric", "floor", [1, 1, 3, 3]),
    ("linear", "half_pixel", "round_prefer_floor", [1, 1, 2, 2]),
    ("linear", "align_corners", "round_prefer_floor", [1, 1, 0.5, 0.5])])
def test_resize_converts_where_tflite_samples_the_same_points(tmp_path, mode, transform,
                                                             rounding, scales):
    model = _resize(mode, transform, rounding, scales)
    x = _x(1, 2, 6, 8)
    _close(_tflite(model, x, tmp_path), _onnxruntime(model, x))


def test_resize_by_a_fractional_scale_is_refused_not_approximated():
    """With align_corners ONNX's spec keeps a scale's fraction (8 * 0.6 = 4.8 samples) where
    onnxruntime and TFLite use the output size: it used to convert, 0.86 off the spec while
    matching onnxruntime; now it is refused in one line."""
    model = _resize("linear", "align_corners", "round_prefer_floor", [1, 1, 0.5, 0.6], "down")
    with pytest.raises(ConversionError, match="Resize 'down' .* ONNX's spec and onnxruntime"):
        convert_onnx_to_tflite(model, "m.onnx")


@pytest.mark.parametrize("axis,out_shape", [(0, (1, 120)), (2, (6, 20))])
def test_flatten_over_the_batch_of_a_batch_two_file_converts_for_that_batch(tmp_path, axis,
                                                                            out_shape):
    """A file that declares batch 2 keeps it: shapes are inferred at 2, so a Flatten that merges
    the batch shows as one and the file is written for batch 2 (it was written for a free batch,
    reshaping to (-1, 60): 16 rows where ONNX has 8)."""
    model = _model([helper.make_node("Flatten", ["x"], ["y"], axis=axis)], (2, 3, 4, 5),
                   out_shape)
    x = _x(2, 3, 4, 5)
    from ai_edge_litert.interpreter import Interpreter

    path = tmp_path / "m.tflite"
    path.write_bytes(convert_onnx_to_tflite(model, "m.onnx").data)
    interpreter = Interpreter(model_path=str(path))
    assert list(interpreter.get_input_details()[0]["shape_signature"]) == [2, 4, 5, 3]
    _close(_tflite(model, x, tmp_path), _onnxruntime(model, x))


def test_training_mode_batch_norm_is_refused_in_one_line():
    inits = [numpy_helper.from_array(np.ones(3, np.float32), n) for n in ("s", "b", "m", "v")]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"],
                            name="bn", training_mode=1)
    model = _model([node], (2, 3, 4, 4), (2, 3, 4, 4), inits, opset=15)
    with pytest.raises(ConversionError, match="BatchNormalization 'bn' is in training mode"):
        convert_onnx_to_tflite(model, "m.onnx")


@pytest.mark.parametrize("attrs,in_hw", [
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 1, 0]}, (7, 6)),
    ({"kernel_shape": [2, 2], "auto_pad": "SAME_LOWER"}, (5, 5)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, (6, 6)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
      "count_include_pad": 1}, (6, 6))])
def test_average_pool_divides_each_window_by_the_cells_onnx_counts(tmp_path, attrs, in_hw):
    """Uncounted padding and ceil mode's overhang: windows at the edge divide by fewer cells."""
    node = helper.make_node("AveragePool", ["x"], ["y"], **attrs)
    probe = _model([node], (1, 3, *in_hw), (1, 3, 0, 0), opset=19)
    from onnx.reference import ReferenceEvaluator

    x = _x(2, 3, *in_hw) + 2
    want = ReferenceEvaluator(probe).run(None, {"x": x})[0]
    model = _model([node], (2, 3, *in_hw), want.shape, opset=19)
    _close(_tflite(model, x, tmp_path), want)
    _close(want, _onnxruntime(model, x))


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_lp_pool_matches_onnxruntime(tmp_path, p):
    node = helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 1],
                            pads=[1, 0, 0, 1], p=p)
    model = _model([node], (2, 3, 7, 6), (2, 3, 3, 6), opset=18)
    x = _x(2, 3, 7, 6)
    _close(_tflite(model, x, tmp_path), _onnxruntime(model, x))


@pytest.mark.parametrize("attrs,w_shape", [
    ({"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]}, (4, 3, 3, 3)),
    ({"dilations": [2, 1], "strides": [1, 2]}, (4, 2, 3, 2)),
    ({"strides": [3, 2], "output_padding": [1, 1]}, (4, 2, 3, 3)),
    ({"strides": [3, 2], "output_shape": [10, 8]}, (4, 2, 3, 3))])
def test_conv_transpose_variants_match_onnxruntime(tmp_path, attrs, w_shape):
    """Grouped (per-group TRANSPOSE_CONV), dilated (zero-dilated filter) and output-padded
    (zero rows past the full output, then the bias) transposed convolutions."""
    group = attrs.get("group", 1)
    inits = [numpy_helper.from_array(_x(*w_shape), "w"),
             numpy_helper.from_array(_x(w_shape[1] * group), "b")]
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    x = _x(2, 4, 3, 3)
    want = _onnxruntime(_model([node], (2, 4, 3, 3), ("n", "c", "h", "w"), inits), x)
    _close(_tflite(_model([node], (2, 4, 3, 3), want.shape, inits), x, tmp_path), want)


@pytest.mark.parametrize("axes", [[1, 3], [-3, -1]])
def test_pad_with_axes_matches_onnxruntime(tmp_path, axes):
    inits = [numpy_helper.from_array(np.array([0, 3, 0, 4], np.int64), "pads"),
             numpy_helper.from_array(np.array(1.5, np.float32), "value"),
             numpy_helper.from_array(np.array(axes, np.int64), "axes")]
    node = helper.make_node("Pad", ["x", "pads", "value", "axes"], ["y"])
    model = _model([node], (2, 3, 4, 5), (2, 3, 4, 12), inits, opset=18)
    x = _x(2, 3, 4, 5)
    np.testing.assert_array_equal(_tflite(model, x, tmp_path), _onnxruntime(model, x))


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
def test_reflect_edge_and_wrap_padding_match_onnxruntime(tmp_path, mode):
    """One GATHER per padded axis, holding the source index of every output position."""
    pads = numpy_helper.from_array(np.array([0, 1, 2, 0, 0, 2, 1, 3], np.int64), "pads")
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)
    model = _model([node], (2, 4, 5, 6), (2, 7, 8, 9), [pads], opset=19)
    x = _x(2, 4, 5, 6)
    np.testing.assert_array_equal(_tflite(model, x, tmp_path), _onnxruntime(model, x))


def _resize_sizes(attrs: dict, in_hw: tuple[int, int], out_hw: tuple[int, int],
                  roi: list[float] | None = None) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(roi or [], np.float32), "roi"),
             numpy_helper.from_array(np.array([], np.float32), "scales"),
             numpy_helper.from_array(np.array([2, 3, *out_hw], np.int64), "sizes")]
    node = helper.make_node("Resize", ["x", "roi", "scales", "sizes"], ["y"], **attrs)
    return _model([node], (2, 3, *in_hw), (2, 3, *out_hw), inits, opset=19)


@pytest.mark.parametrize("attrs,in_hw,out_hw,roi", [
    ({"mode": "cubic"}, (5, 7), (9, 4), None),
    ({"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}, (6, 6), (4, 9), None),
    ({"mode": "linear", "antialias": 1}, (9, 8), (4, 3), None),
    ({"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"}, (4, 5),
     (7, 3), None),
    ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
      "extrapolation_value": 10.0}, (6, 6), (4, 5), [0, 0, 0.2, -0.1, 1, 1, 1.3, 0.7]),
    ({"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
      "nearest_mode": "ceil"}, (4, 5), (8, 7), None),
    ({"mode": "nearest", "coordinate_transformation_mode": "align_corners",
      "nearest_mode": "floor"}, (4, 4), (8, 3), None)])
def test_resize_modes_no_tflite_kernel_has_match_onnxruntime(tmp_path, attrs, in_hw, out_hw,
                                                            roi):
    """ONNX's own per-axis sampling: nearest as a GATHER per axis, cubic, antialiased and other
    linear ones as a BATCH_MATMUL per axis by ONNX's weight matrix."""
    model = _resize_sizes(attrs, in_hw, out_hw, roi)
    x = _x(2, 3, *in_hw)
    _close(_tflite(model, x, tmp_path), _onnxruntime(model, x))


def test_resize_by_a_fractional_half_pixel_scale_matches_onnxruntime(tmp_path):
    inits = [numpy_helper.from_array(np.array([], np.float32), "roi"),
             numpy_helper.from_array(np.array([1, 1, 1.7, 0.6], np.float32), "scales")]
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="linear")
    model = _model([node], (2, 3, 6, 8), (2, 3, 10, 4), inits, opset=19)
    x = _x(2, 3, 6, 8)
    _close(_tflite(model, x, tmp_path), _onnxruntime(model, x))


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [3, 2], "dilations": [2, 3], "pads": [1, 0, 2, 1],
                 "strides": [2, 1]}),
    ("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 2], "ceil_mode": 1, "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "dilations": [2, 2], "pads": [2, 1, 2, 1]}),
    ("AveragePool", {"kernel_shape": [2, 3], "dilations": [3, 2], "pads": [1, 1, 1, 1],
                     "count_include_pad": 1}),
    ("LpPool", {"kernel_shape": [2, 2], "dilations": [2, 2], "p": 3, "pads": [1, 1, 0, 0]})])
def test_dilated_pooling_matches_onnxruntime(tmp_path, op, attrs):
    """TFLite pooling has no dilation: each tap a strided slice, then MAXIMUM or the sum."""
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    x = _x(2, 3, 9, 8)
    want = _onnxruntime(_model([node], (2, 3, 9, 8), ("n", "c", "h", "w"), opset=19), x)
    _close(_tflite(_model([node], (2, 3, 9, 8), want.shape, opset=19), x, tmp_path), want)


NODE_CASES = ["test_lrn_default", "test_flatten_axis0", "test_instancenorm_example",
              "test_depthtospace_crd_mode_example", "test_spacetodepth_crd_mode_example",
              "test_globalmaxpool", "test_resize_upsample_scales_nearest",
              "test_resize_downsample_scales_linear", "test_resize_downsample_scales_cubic",
              "test_averagepool_2d_ceil", "test_lppool_2d_dilations",
              "test_convtranspose_kernel_shape", "test_constant_pad_axes"]


def test_onnx_backend_node_cases(tmp_path):
    """A fast subset of scripts/onnx_node_coverage.py: converted cases match ONNX's expected
    outputs, and none is silently wrong (a refusal is allowed only where it says why)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import onnx_node_coverage as coverage

    cases = {c.name: c for c in coverage.cases(coverage.CNN_OPS) if c.name in NODE_CASES}
    assert set(cases) == set(NODE_CASES)
    outcomes = {name: coverage.classify(case, tmp_path) for name, case in cases.items()}
    assert not [o for o in outcomes.values() if o.status in ("silently wrong", "error")]
    passing = {n for n, o in outcomes.items() if o.status == "pass"}
    # test_lrn_default declares batch 5: the self-check feeds it whole batches of 5
    assert passing == set(NODE_CASES)


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh"])
def test_sigmoid_and_tanh_run_in_the_layout_their_input_is_stored_in(tmp_path, op):
    """MobileViT's token SiLUs: a Sigmoid on tokens stored [N, P, C] moved them to the default
    layout and back, two TRANSPOSEs each (18 of MobileViT's 117). An elementwise op costs no
    TRANSPOSE more than a ReLU in the same place."""
    from edgecnn.converters.tflite_schema import op_name
    from edgecnn.files.model_files import read_tflite

    def model(activation: str) -> onnx.ModelProto:  # NHWC-ordered data, stored as it is
        nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                 helper.make_node(activation, ["t"], ["a"]),
                 helper.make_node("Mul", ["t", "a"], ["m"]),
                 helper.make_node("Transpose", ["m"], ["y"], perm=[0, 3, 1, 2])]
        return _model(nodes, (1, 4, 6, 6), (1, 4, 6, 6))

    def transposes(m: onnx.ModelProto) -> int:
        path = tmp_path / f"{m.graph.node[2].op_type}.tflite"
        path.write_bytes(convert_onnx_to_tflite(m, "m.onnx").data)
        flatbuffer, _ = read_tflite(path)
        codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in flatbuffer.operatorCodes]
        return sum(op_name(codes[o.opcodeIndex]) == "TRANSPOSE"
                   for o in flatbuffer.subgraphs[0].operators)

    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    _close(_tflite(model(op), x, tmp_path), _onnxruntime(model(op), x))
    assert transposes(model(op)) == transposes(model("Relu")) == 0


@pytest.mark.parametrize("in_hw,out_hw", [((4, 4), (7, 7)), ((10, 6), (4, 5)), ((8, 6), (3, 3)),
                                          ((6, 6), (3, 2)), ((5, 7), (1, 1))])
def test_exact_adaptive_average_pool_decomposition_matches_pytorch(in_hw, out_hw):
    """The slices-and-means form (converters/torch_decompositions.py) against PyTorch's own
    adaptive pooling, windows that overlap (4 -> 7), shrink unevenly (10 -> 4) and divide."""
    import torch

    from edgecnn.converters.torch_decompositions import adaptive_avg_pool2d

    x = torch.from_numpy(_x(2, 3, *in_hw))
    want = torch.nn.functional.adaptive_avg_pool2d(x, out_hw)
    np.testing.assert_allclose(adaptive_avg_pool2d(x, out_hw).numpy(), want.numpy(), rtol=0,
                               atol=1e-6)


def test_adaptive_average_pool_that_upsamples_converts_without_gather_nd(tmp_path):
    """timm's VGG head pools a 4x4 map (128x128 input) to 7x7: PyTorch's decomposition writes
    GatherND, Where and 6-D Gathers, which edgecnn refused (issue 22); the exact decomposition
    writes STRIDED_SLICE, MEAN and CONCATENATION instead, and the file matches PyTorch."""
    import torch

    from edgecnn.api import ConvertConfig, convert, inspect

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.MaxPool2d(2),
                              torch.nn.AdaptiveAvgPool2d((7, 7)), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 49, 10)).eval()
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 8, 8),)), tmp_path / "m.pt2")
    out = convert(tmp_path / "m.pt2", tmp_path / "m.tflite", ConvertConfig("tflite")).path
    ops = {row["op"] for row in inspect(out).ops}
    assert "GATHER_ND" not in ops and "SELECT_V2" not in ops and "STRIDED_SLICE" in ops
    x = _x(1, 3, 8, 8)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    _close(_run_litert(out, x), want)


def _aimet_style_qdq() -> onnx.ModelProto:
    """A QDQ file as AIMET's ``to_onnx_qdq`` writes it: weights stored in float and quantised in
    the graph (QuantizeLinear of a constant, per channel for the Conv), float biases, and each
    activation quantised only after its Relu (the Conv's and Gemm's own outputs stay float);
    AIMET quantises a Flatten's output again, with its input's parameters."""
    rng = np.random.default_rng(7)
    conv_w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    conv_scale = (np.abs(conv_w).reshape(4, -1).max(1) / 127).astype(np.float32)
    fc_w = (rng.standard_normal((10, 4 * 8 * 8)) * 0.05).astype(np.float32)
    fc_scale = np.float32(np.abs(fc_w).max() / 127)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (conv_w, "conv_w"), (conv_scale, "conv_w_scale"), (np.zeros(4, np.int8), "conv_w_zp"),
        ((rng.standard_normal(4) * 0.1).astype(np.float32), "conv_b"),
        (fc_w, "fc_w"), (np.array(fc_scale), "fc_w_scale"), (np.array(0, np.int8), "fc_w_zp"),
        ((rng.standard_normal(10) * 0.1).astype(np.float32), "fc_b"),
        (np.array(1 / 255, np.float32), "x_scale"), (np.array(0, np.uint8), "x_zp"),
        (np.array(0.03, np.float32), "r_scale"), (np.array(0, np.uint8), "r_zp"),
        (np.array(0.02, np.float32), "y_scale"), (np.array(0, np.uint8), "y_zp")]]

    def qdq(name: str, scale: str, zp: str, **attrs: int) -> list[onnx.NodeProto]:
        return [helper.make_node("QuantizeLinear", [name, scale, zp], [name + "_q"], **attrs),
                helper.make_node("DequantizeLinear", [name + "_q", scale, zp], [name + "_dq"],
                                 **attrs)]

    nodes = [*qdq("conv_w", "conv_w_scale", "conv_w_zp", axis=0),
             *qdq("fc_w", "fc_w_scale", "fc_w_zp"),
             *qdq("x", "x_scale", "x_zp"),
             helper.make_node("Conv", ["x_dq", "conv_w_dq", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), *qdq("r", "r_scale", "r_zp"),
             helper.make_node("Flatten", ["r_dq"], ["f"]), *qdq("f", "r_scale", "r_zp"),
             helper.make_node("Gemm", ["f_dq", "fc_w_dq", "fc_b"], ["g"], transB=1),
             helper.make_node("Relu", ["g"], ["y"]), *qdq("y", "y_scale", "y_zp")]
    nodes[-1].output[0] = "out"
    graph = helper.make_graph(nodes, "aimet", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(
            "out", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_aimet_style_qdq_converts_to_int8_kernels_within_a_step_of_its_reference(tmp_path):
    """Weights quantised in the graph are folded to the integers ONNX's QuantizeLinear computes,
    and a Conv or Gemm whose Relu alone is quantised runs as one int8 kernel with the Relu
    fused: before, edgecnn refused the first ('quantises an activation per channel') and ran
    the second as float islands."""
    from edgecnn.api import ConvertConfig, convert, inspect
    from edgecnn.runtimes.sessions import open_session, predict, reference_session

    model = _aimet_style_qdq()
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "aimet.onnx")
    out = convert(tmp_path / "aimet.onnx", tmp_path / "aimet.tflite",
                  ConvertConfig("tflite", int8=True)).path
    report = inspect(out)
    assert {row["op"] for row in report.ops} == {"CONV_2D", "RESHAPE", "FULLY_CONNECTED"}
    assert "float islands" not in report.details
    x = np.random.default_rng(3).random((16, 3, 8, 8), dtype=np.float32)
    x = np.round(x * 255) / 255  # on the input's grid: the reference and the file read the same
    want = np.concatenate([predict(reference_session(tmp_path / "aimet.onnx"), x[i:i + 1])
                           for i in range(len(x))])
    got = np.concatenate([predict(open_session(out, "litert"), x[i:i + 1]) for i in range(len(x))])
    assert np.abs(got - want).max() <= 0.02 + 1e-6  # one output step (y_scale)


def test_global_adaptive_average_pool_is_still_exported_as_a_mean(tmp_path):
    """AdaptiveAvgPool2d(1) stays ReduceMean, as ATen writes it: an AveragePool over the whole
    map is another int8 kernel, which rounds up to 4 steps away from the QDQ reference on the
    shipped mobile_se_outlier (the self-check refused it)."""
    import torch

    from edgecnn.api import ConvertConfig, convert

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1)).eval()
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 9, 9),)), tmp_path / "m.pt2")
    out = convert(tmp_path / "m.pt2", tmp_path / "m.onnx", ConvertConfig("onnx")).path
    ops = {node.op_type for node in onnx.load(out).graph.node}
    assert "AveragePool" not in ops and ops & {"ReduceMean", "GlobalAveragePool"}


def test_whole_map_average_pool_of_a_trained_model_is_exact_in_int8(tmp_path):
    """Exporters that write global pooling as AveragePool over the whole map (kernel = H x W):
    on the shipped mobile_se_outlier its 7x7 average spans far less than its input, so the QDQ
    graph gives it a finer output scale, and AVERAGE_POOL_2D (averaging on the input's grid)
    was 4 steps off its reference, refused by the self-check; it is written as MEAN now."""
    from edgecnn.api import ConvertConfig, convert

    source = convert(ROOT / "models" / "mobile_se_outlier.pt", tmp_path / "se.onnx",
                     ConvertConfig("onnx")).path
    model = onnx.shape_inference.infer_shapes(onnx.load(source))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in model.graph.value_info}
    pools = [n for n in model.graph.node if n.op_type == "GlobalAveragePool"]
    assert pools
    for node in pools:
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(index, helper.make_node(
            "AveragePool", list(node.input), list(node.output), name=node.name,
            kernel_shape=shapes[node.input[0]][2:]))
    onnx.save(model, tmp_path / "se_average_pool.onnx")
    result = convert(tmp_path / "se_average_pool.onnx", tmp_path / "se.tflite",
                     ConvertConfig("tflite", int8=True))
    assert result.checks["tflite max|Δ| vs qdq reference (steps)"] == 0.0


def _transposes(path: Path) -> int:
    from edgecnn.api import inspect

    return sum(op["count"] for op in inspect(path).ops if op["op"] == "TRANSPOSE")


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_dynamo_group_norm_is_channels_last_without_transpose(tmp_path, groups):
    """GroupNorm as torch.onnx (dynamo, opset 18) writes it, Reshape (N, G, -1) ->
    InstanceNormalization -> Reshape -> Mul -> Add, is lowered channels-last (the NHWC map viewed
    as [N, H*W, G, C/G]): no TRANSPOSE, the same numbers as onnxruntime, the batch free."""
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(groups, 8)).eval()
    with torch.no_grad():
        net[1].weight.normal_()
        net[1].bias.normal_()
    model = torch.onnx.export(net, (torch.zeros(1, 3, 9, 7),), None, dynamo=True,
                              opset_version=18, optimize=True, verbose=False).model_proto
    assert "InstanceNormalization" in {n.op_type for n in model.graph.node}
    input_name = model.graph.input[0].name
    path = tmp_path / "m.tflite"
    path.write_bytes(convert_onnx_to_tflite(model, "m.onnx").data)
    assert _transposes(path) == 0
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = _x(1, 3, 9, 7) * 3 + 1
    _close(_run_litert(path, x), session.run(None, {input_name: x})[0])
    batch = _x(3, 3, 9, 7)
    with torch.no_grad():
        want = net(torch.from_numpy(batch)).numpy()
    _close(_run_litert(path, batch), want)


def test_group_normalization_op_is_channels_last_without_transpose(tmp_path):
    """ONNX's own GroupNormalization (opset 21) takes the same channels-last lowering."""
    inits = [numpy_helper.from_array(_x(8) + 1, "s"), numpy_helper.from_array(_x(8), "b")]
    nodes = [helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=4,
                              epsilon=1e-3)]
    model = _model(nodes, (1, 8, 5, 6), (1, 8, 5, 6), inits, opset=21)
    from edgecnn.api import ConvertConfig, convert

    onnx.save(model, tmp_path / "user.onnx")
    path = convert(tmp_path / "user.onnx", tmp_path / "user.tflite", ConvertConfig("tflite")).path
    assert _transposes(path) == 0
    x = _x(1, 8, 5, 6) * 2 + 1
    _close(_run_litert(path, x), _onnxruntime(model, x))


def test_dynamo_group_norm_in_int8_stays_a_float_island_without_transpose(tmp_path):
    """In int8 the channels-last GroupNorm is a float island (as InstanceNormalization was):
    the file still matches its QDQ reference within the self-check's pinned bound."""
    import torch

    from edgecnn.api import ConvertConfig, convert

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    model = torch.onnx.export(net, (torch.zeros(1, 3, 10, 10),), None, dynamo=True,
                              opset_version=18, optimize=True, verbose=False).model_proto
    onnx.save(model, tmp_path / "gn.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(3).integers(0, 256, (32, 10, 10, 3), dtype=np.uint8),
             y=np.zeros(32, np.int64))
    result = convert(tmp_path / "gn.onnx", tmp_path / "gn.tflite",
                     ConvertConfig("tflite", int8=True, calib=calib))
    assert _transposes(result.path) == 0
    assert result.checks["tflite max|Δ| vs qdq reference (steps)"] <= 1.0
