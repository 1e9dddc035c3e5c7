"""The model zoo: small, readable reference CNNs, registered by name.

Each architecture is a plain ``nn.Module`` so that a state_dict checkpoint naming it can be rebuilt
without unpickling code. ``edgecnn zoo`` lists them; tests are parametrised over this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgecnn.registry import Registry

MNIST_LABELS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: how to build it and what input it takes."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    dataset: str
    summary: str

    def parameter_count(self) -> int:
        return count_parameters(self.build())


ARCHITECTURES: Registry[Architecture] = Registry("architecture")


def register(name: str, input_shape: tuple[int, int, int], num_classes: int, dataset: str):
    """Class decorator adding an ``nn.Module`` subclass to the zoo under ``name``."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        ARCHITECTURES.register(name)(
            Architecture(name, cls, input_shape, num_classes, dataset, summary)
        )
        return cls

    return decorate


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(name: str) -> nn.Module:
    """A freshly initialised model of the named architecture, in eval mode."""
    return ARCHITECTURES.get(name).build().eval()


class _LeNet(nn.Module):
    """The LeNet-5 layout: two conv-ReLU-pool stages and three fully-connected layers."""

    def __init__(self, kernel: int, first_padding: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, kernel, padding=first_padding), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("lenet5", (1, 28, 28), 10, "mnist")
class LeNet5(_LeNet):
    """Classic LeNet-5 with ReLU and max-pooling (61,706 parameters).

    The first convolution pads by 2 so that 28x28 MNIST digits get the 32x32 receptive field of
    the original paper.
    """

    def __init__(self) -> None:
        super().__init__(kernel=5, first_padding=2)


@register("lenet5-3x3", (1, 28, 28), 10, "mnist")
class LeNet5Small(_LeNet):
    """LeNet-5 with unpadded 3x3 convolutions (60,074 parameters): a cheaper first layer."""

    def __init__(self) -> None:
        super().__init__(kernel=3, first_padding=0)


@register("cnn4", (1, 28, 28), 10, "mnist")
class CNN4(nn.Module):
    """Four 5x5 convolutions and one linear layer: a deeper conv stack with a thin head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(),
            nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("cnn-fc1024", (1, 28, 28), 10, "mnist")
class CNNFC1024(nn.Module):
    """The TensorFlow-tutorial MNIST CNN: two same-padded 5x5 convs and a 1024-wide hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(7 * 7 * 64, 1024), nn.ReLU(), nn.Linear(1024, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _SqueezeExcite(nn.Module):
    """Channel attention as MobileNetV3 has it: x * hardsigmoid(fc(relu(fc(pool(x)))))."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(self.pool(x)))))
        return x * scale


class _InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, squeeze-excite, project 1x1 (MobileNetV3's block)."""

    def __init__(self, inputs: int, expanded: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(inputs, expanded, 1, bias=False),
                                    nn.BatchNorm2d(expanded), nn.Hardswish())
        self.depthwise = nn.Sequential(
            nn.Conv2d(expanded, expanded, 3, stride, 1, groups=expanded, bias=False),
            nn.BatchNorm2d(expanded), nn.Hardswish())
        self.se = _SqueezeExcite(expanded, max(8, expanded // 4))
        self.project = nn.Sequential(nn.Conv2d(expanded, outputs, 1, bias=False),
                                     nn.BatchNorm2d(outputs))
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


@register("mobile-se", (1, 28, 28), 10, "mnist")
class MobileSE(nn.Module):
    """A small MobileNetV3 for MNIST: depthwise convs, hard-swish and squeeze-excite blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.Hardswish())
        self.blocks = nn.Sequential(_InvertedResidual(16, 32, 16, 1),
                                    _InvertedResidual(16, 64, 24, 2),
                                    _InvertedResidual(24, 72, 24, 1),
                                    _InvertedResidual(24, 96, 40, 2))
        self.head = nn.Sequential(nn.Conv2d(40, 128, 1, bias=False), nn.BatchNorm2d(128),
                                  nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


@register("vgg19", (3, 224, 224), 1000, "imagenet")
class VGG19(nn.Module):
    """VGG19 without batch norm for 3x224x224 ImageNet input (143,667,240 parameters).

    The scale case for the converters. torchvision's adaptive 7x7 average pool is the identity at
    224x224, so it is left out; the parameter count is unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 1000),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
