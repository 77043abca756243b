"""One training or inference step of each TensorFlow layer implementation.

The fused kernel moves the moving variance toward the Bessel-corrected batch
variance; every other path toward the biased one. The variable updates carry
no gradient (TensorFlow's do not either), and with ``skip_nonfinite`` a step
whose batch statistics are not finite keeps the state it was given.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._kernels._layer_training import fused_layer_training, layer_training
from .._kernels._moments import biased_variance, masked_moments, two_pass_moments
from .._kernels._moving_averages import (
    WeightRounding,
    average_weight,
    kernel_average,
    moving_average,
    zero_debiased_average,
)
from .._kernels._normalize import fused_inference, fused_training, normalize
from .._lib._backends import operand, stop_gradient
from .._lib._compat import device
from .._lib._dtypes import ComputeRule, astype, compute_dtype
from .._lib._typing import Namespace
from ._fields import PARAMETERS
from ._nonfinite import keep_state_unless_finite
from ._options import LayerOptions
from ._plan import LayerPlan, weight_rounding
from ._renorm import compose, renorm_step
from ._state import BatchNormState, with_moving_statistics


class Normalization(NamedTuple):
    """What one step normalized with; the backward pass starts from it.

    ``mean`` and ``variance`` are per channel (the batch's biased statistics in
    training, the moving ones in inference); ``gamma`` and ``beta`` are the
    layer's parameters (``None`` where absent); ``r`` and ``d`` the renorm
    corrections (``None`` without renorm or in inference).
    """

    mean: Any
    variance: Any
    gamma: Any
    beta: Any
    r: Any = None
    d: Any = None


def layer_step(
    x: Any,
    state: BatchNormState,
    batch_weights: Any,
    options: LayerOptions,
    plan: LayerPlan,
    xp: Namespace,
    mask: Any = None,
) -> tuple[Any, BatchNormState, Normalization]:
    """``(y before activation, new_state, Normalization)`` for one call.

    ``mask`` (Keras', checked by ``_plan.prepare``) reaches the Keras layer's
    composite path only: the plan refuses it everywhere else.
    """
    if plan.fused_kernel:
        y, new_state, used = _fused_step(x, state, options, plan, xp)
    elif plan.path == "keras_layer":
        y, new_state, used = _keras_step(x, state, options, plan, xp, mask)
    else:
        y, new_state, used = _legacy_step(x, state, batch_weights, options, plan, xp)
    if options.skip_nonfinite and options.is_training:
        new_state = keep_state_unless_finite(state, new_state, used.mean, used.variance, xp)
    return y, _without_gradient(new_state, state, xp), used


#: Where the moving statistics sit in a ``BatchNormState`` (every field but the parameters).
_STATISTICS = tuple(index for index, field in enumerate(BatchNormState._fields) if field not in PARAMETERS)


def _without_gradient(new_state: BatchNormState, state: BatchNormState, xp: Namespace) -> BatchNormState:
    """TensorFlow's variable updates carry no gradient; neither do ours (the changed ones
    detached by position: a small call's every step pays for this)."""
    if new_state is state:  # inference: nothing changed
        return state
    values = None
    for index in _STATISTICS:
        new = new_state[index]
        if new is not state[index]:
            constant = stop_gradient(new, xp)
            if constant is not new:  # rebuilt only where a detach made a new array
                values = list(new_state) if values is None else values
                values[index] = constant
    return new_state if values is None else BatchNormState._make(values)


def _fused_step(
    x: Any, state: BatchNormState, options: LayerOptions, plan: LayerPlan, xp: Namespace
) -> tuple[Any, BatchNormState, Normalization]:
    """The fused kernel; the moving variance gets the Bessel-corrected variance."""
    # Constant γ = 1 and β = 0 only where the layer has no such parameter.
    gamma = state.gamma if options.scale else xp.ones((plan.channels,), dtype=xp.float32, device=device(x))
    beta = state.beta if options.center else xp.zeros((plan.channels,), dtype=xp.float32, device=device(x))
    if not options.is_training:
        y = fused_inference(
            x, gamma, beta, state.moving_mean, state.moving_variance, options.epsilon, plan.channel, xp=xp
        )
        return y, state, Normalization(state.moving_mean, state.moving_variance, state.gamma, state.beta)
    kernel_moves = plan.path == "keras_fused" and options.execution == "eager"
    if not kernel_moves and options.cross_replica_sum is None and not options.zero_debias_moving_mean:
        # The plain step, one kernel: y, the statistics and both moving averages (one
        # weight: the variables share the state's dtype).
        weight = _plain_weight(state, options, plan, xp)
        y, batch_mean, biased, moving_mean, moving_variance = fused_layer_training(
            x, state.moving_mean, state.moving_variance, beta, gamma, options.epsilon, weight,
            plan.channel, xp=xp,
        )
        new_state = with_moving_statistics(state, moving_mean, moving_variance)
        return y, new_state, Normalization(batch_mean, biased, state.gamma, state.beta)
    rounding = weight_rounding(plan.path)
    y, batch_mean, biased, bessel = fused_training(
        x, gamma, beta, options.epsilon, plan.channel, xp=xp, reducer=options.cross_replica_sum
    )
    if kernel_moves:
        # Keras 2 outside graphs and XLA: the kernel moves the averages itself.
        new_state = state._replace(
            moving_mean=kernel_average(state.moving_mean, batch_mean, options.decay, xp=xp),
            moving_variance=kernel_average(
                state.moving_variance, biased, options.decay, value_factor=bessel, xp=xp
            ),
        )
        return y, new_state, Normalization(batch_mean, biased, state.gamma, state.beta)
    new_state = state._replace(
        **_moved_mean(state, batch_mean, options, rounding, xp),
        moving_variance=moving_average(
            state.moving_variance, biased * operand(bessel, biased), options.decay, rounding, xp=xp
        ),
    )
    return y, new_state, Normalization(batch_mean, biased, state.gamma, state.beta)


def _plain_weight(state: BatchNormState, options: LayerOptions, plan: LayerPlan, xp: Namespace) -> Any:
    """The one weight of a plain step's two moving averages: the plan's number where it
    has one (float32 and float64 variables, eagerly), else made for the variables."""
    if plan.decay_weight is not None:
        return plan.decay_weight
    return average_weight(state.moving_mean, options.decay, weight_rounding(plan.path), xp=xp)


def _keras_step(
    x: Any, state: BatchNormState, options: LayerOptions, plan: LayerPlan, xp: Namespace, mask: Any
) -> tuple[Any, BatchNormState, Normalization]:
    """The Keras layer without the fused kernel, renorm and masks included.

    With a mask the batch statistics are the masked ones (tf-keras's
    ``tf.nn.weighted_moments`` with the mask as weights); every element is
    normalized with them, and the moving statistics move toward them, toward
    0 where the mask is all zeros, as in tf-keras and Keras 3.
    """
    gamma, beta = state.gamma, state.beta
    # The layer casts half inputs to float32 (its compute dtype), normalizes
    # there and rounds y once; other dtypes are their own compute dtype.
    compute = plan.state_dtype
    if options.is_training and not options.renorm and mask is None:
        # The plain step, one kernel: the statistics, both moving averages (one weight:
        # the variables share the state's dtype), y.
        weight = _plain_weight(state, options, plan, xp)
        y, mean, variance, moving_mean, moving_variance = layer_training(
            x, state.moving_mean, state.moving_variance, beta, gamma, options.epsilon, weight,
            plan.axes, plan.channel, xp=xp, compute=None if compute == x.dtype else compute,
            reducer=options.cross_replica_sum,
        )
        new_state = with_moving_statistics(state, moving_mean, moving_variance)
        return y, new_state, Normalization(mean, variance, gamma, beta)
    if options.is_training:
        mean, variance = _batch_statistics(x, plan, options, xp, compute=compute, mask=mask)
        rounding = weight_rounding(plan.path)
        moved_mean = _moved_mean(state, mean, options, rounding, xp)
        if options.renorm:
            r, d, new_state = renorm_step(mean, variance, state._replace(**moved_mean), state, options, xp)
            # r and d are constants for the gradient (tf.stop_gradient in tf-keras).
            r, d = stop_gradient(r, xp), stop_gradient(d, xp)
            scale, offset = compose(r, d, gamma, beta)
            used = Normalization(mean, variance, gamma, beta, r, d)
        else:  # masked statistics
            new_state = state._replace(
                **moved_mean,
                moving_variance=moving_average(state.moving_variance, variance, options.decay, rounding, xp=xp),
            )
            scale, offset = gamma, beta
            used = Normalization(mean, variance, gamma, beta)
    else:
        mean, variance, scale, offset = state.moving_mean, state.moving_variance, gamma, beta
        new_state, used = state, Normalization(mean, variance, gamma, beta)
    y = _normalize_per_channel(x, mean, variance, offset, scale, options, plan, xp, compute)
    return y, new_state, used


def _legacy_step(
    x: Any,
    state: BatchNormState,
    batch_weights: Any,
    options: LayerOptions,
    plan: LayerPlan,
    xp: Namespace,
) -> tuple[Any, BatchNormState, Normalization]:
    """tf-slim's own composite: (weighted) moments and zero-debias, input-dtype variables."""
    if options.is_training:
        # tf.nn.(weighted_)moments: float16 in float32, bfloat16 in bfloat16, rounded back.
        compute = compute_dtype(xp, x.dtype, ComputeRule.MOMENTS)
        weights = None
        if batch_weights is not None:
            weights = xp.reshape(batch_weights, (-1,) + (1,) * (x.ndim - 1))
        mean, variance = _batch_statistics(x, plan, options, xp, weights, compute=compute)
        mean, variance = astype(mean, x.dtype, xp), astype(variance, x.dtype, xp)
        rounding = weight_rounding(plan.path)
        new_state = state._replace(
            **_moved_mean(state, mean, options, rounding, xp),
            moving_variance=moving_average(state.moving_variance, variance, options.decay, rounding, xp=xp),
        )
    else:
        mean, variance, new_state = state.moving_mean, state.moving_variance, state
    y = _normalize_per_channel(x, mean, variance, state.beta, state.gamma, options, plan, xp)
    return y, new_state, Normalization(mean, variance, state.gamma, state.beta)


def _batch_statistics(
    x: Any, plan: LayerPlan, options: LayerOptions, xp: Namespace, weights: Any = None,
    compute: Any = None, mask: Any = None,
) -> tuple[Any, Any]:
    """``[C]`` mean and biased variance of the (global) batch, in ``compute`` where it is
    wider than x; 0 for zero total weight (or an all-zero mask)."""
    compute = None if compute is None or compute == x.dtype else compute
    reducer = options.cross_replica_sum
    if mask is not None:
        summary = masked_moments(x, mask, plan.channel, xp=xp, reducer=reducer, compute=compute)
    else:
        summary = two_pass_moments(
            x, plan.axes, xp=xp, weights=weights, reducer=reducer,
            empty="nan" if weights is None else "zero", compute=compute,
        )
    weighted = weights is not None or mask is not None
    variance = biased_variance(summary, empty="zero" if weighted else "nan", xp=xp)
    return xp.reshape(summary.mean, (-1,)), xp.reshape(variance, (-1,))


def _normalize_per_channel(
    x: Any, mean: Any, variance: Any, offset: Any, scale: Any, options: LayerOptions,
    plan: LayerPlan, xp: Namespace, compute: Any = None,
) -> Any:
    """``tf.nn.batch_normalization`` with ``[C]`` parameters along the channel axis, in
    ``compute`` where it is wider than x (rounded back once)."""
    if compute is not None and compute == x.dtype:
        compute = None
    return normalize(
        x, mean, variance, offset, scale, options.epsilon, xp=xp, compute=compute, channel=plan.channel
    )


def _moved_mean(
    state: BatchNormState, batch_mean: Any, options: LayerOptions, rounding: WeightRounding, xp: Namespace
) -> dict[str, Any]:
    """The moving mean's update (zero-debiased when asked), as the state fields it changes:
    the caller makes the new state in one ``_replace`` (each costs a small call a microsecond)."""
    if not options.zero_debias_moving_mean:
        return {"moving_mean": moving_average(state.moving_mean, batch_mean, options.decay, rounding, xp=xp)}
    unbiased, biased, step = zero_debiased_average(
        state.moving_mean_biased, state.local_step, batch_mean, options.decay, xp=xp
    )
    return {"moving_mean": unbiased, "moving_mean_biased": biased, "local_step": step}
