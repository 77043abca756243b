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

import _floors
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
    ``batch_norm``'s default path (``fused=False``); ``floor fused`` and ``floor
    non-fused``: ``FloorBatchNorm``, those paths' formulas in the fewest PyTorch operations.
    """
    model = copy.deepcopy(model)
    if variant == "native":
        return model
    for parent in list(model.modules()):
        for attribute, module in list(parent.named_children()):
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if variant.startswith("floor "):
                    replacement: nn.Module = FloorBatchNorm(module, variant.removeprefix("floor "))
                else:
                    replacement = _converted(module, fused=variant == "fused")
                setattr(parent, attribute, replacement)
    return model


class FloorBatchNorm(nn.Module):
    """A path's formula in the fewest PyTorch operations (``_floors``), as a model's batch norm.

    The floor of an end-to-end ratio: what the model costs with nothing but the
    formula's operations in Python, the moving averages updated in place. The
    backward is PyTorch's own batch-norm backward kernel with the batch's
    statistics, through a minimal autograd node (what bn_portable's node calls).
    """

    def __init__(self, native: nn.Module, path: str) -> None:
        super().__init__()
        self.path, self.formula = path, _floors.FORMULAS[path]
        self.epsilon = float(native.eps)
        self.decay_weight = float(native.momentum)  # 1 − decay
        self.weight = nn.Parameter(native.weight.detach().clone())
        self.bias = nn.Parameter(native.bias.detach().clone())
        self.register_buffer("running_mean", native.running_mean.detach().clone())
        self.register_buffer("running_var", native.running_var.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.ndim - 2)
        gamma, beta = self.weight.view(view), self.bias.view(view)
        if not self.training:
            return self.formula(x, self.running_mean.view(view), self.running_var.view(view), gamma, beta, self.epsilon)
        with torch.no_grad():
            mean, variance = _floors.batch_statistics(x, 1)
            target = _floors.variance_target(variance, x.numel() // x.shape[1], self.path)
            for moving, value in ((self.running_mean, mean), (self.running_var, target)):
                moving.copy_(_floors.moving_average(moving, value, self.decay_weight))
            inverse_std = torch.rsqrt(variance + self.epsilon)

        def y_of(x: torch.Tensor) -> torch.Tensor:
            return self.formula(x, mean.view(view), variance.view(view), gamma, beta, self.epsilon)

        y: torch.Tensor = _BatchStatisticsNode.apply(x, self.weight, self.bias, mean, inverse_std, y_of, self.epsilon)
        return y


class _BatchStatisticsNode(torch.autograd.Function):
    """y from the given formula (autograd off); backward: PyTorch's kernel with the batch's statistics."""

    @staticmethod
    def forward(ctx: Any, x: Any, weight: Any, bias: Any, mean: Any, inverse_std: Any, y_of: Any, epsilon: float) -> Any:
        ctx.save_for_backward(x, weight, mean, inverse_std)
        ctx.epsilon = epsilon
        return y_of(x)

    @staticmethod
    def backward(ctx: Any, dy: Any) -> Any:
        x, weight, mean, inverse_std = ctx.saved_tensors
        mask = [bool(needed) for needed in ctx.needs_input_grad[:3]]
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, None, None, mean, inverse_std, True, ctx.epsilon, mask
        )
        return dx, dweight, dbias, None, None, None, None


def _converted(module: nn.Module, *, fused: bool) -> nn.Module:
    converted = bnt.BatchNorm.from_torch(module)
    if fused:
        return converted
    options: dict[str, Any] = {**converted.options, "fused": False}
    return bnt.BatchNorm.from_state(converted.state, data_format="NCHW", **options).train(module.training)
