"""The layer's gradient: what ``batch_norm_vjp``'s ``vjp`` computes from a forward step.

Training differentiates through the batch statistics: each element's share of
them is ``1/n``, or ``w/W`` with batch weights or a Keras mask (W the total
weight, Σm for a mask), or, across replicas, the global count's or weight's. Renorm's r and d are constants.
The arithmetic is the backward kernel's (``_kernels._backward``).
"""

from __future__ import annotations

import math
from typing import Any

from .._kernels._backward import Synchronize, backward
from .._kernels._replicas import sum_across
from .._lib import _layout
from .._lib._compat import device
from .._lib._dtypes import ComputeRule, astype, compute_dtype, scalar
from .._lib._numerics import divide_no_nan
from .._lib._sums import accurate_sum
from .._lib._typing import CrossReplicaSum, Namespace
from ._options import LayerOptions
from ._plan import LayerPlan
from ._steps import Normalization


def layer_backward(
    dy: Any,
    x: Any,
    batch_weights: Any,
    used: Normalization,
    options: LayerOptions,
    plan: LayerPlan,
    xp: Namespace,
    mask: Any = None,
) -> tuple[Any, Any, Any]:
    """The layer's ``(dx, dgamma, dbeta)`` from what its forward normalized with.

    ``batch_weights`` and ``mask`` are the forward's (the plan allows one of them at most).
    """
    training = options.is_training
    share = synchronize = None
    if training and options.cross_replica_sum is not None:
        synchronize = _synchronizer(batch_weights, mask, x, plan, options.cross_replica_sum, xp)
    elif training and (batch_weights is not None or mask is not None):
        share = _weight_share(batch_weights, mask, x, plan, xp)
    renorm_r = used.r if training else None
    renorm_d = used.d if training else None
    dx, dgamma, dbeta = backward(
        dy, x, mean=used.mean, variance=used.variance, gamma=used.gamma,
        epsilon=options.epsilon, channel=plan.channel, training=training, xp=xp,
        share=share, renorm_r=renorm_r, renorm_d=renorm_d, synchronize=synchronize,
    )
    dgamma = None if used.gamma is None else xp.astype(dgamma, plan.state_dtype)
    dbeta = None if used.beta is None else xp.astype(dbeta, plan.state_dtype)
    return dx, dgamma, dbeta


def _synchronizer(
    batch_weights: Any, mask: Any, x: Any, plan: LayerPlan, cross_replica_sum: CrossReplicaSum,
    xp: Namespace,
) -> Synchronize:
    """``(S₀, S₁) -> (global S₀, global S₁, 1/n or None, w/W or None)`` across replicas."""
    dtype = compute_dtype(xp, x.dtype, ComputeRule.HALF_IN_FLOAT32)
    weighted = batch_weights is not None or mask is not None
    if not weighted:
        local_total = scalar(xp, float(_layout.elements_per_channel(x, plan.channel)), dtype, device(x))
    else:
        weights, local_total = _element_weights(batch_weights, mask, x, plan, xp)

    def synchronize(sum_dy: Any, sum_dy_centered: Any) -> tuple[Any, Any, Any, Any]:
        local = xp.broadcast_to(astype(local_total, sum_dy.dtype, xp), sum_dy.shape)
        total, total_dy, total_dy_centered = sum_across(
            cross_replica_sum, [local, sum_dy, sum_dy_centered], xp=xp
        )
        if not weighted:
            return total_dy, total_dy_centered, divide_no_nan(xp.ones_like(total), total, xp), None
        # Every channel sees the same total weight; W is a 0-d array.
        return total_dy, total_dy_centered, None, divide_no_nan(weights, total[0], xp)

    return synchronize


def _weight_share(batch_weights: Any, mask: Any, x: Any, plan: LayerPlan, xp: Namespace) -> Any:
    """``w/W`` broadcastable to x: each element's share of the weighted statistics.

    ``W = Σ w`` over the reduced axes of the weights broadcast to x (every
    channel sees the same total); 0 where ``W`` is 0, as ``div_no_nan`` gives
    TensorFlow's weighted moments no gradient there.
    """
    weights, total = _element_weights(batch_weights, mask, x, plan, xp)
    return divide_no_nan(weights, total, xp)


def _element_weights(
    batch_weights: Any, mask: Any, x: Any, plan: LayerPlan, xp: Namespace
) -> tuple[Any, Any]:
    """The weights broadcastable to x in the compute dtype, and ``W`` (0-d).

    Per-sample weights shaped ``[N, 1, …]``, or a Keras mask with a channel
    axis of length 1 (it is the same in every channel, so W is its sum).
    """
    dtype = compute_dtype(xp, x.dtype, ComputeRule.HALF_IN_FLOAT32)
    if mask is not None:
        weights = xp.expand_dims(astype(mask, dtype, xp), axis=plan.channel)
        return weights, accurate_sum(weights, tuple(range(weights.ndim)), xp)
    weights = xp.reshape(astype(batch_weights, dtype, xp), (-1,) + (1,) * (x.ndim - 1))
    per_sample = math.prod([x.shape[axis] for axis in plan.axes if axis != 0])  # a list: traceable
    total = accurate_sum(weights, tuple(range(weights.ndim)), xp) * scalar(
        xp, float(per_sample), dtype, device(x)
    )
    return weights, total
