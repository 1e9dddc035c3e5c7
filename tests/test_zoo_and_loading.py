"""Model zoo counts, the shipped model, and safe loading of every supported model file kind."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from edgecnn import zoo
from edgecnn.cli import cli
from edgecnn.errors import ModelLoadError
from edgecnn.files.card import card_path_for, sha256_of
from edgecnn.files.torch_files import load_torch_model
from tests.conftest import LENET

EXPECTED_PARAMETERS = {"lenet5": 61_706, "lenet5-3x3": 60_074, "cnn4": 121_514,
                       "cnn-fc1024": 3_274_634, "vgg19": 143_667_240,
                       "mobile-se": 33_756}  # summed by hand per layer in docs/int8-debugging.md


@pytest.mark.parametrize("name", list(zoo.ARCHITECTURES))
def test_every_zoo_model_has_its_documented_parameter_count(name):
    assert zoo.ARCHITECTURES.get(name).parameter_count() == EXPECTED_PARAMETERS[name]


def test_zoo_command_lists_all_architectures(cli_runner):
    result = cli_runner.invoke(cli, ["zoo", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert {n: r["parameters"] for n, r in rows.items()} == EXPECTED_PARAMETERS
    assert rows["vgg19"]["input"] == "3x224x224"


def test_shipped_model_loads_in_plain_pytorch_and_scores_99(test_set):
    program = torch.export.load(io.BytesIO(LENET.read_bytes()))  # no edgecnn involved
    card = json.loads(card_path_for(LENET).read_text())
    scale = card["input"]["pixel_scale"]
    x = (test_set.images.astype(np.float32) * scale - card["input"]["mean"][0]) / card["input"]["std"][0]
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.inference_mode():
        accuracy = (program.module()(x).argmax(1).numpy() == test_set.labels).mean()
    assert accuracy >= 0.99
    assert card["sha256"] == sha256_of(LENET)
    assert abs(card["test_accuracy"] - accuracy) < 1e-4
    assert card["parameters"] == 61_706


def test_state_dict_checkpoint_naming_its_architecture_loads(tmp_path):
    module = zoo.build("lenet5-3x3")
    path = tmp_path / "sd.pt"
    torch.save({"arch": "lenet5-3x3", "state_dict": module.state_dict()}, path)
    model = load_torch_model(path)
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(model(x), module(torch.from_numpy(x)).detach().numpy())
    assert model.card.architecture == "lenet5-3x3"


def test_torchscript_archive_loads(tmp_path):
    module = zoo.build("lenet5")
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.trace(module, torch.zeros(1, 1, 28, 28)), str(path),
                   _extra_files={"edgecnn_card.json": load_torch_model(LENET).card.to_json()})
    model = load_torch_model(path)
    assert model.format == "torchscript"
    x = np.zeros((2, 1, 28, 28), np.float32)
    np.testing.assert_allclose(model(x), module(torch.from_numpy(x)).detach().numpy(), atol=1e-6)


def test_pickled_module_needs_opt_in(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(zoo.build("lenet5"), path)
    with pytest.raises(ModelLoadError, match="trust_pickle=True only if"):
        load_torch_model(path)
    with pytest.warns(UserWarning, match="unpickling"):
        assert load_torch_model(path, trust_pickle=True).card.architecture == "lenet5"


def _bad_models(tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(LENET.read_bytes()[:4000])
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(1).bytes(5000))
    pickled = tmp_path / "pickled.pt"
    torch.save(zoo.build("lenet5"), pickled)
    wrong = tmp_path / "wrong_arch.pt"
    torch.save({"arch": "lenet5", "state_dict": zoo.build("cnn4").state_dict()}, wrong)
    return {"missing": (tmp_path / "nope.pt", "no such"), "truncated": (truncated, "zip"),
            "random bytes": (noise, "zip"), "pickled": (pickled, "--trust-pickle"),
            "wrong architecture": (wrong, "does not fit architecture 'lenet5'")}


@pytest.mark.parametrize("case", ["missing", "truncated", "random bytes", "pickled",
                                  "wrong architecture"])
def test_bad_model_files_exit_2_with_one_line(tmp_path, cli_runner, case):
    path, needle = _bad_models(tmp_path)[case]
    result = cli_runner.invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and needle in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("suffix", [".pt", ".onnx", ".tflite"])
def test_inspect_reports_io_and_ops(cli_runner, artefacts, suffix):
    path = {".pt": LENET, ".onnx": artefacts["onnx_int8"], ".tflite": artefacts["tflite_int8"]}[suffix]
    result = cli_runner.invoke(cli, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["inputs"] and info["outputs"] and info["ops"]
    if suffix == ".tflite":
        assert info["details"]["oldest_runtime"] == "1.14.0"
        assert info["details"]["transpose_ops"] == 0
        assert info["inputs"][0]["quantization"].startswith("scale 0.00392")
        assert {o["op"] for o in info["ops"]} == {"CONV_2D", "MAX_POOL_2D", "RESHAPE",
                                                  "FULLY_CONNECTED"}
    if suffix == ".pt":
        assert info["parameters"] == 61_706


def test_cli_loading_flags_reach_every_command(cli_runner, tmp_path):
    pickled = tmp_path / "pickled.pt"
    torch.save(zoo.build("lenet5").eval(), pickled)
    bare = tmp_path / "bare.pt"
    torch.save(zoo.build("lenet5").state_dict(), bare)
    result = cli_runner.invoke(cli, ["inspect", str(pickled), "--trust-pickle", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["parameters"] == 61_706
    assert result.stderr.startswith("edgecnn: warning:") and "runs code" in result.stderr
    assert cli_runner.invoke(cli, ["inspect", str(bare)]).exit_code == 2  # names no architecture
    result = cli_runner.invoke(cli, ["validate", str(bare), "--arch", "lenet5", "--limit", "50"])
    assert result.exit_code == 0, result.stderr


def test_one_parameter_count_in_every_format(artefacts):
    """The float network's count (PyTorch's numel) whatever the container or encoding; scales
    and zero points are reported apart."""
    from edgecnn import zoo
    from edgecnn.inspection import inspect_model

    want = sum(p.numel() for p in zoo.build("lenet5").parameters())
    for path in (LENET, *artefacts.values()):
        info = inspect_model(path)
        assert info.parameters == want, path.name
        overhead = info.details.get("quantisation parameters", 0)
        assert (overhead > 0) == ("int8" in path.name), path.name


@pytest.mark.parametrize("batch", ["fixed 1", "dynamic"])
def test_a_users_own_export_converts_without_a_card(tmp_path, cli_runner, batch):
    """A card-less torch.export archive of an nn.Module we never saw: its own input shape and
    class count make the card; a batch-1 export (what most people write) is fed batch 1."""
    import onnxruntime as ort
    import torch.nn as nn

    from edgecnn.cli import cli

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Hardsigmoid(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    example = torch.zeros(1 if batch == "fixed 1" else 2, 3, 16, 16)
    shapes = None if batch == "fixed 1" else ({0: torch.export.Dim("batch", min=1, max=64)},)
    path = tmp_path / "own.pt2"
    torch.export.save(torch.export.export(module, (example,), dynamic_shapes=shapes), path)
    out = tmp_path / "own.onnx"
    result = cli_runner.invoke(cli, ["convert", str(path), "--to", "onnx", "-o", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    x = torch.rand(1, 3, 16, 16)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        np.testing.assert_allclose(got, module(x).numpy(), atol=1e-5)  # fp32: reassociation only
    info = cli_runner.invoke(cli, ["inspect", str(path), "--json"])
    assert json.loads(info.output)["parameters"] == sum(p.numel() for p in module.parameters())


def test_python_m_edgecnn_runs_from_the_checkout_whatever_the_install():
    """At the repository root the checkout's edgecnn/ shadows an installed edgecnn, whose
    converters and targets come from package-dir; without an editable finder (a regular
    install) edgecnn.targets used to be missing. The editable finder is removed here to be
    that install."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = ("import runpy, sys\n"
              f"sys.path.insert(0, {str(ROOT)!r})\n"
              "sys.meta_path[:] = [m for m in sys.meta_path if 'editable' not in repr(m).lower()]\n"
              "import edgecnn.targets.support.runner, edgecnn.converters.quantize\n"
              "sys.argv = ['edgecnn', 'zoo', '--json']\n"
              "runpy.run_module('edgecnn', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert {r["name"] for r in json.loads(result.stdout)} == set(EXPECTED_PARAMETERS)


