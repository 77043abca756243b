"""Folding's arithmetic: a batch norm's per-channel scale and shift in float64, rounded once.

Array-API arithmetic with ``xp`` as a keyword and no validation (``bn_portable.folding``
and ``bn_portable._torch_fold`` check their arguments). Every input is float64.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from ._lib._typing import Namespace


@dataclass(frozen=True)
class FloatFormat:
    """What the risk checks need to know of a floating dtype, whichever library holds it."""

    name: str
    #: Significand bits, the implicit one included (float16: 11).
    bits: int
    #: The exponent of the smallest normal number (float16: -14, i.e. 2**-14).
    min_exponent: int
    #: The largest finite number.
    max: float

    @property
    def epsilon(self) -> float:
        """The spacing of numbers just above 1 (one ulp of 1)."""
        return 2.0 ** (1 - self.bits)

    @property
    def tiny(self) -> float:
        """The smallest normal number; below it numbers are subnormal and lose bits."""
        return 2.0**self.min_exponent


#: The floating dtypes a batch norm is folded into. Spelled out rather than read from
#: ``xp.finfo``: NumPy has no bfloat16, and the array API standard has no finfo for it.
FORMATS = {
    "float16": FloatFormat("float16", 11, -14, 65504.0),
    "bfloat16": FloatFormat("bfloat16", 8, -126, float.fromhex("0x1.fep127")),
    "float32": FloatFormat("float32", 24, -126, float.fromhex("0x1.fffffep127")),
    "float64": FloatFormat("float64", 53, -1022, sys.float_info.max),
}


def round_to(value: Any, fmt: FloatFormat, *, xp: Namespace) -> Any:
    """``value`` (float64) rounded to the nearest ``fmt`` number, ties to even; still float64.

    The result is exactly representable in ``fmt`` (or infinite beyond its range), so the
    cast that follows is exact on every library. A library's own float64 cast may round
    twice: PyTorch converts float64 to float16 and bfloat16 through float32, which moves
    a value that lands on a float16 tie by one ulp.
    """
    if fmt.bits == 53:
        return value
    magnitude = xp.abs(value)
    regular = xp.isfinite(value) & (magnitude > 0)
    safe = xp.where(regular, magnitude, xp.ones_like(magnitude))
    exponent = xp.floor(xp.log2(safe))
    # log2 may land one off next to a power of two; powers of two are exact, so correct it.
    exponent = xp.where(2.0**exponent > safe, exponent - 1, exponent)
    exponent = xp.where(2.0 ** (exponent + 1) <= safe, exponent + 1, exponent)
    # Subnormals share the smallest normal's spacing.
    quantum = 2.0 ** (xp.maximum(exponent, xp.full_like(exponent, fmt.min_exponent)) - (fmt.bits - 1))
    # value / quantum is exact (a power of two), and round() rounds half to even.
    rounded = xp.round(value / quantum) * quantum
    infinite = xp.where(value < 0, xp.full_like(value, -math.inf), xp.full_like(value, math.inf))
    rounded = xp.where(xp.abs(rounded) > fmt.max, infinite, rounded)
    return xp.where(regular, rounded, value)


def fold(
    mean: Any, variance: Any, gamma: Any, beta: Any, epsilon: float, *, xp: Namespace
) -> tuple[Any, Any, Any]:
    """``(scale, shift, sigma)`` in float64: ``y = x·scale + shift`` is the batch norm's inference.

    ``gamma`` and ``beta`` may be None (1 and 0). Every convention's inference is
    ``(x - mean)·gamma/sqrt(variance + epsilon) + beta`` with its stored statistics.
    """
    total = variance + epsilon
    # NaN where variance + epsilon is not positive (risks reports it as nonfinite),
    # without the division by zero and square root of a negative number NumPy warns of.
    positive = total > 0
    ones = xp.ones_like(total)
    sigma = xp.where(positive, xp.sqrt(xp.where(positive, total, ones)), xp.full_like(total, math.nan))
    scale = 1.0 / sigma if gamma is None else gamma / sigma
    shift = -(mean * scale) if beta is None else beta - mean * scale
    return scale, shift, sigma


def risks(
    mean: Any, variance: Any, sigma: Any, gamma: Any, beta: Any, scale: Any, shift: Any,
    fmt: FloatFormat, max_ulps: float, sigmas: float, *, xp: Namespace,
) -> dict[str, Any]:
    """Per-channel masks (and the ulps estimate) of what folding into ``fmt`` costs.

    ``scale`` and ``shift`` are the exact float64 values; their roundings are compared
    with them. The estimate, for inputs in ``mean ± sigmas·sigma``, of what the fold
    adds over the unfolded ``(x - mean)·inv + beta``: the roundings of scale and shift
    (``reach·|Δscale| + |Δshift|``) and of the large intermediate ``x·scale`` before
    the shift cancels it (half an ulp of ``reach·|scale|``), in ulps of the largest
    output ``|beta| + sigmas·|gamma|``. The unfolded form subtracts the mean first and
    never holds that intermediate.
    """
    scale_r, shift_r = round_to(scale, fmt, xp=xp), round_to(shift, fmt, xp=xp)
    gamma_abs = xp.ones_like(scale) if gamma is None else xp.abs(gamma)
    beta_abs = xp.zeros_like(scale) if beta is None else xp.abs(beta)
    finite = xp.isfinite(scale) & xp.isfinite(shift) & xp.isfinite(sigma)
    overflow = finite & ~(xp.isfinite(scale_r) & xp.isfinite(shift_r))
    usable = finite & ~overflow
    zero = xp.zeros_like(scale)
    reach = xp.abs(mean) + sigmas * sigma
    output = beta_abs + sigmas * gamma_abs
    scale_error = xp.where(usable, xp.abs(scale_r - scale), zero)
    shift_error = xp.where(usable, xp.abs(shift_r - shift), zero)
    added = reach * scale_error + shift_error + (fmt.epsilon / 2) * reach * xp.where(usable, xp.abs(scale_r), zero)
    added = xp.where(xp.isfinite(added), added, xp.full_like(added, math.inf))
    ulp = fmt.epsilon * output
    positive = ulp > 0
    ulps = xp.where(positive, added / xp.where(positive, ulp, xp.ones_like(ulp)),
                    xp.where(added > 0, xp.full_like(added, math.inf), zero))
    ulps = xp.where(usable, ulps, xp.full_like(ulps, math.inf))
    # A subnormal scale loses bits of every output. A subnormal shift only matters
    # where its lost bits reach half an ulp of the output (1e-6 beside outputs of
    # order 1 rounds harmlessly), so that part is weighed against the output.
    scale_low = (scale != 0) & (xp.abs(scale_r) < fmt.tiny)
    shift_low = (shift != 0) & (xp.abs(shift_r) < fmt.tiny) & (shift_error * 2 > ulp)
    # The unfolded batch norm holds the running variance in the dtype: beyond its range
    # (float16's 65504) it becomes inf and the channel's output collapses to beta.
    variance_r = round_to(variance, fmt, xp=xp)
    return {
        "scale": scale_r,
        "shift": shift_r,
        "ulps": ulps,
        "cancellation": usable & (ulps > max_ulps),
        "overflow": overflow,
        "subnormal": usable & (scale_low | shift_low),
        "nonfinite": ~finite,
        "variance_overflow": xp.isfinite(variance) & ~xp.isfinite(variance_r),
    }


def low_weights(weight: Any, folded: Any, fmt: FloatFormat, *, xp: Namespace) -> tuple[Any, Any]:
    """Per output channel (axis 0): ``(overflow, subnormal)`` of folded weights in ``fmt``.

    ``weight`` and ``folded`` (``weight·scale``, exact float64) have the output channel
    first. Subnormal: the channel's largest folded weight is below the normal range
    while its largest weight was not. A few small weights turning subnormal beside
    normal ones lose less than half an ulp of the largest, which the output cannot see.
    """
    rows = (weight.shape[0], -1)
    folded_r = xp.reshape(round_to(folded, fmt, xp=xp), rows)
    folded_rows = xp.reshape(folded, rows)
    overflow = xp.any(xp.isfinite(folded_rows) & ~xp.isfinite(folded_r), axis=1)
    largest = xp.max(xp.abs(folded_r), axis=1)
    largest_before = xp.max(xp.abs(xp.reshape(round_to(weight, fmt, xp=xp), rows)), axis=1)
    nonzero = xp.any(folded_rows != 0, axis=1)
    return overflow, nonzero & (largest < fmt.tiny) & (largest_before >= fmt.tiny)
