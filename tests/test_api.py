"""The Python API does what the CLI does, and takes a torch.nn.Module in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgecnn
from edgecnn.cli import cli
from edgecnn.errors import BadInputError


class SmallNet(torch.nn.Module):
    """A module as a notebook holds it: never saved to a file."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet().eval()


def test_a_module_in_memory_converts_and_the_result_runs(tmp_path, net):
    x = torch.rand(4, 3, 32, 32)
    result = edgecnn.convert(net, tmp_path / "net.tflite", edgecnn.ConvertConfig("tflite"),
                             example_inputs=(x[:1],))
    with torch.no_grad():
        want = net(x).numpy()
    got = result.run(x)[0]  # the batch was left free: 4 images through a file traced on 1
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert "net.tflite (tflite" in repr(result) and "max|Δ| vs onnx" in repr(result)


def test_a_dataloader_calibrates_int8(tmp_path, net):
    images = torch.rand(96, 3, 32, 32)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, torch.zeros(96, dtype=torch.long)), batch_size=32)
    result = edgecnn.convert(net, tmp_path / "net8.tflite",
                             edgecnn.ConvertConfig("tflite", int8=True),
                             example_inputs=images[:2], calibration=loader)
    assert result.checks["calibration images"] == 96
    assert result.int8_cost is not None and result.int8_cost.images == 96
    with torch.no_grad():
        want = net(images[:32]).numpy()
    got = result.run(images[:32].numpy())[0]
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.9
    assert 10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2)) > 20  # SQNR, dB


@pytest.mark.parametrize("call, needle", [
    (lambda net, t: edgecnn.convert(net, t / "x.onnx", example_inputs=torch.rand(3, 32, 32)),
     "(N, C, H, W)"),
    (lambda net, t: edgecnn.convert(net, t / "x.onnx", example_inputs=(torch.rand(1, 3, 8, 8),),
                                    calibration=[torch.rand(1, 3, 8, 8)]), "int8=True"),
    (lambda net, t: edgecnn.convert("lenet5", t / "x.onnx",
                                    example_inputs=(torch.rand(1, 1, 28, 28),)), "in memory"),
    (lambda net, t: edgecnn.convert(object(), t / "x.onnx"), "torch.nn.Module"),
    (lambda net, t: edgecnn.convert(net, t / "x.onnx", edgecnn.ConvertConfig("onnx", int8=True),
                                    example_inputs=(torch.rand(1, 3, 8, 8),),
                                    calibration=[np.array(["a"])]), "numeric"),
])
def test_api_misuse_is_one_named_error(tmp_path, net, call, needle):
    with pytest.raises(BadInputError) as caught:
        call(net, tmp_path)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_bench_through_the_api(tmp_path):
    from edgecnn.api import bench

    report = bench("lenet5", runs=3, warmup=1, min_time=0.0)
    rows = report.rows()
    assert [r["runtime"] for r in rows] == ["torch"] and rows[0]["batch"] == 1
    with pytest.raises(BadInputError, match=r"'npu' is not an option of target cpu \(it is for ethos-u\)"):
        bench("lenet5", npu=("U55-128",))


def test_targets_are_found_by_module_name_and_declare_their_options():
    from edgecnn.targets import target_names, target_options

    assert target_names() == ["cpu", "cuda", "ethos-u", "mcu", "rpi"]  # support/ and base are not
    assert target_options("ethos-u") == ["npu"] and target_options("cpu") == []
    assert "known_hosts" in target_options("rpi")


def test_bench_refuses_a_flag_its_target_does_not_take(cli_runner):
    result = cli_runner.invoke(cli, ["bench", "lenet5", "--host", "pi@example"])
    assert result.exit_code == 2
    assert "--host is not an option of --target cpu; it is for --target rpi" in result.output


def test_a_module_that_pins_its_batch_is_exported_fixed_and_says_so(tmp_path):
    class Pinned(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)
            self.fc = torch.nn.Linear(2 * 26 * 26, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).view(1, -1))  # the batch written into the view

    with pytest.warns(UserWarning, match="batches of exactly 1"):
        result = edgecnn.convert(Pinned().eval(), tmp_path / "pinned.onnx",
                                 example_inputs=torch.rand(1, 1, 28, 28))
    import onnx

    dims = onnx.load(result.path).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1


def test_library_errors_name_api_parameters_and_the_cli_respells_them_as_flags(cli_runner):
    from edgecnn import api
    from edgecnn.checks.budget import Budget
    from edgecnn.errors import ParameterError

    with pytest.raises(ParameterError, match=r"^max_drop_pp=-1.0: give accuracy points, 0..100$"):
        Budget(max_drop_pp=-1.0)
    with pytest.raises(ValueError, match=r"int8_for='gpu'; choose from"):  # a ValueError too
        edgecnn.ConvertConfig("tflite", int8=True, int8_for="gpu")
    with pytest.raises(ParameterError, match=r"`calib` only applies with int8=True"):
        edgecnn.ConvertConfig("onnx", calib="x.npz")
    result = cli_runner.invoke(cli, ["convert", "lenet5", "--to", "tflite", "--int8",
                                     "--max-drop", "-1"])
    assert result.output == "edgecnn: error: --max-drop -1.0: give accuracy points, 0..100\n"
    result = cli_runner.invoke(cli, ["convert", "lenet5", "--to", "onnx", "--calib", "x.npz"])
    assert "--calib only applies with --int8; add --int8 or drop --calib" in result.output
    result = cli_runner.invoke(cli, ["validate", "lenet5", "--limit", "0"])
    assert result.exit_code == 2 and "--limit 0: give a number >= 1" in result.output
    with pytest.raises(ParameterError, match="limit=0"):
        api.validate(["lenet5"], "x.npz", limit=0)


def test_runtime_has_one_grammar_names_or_globs_comma_separated(tmp_path):
    from pathlib import Path

    from edgecnn.runtimes.sessions import match_runtimes, named_exactly, runtimes_for

    names = ["torch-cuda:fp32", "torch-cuda:fp16:graph", "torch-cuda:bf16:graph", "litert"]
    assert match_runtimes("torch-cuda:*:graph, litert", names) == names[1:]
    assert named_exactly("litert,torch-cuda:*") == {"litert"}
    assert runtimes_for(Path("m.tflite"), "lite*") == ["litert"]
    assert runtimes_for(Path("m.pt"), "torch,torch-cpu:bf16") == ["torch", "torch-cpu:bf16"]
    with pytest.raises(BadInputError, match=r"runtime='onnx\*' matches none of the runtimes"):
        runtimes_for(Path("m.tflite"), "onnx*")
    assert "torch-cpu:bf16" not in runtimes_for(Path("m.pt"))  # opt-in: only when chosen


def test_a_glob_skips_the_runtimes_it_matches_that_cannot_run_here_and_says_so():
    from edgecnn import api

    report = api.bench("lenet5", runtime="torch*", runs=2, warmup=0, min_time=0.0)
    runtimes = [r["runtime"] for r in report.rows()]
    assert runtimes[0] == "torch" and not any(r.startswith("torch-cuda") for r in runtimes)
    import torch

    if not torch.cuda.is_available():  # the cuda placements are noted as skipped, not errors
        assert any(n.startswith("skipped torch-cuda:") for n in report.notes)
        with pytest.raises(BadInputError, match="torch-cuda:fp16"):  # a name must run
            api.bench("lenet5", runtime="torch-cuda:fp16", runs=2, min_time=0.0)
