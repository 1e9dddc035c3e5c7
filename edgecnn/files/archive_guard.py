"""torch.export archives are untrusted input: nothing in one is unpickled with a full unpickler.

torch 2.13's ``torch.export.load`` falls back to ``torch.load(weights_only=False)`` when the sample
inputs do not load safely, and unpickles weights and constants whose config says ``use_pickle``
(and custom or opaque objects) with full unpicklers. Any of those runs code from the file. So,
unless the user opts in with ``--trust-pickle``:

1. the archive's payload configs are read first (plain JSON) and an archive that asks for a full
   unpickler anywhere is refused, naming the member;
2. while torch reads the archive, ``torch.load`` is held to ``weights_only=True`` and the other
   unpicklers torch uses for archives refuse, so a member that slipped past (the sample inputs)
   cannot run code either.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from edgecnn.errors import ModelLoadError

MAX_CONFIG_BYTES = 16 << 20  # payload configs are small JSON; a bigger one is not a real archive
FULL_UNPICKLER_PREFIXES = ("custom_obj", "opaque_obj")  # constants torch unpickles in full


class UnsafeArchiveError(ModelLoadError):
    """An archive member that only a full (code-running) unpickler can read."""


def _refusal(path: Path, what: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"{path}: {what} needs a full unpickler, which runs code from the file; re-run with "
        "trust_pickle=True only if you trust its source", parameters=("trust_pickle",))


def check_export_archive(path: Path, members: list[str]) -> None:
    """Refuse an archive whose payload configs ask for pickled weights or constants."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename
            if not (name.endswith("weights_config.json") or name.endswith("constants_config.json")):
                continue
            if info.file_size > MAX_CONFIG_BYTES:
                raise ModelLoadError(f"{path}: archive member {name} declares {info.file_size:,} "
                                     "bytes; not a torch.export payload config")
            try:
                config = json.loads(archive.read(name))
            except (ValueError, zipfile.BadZipFile, OSError, EOFError):
                raise ModelLoadError(f"{path}: archive member {name} is corrupt or not JSON; "
                                     "re-save the model with torch.export.save") from None
            for entry, meta in _payload_entries(config):
                if meta.get("use_pickle") or str(meta.get("path_name", "")).startswith(
                        FULL_UNPICKLER_PREFIXES):
                    raise _refusal(path, f"archive member {name} ({entry})")


def _payload_entries(config: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        return
    for name, meta in entries.items():
        if isinstance(meta, dict):
            yield str(name), meta


@contextlib.contextmanager
def weights_only_unpickling(path: Path) -> Iterator[None]:
    """Within the block, every unpickling torch does for an archive is weights-only or refused."""
    from torch.export.pt2_archive import _package

    original_load = torch.load

    def safe_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return original_load(f, *args, **kwargs)
        except pickle.UnpicklingError:
            raise _refusal(path, "a pickled archive member (sample inputs, weights or "
                           "constants)") from None

    def refuse(*_: Any, **__: Any) -> Any:
        raise _refusal(path, "a custom or opaque object in the archive")

    class RefusingPickle:
        loads = staticmethod(refuse)
        load = staticmethod(refuse)

    patches = [(torch, "load", safe_load), (torch._C, "_pickle_load_obj", refuse),
               (_package, "pickle", RefusingPickle)]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
