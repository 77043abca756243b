"""Analytic backward passes: ``fused_batch_norm_grad`` and ``batch_norm_vjp``.

Notation, per channel: n elements, μ and σ² the statistics the forward
normalized with, ``inv = rsqrt(σ² + ε)``, ``x̂ = (x − μ)·inv``, γ the scale (1
when absent), and the two per-channel sums every gradient needs:

    S₀ = Σ dy          S₁ = Σ dy·(x − μ)        (so Σ dy·x̂ = inv·S₁)

Training (the statistics depend on x):

    dx = γ·inv·[dy − S₀/n − x̂·(Σ dy·x̂)/n]
    dγ = Σ dy·x̂ = inv·S₁          dβ = S₀

Inference (the statistics are constants): ``dx = dy·γ·inv``, dγ and dβ as above.

Two passes over the data: one reduction for
S₀ and S₁ (x̂ is recomputed from x, μ and inv, never stored by the forward),
one elementwise pass for dx with every per-channel constant folded::

    dx = dy·a + (x − μ)·b + c,   a = γ·inv,  b = −a·inv²·S₁/n,  c = −a·S₀/n

``x − μ`` is kept rather than folding μ into c (``x·b + (c − μ·b)``): the
folded form cancels catastrophically when |μ| ≫ σ, the same trap as the
one-pass variance, for one subtraction per element.

Both kernels (``gradient_sums``, ``gradient_input``) are ``@overridable``: a
library's fast path can do each in one sweep without temporaries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from . import _layout
from ._cross_replica import gradient_totals
from ._layer import LayerOptions, LayerPlan, Normalization, layer_options, layer_step, prepare
from ._lib import _checks
from ._lib._compat import array_namespace, device
from ._lib._dtypes import astype, compute_dtype, dtype_name, scalar
from ._lib._sums import accurate_sum
from ._lib._typing import VJP, ArrayT, CrossReplicaSum
from ._moments import divide_no_nan
from ._native import overridable
from ._normalize import FUSED_INPUT_DTYPES, rsqrt
from ._state import BatchNormState


def fused_batch_norm_grad(
    dy: ArrayT,
    x: ArrayT,
    scale: Any,
    mean: Any,
    variance: Any,
    *,
    epsilon: float = 0.001,
    data_format: str = "NHWC",
    is_training: bool = True,
) -> tuple[ArrayT, ArrayT, ArrayT]:
    """TensorFlow's ``FusedBatchNormGradV3`` CPU kernel; returns ``(dx, dscale, doffset)``.

    ``dy`` and ``x`` are float16, bfloat16 or float32 of one dtype and one shape,
    laid out per ``data_format``: NHWC or NCHW at rank 4, NDHWC or NCDHW at rank 5;
    ``scale``, ``mean`` and ``variance`` are float32 of shape ``[C]``. In
    training, ``mean`` and ``variance`` are what the forward's reserve spaces
    hold: the batch mean and the *biased* batch variance (not the
    Bessel-corrected variance ``fused_batch_norm`` returns). In inference they
    are the population statistics the forward used.

    All arithmetic is float32; ``dx`` is rounded once to x's dtype, ``dscale``
    and ``doffset`` are float32. With ``inv = rsqrt(variance + ε)`` and
    ``x̂ = (x − mean)·inv``, per channel over its n elements:

    - training: ``dx = scale·inv·[dy − mean(dy) − x̂·mean(dy·x̂)]``;
    - inference: ``dx = dy·scale·inv``;
    - both: ``dscale = Σ dy·x̂``, ``doffset = Σ dy``.

    An empty input gives an empty ``dx`` and zero ``dscale`` and ``doffset``.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.array([1.0, 10.0, 3.0, 30.0], dtype=np.float32).reshape(2, 1, 1, 2)  # NHWC
    >>> dy = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32).reshape(2, 1, 1, 2)
    >>> mean, biased_variance = np.array([2.0, 20.0], np.float32), np.array([1.0, 100.0], np.float32)
    >>> dx, dscale, doffset = bn.fused_batch_norm_grad(dy, x, np.ones(2, np.float32), mean, biased_variance)
    >>> print(dx.reshape(2, 2))
    [[ 0.00049925  0.        ]
     [-0.00049925  0.        ]]
    >>> print(dscale, doffset)
    [-0.9995004  0.       ] [1. 0.]
    """
    xp = _checks.namespace(x=x, dy=dy, scale=scale, mean=mean, variance=variance)
    for name, value in (("x", x), ("dy", dy), ("scale", scale), ("mean", mean), ("variance", variance)):
        _checks.check_namespace(name, value, xp)
    channel = _layout.fused_channel_axis(x, data_format)
    _checks.check_known_shape("x", x)
    _checks.check_floating("x", x, xp, FUSED_INPUT_DTYPES)
    _check_cotangent(dy, x)
    _checks.check_bool("is_training", is_training)
    epsilon = _checks.check_real("epsilon", epsilon, low=0.0)
    channels = x.shape[channel]
    for name, value in (("scale", scale), ("mean", mean), ("variance", variance)):
        _checks.check_device(name, value, device(x))
        _checks.check_floating(name, value, xp, ("float32",))
        _checks.check_shape(name, value, (channels,), f"one value per channel of x in {data_format}")
    dx, dscale, doffset = backward(
        dy, x, mean, variance, scale, epsilon, channel, is_training, None, None, None, xp
    )
    return dx, dscale, doffset


def batch_norm_vjp(
    x: ArrayT,
    state: BatchNormState | None = None,
    *,
    decay: float = 0.999,
    center: bool = True,
    scale: bool = False,
    epsilon: float = 0.001,
    activation_fn: Callable[[Any], Any] | None = None,
    param_initializers: Mapping[str, Any] | None = None,
    is_training: bool = True,
    batch_weights: Any = None,
    fused: bool = False,
    data_format: str = "NHWC",
    zero_debias_moving_mean: bool = False,
    renorm: bool = False,
    renorm_clipping: Mapping[str, float] | None = None,
    renorm_decay: float = 0.99,
    cross_replica_sum: CrossReplicaSum | None = None,
    skip_nonfinite: bool = False,
) -> tuple[ArrayT, BatchNormState, VJP[ArrayT]]:
    """``batch_norm`` and its vector-Jacobian product; returns ``(y, new_state, vjp)``.

    ``y`` and ``new_state`` are exactly what ``batch_norm`` returns for the same
    arguments. ``vjp(dy)`` returns ``(dx, dgamma, dbeta)``, what
    ``tf.gradients(y, [x, gamma, beta], grad_ys=dy)`` gives through
    ``tf_slim.layers.batch_norm``; ``dgamma`` is ``None`` when ``scale=False``
    and ``dbeta`` is ``None`` when ``center=False``. ``dy`` has x's shape, dtype
    and library. ``dx`` has x's dtype, ``dgamma`` and ``dbeta`` the state's;
    half-precision inputs are differentiated in float32.

    Per channel, with the statistics μ, σ² the forward used, ``inv =
    rsqrt(σ² + ε)``, ``x̂ = (x − μ)·inv`` and γ the scale (1 without one):

    - training: ``dx = γ·inv·[dy − mean(dy) − x̂·mean(dy·x̂)]``;
    - with ``batch_weights`` w (the statistics are weighted means, so each
      element's share of them is ``s = w/W``, W the total weight over the
      reduced axes, and 0 where W is 0):
      ``dx = γ·inv·[dy − s·Σdy − x̂·s·Σdy·x̂]``;
    - with renorm (r and d are constants, as TensorFlow stops their gradient),
      γ becomes ``r·γ`` in dx and ``dγ = Σ dy·(x̂·r + d)``;
    - inference (moving statistics, r = 1, d = 0): ``dx = dy·γ·inv``;
    - ``dγ = Σ dy·x̂``, ``dβ = Σ dy``.

    With ``cross_replica_sum`` (synchronized batch norm, as in ``batch_norm``)
    the forward uses the global batch's statistics, and ``vjp`` sums ``Σdy``
    and ``Σdy·(x − μ)`` (and the count or total weight) over the replicas, so
    ``dx`` is this shard's part of the global batch's gradient. ``dgamma`` and
    ``dbeta`` are this replica's contributions, as autograd through the
    forward gives them: their sum over the replicas (DDP's gradient
    all-reduce) is the global batch's.
    ``skip_nonfinite`` is ``batch_norm``'s: it changes only ``new_state``.

    The gradients of ``batch_weights`` and of the state are not computed
    (TensorFlow's state updates carry none). ``activation_fn`` must be None:
    the gradient of an arbitrary callable is the caller's (apply it to ``y``
    and chain its vjp before this one). Nothing is mutated; ``vjp`` may be
    called any number of times.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]], dtype=np.float32)
    >>> y, state, vjp = bn.batch_norm_vjp(x, scale=True)
    >>> dx, dgamma, dbeta = vjp(np.ones_like(x))  # a constant dy does not change y's statistics
    >>> print(dx, dgamma, dbeta)
    [[0. 0.]
     [0. 0.]] [0. 0.] [2. 2.]
    """
    options = layer_options(
        decay=decay, center=center, scale=scale, epsilon=epsilon, activation_fn=activation_fn,
        param_initializers=param_initializers, is_training=is_training, fused=fused,
        data_format=data_format, zero_debias_moving_mean=zero_debias_moving_mean,
        renorm=renorm, renorm_clipping=renorm_clipping, renorm_decay=renorm_decay,
        cross_replica_sum=cross_replica_sum, weighted=batch_weights is not None,
        skip_nonfinite=skip_nonfinite,
    )
    if options.activation_fn is not None:
        raise ValueError(
            "activation_fn must be None for batch_norm_vjp: the gradient of an arbitrary "
            "callable is the caller's; call batch_norm_vjp without it, apply the activation "
            "to y and chain its gradient before calling vjp"
        )
    xp, plan, state = prepare(x, state, batch_weights, options)
    y, new_state, used = layer_step(x, state, batch_weights, options, plan, xp)

    def vjp(dy: ArrayT) -> tuple[ArrayT, ArrayT | None, ArrayT | None]:
        """``(dx, dgamma, dbeta)`` for the cotangent ``dy`` of ``y``."""
        _check_cotangent(dy, x)
        return layer_backward(dy, x, batch_weights, used, options, plan, xp)

    return y, new_state, vjp


def layer_backward(
    dy: Any,
    x: Any,
    batch_weights: Any,
    used: Normalization,
    options: LayerOptions,
    plan: LayerPlan,
    xp: Any,
) -> tuple[Any, Any, Any]:
    """The layer's ``(dx, dgamma, dbeta)`` from what its forward normalized with."""
    training = options.is_training
    share = synchronize = None
    if training and options.cross_replica_sum is not None:
        synchronize = _synchronizer(batch_weights, x, plan, options.cross_replica_sum, xp)
    elif training and batch_weights is not None:
        share = _weight_share(batch_weights, x, plan, xp)
    renorm_r = used.r if training else None
    renorm_d = used.d if training else None
    dx, dgamma, dbeta = backward(
        dy, x, used.mean, used.variance, used.gamma, options.epsilon, plan.channel,
        training, share, renorm_r, renorm_d, xp, synchronize=synchronize,
    )
    dgamma = None if used.gamma is None else xp.astype(dgamma, plan.state_dtype)
    dbeta = None if used.beta is None else xp.astype(dbeta, plan.state_dtype)
    return dx, dgamma, dbeta


