"""Reduced-precision PyTorch placements and their parity gate, on the CPU (the GPU's own rows
are in test_gpu.py): what `bench --target cuda` and `validate --placement` are built from."""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import pytest
import torch

from edgecnn.cli import cli
from edgecnn.errors import BadInputError, CheckFailedError, TargetUnavailableError
from edgecnn.files.torch_files import load_torch_model
from edgecnn.runtimes.placements import TOLERANCE, ParityCheck, PlacedModel, Placement, check_parity
from edgecnn.targets.base import BenchResult
from edgecnn.targets.cuda import DEFAULT_PLACEMENTS, OPTIONAL_PLACEMENTS, select_runtimes
from edgecnn.targets.support import runner
from tests.conftest import LENET


class Overflows(torch.nn.Module):
    """Fine in fp32 and bf16, inf in fp16 (largest fp16 value: 65504): a fast wrong model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) * 1e5
        return self.fc(torch.relu(y).mean((2, 3)) * 1e-5)


@pytest.fixture(scope="module")
def overflowing_pt2(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("overflow") / "overflows.pt2"
    torch.export.save(torch.export.export(Overflows().eval(), (torch.rand(1, 1, 28, 28),)), path)
    return path


def test_placement_names_parse_and_refuse_in_one_line():
    assert Placement.parse("torch-cuda:fp16:graph") == Placement("cuda", "fp16", "graph")
    assert Placement.parse("torch-cpu:bf16").name == "torch-cpu:bf16"
    for bad in ("torch-cuda:fp8", "torch-tpu:fp16", "torch-cuda:fp16:fast", "torch",
                "torch-cpu:fp16:graph", "torch-cpu:tf32"):
        with pytest.raises(BadInputError) as info:
            Placement.parse(bad)
        assert "\n" not in str(info.value)


def test_parity_check_against_hand_computed_errors():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(8, 10)).astype(np.float32)
    ref[np.arange(8), np.arange(8)] += 10  # a clear winner on every row
    close = ref + np.float32(1e-3 * np.abs(ref).max())
    check = check_parity("x", [close], [ref], 1e-2)
    assert check.passed and check.max_rel_error == pytest.approx(1e-3, rel=1e-3)
    assert check.decisive_rows == 8 and check.argmax_flips == 0
    swapped = ref.copy()
    swapped[0, [0, 9]] = swapped[0, [9, 0]]  # row 0 now names another class
    check = check_parity("x", [swapped], [ref], 1.0)  # a loose bound: only the flip fails it
    assert not check.passed and check.argmax_flips == 1
    assert "top-1 class changed on 1 of" in check.failure("m")
    broken = ref.copy()
    broken[3, 3] = np.inf
    assert check_parity("x", [broken], [ref], 1.0).nonfinite == 1


def test_a_flip_at_a_near_tie_is_rounding_not_a_wrong_model():
    ref = np.array([[1.0, 0.98, -3.0], [5.0, 0.0, -5.0]], np.float32)
    y = np.array([[0.99, 1.0, -3.0], [5.0, 0.0, -5.0]], np.float32)  # row 0 flips at a tie
    check = check_parity("x", [y], [ref], 1e-2)
    assert check.decisive_rows == 1 and check.argmax_flips == 0 and check.passed


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cpu_placement_equals_a_hand_cast_module(precision, test_set):
    """PlacedModel's outputs against torch run by hand at that dtype: the same numbers."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    x = test_set.images[:16].transpose(0, 3, 1, 2).astype(np.float32) / 255
    model = load_torch_model(LENET)
    module = copy.deepcopy(model.module).to(dtype)
    with torch.inference_mode():
        want = module(torch.from_numpy(x).to(dtype)).float().numpy()
    placed = PlacedModel(LENET, Placement("cpu", precision))
    placed.bind(x)
    placed.launch()
    (got,) = placed.outputs()
    np.testing.assert_array_equal(got, want)
    check = check_parity(precision, [got], model.outputs(x), TOLERANCE[precision])
    assert check.passed and check.decisive_rows > 0


