"""``batch_normalization`` and ``fused_batch_norm``: the normalizing kernels.

The two differ in rounding, and TensorFlow's layer uses both, so both are kept
exactly as TensorFlow writes them:

- ``tf.nn.batch_normalization`` folds everything into ``x·inv + (offset − mean·inv)``
  in the parameters' dtype and casts the two terms to x's dtype;
- the fused kernel computes ``(x − mean)·(rsqrt(var + ε)·scale) + offset`` in
  float32 and rounds once.
"""

from __future__ import annotations

import numbers
from typing import Any

from . import _layout
from ._lib import _call_cache, _checks
from ._lib._autodiff import stop_gradient
from ._lib._compat import device
from ._lib._dtypes import astype, is_half, round_to_float32, scalar
from ._lib._sums import accurate_sum
from ._lib._typing import ArrayT
from ._native import overridable

FUSED_INPUT_DTYPES = ("float16", "bfloat16", "float32")


def batch_normalization(
    x: ArrayT, mean: Any, variance: Any, offset: Any, scale: Any, variance_epsilon: float
) -> ArrayT:
    """Normalize ``x`` with given statistics (``tf.nn.batch_normalization``).

    ``inv = rsqrt(variance + variance_epsilon)·scale`` and
    ``y = x·inv + (offset − mean·inv)``, both terms cast to ``x``'s dtype.
    ``mean``, ``variance``, ``offset`` and ``scale`` share one dtype, which may
    differ from ``x``'s; they broadcast against ``x``, or are Python numbers.
    ``offset`` and ``scale`` may be ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    >>> mean, variance = np.array([2.0, 3.0], np.float32), np.ones(2, np.float32)
    >>> print(bn.batch_normalization(x, mean, variance, None, None, 1e-3))
    [[-0.9995004 -0.9995005]
     [ 0.9995005  0.9995003]]

    The last digits differ from ``(x - mean) / sqrt(variance + 1e-3)`` as
    TensorFlow's do: without an offset it computes ``x·inv − mean·inv``.
    """
    parameters = {"mean": mean, "variance": variance, "offset": offset, "scale": scale}
    arrays = {k: v for k, v in parameters.items() if not _is_number(v)}
    xp = _checks.namespace(x=x, **arrays)
    _checks.check_floating("x", x, xp)
    for name, value in arrays.items():
        if value is None and name in ("mean", "variance"):
            raise TypeError(f"{name} must be an array or a number, got None")
        if value is not None:
            _checks.check_device(name, value, device(x))
            _checks.check_floating(name, value, xp)
            _checks.check_broadcasts_to(name, value, tuple(x.shape))
    _checks.check_same_dtype(arrays)
    variance_epsilon = _checks.check_real("variance_epsilon", variance_epsilon, low=0.0)
    # Numbers take the dtype of the array parameters, as TensorFlow's operators
    # convert a Python number to the other operand's dtype (float32 if none is an array).
    dtype = next((v.dtype for v in arrays.values() if v is not None), xp.float32)
    mean, variance, offset, scale = (
        xp.full((), float(v), dtype=dtype, device=device(x)) if _is_number(v) else v
        for v in (mean, variance, offset, scale)
    )
    y: ArrayT = normalize(x, mean, variance, offset, scale, variance_epsilon, xp)
    return y


@overridable
def normalize(
    x: Any, mean: Any, variance: Any, offset: Any, scale: Any, variance_epsilon: Any, xp: Any
) -> Any:
    """``tf.nn.batch_normalization`` without validation (the layer paths call it)."""
    inv = rsqrt(variance + variance_epsilon, xp)
    if scale is not None:
        inv = inv * scale
    shift = -mean * inv if offset is None else offset - mean * inv
    return x * xp.astype(inv, x.dtype) + xp.astype(shift, x.dtype)