def backward(
    dy: Any,
    x: Any,
    mean: Any,
    variance: Any,
    gamma: Any,
    epsilon: Any,
    channel: Any,
    training: Any,
    share: Any,
    renorm_r: Any,
    renorm_d: Any,
    xp: Any,
    *,
    synchronize: Any = None,
) -> Any:
    """``(dx, dγ, dβ)`` of ``y = (x − μ)·inv·(r·γ) + (d·γ + β)`` (see the module doc).

    ``gamma``, ``renorm_r``, ``renorm_d`` and ``share`` may be None (γ = r = 1,
    d = 0, share = 1/n). ``share``, the weight share ``w/W`` broadcastable to
    x, matters in training only. dγ and dβ come back in the compute dtype.
    ``synchronize`` (training across replicas) maps this shard's ``(S₀, S₁)``
    to the global ones and the share (``1/n`` per channel, or ``w/W``) that
    replaces the local count; dγ and dβ stay this shard's.
    """
    dtype = compute_dtype(xp, x.dtype)
    rank = x.ndim
    mean, variance = astype(mean, dtype, xp), astype(variance, dtype, xp)
    inv = rsqrt(variance + epsilon, xp)
    sum_dy, sum_dy_centered = gradient_sums(dy, x, mean, channel, xp)
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
    dx = gradient_input(dy, x, mean_b, a_b, b_b, c_b, share, xp)
    return dx, dgamma, sum_dy


