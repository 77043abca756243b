"""``batch_normalization`` and ``fused_batch_norm``: the normalizing ops.

Their arithmetic is the kernels' (``_kernels._normalize``): ``tf.nn.batch_normalization``
folds everything into ``x·inv + (offset − mean·inv)``, the fused kernel computes
``(x − mean)·(rsqrt(var + ε)·scale) + offset`` in float32 and rounds once.
"""

from __future__ import annotations

import numbers
from typing import Any

from ._kernels._normalize import bessel_correction, fused_inference, fused_training_core, normalize
from ._lib import _call_cache, _checks, _layout
from ._lib._backends import metadata, stop_gradient
from ._lib._compat import device
from ._lib._dtypes import scalar
from ._lib._typing import ArrayT, Namespace
from ._tf._plan import FUSED_INPUT_DTYPES


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
    y: ArrayT = normalize(x, mean, variance, offset, scale, variance_epsilon, xp=xp)
    return y


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
    arrays = metadata(x, scale, offset, mean, variance)
    python = tuple((type(v), v) for v in (epsilon, data_format, is_training, exponential_avg_factor))
    key = None if arrays is None else ("fused_batch_norm", arrays, python)
    xp, channel, epsilon, factor = _call_cache.remember(
        key,
        lambda: _check_fused_arguments(
            x, scale, offset, mean, variance, epsilon, data_format, is_training, exponential_avg_factor
        ),
    )
    if is_training:
        y, mean_out, variance_out = _fused_training_op(
            x, scale, offset, mean, variance, epsilon, channel, factor, xp
        )
        # The fused op's gradient ignores its statistics outputs.
        return y, stop_gradient(mean_out, xp), stop_gradient(variance_out, xp)
    y = fused_inference(x, scale, offset, mean, variance, epsilon, channel, xp=xp)
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
    epsilon: float,
    data_format: Any,
    is_training: Any,
    exponential_avg_factor: Any,
) -> tuple[Namespace, int, float, float]:
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


def _fused_training_op(
    x: Any,
    scale: Any,
    offset: Any,
    running_mean: Any,
    running_variance: Any,
    epsilon: float,
    channel: int,
    factor: float,
    xp: Namespace,
) -> tuple[Any, Any, Any]:
    """The fused op in training: y, and the statistics it returns (averaged when ``factor`` < 1)."""
    y, batch_mean, biased_variance, count = fused_training_core(
        x, scale, offset, epsilon, channel, xp=xp
    )
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


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
