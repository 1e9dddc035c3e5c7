"""Labelled image data in: IDX (plain or .gz), .npz with ``x``/``y``, and image folders.

Images stay uint8 (N, H, W, C) until :meth:`InputSpec.preprocess` turns them into model input, so
every stage (training, calibration, validation, benchmarks) preprocesses them the same way.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import shutil
import struct
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import DataError
from edgecnn.files.card import InputSpec
from edgecnn.files.limits import check_allocation, check_zip_members
from edgecnn.files.outputs import atomic_path, check_output_path
from edgecnn.files.shipped import SHIPPED_CALIBRATION_SET, SHIPPED_DATA, SHIPPED_TEST_SET  # noqa: F401

IDX_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm"}
UNLABELLED = -1  # the label of an image that has none

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

    @property
    def labelled(self) -> bool:
        """False for images without labels (label -1): only agreement can be measured."""
        return bool(np.all(self.labels >= 0))

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
            yield self.preprocessed(spec, start, stop), self.labels[start:stop]

    def preprocessed(self, spec: InputSpec, start: int = 0, stop: int | None = None
                     ) -> np.ndarray:
        """Images ``start:stop`` as model input (float32 NCHW), by the card's preprocessing."""
        return spec.preprocess(self.images[start:stop])


class TensorDataset(Dataset):
    """Model inputs already preprocessed (float32 NCHW), as a PyTorch DataLoader yields them:
    the card's preprocessing is not applied again. Labels are -1 where none were given."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, c, h, w = self.images.shape
        return (c, h, w)

    def take(self, count: int | None) -> Dataset:
        if count is None or count >= len(self):
            return self
        return TensorDataset(self.images[:count], self.labels[:count], self.source)

    def preprocessed(self, spec: InputSpec, start: int = 0, stop: int | None = None
                     ) -> np.ndarray:
        return self.images[start:stop]

    @classmethod
    def from_batches(cls, batches: Any, source: str = "calibration batches",
                     limit: int = 100_000) -> TensorDataset:
        """Gather an iterable of arrays or tensors (N, C, H, W), or of (x, y) pairs as a
        DataLoader yields them, up to ``limit`` images."""
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        count = 0
        for item in batches:
            x, y = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
            x = _as_array(x, source)
            if x.ndim == 3:
                x = x[None]
            if x.ndim != 4 or (xs and x.shape[1:] != xs[0].shape[1:]):
                raise DataError(f"{source}: a batch of shape {list(x.shape)}; give float "
                                "(N, C, H, W) batches of one image size, preprocessed as the "
                                "model expects")
            check_allocation(source, (count + len(x), *x.shape[1:]), 4,
                             "give fewer calibration batches")
            xs.append(x.astype(np.float32, copy=False))
            ys.append(np.full(len(x), -1, np.int64) if y is None
                      else _as_array(y, source).astype(np.int64).reshape(-1))
            count += len(x)
            if count >= limit:
                break
        if not xs:
            raise DataError(f"{source}: yielded no images; give at least one batch")
        return cls(np.concatenate(xs)[:limit], np.concatenate(ys)[:limit], source)


def _as_array(value: Any, source: str) -> np.ndarray:
    """A numpy array from an array, a torch tensor (detached, on the CPU) or a nested list."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{source}: holds {array.dtype} values; give numeric arrays or tensors")
    return array


def require_regular_file(path: Path) -> None:
    """Refuse what ``open()`` would block on or misread: a FIFO never returns, a device never
    ends. Data files must be regular files (or links to them)."""
    if not path.is_file():
        kind = ("a FIFO" if path.is_fifo() else "a device" if path.is_char_device()
                or path.is_block_device() else "a socket" if path.is_socket() else
                "missing" if not path.exists() else "not a regular file")
        raise DataError(f"{path}: is {kind}; give a regular data file")


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed) into an array.

    The header is read first and its declared size checked against the memory budget; then
    exactly that many bytes are read, so a small .gz that inflates to gigabytes is refused after
    one byte too many, never held in memory.
    """
    require_regular_file(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            magic = handle.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES:
                raise DataError(
                    f"{path}: not an IDX file (magic number 0x{magic.hex() or 'empty'}, expected "
                    "0x0000080N); pass the MNIST -idx1/-idx3 files as served by the mirrors"
                )
            ndim = magic[3]
            header = handle.read(4 * ndim)
            if len(header) < 4 * ndim:
                raise DataError(f"{path}: IDX header is truncated; re-download the file")
            dims = struct.unpack(f">{ndim}I", header)
            dtype = np.dtype(IDX_DTYPES[magic[2]]).newbyteorder(">")
            expected = check_allocation(str(path), dims, dtype.itemsize,
                                        "split the data set or use fewer images")
            raw = handle.read(expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc}); re-download it") from None
    if len(raw) != expected:
        got = f"{len(raw)} bytes" if len(raw) < expected else "more bytes"
        raise DataError(
            f"{path}: IDX payload is {got} but the header {'x'.join(map(str, dims))} needs "
            f"{expected}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype).astype(dtype.newbyteorder("=")).reshape(dims)


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
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" and not (
            labels.dtype.kind == "f" and np.all(np.isfinite(labels))
            and np.all(labels == np.round(labels))):
        raise DataError(f"{source}: labels are {labels.dtype} with non-integer values; store "
                        "class indices 0..N-1")
    labels = labels.astype(np.int64).reshape(-1)
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


def _check_npz(path: Path) -> None:
    """Compare each .npy member's declared shape with its real size before numpy allocates."""
    try:
        with zipfile.ZipFile(path) as archive:
            check_zip_members(path, archive.infolist())
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                    header = member.tell()
                what = f"{path}: array {info.filename[:-4]!r}"
                nbytes = check_allocation(what, shape, dtype.itemsize,
                                          "store fewer images per file")
                if dtype.hasobject or header + nbytes != info.file_size:
                    raise DataError(f"{what} declares {'x'.join(map(str, shape))} {dtype} "
                                    f"({nbytes:,} bytes) but holds {info.file_size - header:,}; "
                                    "the file is corrupt: re-save it with np.savez")
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({str(exc)[:200]}); re-save it "
                        "with np.savez") from None


