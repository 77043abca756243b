"""The backward kernels: ``(dx, dγ, dβ)`` of a batch norm from what its forward used.

Notation, per channel: n elements, μ and σ² the statistics the forward
normalized with, ``inv = rsqrt(σ² + ε)``, ``x̂ = (x − μ)·inv``, γ the scale (1
when absent), and the two per-channel sums every gradient needs:

    S₀ = Σ dy          S₁ = Σ dy·(x − μ)        (so Σ dy·x̂ = inv·S₁)

Training (the statistics depend on x):

    dx = γ·inv·[dy − S₀/n − x̂·(Σ dy·x̂)/n]
    dγ = Σ dy·x̂ = inv·S₁          dβ = S₀

Inference (the statistics are constants): ``dx = dy·γ·inv``, dγ and dβ as above.

Two passes over the data: one reduction for S₀ and S₁ (x̂ is recomputed from
x, μ and inv, never stored by the forward), one elementwise pass for dx with
every per-channel constant folded::

    dx = dy·a + (x − μ)·b + c,   a = γ·inv,  b = −a·inv²·S₁/n,  c = −a·S₀/n

``x − μ`` is kept rather than folding μ into c (``x·b + (c − μ·b)``): the
folded form cancels catastrophically when |μ| ≫ σ, the same trap as the
one-pass variance, for one subtraction per element. A library's fast path
may do each pass in one sweep without temporaries (``gradient_sums``,
``gradient_input``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._lib import _layout
from .._lib._compat import device
from .._lib._dtypes import ComputeRule, astype, compute_dtype, scalar
from .._lib._numerics import rsqrt
from .._lib._sums import accurate_sum
from .._lib._typing import Namespace
from .._native import Kernel, overridable

#: ``(S₀, S₁) -> (global S₀, global S₁, 1/n or None, w/W or None)`` across replicas.
Synchronize = Callable[[Any, Any], tuple[Any, Any, Any, Any]]


def backward(
    dy: Any,
    x: Any,
    *,
    mean: Any,
    variance: Any,
    gamma: Any,
    epsilon: float,
    channel: int,
    training: bool,
    xp: Namespace,
    share: Any = None,
    renorm_r: Any = None,
    renorm_d: Any = None,
    synchronize: Synchronize | None = None,
) -> tuple[Any, Any, Any]:
    """``(dx, dγ, dβ)`` of ``y = (x − μ)·inv·(r·γ) + (d·γ + β)`` (see the module doc).

    ``gamma``, ``renorm_r``, ``renorm_d`` and ``share`` may be None (γ = r = 1,
    d = 0, share = 1/n). ``share``, the weight share ``w/W`` broadcastable to
    x, matters in training only. dγ and dβ come back in the compute dtype.
    ``synchronize`` (training across replicas) maps this shard's ``(S₀, S₁)``
    to the global ones and the share (``1/n`` per channel, or ``w/W``) that
    replaces the local count; dγ and dβ stay this shard's.
    """
    dtype = compute_dtype(xp, x.dtype, ComputeRule.HALF_IN_FLOAT32)
    rank = x.ndim
    mean, variance = astype(mean, dtype, xp), astype(variance, dtype, xp)
    inv = rsqrt(variance + epsilon, xp)
    sum_dy, sum_dy_centered = gradient_sums(dy, x, mean, channel, xp=xp)
    sum_dy_normalized = sum_dy_centered * inv
    scale = None if gamma is None else astype(gamma, dtype, xp)
    dgamma = sum_dy_normalized
    if renorm_r is not None:
        renorm_r, renorm_d = astype(renorm_r, dtype, xp), astype(renorm_d, dtype, xp)
        dgamma = sum_dy_normalized * renorm_r + sum_dy * renorm_d
        scale = renorm_r if scale is None else renorm_r * scale
    a = inv if scale is None else scale * inv
    b = c = None
    if training:
        total_dy, total_dy_centered, inverse_count = sum_dy, sum_dy_centered, None
        if synchronize is not None:
            total_dy, total_dy_centered, inverse_count, share = synchronize(sum_dy, sum_dy_centered)
        b = -(a * (inv * inv)) * total_dy_centered
        c = -a * total_dy
        if inverse_count is not None:
            b, c = b * inverse_count, c * inverse_count
        elif share is None:
            inverse_count = scalar(xp, 1.0 / max(_layout.elements_per_channel(x, channel), 1), dtype, device(x))
            b, c = b * inverse_count, c * inverse_count
    mean_b, a_b, b_b, c_b = (
        None if value is None else _layout.per_channel(value, rank, channel, xp)
        for value in (mean, a, b, c)
    )
    dx = gradient_input(dy, x, mean_b, a_b, b_b, c_b, share, xp=xp)
    return dx, dgamma, sum_dy


@overridable(Kernel.GRADIENT_SUMS)
def gradient_sums(dy: Any, x: Any, mean: Any, channel: int, *, xp: Namespace) -> tuple[Any, Any]:
    """``(Σ dy, Σ dy·(x − mean))`` per channel, in mean's dtype: the reduction pass.

    ``mean`` has shape ``[C]`` and the compute dtype; ``dy`` and ``x`` are read
    in their own dtype and widened on the fly. ``x − mean`` is recomputed here,
    never stored by the forward. A fast path computes both sums in one sweep.
    """
    dtype = mean.dtype
    axes = _layout.reduction_axes(x.ndim, channel)
    dy_wide = astype(dy, dtype, xp)
    centered = astype(x, dtype, xp) - _layout.per_channel(mean, x.ndim, channel, xp)
    return accurate_sum(dy_wide, axes, xp), accurate_sum(dy_wide * centered, axes, xp)


@overridable(Kernel.GRADIENT_INPUT)
def gradient_input(
    dy: Any, x: Any, mean: Any, a: Any, b: Any, c: Any, share: Any, *, xp: Namespace
) -> Any:
    """``dx = dy·a + share·((x − mean)·b + c)`` rounded once to x's dtype: the elementwise pass.

    ``mean``, ``a``, ``b`` and ``c`` are per-channel constants already shaped to
    broadcast against x; ``b`` and ``c`` are None in inference (``dx = dy·a``)
    and ``share`` is None when it is folded into ``b`` and ``c``.
    """
    dtype = a.dtype
    dx = astype(dy, dtype, xp) * a
    if b is not None:
        correction = (astype(x, dtype, xp) - mean) * b + c
        dx = dx + (correction if share is None else share * correction)
    return xp.astype(dx, x.dtype) if dx.dtype != x.dtype else dx
