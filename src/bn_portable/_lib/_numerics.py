"""Small numerical building blocks the array API lacks, written once."""

from __future__ import annotations

from typing import Any

from ._dtypes import is_half, round_to_float32
from ._typing import Namespace


def rsqrt(value: Any, xp: Namespace) -> Any:
    """``1 / sqrt(value)``, rounded once for half precision, as TensorFlow's rsqrt.

    The array API has no rsqrt. In float16 and bfloat16, ``1 / sqrt`` would round
    twice (a quarter of float16 inputs then differ from TensorFlow by an ulp), so
    it is computed in float32 and rounded once.
    """
    if is_half(value.dtype):
        return xp.astype(1 / xp.sqrt(xp.astype(value, xp.float32)), value.dtype)
    return 1 / xp.sqrt(value)


def divide_no_nan(numerator: Any, denominator: Any, xp: Namespace) -> Any:
    """``numerator / denominator``, and 0 where the denominator is 0 (TensorFlow's ``div_no_nan``).

    The denominator is replaced before dividing so that no backend warns about
    (or traps on) a division by zero that is thrown away anyway.
    """
    is_zero = denominator == 0
    safe_denominator = xp.where(is_zero, xp.ones_like(denominator), denominator)
    return xp.where(is_zero, xp.zeros_like(numerator), numerator / safe_denominator)


def bessel_factor(count: int) -> float:
    """TensorFlow's fused kernel's Bessel factor ``n / max(n − 1, 1)``, rounded to float32, as
    a Python float (its guard gives the variance 0 when n = 1); eagerly, for a count that is
    a number."""
    return round_to_float32(count / max(count - 1, 1))
