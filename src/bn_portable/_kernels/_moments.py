"""The one two-pass moments kernel, and the exact merge of its summaries.

Every statistic of the package comes from ``two_pass_moments``: ``moments``,
``weighted_moments``, ``partial_moments``, the fused kernel's statistics, the
layer paths' statistics (Keras' masked ones through ``masked_moments``), and
their synchronized forms (a reducer summing over
replicas). Two passes: the (weighted) count and sum first, and the mean from
them; then the (weighted) sum of squared deviations from that mean, ``m2``.
Never the one-pass ``E[x²] − E[x]²``, which loses the variance when the mean is
large against the spread; with a reducer, the deviations are taken from the
*global* mean, so the synchronized variance is the two-pass variance of the
global batch, never rebuilt from per-shard variances.

The caller picks the compute dtype (``_lib._dtypes.ComputeRule``) and casts x
before the call, and says how the count divides (``Rounding``) and what an
empty batch gives (``EmptyStatistics``). With a reducer that is the identity
(one replica) the result is bit-identical to the local one computed by this
kernel: the same operations on the same values, the count merely being an
array. (A library's fast path, which serves large local batches only, adds in
another order: within the accuracy contract, not bit for bit.)

Every sum goes through ``accurate_sum``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._lib._backends import compiling, divides_numbers_as_arrays, operand
from .._lib._compat import device
from .._lib._dtypes import astype, dtype_name, is_half, round_to_float32, scalar
from .._lib._numerics import divide_no_nan
from .._lib._sums import accurate_sum
from .._lib._typing import CrossReplicaSum, EmptyStatistics, Namespace, Rounding
from .._native import Kernel, overridable
from ._replicas import sum_across


class Moments(NamedTuple):
    """A two-pass summary, keepdims over the reduced axes.

    ``count`` is a Python int for a local unweighted batch of known size, else
    an array (the total weight, or a count summed over replicas); ``mean`` and
    ``m2`` (the sum of squared deviations from ``mean``) are arrays of x's dtype.
    """

    count: Any
    mean: Any
    m2: Any


def two_pass_moments(
    x: Any,
    axes: tuple[int, ...],
    *,
    xp: Namespace,
    weights: Any = None,
    reducer: CrossReplicaSum | None = None,
    rounding: Rounding = "divide",
    empty: EmptyStatistics = "nan",
    compute: Any = None,
) -> Moments:
    """Count, mean and m2 of ``x`` over ``axes`` (see the module doc); no validation.

    ``weights`` broadcasts to x (frequency weights: the count is their sum);
    ``reducer`` sums over replicas, for the statistics of the global batch;
    ``compute``, a wider dtype x is cast to first (a fast path may widen it
    block by block instead of all at once).
    """
    count = math.prod([x.shape[axis] for axis in axes])  # a list: the compiler traces it
    if reducer is None and count == count and count > 0 and rounding == "divide":
        # A local batch of known size: the case a library's fast path serves.
        if weights is not None:
            return Moments(*weighted_local_moments(x, axes, weights, empty, xp=xp, compute=compute))
        mean, m2 = local_moments(x, axes, xp=xp, compute=compute)
        return Moments(count, mean, m2)
    wide = x if compute is None else astype(x, compute, xp)
    return _two_passes(wide, axes, xp, weights, reducer, rounding, empty)


def masked_moments(
    x: Any,
    mask: Any,
    channel: int,
    *,
    xp: Namespace,
    reducer: CrossReplicaSum | None = None,
    compute: Any = None,
) -> Moments:
    """Masked statistics per channel: every axis but ``channel`` reduced (keepdims).

    ``mask`` has x's shape without the channel axis (for channels-last input
    exactly Keras' mask, which Keras broadcasts over the last axis) and any real
    or bool dtype; it is cast to the compute dtype and counts alike in every
    channel: ``count = Σm``, ``mean = Σm·x / Σm``, ``m2 = Σm·(x − mean)²``.
    A zero total gives mean and m2 0 (``biased_variance(..., empty="zero")``
    then 0 too), as ``tf.nn.weighted_moments``, which tf-keras calls with the
    mask, gives. With ``reducer`` the counts and sums are summed over replicas.
    """
    axes = tuple(axis for axis in range(x.ndim) if axis != channel)
    # A mask is frequency weights that are the same in every channel: length 1
    # along the channel axis, broadcast there by the weighted two passes.
    weights = xp.expand_dims(mask, axis=channel)
    return two_pass_moments(
        x, axes, xp=xp, weights=weights, reducer=reducer, empty="zero", compute=compute
    )


@overridable(Kernel.LOCAL_MOMENTS)
def local_moments(
    x: Any, axes: tuple[int, ...], *, xp: Namespace, compute: Any = None
) -> tuple[Any, Any]:
    """``(sum / n, Σ(x − mean)²)`` keepdims, for a local batch of known size n > 0, in
    ``compute`` (x's dtype when None)."""
    wide = x if compute is None else astype(x, compute, xp)
    summary = _two_passes(wide, axes, xp, None, None, "divide", "nan")
    return summary.mean, summary.m2


@overridable(Kernel.WEIGHTED_MOMENTS)
def weighted_local_moments(
    x: Any, axes: tuple[int, ...], weights: Any, empty: EmptyStatistics, *, xp: Namespace,
    compute: Any = None,
) -> tuple[Any, Any, Any]:
    """``(Σw, Σw·x / Σw, Σw·(x − mean)²)`` keepdims, for a local batch with frequency
    ``weights`` (broadcast to x), ``empty`` where the total weight is 0, in ``compute``
    (x's dtype when None)."""
    wide = x if compute is None else astype(x, compute, xp)
    count, mean, m2 = _two_passes(wide, axes, xp, weights, None, "divide", empty)
    return count, mean, m2


def _two_passes(
    x: Any,
    axes: tuple[int, ...],
    xp: Namespace,
    weights: Any,
    reducer: CrossReplicaSum | None,
    rounding: Rounding,
    empty: EmptyStatistics,
) -> Moments:
    """``two_pass_moments``' arithmetic, every case (the fast path's generic definition too).

    Weighted sums ``Σ w·v`` are taken over the axes along which the weights are
    constant first, then weighted over the rest (per-sample weights: each
    sample's sum times its weight): the same sum, with the products formed on
    partial sums (fewer roundings, no input-sized product).
    """
    count = math.prod([x.shape[axis] for axis in axes])  # a list: the compiler traces it
    weighted_sum = None
    if weights is not None:
        count, weighted_sum = _weighted_sums(x, weights, axes, xp)
    elif reducer is not None or count != count:  # NaN: a Dask array with unknown chunk sizes
        count = _count_array(x, axes, count, xp)
    total = accurate_sum(x, axes, xp, keepdims=True) if weighted_sum is None else weighted_sum(x)
    if reducer is not None:
        # One stacked array: a half-precision total travels in its count's float32 and
        # comes back to x's dtype, as the local total is rounded.
        count, total = sum_across(reducer, [count, astype(total, count.dtype, xp)], xp=xp)
        total = astype(total, x.dtype, xp)
    mean = per_count(total, count, rounding=rounding, empty=empty, xp=xp)
    centered = x - mean
    squares = centered * centered
    m2 = accurate_sum(squares, axes, xp, keepdims=True) if weighted_sum is None else weighted_sum(squares)
    if reducer is not None:
        (m2,) = sum_across(reducer, [m2], xp=xp)
    return Moments(count, mean, m2)


def _weighted_sums(x: Any, weights: Any, axes: tuple[int, ...], xp: Namespace) -> tuple[Any, Any]:
    """The total weight ``Σ w`` and ``v -> Σ w·v``, over ``axes`` (keepdims), for arrays like x.

    Sums first over the reduced axes along which the weights are constant, then
    multiplies by the weights and sums over the rest.
    """
    weights = astype(weights, x.dtype, xp)
    shape = (1,) * (x.ndim - weights.ndim) + tuple(weights.shape)
    weights = xp.reshape(weights, shape)
    constant = tuple(axis for axis in axes if shape[axis] == 1)
    varying = tuple(axis for axis in axes if shape[axis] != 1)
    # The weights as each partial sum sees them: full length along every axis but
    # the constant reduced ones.
    partial_shape = tuple(1 if axis in constant else n for axis, n in enumerate(x.shape))
    partial_weights = xp.broadcast_to(weights, partial_shape)
    per_constant = math.prod([x.shape[axis] for axis in constant])  # a list: traceable
    if per_constant != per_constant:  # unknown lengths (Dask): the broadcast weights summed
        count = accurate_sum(xp.broadcast_to(weights, x.shape), axes, xp, keepdims=True)
    else:
        # Not a sum over the broadcast weights: PyTorch adds along a broadcast
        # (stride-0) axis as one running sum, 1.6e-6 off for 7936 float32 weights.
        total = accurate_sum(partial_weights, varying, xp, keepdims=True) if varying else partial_weights
        count = total * float(per_constant)

    def weighted(values: Any) -> Any:
        partial = accurate_sum(values, constant, xp, keepdims=True) if constant else values
        return accurate_sum(partial_weights * partial, varying, xp, keepdims=True)

    return count, weighted


def per_count(
    value: Any, count: Any, *, rounding: Rounding, empty: EmptyStatistics, xp: Namespace
) -> Any:
    """``value / count`` as ``rounding`` says, ``empty`` where the count is 0.

    ``"divide"`` divides (``tf.nn.moments``' ``reduce_mean``); ``"reciprocal"``
    multiplies by ``float32(1/n)`` (the fused kernel's ``sum × (1/n)``). Half
    precision is divided in float32 and rounded once, whether the count is a
    number or an array (a bfloat16 array could not even hold a count of 257).
    """
    dtype = value.dtype
    half = is_half(dtype)
    if half:
        value = xp.astype(value, xp.float32)
    if isinstance(count, int):  # a number (the compiler traces a symbolic size as an int)
        if count == 0:
            quotient = xp.full_like(value, math.nan if empty == "nan" else 0.0)
        elif rounding == "divide" and divides_numbers_as_arrays(xp):
            quotient = value / operand(count, value)
        elif rounding == "divide":  # as the synchronized path divides: by a full array
            quotient = value / xp.full(value.shape, float(count), dtype=value.dtype, device=device(value))
        else:
            quotient = value * _reciprocal(count, value, xp)
    else:
        count = astype(count, value.dtype, xp)
        if empty == "zero" and rounding == "divide":
            quotient = divide_no_nan(value, count, xp)
        else:
            is_empty = count == 0
            safe_count = xp.where(is_empty, xp.ones_like(count), count)
            quotient = value / safe_count if rounding == "divide" else value * (1 / safe_count)
            fill = xp.full_like(quotient, math.nan if empty == "nan" else 0.0)
            quotient = xp.where(is_empty, fill, quotient)
    return xp.astype(quotient, dtype) if half else quotient


def _reciprocal(count: int, value: Any, xp: Namespace) -> Any:
    """``1/n`` rounded to value's dtype, to multiply by (TensorFlow's fused kernel's constant).

    For float32, a Python float holding that float32 value: multiplying by it
    gives the bits the float32 constant would, on every backend, with no array
    to make. A 0-d array for other dtypes, and while PyTorch's compiler traces
    (where the count may be symbolic).
    """
    if dtype_name(value.dtype) == "float32" and not compiling(xp):
        return round_to_float32(1.0 / count)
    return scalar(xp, 1.0 / count, value.dtype, device(value))


def biased_variance(
    moments: Moments, *, rounding: Rounding = "divide", empty: EmptyStatistics = "nan", xp: Namespace
) -> Any:
    """The biased variance ``m2 / count`` of a summary."""
    return per_count(moments.m2, moments.count, rounding=rounding, empty=empty, xp=xp)


def _count_array(x: Any, axes: tuple[int, ...], count: float, xp: Namespace) -> Any:
    """The element count per statistic as an array (keepdims shape), float32 at least."""
    dtype = xp.float32 if is_half(x.dtype) else x.dtype
    if count != count:  # unknown lengths (Dask): counted lazily
        return accurate_sum(xp.ones_like(x, dtype=dtype), axes, xp, keepdims=True)
    shape = tuple(1 if axis in axes else n for axis, n in enumerate(x.shape))
    return xp.full(shape, float(count), dtype=dtype, device=device(x))


def merge_two(a: Moments, b: Moments, *, xp: Namespace) -> Moments:
    """Chan, Golub and LeVeque's pairwise update of two summaries; an empty one changes nothing.

    ``n = nₐ + n_b, δ = μ_b − μₐ, μ = μₐ + δ·n_b/n, m2 = m2ₐ + m2_b + δ²·nₐ·n_b/n``,
    which never subtracts two large sums.
    """
    count = a.count + b.count
    delta = b.mean - a.mean
    share_b = divide_no_nan(b.count, count, xp)
    mean = a.mean + delta * share_b
    m2 = a.m2 + b.m2 + (delta * delta) * (a.count * share_b)
    return Moments(count, mean, m2)


def merge_across(summary: Moments, reducer: CrossReplicaSum, *, xp: Namespace) -> Moments:
    """Merge one summary per replica into the global one, exactly.

    The global mean first, then every replica's m2 moved to it
    (``m2 + count·(mean − μ)²``) and summed: deviations are taken from the
    global mean, so nothing cancels.
    """
    count, mean, m2 = summary
    count_total, weighted_means = sum_across(reducer, [count, count * mean], xp=xp)
    global_mean = divide_no_nan(weighted_means, count_total, xp)
    delta = mean - global_mean
    (global_m2,) = sum_across(reducer, [m2 + count * (delta * delta)], xp=xp)
    return Moments(count_total, global_mean, global_m2)
