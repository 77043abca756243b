"""Mergeable statistics: ``PartialMoments``, ``partial_moments`` and ``merge_moments``.

A chunk of data is summarized by its per-channel count (or total weight), mean
and ``m2``, the sum of squared deviations from that mean. Two summaries merge
exactly (Chan, Golub and LeVeque, 1979)::

    n = nₐ + n_b,  δ = μ_b − μₐ,  μ = μₐ + δ·n_b/n,  m2 = m2ₐ + m2_b + δ²·nₐ·n_b/n

which never subtracts two large sums (the one-pass ``E[x²] − E[x]²`` does), so
merging in any order or grouping gives the statistics of the concatenated data
up to rounding. Each chunk's own mean and m2 are two-pass, as
``tf.nn.moments``. Half-precision inputs are summarized in float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._kernels._moments import Moments, merge_two, two_pass_moments
from ._lib import _checks
from ._lib._compat import device
from ._lib._dtypes import ComputeRule, astype, compute_dtype, dtype_name
from ._lib._numerics import divide_no_nan
from ._lib._typing import Axes, Namespace


class PartialMoments(NamedTuple):
    """Per-channel ``count`` (or total weight), ``mean`` and ``m2`` (Σ squared deviations).

    A NamedTuple, so a pytree for JAX and plain data everywhere; all three
    arrays share one shape and dtype (float32 for half-precision data).

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> part = bn.partial_moments(np.array([1.0, 2.0, 3.0, 6.0], np.float32), axes=0)
    >>> print(part.count, part.mean, part.m2)
    4.0 3.0 14.0
    >>> mean, variance = part.mean_variance()  # m2 / n; bessel=True divides by n − 1
    >>> print(mean, variance)
    3.0 3.5
    """

    count: Any
    mean: Any
    m2: Any

    def mean_variance(self, bessel: bool = False) -> tuple[Any, Any]:
        """``(mean, variance)``: ``m2 / n``, or with ``bessel=True`` ``m2 / max(n − 1, 1)``.

        The Bessel form is the fused kernel's ``n / max(n − 1, 1)`` times the
        biased variance. Zero count gives mean and variance 0, not NaN.
        """
        _checks.check_bool("bessel", bessel)
        xp = _checks.namespace(count=self.count)
        if not bessel:
            return self.mean, divide_no_nan(self.m2, self.count, xp)
        one = xp.ones_like(self.count)
        return self.mean, self.m2 / xp.maximum(self.count - one, one)


def partial_moments(
    x: Any, axes: Axes | None, *, frequency_weights: Any = None, mask: Any = None
) -> PartialMoments:
    """The mergeable summary of ``x`` over ``axes``.

    Parameters
    ----------
    x : array
        Real floating input.
    axes : int, sequence of int, or None
        Axes to reduce (None: every axis); the summary has ``x``'s shape without them.
    frequency_weights : array or None
        Broadcasts to ``x``; ``count`` is then the total weight and ``mean`` and
        ``m2`` are weighted (``Σw·x / Σw`` and ``Σw·(x − mean)²``), as in
        ``tf.nn.weighted_moments``.
    mask : array or None
        Keras 3's meaning, as in ``moments``: broadcasts to ``x``, bool, integer
        or real floating; elements where it is 0 do not count (``count`` is
        ``Σm``, so summaries of shards with uneven masks merge exactly). The
        same arithmetic as ``frequency_weights``, of which it takes the place:
        the two together are refused.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]], np.float32)
    >>> part = bn.partial_moments(x, axes=0)  # per column
    >>> print(part.count, part.mean, part.m2)
    [3. 3.] [ 3. 20.] [  8. 200.]
    """
    xp = _checks.namespace(x=x, frequency_weights=frequency_weights, mask=mask)
    _checks.check_floating("x", x, xp)
    _checks.check_known_shape("x", x)
    if frequency_weights is not None and mask is not None:
        raise ValueError(
            "frequency_weights and mask cannot both be given (a mask is frequency weights "
            "of 0 and 1): pass their product as frequency_weights"
        )
    weights, name = (mask, "mask") if mask is not None else (frequency_weights, "frequency_weights")
    if weights is not None:
        _checks.check_device(name, weights, device(x))
        _checks.check_real_dtype(name, weights, xp)
        _checks.check_broadcasts_to(name, weights, tuple(x.shape))
    normalized = _checks.normalize_axes("axes", axes, x.ndim, none_means_all=True)
    return summarize(x, normalized, weights, xp)


def summarize(x: Any, axes: tuple[int, ...], weights: Any, xp: Namespace) -> PartialMoments:
    """``partial_moments`` without validation: the two-pass kernel, half precision in float32."""
    x = astype(x, compute_dtype(xp, x.dtype, ComputeRule.HALF_IN_FLOAT32), xp)
    summary = two_pass_moments(x, axes, xp=xp, weights=weights, empty="zero")
    count = summary.count
    if isinstance(count, int):  # a local count: as an array of the summary's dtype and shape
        count = xp.full_like(summary.mean, float(count))
    parts = (count, summary.mean, summary.m2)
    return PartialMoments(*(xp.squeeze(a, axis=axes) if axes else a for a in parts))


def merge_moments(*parts: PartialMoments) -> PartialMoments:
    """Merge any number of summaries into the summary of all their data (exact, stable).

    Merged pairwise as a balanced tree, so rounding grows like log₂ of the
    number of parts; the result does not depend on the order or grouping of
    the parts beyond that rounding.

    Accuracy: each part's mean is rounded at the mean's own magnitude, and the
    merge squares differences of means, so the merged ``m2`` carries a
    relative error of about ``eps·|mean|/σ`` (σ the spread; eps of the
    summary's dtype), where one two-pass over all the data has ``eps``. When
    ``|mean| ≫ σ`` summarize data shifted by a rough mean (``x − k``, adding
    ``k`` back to the merged mean), as ``recalibrate`` does.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> a, b = np.array([1.0, 2.0, 3.0], np.float32), np.array([6.0, 8.0], np.float32)
    >>> merged = bn.merge_moments(bn.partial_moments(a, 0), bn.partial_moments(b, 0))
    >>> print(*merged.mean_variance())
    4.0 6.8
    >>> print(*bn.moments(np.concatenate([a, b]), axes=0))  # the same, from all the data at once
    4.0 6.8
    """
    if not parts:
        raise TypeError("merge_moments needs at least one PartialMoments, got none")
    for index, part in enumerate(parts):
        if not isinstance(part, PartialMoments):
            raise TypeError(
                f"parts[{index}] must be a PartialMoments (from partial_moments), got {type(part).__name__}"
            )
    first = parts[0]
    xp = _checks.namespace(**{"parts[0].count": first.count})
    for index, part in enumerate(parts):
        for field in PartialMoments._fields:
            value = getattr(part, field)
            _checks.check_namespace(f"parts[{index}].{field}", value, xp, "parts[0].count")
            if tuple(value.shape) != tuple(first.count.shape) or value.dtype != first.count.dtype:
                raise ValueError(
                    f"parts[{index}].{field} has shape {tuple(value.shape)} and dtype "
                    f"{dtype_name(value.dtype)}; every part must match parts[0].count "
                    f"({tuple(first.count.shape)}, {dtype_name(first.count.dtype)})"
                )
    level = list(parts)
    while len(level) > 1:
        merged = [
            PartialMoments(*merge_two(Moments(*level[i]), Moments(*level[i + 1]), xp=xp))
            for i in range(0, len(level) - 1, 2)
        ]
        level = merged + ([level[-1]] if len(level) % 2 else [])
    return level[0]


__all__ = ["PartialMoments", "merge_moments", "partial_moments"]
