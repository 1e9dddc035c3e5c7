"""Shared fixtures: real MNIST from ../shared/data/mnist, the shipped model, converted artefacts.

Conversions are session-scoped so each artefact is built once per test run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecnn.data import SHIPPED_TEST_SET, load_dataset

ROOT = Path(__file__).resolve().parent.parent
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
LENET = ROOT / "models" / "lenet5.pt"


@pytest.fixture(scope="session")
def shared_mnist() -> Path:
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"full MNIST not found at {SHARED_MNIST} (the shared data folder)")
    return SHARED_MNIST


@pytest.fixture(scope="session")
def test_set():
    return load_dataset(SHIPPED_TEST_SET)


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory) -> dict[str, Path]:
    """LeNet-5 converted to every format once: onnx, onnx int8, tflite, tflite int8."""
    from edgecnn.api import ConvertConfig, convert

    out = tmp_path_factory.mktemp("artefacts")
    specs = {"onnx": ConvertConfig("onnx"), "onnx_int8": ConvertConfig("onnx", int8=True),
             "tflite": ConvertConfig("tflite"),
             "tflite_int8": ConvertConfig("tflite", int8=True)}
    suffix = {"onnx": ".onnx", "tflite": ".tflite"}
    paths = {}
    for name, config in specs.items():
        paths[name] = convert(LENET, out / f"lenet5_{name}{suffix[config.to]}", config).path
    return paths


@pytest.fixture
def cli_runner() -> CliRunner:
    return CliRunner()


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
