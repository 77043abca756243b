"""``moments`` and ``weighted_moments``: TensorFlow's batch statistics.

Both are the one two-pass kernel (``_kernels._moments``): mean first, then the
mean squared deviation from it. float16 is computed in float32 and rounded
once at the end, as ``tf.nn.moments`` does; bfloat16 is computed in bfloat16,
as TensorFlow does too (``ComputeRule.MOMENTS``), with or without a reducer.
``moments``' Keras ``mask`` is computed as the Keras layers compute it: half
precision in float32 (``ComputeRule.HALF_IN_FLOAT32``), where a count of
more than 256 elements stays exact.
"""

from __future__ import annotations

from typing import Any

from ._kernels._moments import biased_variance, two_pass_moments
from ._lib import _checks
from ._lib._compat import device
from ._lib._dtypes import ComputeRule, astype, compute_dtype
from ._lib._typing import ArrayT, Axes, CrossReplicaSum, EmptyStatistics, Namespace


def moments(
    x: ArrayT,
    axes: Axes | None,
    *,
    shift: Any = None,
    keepdims: bool = False,
    cross_replica_sum: CrossReplicaSum | None = None,
    mask: Any = None,
) -> tuple[ArrayT, ArrayT]:
    """Mean and biased variance of ``x`` over ``axes`` (``tf.nn.moments``), optionally masked.

    Parameters
    ----------
    x : array
        Real floating input.
    axes : int, sequence of int, or None
        Axes to reduce (None: every axis, as in TensorFlow).
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
    mask : array or None
        Keras 3's meaning: elements where ``mask`` is 0 (False) do not count
        in the statistics. It broadcasts to ``x`` (NumPy's rule, aligned on
        the last axis: a Keras mask of shape ``x.shape[:-1]`` is passed as
        ``mask[..., None]``) and has a bool, integer or real floating dtype,
        cast to the compute dtype; other values count as frequency weights:
        ``mean = Σm·x / Σm``, ``variance = Σm·(x − mean)² / Σm``. Where
        ``Σm`` is 0 both are 0, not NaN (tf-keras's ``tf.nn.weighted_moments``
        and Keras 3 give 0 too). Half precision is then computed in float32.
        With ``cross_replica_sum`` the masked sums and counts are summed over
        the replicas.

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
    >>> mean, variance = bn.moments(x, axes=[0], mask=np.array([[True], [True], [False]]))
    >>> print(mean, variance)  # the last row does not count
    [2. 3.] [1. 1.]
    """
    xp = _checks.namespace(x=x, shift=shift, mask=mask)
    _checks.check_floating("x", x, xp)
    _checks.check_bool("keepdims", keepdims)
    _checks.check_callable("cross_replica_sum", cross_replica_sum)
    if shift is not None:
        _checks.check_broadcasts_to("shift", shift, tuple(x.shape))
    if mask is not None:
        _checks.check_known_shape("x", x)
        _checks.check_device("mask", mask, device(x))
        _checks.check_real_dtype("mask", mask, xp)
        _checks.check_broadcasts_to("mask", mask, tuple(x.shape))
    normalized = _checks.normalize_axes("axes", axes, x.ndim, none_means_all=True)
    if mask is not None:
        return _statistics(
            x, normalized, mask, cross_replica_sum, keepdims, "zero", xp, ComputeRule.HALF_IN_FLOAT32
        )
    return _statistics(x, normalized, None, cross_replica_sum, keepdims, "nan", xp)


def weighted_moments(
    x: ArrayT,
    axes: Axes | None,
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
    _checks.check_callable("cross_replica_sum", cross_replica_sum)
    _checks.check_real_dtype("frequency_weights", frequency_weights, xp)
    _checks.check_broadcasts_to("frequency_weights", frequency_weights, tuple(x.shape))
    normalized = _checks.normalize_axes("axes", axes, x.ndim, none_means_all=True)
    return _statistics(x, normalized, frequency_weights, cross_replica_sum, keepdims, "zero", xp)


def _statistics(
    x: Any,
    axes: tuple[int, ...],
    weights: Any,
    reducer: CrossReplicaSum | None,
    keepdims: bool,
    empty: EmptyStatistics,
    xp: Namespace,
    rule: ComputeRule = ComputeRule.MOMENTS,
) -> tuple[Any, Any]:
    """Mean and biased variance in x's dtype, computed under ``rule`` (``tf.nn.moments``')."""
    x_compute = astype(x, compute_dtype(xp, x.dtype, rule), xp)
    summary = two_pass_moments(x_compute, axes, xp=xp, weights=weights, reducer=reducer, empty=empty)
    mean, variance = summary.mean, biased_variance(summary, empty=empty, xp=xp)
    if not keepdims:
        mean, variance = xp.squeeze(mean, axis=axes), xp.squeeze(variance, axis=axes)
    return astype(mean, x.dtype, xp), astype(variance, x.dtype, xp)