def load_npz(path: Path) -> Dataset:
    require_regular_file(path)
    _check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise DataError(
                    f"{path}: .npz has arrays {sorted(archive.files)} but needs 'x' (uint8 images) "
                    "and, for accuracy, 'y' (labels)"
                )
            x = archive["x"]
            labels = archive["y"] if "y" in archive.files else np.full(len(x), UNLABELLED)
            return _labelled(x, labels, str(path))
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # a member's CRC, for one
        raise DataError(f"{path}: not a readable .npz archive ({str(exc)[:200]}); re-save it "
                        "with np.savez") from None


def load_image_folder(root: Path) -> Dataset:
    """One subfolder per class, named by its label; classes sorted by name. Images lying in
    ``root`` itself, with no class folders, are unlabelled (label -1): enough for agreement
    with a reference model."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if classes and all(p.name.isdigit() for p in classes):  # 0..10 as numbers, not strings
        classes.sort(key=lambda p: int(p.name))
    files = [(i, f) for i, c in enumerate(classes) for f in sorted(c.iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not classes:
        files = [(UNLABELLED, f) for f in sorted(root.iterdir())
                 if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(
            f"{root}: image folder holds no images; expected one subfolder per class with "
            f"{'/'.join(sorted(IMAGE_SUFFIXES))} files"
        )
    images, labels = [], []
    for label, file in files:
        require_regular_file(file)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(file) as img:
                    width, height = img.size
                    check_allocation(f"{root}: {len(files)} images of {file.name}'s size",
                                     (len(files), height, width, 3), 1,
                                     "resize the images to the model's input size")
                    mode = "L" if img.mode in ("L", "1", "I;16", "P") else "RGB"
                    images.append(np.asarray(img.convert(mode)))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(f"{file}: image is too large to decode safely ({exc}); resize it to "
                            "the model's input size") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"{file}: not a readable image ({str(exc)[:200]})") from None
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
    """True for an IDX folder or file that holds only MNIST's test split (t10k-*)."""
    path = Path(path)
    if path.is_dir():
        return _idx_in_dir(path, "train") is None and _idx_in_dir(path, "test") is not None
    return path.name.lower().startswith("t10k-")


@functools.lru_cache(maxsize=1)
def _shipped_test_images() -> frozenset[bytes]:
    return frozenset(image.tobytes() for image in load_idx_pair(
        SHIPPED_TEST_SET / "t10k-images-idx3-ubyte.gz").images)


def test_images_in(data: Dataset) -> int:
    """How many of ``data``'s images are MNIST test images, recognised by content (any file
    name, any container): calibration must never see them."""
    if (data.image_shape != (1, 28, 28) or data.images.dtype != np.uint8
            or not SHIPPED_TEST_SET.exists()):
        return 0
    known = _shipped_test_images()
    return sum(image.tobytes() in known for image in data.images)


def download_mnist(dest: Path, mirrors: tuple[str, ...] = MNIST_MIRRORS,
                   timeout: float = 30.0) -> Path:
    """Fetch the four MNIST IDX files into ``dest``, checking each md5; skip files already there."""
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest}: is a file; give a directory to download MNIST into")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{dest}: cannot create the directory ({exc.strerror}); choose another") from None
    for name in MNIST_FILES:
        check_output_path(dest / name)
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


MAX_MNIST_FILE_BYTES = 64 << 20  # the largest MNIST file inflates to 47 MB


def _md5(path: Path) -> str:
    """md5 of the decompressed payload of a .gz file, read in chunks; "" for a file that is not
    gzip or inflates beyond any MNIST file (a bomb never fills memory)."""
    digest = hashlib.md5(usedforsecurity=False)
    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                total += len(chunk)
                if total > MAX_MNIST_FILE_BYTES:
                    return ""
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return ""
    return digest.hexdigest()
