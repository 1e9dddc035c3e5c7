"""Labelled image data in: IDX (plain or .gz), .npz with ``x``/``y``, and image folders.

Images stay uint8 (N, H, W, C) until :meth:`InputSpec.preprocess` turns them into model input, so
every stage (training, calibration, validation, benchmarks) preprocesses them the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.card import InputSpec
from edgecnn.errors import DataError
from edgecnn.fileio import atomic_path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DATA = PACKAGE_ROOT / "models" / "data"
SHIPPED_TEST_SET = SHIPPED_DATA / "mnist"  # the 10,000 MNIST test images, IDX .gz
SHIPPED_CALIBRATION_SET = SHIPPED_DATA / "mnist-calib.npz"  # 1,000 training images

IDX_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm"}

# name -> md5 of the decompressed IDX payload: mirrors recompress the .gz files, the payload is fixed
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
SPLIT_PREFIX = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class Dataset:
    """uint8 images (N, H, W, C) with int64 labels, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """C, H, W of one image."""
        _, h, w, c = self.images.shape
        return (c, h, w)

    def take(self, count: int | None) -> Dataset:
        if count is None or count >= len(self):
            return self
        return Dataset(self.images[:count], self.labels[:count], self.source)

    def check_fits(self, spec: InputSpec) -> None:
        """Refuse data whose image shape differs from what the model takes."""
        if len(self) == 0:
            raise DataError(f"{self.source}: holds no images; point at a non-empty dataset")
        if self.image_shape != tuple(spec.shape):
            got = "x".join(map(str, self.image_shape))
            want = "x".join(map(str, spec.shape))
            raise DataError(
                f"{self.source}: images are {got} (C x H x W) but the model expects {want}; "
                "use data of the model's input size and channel count"
            )

    def batches(self, spec: InputSpec, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Preprocessed (x, y) batches in dataset order."""
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield spec.preprocess(self.images[start:stop]), self.labels[start:stop]


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed) into an array."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc}); re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        magic = raw[:4].hex() or "empty"
        raise DataError(
            f"{path}: not an IDX file (magic number 0x{magic}, expected 0x0000080N); "
            "pass the MNIST -idx1/-idx3 files as served by the mirrors"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header is truncated; re-download the file")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX payload is {len(raw) - header} bytes but the header "
            f"{'x'.join(map(str, dims))} needs {expected}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def _as_nhwc(images: np.ndarray, source: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(f"{source}: images have shape {images.shape}; expected (N, H, W[, C])")
    if images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # NCHW given: store NHWC
    if images.dtype != np.uint8:
        raise DataError(f"{source}: images are {images.dtype}; store raw uint8 pixels")
    return np.ascontiguousarray(images)


def _labelled(images: np.ndarray, labels: np.ndarray, source: str) -> Dataset:
    images = _as_nhwc(images, source)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != len(images):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{source}: holds no images; point at a non-empty dataset")
    return Dataset(images, labels, source)


def load_idx_pair(images_path: Path) -> Dataset:
    """An IDX image file and the label file beside it (``-images-idx3`` -> ``-labels-idx1``)."""
    images = read_idx(images_path)
    labels_path = images_path.with_name(images_path.name.replace("images-idx3", "labels-idx1"))
    if labels_path == images_path or not labels_path.exists():
        raise DataError(f"{images_path}: no label file {labels_path.name} beside it")
    return _labelled(images, read_idx(labels_path), str(images_path))


def load_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: .npz has arrays {sorted(archive.files)} but needs 'x' (uint8 images) "
                    "and 'y' (labels)"
                )
            return _labelled(archive["x"], archive["y"], str(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None


def load_image_folder(root: Path) -> Dataset:
    """One subfolder per class, named by its label; classes sorted by name."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p for p in root.iterdir() if p.is_dir())
    files = [(i, f) for i, c in enumerate(classes) for f in sorted(c.iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(
            f"{root}: image folder holds no images; expected one subfolder per class with "
            f"{'/'.join(sorted(IMAGE_SUFFIXES))} files"
        )
    images, labels = [], []
    for label, file in files:
        try:
            with Image.open(file) as img:
                mode = "L" if img.mode in ("L", "1", "I;16", "P") else "RGB"
                images.append(np.asarray(img.convert(mode)))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{file}: not a readable image ({exc})") from None
        if images[-1].shape != images[0].shape:
            raise DataError(f"{file}: is {images[-1].shape}, other images are {images[0].shape}")
        labels.append(label)
    return _labelled(np.stack(images), np.asarray(labels), str(root))


def _idx_in_dir(root: Path, split: str) -> Path | None:
    prefix = SPLIT_PREFIX[split]
    for name in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte",
                 f"{prefix}-images.idx3-ubyte"):
        if (root / name).exists():
            return root / name
    return None


def load_dataset(path: str | Path, split: str = "test") -> Dataset:
    """Load labelled images from a file or folder; ``split`` picks train/t10k in an IDX folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        idx = _idx_in_dir(path, split)
        if idx is not None:
            return load_idx_pair(idx)
        return load_image_folder(path)
    if path.suffix == ".npz":
        return load_npz(path)
    if "idx" in path.name:
        return load_idx_pair(path)
    raise DataError(
        f"{path}: unknown data format; use IDX files, an .npz with x/y, or an image folder"
    )


def is_test_split(path: str | Path) -> bool:
    """True for paths that name a test set, which must never be used for calibration."""
    path = Path(path)
    if path.is_dir() and _idx_in_dir(path, "train") is None and _idx_in_dir(path, "test"):
        return True
    name = path.name.lower()
    return "t10k" in name or "test" in name


def download_mnist(dest: Path, mirrors: tuple[str, ...] = MNIST_MIRRORS,
                   timeout: float = 30.0) -> Path:
    """Fetch the four MNIST IDX files into ``dest``, checking each md5; skip files already there."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in MNIST_FILES.items():
        target = dest / name
        if target.exists() and _md5(target) == md5:
            continue
        errors = []
        for mirror in mirrors:
            try:
                _fetch(mirror.rstrip("/") + "/" + name, target, md5, timeout)
                break
            except (OSError, urllib.error.URLError, ValueError) as exc:
                errors.append(f"{mirror}: {exc}")
        else:
            raise DataError(f"cannot download {name} ({'; '.join(errors)}); "
                            "pass --data with a local copy of MNIST")
    return dest


def _fetch(url: str, target: Path, md5: str, timeout: float) -> None:
    with atomic_path(target) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        if _md5(tmp) != md5:
            raise ValueError(f"md5 mismatch for {url}")


def _md5(path: Path) -> str:
    """md5 of the decompressed payload of a .gz file."""
    try:
        with gzip.open(path, "rb") as handle:
            payload = handle.read()
    except (OSError, EOFError):
        return ""
    return hashlib.md5(payload, usedforsecurity=False).hexdigest()
