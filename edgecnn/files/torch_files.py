"""Load PyTorch model files safely: torch.export archives, TorchScript, and state_dict checkpoints.

Nothing is unpickled with ``weights_only=False`` unless the caller opts in with ``trust_pickle``:
a pickled ``nn.Module`` runs code from the file when loaded.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecnn import zoo
from edgecnn.errors import BadInputError, ConversionError, ModelLoadError
from edgecnn.files.card import (
    CARD_ARCHIVE_NAME,
    InputSpec,
    ModelCard,
    card_from_shapes,
    read_sidecar,
)
from edgecnn.quiet import quiet

FORMAT_EXPORTED = "torch.export"
FORMAT_TORCHSCRIPT = "torchscript"
FORMAT_STATE_DICT = "state_dict"
FORMAT_PICKLED = "pickled-module"


@dataclass
class TorchModel:
    """A loaded PyTorch model with its card; call it on float32 NCHW numpy batches."""

    path: Path
    format: str
    module: Callable[[torch.Tensor], torch.Tensor]
    card: ModelCard
    exported: torch.export.ExportedProgram | None = None
    nn_module: torch.nn.Module | None = None
    static_batch: int | None = None  # a program exported at a fixed batch (often 1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The first output (the logits of a classifier)."""
        return self.outputs(x)[0]

    def outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output, in the order of the model's (possibly nested) return value; a program
        exported at a fixed batch runs in chunks of it."""
        step = self.static_batch or len(x)
        with torch.inference_mode():
            chunks = [output_leaves(self.module(torch.from_numpy(np.ascontiguousarray(
                x[i:i + step])))) for i in range(0, len(x), step)]
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]

    @property
    def parameter_count(self) -> int:
        return self.card.parameters

    def release(self) -> None:
        """Drop the module and its weights (a converter done with PyTorch frees them before it
        loads the exported weights); the model cannot run afterwards."""
        def spent(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError(f"{self.path}: the PyTorch model was released")

        self.module, self.exported, self.nn_module = spent, None, None


def output_leaves(result: Any) -> list[np.ndarray]:
    """A model's return value (a tensor, tuple, list or dict of them) as a flat list."""
    from torch.utils import _pytree

    return [leaf.detach().numpy() for leaf in _pytree.tree_leaves(result)
            if isinstance(leaf, torch.Tensor)]


def output_names(result: Any, default: str) -> list[str]:
    """Names for a model's outputs: dict keys and positions (``boxes``, ``0``), or ``default``
    for a single tensor, so a detector's outputs keep their meaning through ONNX and TFLite."""
    from torch.utils import _pytree

    paths = [path for path, leaf in _pytree.tree_flatten_with_path(result)[0]
             if isinstance(leaf, torch.Tensor)]
    if len(paths) == 1 and not paths[0]:
        return [default]
    names = ["_".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) or default
             for path in paths]
    return names if len(set(names)) == len(names) else [f"{default}_{i}" for i in range(len(paths))]


def default_card(arch: str) -> ModelCard:
    """The card of a zoo architecture when a checkpoint carries none."""
    entry = zoo.ARCHITECTURES.get(arch)
    labels = zoo.MNIST_LABELS if entry.num_classes == 10 else tuple(
        str(i) for i in range(entry.num_classes))
    return ModelCard(arch, entry.parameter_count(), InputSpec(entry.input_shape), labels,
                     dataset=entry.dataset)


def _zip_members(path: Path) -> list[str]:
    from edgecnn.files.limits import check_zip_members

    try:
        with zipfile.ZipFile(path) as archive:
            check_zip_members(path, archive.infolist())
            return archive.namelist()
    except zipfile.BadZipFile:
        raise ModelLoadError(
            f"{path}: not a PyTorch model archive (truncated or not a zip file); save it with "
            "torch.export.save, torch.jit.save or torch.save(state_dict)"
        ) from None


