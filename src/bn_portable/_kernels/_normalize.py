"""The normalizing kernels: ``tf.nn.batch_normalization``'s and the fused kernel's.

The two differ in rounding, and TensorFlow's layer uses both:

- ``normalize`` (``tf.nn.batch_normalization``) folds everything into
  ``x·inv + (offset − mean·inv)`` in the parameters' dtype and casts the two
  terms to x's dtype;
- the fused kernel computes ``(x − mean)·(rsqrt(var + ε)·scale) + offset`` in
  float32 and rounds once (``fused_inference``; ``fused_training`` first takes
  the batch statistics the fused way: float32, ``sum × (1/n)``).
"""

from __future__ import annotations

from typing import Any

from .._lib import _layout
from .._lib._backends import compiling, optimization_barrier
from .._lib._compat import device
from .._lib._dtypes import astype, scalar
from .._lib._numerics import bessel_factor, rsqrt
from .._lib._typing import CrossReplicaSum, Device, Namespace
from .._native import Kernel, overridable
from ._moments import biased_variance, two_pass_moments


@overridable(Kernel.NORMALIZE)
def normalize(
    x: Any, mean: Any, variance: Any, offset: Any, scale: Any, variance_epsilon: Any, *,
    xp: Namespace, compute: Any = None, channel: int | None = None,
) -> Any:
    """``tf.nn.batch_normalization``: ``x·inv + (offset − mean·inv)``, both terms in x's dtype.

    ``compute``: a wider dtype for the arithmetic (the Keras layer normalizes half
    input in float32): x is widened to it, and y rounded back to x's dtype once.
    A fast path then never holds the whole widened input.

    ``channel``: the parameters are ``[C]`` vectors along that axis of x (a layer's
    variables); ``inv`` and ``shift`` are shaped to it once computed (the same
    bits: two reshapes where shaping the four parameters took four). None: the
    parameters broadcast against x as they are.
    """
    widened = x if compute is None else astype(x, compute, xp)
    inv = rsqrt(variance + variance_epsilon, xp)
    if scale is not None:
        inv = inv * scale
    shift = -mean * inv if offset is None else offset - mean * inv
    if channel is not None:
        inv = _layout.per_channel(inv, x.ndim, channel, xp)
        shift = _layout.per_channel(shift, x.ndim, channel, xp)
    y = widened * xp.astype(inv, widened.dtype) + xp.astype(shift, widened.dtype)
    return y if compute is None else astype(y, x.dtype, xp)


@overridable(Kernel.FUSED_INFERENCE)
def fused_inference(
    x: Any, scale: Any, offset: Any, mean: Any, variance: Any, epsilon: float, channel: int, *, xp: Namespace
) -> Any:
    """The fused kernel with given ``[C]`` statistics: y, rounded once to x's dtype."""
    x32 = astype(x, xp.float32, xp)
    return _fused_formula(x32, x.dtype, scale, offset, mean, variance, epsilon, channel, xp=xp)


@overridable(Kernel.FUSED_TRAINING)
def fused_training_core(
    x: Any, scale: Any, offset: Any, epsilon: float, channel: int, *, xp: Namespace
) -> tuple[Any, Any, Any, Any]:
    """y, batch mean, biased batch variance (``[C]``, float32) and the element count per channel."""
    x32 = astype(x, xp.float32, xp)  # once: a half batch is widened for both passes
    batch_mean, biased_variance, count = fused_statistics(x32, channel, xp=xp)
    # y's own x − mean, not merged by XLA with the statistics' (which it would keep in memory).
    mean = optimization_barrier(batch_mean, xp)
    y = _fused_formula(x32, x.dtype, scale, offset, mean, biased_variance, epsilon, channel, xp=xp)
    return y, batch_mean, biased_variance, count


def _fused_formula(
    x32: Any,
    dtype: Any,
    scale: Any,
    offset: Any,
    mean: Any,
    variance: Any,
    epsilon: float,
    channel: int,
    *,
    xp: Namespace,
) -> Any:
    """The fused kernel's y from float32 x and ``[C]`` statistics, rounded once to ``dtype``."""
    mean_b = _layout.per_channel(mean, x32.ndim, channel, xp)
    y = fused_affine(
        x32, mean_b=mean_b, variance=variance, scale=scale, offset=offset, epsilon=epsilon,
        rank=x32.ndim, channel=channel, xp=xp,
    )
    return astype(y, dtype, xp)


def fused_training(
    x: Any,
    scale: Any,
    offset: Any,
    epsilon: float,
    channel: int,
    *,
    xp: Namespace,
    reducer: CrossReplicaSum | None = None,
) -> tuple[Any, Any, Any, Any]:
    """The fused kernel in training: ``(y, batch mean, biased variance, Bessel factor)``.

    With ``reducer`` the statistics are the global batch's (count summed over
    replicas, NaN when the global batch is empty, as TensorFlow's kernel gives
    for an empty batch); y is then the inference formula with them, which a
    library's fast inference kernel may compute.
    """
    if reducer is None:
        y, batch_mean, biased_variance, count = fused_training_core(
            x, scale, offset, epsilon, channel, xp=xp
        )
        return y, batch_mean, biased_variance, bessel_correction(count, xp, device(x))
    batch_mean, biased_variance, count = fused_statistics(x, channel, xp=xp, reducer=reducer)
    mean = optimization_barrier(batch_mean, xp)  # as in fused_training_core
    y = fused_inference(x, scale, offset, mean, biased_variance, epsilon, channel, xp=xp)
    one = xp.ones_like(count)
    return y, batch_mean, biased_variance, count / xp.maximum(count - one, one)


def fused_statistics(
    x: Any, channel: int, *, xp: Namespace, reducer: CrossReplicaSum | None = None
) -> tuple[Any, Any, Any]:
    """``[C]`` mean and biased variance as the fused kernel takes them (float32, ``sum × 1/n``).

    The count comes back as the kernel's (a number, or a ``[C]`` array with a reducer).
    """
    axes = _layout.reduction_axes(x.ndim, channel)
    x32 = astype(x, xp.float32, xp)
    summary = two_pass_moments(x32, axes, xp=xp, reducer=reducer, rounding="reciprocal")
    biased = biased_variance(summary, rounding="reciprocal", xp=xp)
    count = summary.count if isinstance(summary.count, int) else xp.reshape(summary.count, (-1,))
    return xp.reshape(summary.mean, (-1,)), xp.reshape(biased, (-1,)), count


def fused_affine(
    x32: Any,
    *,
    mean_b: Any,
    variance: Any,
    scale: Any,
    offset: Any,
    epsilon: float,
    rank: int,
    channel: int,
    xp: Namespace,
) -> Any:
    """``(x − mean)·(rsqrt(var + ε)·scale) + offset`` in float32."""
    factor = rsqrt(variance + epsilon, xp) * scale
    factor_b = _layout.per_channel(factor, rank, channel, xp)
    offset_b = _layout.per_channel(offset, rank, channel, xp)
    return (x32 - mean_b) * factor_b + offset_b


def bessel_correction(count: Any, xp: Namespace, dev: Device) -> Any:
    """``n / max(n − 1, 1)`` rounded to float32 (TF's guard gives variance 0 when n = 1).

    A Python float (``_numerics.bessel_factor``): multiplying a float32 array by it
    gives the bits the float32 constant would, with no array to make. A 0-d array
    while ``torch.compile`` traces, where the count may be symbolic (a batch
    size the compiler made dynamic) and the compiler folds the constant anyway.
    """
    if compiling(xp):
        return scalar(xp, count / max(count - 1, 1), xp.float32, dev)
    return bessel_factor(count)
