"""int16 activations with int8 weights (TFLite's 16x8 mode) for the layers that need them.

Checked against references written here, not edgecnn's: the int16 scale is the calibrated
range's absolute maximum over 32767 (symmetric, zero point 0), computed from the float model's
own activations on the calibration images; the TFLite tensors follow the 16x8 spec (int16
activations with zero point 0, int64 biases, ADD with general scales); LiteRT, tflite-runtime
and onnxruntime run the files and agree with the QDQ graph's float reading; and on the shipped
model whose int8 loses the network to an outlier range, one int16 layer gives it back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.api import ConvertConfig, convert
from edgecnn.cli import cli
from edgecnn.converters.onnx_graph import load_graph
from edgecnn.converters.op_versions import OpFacts, version_of
from edgecnn.errors import ConversionError, ParameterError
from edgecnn.files.data import load_dataset
from edgecnn.files.model_files import read_card
from edgecnn.files.shipped import SHIPPED_CALIBRATION_SET
from edgecnn.files.torch_files import default_card
from edgecnn.inspection import inspect_model
from tests import test_tflite as tflite_cases
from tests.conftest import LENET

# the outlier model's layers made int16: a depthwise conv (int64 bias), the projection that
# feeds the first residual ADD (ADD in 16x8, its other input converted int8 -> int16), and the
# projection whose output range (-728..446) int8 cannot hold beside the head's small values
OUTLIER_INT16 = ("blocks.0.depthwise.1", "blocks.0.project.1", "blocks.3.project.1")


def _float_reading(path: Path, x: np.ndarray, outputs: list[str] | None = None
                   ) -> list[np.ndarray]:
    """The model's float reading, graph optimisations off (the QDQ graph's meaning)."""
    model = onnx.load(path)
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                              for name in outputs or [] if name not in known)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(outputs or None, {session.get_inputs()[0].name: x})


def _int16_quantizers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    zero_points = {t.name: t for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear"
            and zero_points[n.input[2]].data_type == TensorProto.INT16]


def _sqnr_db(reference: np.ndarray, value: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference ** 2) / np.sum((reference - value) ** 2)))


@pytest.fixture(scope="module")
def lenet(tmp_path_factory) -> dict[str, Path]:
    """LeNet-5 float, and int8 with its first fully-connected layer int16 (ONNX and TFLite)."""
    out = tmp_path_factory.mktemp("int16_lenet")
    files = {"float": convert(LENET, out / "float.onnx", ConvertConfig("onnx")).path}
    for to in ("onnx", "tflite"):
        config = ConvertConfig(to, int8=True, int16_layers=("classifier.1",))
        files[to] = convert(files["float"], out / f"int16.{to}", config).path
    return files


@pytest.fixture(scope="module")
def outlier(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("int16_outlier")
    files = {"float": convert("mobile_se_outlier", out / "float.onnx", ConvertConfig("onnx")).path}
    files["int8"] = convert(files["float"], out / "int8.onnx",
                            ConvertConfig("onnx", int8=True)).path
    for to in ("onnx", "tflite"):
        config = ConvertConfig(to, int8=True, int16_layers=OUTLIER_INT16)
        files[to] = convert(files["float"], out / f"int16.{to}", config).path
    return files


def test_int16_scale_is_the_calibrated_absolute_maximum_over_32767(lenet):
    """Symmetric int16: zero point 0 and scale max|x| / 32767 over the calibration images, x
    the float model's own value of the quantised tensor: classifier.1's Gemm output and the
    ReLU that reads it (an op reading an int16 output computes in int16 too), both at the
    ReLU's range (onnxruntime gives an activation's input its output's range)."""
    model = onnx.load(lenet["onnx"])
    assert model.opset_import[0].version >= 21  # ONNX's own Q/DQ take int16 from opset 21
    quantizers = _int16_quantizers(model)
    produced = [q for q in quantizers if "convert" not in q.input[1]]
    assert [q.input[0] for q in produced] == ["linear", "relu_2"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    calibration = load_dataset(SHIPPED_CALIBRATION_SET, split="train")
    x = default_card("lenet5").input.preprocess(calibration.images)
    [value] = _float_reading(lenet["float"], x, ["relu_2"])
    for q in produced:
        assert inits[q.input[2]].dtype == np.int16 and inits[q.input[2]] == 0
        assert float(inits[q.input[1]]) == pytest.approx(np.abs(value).max() / 32767, rel=1e-6)
    # the flattened pooling output is converted from int8 to int16 for it
    assert any("convert" in q.input[1] for q in quantizers)


def test_int16_tflite_follows_the_16x8_spec(lenet):
    """int16 activations with zero point 0 around the 16x8 FULLY_CONNECTED, its bias int64,
    conversions from and to int8 through float (TFLite's QUANTIZE cannot take int8 to int16)."""
    from ai_edge_litert.interpreter import Interpreter

    details = {d["name"]: d for d in Interpreter(model_path=str(lenet["tflite"]))
               .get_tensor_details()}
    relu = details["relu_2"]
    assert relu["dtype"] == np.int16 and relu["quantization"][1] == 0
    assert details["relu_2/bias"]["dtype"] == np.int64
    assert details["relu_3/bias"]["dtype"] == np.int32  # the next layer stays int8
    ops = {(o["op"], o["version"]) for o in inspect_model(lenet["tflite"]).ops}
    assert "TRANSPOSE" not in {op for op, _ in ops}  # the flatten still folds into the weights
    # op_version.cc: a 16x8 FULLY_CONNECTED with int8 weights is version 1, an int16
    # DEQUANTIZE version 3; the int8 layers keep their versions
    assert {("FULLY_CONNECTED", 1), ("DEQUANTIZE", 3), ("FULLY_CONNECTED", 4)} <= ops
    # FULLY_CONNECTED v1 and DEQUANTIZE v3 alone would claim 1.15.0: 16x8 needs TFLite 2.4
    assert inspect_model(lenet["tflite"]).details["oldest_runtime"] == "2.4.0"


def test_op_versions_of_16x8_kernels_are_op_version_cc_s():
    int16, int8 = np.dtype(np.int16), np.dtype(np.int8)

    class Add:
        potScaleInt16 = False

    assert version_of("ADD", OpFacts([int16, int16], [int16], Add())) == 3
    Add.potScaleInt16 = True
    assert version_of("ADD", OpFacts([int16, int16], [int16], Add())) == 1
    assert version_of("SUB", OpFacts([int16, int16], [int16], type("S", (), {
        "potScaleInt16": False})())) == 5
    assert version_of("MUL", OpFacts([int16, int16], [int16])) == 4
    assert version_of("CONCATENATION", OpFacts([int16, int16], [int16])) == 3
    assert version_of("DEQUANTIZE", OpFacts([int16], [np.dtype(np.float32)])) == 3
    assert version_of("CONV_2D", OpFacts([int16, int8, np.dtype(np.int64)], [int16])) == 1
    assert version_of("DEPTHWISE_CONV_2D", OpFacts([int16, int8, np.dtype(np.int64)],
                                                   [int16])) == 1
    assert version_of("CONV_2D", OpFacts([int8, int8, np.dtype(np.int32)], [int8])) == 3


def test_one_int16_layer_gives_the_outlier_model_back(outlier, test_set):
    """mobile_se_outlier's int8 loses the network (logit SQNR against fp32 below 10 dB): its
    blocks.3 projection writes -728..446 into one int8 scale. In int16 it is 256 times finer."""
    card = read_card(outlier["float"])
    x = card.input.preprocess(test_set.images[:500])
    [fp32] = _float_reading(outlier["float"], x)
    [int8] = _float_reading(outlier["int8"], x)
    [int16] = _float_reading(outlier["onnx"], x)
    assert _sqnr_db(fp32, int8) < 10 < 20 < _sqnr_db(fp32, int16)
    assert np.mean(fp32.argmax(1) == int16.argmax(1)) >= 0.99


@pytest.mark.parametrize("runtime", ["litert", "tflite-runtime", "onnxruntime"])
def test_int16_files_run_on_every_cpu_runtime_beside_the_reference(outlier, test_set, runtime):
    """Each CPU runtime runs the int16 layers and agrees with the QDQ graph's float reading:
    the same top-1 on real digits and logits within a few output steps (each layer within one
    step, below; more steps from ties carried through depth and tflite-runtime's fixed point)."""
    from edgecnn.runtimes.sessions import open_session, predict

    card = read_card(outlier["float"])
    x = card.input.preprocess(test_set.images[:500])
    [want] = _float_reading(outlier["onnx"], x)
    path = outlier["onnx" if runtime == "onnxruntime" else "tflite"]
    got = predict(open_session(path, runtime), x)
    model = onnx.load(outlier["onnx"])
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    step = float(numpy_helper.to_array(next(t for t in model.graph.initializer
                                            if t.name == last.input[1])))
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    assert np.abs(got - want).max() / step <= 10
    assert _sqnr_db(want, got) > 30


def test_every_int16_layer_is_within_a_step_of_the_reference_on_litert(outlier, test_set):
    """The layer check: each layer fed LiteRT's own input integers, int16 layers included
    (compared in their own, 256 times finer steps), is within one step of the QDQ graph."""
    from edgecnn.checks.int8_self_check import compare_layers, first_unexplained

    x = read_card(outlier["float"]).input.preprocess(test_set.images[:64])
    diffs = compare_layers(outlier["onnx"], outlier["tflite"], x)
    int16 = [d for d in diffs if d.int16]
    assert len(int16) >= 4 and all(d.pinned_max_steps is not None for d in int16)
    assert max(d.pinned_max_steps or 0 for d in diffs) <= 1
    assert first_unexplained(diffs, off_ties=True) is None


@pytest.fixture(scope="module")
def npu_int16(outlier, tmp_path_factory) -> Path:
    """The outlier model's integer-only (--for npu) file with blocks.3.project.1 int16."""
    out = tmp_path_factory.mktemp("int16_npu") / "npu.tflite"
    return convert(outlier["float"], out, ConvertConfig(
        "tflite", int8=True, int8_for="npu", int16_layers=("blocks.3.project.1",))).path


def test_int16_layers_run_whole_on_the_npu_and_on_tflite_micro(npu_int16, outlier, cli_runner,
                                                               tmp_path, test_set):
    """Where no float op may run (Ethos-U, FPU-less MCUs), int16 is what mends the outlier
    model: Vela takes the file whole, TFLite Micro computes LiteRT's reference kernels' integers,
    and the logits are as close to fp32 as on the CPU file."""
    import importlib.util
    import json

    if importlib.util.find_spec("ethosu") is None or importlib.util.find_spec(
            "tflite_micro") is None:
        pytest.skip("Vela or TFLite Micro is not installed (pip install -c constraints.txt "
                    "-e '.[test]')")
    from ai_edge_litert.interpreter import Interpreter

    types = {d["dtype"] for d in Interpreter(model_path=str(npu_int16)).get_tensor_details()}
    assert np.float32 not in types and np.int16 in types  # integer-only, int16 inside
    for target, column, want in (("ethos-u", "NPU ops %", 100.0),
                                 ("mcu", "steps vs LiteRT ref", 0)):
        report = tmp_path / f"{target}.json"
        result = cli_runner.invoke(cli, ["bench", str(npu_int16), "--target", target, "--runs",
                                         "2", "--min-time", "0", "--json", str(report)])
        assert result.exit_code == 0, result.output
        assert json.loads(report.read_text())["results"][0]["columns"][column] == want
    from edgecnn.runtimes.sessions import open_session, predict

    x = read_card(outlier["float"]).input.preprocess(test_set.images[:500])
    [fp32] = _float_reading(outlier["float"], x)
    assert _sqnr_db(fp32, predict(open_session(npu_int16, "tflite-micro"), x)) > 20


def test_an_int16_op_without_an_integer_16x8_form_is_refused_for_the_npu(cli_runner, outlier,
                                                                         tmp_path):
    """head.1's output is read by a HardSwish, which has no 16x8 kernel: a CPU file runs it as a
    float island, an integer-only file cannot hold it and says so in one line."""
    result = cli_runner.invoke(cli, ["convert", str(outlier["float"]), "--to", "tflite",
                                     "--int8", "--for", "npu", "--int16-layers", "head.1", "-o",
                                     str(tmp_path / "o.tflite")])
    assert result.exit_code == 2, result.output + result.stderr
    *warnings, error = result.stderr.strip().splitlines()  # warned first: int8 costs 4.4 dB
    assert all(w.startswith("edgecnn: warning: ") for w in warnings)
    assert error.startswith("edgecnn: error: ") and "HardSwish" in error
    assert "no 16x8 TFLite kernel computes it" in error
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_an_unknown_int16_layer_is_named_in_one_line(cli_runner, lenet, tmp_path):
    result = cli_runner.invoke(cli, ["convert", str(lenet["float"]), "--to", "onnx", "--int8",
                                     "--int16-layers", "classifier.9", "-o",
                                     str(tmp_path / "o.onnx")])
    assert result.exit_code == 2, result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "'classifier.9'" in result.stderr and "edgecnn layers" in result.stderr


def test_int16_layers_belong_to_an_int8_model():
    with pytest.raises(ParameterError, match="add int8=True"):
        ConvertConfig("tflite", int16_layers=("features.0",))


def _qdq_chain(zero_points: tuple[np.ndarray, np.ndarray]) -> onnx.ModelProto:
    """x -> Relu -> Q1 -> DQ1 -> Q2 -> DQ2 -> Relu: a value quantised, then converted."""
    (z1, z2) = zero_points
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s1"),
             numpy_helper.from_array(z1, "z1"),
             numpy_helper.from_array(np.array(0.001, np.float32), "s2"),
             numpy_helper.from_array(z2, "z2")]
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("QuantizeLinear", ["a", "s1", "z1"], ["a_q"]),
             helper.make_node("DequantizeLinear", ["a_q", "s1", "z1"], ["a_dq"]),
             helper.make_node("QuantizeLinear", ["a_dq", "s2", "z2"], ["a_q16"]),
             helper.make_node("DequantizeLinear", ["a_q16", "s2", "z2"], ["a_16"]),
             helper.make_node("Relu", ["a_16"], ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 2, 4, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_a_conversion_pair_becomes_a_requantisation():
    graph = load_graph(_qdq_chain((np.array(3, np.int8), np.array(0, np.int16))), "chain.onnx")
    assert [n.op_type for n in graph.nodes] == ["Relu", "Identity", "Relu"]
    identity = graph.nodes[1]
    assert list(identity.input) == ["a"] and list(identity.output) == ["a_16"]
    first, second = graph.act_quant["a"], graph.act_quant["a_16"]
    assert first.scale == pytest.approx((0.05,)) and (first.zero_point, first.int16) == ((3,), False)
    assert second.scale == pytest.approx((0.001,)) and second.int16


def test_an_int16_zero_point_other_than_0_is_refused_in_one_line():
    with pytest.raises(ConversionError, match="int16 with zero point 5; TFLite's 16x8 "
                                              "activations are symmetric"):
        load_graph(_qdq_chain((np.array(3, np.int8), np.array(5, np.int16))), "chain.onnx")


def test_16x8_add_declares_general_scales(outlier):
    """A 16x8 ADD whose scales are not powers of two says so (pot_scale_int16 false: version
    3, op_version.cc's); with the schema's default it would claim power-of-two scales (1)."""
    ops = {(o["op"], o["version"]) for o in inspect_model(outlier["tflite"]).ops}
    assert ("ADD", 3) in ops and ("DEPTHWISE_CONV_2D", 1) in ops and ("ADD", 2) in ops


def _int16_case_node(model: onnx.ModelProto, op: str) -> str | None:
    """The first ``op`` node of a test_tflite case (named as the quantiser names them)."""
    from edgecnn.converters.quantize import name_unnamed_nodes

    name_unnamed_nodes(model)
    return next((n.name for n in model.graph.node if n.op_type == op), None)


@pytest.mark.parametrize("op,name", tflite_cases.CASES)
def test_every_lowering_in_an_int16_region_matches_the_qdq_model(tmp_path, op, name):
    """Every op case of tests/test_tflite.py with its op made int16 (its inputs, its outputs and
    the ops reading them; ops without a 16x8 kernel as float islands): each layer, fed LiteRT's
    own input integers, within one step of the QDQ graph, int8 layers also within ties."""
    from edgecnn.checks.int8_self_check import compare_layers, off_tie_excess
    from edgecnn.converters import onnx_passes
    from edgecnn.converters.quantize import QuantConfig, quantize_onnx
    from edgecnn.files.data import Dataset
    from edgecnn.runtimes.sessions import open_session, predict, reference_session

    model = tflite_cases._build(op, name)
    onnx_passes.clean(model)
    node = _int16_case_node(model, op)
    if node is None:
        pytest.skip(f"{op}/{name}: the clean-up folds the op away; nothing to make int16")
    card = tflite_cases._float_card(model)
    calib = Dataset(tflite_cases._images(200), np.zeros(200, np.int64), "random")
    config = QuantConfig(int16_nodes=(node,))
    if model.opset_import[0].version < 10:  # Upsample: a Resize, renamed, in opset 21
        with pytest.raises(ConversionError, match="onnx's opset conversion rewrote the op "
                                                  "writing 'z'; export the model at opset 21"):
            quantize_onnx(model, card, calib, config)
        return
    qdq = quantize_onnx(model, card, calib, config).model
    assert _int16_quantizers(qdq), f"{op}/{name}: nothing was quantised to int16"
    src = tmp_path / "q.onnx"
    onnx.save(qdq, src)
    out = convert(src, tmp_path / "q.tflite", ConvertConfig("tflite", int8=True)).path
    x = card.input.preprocess(tflite_cases._images(64))
    want = predict(reference_session(src), x)
    got = predict(open_session(out, "litert"), x)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
    for layer in compare_layers(src, out, x[:16]):
        assert layer.pinned_max_steps is not None and layer.pinned_max_steps <= 1, layer
        assert not off_tie_excess(layer), layer


def test_int16_budget_candidates_bring_their_input_writers_and_hold_16x8_kernels_only():
    """x -> A (Conv) -> B (Conv) -> H (HardSwish) -> C (Conv, the output). Ranked C, B: C
    writes the graph output (int16 would make the file's output float) and H has no 16x8
    kernel; B's output is read by H; A writes B's input and only B reads it: A alone."""
    from edgecnn.checks.budget import _int16_candidates

    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="A"),
             helper.make_node("Conv", ["a", "w"], ["b"], name="B"),
             helper.make_node("HardSwish", ["b"], ["h"], name="H"),
             helper.make_node("Conv", ["h", "w"], ["y"], name="C")]
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 4, 4]) for n in "xy"]
    model = helper.make_model(helper.make_graph(nodes, "g", info[:1], info[1:], [w]))
    assert _int16_candidates(model, ["C", "B"]) == ["A"]
    assert _int16_candidates(model, ["B", "A"]) == ["A"]


