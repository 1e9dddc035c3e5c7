"""PyTorch -> ONNX through torch.onnx, checked against PyTorch before anything is written.

torch.export archives and plain modules go through the torch.export-based exporter; TorchScript
archives through the TorchScript exporter, the only one that accepts them. The result is cleaned
(BatchNorm folded, Dropout/Identity gone), carries the model card in ``metadata_props``, passes
``onnx.checker``, and must reproduce PyTorch's logits before it is returned.
"""

from __future__ import annotations

import gc
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch

from edgecnn.converters import onnx_passes
from edgecnn.converters.torch_decompositions import with_exact_decompositions
from edgecnn.errors import ConversionError
from edgecnn.files import metadata
from edgecnn.files.card import ModelCard
from edgecnn.files.torch_files import FORMAT_TORCHSCRIPT, TorchModel, output_names
from edgecnn.memory import release_memory
from edgecnn.quiet import onnxruntime_log_severity, quiet

DEFAULT_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
CARD_METADATA_KEY = metadata.ONNX_CARD
SELF_CHECK_RTOL = 1e-4


@dataclass(frozen=True)
class OnnxExport:
    model: onnx.ModelProto
    max_abs_diff: float  # vs PyTorch on the self-check batch
    passes: dict[str, int]


def export_onnx(source: TorchModel, opset: int = DEFAULT_OPSET,
                check_inputs: np.ndarray | None = None, release: bool = False) -> OnnxExport:
    """Export ``source`` to an in-memory ONNX model with a dynamic batch axis.

    The model passes through a temporary file with external data, so checking it and running it
    in onnxruntime never holds a second serialised copy of the weights (VGG19: 575 MB each).
    ``release`` frees the PyTorch model once it is checked, before the weights are read back.
    """
    _check_finite_weights(source)
    example = torch.zeros((source.static_batch or 2, *source.card.input.shape))
    with tempfile.TemporaryDirectory(prefix="edgecnn-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        with quiet("torch", "onnxscript", stdout=True):
            try:
                if source.format == FORMAT_TORCHSCRIPT:
                    model = _export_torchscript(source, example, opset)
                else:
                    model = _export_dynamo(source, example, opset, path)
            except ConversionError:
                raise
            except Exception as exc:  # the exporters raise many exception types
                raise ConversionError(f"{source.path}: torch.onnx cannot export this model: "
                                      f"{_export_failure(exc)}") from None
        passes = onnx_passes.clean(model)
        onnx_passes.name_batch_dimension(model)
        attach_card(model, source.card)
        save_external(model, path)  # moves the weights out of the proto into model.onnx.data
        release_memory()  # their freed copies, before onnxruntime loads them for the check
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ConversionError(f"{source.path}: exported ONNX fails onnx.checker: "
                                  f"{str(exc).splitlines()[0]}") from None
        diff = self_check(source, path, check_inputs)
        if release:
            source.release()
            release_memory()
        onnx.load_external_data_for_model(model, tmp)
    return OnnxExport(model, diff, passes)


def save_external(model: onnx.ModelProto, path: Path) -> None:
    """Save with the weights in one side file; the proto keeps only references afterwards."""
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)


def _export_dynamo(source: TorchModel, example: torch.Tensor, opset: int,
                   path: Path) -> onnx.ModelProto:
    program = source.exported
    if program is None:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        module = cast(torch.nn.Module, source.nn_module or source.module)
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    program = with_exact_decompositions(program)
    with torch.inference_mode():
        names = output_names(program.module()(example), OUTPUT_NAME)
    onnx_program = torch.onnx.export(program, (example,), None, dynamo=True, opset_version=opset,
                                     input_names=[INPUT_NAME], output_names=names,
                                     optimize=True, verbose=False)
    assert onnx_program is not None  # returned whenever f is None
    onnx_program.save(path, external_data=True)  # streams tensors: no in-memory proto copy
    del onnx_program, program
    _drop_rewriter_references()
    return onnx.load(str(path))


