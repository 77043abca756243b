"""ONNX's ``BatchNormalization`` (opset 15), functionally.

The operator's inputs ``X, scale, B, input_mean, input_var`` (here ``x, scale, b,
input_mean, input_var``), attributes ``epsilon=1e-5``, ``momentum=0.9``,
``training_mode=0``, and outputs ``Y, running_mean, running_var``:

Its attributes are float32 (``epsilon``, ``momentum``: the values are rounded to
float32 first, as a model stores them).

- ``training_mode`` false: ``Y = (X − input_mean)/sqrt(input_var + epsilon)·scale + B``;
- ``training_mode`` true: ``Y`` with the batch mean and the population (biased)
  batch variance over every axis but 1, and
  ``running_mean = input_mean·momentum + current_mean·(1 − momentum)``,
  ``running_var = input_var·momentum + current_var·(1 − momentum)``: unlike
  PyTorch, momentum weighs the old value, and the variance is the biased one.

Types: ``T`` (x) and ``T1`` (scale, B) and ``T2`` (the statistics) are each
float16, bfloat16, float32 or float64, independently (scale and B share one,
input_mean and input_var another). Arithmetic runs in the widest of them, half
precision in float32 (ONNX Runtime's CPU kernel has float32 and float64 only and
runs float16 nodes in float32); Y is rounded once to x's dtype, the running
statistics to T2. Checked against ONNX Runtime 1.32 (``conformance/conventions/onnx.py``).
"""

from __future__ import annotations

from typing import Any

from .._lib import _checks
from .._lib._dtypes import astype, float32_value
from .._lib._typing import ArrayT, Namespace
from . import _common

#: ONNX's channel axis.
CHANNEL = 1


def onnx_batch_norm(
    x: ArrayT,
    scale: Any,
    b: Any,
    input_mean: Any,
    input_var: Any,
    epsilon: float = 1e-5,
    momentum: float = 0.9,
    training_mode: bool = False,
) -> tuple[ArrayT, Any, Any]:
    """ONNX ``BatchNormalization`` (opset 15): ``(y, running_mean, running_var)``.

    ``x`` is ``(N, C, ...)`` of rank ≥ 2; ``scale``, ``b`` (ONNX's ``B``),
    ``input_mean`` and ``input_var`` are ``[C]`` arrays of x's library and device,
    all required as in ONNX. ``training_mode`` (ONNX's 0/1 attribute, here a bool)
    normalizes with the batch mean and population variance and returns
    ``input_mean·momentum + batch_mean·(1 − momentum)`` and likewise for the
    variance; in inference ONNX has no running outputs, and ``input_mean`` and
    ``input_var`` come back as given, so a loop can pass the results on in either
    mode. Nothing is mutated.

    Examples
    --------
    >>> import numpy as np
    >>> from bn_portable.conventions import onnx_batch_norm
    >>> x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)      # (N, C, L)
    >>> scale, b = np.ones(2, np.float32), np.zeros(2, np.float32)
    >>> mean, var = np.zeros(2, np.float32), np.ones(2, np.float32)
    >>> y, mean1, var1 = onnx_batch_norm(x, scale, b, mean, var, training_mode=True)
    >>> print(mean1, var1)  # toward the mean 4.5 and population variance 10.9, momentum float32(0.9)
    [0.4500001  0.65000015] [1.9916669 1.9916669]
    >>> print(y[:, 0, 0])
    [-1.3619691 -0.1513299  1.0593094]
    """
    xp = _common.check_input("x", x)
    _checks.check_bool("training_mode", training_mode)
    # ONNX attributes of type FLOAT are float32: 1e-5 is 9.99999974737875e-06 and 0.9 is
    # 0.8999999761581421 to ONNX Runtime, in float64 arithmetic too.
    epsilon = float32_value(_checks.check_real("epsilon", epsilon, low=0.0))
    momentum = float32_value(_checks.check_real("momentum", momentum))
    for name, value in (("scale", scale), ("b", b), ("input_mean", input_mean), ("input_var", input_var)):
        if value is None:
            raise TypeError(f"{name} must be an array (ONNX's BatchNormalization requires it), got None")
    for pair in ({"scale": scale, "b": b}, {"input_mean": input_mean, "input_var": input_var}):
        _common.check_channel_parameters(pair, x, CHANNEL, xp=xp, dtypes=_common.FLOATING)
    compute = _compute_dtype(x, scale, input_mean, xp)
    if not training_mode:
        inv_std = _common.inverse_std(astype(input_var, compute, xp), epsilon, xp=xp)
        y = _common.normalize(
            x, input_mean, inv_std, scale, b, channel=CHANNEL, compute=compute, xp=xp
        )
        return y, input_mean, input_var
    summary = _common.batch_moments(x, CHANNEL, compute=compute, xp=xp)
    variance = _common.population_variance(summary, xp=xp)
    inv_std = _common.inverse_std(variance, epsilon, xp=xp)
    y = _common.normalize(x, summary.mean, inv_std, scale, b, channel=CHANNEL, compute=compute, xp=xp)
    # ONNX's momentum weighs the old value: old·momentum + new·(1 − momentum).
    running_mean = _common.moving_average(
        input_mean, summary.mean, old_weight=momentum, new_weight=1 - momentum,
        compute=compute, xp=xp,
    )
    running_var = _common.moving_average(
        input_var, variance, old_weight=momentum, new_weight=1 - momentum, compute=compute, xp=xp
    )
    return y, running_mean, running_var


def _compute_dtype(x: Any, scale: Any, statistic: Any, xp: Namespace) -> Any:
    """The widest of the three types, half precision counted as float32."""
    return xp.result_type(*(_common.opmath_dtype(a.dtype, xp) for a in (x, scale, statistic)))