def test_bench_times_a_cpu_bf16_row_after_its_parity_check(cli_runner, tmp_path):
    out = tmp_path / "b.json"
    result = cli_runner.invoke(cli, ["bench", str(LENET), "--runtime", "torch-cpu:bf16",
                                     "--runs", "20", "--min-time", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["results"]
    assert row["runtime"] == "torch-cpu:bf16" and row["stats"]["runs"] >= 20
    assert 0 < row["parity"]["max_rel_error"] <= TOLERANCE["bf16"]
    assert row["parity"]["nonfinite"] == 0


def test_a_fast_wrong_row_fails_with_exit_1_and_is_not_timed(cli_runner, overflowing_pt2,
                                                              tmp_path):
    out = tmp_path / "b.json"
    result = cli_runner.invoke(cli, ["bench", str(overflowing_pt2), str(LENET), "--runtime",
                                     "torch-cpu:fp16", "--runs", "5", "--min-time", "0",
                                     "--json", str(out)])
    assert result.exit_code == 1, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "overflows.pt2 [torch-cpu:fp16]" in result.stderr and "NaN/inf" in result.stderr
    report = json.loads(out.read_text())  # the rows that are right are still reported
    assert [r["model"] for r in report["results"]] == ["lenet5.pt"]
    assert not report["passed"] and len(report["failures"]) == 1
    ok = cli_runner.invoke(cli, ["bench", str(overflowing_pt2), "--runtime", "torch-cpu:bf16",
                                 "--input-shape", "1,1,28,28", "--runs", "5", "--min-time", "0"])
    assert ok.exit_code == 0, ok.output  # bf16 keeps fp32's range


def test_validate_scores_placements_beside_the_other_rows(cli_runner, tmp_path, artefacts):
    out = tmp_path / "v.json"
    result = cli_runner.invoke(cli, ["validate", str(LENET), str(artefacts["onnx"]),
                                     "--placement", "torch-cpu:bf16", "--limit", "1000",
                                     "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["runtime"]: r for r in json.loads(out.read_text())["rows"]}
    assert {"torch", "torch-cpu:bf16", "onnxruntime"} <= set(rows)
    bf16 = rows["torch-cpu:bf16"]
    assert bf16["agreement_pct"] >= 99.0 and 0 < bf16["max_abs_dlogit"] < 1.0
    assert rows["torch"]["identical_pct"] == 100.0


@pytest.mark.parametrize("args, message", [
    (["--placement", "torch-cuda:fp8"], "choose from"),
    (["--placement", "torch-cuda:fp16"], "torch.cuda.is_available() is False"),
])
def test_validate_refuses_placements_it_cannot_run_in_one_line(cli_runner, args, message):
    if message.startswith("torch.cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the placement runs (test_gpu.py)")
    result = cli_runner.invoke(cli, ["validate", str(LENET), *args, "--limit", "10"])
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cuda_runtime_selection_takes_names_and_globs():
    every = [*DEFAULT_PLACEMENTS, *OPTIONAL_PLACEMENTS]
    assert select_runtimes(every, None) == list(DEFAULT_PLACEMENTS)
    assert select_runtimes(every, "torch-cuda:*:graph") == [
        "torch-cuda:fp32:graph", "torch-cuda:fp16:graph", "torch-cuda:bf16:graph",
        "torch-cuda:tf32:graph"]
    assert select_runtimes(every, "torch-cuda:fp16, torch-cuda:tf32") == [
        "torch-cuda:fp16", "torch-cuda:tf32"]
    with pytest.raises(TargetUnavailableError, match="matches none of"):
        select_runtimes(every, "onnxruntime:*")


def test_cuda_refuses_a_pytorch_model_without_a_gpu_in_one_line(cli_runner):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: see test_gpu.py")
    result = cli_runner.invoke(cli, ["bench", str(LENET), "--target", "cuda"])
    assert result.exit_code == 2 and "torch.cuda.is_available() is False" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_warm_up_runs_at_least_its_count_and_stops_when_steady_or_late():
    calls = []
    done = runner.warm_until_steady(lambda: calls.append(time.sleep(0.001)), 7, max_time=30.0)
    assert done == len(calls) >= 7 + 2 * 5  # the count, then two windows that agree
    started = time.perf_counter()
    slower = iter(range(1, 10**6))  # never steady: each invoke 20 % slower than the last
    runner.warm_until_steady(lambda: time.sleep(1e-4 * 1.2 ** min(next(slower), 30)), 0,
                             max_time=0.5)
    assert time.perf_counter() - started < 3.0


def test_gpu_columns_belong_to_cuda_rows_only():
    stats = runner.latency_stats([1e-3, 2e-3], 1)
    cpu = BenchResult("m", "cpu", "torch", 1, 1.0, 1.0, 1.0, stats, 10.0)
    cuda = BenchResult("m", "cuda", "torch-cuda:fp16", 1, 1.0, 1.0, 1.0, stats, 10.0,
                       gpu_stats=stats, gpu_memory_mb={"allocated": 5.0, "reserved": 8.0},
                       parity={"max_rel_error": 1e-3}, warmup_runs=40).with_gpu_columns()
    assert "GPU p50 µs" not in cpu.row()
    row = cuda.row()
    assert row["GPU alloc MB"] == 5.0 and row["GPU reserved MB"] == 8.0
    assert row["GPU p50 µs"] == stats["p50_us"] and row["warm-up runs"] == 40


class CastsAndConstants(torch.nn.Module):
    """A cast and a constant inside ``forward``: torch.export writes a float32/CPU assertion in
    front of the cast and lifts the constant to a plain attribute that ``Module.to`` skips."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).to(torch.float32)
        return (y * torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)).mean((2, 3))


def test_an_exported_cast_and_constant_move_with_the_model(tmp_path):
    torch.manual_seed(0)
    module = CastsAndConstants().eval()
    path = tmp_path / "casts.pt2"
    torch.export.save(torch.export.export(module, (torch.rand(1, 1, 8, 8),)), path)
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    with pytest.raises(RuntimeError, match="dtype"):  # what Module.to alone leaves
        load_torch_model(path).module.to(torch.float16)(torch.from_numpy(x).half())
    placed = PlacedModel(path, Placement("cpu", "fp16"))
    placed.bind(x)
    placed.launch()
    with torch.inference_mode():
        half = copy.deepcopy(module).half()
        want = (half.conv(torch.from_numpy(x).half()).float()
                * torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)).mean((2, 3)).numpy()
    np.testing.assert_allclose(placed.outputs()[0], want, rtol=1e-6)


class CastsBackToFloat(torch.nn.Module):
    """Casts its activations to float32 before a second conv: cannot run in fp16."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).float()).mean((2, 3))


def test_a_model_that_cannot_run_at_a_precision_is_refused_in_one_line(cli_runner, tmp_path):
    path = tmp_path / "casts_back.pt2"
    torch.export.save(torch.export.export(CastsBackToFloat().eval(),
                                          (torch.rand(2, 1, 28, 28),)), path)
    for command in (["validate", str(path), "--placement", "torch-cpu:fp16", "--limit", "4"],
                    ["bench", str(path), "--runtime", "torch-cpu:fp16"]):
        result = cli_runner.invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert "casts_back.pt2 [torch-cpu:fp16] cannot run" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_device_bound_onnx_gives_session_run_outputs_and_names_a_fallback(artefacts):
    """The GPU rows' IOBinding session, run on the CPU provider and CPU memory: the same
    numbers as session.run. Asking this CPU-only onnxruntime for CUDA is a fallback it names."""
    import onnxruntime as ort

    from edgecnn.targets.support.ort_device import DeviceBoundOnnx

    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    for name in ("onnx", "onnx_int8"):
        bound = DeviceBoundOnnx(artefacts[name], "CPUExecutionProvider", {}, x, device="cpu")
        bound.invoke()
        bound.check_provider()
        session = ort.InferenceSession(str(artefacts[name]), providers=["CPUExecutionProvider"])
        want = session.run(None, {session.get_inputs()[0].name: x})
        for got, expected in zip(bound.outputs(), want, strict=True):
            np.testing.assert_array_equal(got, expected)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(TargetUnavailableError, match="runs on CPUExecutionProvider instead"):
            DeviceBoundOnnx(artefacts["onnx"], "CUDAExecutionProvider", {}, x, device="cpu")


def test_a_provider_that_did_not_load_is_named_by_its_missing_library():
    from edgecnn.targets.support.ort_device import load_failure_reason

    # onnxruntime-gpu 1.23.2 on this CPU machine, as its log read (colour codes included)
    log = ("\x1b[1;31m2026-11-25 03:12:19.531591803 [E:onnxruntime:Default, provider_bridge_ort"
           ".cc:2251 TryGetProviderInfo_CUDA] provider_bridge_ort.cc:1844 onnxruntime::Provider& "
           "onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load "
           "library libonnxruntime_providers_cuda.so with error: libcublasLt.so.12: cannot open "
           "shared object file: No such file or directory\n\x1b[m\n")
    assert load_failure_reason(log) == ("its libraries did not load: libcublasLt.so.12: cannot open "
                                  "shared object file: No such file or directory")
    assert "did not load" in load_failure_reason("")


# -- the parity check's edges (each written against a mutant that survived the tests above) ---
def test_placement_names_that_are_not_pytorch_placements_say_how_to_write_one():
    for bad in ("cuda:fp16", "torch-cuda", "onnxruntime:fp16"):
        with pytest.raises(BadInputError, match="a PyTorch placement reads"):
            Placement.parse(bad)


def test_outputs_the_reference_does_not_have_are_a_failure():
    ref = [np.ones((2, 3), np.float32)]
    with pytest.raises(CheckFailedError, match="2 outputs where the reference has 1"):
        check_parity("x", [ref[0], ref[0]], ref, 1e-2)


def test_only_class_scores_are_checked_for_top_1():
    """A segmentation map (N, C, H, W), one score per image (N, 1) and an empty output (a
    detector that found nothing) have no top-1 to compare; their values are still checked."""
    rng = np.random.default_rng(0)
    seg = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    single = rng.normal(size=(4, 1)).astype(np.float32)
    empty = np.zeros((0, 4), np.float32)
    check = check_parity("x", [seg, single, empty], [seg, single, empty], 1e-4)
    assert check.passed and (check.decisive_rows, check.argmax_flips) == (0, 0)
    assert check.max_rel_error == 0.0
    moved = check_parity("x", [seg, single + 1, empty], [seg, single, empty], 1e-4)
    assert not moved.passed and moved.decisive_rows == 0


def test_an_all_zero_reference_passes_only_zeros():
    zero = np.zeros((2, 5), np.float32)
    assert check_parity("x", [zero], [zero], 1e-4).passed
    assert check_parity("x", [zero + 1e-6], [zero], 1e-4).max_rel_error == np.inf


def test_the_tolerance_and_the_decisive_margin_are_inclusive_bounds():
    at_bound = ParityCheck("x", 1e-2, 1e-2, 4, 0, 0)
    assert at_bound.passed
    flipped = ParityCheck("x", 1e-2, 1e-2, 4, 1, 0)
    assert flipped.failure("m").count("relative error") == 0  # only what broke is named
    # a lead of exactly 10 % of the largest |logit| is not decisive; 10.1 % is
    ref = np.array([[10.0, 9.0, 0.0], [10.0, 8.99, 0.0], [0.0, 0.5, 0.0]], np.float32)
    check = check_parity("x", [ref], [ref], 1e-2)
    assert check.decisive_rows == 1


def test_a_binary_classifier_is_checked_for_top_1_and_a_single_score_is_not():
    ref = np.array([[4.0, -4.0], [-4.0, 4.0]], np.float32)
    flipped = check_parity("x", [ref[:, ::-1].copy()], [ref], 10.0)
    assert flipped.decisive_rows == 2 and flipped.argmax_flips == 2 and not flipped.passed
    score = np.array([[0.3], [0.9]], np.float32)
    assert check_parity("x", [score], [score], 1e-4).decisive_rows == 0


def test_a_failure_names_the_relative_error_against_its_bound():
    message = ParityCheck("x", 0.5, 1e-2, 4, 0, 0).failure("m.pt2")
    assert "m.pt2 [x]" in message and "relative error 0.5 > 0.01" in message


def test_validate_fails_a_placement_that_is_wrong_against_its_own_fp32(cli_runner,
                                                                       overflowing_pt2):
    result = cli_runner.invoke(cli, ["validate", str(overflowing_pt2), "--placement",
                                     "torch-cpu:fp16", "--placement", "torch-cpu:bf16",
                                     "--limit", "50"])
    assert result.exit_code == 1, result.output
    fp16 = next(line for line in result.output.splitlines() if "torch-cpu:fp16" in line)
    assert "FAIL: vs CPU fp32:" in fp16 and "NaN/inf" in fp16
    bf16 = next(line for line in result.output.splitlines() if "torch-cpu:bf16" in line)
    assert bf16.rstrip().endswith("ok")


def test_placements_reach_the_reference_and_the_python_api(artefacts, test_set):
    from edgecnn import api

    report = api.validate([artefacts["onnx"]], test_set.take(100), reference=LENET,
                          placements="torch-cpu:bf16")  # one name, not its characters
    rows = {(r.artefact, r.runtime): r for r in report.rows}
    assert (LENET.name, "torch-cpu:bf16") in rows and report.passed


def test_an_all_failing_bench_still_writes_its_record(cli_runner, overflowing_pt2, tmp_path):
    out = tmp_path / "b.json"
    result = cli_runner.invoke(cli, ["bench", str(overflowing_pt2), "--runtime",
                                     "torch-cpu:fp16", "--json", str(out)])
    assert result.exit_code == 1
    report = json.loads(out.read_text())
    assert report["results"] == [] and not report["passed"]
    assert "NaN/inf" in report["failures"][0]


def test_gpu_clock_state_is_empty_without_nvidia_smi_and_named_with_it():
    import shutil

    from edgecnn.targets.support.nvidia import gpu_clocks

    state = gpu_clocks()  # no recursion, no exception, whatever the machine
    if shutil.which("nvidia-smi") is None:
        assert state == {}
    else:
        assert "clocks.sm" in state


def test_backend_flags_pin_fp32_and_autotuning_for_a_row_and_restore_them():
    from edgecnn.runtimes.placements import backend_flags

    def flags() -> tuple:
        conv = getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            return (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision,
                    torch.backends.cudnn.benchmark)
        return (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.benchmark)

    before = flags()
    strict = ("ieee", "ieee") if isinstance(before[0], str) else (False, False)
    with backend_flags(Placement("cuda", "fp32", "graph")):
        assert flags() == (*strict, True)  # no TF32 in an fp32 row; cuDNN autotunes
    with backend_flags(Placement("cuda", "tf32")):
        assert flags()[:2] == (("tf32", "tf32") if isinstance(before[0], str) else (True, True))
        assert flags()[2] is False
    assert flags() == before