def test_a_card_derived_from_shapes_counts_classes_on_output_axis_1_or_says_it_cannot():
    from edgecnn.files.card import card_from_shapes

    logits = card_from_shapes("net", (3, 32, 32), ["batch", 7], derived_from="the ONNX file")
    assert logits.labels == tuple("0123456") and logits.input.shape == (3, 32, 32)
    assert logits.extra["card"] == "derived from the ONNX file: no card was given"
    segmenter = card_from_shapes("seg", (3, 64, 64), [1, 21, 64, 64], derived_from="the export")
    assert len(segmenter.labels) == 21
    for unknown in (["batch", "classes"], [1, 0], []):  # symbolic, ONNX's 0 for unknown, none
        card = card_from_shapes("x", (1, 28, 28), unknown, derived_from="the export")
        assert card.labels == ("0",) and "class count is not fixed" in card.extra["card"]
    with pytest.raises(ValueError):
        card_from_shapes("x", (28, 28), ["batch", 10], derived_from="the export")


def test_tflite_input_quantisation_clips_to_the_input_type_not_to_int8():
    from edgecnn.runtimes.tflite_io import quantize_input

    x = np.array([-1.0, 0.0, 0.6, 2.0], np.float32)
    uint8 = quantize_input(x, {"dtype": np.uint8, "quantization": (1 / 255, 0)})
    assert uint8.dtype == np.uint8 and uint8.tolist() == [0, 0, 153, 255]
    int8 = quantize_input(x, {"dtype": np.int8, "quantization": (1 / 255, -128)})
    assert int8.tolist() == [-128, -128, 25, 127]


def test_fixed_batch_files_are_fed_in_whole_batches_by_one_helper():
    from edgecnn.errors import BadInputError
    from edgecnn.runtimes.batching import join_outputs, run_in_batches, split_batch

    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    assert [b.tolist() for b in split_batch(x, 2, "m.onnx")] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]],
                                                                [[8, 9], [10, 11]]]
    assert len(split_batch(x, None, "m.onnx")) == 1 and len(split_batch(x, 6, "m.onnx")) == 1
    with pytest.raises(BadInputError, match="m.onnx: takes batches of exactly 4; 6 images"):
        split_batch(x, 4, "m.onnx")
    both = run_in_batches(lambda b: [b * 2, b.sum(1)], x, 3, "m.onnx")
    assert np.array_equal(both[0], x * 2) and np.array_equal(both[1], x.sum(1))
    assert join_outputs([[x]]) == [x]