@overridable
def gradient_sums(dy: Any, x: Any, mean: Any, channel: Any, xp: Any) -> Any:
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


@overridable
def gradient_input(dy: Any, x: Any, mean: Any, a: Any, b: Any, c: Any, share: Any, xp: Any) -> Any:
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


def _synchronizer(batch_weights: Any, x: Any, plan: Any, cross_replica_sum: Any, xp: Any) -> Any:
    """``(S₀, S₁) -> (global S₀, global S₁, 1/n or None, w/W or None)`` across replicas."""
    dtype = compute_dtype(xp, x.dtype)
    if batch_weights is None:
        local_total = scalar(xp, float(_layout.elements_per_channel(x, plan.channel)), dtype, device(x))
    else:
        weights, local_total = _sample_weights(batch_weights, x, plan, xp)

    def synchronize(sum_dy: Any, sum_dy_centered: Any) -> Any:
        total, total_dy, total_dy_centered = gradient_totals(
            local_total, sum_dy, sum_dy_centered, cross_replica_sum, xp
        )
        if batch_weights is None:
            return total_dy, total_dy_centered, divide_no_nan(xp.ones_like(total), total, xp), None
        # Every channel sees the same total weight; W is a 0-d array.
        return total_dy, total_dy_centered, None, divide_no_nan(weights, total[0], xp)

    return synchronize


