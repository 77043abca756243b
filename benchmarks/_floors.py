"""The floor in Python: a layer path's formula in the fewest whole-array operations.

Within the accuracy contract (conformance/README.md), not TensorFlow's sequence of
operations, in the array's own library (PyTorch or NumPy): the statistics in two
passes (per-channel sums over a channel-grouped view, then the deviations from the
mean squared in place and summed), the two moving averages ``v − (v − value)·(1 − decay)``
(one fused multiply-add each on PyTorch, ``torch.lerp``, as bn_portable's; NumPy has
none: TensorFlow's three small operations; the fused path's variance Bessel-corrected
first, ``variance_target``), and y by the
fused formula ``(x − μ)·(rsqrt(σ² + ε)·γ) + β`` (no fold of μ into the offset:
three passes, or two on PyTorch where the channels are innermost in memory, the
scale and shift one fused multiply-add, which is quicker there only) or the non-fused ``x·inv + (β − μ·inv)`` (two passes: no fused
multiply-add, which would lose TensorFlow's exact cancellation where x = μ). Half
input is summed in float32 and normalized in float32 (type promotion against the
float32 statistics), y rounded once to x's dtype.

The sums are each library's accurate one: ``torch.sum`` (cascade summation), and
for NumPy float32 partials added in float64: NumPy's pairwise sum along each
contiguous stretch (NCHW), or running sums down at most ``NUMPY_PARTIAL`` rows
(channels last), as bn_portable's NumPy kernels bound their Σx. A plain ``np.sum``
down 10⁵ rows adds them one by one in float32, which the contract rules out.

``layer_paths.py`` times these per layer (``floor …`` rows), ``call_overhead.py``
at small sizes, and ``_models.FloorBatchNorm`` puts them in a model, so that an
end-to-end ratio has its floor too. Not a strict bound: cache blocking beats it
where fresh memory costs more than the arithmetic.

``checked`` adds what every checked call reads before its arithmetic, the cheapest
form the checks can take: the call's arrays' metadata (type, shape, dtype, and for
PyTorch device and layout: ``_backends.metadata``) as one key, looked up in a dict.
A public call must raise on bad input and may not read values (nor remember that a
check passed for anything but such a key), so no checked call comes in under it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bn_portable._lib._backends import metadata
from bn_portable._lib._numerics import bessel_factor

#: Values per float32 partial of a NumPy sum down rows (as bn_portable's NumPy Σx bounds its own).
NUMPY_PARTIAL = 64


def batch_statistics(x: Any, channel: int) -> tuple[Any, Any]:
    """``[C]`` mean and biased variance, float32, in two passes over a channel-grouped view."""
    view, dims = _grouped(x, channel)
    inverse_count = x.shape[channel] / math.prod(x.shape)
    mean = _channel_sums(view, dims) * inverse_count
    centred = view - (mean.reshape(-1, 1) if dims == (0, 2) else mean)
    centred *= centred
    return mean, _channel_sums(centred, dims) * inverse_count


def per_channel(vector: Any, x: Any, channel: int) -> Any:
    """A ``[C]`` variable as it broadcasts against x: as it is where the channels are last,
    else reshaped (a floor does this within the call: a layer's state holds ``[C]`` vectors)."""
    if channel == x.ndim - 1:
        return vector
    shape = [1] * x.ndim
    shape[channel] = -1
    return vector.reshape(shape)


def variance_target(variance: Any, count: int, path: str) -> Any:
    """What ``path`` moves the moving variance toward: the biased batch variance, or on the
    fused path (TensorFlow's fused kernel, as PyTorch's own) the Bessel-corrected
    ``variance · n/(n − 1)`` (TensorFlow's factor, ``bessel_factor``), one small operation more."""
    return variance * bessel_factor(count) if path == "fused" else variance


def moving_average(moving: Any, value: Any, weight: float) -> Any:
    """``v − (v − value)·(1 − decay)``, ``weight`` being ``1 − decay`` (under one half)."""
    if isinstance(moving, torch.Tensor):
        return torch.lerp(moving, value, weight)  # v + w·(value − v), one rounding
    step = moving - value
    step *= weight
    return moving - step


def fused(x: Any, mean: Any, variance: Any, gamma: Any, beta: Any, epsilon: float) -> Any:
    """``(x − μ)·(rsqrt(σ² + ε)·γ) + β``, the statistics broadcast along x's channel axis."""
    y = x - mean
    factor = _rsqrt(variance + epsilon) * gamma
    if isinstance(y, torch.Tensor) and y.stride(_channel_of(factor, y)) == 1:
        return _rounded(torch.addcmul(beta, y, factor, out=y), x.dtype)
    y *= factor
    y += beta
    return _rounded(y, x.dtype)


def non_fused(x: Any, mean: Any, variance: Any, gamma: Any, beta: Any, epsilon: float) -> Any:
    """``x·inv + (β − μ·inv)`` with ``inv = rsqrt(σ² + ε)·γ``."""
    inv = _rsqrt(variance + epsilon) * gamma
    y = x * inv
    y += beta - mean * inv
    return _rounded(y, x.dtype)


#: The floor of each of the module's paths.
FORMULAS = {"fused": fused, "non-fused": non_fused}


def checked(floor: Callable[[], Any], arrays: tuple[Any, ...]) -> Callable[[], Any]:
    """The floor after the call's metadata key is read and looked up (the checks' least)."""
    remembered: dict[Any, Any] = {}

    def call() -> Any:
        remembered.get(metadata(*arrays))
        return floor()

    return call


def _grouped(x: Any, channel: int) -> tuple[Any, tuple[int, ...]]:
    """NCHW as ``(N, C, H·W)`` summed over ``(0, 2)``; channels last in memory as rows of C."""
    if isinstance(x, torch.Tensor):
        contiguous, last = x.is_contiguous(), (lambda: x.movedim(channel, -1))
    else:
        contiguous, last = x.flags.c_contiguous, (lambda: np.moveaxis(x, channel, -1))
    if channel == 1 and x.ndim > 2 and contiguous:
        return x.reshape(x.shape[0], x.shape[1], -1), (0, 2)
    rows = x if channel == x.ndim - 1 else last()
    return rows.reshape(-1, rows.shape[-1]), (0,)


def _channel_sums(view: Any, dims: tuple[int, ...]) -> Any:
    """``[C]`` float32 sums over ``dims`` (see the module doc for their accuracy)."""
    if isinstance(view, torch.Tensor):
        return torch.sum(view, dims, dtype=torch.float32)
    if dims == (0, 2):  # each (n, c) stretch is contiguous: NumPy sums it pairwise
        partials = view.sum(axis=2, dtype=np.float32)
    else:
        whole = view.shape[0] - view.shape[0] % NUMPY_PARTIAL
        slabs = view[:whole].reshape(-1, NUMPY_PARTIAL, view.shape[1])
        partials = np.concatenate([slabs.sum(axis=1, dtype=np.float32), view[whole:]])
    return partials.sum(axis=0, dtype=np.float64).astype(np.float32)


def _channel_of(vector: Any, x: Any) -> int:
    """The axis a ``[C]`` vector broadcast against x runs along (the last one for C = 1)."""
    sizes = (1,) * (x.ndim - vector.ndim) + tuple(vector.shape)
    return max((axis for axis, n in enumerate(sizes) if n != 1), default=x.ndim - 1)


def _rsqrt(value: Any) -> Any:
    return torch.rsqrt(value) if isinstance(value, torch.Tensor) else 1.0 / np.sqrt(value)


def _rounded(y: Any, dtype: Any) -> Any:
    """y in ``dtype`` (a no-op where it already is)."""
    return y.to(dtype) if isinstance(y, torch.Tensor) else y.astype(dtype, copy=False)