def fused_batch_norm(
    x: ArrayT,
    scale: Any,
    offset: Any,
    mean: Any = None,
    variance: Any = None,
    *,
    epsilon: float = 0.001,
    data_format: str = "NHWC",
    is_training: bool = True,
    exponential_avg_factor: float = 1.0,
) -> tuple[ArrayT, ArrayT, ArrayT]:
    """TensorFlow's fused batch-norm kernel (``tf.compat.v1.nn.fused_batch_norm``).

    ``x`` is float16, bfloat16 or float32 of rank 4 or 5; ``scale``, ``offset``,
    ``mean`` and ``variance`` are float32 of shape ``[C]``. All arithmetic is
    float32 and ``y`` is rounded once to ``x``'s dtype.

    Training normalizes with the batch mean and biased variance and returns
    ``(y, batch_mean, batch_variance)`` where ``batch_variance`` is Bessel-corrected
    (``n / max(n − 1, 1)``); with ``exponential_avg_factor`` f ≠ 1 the returned
    statistics are ``(1 − f)·old + f·batch``. Inference normalizes with ``mean`` and
    ``variance`` and returns them unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.array([1.0, 10.0, 3.0, 30.0], dtype=np.float32).reshape(2, 1, 1, 2)  # NHWC
    >>> scale, offset = np.ones(2, np.float32), np.zeros(2, np.float32)
    >>> y, mean, variance = bn.fused_batch_norm(x, scale, offset)
    >>> print(mean, variance)  # the variance is Bessel-corrected: n = 2, biased [1, 100]
    [ 2. 20.] [  2. 200.]
    >>> y, _, _ = bn.fused_batch_norm(x, scale, offset, mean, variance, is_training=False)
    >>> print(y.reshape(2, 2))
    [[-0.7069301  -0.70710504]
     [ 0.7069301   0.70710504]]
    """
    arrays = _call_cache.signature(x, scale, offset, mean, variance)
    python = tuple((type(v), v) for v in (epsilon, data_format, is_training, exponential_avg_factor))
    key = None if arrays is None else ("fused_batch_norm", arrays, python)
    xp, channel, epsilon, factor = _call_cache.remember(
        key,
        lambda: _check_fused_arguments(
            x, scale, offset, mean, variance, epsilon, data_format, is_training, exponential_avg_factor
        ),
    )
    if is_training:
        y, mean_out, variance_out = fused_training(
            x, scale, offset, mean, variance, epsilon, channel, factor, xp
        )
        # The fused op's gradient ignores its statistics outputs.
        return y, stop_gradient(mean_out, xp), stop_gradient(variance_out, xp)
    y = fused_inference(x, scale, offset, mean, variance, epsilon, channel, xp)
    if _layout.elements_per_channel(x, channel) == 0:
        # TensorFlow's kernel returns NaN statistics for an empty batch, in
        # inference too (it does not pass the given statistics through).
        nan = xp.full((x.shape[channel],), xp.nan, dtype=xp.float32, device=device(x))
        return y, nan, nan
    return y, mean, variance


def _check_fused_arguments(
    x: Any,
    scale: Any,
    offset: Any,
    mean: Any,
    variance: Any,
    epsilon: Any,
    data_format: Any,
    is_training: Any,
    exponential_avg_factor: Any,
) -> Any:
    """``fused_batch_norm``'s checks: ``(xp, channel axis, epsilon, factor)`` or an error."""
    xp = _checks.namespace(x=x, scale=scale, offset=offset, mean=mean, variance=variance)
    channel = _layout.fused_channel_axis(x, data_format)
    _checks.check_known_shape("x", x)
    _checks.check_floating("x", x, xp, FUSED_INPUT_DTYPES)
    _checks.check_bool("is_training", is_training)
    epsilon = _checks.check_real("epsilon", epsilon, low=0.0)
    factor = _checks.check_real("exponential_avg_factor", exponential_avg_factor, low=0.0, high=1.0)
    channels = x.shape[channel]
    parameters = {"scale": scale, "offset": offset, "mean": mean, "variance": variance}
    for name, value in parameters.items():
        if value is None:
            continue
        _checks.check_device(name, value, device(x))
        _checks.check_floating(name, value, xp, ("float32",))
        _checks.check_shape(name, value, (channels,), f"one value per channel of x in {data_format}")
    for name in ("scale", "offset"):
        if parameters[name] is None:
            raise TypeError(f"{name} must be a float32 array of shape ({channels},), got None")
    if (not is_training or factor != 1.0) and (mean is None or variance is None):
        raise ValueError(
            "mean and variance must be given when is_training is False or "
            f"exponential_avg_factor != 1 (got is_training={is_training}, "
            f"exponential_avg_factor={factor})"
        )
    return xp, channel, epsilon, factor


