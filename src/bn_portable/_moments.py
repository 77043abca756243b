"""``moments`` and ``weighted_moments``: TensorFlow's batch statistics.

Both are two-pass (mean first, then the mean squared deviation from it), never
the one-pass ``E[x²] − E[x]²`` that loses the variance when the mean is large
against the spread. float16 is computed in float32 and rounded once at the end,
as ``tf.nn.moments`` does; bfloat16 is computed in bfloat16, as TensorFlow does
too. Every sum goes through ``accurate_sum`` (a float32 or wider accumulator
on every backend, also for bfloat16 NumPy arrays, rounded once to the dtype).
"""

from __future__ import annotations

from typing import Any

from ._lib import _checks
from ._lib._dtypes import dtype_name
from ._lib._sums import accurate_mean, accurate_sum
from ._lib._typing import ArrayT, Axes, CrossReplicaSum
from ._native import overridable


def moments(
    x: ArrayT,
    axes: Axes,
    *,
    shift: Any = None,
    keepdims: bool = False,
    cross_replica_sum: CrossReplicaSum | None = None,
) -> tuple[ArrayT, ArrayT]:
    """Mean and biased variance of ``x`` over ``axes`` (``tf.nn.moments``).

    Parameters
    ----------
    x : array
        Real floating input.
    axes : int or sequence of int
        Axes to reduce.
    shift : array or None
        Accepted for TensorFlow compatibility (an array of x's library that
        broadcasts to x) and ignored, as TensorFlow ignores it.
    keepdims : bool
        Keep the reduced axes with length 1.
    cross_replica_sum : callable or None
        ``x`` is this replica's shard of a global batch split along the
        reduced axes; ``cross_replica_sum(a)`` returns the sum of ``a`` over
        every replica (see ``bn_portable.distributed``). The statistics are
        then the global batch's (two-pass, any shard sizes, empty ones too).

    Returns
    -------
    mean, variance : arrays of ``x``'s dtype
        ``variance`` divides by the element count (biased).

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)
    >>> mean, variance = bn.moments(x, axes=[0])
    >>> print(mean, variance)
    [3. 4.] [2.6666667 2.6666667]
    """
    xp = _checks.namespace(x=x, shift=shift)
    _checks.check_floating("x", x, xp)
    _checks.check_bool("keepdims", keepdims)
    if shift is not None:
        _checks.check_broadcasts_to("shift", shift, tuple(x.shape))
    axes = _checks.normalize_axes("axes", axes, x.ndim)
    if cross_replica_sum is None:
        mean, variance = batch_moments(x, axes, xp)
    else:
        mean, variance = _global_moments(x, axes, cross_replica_sum, xp)
    return _finish(mean, variance, axes, keepdims, x.dtype, xp)


def weighted_moments(
    x: ArrayT,
    axes: Axes,
    frequency_weights: Any,
    *,
    keepdims: bool = False,
    cross_replica_sum: CrossReplicaSum | None = None,
) -> tuple[ArrayT, ArrayT]:
    """Frequency-weighted mean and variance (``tf.nn.weighted_moments``).

    ``mean = Σw·x / Σw`` and ``variance = Σw·(x − mean)² / Σw`` with the weights
    broadcast to ``x``'s shape before summing. A zero total weight gives 0, not
    NaN (TensorFlow's ``div_no_nan``). ``cross_replica_sum`` as in ``moments``:
    the weighted statistics of the global batch.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    >>> mean, variance = bn.weighted_moments(x, [0], np.array([1.0, 1.0, 1.0, 0.0], np.float32))
    >>> print(mean, variance)
    2.0 0.6666667

    A zero total weight gives zeros, not NaN:

    >>> print(*bn.weighted_moments(x, [0], np.zeros(4, np.float32)))
    0.0 0.0
    """
    xp = _checks.namespace(x=x, frequency_weights=frequency_weights)
    _checks.check_namespace("frequency_weights", frequency_weights, xp)
    _checks.check_floating("x", x, xp)
    _checks.check_known_shape("x", x)
    _checks.check_bool("keepdims", keepdims)
    _checks.check_real_dtype("frequency_weights", frequency_weights, xp)
    _checks.check_broadcasts_to("frequency_weights", frequency_weights, tuple(x.shape))
    axes = _checks.normalize_axes("axes", axes, x.ndim)
    if cross_replica_sum is None:
        mean, variance = batch_weighted_moments(x, axes, frequency_weights, xp)
    else:
        mean, variance = _global_moments(x, axes, cross_replica_sum, xp, frequency_weights)
    return _finish(mean, variance, axes, keepdims, x.dtype, xp)


@overridable
def batch_moments(x: Any, axes: tuple[int, ...], xp: Any) -> tuple[Any, Any]:
    """Two-pass mean and biased variance, keepdims, in the compute dtype.

    The building block of every unweighted path (``moments``, the Keras and
    legacy layer paths); validation is the caller's.
    """
    x = _to_compute_dtype(x, xp)
    mean = accurate_mean(x, axes, xp, keepdims=True)
    centered = x - mean
    return mean, accurate_mean(centered * centered, axes, xp, keepdims=True)


@overridable
def batch_weighted_moments(
    x: Any, axes: tuple[int, ...], frequency_weights: Any, xp: Any
) -> tuple[Any, Any]:
    """Weighted two-pass moments, keepdims, in the compute dtype (no validation)."""
    x = _to_compute_dtype(x, xp)
    weights = xp.astype(frequency_weights, x.dtype)
    total_weight = accurate_sum(xp.broadcast_to(weights, x.shape), axes, xp, keepdims=True)
    mean = divide_no_nan(accurate_sum(weights * x, axes, xp, keepdims=True), total_weight, xp)
    centered = x - mean
    weighted_square_distance = accurate_sum(weights * (centered * centered), axes, xp, keepdims=True)
    return mean, divide_no_nan(weighted_square_distance, total_weight, xp)


def _global_moments(
    x: Any, axes: Any, cross_replica_sum: Any, xp: Any, weights: Any = None
) -> tuple[Any, Any]:
    # Imported here: _cross_replica builds on this module's divide_no_nan.
    from ._cross_replica import global_moments

    _checks.check_callable("cross_replica_sum", cross_replica_sum)
    return global_moments(x, axes, cross_replica_sum, xp, weights)


def divide_no_nan(numerator: Any, denominator: Any, xp: Any) -> Any:
    """``numerator / denominator``, and 0 where the denominator is 0.

    The denominator is replaced before dividing so that no backend warns about
    (or traps on) a division by zero that is thrown away anyway.
    """
    is_zero = denominator == 0
    safe_denominator = xp.where(is_zero, xp.ones_like(denominator), denominator)
    return xp.where(is_zero, xp.zeros_like(numerator), numerator / safe_denominator)


def _to_compute_dtype(x: Any, xp: Any) -> Any:
    """float16 is computed in float32; bfloat16 is not (``tf.nn.moments``' own rule)."""
    return xp.astype(x, xp.float32) if dtype_name(x.dtype) == "float16" else x


def _finish(
    mean: Any, variance: Any, axes: Any, keepdims: bool, dtype: Any, xp: Any
) -> tuple[Any, Any]:
    if not keepdims:
        mean, variance = xp.squeeze(mean, axis=axes), xp.squeeze(variance, axis=axes)
    if mean.dtype != dtype:
        mean, variance = xp.astype(mean, dtype), xp.astype(variance, dtype)
    return mean, variance
