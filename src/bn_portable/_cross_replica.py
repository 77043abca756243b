"""Statistics of a global batch whose shards live on several replicas.

``cross_replica_sum(a)`` is the caller's reducer: it returns the sum of the
small array ``a`` over every replica, with ``a``'s shape (an all-reduce). With
it the statistics are those of the concatenated batch, computed as on one
device, in two passes:

1. the replicas sum ``(count, Σx)`` (weighted: ``(Σw, Σw·x)``) and every one
   gets the global mean;
2. they sum ``Σ(x − μ)²`` (weighted: ``Σw·(x − μ)²``) around that global mean.

So the variance is the two-pass variance of the global batch, never rebuilt
from per-shard variances or inverse standard deviations, and each replica may
hold any number of samples, none included. Each pass is one reducer call on
one stacked array. The backward pass sums ``(count, Σdy, Σdy·(x − μ))`` the
same way. Nothing here reads a value on the host: counts are arrays too,
because shard sizes may differ between replicas.
"""

from __future__ import annotations

import math
from typing import Any

from . import _layout
from ._lib._compat import device
from ._lib._dtypes import astype, compute_dtype, scalar
from ._lib._sums import accurate_sum
from ._moments import divide_no_nan
from ._normalize import fused_inference


def sum_across(reducer: Any, parts: list[Any], xp: Any) -> list[Any]:
    """Each array of ``parts`` (one shape) summed over the replicas, in one reducer call."""
    stacked = xp.stack(parts, axis=0)
    total = reducer(stacked)
    if tuple(total.shape) != tuple(stacked.shape):
        raise ValueError(
            f"cross_replica_sum must return an array of its argument's shape {tuple(stacked.shape)} "
            f"(the sum over replicas); got shape {tuple(total.shape)}"
        )
    return [total[i, ...] for i in range(len(parts))]


def global_moments(
    x: Any, axes: tuple[int, ...], reducer: Any, xp: Any, weights: Any = None
) -> tuple[Any, Any]:
    """Mean and biased variance of the global batch, keepdims, in the compute dtype.

    ``weights`` (optional) broadcasts to x; the statistics are then the
    frequency-weighted ones, 0 where the global total weight is 0.
    """
    x = astype(x, compute_dtype(xp, x.dtype), xp)
    if weights is not None:
        weights = xp.broadcast_to(astype(weights, x.dtype, xp), x.shape)

    def weighted(values: Any) -> Any:
        return values if weights is None else weights * values

    # Without weights every element weighs 1: the count is the shard's shape.
    count = local_count(x, axes, xp) if weights is None else accurate_sum(weights, axes, xp, keepdims=True)
    count, total = sum_across(reducer, [count, accurate_sum(weighted(x), axes, xp, keepdims=True)], xp)
    mean = divide_no_nan(total, count, xp)
    centered = x - mean
    squares = accurate_sum(weighted(centered * centered), axes, xp, keepdims=True)
    (m2,) = sum_across(reducer, [squares], xp)
    return mean, divide_no_nan(m2, count, xp)


def local_count(x: Any, axes: tuple[int, ...], xp: Any) -> Any:
    """This shard's element count per statistic, as an array of x's dtype (keepdims shape)."""
    shape = tuple(1 if axis in axes else n for axis, n in enumerate(x.shape))
    count = math.prod(x.shape[axis] for axis in axes)
    return xp.full(shape, float(count), dtype=x.dtype, device=device(x))


def fused_training_global(
    x: Any, scale: Any, offset: Any, epsilon: Any, channel: Any, reducer: Any, xp: Any
) -> Any:
    """The fused kernel in training mode on the global batch.

    ``(y, mean, biased variance, Bessel factor)`` per channel; the kernel's
    rounding (float32 throughout, ``sum × (1/n)``, y rounded once) with the
    global count ``n``: ``n / max(n − 1, 1)``, and NaN statistics when the
    global batch is empty, as TensorFlow's kernel gives.
    """
    axes = _layout.reduction_axes(x.ndim, channel)
    x32 = astype(x, xp.float32, xp)
    count = xp.reshape(local_count(x32, axes, xp), (-1,))
    count, total = sum_across(reducer, [count, accurate_sum(x32, axes, xp)], xp)
    dev = device(x)
    one = scalar(xp, 1.0, xp.float32, dev)
    empty = count == 0
    inverse_count = xp.where(
        empty, xp.full_like(count, xp.nan), one / xp.where(empty, xp.ones_like(count), count)
    )
    mean = total * inverse_count
    mean_b = _layout.per_channel(mean, x.ndim, channel, xp)
    centered = x32 - mean_b
    (squares,) = sum_across(reducer, [accurate_sum(centered * centered, axes, xp)], xp)
    variance = squares * inverse_count
    bessel = count / xp.maximum(count - one, one)
    # With the statistics known, the training kernel's y is the inference
    # kernel's formula: a library's fast inference kernel may do it.
    y = fused_inference(x, scale, offset, mean, variance, epsilon, channel, xp)
    return y, mean, variance, bessel


def gradient_totals(
    local_total: Any, sum_dy: Any, sum_dy_centered: Any, reducer: Any, xp: Any
) -> Any:
    """``(total count or weight, Σdy, Σdy·(x − μ))`` over every replica, per channel."""
    total = xp.broadcast_to(astype(local_total, sum_dy.dtype, xp), sum_dy.shape)
    return sum_across(reducer, [total, sum_dy, sum_dy_centered], xp)


def merge_across(count: Any, mean: Any, m2: Any, reducer: Any, xp: Any) -> Any:
    """Merge one partial ``(count, mean, m2)`` per replica into the global one, exactly.

    The global mean first, then every replica's m2 moved to it
    (``m2 + count·(mean − μ)²``) and summed: deviations are taken from the
    global mean, so nothing cancels.
    """
    count_total, weighted_means = sum_across(reducer, [count, count * mean], xp)
    global_mean = divide_no_nan(weighted_means, count_total, xp)
    delta = mean - global_mean
    (global_m2,) = sum_across(reducer, [m2 + count * (delta * delta)], xp)
    return count_total, global_mean, global_m2
