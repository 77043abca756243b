"""Moving averages of the layer's statistics, rounded as TensorFlow rounds them.

``v ← v − (v − value)·a`` with ``a = 1 − decay``. Where ``a`` is rounded matters
at the last bit, and TensorFlow has two conventions:

- ``"python"``: ``1 − decay`` is computed in double precision, converted to a
  float32 tensor and cast to the variable's dtype (``assign_moving_average``, the
  Keras layer's non-fused updates);
- ``"float32"``: ``decay`` is first made a float32 tensor and ``1 − decay`` is
  computed in float32 (the Keras layer's fused updates).
"""

from __future__ import annotations

from typing import Any

from ._lib._compat import device
from ._lib._dtypes import tf_constant


def update_weight(decay: float, rounding: str, dtype: Any, xp: Any, dev: Any) -> Any:
    """``a = 1 − decay`` as a 0-d array of ``dtype``, rounded per ``rounding``."""
    if rounding == "python":
        return tf_constant(xp, 1.0 - decay, dtype, dev)
    return 1.0 - tf_constant(xp, decay, dtype, dev)


def moving_average(variable: Any, value: Any, decay: float, rounding: str, xp: Any) -> Any:
    """``variable − (variable − value)·(1 − decay)``, a new array."""
    weight = update_weight(decay, rounding, variable.dtype, xp, device(variable))
    return variable - (variable - xp.astype(value, variable.dtype)) * weight


def zero_debiased_average(
    biased: Any, local_step: Any, value: Any, decay: float, xp: Any
) -> tuple[Any, Any, Any]:
    """TensorFlow's zero-debiased moving average (``zero_debias=True``).

    Returns ``(unbiased, new_biased, new_local_step)``: the biased average
    moves toward ``value``, the step counts up, and the debiased mean is
    ``biased / (1 − (1 − a)^t)``.
    """
    weight = update_weight(decay, "python", biased.dtype, xp, device(biased))
    new_biased = biased - (biased - xp.astype(value, biased.dtype)) * weight
    # asarray: NumPy turns 0-d results into scalars; the state holds arrays.
    new_step = xp.asarray(local_step + 1)
    bias_factor = 1 - xp.pow(1 - weight, new_step)
    return new_biased / bias_factor, new_biased, new_step