def fused_training(
    x: Any,
    scale: Any,
    offset: Any,
    running_mean: Any,
    running_variance: Any,
    epsilon: Any,
    channel: Any,
    factor: Any,
    xp: Any,
) -> Any:
    """The fused kernel in training mode: y and the statistics it returns."""
    y, batch_mean, biased_variance, count = fused_training_core(x, scale, offset, epsilon, channel, xp)
    bessel = bessel_correction(count, xp, device(x))
    if factor == 1.0:
        return y, batch_mean, biased_variance * bessel
    dev = device(x)
    keep = scalar(xp, 1.0, xp.float32, dev) - scalar(xp, factor, xp.float32, dev)
    new = scalar(xp, factor, xp.float32, dev)
    mean_out = keep * running_mean + new * batch_mean
    if isinstance(bessel, float):  # 0-d arrays on both sides: NumPy 1.x would promote
        bessel = scalar(xp, bessel, xp.float32, dev)  # a 0-d array times a float to float64
    variance_out = keep * running_variance + (new * bessel) * biased_variance
    return y, mean_out, variance_out


@overridable
def fused_training_core(
    x: Any, scale: Any, offset: Any, epsilon: Any, channel: Any, xp: Any
) -> Any:
    """y, batch mean, biased batch variance and element count per channel."""
    axes = _layout.reduction_axes(x.ndim, channel)
    count = _layout.elements_per_channel(x, channel)
    x32 = astype(x, xp.float32, xp)
    batch_mean, biased_variance = fused_moments(x32, axes, count, xp)
    mean_b = _layout.per_channel(batch_mean, x.ndim, channel, xp)
    y = fused_affine(x32, mean_b, biased_variance, scale, offset, epsilon, x.ndim, channel, xp)
    return xp.astype(y, x.dtype), batch_mean, biased_variance, count


def bessel_correction(count: Any, xp: Any, dev: Any) -> Any:
    """``n / max(n − 1, 1)`` rounded to float32 (TF's guard gives variance 0 when n = 1).

    A Python float: multiplying a float32 array by it gives the bits the float32
    constant would (``round_to_float32``), with no array to make. A 0-d array
    while ``torch.compile`` traces, where the count may be symbolic (a batch
    size the compiler made dynamic) and the compiler folds the constant anyway.
    """
    value = count / max(count - 1, 1)
    if _call_cache.tracing():
        return scalar(xp, value, xp.float32, dev)
    return round_to_float32(value)


@overridable
def fused_inference(
    x: Any, scale: Any, offset: Any, mean: Any, variance: Any, epsilon: Any, channel: Any, xp: Any
) -> Any:
    """The fused kernel in inference mode: y from the given statistics."""
    x32 = astype(x, xp.float32, xp)
    mean_b = _layout.per_channel(mean, x.ndim, channel, xp)
    y = fused_affine(x32, mean_b, variance, scale, offset, epsilon, x.ndim, channel, xp)
    return xp.astype(y, x.dtype)


def fused_moments(x32: Any, axes: Any, count: Any, xp: Any) -> Any:
    """Mean and biased variance as the fused kernel computes them (sum × 1/n)."""
    if count == 0:
        # TensorFlow's kernel returns NaN statistics for an empty batch.
        nan = xp.full((x32.shape[_missing_axis(x32.ndim, axes)],), xp.nan, dtype=xp.float32, device=device(x32))
        return nan, nan
    inverse_count = scalar(xp, 1.0 / count, xp.float32, device(x32))
    mean = accurate_sum(x32, axes, xp, keepdims=True) * inverse_count
    centered = x32 - mean
    variance = accurate_sum(centered * centered, axes, xp) * inverse_count
    return xp.reshape(mean, (-1,)), variance


def fused_affine(
    x32: Any,
    mean_b: Any,
    variance: Any,
    scale: Any,
    offset: Any,
    epsilon: Any,
    rank: Any,
    channel: Any,
    xp: Any,
) -> Any:
    """``(x − mean)·(rsqrt(var + ε)·scale) + offset`` in float32."""
    factor = rsqrt(variance + epsilon, xp) * scale
    factor_b = _layout.per_channel(factor, rank, channel, xp)
    offset_b = _layout.per_channel(offset, rank, channel, xp)
    return (x32 - mean_b) * factor_b + offset_b


def rsqrt(value: Any, xp: Any) -> Any:
    """``1 / sqrt(value)``, rounded once for half precision, as TensorFlow's rsqrt.

    The array API has no rsqrt. In float16 and bfloat16, ``1 / sqrt`` would round
    twice (a quarter of float16 inputs then differ from TensorFlow by an ulp), so
    it is computed in float32 and rounded once.
    """
    if is_half(value.dtype):
        return xp.astype(1 / xp.sqrt(xp.astype(value, xp.float32)), value.dtype)
    return 1 / xp.sqrt(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _missing_axis(rank: Any, axes: Any) -> Any:
    return next(axis for axis in range(rank) if axis not in axes)
