"""Atomic output files: write to a temporary file beside the target, then rename.

An interrupted or failed run therefore never leaves a partial model or report behind, and an
existing file is replaced only by a complete new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from edgecnn.errors import BadInputError

SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_output_path(path: Path, inputs: Iterable[Path | str | None] = ()) -> Path:
    """Fail early, before any work, unless ``path`` is a new file or a regular file we may
    replace: never a directory, symlink, device node or anything under /proc, /sys or /dev, and
    never one of the run's ``inputs``."""
    path = Path(path)
    if str(path) == "-":
        raise BadInputError("-: edgecnn writes model files and reports, never to standard "
                            "output; give a file name")
    limit = os.pathconf(path.parent if path.parent.is_dir() else ".", "PC_NAME_MAX") \
        if hasattr(os, "pathconf") else 255
    if len(os.fsencode(path.name)) + len(".part") + 16 > limit:  # room for the temporary name
        raise BadInputError(f"{str(path)[:60]}...: the file name is {len(os.fsencode(path.name))} "
                            f"bytes, longer than this file system takes ({limit}); choose a "
                            "shorter -o name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadInputError(
            f"{path}: output directory {parent} does not exist; create it or choose another -o path"
        )
    real_parent = parent.resolve()
    if any(real_parent == tree or tree in real_parent.parents for tree in SYSTEM_TREES):
        raise BadInputError(f"{path}: is under {real_parent}, a system tree; write outputs to a "
                            "regular directory")
    if path.is_symlink():
        raise BadInputError(f"{path}: is a symbolic link; edgecnn does not replace links, give "
                            "the path of a regular file")
    if path.is_dir():
        raise BadInputError(f"{path}: is a directory; give a file name")
    if path.exists() and not path.is_file():
        raise BadInputError(f"{path}: is not a regular file (a device, pipe or socket); give the "
                            "path of a regular file")
    for given in inputs:
        if given is not None and _same_file(path, Path(given)):
            raise BadInputError(f"{path}: is also an input of this run; writing it would replace "
                                "the input: choose another output path")
    return path


def _same_file(output: Path, given: Path) -> bool:
    if output.exists() and given.exists():
        return os.path.samefile(output, given)
    return output.resolve() == given.resolve()


def _new_file_mode(path: Path) -> int:
    """The mode a plain open() would give: an existing file's own, else 0666 minus the umask."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``path`` on success."""
    path = check_output_path(Path(path))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _new_file_mode(path))  # mkstemp makes 0600
        check_output_path(path)  # nothing swapped in (a link, a device) while we worked
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
