"""The shipped model and data as package data: found through importlib.resources, named without
a path from any folder, never written beside. .ci/run also builds the wheel, installs it outside
the checkout and runs the README's main job there (scripts/check_dist.py)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from edgecnn.api import ConvertConfig, default_output
from edgecnn.cli import cli
from edgecnn.files.data import load_dataset
from edgecnn.files.shipped import (
    SHIPPED_CALIBRATION_SET,
    SHIPPED_ROOT,
    SHIPPED_TEST_SET,
    is_shipped,
    resolve_model,
    shipped_models,
)
from tests.conftest import ROOT


def test_shipped_files_are_the_package_data_of_edgecnn_models():
    root = Path(str(resources.files("edgecnn.models")))
    assert SHIPPED_ROOT.resolve() == root.resolve() == (ROOT / "models").resolve()
    assert set(shipped_models()) == {"lenet5", "mobile_se_outlier"}
    test = load_dataset(SHIPPED_TEST_SET, split="test")
    calib = np.load(SHIPPED_CALIBRATION_SET)
    assert (len(test), calib["x"].shape) == (10_000, (1000, 28, 28))


def test_a_short_name_resolves_to_the_shipped_model_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model("lenet5") == SHIPPED_ROOT / "lenet5.pt"
    assert resolve_model("lenet5.pt") == SHIPPED_ROOT / "lenet5.pt"
    assert resolve_model("nothing-here") == Path("nothing-here")  # the loader names it missing
    assert resolve_model("sub/lenet5") == Path("sub/lenet5")  # a path is never a short name


def test_a_file_in_the_working_folder_wins_over_the_short_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("lenet5").write_bytes(b"mine")
    assert resolve_model("lenet5") == Path("lenet5")


def test_default_output_of_a_shipped_model_is_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = SHIPPED_ROOT / "lenet5.pt"
    assert is_shipped(shipped) and not is_shipped(tmp_path / "lenet5.pt")
    assert default_output(shipped, ConvertConfig("onnx", int8=True)) == tmp_path / "lenet5_int8.onnx"
    mine = tmp_path / "m" / "lenet5.pt"
    assert default_output(mine, ConvertConfig("tflite")) == tmp_path / "m" / "lenet5.tflite"


def test_cli_names_the_shipped_model_without_a_path(cli_runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inspected = cli_runner.invoke(cli, ["inspect", "lenet5", "--json"])
    assert inspected.exit_code == 0, inspected.output
    assert json.loads(inspected.output)["parameters"] == 61_706
    converted = cli_runner.invoke(cli, ["convert", "lenet5", "--to", "onnx"])
    assert converted.exit_code == 0, converted.output
    assert (tmp_path / "lenet5.onnx").is_file()
    assert not (SHIPPED_ROOT / "lenet5.onnx").exists()


@pytest.mark.parametrize("argument", ["lenet6", "./lenet5"])
def test_a_name_that_is_not_shipped_is_one_line_naming_the_file(cli_runner, tmp_path, monkeypatch,
                                                                argument):
    monkeypatch.chdir(tmp_path)
    result = cli_runner.invoke(cli, ["inspect", argument])
    assert result.exit_code == 2
    assert "lenet6" in result.output or "lenet5" in result.output
    assert "Traceback" not in result.output


def test_zoo_names_the_trained_models_that_ship(cli_runner):
    result = cli_runner.invoke(cli, ["zoo", "--json"])
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["lenet5"]["shipped"] == "lenet5 (99.25 %)"
    assert rows["mobile-se"]["shipped"].startswith("mobile_se_outlier")
    assert rows["vgg19"]["shipped"] == ""
