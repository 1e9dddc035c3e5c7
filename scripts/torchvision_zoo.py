"""torchvision's CNN definitions with random weights, for the coverage table and the tests.

torchvision's PyPI wheels are CUDA builds: beside the CPU torch this project pins, ``import
torchvision`` fails in its ``__init__`` (it registers kernels of a ``_C`` library that needs
CUDA's libc10). The model definitions are plain PyTorch, so :func:`models` imports
``torchvision.models`` without running the package ``__init__``. Drop the hack the day a CPU
build of torchvision can be installed here. Nothing is downloaded: every model is built with
``weights=None`` and a fixed seed.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# name -> (input size, constructor keyword arguments)
MODELS: dict[str, tuple[int, dict[str, Any]]] = {
    "resnet18": (224, {}),
    "resnet50": (224, {}),
    "mobilenet_v2": (224, {}),
    "mobilenet_v3_small": (224, {}),
    "mobilenet_v3_large": (224, {}),
    "efficientnet_b0": (224, {}),
    "squeezenet1_1": (224, {}),
    "shufflenet_v2_x1_0": (224, {}),
    "mnasnet1_0": (224, {}),
    "googlenet": (224, {"aux_logits": False, "init_weights": True}),
    "densenet121": (224, {}),
    "regnet_y_400mf": (224, {}),
    "alexnet": (224, {}),
    "vgg11_bn": (224, {}),
    "inception_v3": (299, {"aux_logits": False, "init_weights": True}),
    "convnext_tiny": (224, {}),
    "lraspp_mobilenet_v3_large": (224, {"weights_backbone": None}),
    "vit_b_16": (224, {}),
}


@dataclass(frozen=True)
class Export:
    name: str
    path: Path
    input_shape: tuple[int, int, int, int]


def models() -> types.ModuleType:
    """``torchvision.models`` without the package ``__init__`` (see the module docstring)."""
    if "torchvision.models" in sys.modules:
        return sys.modules["torchvision.models"]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("torchvision is not installed: pip install -c constraints.txt "
                          "-e '.[test]'")
    if "torchvision" not in sys.modules:
        package = types.ModuleType("torchvision")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["torchvision"] = package
    import torchvision.models  # noqa: F401  (the submodule only)
    import torchvision.models.segmentation  # noqa: F401

    return sys.modules["torchvision.models"]


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """The model with seeded random weights, in eval mode."""
    zoo = models()
    kwargs = MODELS.get(name, (224, {}))[1]
    constructor = getattr(zoo, name, None) or getattr(zoo.segmentation, name)
    torch.manual_seed(seed)
    model = constructor(weights=None, **kwargs).eval()
    if name.startswith("vit_"):  # torchvision zero-initialises ViT's head: every output is 0
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def rerandomise_batchnorm(model: torch.nn.Module) -> None:
    """Random-weight models leave BatchNorm at identity (mean 0, var 1, gamma 1, beta 0), which
    leaves branches dead and parity untested: draw its statistics and affine terms instead."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                if module.affine:
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.1, 0.1)


def export(name: str, folder: Path, size: int | None = None, seed: int = 0) -> Export:
    """torch.export the model at batch 1 (what most people write) and save it as ``.pt2``."""
    side = size or MODELS[name][0]
    shape = (1, 3, side, side)
    model = build(name, seed)
    program = torch.export.export(model, (torch.randn(shape),))
    path = folder / f"{name}.pt2"
    torch.export.save(program, path)
    return Export(name, path, shape)


def calibration_set(path: Path, side: int, count: int) -> Path:
    """``count`` smooth random RGB images (blocks of 16 pixels) as an .npz calibration set:
    ImageNet data does not ship here, and white noise would calibrate ranges no real image
    reaches."""
    rng = np.random.default_rng(0)
    cells = -(-side // 16)
    blocks = rng.integers(0, 256, (count, cells, cells, 3), dtype=np.uint8)
    images = blocks.repeat(16, axis=1).repeat(16, axis=2)[:, :side, :side]
    np.savez(path, x=images, y=np.zeros(len(images), np.int64))
    return path
