"""The models the end-to-end benchmark trains: a CIFAR-sized ResNet-18 and an MLP.

Both are built with ``torch.nn.BatchNorm*d``; ``with_batch_norm`` swaps every
one for ``bn_portable.torch.BatchNorm`` (``from_torch``: the fused path, or the
same state on the default non-fused path), so the three variants of a model
start from the same weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

import bn_portable.torch as bnt


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 images (3×3 stem, no max-pool), ``width`` channels in the first stage."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        inputs = width
        for stage, stride in enumerate((1, 2, 2, 2)):
            outputs = width * 2**stage
            blocks += [BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs, 1)]
            inputs = outputs
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(inputs, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def mlp(features: int = 512, layers: int = 4, inputs: int = 784, classes: int = 10) -> nn.Module:
    """``layers`` × (Linear, BatchNorm1d, ReLU), then a linear classifier."""
    modules: list[nn.Module] = []
    for index in range(layers):
        modules += [nn.Linear(inputs if index == 0 else features, features), nn.BatchNorm1d(features), nn.ReLU()]
    return nn.Sequential(*modules, nn.Linear(features, classes))


def with_batch_norm(model: nn.Module, variant: str) -> nn.Module:
    """A copy of ``model`` whose batch norms are ``variant``'s.

    ``native``: unchanged; ``fused``: ``bn_portable.torch.BatchNorm.from_torch``
    (TensorFlow's fused kernel); ``non-fused``: the same module and state on
    ``batch_norm``'s default path (``fused=False``).
    """
    model = copy.deepcopy(model)
    if variant == "native":
        return model
    for parent in list(model.modules()):
        for attribute, module in list(parent.named_children()):
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                setattr(parent, attribute, _converted(module, fused=variant == "fused"))
    return model


def _converted(module: nn.Module, *, fused: bool) -> nn.Module:
    converted = bnt.BatchNorm.from_torch(module)
    if fused:
        return converted
    options: dict[str, Any] = {**converted.options, "fused": False}
    return bnt.BatchNorm.from_state(converted.state, data_format="NCHW", **options).train(module.training)
