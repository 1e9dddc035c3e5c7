"""The model card: everything needed to feed a model and read its output, kept beside the weights.

The same :class:`InputSpec` drives preprocessing in training, calibration, validation and
benchmarks, so a model is never fed differently in two places.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import ModelLoadError

CARD_SUFFIX = ".json"
CARD_ARCHIVE_NAME = "edgecnn_card.json"  # name of the card inside .pt/.pt2 archives
MAX_DIM = 16384  # per input dimension: larger is no edge CNN input, and a likely typo or attack


@dataclass(frozen=True)
class InputSpec:
    """Shape and preprocessing of a model input: ``x = (pixels * pixel_scale - mean) / std``."""

    shape: tuple[int, int, int]  # C, H, W (the batch dimension is dynamic)
    layout: str = "NCHW"
    dtype: str = "float32"
    pixel_scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        """The card schema, checked once: a card is input like any other file."""
        shape = self.shape
        if (not isinstance(shape, tuple) or len(shape) != 3
                or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
                or not all(1 <= d <= MAX_DIM for d in shape)):
            raise ValueError(f"input shape {list(shape) if isinstance(shape, tuple) else shape!r}"
                             f" must be three whole numbers C, H, W in 1..{MAX_DIM}")
        if self.layout not in ("NCHW", "NHWC") or self.dtype != "float32":
            raise ValueError(f"input layout {self.layout!r} / dtype {self.dtype!r}: edgecnn "
                             "cards describe float32 NCHW or NHWC inputs")
        numbers = (self.pixel_scale, *self.mean, *self.std)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
            raise ValueError("pixel_scale, mean and std must be finite numbers")
        if self.pixel_scale <= 0 or any(v <= 0 for v in self.std):
            raise ValueError("pixel_scale and std must be > 0")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, shape[0]):
                raise ValueError(f"{name} has {len(values)} values for {shape[0]} channels")

    @property
    def channels(self) -> int:
        return self.shape[0]

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W) or (N, H, W, C) to float32 NCHW tensors."""
        x = images.astype(np.float32) * np.float32(self.pixel_scale)
        if x.ndim == 3:
            x = x[..., None]
        mean = np.asarray(self.mean, np.float32).reshape(1, 1, 1, -1)
        std = np.asarray(self.std, np.float32).reshape(1, 1, 1, -1)
        x = (x - mean) / std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def random_batch(self, count: int, seed: int = 0) -> np.ndarray:
        """``count`` seeded random images, preprocessed: input for self-checks and benchmarks."""
        from edgecnn.files.limits import check_allocation

        c, h, w = self.shape
        check_allocation(f"input batch of {count}", (count, c, h, w), 4,
                         "use a smaller `batch` or a model with a smaller input")
        images = np.random.default_rng(seed).integers(0, 256, (count, h, w, c), dtype=np.uint8)
        return self.preprocess(images)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls(
            shape=tuple(data["shape"]),
            layout=data.get("layout", "NCHW"),
            dtype=data.get("dtype", "float32"),
            pixel_scale=float(data.get("pixel_scale", 1.0 / 255.0)),
            mean=tuple(data.get("mean", (0.0,))),
            std=tuple(data.get("std", (1.0,))),
        )


@dataclass(frozen=True)
class ModelCard:
    """What a model is, how to feed it and how well it did: written beside every trained model."""

    architecture: str
    parameters: int
    input: InputSpec
    labels: tuple[str, ...]
    dataset: str = ""
    epochs: int | None = None
    test_accuracy: float | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input"] = self.input.to_dict()
        data["labels"] = list(self.labels)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict) or not isinstance(data.get("input"), dict):
            raise ValueError("a card is a JSON object with an 'input' object")
        if not isinstance(data.get("labels"), list) or not data["labels"]:
            raise ValueError("'labels' must be a non-empty list")
        kinds = {"architecture": (str,), "sha256": (str, type(None)),
                 "dataset": (str,), "epochs": (int, type(None)),
                 "test_accuracy": (int, float, type(None)), "extra": (dict,)}
        for key, allowed in kinds.items():
            if key in data and (not isinstance(data[key], allowed) or isinstance(data[key], bool)):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
                raise ValueError(f"{key!r} must be {names}, not {type(data[key]).__name__}")
        return cls(
            architecture=data["architecture"],
            parameters=int(data["parameters"]),
            input=InputSpec.from_dict(data["input"]),
            labels=tuple(str(x) for x in data["labels"]),
            dataset=data.get("dataset", ""),
            epochs=data.get("epochs"),
            test_accuracy=data.get("test_accuracy"),
            sha256=data.get("sha256"),
            extra=dict(data.get("extra", {})),
        )

    @classmethod
    def from_json(cls, text: str, source: str) -> ModelCard:
        try:
            return cls.from_dict(json.loads(text))
        except RecursionError:  # JSON nested thousands deep: no card is
            raise ModelLoadError(f"{source}: model card is nested too deeply to be a card; fix "
                                 "or remove it") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{source}: not a valid edgecnn model card "
                                 f"({str(exc)[:200]}); fix or remove it") from None

    def with_sha256(self, sha256: str) -> ModelCard:
        return replace(self, sha256=sha256)


def card_from_shapes(name: str, image_shape: tuple[int, ...], output_shape: Any = (), *,
                     derived_from: str) -> ModelCard:
    """The card of a file or module that carries none: its own (C, H, W) input, x = pixels / 255,
    and one label per class on the first output's axis 1 (logits, or a segmentation map's
    channels). Where that axis is not a fixed number, one label, and the card says so: a
    guessed class count (10, as if every model were MNIST) would pass labels it cannot judge.
    Raises ValueError for a shape that is no image."""
    dims = list(output_shape)
    known = len(dims) > 1 and isinstance(dims[1], int) and dims[1] > 0
    note = f"derived from {derived_from}: no card was given"
    if not known:
        note += "; its class count is not fixed, so one label"
    spec = InputSpec(tuple(image_shape))  # type: ignore[arg-type]  # it checks the length
    return ModelCard(name, 0, spec, tuple(str(i) for i in range(dims[1] if known else 1)),
                     extra={"card": note})


def card_path_for(model_path: Path) -> Path:
    """The sidecar card of ``models/lenet5.pt`` is ``models/lenet5.json``."""
    return model_path.with_suffix(CARD_SUFFIX)


def read_sidecar(model_path: Path) -> ModelCard | None:
    path = card_path_for(model_path)
    if not path.is_file():
        return None
    return ModelCard.from_json(path.read_text(), str(path))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
