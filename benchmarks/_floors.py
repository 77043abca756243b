"""The floor in Python: a layer path's formula in the fewest whole-tensor PyTorch operations.

Within the accuracy contract (conformance/README.md), not TensorFlow's sequence of
operations: the statistics in two passes (``torch.sum`` over a channel-grouped
view, then the deviations from the mean squared in place and summed), the two
moving averages as TensorFlow rounds them (``v − (v − value)·(1 − decay)``, three
small operations each), and y by the fused formula ``(x − μ)·(rsqrt(σ² + ε)·γ) + β``
(three passes: no fold of μ into the offset) or the non-fused ``x·inv + (β − μ·inv)``
(two passes: no fused multiply-add, which would lose TensorFlow's exact cancellation
where x = μ). Half input is summed in float32 and normalized in float32 (type
promotion against the float32 statistics), y rounded once to x's dtype.

``layer_paths.py`` times these per layer (``floor …`` rows); ``_models.FloorBatchNorm``
puts them in a model, so that an end-to-end ratio has its floor too. Not a strict
bound: cache blocking beats it where fresh memory costs more than the arithmetic.
"""

from __future__ import annotations

from typing import Any

import torch


def batch_statistics(x: torch.Tensor, channel: int) -> tuple[Any, Any]:
    """``[C]`` mean and biased variance, float32, in two passes over a channel-grouped view."""
    if channel == 1 and x.ndim > 2 and x.is_contiguous():
        view, dims = x.reshape(x.shape[0], x.shape[1], -1), (0, 2)  # (N, C, H·W)
    else:  # channels last in memory: rows of C
        last = x if channel == x.ndim - 1 else x.movedim(channel, -1)
        view, dims = last.reshape(-1, last.shape[-1]), (0,)
    inverse_count = x.shape[channel] / x.numel()
    mean = torch.sum(view, dims, dtype=torch.float32) * inverse_count
    centred = torch.sub(view, mean.view(-1, 1) if dims == (0, 2) else mean)
    variance = torch.sum(centred.square_(), dims) * inverse_count
    return mean, variance


def moving_average(moving: torch.Tensor, value: torch.Tensor, weight: float) -> Any:
    """TensorFlow's ``v − (v − value)·(1 − decay)``, ``weight`` being ``1 − decay``."""
    return torch.sub(moving, torch.sub(moving, value).mul_(weight))


def fused(x: torch.Tensor, mean: Any, variance: Any, gamma: Any, beta: Any, epsilon: float) -> Any:
    """``(x − μ)·(rsqrt(σ² + ε)·γ) + β``, the statistics broadcast along x's channel axis."""
    return torch.sub(x, mean).mul_(torch.rsqrt(variance + epsilon) * gamma).add_(beta).to(x.dtype)


def non_fused(x: torch.Tensor, mean: Any, variance: Any, gamma: Any, beta: Any, epsilon: float) -> Any:
    """``x·inv + (β − μ·inv)`` with ``inv = rsqrt(σ² + ε)·γ``."""
    inv = torch.rsqrt(variance + epsilon) * gamma
    return torch.mul(x, inv).add_(beta - mean * inv).to(x.dtype)


#: The floor of each of the module's paths.
FORMULAS = {"fused": fused, "non-fused": non_fused}
