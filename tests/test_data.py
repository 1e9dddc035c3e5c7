"""Data loading on real MNIST: IDX, .npz, image folders, the download path, and bad input."""

from __future__ import annotations

import functools
import gzip
import http.server
import threading

import numpy as np
import pytest

from edgecnn.cli import cli
from edgecnn.errors import DataError
from edgecnn.files.data import (
    SHIPPED_CALIBRATION_SET,
    download_mnist,
    is_test_split,
    load_dataset,
    read_idx,
)


def test_idx_reader_matches_an_independent_parse(shared_mnist):
    raw = gzip.decompress((shared_mnist / "t10k-images-idx3-ubyte.gz").read_bytes())
    independent = np.frombuffer(raw[16:], np.uint8).reshape(10000, 28, 28)
    np.testing.assert_array_equal(read_idx(shared_mnist / "t10k-images-idx3-ubyte.gz"), independent)
    train = load_dataset(shared_mnist, split="train")
    assert len(train) == 60000
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918,
                                                  6265, 5851, 5949]


def test_shipped_calibration_set_is_from_training_data(shared_mnist):
    calib = np.load(SHIPPED_CALIBRATION_SET)
    train = load_dataset(shared_mnist, split="train")
    np.testing.assert_array_equal(calib["x"], train.images[calib["train_index"], :, :, 0])
    assert len(calib["x"]) == 1000 and np.bincount(calib["y"]).tolist() == [100] * 10
    assert not is_test_split(SHIPPED_CALIBRATION_SET)


def test_image_folder_and_npz_round_trip(tmp_path, test_set):
    from PIL import Image
    for i in range(6):
        folder = tmp_path / "imgs" / str(test_set.labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test_set.images[i, :, :, 0]).save(folder / f"{i}.png")
    loaded = load_dataset(tmp_path / "imgs")
    assert loaded.images.shape == (6, 28, 28, 1)
    np.savez(tmp_path / "d.npz", x=test_set.images[:5, :, :, 0], y=test_set.labels[:5])
    np.testing.assert_array_equal(load_dataset(tmp_path / "d.npz").images, test_set.images[:5])


def test_download_from_a_loopback_mirror(tmp_path, shared_mnist):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shared_mnist))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        mirror = f"http://127.0.0.1:{server.server_address[1]}/"
        dest = download_mnist(tmp_path / "mnist", ("http://127.0.0.1:9/", mirror), timeout=5)
    finally:
        server.shutdown()
    assert len(load_dataset(dest, "train")) == 60000
    assert not list(dest.glob("*.part"))


def _bad_data(tmp_path):
    magic = tmp_path / "bad-images-idx3-ubyte"
    magic.write_bytes(b"\x12\x34\x08\x03" + b"\0" * 64)
    short = tmp_path / "short-images-idx3-ubyte"
    short.write_bytes(b"\0\0\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                      + b"\0" * 100)
    (tmp_path / "short-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + (10).to_bytes(4, "big")
                                                        + b"\0" * 10)
    npz = tmp_path / "nolabels.npz"
    np.savez(npz, images=np.zeros((2, 28, 28), np.uint8))
    empty = tmp_path / "empty"
    (empty / "0").mkdir(parents=True)
    return {"magic": (magic, "magic number"), "short": (short, "truncated"),
            "npz": (npz, "needs 'x'"), "empty": (empty, "holds no images")}


@pytest.mark.parametrize("case", ["magic", "short", "npz", "empty"])
def test_bad_datasets_fail_with_one_line(tmp_path, cli_runner, case, artefacts):
    path, needle = _bad_data(tmp_path)[case]
    with pytest.raises(DataError, match=needle):
        load_dataset(path)
    result = cli_runner.invoke(cli, ["validate", str(artefacts["onnx"]), "--data", str(path)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr


@pytest.mark.parametrize("layout", ["npz", "idx-folder", "image-folder"])
def test_a_fifo_given_as_data_is_refused_not_waited_on(tmp_path, layout):
    """open() on a FIFO blocks until a writer comes: validate must refuse it in one line. Run in
    a child with a timeout, so a regression fails instead of hanging the suite."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    if layout == "npz":
        data = tmp_path / "d.npz"
        os.mkfifo(data)
    elif layout == "idx-folder":
        data = tmp_path / "mnist"
        data.mkdir()
        os.mkfifo(data / "t10k-images-idx3-ubyte.gz")
    else:
        data = tmp_path / "images"
        (data / "0").mkdir(parents=True)
        os.mkfifo(data / "0" / "a.png")
    done = subprocess.run([sys.executable, "-m", "edgecnn", "validate",
                           str(ROOT / "models" / "lenet5.pt"), "--data", str(data)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().endswith("is a FIFO; give a regular data file")