def _weight_share(batch_weights: Any, x: Any, plan: Any, xp: Any) -> Any:
    """``w/W`` per sample, shaped ``[N, 1, …]``: each element's share of the weighted statistics.

    ``W = Σ w`` over the reduced axes of the weights broadcast to x (every
    channel sees the same total); 0 where ``W`` is 0, as ``div_no_nan`` gives
    TensorFlow's weighted moments no gradient there.
    """
    weights, total = _sample_weights(batch_weights, x, plan, xp)
    return divide_no_nan(weights, total, xp)


def _sample_weights(batch_weights: Any, x: Any, plan: Any, xp: Any) -> Any:
    """Per-sample weights shaped ``[N, 1, …]`` in the compute dtype, and ``W`` (0-d)."""
    dtype = compute_dtype(xp, x.dtype)
    weights = xp.reshape(astype(batch_weights, dtype, xp), (-1,) + (1,) * (x.ndim - 1))
    per_sample = math.prod([x.shape[axis] for axis in plan.axes if axis != 0])  # a list: traceable
    total = accurate_sum(weights, tuple(range(weights.ndim)), xp) * scalar(
        xp, float(per_sample), dtype, device(x)
    )
    return weights, total


def _check_cotangent(dy: Any, x: Any) -> None:
    """``dy`` is the cotangent of ``y``: an array of x's library, dtype and shape."""
    xp = array_namespace(x)
    _checks.check_namespace("dy", dy, xp)
    _checks.check_device("dy", dy, device(x))
    if dy.dtype != x.dtype:
        raise TypeError(
            f"dy must have x's dtype {dtype_name(x.dtype)} (it is the gradient of y, "
            f"which has x's dtype), got {dtype_name(dy.dtype)}"
        )
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"dy must have x's shape {tuple(x.shape)}; got {tuple(dy.shape)}")


__all__ = ["batch_norm_vjp", "fused_batch_norm_grad"]