def test_an_npu_budget_keeps_the_outlier_layer_int16(cli_runner, outlier, tmp_path):
    """--for npu cannot hold a float layer: the budget keeps layers int16 instead, and the one
    layer that mends the outlier model is the one it finds."""
    out = tmp_path / "npu.tflite"
    result = cli_runner.invoke(cli, ["convert", str(outlier["float"]), "--to", "tflite", "--int8",
                                     "--for", "npu", "--max-drop", "0.5", "--budget-methods",
                                     "none", "-o", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    assert "met" in result.output and "kept in int16: blocks.3.project.1;" in result.output
    from ai_edge_litert.interpreter import Interpreter

    types = {d["dtype"] for d in Interpreter(model_path=str(out)).get_tensor_details()}
    assert np.float32 not in types and np.int16 in types


def _biases(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.name: inits[producer[n.input[2]].input[0]] for n in model.graph.node
            if n.op_type in ("Conv", "Gemm") and len(n.input) > 2}


def test_bias_correction_leaves_int16_layers_and_reads_converted_inputs_from_float(lenet):
    """Bias correction beside int16 layers: a 16x8 layer's input is 256 times finer, so its
    bias is left as calibrated; an int8 layer reading a value converted back from int16
    (classifier.3 reads classifier.1's ReLU) is corrected from the float tensor the conversion
    started from (it named a tensor the float model does not have, which onnxruntime refused)."""
    from edgecnn.converters.quantize import QuantConfig, quantize_onnx

    card = read_card(lenet["float"])
    calibration = load_dataset(SHIPPED_CALIBRATION_SET, split="train").take(300)
    before, after = (_biases(quantize_onnx(lenet["float"], card, calibration, QuantConfig(
        int16_nodes=("node_linear",), bias_correction=on)).model) for on in (False, True))
    assert np.array_equal(before["node_linear"], after["node_linear"])  # its input: int16
    assert not np.array_equal(before["node_linear_1"], after["node_linear_1"])
    assert not np.array_equal(before["node_conv2d_1"], after["node_conv2d_1"])


def test_a_relu_after_an_int16_layer_stays(outlier):
    """onnxruntime drops a Relu after a Conv where the Conv's int8 grid stops at 0 anyway
    (asymmetric, zero point -128). A symmetric int16 grid has negatives: dropped there, the
    squeeze-excite's reduce conv passed them on (its output 3.8 dB from fp32, the whole model in
    int16 15 dB instead of 36). The Relu must stay, and its output hold no negative value."""
    from edgecnn.converters.quantize import QuantConfig, quantize_onnx

    card = read_card(outlier["float"])
    calibration = load_dataset(SHIPPED_CALIBRATION_SET, split="train").take(200)
    se_block = ("node_conv2d_3", "node_relu", "node_conv2d_4")  # reduce, Relu, expand
    qdq = quantize_onnx(outlier["float"], card, calibration,
                        QuantConfig(int16_nodes=se_block)).model
    relu = next((n for n in qdq.graph.node if n.op_type == "Relu" and n.output[0] == "relu"),
                None)
    assert relu is not None
    x = card.input.preprocess(load_dataset(SHIPPED_CALIBRATION_SET, split="train").images[:64])
    session = ort.InferenceSession(_with_output(qdq, "relu").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    [value] = session.run(["relu"], {session.get_inputs()[0].name: x})
    assert value.min() >= 0 and value.max() > 0


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return copy


def test_an_int16_output_takes_float_io_and_refuses_int8_io(lenet, tmp_path):
    """classifier.5 writes the logits: in int16 the file's output is int16, which an 8-bit I/O
    type cannot carry. By default the file takes float I/O; io_dtype=int8 is refused in one
    line naming the fix."""
    config = ConvertConfig("onnx", int8=True, int16_layers=("classifier.5",))
    qdq = convert(lenet["float"], tmp_path / "q.onnx", config).path
    out = convert(qdq, tmp_path / "q.tflite", ConvertConfig("tflite", int8=True)).path
    assert inspect_model(out).outputs[0].dtype == "float32"
    with pytest.raises(ConversionError, match="input or output is int16 .* io_dtype=int8 needs "
                                              "it 8-bit: drop io_dtype"):
        convert(qdq, tmp_path / "i.tflite", ConvertConfig("tflite", int8=True, io_dtype="int8"))
    assert not (tmp_path / "i.tflite").exists()
