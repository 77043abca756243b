"""Moving averages of the layer's statistics, rounded as TensorFlow rounds them.

``v ← v − (v − value)·a`` with ``a = 1 − decay``. Where ``a`` is rounded matters
at the last bit, and TensorFlow has two conventions:

- ``"python"``: ``1 − decay`` is computed in double precision, converted to a
  float32 tensor and cast to the variable's dtype (``assign_moving_average``, the
  Keras layer's non-fused updates);
- ``"float32"``: ``decay`` is first made a float32 tensor and ``1 − decay`` is
  computed in float32 (the Keras layer's fused updates in graph mode and XLA).

Keras 2 outside graph mode and XLA (eager calls, ``tf.function``, ``fit``) lets
the fused kernel move the averages itself, with another formula:
``kernel_average``.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from .._lib._backends import compiling, operand
from .._lib._compat import device
from .._lib._dtypes import astype, dtype_name, round_to_float32, scalar, tf_constant
from .._lib._typing import Device, Namespace
from .._native import Kernel, overridable

#: Where ``1 − decay`` is rounded (see the module doc).
WeightRounding: TypeAlias = Literal["python", "float32"]


def update_weight(decay: float, rounding: WeightRounding, dtype: Any, xp: Namespace, dev: Device) -> Any:
    """``a = 1 − decay`` as a 0-d array of ``dtype``, rounded per ``rounding``."""
    if rounding == "python":
        return tf_constant(xp, 1.0 - decay, dtype, dev)
    # 0-d arrays on both sides: NumPy 1.x would promote ``1.0 - array`` to float64.
    return scalar(xp, 1.0, dtype, dev) - tf_constant(xp, decay, dtype, dev)


def python_weight(decay: float, rounding: WeightRounding, dtype: str) -> float:
    """The value ``update_weight`` gives a float32 or float64 variable, as a Python float.

    The value is exactly representable in the variable's dtype, so multiplying
    by it as a Python float gives the same bits as the 0-d array would, on
    every backend: a float32 array either converts it to float32 (exactly) or
    multiplies in double, where the product of two float32 values is exact
    before it is rounded to float32.
    """
    if rounding == "python":
        return round_to_float32(1.0 - decay)
    difference = 1.0 - round_to_float32(decay)  # exact in double
    return round_to_float32(difference) if dtype == "float32" else difference


def moving_average(
    variable: Any, value: Any, decay: float, rounding: WeightRounding, *, xp: Namespace
) -> Any:
    """``variable − (variable − value)·(1 − decay)``, a new array."""
    weight = average_weight(variable, decay, rounding, xp=xp)
    return move_toward(variable, astype(value, variable.dtype, xp), weight, xp=xp)


def average_weight(variable: Any, decay: float, rounding: WeightRounding, *, xp: Namespace) -> Any:
    """``1 − decay`` rounded per ``rounding``, as ``move_toward`` takes it for ``variable``:
    a Python float for float32 and float64 variables (no array operations to make it), a
    0-d array of their dtype for half-precision ones and while PyTorch's compiler traces."""
    number = number_weight(decay, rounding, variable.dtype, xp)
    if number is not None:
        return number
    return update_weight(decay, rounding, variable.dtype, xp, device(variable))


def number_weight(decay: float, rounding: WeightRounding, dtype: Any, xp: Namespace) -> float | None:
    """``average_weight`` for variables of ``dtype`` where it is a Python float, else None.

    A function of the dtype and whether the compiler traces, never of values: a
    layer's plan holds it (``_tf._plan``), made once per call signature.
    """
    name = dtype_name(dtype)
    if name in ("float32", "float64") and not compiling(xp):
        return python_weight(decay, rounding, name)
    return None


@overridable(Kernel.MOVE_TOWARD)
def move_toward(variable: Any, value: Any, weight: Any, *, xp: Namespace) -> Any:
    """``variable − (variable − value)·weight``, value in the variable's dtype, weight a
    number exact in it or a 0-d array of it: TensorFlow's update, a new array."""
    return variable - (variable - value) * operand(weight, variable)


def kernel_average(
    variable: Any, value: Any, decay: float, *, value_factor: Any = 1.0, xp: Namespace
) -> Any:
    """The fused kernel's own update, ``(1 − f)·variable + (f·value_factor)·value``, a new array.

    ``f = float32(1 − decay)`` is the kernel's ``exponential_avg_factor`` (Keras
    passes ``1 − momentum`` computed in double), ``1 − f`` is computed in
    float32, and ``f·value_factor`` (the Bessel factor, for the variance) is
    rounded to float32 before it multiplies ``value``, as in TensorFlow's CPU
    kernel. The variables are float32 on this path.
    """
    factor = round_to_float32(1.0 - decay)
    keep = round_to_float32(1.0 - factor)
    if isinstance(value_factor, float):
        weight: Any = round_to_float32(factor * value_factor)
    else:  # a float32 array: a count summed over replicas, or traced by the compiler
        weight = value_factor * factor
    if compiling(xp):  # 0-d arrays of the variable's dtype, as moving_average uses
        dev = device(variable)
        keep = scalar(xp, keep, variable.dtype, dev)
        if isinstance(weight, float):
            weight = scalar(xp, weight, variable.dtype, dev)
    return keep * variable + weight * astype(value, variable.dtype, xp)


def zero_debiased_average(
    biased: Any, local_step: Any, value: Any, decay: float, *, xp: Namespace
) -> tuple[Any, Any, Any]:
    """TensorFlow's zero-debiased moving average (``zero_debias=True``).

    Returns ``(unbiased, new_biased, new_local_step)``: the biased average
    moves toward ``value``, the step counts up, and the debiased mean is
    ``biased / (1 − (1 − a)^t)``.
    """
    weight = update_weight(decay, "python", biased.dtype, xp, device(biased))
    new_biased = biased - (biased - xp.astype(value, biased.dtype)) * weight
    # 0-d arrays throughout: NumPy 1.x promotes a 0-d array combined with a
    # Python number to float64. asarray: NumPy turns 0-d results into scalars.
    one = scalar(xp, 1.0, local_step.dtype, device(local_step))
    new_step = xp.asarray(local_step + one)
    bias_factor = one - xp.pow(one - weight, new_step)
    return new_biased / bias_factor, new_biased, new_step