def load_torch_model(path: str | Path, *, trust_pickle: bool = False,
                     arch: str | None = None) -> TorchModel:
    """Load a .pt/.pt2 file of any supported kind, detected from the archive's contents."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    members = _zip_members(path)
    if any(m.endswith("/archive_format") or m.endswith("models/model.json") for m in members):
        return _load_exported(path, members, trust_pickle)
    if any("/code/" in m for m in members) and any(m.endswith("constants.pkl") for m in members):
        return _load_torchscript(path)
    return _load_checkpoint(path, trust_pickle=trust_pickle, arch=arch)


def torch_model_from_module(module: Any, example_inputs: Any,
                            card: ModelCard | None = None) -> TorchModel:
    """A ``torch.nn.Module`` in memory, exported with ``torch.export`` (batch free, as edgecnn's
    own exports) from ``example_inputs``: a tensor or a tuple holding one (N, C, H, W) tensor.
    Without a ``card`` the input is taken as pixels / 255, one label per output class."""
    if not isinstance(module, torch.nn.Module):
        raise BadInputError(f"cannot convert a {type(module).__name__}; give a model file, a "
                            "shipped model's name or a torch.nn.Module")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if (not isinstance(example_inputs, (tuple, list)) or len(example_inputs) != 1
            or not isinstance(example_inputs[0], torch.Tensor) or example_inputs[0].ndim != 4):
        raise BadInputError("example_inputs: give one (N, C, H, W) float tensor (or a tuple "
                            "holding it) for torch.export to trace the module with")
    example = example_inputs[0].detach().to(torch.float32)
    name = Path(f"{type(module).__name__}.pt2")
    module = module.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        with quiet("torch"):
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
            static_batch = None
    except Exception as exc:  # a module that fixes its batch (a view with the batch in it)
        try:
            with quiet("torch"):
                program = torch.export.export(module, (example,))
            static_batch = int(example.shape[0])
            warnings.warn(f"{name.stem}: torch.export cannot leave the batch free "
                          f"({_first_line(exc)[:120]}); the files take batches of exactly "
                          f"{static_batch} (trace with another example batch, or write "
                          "x.flatten(1) for x.view(batch, -1))", stacklevel=3)
        except Exception as exc:  # torch.export raises many types
            raise ConversionError(f"{name.stem}: torch.export cannot trace this module "
                                  f"({_first_line(exc)})") from None
    input_shape, output_shape = _program_io_shapes(program)
    input_shape = [static_batch or "batch", *example.shape[1:]]
    if card is None:
        card = _card_from_shapes(name, [int(d) if isinstance(d, int) else d
                                        for d in input_shape], output_shape, "the module")
        card = replace(card, parameters=sum(p.numel() for p in module.parameters()))
    return TorchModel(name, FORMAT_EXPORTED, program.module(), card, exported=program,
                      nn_module=module, static_batch=static_batch)


def _card_or_default(path: Path, embedded: str | None, arch: str | None) -> ModelCard:
    card = read_sidecar(path)
    if card is None and embedded:
        card = ModelCard.from_json(embedded, f"{path}:{CARD_ARCHIVE_NAME}")
    if card is None:
        if arch is None:
            raise ModelLoadError(
                f"{path}: carries no model card and names no architecture; put a card beside it "
                f"({path.with_suffix('.json').name}) or pass `arch`", parameters=("arch",)
            )
        card = default_card(arch)
    return card


def _load_exported(path: Path, members: list[str], trust_pickle: bool) -> TorchModel:
    from edgecnn.files.archive_guard import check_export_archive, weights_only_unpickling

    if trust_pickle:
        warnings.warn(f"{path}: --trust-pickle lets torch.export.load unpickle archive members in "
                      "full, which runs code from the file", stacklevel=3)
        guard: Any = contextlib.nullcontext()
    else:
        check_export_archive(path, members)
        guard = weights_only_unpickling(path)
    extra = {CARD_ARCHIVE_NAME: ""}
    try:
        with quiet("torch"), guard, open(path, "rb") as handle:  # a handle: no suffix check
            program = torch.export.load(handle, extra_files=extra)
    except ModelLoadError:
        raise
    except Exception as exc:  # torch raises many types for corrupt archives
        raise ModelLoadError(f"{path}: cannot load torch.export archive ({_first_line(exc)})") from None
    input_shape, output_shape = _program_io_shapes(program)
    embedded = extra.get(CARD_ARCHIVE_NAME)
    if read_sidecar(path) is None and not embedded:  # a user's own export: no card needed
        card = _card_from_shapes(path, input_shape, output_shape)
        card = replace(card, parameters=sum(p.numel() for p in program.parameters()))
    else:
        card = _card_or_default(path, embedded, None)
    batch = input_shape[0] if input_shape and isinstance(input_shape[0], int) else None
    return TorchModel(path, FORMAT_EXPORTED, program.module(), card, exported=program,
                      static_batch=batch)


def _program_io_shapes(program: torch.export.ExportedProgram) -> tuple[list[Any], list[Any]]:
    """Shapes of the first user input and output, ints where static (symbols stay as is)."""
    signature = program.graph_signature
    vals = {n.name: n.meta.get("val") for n in program.graph.nodes}
    inputs = [vals.get(name) for name in signature.user_inputs]
    outputs = [vals.get(name) for name in signature.user_outputs]

    def shape(value: Any) -> list[Any]:
        if value is None or not hasattr(value, "shape"):
            return []
        return [int(d) if isinstance(d, int) or str(d).isdigit() else str(d) for d in value.shape]

    return (shape(inputs[0]) if inputs else []), (shape(outputs[0]) if outputs else [])


def _card_from_shapes(path: Path, input_shape: list[Any], output_shape: list[Any],
                      derived_from: str = "the export") -> ModelCard:
    """The card of a card-less export: its own input shape, one label per output class, and
    x = pixels / 255 (say otherwise with a card beside the file)."""
    if len(input_shape) != 4 or not all(isinstance(d, int) for d in input_shape[1:]):
        raise ModelLoadError(f"{path}: carries no model card and its input is {input_shape}; "
                             "edgecnn needs an (N, C, H, W) image input of fixed C, H, W: "
                             f"export it so, or put a card beside it ({path.with_suffix('.json').name})")
    try:
        return card_from_shapes(path.stem, tuple(input_shape[1:]), output_shape,
                                derived_from=derived_from)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: input shape {input_shape}: {exc}") from None


def _load_torchscript(path: Path) -> TorchModel:
    extra = {CARD_ARCHIVE_NAME: ""}
    try:
        with quiet("torch"):
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load TorchScript archive ({_first_line(exc)})") from None
    card = _card_or_default(path, extra.get(CARD_ARCHIVE_NAME) or None, None)
    return TorchModel(path, FORMAT_TORCHSCRIPT, module.eval(), card)


def _load_checkpoint(path: Path, *, trust_pickle: bool, arch: str | None) -> TorchModel:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise ModelLoadError(
                f"{path}: holds a pickled Python object, which runs code when loaded; re-run with "
                "trust_pickle=True only if you trust its source, or save a state_dict or "
                "torch.export archive instead", parameters=("trust_pickle",)
            ) from None
        return _load_pickled(path, arch)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read checkpoint ({_first_line(exc)})") from None
    state, named_arch = _split_checkpoint(obj, path)
    arch = arch or named_arch
    if arch is None:
        raise ModelLoadError(f"{path}: state_dict names no architecture; pass `arch` "
                             f"({', '.join(zoo.ARCHITECTURES)})", parameters=("arch",))
    module = _build_arch(arch, path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ModelLoadError(
            f"{path}: state_dict does not fit architecture {arch!r} ({detail[:300]})"
        ) from None
    card = _card_or_default(path, None, arch)
    return TorchModel(path, FORMAT_STATE_DICT, module.eval(), card, nn_module=module.eval())


def _split_checkpoint(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        arch = obj.get("arch") or obj.get("architecture")
        if arch is not None and not isinstance(arch, str):
            raise ModelLoadError(f"{path}: checkpoint 'arch' is a {type(arch).__name__}, not a "
                                 f"name; save {{'arch': NAME, 'state_dict': ...}} with one of "
                                 f"{', '.join(zoo.ARCHITECTURES)}")
        return obj["state_dict"], arch
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    raise ModelLoadError(
        f"{path}: checkpoint is a {type(obj).__name__}, not a state_dict; save "
        "{'arch': NAME, 'state_dict': model.state_dict()}"
    )


def _build_arch(arch: str, path: Path) -> torch.nn.Module:
    try:
        return zoo.build(arch)
    except KeyError:
        raise ModelLoadError(f"{path}: unknown architecture {arch!r}; known: "
                             f"{', '.join(zoo.ARCHITECTURES)}") from None


def _load_pickled(path: Path, arch: str | None) -> TorchModel:
    warnings.warn(f"{path}: unpickling a full module (--trust-pickle): this runs code from the file",
                  stacklevel=3)
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot unpickle module ({_first_line(exc)})") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{path}: unpickled a {type(module).__name__}, not an nn.Module")
    name = arch or next((n for n, a in zoo.ARCHITECTURES.items()
                         if isinstance(module, a.build)), None)  # type: ignore[arg-type]
    card = _card_or_default(path, None, name)
    return TorchModel(path, FORMAT_PICKLED, module.eval(), card, nn_module=module.eval())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
