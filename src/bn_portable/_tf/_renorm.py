"""Batch renormalization (Ioffe 2017) as tf-keras implements it."""

from __future__ import annotations

from typing import Any

from .._kernels._moving_averages import moving_average
from .._lib._compat import device
from .._lib._dtypes import scalar, tf_constant
from .._lib._typing import Namespace
from ._options import LayerOptions
from ._state import BatchNormState


def renorm_step(
    mean: Any,
    variance: Any,
    new_state: BatchNormState,
    state: BatchNormState,
    options: LayerOptions,
    xp: Namespace,
) -> tuple[Any, Any, BatchNormState]:
    """Batch renormalization (Ioffe 2017) as tf-keras implements it.

    r and d use the renorm statistics from before this step; the moving
    variance is derived from the moving standard deviation, not averaged.
    """
    dev = device(mean)
    epsilon = options.epsilon
    stddev = xp.sqrt(variance + epsilon)
    # tf.sqrt(epsilon) is a float32 tensor: TensorFlow rounds epsilon to float32 here.
    floor = xp.astype(xp.sqrt(tf_constant(xp, epsilon, xp.float32, dev)), state.renorm_stddev.dtype)
    renorm_stddev = xp.maximum(state.renorm_stddev, floor)
    r = stddev / renorm_stddev
    d = (mean - state.renorm_mean) / renorm_stddev
    clipping = options.renorm_clipping
    if "rmin" in clipping:
        r = xp.maximum(r, scalar(xp, clipping["rmin"], r.dtype, dev))
    if "rmax" in clipping:
        r = xp.minimum(r, scalar(xp, clipping["rmax"], r.dtype, dev))
    if "dmax" in clipping:
        d = xp.maximum(d, scalar(xp, -clipping["dmax"], d.dtype, dev))
        d = xp.minimum(d, scalar(xp, clipping["dmax"], d.dtype, dev))
    moving_stddev = moving_average(state.moving_stddev, stddev, options.decay, "python", xp=xp)
    new_state = new_state._replace(
        renorm_mean=moving_average(state.renorm_mean, mean, options.renorm_decay, "python", xp=xp),
        renorm_stddev=moving_average(state.renorm_stddev, stddev, options.renorm_decay, "python", xp=xp),
        moving_stddev=moving_stddev,
        moving_variance=xp.maximum(moving_stddev * moving_stddev - epsilon, xp.zeros_like(moving_stddev)),
    )
    return r, d, new_state


def compose(r: Any, d: Any, gamma: Any, beta: Any) -> tuple[Any, Any]:
    """``(x̂·r + d)·γ + β`` as one affine map: scale ``r·γ``, offset ``d·γ + β``."""
    scale, offset = r, d
    if gamma is not None:
        scale, offset = scale * gamma, offset * gamma
    if beta is not None:
        offset = offset + beta
    return scale, offset