def _drop_rewriter_references() -> None:
    """Let the exported graph, and with it every weight, be freed.

    onnxscript's pattern matchers (0.7) keep the last graph, node and match they saw; the
    rules are module-level, so VGG19's 575 MB of weights would stay alive after export.
    """
    try:
        from onnxscript.rewriter import _matcher
    except ImportError:
        return
    for obj in gc.get_objects():
        # type(), not isinstance(): some objects (numpy's NpzFile attribute bag) raise on
        # __class__ lookups
        if issubclass(type(obj), _matcher.PatternMatcher):
            reset = getattr(obj, "_init_match", None)  # the matcher's own per-match reset
            if callable(reset):
                reset(0)
            for name in ("_graph", "_tracer"):  # set again by the next match
                if hasattr(obj, name):
                    setattr(obj, name, None)


def _export_torchscript(source: TorchModel, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with torch.inference_mode():
        names = output_names(source.module(example), OUTPUT_NAME)
    torch.onnx.export(cast(Any, source.module), (example,), cast(Any, buffer), dynamo=False, opset_version=opset,
                      input_names=[INPUT_NAME], output_names=names,
                      dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}},
                      do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def _check_finite_weights(source: TorchModel) -> None:
    if source.exported is not None:
        tensors = dict(source.exported.state_dict)
    elif isinstance(source.module, torch.nn.Module):
        tensors = dict(source.module.state_dict())
    else:
        return
    bad = [name for name, t in tensors.items()
           if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ConversionError(f"{source.path}: weights hold NaN or Inf in {', '.join(bad[:5])}; "
                              "retrain or repair the checkpoint")


def _export_failure(exc: BaseException) -> str:
    """The most telling line of an exporter error: the one naming an op or module if any."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for key in ("aten::", "aten.", "torch.ops", "Unsupported", "unsupported", "No decomposition"):
        for line in lines:
            if key in line:
                return line[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


def attach_card(model: onnx.ModelProto, card: ModelCard) -> None:
    """Record ``card`` (and its labels and preprocessing) as ONNX metadata."""
    entries = {CARD_METADATA_KEY: card.to_json(),
               metadata.ONNX_LABELS: json.dumps(list(card.labels)),
               metadata.ONNX_PREPROCESSING: json.dumps(card.input.to_dict())}
    if card.sha256:
        entries["edgecnn.source_sha256"] = card.sha256
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.doc_string = "edgecnn", f"{card.architecture} exported by edgecnn"


def card_from_onnx(model: onnx.ModelProto, source: str) -> ModelCard | None:
    for prop in model.metadata_props:
        if prop.key == CARD_METADATA_KEY:
            return ModelCard.from_json(prop.value, source)
    return None


def self_check(source: TorchModel, path: Path, inputs: np.ndarray | None) -> float:
    """Run the exported file in onnxruntime and compare with PyTorch; raise if they disagree."""
    import onnxruntime as ort

    if inputs is None:
        rng = np.random.default_rng(0)
        inputs = rng.random((source.static_batch or 4, *source.card.input.shape),
                            dtype=np.float32)
    options = ort.SessionOptions()  # one run: packed weight copies and an arena would only
    options.add_session_config_entry("session.disable_prepacking", "1")  # raise the peak
    options.enable_cpu_mem_arena = False
    options.log_severity_level = onnxruntime_log_severity()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: inputs})
    del session
    want = source.outputs(inputs)
    if len(got) != len(want):
        raise ConversionError(f"{source.path}: the exported ONNX has {len(got)} outputs, the "
                              f"model {len(want)}; please report this model")
    diff = 0.0
    for g, w in zip(got, want, strict=True):  # each output against its own magnitude
        d = float(np.max(np.abs(g - w))) if g.size else 0.0
        scale = float(np.max(np.abs(w))) if w.size else 0.0
        if not d <= SELF_CHECK_RTOL * max(scale, 1.0):
            raise ConversionError(f"{source.path}: exported ONNX disagrees with PyTorch "
                                  f"(max |Δ| {d:.3g}); please report this model")
        diff = max(diff, d)
    return diff
