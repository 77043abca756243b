"""A layer's plain training arithmetic as one kernel, with and without the fused kernel.

Without the fused kernel, renorm or a mask, a training call of TensorFlow's layer
takes the batch's mean and biased variance (``tf.nn.moments``), moves both moving
statistics toward them with one weight (``assign_moving_average``) and normalizes
with them (``tf.nn.batch_normalization``): ``layer_training``. With the fused kernel
(tf-slim's, and the Keras layer's where the layer moves the averages), the kernel
gives y and the statistics, and the moving variance moves toward the
Bessel-corrected variance: ``fused_layer_training``. Each generic kernel is exactly
the composition of the kernels that define each part, so its result is theirs, bit
for bit. As one kernel it is also one dispatch: a library's fast path can check what
it is given once and run the whole step, where at small sizes each part's own
dispatch and checks cost more than its arithmetic.
"""

from __future__ import annotations

from typing import Any

from .._lib._backends import operand
from .._lib._dtypes import astype
from .._lib._typing import CrossReplicaSum, Namespace
from .._native import Kernel, overridable
from ._moments import biased_variance, two_pass_moments
from ._moving_averages import move_toward
from ._normalize import fused_training, normalize


@overridable(Kernel.LAYER_TRAINING)
def layer_training(
    x: Any,
    moving_mean: Any,
    moving_variance: Any,
    offset: Any,
    scale: Any,
    variance_epsilon: float,
    weight: Any,
    axes: tuple[int, ...],
    channel: int,
    *,
    xp: Namespace,
    compute: Any = None,
    reducer: CrossReplicaSum | None = None,
) -> tuple[Any, Any, Any, Any, Any]:
    """``(y, mean, variance, new moving mean, new moving variance)`` of one training call.

    ``mean`` and ``variance`` are the ``[C]`` batch mean and biased variance over
    ``axes`` (every axis but ``channel``), in ``compute`` where it is wider than x
    (x is normalized there and y rounded back once); ``reducer`` makes them the
    global batch's. The moving statistics move toward them by ``weight``
    (``_moving_averages.average_weight`` of the moving variables); ``offset`` and
    ``scale`` are ``[C]`` or None.
    """
    summary = two_pass_moments(x, axes, xp=xp, reducer=reducer, compute=compute)
    mean = xp.reshape(summary.mean, (-1,))
    variance = xp.reshape(biased_variance(summary, xp=xp), (-1,))
    new_mean = move_toward(moving_mean, astype(mean, moving_mean.dtype, xp), weight, xp=xp)
    new_variance = move_toward(moving_variance, astype(variance, moving_variance.dtype, xp), weight, xp=xp)
    y = normalize(
        x, mean, variance, offset, scale, variance_epsilon, xp=xp, compute=compute, channel=channel
    )
    return y, mean, variance, new_mean, new_variance


@overridable(Kernel.FUSED_LAYER_TRAINING)
def fused_layer_training(
    x: Any,
    moving_mean: Any,
    moving_variance: Any,
    offset: Any,
    scale: Any,
    epsilon: float,
    weight: Any,
    channel: int,
    *,
    xp: Namespace,
) -> tuple[Any, Any, Any, Any, Any]:
    """``(y, mean, biased variance, new moving mean, new moving variance)`` of one training
    call of the fused kernel on the local batch.

    ``offset`` and ``scale`` are ``[C]`` float32 (zeros and ones where the layer has
    none); the statistics are float32, as the kernel gives them. The moving mean moves
    toward the batch mean and the moving variance toward the Bessel-corrected one,
    both by ``weight`` (``_moving_averages.average_weight`` of the moving variables).
    """
    y, mean, biased, bessel = fused_training(x, scale, offset, epsilon, channel, xp=xp)
    corrected = biased * operand(bessel, biased)
    new_mean = move_toward(moving_mean, astype(mean, moving_mean.dtype, xp), weight, xp=xp)
    new_variance = move_toward(moving_variance, astype(corrected, moving_variance.dtype, xp), weight, xp=xp)
    return y, mean, biased, new_mean, new_variance
