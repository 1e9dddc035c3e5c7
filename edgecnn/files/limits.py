"""Memory bounds on what input files declare, checked before anything is allocated.

A few-MB file can declare gigabytes: a zip member that inflates 1000:1, an IDX or .npy header
promising 10^9 images, an ONNX input of 100000 x 100000 pixels, a ConstantOfShape of 30000^2.
Every such declaration is compared with the real payload where there is one, and with
:data:`MAX_ARRAY_BYTES` before the allocation it would cause, and refused in one line.
"""

from __future__ import annotations

import math
import os

from edgecnn.errors import BadInputError

# One array edgecnn allocates from a declaration: a data set, an input batch, a model tensor.
# 1 GiB holds 1.3 M MNIST images or 7,000 224x224x3 images; override with EDGECNN_MAX_ARRAY_BYTES.
MAX_ARRAY_BYTES = int(os.environ.get("EDGECNN_MAX_ARRAY_BYTES", 1 << 30))
# torch and numpy archives store arrays uncompressed; a member inflating beyond this is a bomb.
MAX_INFLATION = 100
SMALL_MEMBER_BYTES = 1 << 20  # small members may compress well (JSON, code)
# All members together: VGG19's archive holds 548 MB; a file inflating to more is not a CNN.
MAX_ARCHIVE_BYTES = 4 * MAX_ARRAY_BYTES


def human(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:,.0f} {unit}" if unit == "bytes" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:,.1f} TiB"


def check_allocation(what: str, shape: tuple[int, ...] | list[int], itemsize: int,
                     fix: str) -> int:
    """Refuse allocating ``shape`` x ``itemsize`` bytes beyond the budget; returns the bytes."""
    if any(int(d) < 0 for d in shape):
        raise BadInputError(f"{what}: has a negative dimension {list(shape)}; {fix}")
    nbytes = math.prod(int(d) for d in shape) * itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise BadInputError(f"{what}: {'x'.join(map(str, shape))} needs {human(nbytes)}, over "
                            f"edgecnn's {human(MAX_ARRAY_BYTES)} limit for one array; {fix}")
    return nbytes


def check_zip_members(path: object, infos: list) -> None:
    """Refuse zip members (``zipfile.ZipInfo``) that inflate like a bomb, or past the memory
    limit at any ratio: a member inflating 90:1 to 2 GiB passes a ratio test alone."""
    for info in infos:
        if info.file_size > SMALL_MEMBER_BYTES and (
                info.file_size > MAX_INFLATION * max(info.compress_size, 1)):
            raise BadInputError(
                f"{path}: archive member {info.filename} inflates {info.compress_size:,} bytes to "
                f"{human(info.file_size)}; refusing a likely zip bomb (torch and numpy archives "
                "store arrays uncompressed)")
        if info.file_size > MAX_ARRAY_BYTES:  # one member holds one array (a tensor storage)
            raise BadInputError(f"{path}: archive member {info.filename} inflates to "
                                f"{human(info.file_size)}, over edgecnn's "
                                f"{human(MAX_ARRAY_BYTES)} limit for one array; refusing to load "
                                "it (set EDGECNN_MAX_ARRAY_BYTES if the model is real)")
    total = sum(info.file_size for info in infos)
    if total > MAX_ARCHIVE_BYTES:
        raise BadInputError(f"{path}: archive inflates to {human(total)} in all, over edgecnn's "
                            f"{human(MAX_ARCHIVE_BYTES)} limit; refusing to load it")
